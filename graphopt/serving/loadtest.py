"""Latency percentiles and throughput of Predict against any PredictionService (TF Serving or ``graphopt serve``).

The request is built and serialized once; ``concurrency`` threads then send
``requests`` in total over one shared gRPC channel (or one keep-alive HTTP
connection per thread for REST), so what is measured is the server plus the
transport, not request construction.

With ``hostile=F`` a fraction F of the requests are malformed on purpose
(:data:`HOSTILE_KINDS`: unparsable bytes, declared shapes of 200 M elements,
wrong dtypes, deep or non-finite JSON, bad ``Content-Length``), and the report
counts how each was answered: a server under test should *reject* every one
(a 4xx or ``INVALID_ARGUMENT``-class status), never drop the connection or
accept it, and keep serving the good ones. ``server_pid`` samples the server's
resident memory (its worker processes included) while the test runs. The run
is bounded by ``requests`` and ``max_seconds``; it stops by itself.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from graphopt.errors import InputError, UsageError

HOSTILE_KINDS = {
    "grpc": ("garbage_bytes", "huge_declared_shape", "wrong_dtype", "unknown_input"),
    "rest": ("malformed_json", "deep_json", "non_finite_number", "wrong_dtype", "bad_content_length"),
}
# Answers that mean "refused, as it should be" (gRPC status names, HTTP codes).
_REFUSED_GRPC = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "OUT_OF_RANGE", "NOT_FOUND"}
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


def _grpc_sender(target: str, model: str, signature: str, inputs: Mapping[str, Any], version: int | None,
                 timeout: float):
    import grpc
    from tensorflow_serving.apis import predict_pb2

    from graphopt.serving.server import GRPC_OPTIONS
    from graphopt.serving.warmup import predict_request

    channel = grpc.insecure_channel(target, options=GRPC_OPTIONS)
    payload = predict_request(inputs, model_name=model, signature=signature, version=version).SerializeToString()
    # Pre-serialized request: the stub's serializer is the identity, so threads share one byte string.
    call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                               request_serializer=lambda b: b,
                               response_deserializer=predict_pb2.PredictResponse.FromString)
    hostile = _grpc_hostile_payloads(model, signature, inputs, version)

    def make():
        def send() -> None:
            call(payload, timeout=timeout)

        def send_hostile(kind: str) -> str:
            try:
                call(hostile[kind], timeout=timeout)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                return code.name if code is not None else "NO_STATUS"
            return "OK"
        return send, send_hostile
    return make, channel.close


def _grpc_hostile_payloads(model: str, signature: str, inputs: Mapping[str, Any], version: int | None
                           ) -> dict[str, bytes]:
    import tensorflow as tf

    from graphopt.serving.warmup import predict_request

    key, value = next(iter(inputs.items()))
    value = np.asarray(value)
    # 30 bytes declaring [50 M, 4]: a server that builds the tensor first (make_ndarray repeats the one value)
    # allocates 800 MB or more.
    huge = predict_request(inputs, model_name=model, signature=signature, version=version)
    one = tf.make_tensor_proto(b"x" if value.dtype == object else np.zeros((), value.dtype))  # uses the *_val field
    one.tensor_shape.dim.add(size=50_000_000)
    one.tensor_shape.dim.add(size=4)
    huge.inputs[key].CopyFrom(one)
    other = np.float64 if value.dtype != np.float64 else np.float32
    wrong = np.ones(value.shape, other)
    renamed = {**{k: v for k, v in inputs.items() if k != key}, key + "_not_an_input": value}
    return {
        "garbage_bytes": random.Random(0).randbytes(64),
        "huge_declared_shape": huge.SerializeToString(),
        "wrong_dtype": predict_request({**inputs, key: wrong}, model_name=model, signature=signature,
                                       version=version).SerializeToString(),
        "unknown_input": predict_request(renamed, model_name=model, signature=signature,
                                         version=version).SerializeToString(),
    }


def _rest_sender(target: str, model: str, signature: str, inputs: Mapping[str, Any], version: int | None,
                 timeout: float):
    from graphopt.serving import rest

    host, port = _host_port(target)
    path = f"/v1/models/{model}" + (f"/versions/{int(version)}" if version is not None else "") + ":predict"
    body = json.dumps(rest.predict_body(inputs, signature=signature)).encode()
    headers = {"Content-Type": "application/json"}
    key = next(iter(inputs))
    hostile = {
        "malformed_json": b'{"inputs": [1, 2,',
        "deep_json": b"[" * 100_000 + b"]" * 100_000,
        "non_finite_number": b'{"signature_name": %s, "inputs": {%s: 1e400}}' % (json.dumps(signature).encode(),
                                                                                json.dumps(key).encode()),
        "wrong_dtype": json.dumps({"signature_name": signature, "inputs": {key: [[{"not": "a number"}]]}}).encode(),
    }

    def make():
        conn = http.client.HTTPConnection(host, port, timeout=timeout)

        def send() -> None:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {data[:200].decode(errors='replace')}")

        def send_hostile(kind: str) -> str:
            try:
                if kind == "bad_content_length":
                    conn.putrequest("POST", path)
                    conn.putheader("Content-Type", "application/json")
                    conn.putheader("Content-Length", "12abc")
                    conn.endheaders(b"{}")
                else:
                    conn.request("POST", path, body=hostile[kind], headers=headers)
                resp = conn.getresponse()
                resp.read()
                return str(resp.status)
            except (OSError, http.client.HTTPException) as exc:  # what the server should never cause
                conn.close()
                return f"DROPPED ({type(exc).__name__})"
        return send, send_hostile
    return make, lambda: None


def _host_port(target: str) -> tuple[str, int]:
    hostport = target.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"REST target must be HOST:PORT, not {target!r}")
    return host, int(port)


def _refused(answer: str) -> bool:
    return answer in _REFUSED_GRPC or (answer.isdigit() and 400 <= int(answer) < 500)


class _MemorySampler:
    """Resident memory of a process and all its children, sampled every ``period`` seconds in a thread."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(period,), daemon=True)

    def rss(self) -> int:
        import psutil

        total = 0
        for proc in [self.process, *self.process.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:  # a worker restarting between listing and reading
                pass
        return total

    def _loop(self, period: float) -> None:
        while not self._stop.wait(period):
            self.samples.append(self.rss())

    def __enter__(self) -> _MemorySampler:
        self.samples.append(self.rss())
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self.rss())

    def summary(self) -> dict[str, float]:
        mb = [s / 1e6 for s in self.samples]
        return {"start_mb": mb[0], "peak_mb": max(mb), "end_mb": mb[-1], "samples": len(mb)}


