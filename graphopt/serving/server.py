"""A local development PredictionService: gRPC Predict/GetModelMetadata and REST predict/metadata.

For smoke tests and CI on machines without Docker or a TF Serving binary.
Production is TensorFlow Serving. It loads a model the way TF Serving does:
the newest integer version under ``BASE`` (or the one asked for) with
``tf.compat.v1.saved_model.loader.load`` and tag ``serve``, signatures looked
up by key, ``assets.extra/tf_serving_warmup_requests`` replayed before the
ports open. One model, one version; no batching, no hot reload, no labels.

Clients are not trusted (docs/guide/security.md). The server process itself never
runs the model: it parses and checks requests, then hands the feeds to a
*runner*, ``run(feeds) -> outputs``, that a factory builds inside a confined
child process (:class:`graphopt.security.sandbox.ConfinedWorker`). A model
that hangs, aborts or runs out of memory costs the one request; the child is
restarted. Everything a request may ask of the server is bounded by
:class:`Limits` (message size, tensor elements, JSON size and depth, time,
requests in flight, connections), checked before anything is allocated.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from graphopt.errors import GraphoptError, InputError, OutputError, UsageError
from graphopt.savers import disk_bytes
from graphopt.serving import rest
from graphopt.serving.export import versions
from graphopt.serving.warmup import WARMUP_DIR, WARMUP_FILE, read_warmup

log = logging.getLogger("graphopt.serve")

# For clients (graphopt predict, load tests): a client trusts the server it chose to call.
GRPC_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]

Feeds = Mapping[str, np.ndarray]
Run = Callable[[Feeds], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Limits:
    """What one client may ask of the server. The defaults suit a development server on a laptop.

    ``max_elements`` is checked against the *declared* shapes of a request's
    tensors before any of them is built, so a 30-byte request declaring
    ``[50000000, 4]`` is refused without allocating.
    """

    max_message_bytes: int = 64 << 20  # gRPC receive limit (gRPC's own default is 4 MiB)
    max_elements: int = 1 << 24  # tensor elements per request, all inputs together (64 MiB as float32)
    max_json_bytes: int = 32 << 20  # REST body
    max_json_depth: int = rest.DEFAULT_MAX_DEPTH
    deadline_s: float = 30.0  # per request, queueing included; a client's shorter gRPC deadline wins
    max_in_flight: int = 8  # Predict calls admitted at once (gRPC and REST together); more get RESOURCE_EXHAUSTED
    model_workers: int = 1  # confined processes per signature; each runs one request at a time
    io_timeout_s: float = 15.0  # REST: a client silent this long mid-request (or idle) is disconnected
    max_connections: int = 64  # REST connections open at once
    load_timeout_s: float = 300.0  # starting a model worker (TF import, load, main op)
    worker_memory_mb: int | None = None  # address-space limit of a model worker (None: the sandbox's default)

    def validate(self) -> Limits:
        for name in ("max_message_bytes", "max_elements", "max_json_bytes", "max_json_depth", "max_in_flight",
                     "model_workers", "max_connections"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        for name in ("deadline_s", "io_timeout_s", "load_timeout_s"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name.replace('_', '-')} must be positive, not {getattr(self, name)}")
        if self.worker_memory_mb is not None and self.worker_memory_mb < 64:
            raise UsageError(f"worker memory must be at least 64 MB, not {self.worker_memory_mb}")
        return self


class RequestError(Exception):
    """A request the server refuses; ``status`` is a gRPC status name, ``http`` the REST status code."""

    HTTP = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "NOT_FOUND": 404, "CANCELLED": 499,
            "DEADLINE_EXCEEDED": 504, "RESOURCE_EXHAUSTED": 503, "UNAVAILABLE": 503, "UNIMPLEMENTED": 501,
            "INTERNAL": 500}

    def __init__(self, status: str, message: str, http: int | None = None) -> None:
        super().__init__(status, message, http)  # all three in args: it crosses the worker's pipe by pickle
        self.status, self.message = status, message
        self.http = http or self.HTTP.get(status, 500)

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


# --- what may run --------------------------------------------------------------------------------------------


def _serving_meta(export_dir: Path):
    from tensorflow.core.protobuf import saved_model_pb2

    path = export_dir / "saved_model.pb"
    try:
        sm = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    except (OSError, ValueError) as exc:  # DecodeError is a ValueError
        raise InputError(f"cannot read SavedModel: {exc}", where=str(path)) from exc
    meta = next((m for m in sm.meta_graphs if "serve" in m.meta_info_def.tags), None)
    if meta is None:
        raise InputError("no meta graph with tag 'serve'", where=str(path), hint="export it with graphopt")
    return meta


def check_safe(export_dir: str | Path, *, allow: bool | Iterable[str] = False, meta: Any = None) -> list:
    """Refuse (:class:`UnsafeGraphError`) a SavedModel whose loading or serving would run ops not allowed.

    The check is :func:`graphopt.security.scan.check_saved_model`: the restore op (its ``RestoreV2``
    may read only ``variables/``), every init op and every signature, with all they call, against the
    allowlist; assets must stay inside the folder. Returns the allowed findings.
    """
    from graphopt.security.scan import check_saved_model

    meta = meta if meta is not None else _serving_meta(Path(export_dir))
    return check_saved_model(export_dir, allow=allow, action="serve it", meta=meta)


# --- the execution seam: runners (in the child) and workers (in the server) --------------------------------


def saved_model_runner(export_dir: str, signature: str = "serving_default",
                       session_config: bytes | None = None) -> Run:
    """A runner for one signature of a SavedModel, loaded as TF Serving loads it. Called *inside* the worker.

    The returned ``run(feeds) -> outputs`` takes arrays by input key and returns
    every output of the signature by key. A TensorFlow error raises
    :class:`InputError`, which crosses to the server as itself and is answered
    ``INVALID_ARGUMENT``, as TF Serving reports it.
    """
    import tensorflow as tf
    from tensorflow.python.util import deprecation

    config = tf.compat.v1.ConfigProto.FromString(session_config) if session_config else None
    session = tf.compat.v1.Session(graph=tf.Graph(), config=config)
    try:
        with deprecation.silence():  # the v1 loader is deprecated, but it is the one TF Serving's loading matches
            meta = tf.compat.v1.saved_model.loader.load(session, [tf.saved_model.SERVING], export_dir)
    except Exception as exc:  # TF raises RuntimeError, OpError, IOError...: one message for the user
        session.close()
        raise InputError(f"cannot load SavedModel: {type(exc).__name__}: {_first_line(exc)}", where=export_dir,
                         hint="it needs the tag 'serve'") from None
    sig = meta.signature_def[signature]
    keys = list(sig.outputs)
    fetches = [sig.outputs[k].name for k in keys]
    names = {k: v.name for k, v in sig.inputs.items()}

    def run(feeds: Feeds) -> dict[str, np.ndarray]:
        try:
            values = session.run(fetches, feed_dict={names[k]: v for k, v in feeds.items()})
        except tf.errors.ResourceExhaustedError:
            raise  # out of memory: the sandbox names it
        except tf.errors.OpError as exc:
            raise InputError(_first_line(exc.message)) from None
        except (ValueError, TypeError) as exc:  # feeds numpy cannot convert
            raise InputError(_first_line(exc)) from None
        return dict(zip(keys, values))

    return run


def target_runner(export_dir: str, signature: str = "serving_default", session_config: bytes | None = None) -> Run:
    """A runner for another runtime's export (:mod:`graphopt.targets`: OpenVINO, ONNX...). Called *inside* the worker.

    The export's manifest names its target and the settings it was verified with; the target's
    :class:`~graphopt.targets.base.Runner` runs it. Same contract as :func:`saved_model_runner`.
    """
    from graphopt.targets.base import open_export

    runner = open_export(export_dir)
    if signature != runner.signature.key:
        raise InputError(f"the export has no signature '{signature}'", where=export_dir,
                         hint=f"signature: {runner.signature.key}")
    # Requests arrive as the signature's TF dtypes; a runtime wants the numpy ones (strings never get here).
    dtypes = {k: np.dtype(s.dtype) for k, s in runner.signature.inputs.items() if s.dtype not in ("string", "bfloat16")}

    def run(feeds: Feeds) -> dict[str, np.ndarray]:
        try:
            return runner.run({k: np.asarray(v, dtype=dtypes.get(k)) for k, v in feeds.items()})
        except GraphoptError as exc:
            raise RequestError("INVALID_ARGUMENT", _first_line(exc.message)) from None
        except Exception as exc:  # noqa: BLE001 - the runtime's own error on this request's inputs
            raise RequestError("INVALID_ARGUMENT", f"{runner.description}: {_first_line(exc)}") from None

    return run


class Worker(Protocol):
    """What the server needs of a model worker (:class:`graphopt.security.sandbox.ConfinedWorker`)."""

    def start(self) -> None: ...

    def run(self, feeds: Feeds, timeout: float | None = None) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


# (runner_factory, *args, limits=Limits, label=str, model_bytes=int) -> a started Worker
WorkerFactory = Callable[..., Worker]


def confined_worker(runner_factory: Callable[..., Run], *args: Any, limits: Limits, label: str = "the model",
                    model_bytes: int = 0) -> Worker:
    """A started :class:`~graphopt.security.sandbox.ConfinedWorker` running ``runner_factory(*args)`` in a child.

    Its memory limit is ``--worker-memory-mb`` or the sandbox's default for a
    model of ``model_bytes`` (``GRAPHOPT_MEMORY_LIMIT`` applies); each call's
    wall-clock limit is the request's remaining deadline; starting (TensorFlow's
    import, the load, the main op) may take ``load_timeout_s``.
    """
    from graphopt.security.sandbox import ConfinedWorker, default_limits

    memory = limits.worker_memory_mb * (1 << 20) if limits.worker_memory_mb else None
    sandbox = default_limits(model_bytes, wall_seconds=limits.deadline_s, memory_bytes=memory)
    worker = ConfinedWorker(runner_factory, *args, limits=sandbox, label=label, start_timeout=limits.load_timeout_s)
    try:
        worker.start()
    except BaseException:
        worker.close()
        raise
    return worker


def _resource_status(exc: BaseException) -> RequestError:
    """A worker's :class:`ResourceError` as the request's answer, naming what ran out."""
    limit = getattr(exc, "limit", "") or ""
    text = _first_line(getattr(exc, "message", None) or exc)
    if limit == "time":
        return RequestError("DEADLINE_EXCEEDED", f"the request did not finish before its deadline; the model's "
                                                 f"worker was restarted ({text})")
    if limit in ("memory", "cpu", "file size"):
        return RequestError("RESOURCE_EXHAUSTED", f"the model ran out of {limit}; the model's worker was restarted "
                                                  f"({text})", http=500)
    return RequestError("INTERNAL", f"the model failed; the model's worker was restarted ({text})")


class _Keeper:
    """The one long-lived thread that starts and restarts every model worker process.

    A sandbox child asks the kernel to kill it when its parent dies
    (``PR_SET_PDEATHSIG``), and Linux takes the *thread* that started it for
    its parent: a child started from a request's thread would be killed when
    that thread ends (a REST connection's thread ends with the connection).
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="graphopt-workers", daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn, args, done = self._jobs.get()
            try:
                done.append((True, fn(*args)))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, which decides
                done.append((False, exc))
            finally:
                done.event.set()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Queue ``fn(*args)``; ``wait()`` on the returned handle gives its result (or raises its error)."""
        done = _Done()
        self._jobs.put((fn, args, done))
        return done

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.submit(fn, *args).wait()


class _Done(list):
    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def wait(self) -> Any:
        self.event.wait()
        ok, value = self[0]
        if not ok:
            raise value
        return value


_KEEPER: _Keeper | None = None
_KEEPER_LOCK = threading.Lock()


def _keeper() -> _Keeper:
    global _KEEPER
    with _KEEPER_LOCK:
        if _KEEPER is None:
            _KEEPER = _Keeper()
        return _KEEPER


class Executor:
    """The workers of one signature: a request takes an idle one, waiting at most until its deadline.

    A worker that failed (deadline, memory, crash) is restarted in the
    background before it takes requests again, so the request that hit the
    limit is answered at once and the next ones are not billed for the restart
    (TensorFlow's import and the load: seconds). While *every* worker of the
    signature is restarting, requests are answered ``UNAVAILABLE`` (503) at once
    rather than left to wait out their deadline.
    """

    def __init__(self, make: Callable[[], Worker], count: int, *, where: str) -> None:
        self._idle: queue.SimpleQueue[Worker] = queue.SimpleQueue()
        self._all: list[Worker] = []
        self._closed = False
        self._restarting = 0
        self._restarting_lock = threading.Lock()
        self._count = count
        self.where = where
        try:
            for _ in range(count):
                worker = _keeper().call(make)
                self._all.append(worker)
                self._idle.put(worker)
        except BaseException:
            self.close()
            raise

    def run(self, feeds: Feeds, *, deadline: float, is_active: Callable[[], bool] = lambda: True
            ) -> dict[str, np.ndarray]:
        from graphopt.errors import ResourceError
        from graphopt.security.sandbox import ChildError

        worker = None
        while worker is None:  # poll, so an abandoned request leaves the queue instead of holding a thread
            if self._restarting >= self._count:
                raise RequestError("UNAVAILABLE", "the model's worker is restarting after a failed request; "
                                                  "retry in a few seconds (--model-workers 2 keeps one serving)")
            left = deadline - time.monotonic()
            if left <= 0:
                raise RequestError("DEADLINE_EXCEEDED", "no model worker became free before the deadline "
                                                        "(the model is busy; see --deadline, --model-workers)")
            if not is_active():
                raise RequestError("CANCELLED", "the client went away")
            try:
                worker = self._idle.get(timeout=min(left, 0.1))
            except queue.Empty:
                continue
        failed = False
        try:
            return worker.run(feeds, timeout=max(deadline - time.monotonic(), 0.001))
        except ResourceError as exc:
            failed = True
            raise _resource_status(exc) from None
        except OSError as exc:  # the child was gone before the call reached it
            failed = True
            raise RequestError("INTERNAL", f"the model's worker had ended; the model's worker was restarted "
                                           f"({type(exc).__name__}: {_first_line(exc)})") from None
        except ChildError as exc:  # the runner raised something unexpected: the child itself is fine
            raise RequestError("INTERNAL", _first_line(exc.message)) from None
        except GraphoptError as exc:  # what TensorFlow said of these feeds
            raise RequestError("INVALID_ARGUMENT", _first_line(exc.message)) from None
        finally:
            if failed:
                with self._restarting_lock:
                    self._restarting += 1
                _keeper().submit(self._restart, worker)
            else:
                self._idle.put(worker)

    def _restart(self, worker: Worker) -> None:
        t0 = time.monotonic()
        try:
            worker.start()
            log.warning("model worker of %s restarted in %.1f s", self.where, time.monotonic() - t0)
        except Exception as exc:  # noqa: BLE001 - it will be retried by the next request that takes it
            log.warning("model worker of %s did not restart: %s", self.where, _first_line(exc))
        finally:
            with self._restarting_lock:
                self._restarting -= 1
            if not self._closed:
                self._idle.put(worker)

    def close(self) -> None:
        self._closed = True
        for worker in self._all:
            try:
                worker.close()
            except Exception as exc:  # noqa: BLE001 - closing the others matters more
                log.debug("closing a model worker of %s: %s", self.where, exc)


# --- the served model (server side: signatures and request checks; no session here) -----------------------


def _dims(tensor_shape) -> list[int] | None:
    return None if tensor_shape.unknown_rank else [d.size for d in tensor_shape.dim]


class ServedModel:
    """One SavedModel version: its signatures (read from ``saved_model.pb``) and the executors that run them."""

    def __init__(self, export_dir: str | Path, *, name: str, version: int, limits: Limits | None = None,
                 allow_unsafe: bool | Iterable[str] = False, session_config: Any = None,
                 runner_factory: Callable[..., Run] = saved_model_runner,
                 worker_factory: WorkerFactory = confined_worker) -> None:
        self.name, self.version, self.export_dir = name, version, Path(export_dir)
        self.limits = limits or Limits()
        from graphopt.targets.base import served_signature_defs

        target_signatures = served_signature_defs(self.export_dir)
        if target_signatures is not None:  # another runtime's export (graphopt.targets): no TF graph, its runner
            self.signatures = target_signatures
            if runner_factory is saved_model_runner:
                runner_factory = target_runner
        else:
            meta = _serving_meta(self.export_dir)
            check_safe(export_dir, allow=allow_unsafe, meta=meta)
            self.signatures = dict(meta.signature_def)
        if not self.signatures:
            raise InputError("the SavedModel has no signature", where=str(export_dir))
        self._config = session_config.SerializeToString() if session_config is not None else None
        self._bytes = disk_bytes(self.export_dir)
        self._runner_factory, self._worker_factory = runner_factory, worker_factory
        self._executors: dict[str, Executor] = {}
        self._lock = threading.Lock()

    def start(self, keys: Iterable[str]) -> None:
        """Start the workers of these signatures now (others start on their first request)."""
        for key in keys:
            self.executor(key)

    def executor(self, key: str) -> Executor:
        with self._lock:  # one start per signature, however many requests ask at once
            if key not in self._executors:
                def make() -> Worker:
                    return self._worker_factory(self._runner_factory, str(self.export_dir), key, self._config,
                                                limits=self.limits, label=f"model {self.name} ({key})",
                                                model_bytes=self._bytes)
                try:
                    self._executors[key] = Executor(make, self.limits.model_workers,
                                                    where=f"{self.export_dir} signature {key}")
                except GraphoptError:
                    raise
                except Exception as exc:  # the sandbox failed to start the child: say what and where
                    raise InputError(f"cannot start a model worker: {type(exc).__name__}: {_first_line(exc)}",
                                     where=f"{self.export_dir} signature {key}") from None
            return self._executors[key]

    def signature(self, key: str):
        key = key or "serving_default"
        if key not in self.signatures:
            raise RequestError("INVALID_ARGUMENT", f"Serving signature key \"{_printable(key, 80)}\" not found; "
                                                   f"signatures: {', '.join(sorted(self.signatures))}")
        return self.signatures[key]

    def input_dtypes(self, key: str) -> dict[str, str]:
        import tensorflow as tf

        return {k: tf.as_dtype(v.dtype).name for k, v in self.signature(key).inputs.items()}

    def _check_keys(self, key: str, given: Iterable[str]) -> None:
        sig, given = self.signature(key), set(given)
        if given != set(sig.inputs):
            raise RequestError("INVALID_ARGUMENT", f"input keys {sorted(_printable(k, 40) for k in given)[:8]} "
                                                   f"do not match the signature's {sorted(sig.inputs)}")

    def arrays_from_protos(self, key: str, protos: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Request tensors as arrays, after checking keys, dtypes and element counts on the *declared* shapes."""
        import tensorflow as tf

        sig = self.signature(key)
        self._check_keys(key, protos)
        total = 0
        for k, proto in protos.items():
            want = sig.inputs[k].dtype
            if proto.dtype != want:
                try:
                    got = tf.as_dtype(proto.dtype).name
                except TypeError:
                    got = f"dtype enum {proto.dtype}"
                raise RequestError("INVALID_ARGUMENT", f"Expects arg {k} to be {tf.as_dtype(want).name} "
                                                       f"but {got} is provided")
            dims = [d.size for d in proto.tensor_shape.dim]
            if any(d < 0 for d in dims):
                raise RequestError("INVALID_ARGUMENT", f"input {k} declares a negative dimension {dims[:8]}")
            elements = 1
            for d in dims:  # stop once past the limit: a client may declare dims up to 2**63
                elements *= d
                if elements > self.limits.max_elements:
                    break
            total += elements
            if total > self.limits.max_elements:
                raise RequestError("INVALID_ARGUMENT", f"input {k} declares shape {dims[:8]}: more than "
                                                       f"{self.limits.max_elements:,} elements in one request "
                                                       "(--max-elements)")
        try:
            arrays = {k: tf.make_ndarray(v) for k, v in protos.items()}
        except Exception as exc:  # noqa: BLE001 - content that does not match its shape or dtype, in many forms
            raise RequestError("INVALID_ARGUMENT", f"cannot read a tensor: {type(exc).__name__}: "
                                                   f"{_first_line(exc)}") from None
        self.check_arrays(key, arrays)
        return arrays

    def check_arrays(self, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Keys, element count and shapes against the signature's static dimensions."""
        sig = self.signature(key)
        self._check_keys(key, arrays)
        total = sum(int(a.size) for a in arrays.values())
        if total > self.limits.max_elements:
            raise RequestError("INVALID_ARGUMENT", f"{total:,} tensor elements in one request: more than "
                                                   f"{self.limits.max_elements:,} (--max-elements)")
        for k, a in arrays.items():
            dims = _dims(sig.inputs[k].tensor_shape)
            if dims is None:
                continue
            if len(dims) != a.ndim or any(want >= 0 and want != got for want, got in zip(dims, a.shape)):
                shown = ["?" if d < 0 else d for d in dims]
                raise RequestError("INVALID_ARGUMENT", f"input {k} has shape {list(a.shape)[:8]}, the signature "
                                                       f"wants {shown}")

    def predict(self, key: str, inputs: Feeds, output_filter: list[str] | None = None, *, deadline: float,
                is_active: Callable[[], bool] = lambda: True) -> dict[str, np.ndarray]:
        """Run a signature in its worker by ``deadline`` (``time.monotonic()``); only ``output_filter`` if given."""
        key = key or "serving_default"
        sig = self.signature(key)
        keys = list(output_filter) if output_filter else list(sig.outputs)
        unknown = [k for k in keys if k not in sig.outputs]
        if unknown:
            raise RequestError("INVALID_ARGUMENT", f"output_filter {', '.join(_printable(k, 40) for k in unknown)} "
                                                   "is not an output of the signature")
        outputs = self.executor(key).run(dict(inputs), deadline=deadline, is_active=is_active)
        return {k: outputs[k] for k in keys}

    def signature_def_map(self):
        from tensorflow_serving.apis import get_model_metadata_pb2

        sdm = get_model_metadata_pb2.SignatureDefMap()
        for k, v in self.signatures.items():
            sdm.signature_def[k].CopyFrom(v)
        return sdm

    def close(self) -> None:
        with self._lock:
            for executor in self._executors.values():
                executor.close()
            self._executors.clear()


class Admission:
    """At most ``limit`` Predict calls at once; one more is refused at once, not queued without bound."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    @contextmanager
    def slot(self):
        if not self._slots.acquire(blocking=False):
            raise RequestError("RESOURCE_EXHAUSTED", f"the server is busy: {self.limit} requests in flight "
                                                     "(--max-in-flight); retry later")
        try:
            yield
        finally:
            self._slots.release()


def _check_spec(model: ServedModel, name: str, version: int | None, label: str | None) -> None:
    if name != model.name:
        raise RequestError("NOT_FOUND", f"Servable not found for request: Latest({_printable(name, 80)})")
    if label:
        raise RequestError("NOT_FOUND", f"version label {_printable(label, 40)!r}: the development server has "
                                        "no labels")
    if version is not None and version != model.version:
        raise RequestError("NOT_FOUND", f"Servable not found for request: Specific({_printable(name, 80)}, "
                                        f"{version})")


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _printable(text: Any, limit: int = 300) -> str:
    """Client text made safe for a log line or message: no newlines or terminal escapes, bounded length."""
    text = str(text)
    text = _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text[:limit]) + ("..." if len(text) > limit else "")
    return text


def _first_line(exc: Any) -> str:
    text = str(exc).strip()
    return _printable(text.splitlines()[0] if text else type(exc).__name__, 300)


def _log_failure(transport: str, peer: str, what: str, err: RequestError) -> None:
    """The one log line of a refused or failed request."""
    status = f"{err.http} {err.status}" if transport == "rest" else err.status
    log.warning("%s %s %s -> %s: %s", transport, _printable(peer, 60), _printable(what, 200), status,
                _printable(err.message))


# --- gRPC ----------------------------------------------------------------------------------------------------


def _grpc_handlers(model: ServedModel, admission: Admission, limits: Limits) -> list:
    """Generic handlers taking the raw request bytes, so even an unparsable message is answered INVALID_ARGUMENT."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

    def spec_of(request):
        s = request.model_spec
        return s.name, (s.version.value if s.HasField("version") else None), s.version_label or None

    def predict(request, context, started: float):
        _check_spec(model, *spec_of(request))
        key = request.model_spec.signature_name or "serving_default"
        deadline = started + limits.deadline_s
        remaining = context.time_remaining()
        if remaining is not None:  # the client's own deadline, if shorter
            deadline = min(deadline, time.monotonic() + remaining)
        with admission.slot():
            inputs = model.arrays_from_protos(key, request.inputs)
            outputs = model.predict(key, inputs, list(request.output_filter), deadline=deadline,
                                    is_active=context.is_active)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.model_spec.signature_name = key
        for k, v in outputs.items():
            response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
        return response

    def metadata(request, context, started: float):
        _check_spec(model, *spec_of(request))
        if list(request.metadata_field) != ["signature_def"]:
            raise RequestError("INVALID_ARGUMENT", "metadata_field must be [\"signature_def\"]")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.metadata["signature_def"].Pack(model.signature_def_map())
        return response

    def status(request, context, started: float):
        _check_spec(model, *spec_of(request))
        response = get_model_status_pb2.GetModelStatusResponse()
        response.model_version_status.add(version=model.version,
                                          state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
        return response

    def handler(method: str, fn, request_type):
        def handle(raw: bytes, context):
            started = time.monotonic()
            try:
                try:
                    request = request_type.FromString(raw)
                except Exception as exc:  # noqa: BLE001 - DecodeError, nesting limit: the client's bytes
                    raise RequestError("INVALID_ARGUMENT", f"cannot parse the request as "
                                                           f"{request_type.DESCRIPTOR.name}: {_first_line(exc)}"
                                       ) from None
                return fn(request, context, started)
            except RequestError as exc:
                err = exc
            except Exception as exc:  # noqa: BLE001 - a bug: one log line and INTERNAL, never a traceback
                err = RequestError("INTERNAL", f"{type(exc).__name__}: {_first_line(exc)}")
            if err.status == "CANCELLED":  # nobody is listening: log it, answer nothing
                log.info("grpc %s %s: client went away", _printable(context.peer(), 60), method)
            else:
                _log_failure("grpc", context.peer(), method, err)
            context.abort(getattr(grpc.StatusCode, err.status), err.message)
        return grpc.unary_unary_rpc_method_handler(handle, request_deserializer=None,
                                                   response_serializer=lambda m: m.SerializeToString())

    return [
        grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
            "Predict": handler("Predict", predict, predict_pb2.PredictRequest),
            "GetModelMetadata": handler("GetModelMetadata", metadata,
                                        get_model_metadata_pb2.GetModelMetadataRequest)}),
        grpc.method_handlers_generic_handler("tensorflow.serving.ModelService", {
            "GetModelStatus": handler("GetModelStatus", status, get_model_status_pb2.GetModelStatusRequest)}),
    ]


# --- REST ----------------------------------------------------------------------------------------------------

_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d{1,18})|/labels/(?P<label>[^/:]+))?"
                   r"(?P<action>:predict|/metadata)?$")


