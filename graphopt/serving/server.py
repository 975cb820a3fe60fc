"""A local development PredictionService: gRPC Predict/GetModelMetadata and REST predict/metadata.

For smoke tests and CI on machines without Docker or a TF Serving binary.
Production is TensorFlow Serving. It loads a model the way TF Serving does:
the newest integer version under ``BASE`` (or the one asked for) with
``tf.compat.v1.saved_model.loader.load`` and tag ``serve`` in one session,
signatures looked up by key, ``assets.extra/tf_serving_warmup_requests``
replayed before the ports open. One model, one version; no batching, no
hot reload, no version labels.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Mapping
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.errors import GraphoptError, InputError, OutputError
from graphopt.serving import rest
from graphopt.serving.export import versions
from graphopt.serving.warmup import WARMUP_DIR, WARMUP_FILE, read_warmup, replay

GRPC_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


class RequestError(Exception):
    """A request the server refuses; ``status`` is a gRPC status name (``INVALID_ARGUMENT``, ``NOT_FOUND``)."""

    HTTP = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "FAILED_PRECONDITION": 400, "UNIMPLEMENTED": 501}

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_safe(export_dir: str | Path, *, allow: bool | Iterable[str] = False) -> list:
    """Refuse (:class:`UnsafeGraphError`) a SavedModel whose serving graph reaches outside the process.

    The SavedModel's own saver (which restores ``variables/`` at load, as TF
    Serving does) is not counted; every other file, Python or network op is,
    in the graph and its functions. Returns the allowed findings.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    from graphopt.security.scan import ensure_safe

    path = Path(export_dir) / "saved_model.pb"
    try:
        sm = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    except (OSError, ValueError) as exc:  # DecodeError is a ValueError
        raise InputError(f"cannot read SavedModel: {exc}", where=str(path)) from exc
    meta = next((m for m in sm.meta_graphs if "serve" in m.meta_info_def.tags), None)
    if meta is None:
        raise InputError("no meta graph with tag 'serve'", where=str(path), hint="export it with graphopt")
    saver_scope = meta.saver_def.restore_op_name.rpartition("/")[0]
    graph = type(meta.graph_def)()
    graph.library.CopyFrom(meta.graph_def.library)
    graph.node.extend(n for n in meta.graph_def.node if not (saver_scope and n.name.startswith(saver_scope + "/")))
    return ensure_safe(graph, allow=allow, action="serve it", source=str(export_dir))


