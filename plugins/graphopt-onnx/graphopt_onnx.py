"""graphopt-onnx: graphopt's optimized graph as ONNX, in the model repository Triton-style servers read.

Target ``onnx``: tf2onnx converts graphopt's optimized, frozen GraphDef (with the ``_``-prefixed
hint attributes tf2onnx cannot read stripped: :func:`graphopt.targets.base.portable_graph_def`),
onnxruntime runs it for verification, ``graphopt bench`` and ``graphopt serve``.

Layout (Triton's model repository, triton-inference-server/server docs/user_guide/model_repository.md)::

    BASE/config.pbtxt        # ModelConfig text: name, backend onnxruntime, inputs/outputs, version policy
    BASE/<version>/model.onnx

The graph's inputs and outputs are named by the signature's keys (Identity nodes at the
edges keep tf2onnx's internal names valid), so the keys a TF Serving client uses are the
tensor names of a KServe v2 request. Precision: ``f32`` only (lossless). Opset 17.

Lookup tables and string tensors are refused, naming the op; so is any node tf2onnx
left as a TensorFlow op (it logs and goes on: the check makes that an error).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graphopt import hookimpl
from graphopt.errors import InputError, UsageError
from graphopt.model import Model, Signature, TensorSpec
from graphopt.targets.base import (
    F32,
    PORTABLE_PRESET,
    Feeds,
    Manifest,
    Runner,
    Target,
    manifest_settings,
    nodes_of,
    refuse_tables_and_strings,
    unsupported,
)

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
OPSET = 17
_TWO_GB = 2**31 - 1

# Triton's DataType enum (triton-inference-server/common protobuf/model_config.proto), by TF dtype name.
TRITON_TYPES = {"bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
                "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
                "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
                "string": "TYPE_STRING", "bfloat16": "TYPE_BF16"}
_TRITON_ENUM = ["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
                "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING",
                "TYPE_BF16"]
_ORT_TO_TF = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(uint16)": "uint16", "tensor(bool)": "bool", "tensor(string)": "string"}


class ONNXRunner(Runner):
    """``model.onnx`` in an onnxruntime CPU session with the recorded settings."""

    def __init__(self, path: Path, settings: Mapping[str, Any], signature: Signature | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                   str(settings.get("graph_optimization_level", "ORT_ENABLE_ALL")))
        options.intra_op_num_threads = int(settings.get("intra_op_num_threads", 0))
        options.log_severity_level = 3  # errors only: core code never prints
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own exception classes
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise InputError(f"onnxruntime cannot load the model: {first}", where=str(path)) from None
        sig = signature or _signature_of(self.session)
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._outputs = [k for k in sig.outputs]
        shown = ", ".join(f"{k}={v}" for k, v in settings.items())
        super().__init__(sig, f"onnx (onnxruntime {ort.__version__} CPU; {shown})")

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        missing = sorted(self._inputs - set(feeds))
        if missing:
            raise InputError(f"no value for input {', '.join(missing)}", where=f"signature {self.signature.key}")
        values = self.session.run(self._outputs, {k: np.asarray(v) for k, v in feeds.items() if k in self._inputs})
        return dict(zip(self._outputs, values))

    def close(self) -> None:
        self.session = None


def _signature_of(session: Any) -> Signature:
    def specs(args: Sequence[Any]) -> dict[str, TensorSpec]:
        return {a.name: TensorSpec(a.name, _ORT_TO_TF.get(a.type, "float32"),
                                   tuple(d if isinstance(d, int) else None for d in a.shape)) for a in args}

    return Signature(specs(session.get_inputs()), specs(session.get_outputs()))


class ONNXTarget(Target):
    """ONNX (tf2onnx) for Triton-style servers, run with onnxruntime: BASE/<version>/model.onnx + BASE/config.pbtxt."""

    name = "onnx"
    description = ("ONNX for Triton-style servers: BASE/<version>/model.onnx (tf2onnx, opset 17) and BASE/config.pbtxt "
                   "(backend onnxruntime); inputs/outputs named by the signature's keys")
    server = "Triton Inference Server (onnxruntime backend)"
    runtime_modules = ("onnxruntime",)
    precisions = {"f32": F32}
    transforms = PORTABLE_PRESET

    def settings(self) -> dict[str, Any]:
        # Triton's onnxruntime backend default (optimization level 0 = all of onnxruntime's optimizations).
        return {"graph_optimization_level": "ORT_ENABLE_ALL", "intra_op_num_threads": 0}

    def check(self, model: Model) -> None:
        refuse_tables_and_strings(self.name, model)

    def convert(self, model: Model, out_dir: Path, *, samples: Feeds | None = None) -> list[str]:
        import onnx

        proto = _tf2onnx(model)
        _name_by_keys(proto, model.signature)
        unknown = [n for n in _all_nodes(proto.graph) if not _is_onnx_op(n)]
        if unknown:
            ops = [n.op_type for n in unknown]
            tf_nodes = [n.name for n in nodes_of(model, ops)] or [n.name for n in unknown]
            raise unsupported(self.name, ops, tf_nodes, "tf2onnx has no ONNX form for it (it left the TensorFlow op "
                                                        "in the graph, which onnxruntime cannot run)")
        if proto.ByteSize() > _TWO_GB:
            raise InputError("the ONNX model is larger than protobuf's 2 GB limit", where=f"target {self.name}",
                             hint="serve it with TF Serving, which keeps weights in variables/ past that size")
        onnx.save_model(proto, str(Path(out_dir) / MODEL_FILE))
        return [MODEL_FILE]

    def open(self, version_dir: Path, *, settings: Mapping[str, Any] | None = None) -> Runner:
        version_dir = Path(version_dir)
        path = version_dir / MODEL_FILE
        if not path.is_file():
            found = sorted(version_dir.glob("*.onnx"))
            if not found:
                raise InputError("no ONNX model here", where=str(version_dir))
            path = found[0]
        manifest = Manifest.read(version_dir)
        if settings is None:
            settings = manifest_settings(version_dir) or self.settings()
        return ONNXRunner(path, settings, manifest.sig if manifest else None)

    @classmethod
    def owns(cls, version_dir: Path) -> bool:
        return any(Path(version_dir).glob("*.onnx"))

    def base_files(self, name: str, version_dir: Path, manifest: Manifest) -> dict[str, str]:
        return {CONFIG_FILE: model_config_text(name, version_dir / MODEL_FILE)}

    def server_files(self, models: Sequence[Any], *, settings: Mapping[str, Mapping[str, Any]] | None = None
                     ) -> dict[str, str]:
        """``NAME/config.pbtxt`` per model (Triton reads it from the model's folder), from its local export."""
        from graphopt.targets.base import version_dir_of

        files = {}
        for m in models:
            if m.labels:
                raise UsageError(f"model {m.name}: Triton has no version labels", where="--label",
                                 hint="leave --label out for --target onnx")
            version_dir = version_dir_of(m.base_path)
            path = version_dir / MODEL_FILE
            if not path.is_file():
                raise InputError(f"model {m.name}: no {MODEL_FILE} under its base path to read inputs and outputs "
                                 "from", where=str(m.base_path),
                                 hint="give the export's local path as NAME=BASE (Triton's config is per model)")
            files[f"{m.name}/{CONFIG_FILE}"] = model_config_text(m.name, path, versions=m.versions)
        return files


# --- conversion ---------------------------------------------------------------------------------------------


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _tf2onnx(model: Model) -> Any:
    """tf2onnx on the frozen graph, its log captured (core code never prints) and its failures named."""
    import tf2onnx

    sig = model.signature
    handler = _Collect()
    loggers = [logging.getLogger(n) for n in ("tf2onnx", "tf2onnx.tfonnx", "tf2onnx.tf_utils")]
    saved = [(lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    for lg in loggers:
        lg.handlers[:] = [handler]
        lg.propagate = False
    try:
        proto, _ = tf2onnx.convert.from_graph_def(
            model.graph_def, input_names=[s.name for s in sig.inputs.values()],
            output_names=list(dict.fromkeys(s.name for s in sig.outputs.values())), opset=OPSET)
    except Exception as exc:  # tf2onnx raises ValueError / its own errors, often naming the node
        failed = [m for m in handler.messages if m.startswith("Failed to convert node")]
        detail = failed[0] if failed else (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        ops = [n.op for n in model.graph_def.node if n.name in detail]
        if ops:
            nodes = [n.name for n in model.graph_def.node if n.name in detail]
            raise unsupported("onnx", ops, nodes, f"tf2onnx failed: {detail[:300]}") from None
        raise InputError(f"target 'onnx': tf2onnx failed: {detail[:300]}", where="tf2onnx.convert.from_graph_def",
                         hint="serve it with --target tfserving; nothing was written") from None
    finally:
        for lg, (handlers, propagate, level) in zip(loggers, saved):
            lg.handlers[:] = handlers
            lg.propagate = propagate
            lg.setLevel(level)
    return proto


def _all_nodes(graph: Any) -> list[Any]:
    """Every node, in subgraphs (Loop/If bodies) too."""
    out = []
    for node in graph.node:
        out.append(node)
        for attr in node.attribute:
            if attr.type == attr.GRAPH:
                out += _all_nodes(attr.g)
            for g in attr.graphs:
                out += _all_nodes(g)
    return out


def _is_onnx_op(node: Any) -> bool:
    import onnx

    domain = node.domain or ""
    if domain not in ("", "ai.onnx", "ai.onnx.ml", "com.microsoft"):
        return False
    if domain == "com.microsoft":  # onnxruntime's contrib ops, which tf2onnx uses for a few TF ops
        return True
    return onnx.defs.has(node.op_type, domain)


def _name_by_keys(proto: Any, sig: Signature) -> None:
    """Inputs and outputs named by the signature's keys; Identity nodes keep tf2onnx's internal names valid."""
    import onnx

    graph = proto.graph
    taken = {v.name for v in graph.input} | {o for n in graph.node for o in n.output}
    for key, spec in sig.inputs.items():
        value = next((v for v in graph.input if v.name in (spec.name, spec.node)), None)
        if value is None:
            continue  # an input no output depends on: tf2onnx dropped it, and a request may still carry it
        if key in taken and key != value.name:
            raise InputError(f"signature key '{key}' is also a tensor name inside the ONNX graph",
                             where="target onnx", hint="rename the signature key")
        old = value.name
        value.name = key
        graph.node.insert(0, onnx.helper.make_node("Identity", [key], [old], name=f"graphopt_input_{key}"))
    outputs = {v.name: v for v in graph.output}
    new_outputs = []
    for key, spec in sig.outputs.items():
        value = outputs.get(spec.name)
        if value is None:
            raise InputError(f"tf2onnx's model has no output {spec.name} for signature key '{key}'", where="target onnx")
        graph.node.append(onnx.helper.make_node("Identity", [spec.name], [key], name=f"graphopt_output_{key}"))
        out = type(value)()
        out.CopyFrom(value)
        out.name = key
        new_outputs.append(out)
    del graph.output[:]
    graph.output.extend(new_outputs)


# --- Triton's config.pbtxt ------------------------------------------------------------------------------------

_MESSAGES: dict[str, Any] = {}


def model_config_class() -> Any:
    """Triton's ``inference.ModelConfig`` message, described here from model_config.proto's field numbers.

    Only the fields graphopt writes (name, platform, backend, version_policy, max_batch_size,
    input, output) are declared, so the text is produced and parsed by real protobuf code
    without Triton's Python packages.
    """
    if "config" in _MESSAGES:
        return _MESSAGES["config"]
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name="graphopt/triton_model_config.proto", package="inference",
                                           syntax="proto3")
    enum = f.enum_type.add(name="DataType")
    for number, name in enumerate(_TRITON_ENUM):
        enum.value.add(name=name, number=number)
    T = descriptor_pb2.FieldDescriptorProto
    opt, rep = T.LABEL_OPTIONAL, T.LABEL_REPEATED

    def message(name: str, fields: list[tuple[str, int, int, int, str]], parent: Any = None) -> Any:
        msg = (parent.nested_type if parent is not None else f.message_type).add(name=name)
        for fname, number, ftype, label, type_name in fields:
            msg.field.add(name=fname, number=number, type=ftype, label=label, type_name=type_name or None)
        return msg

    policy = message("ModelVersionPolicy", [("latest", 1, T.TYPE_MESSAGE, opt, ".inference.ModelVersionPolicy.Latest"),
                                            ("all", 2, T.TYPE_MESSAGE, opt, ".inference.ModelVersionPolicy.All"),
                                            ("specific", 3, T.TYPE_MESSAGE, opt,
                                             ".inference.ModelVersionPolicy.Specific")])
    message("Latest", [("num_versions", 1, T.TYPE_UINT32, opt, "")], policy)
    message("All", [], policy)
    message("Specific", [("versions", 1, T.TYPE_INT64, rep, "")], policy)
    message("ModelInput", [("name", 1, T.TYPE_STRING, opt, ""), ("data_type", 2, T.TYPE_ENUM, opt, ".inference.DataType"),
                           ("dims", 4, T.TYPE_INT64, rep, "")])
    message("ModelOutput", [("name", 1, T.TYPE_STRING, opt, ""),
                            ("data_type", 2, T.TYPE_ENUM, opt, ".inference.DataType"),
                            ("dims", 3, T.TYPE_INT64, rep, "")])
    message("ModelConfig", [("name", 1, T.TYPE_STRING, opt, ""), ("platform", 2, T.TYPE_STRING, opt, ""),
                            ("backend", 17, T.TYPE_STRING, opt, ""),
                            ("version_policy", 3, T.TYPE_MESSAGE, opt, ".inference.ModelVersionPolicy"),
                            ("max_batch_size", 4, T.TYPE_INT32, opt, ""),
                            ("input", 5, T.TYPE_MESSAGE, rep, ".inference.ModelInput"),
                            ("output", 6, T.TYPE_MESSAGE, rep, ".inference.ModelOutput")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))
    _MESSAGES["config"] = cls
    return cls


def _dims(value: Any) -> list[int]:
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else -1 for d in shape.dim]


def _triton_type(value: Any) -> str:
    import onnx

    np_type = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    name = "string" if np_type == np.dtype(object) else str(np.dtype(np_type))
    return TRITON_TYPES.get(name, "TYPE_INVALID")


def model_config_text(name: str, onnx_path: Path, *, versions: Sequence[int] = ()) -> str:
    """``config.pbtxt`` for one model: inputs/outputs with dtypes and dims read from the ONNX file itself.

    ``max_batch_size: 0``: the dims are the full shapes (-1 where variable), so the
    batch dimension is the model's own, as in the TF signature.
    """
    import onnx
    from google.protobuf import text_format

    proto = onnx.load(str(onnx_path), load_external_data=False)
    config = model_config_class()(name=name, backend="onnxruntime", platform="onnxruntime_onnx", max_batch_size=0)
    if versions:
        config.version_policy.specific.versions.extend(sorted(set(versions)))
    else:
        config.version_policy.latest.num_versions = 1
    initializers = {i.name for i in proto.graph.initializer}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        config.input.add(name=value.name, data_type=_triton_type(value), dims=_dims(value))
    for value in proto.graph.output:
        config.output.add(name=value.name, data_type=_triton_type(value), dims=_dims(value))
    return text_format.MessageToString(config)


def parse_model_config(text: str) -> Any:
    """Read ``config.pbtxt`` back (tests; raises ``text_format.ParseError`` if malformed)."""
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_class()())


@hookimpl
def graphopt_register_targets(register):
    register(ONNXTarget)