class _RestServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them; one more is answered 503 and closed."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int) -> None:
        self._connections = threading.BoundedSemaphore(max_connections)
        self.max_connections = max_connections
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if not self._connections.acquire(blocking=False):
            err = RequestError("UNAVAILABLE", f"too many connections ({self.max_connections}); retry later")
            _log_failure("rest", client_address[0], "connection", err)
            body = json.dumps({"error": err.message}).encode()
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._connections.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()

    def handle_error(self, request, client_address) -> None:
        import sys

        exc = sys.exc_info()[1]  # a connection that broke mid-answer: one line, not socketserver's traceback
        log.warning("rest %s connection error: %s: %s", _printable(client_address[0], 60), type(exc).__name__,
                    _first_line(exc))


def _rest_handler(model: ServedModel, admission: Admission, limits: Limits) -> type:
    from google.protobuf import json_format

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so load tests measure requests rather than connections
        server_version = "graphopt-serve"
        timeout = limits.io_timeout_s  # a silent client releases its thread (slowloris, a short body)

        def setup(self) -> None:
            super().setup()
            # headers and body go out in two writes: without this, Nagle's algorithm and the client's
            # delayed ACK hold the body back 40 ms per request
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        # -- answers and the one log line --------------------------------------------------------------------

        def log_request(self, code: Any = "-", size: Any = "-") -> None:
            pass  # answered requests are not logged; refusals are, once, by _fail

        def handle_one_request(self) -> None:
            self.raw_requestline = b""  # so a timeout below knows whether a request had begun
            super().handle_one_request()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
            text = format % args
            if text.startswith("Request timed out"):
                if self.raw_requestline:  # a request began and stalled in its headers: it gets an answer
                    self._fail(RequestError("INVALID_ARGUMENT", f"the request's headers did not arrive within "
                                                                f"{limits.io_timeout_s:g} s", http=408), close=True)
                else:  # an idle keep-alive connection: closing it is not an error
                    log.debug("rest %s idle connection closed", _printable(self.client_address[0], 60))
                return
            log.warning("rest %s %s", _printable(self.client_address[0], 60), _printable(text))

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            # BaseHTTPRequestHandler's own refusals (bad request line, headers, unknown method): JSON, one line.
            status = {404: "NOT_FOUND", 501: "UNIMPLEMENTED"}.get(code, "INVALID_ARGUMENT")
            text = message or HTTPStatus(code).phrase
            self._fail(RequestError(status, text, http=code), close=True)

        def _send(self, code: int, body: Any, *, close: bool = False) -> None:
            data = json.dumps(body).encode()
            if self.request_version == "HTTP/0.9":  # a request line too broken to name a version: still a status line
                self.request_version = "HTTP/1.1"
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if code == 503:
                self.send_header("Retry-After", "2")
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def _fail(self, err: RequestError, *, close: bool = False) -> None:
            what = f"{self.command or '-'} {getattr(self, 'path', '') or ''}".strip()
            _log_failure("rest", self.client_address[0], what, err)
            self._send(err.http, {"error": err.message}, close=close)
            if close:
                self._linger()

        def _linger(self) -> None:
            """Read what the client is still sending before closing, so it receives the answer, not a reset."""
            sock = self.connection
            try:
                self.wfile.flush()
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(0.5)
                end, drained = time.monotonic() + 2.0, 0
                while time.monotonic() < end and drained < 4 * limits.max_json_bytes:
                    chunk = sock.recv(1 << 16)
                    if not chunk:
                        break
                    drained += len(chunk)
            except OSError:
                pass

        def _alive(self) -> bool:
            """False once the client has closed its end (it abandoned the request)."""
            sock = self.connection
            try:
                readable, _, _ = select.select([sock], [], [], 0)
                return not readable or sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
            except BlockingIOError:
                return True
            except (OSError, ValueError):
                return False

        # -- requests ----------------------------------------------------------------------------------------

        def _route(self, method: str) -> str:
            m = _PATH.match(self.path.split("?")[0])
            if not m:
                raise RequestError("NOT_FOUND", f"Malformed request: {method} {_printable(self.path, 200)}")
            version = int(m["version"]) if m["version"] else None
            _check_spec(model, m["name"], version, m["label"])
            return m["action"] or ""

        def _body(self) -> bytes:
            """The request body, after checking its framing; an unreadable framing closes the connection."""
            if self.headers.get("Transfer-Encoding"):
                raise RequestError("INVALID_ARGUMENT", "chunked bodies are not supported: send Content-Length",
                                   http=411)
            values = self.headers.get_all("Content-Length") or []
            if not values:
                raise RequestError("INVALID_ARGUMENT", "POST needs a Content-Length header", http=411)
            if len(set(values)) != 1 or not values[0].strip().isdigit() or len(values[0].strip()) > 18:
                raise RequestError("INVALID_ARGUMENT", f"bad Content-Length {_printable(', '.join(values), 60)}")
            length = int(values[0])
            if length > limits.max_json_bytes:
                raise RequestError("INVALID_ARGUMENT", f"body of {length:,} bytes is over the "
                                                       f"{limits.max_json_bytes:,}-byte limit (--max-json-bytes)",
                                   http=413)
            try:
                raw = self.rfile.read(length)
            except TimeoutError:
                raise RequestError("INVALID_ARGUMENT", f"the body did not arrive within {limits.io_timeout_s:g} s "
                                                       "(Content-Length larger than the body?)", http=408) from None
            if len(raw) != length:
                raise RequestError("INVALID_ARGUMENT", f"the body ended after {len(raw):,} of {length:,} bytes",
                                   http=400)
            return raw

        def do_GET(self) -> None:
            try:
                action = self._route("GET")
                if action == ":predict":
                    raise RequestError("INVALID_ARGUMENT", "predict needs POST")
                spec = {"name": model.name, "signature_name": "", "version": str(model.version)}
                if action == "/metadata":
                    sdm = json_format.MessageToDict(model.signature_def_map(), preserving_proto_field_name=True)
                    self._send(200, {"model_spec": spec, "metadata": {"signature_def": sdm}})
                else:
                    self._send(200, {"model_version_status": [{"version": str(model.version), "state": "AVAILABLE",
                                                               "status": {"error_code": "OK", "error_message": ""}}]})
            except RequestError as err:
                self._fail(err)
            except OSError:
                raise  # the connection itself: the server's handle_error logs one line
            except Exception as exc:  # noqa: BLE001 - a bug: one line and a 500, never a dropped connection
                self._fail(RequestError("INTERNAL", f"{type(exc).__name__}: {_first_line(exc)}"), close=True)

        def do_POST(self) -> None:
            started = time.monotonic()
            try:
                try:
                    raw = self._body()
                except RequestError as err:  # the stream is out of step with requests: answer, then close
                    self._fail(err, close=True)
                    return
                if self._route("POST") != ":predict":
                    raise RequestError("INVALID_ARGUMENT", f"POST is only for :predict, not "
                                                           f"{_printable(self.path, 200)}")
                with admission.slot():
                    try:
                        body = rest.loads(raw, max_depth=limits.max_json_depth)
                        key = rest.signature_name(body) if isinstance(body, dict) else "serving_default"
                        _, feeds, row = rest.parse_predict_body(body, model.input_dtypes(key))
                    except GraphoptError as exc:
                        raise RequestError("INVALID_ARGUMENT", exc.message) from None
                    model.check_arrays(key, feeds)
                    outputs = model.predict(key, feeds, deadline=started + limits.deadline_s, is_active=self._alive)
                self._send(200, rest.predict_response(outputs, row=row))
            except RequestError as err:
                if err.status == "CANCELLED":
                    log.info("rest %s: client went away", _printable(self.client_address[0], 60))
                    self.close_connection = True
                else:
                    self._fail(err)
            except OSError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bug: one line and a 500, never a dropped connection
                self._fail(RequestError("INTERNAL", f"{type(exc).__name__}: {_first_line(exc)}"), close=True)

    return Handler


