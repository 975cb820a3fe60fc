"""Latency percentiles and throughput of Predict against any PredictionService (TF Serving or ``graphopt serve``).

The request is built and serialized once; ``concurrency`` threads then send
``requests`` in total over one shared gRPC channel (or one keep-alive HTTP
connection per thread for REST), so what is measured is the server plus the
transport, not request construction.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from graphopt.errors import InputError, UsageError


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

    def make():
        def send() -> None:
            call(payload, timeout=timeout)
        return send
    return make, channel.close


def _rest_sender(target: str, model: str, signature: str, inputs: Mapping[str, Any], version: int | None,
                 timeout: float):
    from graphopt.serving import rest

    hostport = target.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"REST target must be HOST:PORT, not {target!r}")
    path = f"/v1/models/{model}" + (f"/versions/{int(version)}" if version is not None else "") + ":predict"
    body = json.dumps(rest.predict_body(inputs, signature=signature)).encode()
    headers = {"Content-Type": "application/json"}

    def make():
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)

        def send() -> None:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {data[:200].decode(errors='replace')}")
        return send
    return make, lambda: None


def run_load(target: str, model: str, *, signature: str = "serving_default", inputs: Mapping[str, Any],
             concurrency: int = 1, requests: int = 100, rest: bool = False, version: int | None = None,
             warmup: int = 1, timeout: float = 60.0) -> dict:
    """Send ``requests`` Predict calls from ``concurrency`` threads; return latency and throughput.

    ``inputs`` are arrays of the signature's dtypes. ``warmup`` requests per
    thread are sent first and not counted (TF Serving builds an executor on
    first use). Returns ``{"target", "transport", "model", "signature",
    "concurrency", "requests", "ok", "errors", "first_error", "wall_s",
    "throughput_rps", "latency_ms": {"mean", "min", "p50", "p90", "p99",
    "max"}}``; the latency figures are ``None`` if no request succeeded.
    """
    if concurrency < 1 or requests < 1:
        raise UsageError("concurrency and requests must be at least 1")
    sender = _rest_sender if rest else _grpc_sender
    make, close = sender(target, model, signature, inputs, version, timeout)
    senders = [make() for _ in range(concurrency)]
    try:
        for send in senders:
            for _ in range(warmup):
                try:
                    send()
                except Exception as exc:  # noqa: BLE001 - any transport error means the target is not serving
                    raise InputError(f"warm-up request failed: {type(exc).__name__}: {_short(exc)}",
                                     where=f"{'rest' if rest else 'grpc'} {target}",
                                     hint="check the model name, signature and inputs with graphopt predict") from exc
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        remaining = [requests]

        def worker(send) -> None:
            while True:
                with lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                t0 = time.perf_counter()
                try:
                    send()
                except Exception as exc:  # noqa: BLE001 - counted, not fatal: load tests report error rates
                    with lock:
                        errors.append(f"{type(exc).__name__}: {_short(exc)}")
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)

        threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in senders]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    finally:
        close()
    ms = np.asarray(latencies) * 1000.0
    stats = ({"mean": float(ms.mean()), "min": float(ms.min()), "p50": float(np.percentile(ms, 50)),
              "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}
             if len(ms) else dict.fromkeys(("mean", "min", "p50", "p90", "p99", "max")))
    return {"target": target, "transport": "rest" if rest else "grpc", "model": model, "signature": signature,
            "concurrency": concurrency, "requests": requests, "ok": len(latencies), "errors": len(errors),
            "first_error": errors[0] if errors else None, "wall_s": wall,
            "throughput_rps": len(latencies) / wall if wall > 0 else 0.0, "latency_ms": stats}


def _short(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    text = details() if callable(details) else str(exc)
    return (text or "").splitlines()[0] if text else ""
