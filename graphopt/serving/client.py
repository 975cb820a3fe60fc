"""Calling a PredictionService (TF Serving or ``graphopt serve``): Predict and GetModelMetadata, gRPC and REST.

``GrpcClient("host:8500")`` uses ``tensorflow-serving-api`` exactly as TF
Serving's own examples do; ``RestClient("host:8501")`` speaks the REST API
(``POST /v1/models/NAME[/versions/N]:predict``, ``GET .../metadata``). Both
return outputs as numpy arrays by key and raise :class:`InputError` naming the
server when a call fails.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import numpy as np

from graphopt.errors import InputError
from graphopt.serving import rest

DEFAULT_SIGNATURE = "serving_default"


def _signatures_summary(sdm: Mapping[str, Any]) -> dict[str, dict]:
    """``{key: {"method_name", "inputs": {k: {"dtype", "shape"}}, "outputs": ...}}`` from a SignatureDefMap dict."""
    out = {}
    for key, sd in sdm.items():
        def side(infos: Mapping[str, Any]) -> dict:
            res = {}
            for k, info in infos.items():
                shape = info.get("tensor_shape", {})
                dims = None if shape.get("unknown_rank") else [int(d.get("size", 0)) for d in shape.get("dim", [])]
                res[k] = {"dtype": info.get("dtype", "DT_INVALID"), "shape": dims, "name": info.get("name", "")}
            return res
        out[key] = {"method_name": sd.get("method_name", ""), "inputs": side(sd.get("inputs", {})),
                    "outputs": side(sd.get("outputs", {}))}
    return out


def tf_dtype_name(enum_name: str) -> str:
    """``"DT_UINT8"`` -> ``"uint8"``."""
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2

    return tf.as_dtype(types_pb2.DataType.Value(enum_name)).name


class GrpcClient:
    """Predict / GetModelMetadata over gRPC (port 8500 by convention)."""

    def __init__(self, target: str, *, timeout: float = 30.0) -> None:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        from graphopt.serving.server import GRPC_OPTIONS

        self.target, self.timeout = target, timeout
        self.channel = grpc.insecure_channel(target, options=GRPC_OPTIONS)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def _call(self, method: str, request):
        import grpc

        try:
            return getattr(self.stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            hint = "is the server running? (graphopt serve BASE, or TF Serving)" if code == "UNAVAILABLE" else None
            raise InputError(f"{method} failed: {code}: {exc.details() if hasattr(exc, 'details') else exc}",
                             where=f"grpc {self.target}", hint=hint) from exc

    def predict(self, model: str, inputs: Mapping[str, Any], *, signature: str = DEFAULT_SIGNATURE,
                version: int | None = None, dtypes: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
        """Outputs by key. ``dtypes`` (input key -> dtype name) casts inputs before sending."""
        import tensorflow as tf

        from graphopt.serving.warmup import predict_request

        request = predict_request(inputs, model_name=model, signature=signature, version=version, dtypes=dtypes)
        response = self._call("Predict", request)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def metadata(self, model: str, *, version: int | None = None) -> dict:
        """``{"model": name, "version": n, "signatures": {key: {...}}}`` from GetModelMetadata."""
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = int(version)
        request.metadata_field.append("signature_def")
        response = self._call("GetModelMetadata", request)
        sdm = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sdm)
        as_dict = json_format.MessageToDict(sdm, preserving_proto_field_name=True).get("signature_def", {})
        return {"model": response.model_spec.name, "version": response.model_spec.version.value,
                "signatures": _signatures_summary(as_dict)}

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "GrpcClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RestClient:
    """Predict / metadata over TF Serving's REST API (port 8501 by convention)."""

    def __init__(self, target: str, *, timeout: float = 30.0) -> None:
        self.base = target if target.startswith(("http://", "https://")) else f"http://{target}"
        self.target, self.timeout = target, timeout

    def url(self, model: str, version: int | None = None, suffix: str = "") -> str:
        path = f"/v1/models/{model}" + (f"/versions/{int(version)}" if version is not None else "")
        return self.base.rstrip("/") + path + suffix

    def _call(self, url: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", "")
            except ValueError:
                message = exc.reason
            raise InputError(f"HTTP {exc.code}: {message}", where=url) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise InputError(f"cannot reach the server: {getattr(exc, 'reason', exc)}", where=url,
                             hint="is the server running? (graphopt serve BASE, or TF Serving)") from exc

    def predict(self, model: str, inputs: Mapping[str, Any], *, signature: str = DEFAULT_SIGNATURE,
                version: int | None = None, row: bool = False, output_keys: list[str] | None = None
                ) -> dict[str, np.ndarray]:
        """Outputs by key (columnar ``inputs`` request unless ``row``).

        A response with one bare output is named by ``output_keys[0]``; pass
        the signature's output keys (from :meth:`metadata`) to get real names.
        """
        body = rest.predict_body(inputs, signature=signature, row=row)
        return rest.parse_predict_response(self._call(self.url(model, version, ":predict"), body), output_keys)

    def metadata(self, model: str, *, version: int | None = None) -> dict:
        """Same shape as :meth:`GrpcClient.metadata`."""
        body = self._call(self.url(model, version, "/metadata"))
        sdm = body.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
        spec = body.get("model_spec", {})
        return {"model": spec.get("name", model), "version": int(spec.get("version", 0) or 0),
                "signatures": _signatures_summary(sdm)}

    def close(self) -> None:
        pass

    def __enter__(self) -> "RestClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