# --- the server ----------------------------------------------------------------------------------------------


class DevServer:
    """``DevServer(base).start()`` loads the newest version and serves gRPC on ``port`` and REST on ``rest_port``.

    Port 0 picks a free port (read ``grpc_port`` / ``rest_port`` after
    ``start``); ``rest_port=None`` serves gRPC only. ``stop()`` closes all.
    A model holding ops that were not allowed is refused unless
    ``allow_unsafe`` (True, or the op names allowed). ``limits`` bounds what
    clients may ask; ``worker_factory`` and ``runner_factory`` are the seam
    where the model runs (a confined child process running a TF session by
    default).
    """

    def __init__(self, base: str | Path, *, model_name: str | None = None, host: str = "127.0.0.1",
                 port: int = 8500, rest_port: int | None = 8501, version: int | None = None,
                 warmup: bool = True, session_config: Any = None, limits: Limits | None = None,
                 allow_unsafe: bool | Iterable[str] = False, runner_factory: Callable[..., Run] = saved_model_runner,
                 worker_factory: WorkerFactory = confined_worker) -> None:
        self.base = Path(base)
        self.model_name = model_name or self.base.resolve().name
        self.host, self.grpc_port, self.rest_port = host, port, rest_port
        self.version, self.warmup, self.session_config = version, warmup, session_config
        self.limits = (limits or Limits()).validate()
        self.allow_unsafe = allow_unsafe
        self.runner_factory, self.worker_factory = runner_factory, worker_factory
        self.model: ServedModel | None = None
        self.warmup_replayed = 0
        self._grpc = None
        self._http: ThreadingHTTPServer | None = None

    def load(self) -> ServedModel:
        found = versions(self.base)
        if not found:
            raise InputError("no version to serve", where=str(self.base),
                             hint="BASE must hold integer version directories (BASE/1/saved_model.pb)")
        version = self.version if self.version is not None else found[-1]
        if version not in found:
            raise InputError(f"no version {version}", where=str(self.base), hint=f"versions: {found}")
        model = ServedModel(self.base / str(version), name=self.model_name, version=version, limits=self.limits,
                            session_config=self.session_config, allow_unsafe=self.allow_unsafe,
                            runner_factory=self.runner_factory, worker_factory=self.worker_factory)
        try:
            warm = self.base / str(version) / WARMUP_DIR / WARMUP_FILE
            logs = read_warmup(warm) if self.warmup and warm.is_file() else []
            first = "serving_default" if "serving_default" in model.signatures else sorted(model.signatures)[0]
            model.start([first])
            self.warmup_replayed = self._replay(model, logs, warm)
        except BaseException:
            model.close()
            raise
        return model

    def _replay(self, model: ServedModel, logs: list, where: Path) -> int:
        """Replay Predict warm-up records through the workers, each under the deadline, as TF Serving replays them.

        A record that fails, hangs past the deadline or crashes the model fails
        the start (TF Serving fails the version's load the same way), so a
        broken warm-up file is caught before TF Serving sees it.
        """
        from graphopt.errors import ResourceError
        from graphopt.serving.warmup import MAX_RECORDS

        done = 0
        for i, entry in enumerate(logs[:MAX_RECORDS], 1):
            if entry.WhichOneof("log_type") != "predict_log":
                continue  # the development server only serves Predict
            request = entry.predict_log.request
            key = request.model_spec.signature_name or "serving_default"
            try:
                inputs = model.arrays_from_protos(key, request.inputs)
                model.predict(key, inputs, deadline=time.monotonic() + self.limits.deadline_s)
            except RequestError as err:
                if err.status == "DEADLINE_EXCEEDED":
                    raise ResourceError(f"warm-up request did not finish within {self.limits.deadline_s:g} s "
                                        f"(record {i})", where=str(where), limit="time",
                                        hint="the model may never finish on it: fix the record, raise --deadline, "
                                             "or start with --no-warmup") from None
                if err.status in ("INTERNAL", "RESOURCE_EXHAUSTED"):
                    raise ResourceError(f"warm-up request failed (record {i}): {err.message}", where=str(where),
                                        limit="memory" if err.status == "RESOURCE_EXHAUSTED" else "crash",
                                        hint="the model fails on this record: fix or remove it, or start with "
                                             "--no-warmup") from None
                raise InputError(f"warm-up request failed (record {i}): {err.message}", where=str(where),
                                 hint="fix or remove the record, or start with --no-warmup") from None
            done += 1
        return done

    def start(self) -> DevServer:
        import grpc

        self.model = self.load()
        admission = Admission(self.limits.max_in_flight)
        threads = self.limits.max_in_flight + 4  # headroom: metadata and status calls while Predict is full
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="graphopt-grpc"),
            handlers=_grpc_handlers(self.model, admission, self.limits),
            # gRPC itself answers RESOURCE_EXHAUSTED past these: no thread is ever waited for without bound
            maximum_concurrent_rpcs=threads,
            options=[("grpc.max_receive_message_length", self.limits.max_message_bytes),
                     ("grpc.max_send_message_length", -1)])
        address = f"{self.host}:{self.grpc_port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError:  # grpc raises on a port in use in some versions, returns 0 in others
            bound = 0
        if not bound:
            self.model.close()
            raise OutputError("cannot bind the gRPC port", where=address,
                              hint="is another server using it? pass --port 0 for a free one")
        self.grpc_port = bound
        if self.rest_port is not None:
            try:
                self._http = _RestServer((self.host, self.rest_port), _rest_handler(self.model, admission, self.limits),
                                         self.limits.max_connections)
            except OSError as exc:
                self.model.close()
                raise OutputError(f"cannot bind the REST port: {exc.strerror}",
                                  where=f"{self.host}:{self.rest_port}") from exc
            self.rest_port = self._http.server_address[1]
            threading.Thread(target=self._http.serve_forever, name="graphopt-rest", daemon=True).start()
        server.start()
        self._grpc = server
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=1).wait(5)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self.model is not None:
            self.model.close()
            self.model = None

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