def run_load(target: str, model: str, *, signature: str = "serving_default", inputs: Mapping[str, Any],
             concurrency: int = 1, requests: int = 100, rest: bool = False, version: int | None = None,
             warmup: int = 1, timeout: float = 60.0, hostile: float = 0.0, hostile_kinds: tuple[str, ...] | None = None,
             max_seconds: float | None = None, server_pid: int | None = None, seed: int = 0) -> dict:
    """Send ``requests`` Predict calls from ``concurrency`` threads; return latency and throughput.

    ``inputs`` are arrays of the signature's dtypes. ``warmup`` requests per
    thread are sent first and not counted (TF Serving builds an executor on
    first use). A fraction ``hostile`` of the requests (chosen with ``seed``)
    are malformed ones of ``hostile_kinds`` (default: all of the transport's
    :data:`HOSTILE_KINDS`, in turn). ``max_seconds`` stops sending early.
    ``server_pid`` (a process on this machine) adds its memory.

    Returns ``{"target", "transport", "model", "signature", "concurrency",
    "requests", "sent", "ok", "errors", "first_error", "wall_s",
    "throughput_rps", "latency_ms": {"mean", "min", "p50", "p90", "p99",
    "max"}, "hostile": {...}, "server_memory": {...} or None}``; throughput
    and latency count the good requests; the latency figures are ``None`` if
    none succeeded. ``hostile`` holds ``sent``, ``refused`` (a 4xx or an
    ``INVALID_ARGUMENT``-class status), ``accepted`` (answered 200/OK),
    ``dropped`` (no answer), ``other`` and ``answers`` by kind.
    """
    if concurrency < 1 or requests < 1:
        raise UsageError("concurrency and requests must be at least 1")
    if not 0.0 <= hostile <= 1.0:
        raise UsageError(f"hostile must be a fraction between 0 and 1, not {hostile}")
    transport = "rest" if rest else "grpc"
    kinds = tuple(hostile_kinds or HOSTILE_KINDS[transport])
    unknown = sorted(set(kinds) - set(HOSTILE_KINDS[transport]))
    if unknown:
        raise UsageError(f"unknown hostile request kinds for {transport}: {', '.join(unknown)}",
                         hint=f"kinds: {', '.join(HOSTILE_KINDS[transport])}")
    if hostile and not target.split("://", 1)[-1].startswith(_LOOPBACK):
        raise UsageError("hostile requests are sent to this machine only (127.0.0.1, localhost)",
                         where=target, hint="run the server on loopback for a hostile load test")
    sender = _rest_sender if rest else _grpc_sender
    make, close = sender(target, model, signature, inputs, version, timeout)
    senders = [make() for _ in range(concurrency)]
    plan = _plan(requests, hostile, kinds, seed)
    sampler = _MemorySampler(server_pid) if server_pid else None
    try:
        for send, _ in senders:
            for _ in range(warmup):
                try:
                    send()
                except Exception as exc:  # noqa: BLE001 - any transport error means the target is not serving
                    raise InputError(f"warm-up request failed: {type(exc).__name__}: {_short(exc)}",
                                     where=f"{transport} {target}",
                                     hint="check the model name, signature and inputs with graphopt predict") from exc
        if sampler is not None:
            sampler.__enter__()
        latencies: list[float] = []
        hostile_ms: list[float] = []
        errors: list[str] = []
        answers: dict[str, dict[str, int]] = {}
        lock = threading.Lock()
        position = [0]
        stop_at = time.monotonic() + max_seconds if max_seconds else None

        def worker(send: Callable[[], None], send_hostile: Callable[[str], str]) -> None:
            while True:
                with lock:
                    if position[0] >= len(plan) or (stop_at is not None and time.monotonic() > stop_at):
                        return
                    kind = plan[position[0]]
                    position[0] += 1
                t0 = time.perf_counter()
                if kind is not None:
                    answer = send_hostile(kind)
                    dt = time.perf_counter() - t0
                    with lock:
                        hostile_ms.append(dt * 1000.0)
                        by_kind = answers.setdefault(kind, {})
                        by_kind[answer] = by_kind.get(answer, 0) + 1
                    continue
                try:
                    send()
                except Exception as exc:  # noqa: BLE001 - counted, not fatal: load tests report error rates
                    with lock:
                        errors.append(f"{type(exc).__name__}: {_short(exc)}")
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)

        threads = [threading.Thread(target=worker, args=s, daemon=True) for s in senders]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    finally:
        if sampler is not None and sampler.samples:
            sampler.__exit__()
        close()
    flat = [(a, n) for by_kind in answers.values() for a, n in by_kind.items()]
    sent = sum(n for _, n in flat)
    refused = sum(n for a, n in flat if _refused(a))
    accepted = sum(n for a, n in flat if a in ("OK", "200"))
    dropped = sum(n for a, n in flat if a.startswith(("DROPPED", "NO_STATUS", "UNAVAILABLE")))
    hostile_report: dict[str, Any] = {
        "fraction": hostile, "kinds": list(kinds), "sent": sent, "refused": refused, "accepted": accepted,
        "dropped": dropped,
        "answers": answers,
        "latency_ms_p50": float(np.percentile(hostile_ms, 50)) if hostile_ms else None,
        "latency_ms_p99": float(np.percentile(hostile_ms, 99)) if hostile_ms else None,
    }
    hostile_report["other"] = sent - refused - accepted - dropped
    return {"target": target, "transport": transport, "model": model, "signature": signature,
            "concurrency": concurrency, "requests": requests, "sent": position[0], "ok": len(latencies),
            "errors": len(errors), "first_error": errors[0] if errors else None, "wall_s": wall,
            "throughput_rps": len(latencies) / wall if wall > 0 else 0.0, "latency_ms": _stats(latencies),
            "hostile": hostile_report, "server_memory": sampler.summary() if sampler is not None else None}


def _plan(requests: int, hostile: float, kinds: tuple[str, ...], seed: int) -> list[str | None]:
    """Which request is which: ``None`` for a good one, else a hostile kind (kinds in turn)."""
    rng = random.Random(seed)
    plan: list[str | None] = []
    turn = 0
    for _ in range(requests):
        if hostile and kinds and rng.random() < hostile:
            plan.append(kinds[turn % len(kinds)])
            turn += 1
        else:
            plan.append(None)
    return plan


def _stats(latencies: list[float]) -> dict[str, float | None]:
    ms = np.asarray(latencies) * 1000.0
    if not len(ms):
        return dict.fromkeys(("mean", "min", "p50", "p90", "p99", "max"))
    return {"mean": float(ms.mean()), "min": float(ms.min()), "p50": float(np.percentile(ms, 50)),
            "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}


def _short(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    text = details() if callable(details) else str(exc)
    return (text or "").splitlines()[0] if text else ""