class LoadedModel:
    """One SavedModel version in one session, signatures by key."""

    def __init__(self, export_dir: str | Path, *, name: str, version: int, config: Any = None,
                 allow_unsafe: bool | Iterable[str] = False) -> None:
        import tensorflow as tf

        self.name, self.version, self.export_dir = name, version, Path(export_dir)
        check_safe(export_dir, allow=allow_unsafe)
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        from tensorflow.python.util import deprecation

        try:
            with deprecation.silence():  # the v1 loader is deprecated, but it is the one TF Serving's loading matches
                meta = tf.compat.v1.saved_model.loader.load(self.session, [tf.saved_model.SERVING], str(export_dir))
        except Exception as exc:  # TF raises RuntimeError, OpError, IOError...: one message for the user
            self.session.close()
            raise InputError(f"cannot load SavedModel: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                             where=str(export_dir), hint="it needs the tag 'serve'") from exc
        self.signatures = dict(meta.signature_def)

    def signature(self, key: str):
        key = key or "serving_default"
        if key not in self.signatures:
            raise RequestError("INVALID_ARGUMENT", f"Serving signature key \"{key}\" not found; "
                                                   f"signatures: {', '.join(sorted(self.signatures))}")
        return self.signatures[key]

    def input_dtypes(self, key: str) -> dict[str, str]:
        import tensorflow as tf

        return {k: tf.as_dtype(v.dtype).name for k, v in self.signature(key).inputs.items()}

    def predict(self, key: str, inputs: Mapping[str, np.ndarray], output_filter: list[str] | None = None,
                *, check_dtypes: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
        """Run a signature. ``check_dtypes`` (input key -> DataType enum) rejects mismatches as TF Serving does."""
        import tensorflow as tf

        sig = self.signature(key)
        if set(inputs) != set(sig.inputs):
            raise RequestError("INVALID_ARGUMENT", f"input keys {sorted(inputs)} do not match the signature's "
                                                   f"{sorted(sig.inputs)}")
        for k, enum in (check_dtypes or {}).items():
            if enum != sig.inputs[k].dtype:
                raise RequestError("INVALID_ARGUMENT", f"Expects arg {k} to be {tf.as_dtype(sig.inputs[k].dtype).name} "
                                                       f"but {tf.as_dtype(enum).name} is provided")
        keys = list(output_filter) if output_filter else list(sig.outputs)
        unknown = [k for k in keys if k not in sig.outputs]
        if unknown:
            raise RequestError("INVALID_ARGUMENT",
                               f"output_filter {', '.join(unknown)} is not an output of the signature")
        try:
            values = self.session.run([sig.outputs[k].name for k in keys],
                                      feed_dict={sig.inputs[k].name: v for k, v in inputs.items()})
        except tf.errors.OpError as exc:
            raise RequestError("INVALID_ARGUMENT", exc.message.splitlines()[0]) from exc
        except (ValueError, TypeError) as exc:  # feeds numpy cannot convert
            raise RequestError("INVALID_ARGUMENT", str(exc).splitlines()[0]) from exc
        return dict(zip(keys, values))

    def signature_def_map(self):
        from tensorflow_serving.apis import get_model_metadata_pb2

        sdm = get_model_metadata_pb2.SignatureDefMap()
        for k, v in self.signatures.items():
            sdm.signature_def[k].CopyFrom(v)
        return sdm

    def close(self) -> None:
        self.session.close()


def _check_spec(model: LoadedModel, name: str, version: int | None, label: str | None) -> None:
    if name != model.name:
        raise RequestError("NOT_FOUND", f"Servable not found for request: Latest({name})")
    if label:
        raise RequestError("NOT_FOUND", f"version label {label!r}: the development server has no labels")
    if version is not None and version != model.version:
        raise RequestError("NOT_FOUND", f"Servable not found for request: Specific({name}, {version})")


def _grpc_servicers(model: LoadedModel):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    def fail(context, err: RequestError):
        context.abort(getattr(grpc.StatusCode, err.status), err.message)

    def spec_of(request):
        s = request.model_spec
        return s.name, (s.version.value if s.HasField("version") else None), s.version_label or None

    class Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            try:
                _check_spec(model, *spec_of(request))
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                outputs = model.predict(request.model_spec.signature_name, inputs, list(request.output_filter),
                                        check_dtypes={k: v.dtype for k, v in request.inputs.items()})
            except RequestError as err:
                return fail(context, err)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = model.name
            response.model_spec.version.value = model.version
            response.model_spec.signature_name = request.model_spec.signature_name or "serving_default"
            for k, v in outputs.items():
                response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
            return response

        def GetModelMetadata(self, request, context):
            try:
                _check_spec(model, *spec_of(request))
                fields = list(request.metadata_field)
                if fields != ["signature_def"]:
                    raise RequestError("INVALID_ARGUMENT", "metadata_field must be [\"signature_def\"]")
            except RequestError as err:
                return fail(context, err)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = model.name
            response.model_spec.version.value = model.version
            response.metadata["signature_def"].Pack(model.signature_def_map())
            return response

    class Status(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):
            try:
                _check_spec(model, *spec_of(request))
            except RequestError as err:
                return fail(context, err)
            response = get_model_status_pb2.GetModelStatusResponse()
            response.model_version_status.add(version=model.version,
                                              state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
            return response

    return Prediction(), Status(), prediction_service_pb2_grpc, model_service_pb2_grpc


_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                   r"(?P<action>:predict|/metadata)?$")


def _rest_handler(model: LoadedModel):
    from google.protobuf import json_format

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so load tests measure requests rather than connections

        def log_message(self, *args: Any) -> None:  # quiet: the CLI reports what matters
            pass

        def _send(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str):
            m = _PATH.match(self.path.split("?")[0])
            if not m:
                raise RequestError("NOT_FOUND", f"Malformed request: {method} {self.path}")
            version = int(m["version"]) if m["version"] else None
            _check_spec(model, m["name"], version, m["label"])
            return m["action"] or ""

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
                self._send(RequestError.HTTP.get(err.status, 400), {"error": err.message})

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self._route("POST") != ":predict":
                    raise RequestError("INVALID_ARGUMENT", f"POST is only for :predict, not {self.path}")
                try:
                    body = json.loads(raw or b"null")
                    key = rest.signature_name(body) if isinstance(body, dict) else "serving_default"
                    _, feeds, row = rest.parse_predict_body(body, model.input_dtypes(key))
                except (ValueError, GraphoptError) as exc:
                    raise RequestError("INVALID_ARGUMENT", getattr(exc, "message", None) or str(exc)) from exc
                self._send(200, rest.predict_response(model.predict(key, feeds), row=row))
            except RequestError as err:
                self._send(RequestError.HTTP.get(err.status, 400), {"error": err.message})

    return Handler


class DevServer:
    """``DevServer(base).start()`` loads the newest version and serves gRPC on ``port`` and REST on ``rest_port``.

    Port 0 picks a free port (read ``grpc_port`` / ``rest_port`` after
    ``start``); ``rest_port=None`` serves gRPC only. ``stop()`` closes all.
    A model holding file, Python or network ops is refused unless
    ``allow_unsafe`` (True, or the op names allowed).
    """

    def __init__(self, base: str | Path, *, model_name: str | None = None, host: str = "127.0.0.1",
                 port: int = 8500, rest_port: int | None = 8501, version: int | None = None,
                 warmup: bool = True, session_config: Any = None, workers: int = 8,
                 allow_unsafe: bool | Iterable[str] = False) -> None:
        self.base = Path(base)
        self.model_name = model_name or self.base.resolve().name
        self.host, self.grpc_port, self.rest_port = host, port, rest_port
        self.version, self.warmup, self.session_config, self.workers = version, warmup, session_config, workers
        self.allow_unsafe = allow_unsafe
        self.model: LoadedModel | None = None
        self.warmup_replayed = 0
        self._grpc = None
        self._http: ThreadingHTTPServer | None = None

    def load(self) -> LoadedModel:
        found = versions(self.base)
        if not found:
            raise InputError("no version to serve", where=str(self.base),
                             hint="BASE must hold integer version directories (BASE/1/saved_model.pb)")
        version = self.version if self.version is not None else found[-1]
        if version not in found:
            raise InputError(f"no version {version}", where=str(self.base), hint=f"versions: {found}")
        model = LoadedModel(self.base / str(version), name=self.model_name, version=version,
                            config=self.session_config, allow_unsafe=self.allow_unsafe)
        warm = self.base / str(version) / WARMUP_DIR / WARMUP_FILE
        if self.warmup and warm.is_file():
            try:
                self.warmup_replayed = replay(read_warmup(warm), lambda key, feeds: model.predict(key, feeds))
            except RequestError as err:
                model.close()
                raise InputError(f"warm-up request failed: {err.message}", where=str(warm)) from err
        return model

    def start(self) -> "DevServer":
        import grpc

        self.model = self.load()
        prediction, status, ps_grpc, ms_grpc = _grpc_servicers(self.model)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.workers), options=GRPC_OPTIONS)
        ps_grpc.add_PredictionServiceServicer_to_server(prediction, server)
        ms_grpc.add_ModelServiceServicer_to_server(status, server)
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
                self._http = ThreadingHTTPServer((self.host, self.rest_port), _rest_handler(self.model))
            except OSError as exc:
                self.model.close()
                raise OutputError(f"cannot bind the REST port: {exc.strerror}",
                                  where=f"{self.host}:{self.rest_port}") from exc
            self._http.daemon_threads = True
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

    def __enter__(self) -> "DevServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
