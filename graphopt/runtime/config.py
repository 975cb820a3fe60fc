"""The TensorFlow Serving session/platform configuration a graphopt-optimized model wants.

TF Serving reads session settings from one of two flags:

* ``--tensorflow_session_config_file=FILE``: a text ``tensorflow.ConfigProto``
  (what :func:`session_config_text` returns);
* ``--platform_config_file=FILE``: a text ``tensorflow.serving.PlatformConfigMap``
  whose ``tensorflow`` platform holds a ``SavedModelBundleSourceAdapterConfig``
  with that ConfigProto in ``legacy_config.session_config`` (what
  :func:`platform_config_text` returns). When given it replaces the session
  flags, so use one or the other.

What goes in them:

* ``runtime_optimizer="remap"`` -- Grappler runs only its remapper (kernel
  fusion), one iteration. Right for a graph pre-optimized by
  ``grappler_optimize`` that still holds ops the remapper fuses only at
  runtime (depthwise convs, Sigmoid; see
  ``graphopt.passes.grappler.RUNTIME_FUSION_OPS``): constant
  folding, arithmetic and layout work were done offline, so the first request
  no longer pays for them (ResNet50: about a second), while the remapper builds
  the fusions only the serving build's kernels have -- with oneDNN on,
  depthwise conv + BiasAdd + Relu6 and Swish, which the portable offline graph
  must leave split because a oneDNN-off server cannot run them. With
  ``"off"`` those stay unfused (MobileNetV2: +10 % latency).
* ``"off"`` -- Grappler disabled at serving time: the graph runs exactly as
  ``grappler_optimize`` left it (the cheapest first request). Recommended for a
  pre-optimized graph with nothing left for the remapper (ResNet50,
  InceptionV3), where ``"remap"`` would cost ~0.05 s of the first request
  for the same executed graph.
* ``"constfold"`` -- Grappler runs only constant folding. Right after
  ``weights_to_fp16`` / ``weights_to_int8``: the stored half/int8 weights are
  cast back to float32 once, at the first request, instead of on every request
  (with Grappler fully off the Casts run per request; measured +7-12 % latency).
* ``"full"`` -- TensorFlow's default, for graphs nobody pre-optimized.
* ``intra_op`` / ``inter_op`` threads: 0 lets TensorFlow pick (all cores). TF
  Serving's ``--tensorflow_intra_op_parallelism`` / ``--tensorflow_inter_op_parallelism``
  flags override the file.

oneDNN is not a session setting: ``TF_ENABLE_ONEDNN_OPTS=1`` must be in the
server's environment before TensorFlow loads (``docker run -e
TF_ENABLE_ONEDNN_OPTS=1 ...``); :func:`serving_environment` returns it, and
:func:`recommended_environment` says when a model needs it (a graph built by
``grappler_optimize(onednn=on)`` / the ``serving-onednn`` preset holds kernels
that fail with "Fusion is not implemented" where oneDNN is off).

Nothing here imports TensorFlow Serving's C++ protos (the pip package does not
ship them): the two messages the platform file needs are described in
:func:`_platform_messages` and registered once, so the text is produced and
checked by real protobuf code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from graphopt.errors import OutputError, UsageError

RUNTIME_OPTIMIZERS = ("off", "remap", "constfold", "full")
SESSION_CONFIG_FILE = "session_config.pbtxt"
PLATFORM_CONFIG_FILE = "platform_config.pbtxt"
_ADAPTER = "tensorflow.serving.SavedModelBundleSourceAdapterConfig"


def recommended_optimizer(model: Any = None) -> str:
    """The runtime optimizer a model wants, from what graphopt's passes recorded in ``model.metadata``."""
    meta = getattr(model, "metadata", None) or {}
    if meta.get("weight_storage"):
        return "constfold"
    if meta.get("grappler_device") is not None:
        from graphopt.passes.grappler import runtime_fusion_candidates

        # The remapper alone re-fuses what the portable offline graph had to leave split; where nothing is left
        # (ResNet50, InceptionV3: the executed graphs are identical) it would only cost the first request.
        graph_def = getattr(model, "graph_def", None)
        return "remap" if graph_def is None or runtime_fusion_candidates(graph_def) else "off"
    return "full"


RuntimeOptimizer = Literal["off", "remap", "constfold", "full"]


def session_config(runtime_optimizer: RuntimeOptimizer = "off", *, intra_op: int = 0, inter_op: int = 0) -> Any:
    """The one ``tensorflow.ConfigProto`` builder: what graphopt ships, verifies with and benchmarks.

    ``runtime_optimizer`` is what Grappler does when the session first runs: ``off`` (the
    default: graphopt pre-optimized the graph), ``remap`` or ``constfold`` (only that optimizer),
    ``full`` (TensorFlow's defaults); see the module docstring. Thread counts of 0 let TF choose.
    """
    from tensorflow.core.protobuf import config_pb2

    if runtime_optimizer not in RUNTIME_OPTIMIZERS:
        raise UsageError(f"runtime optimizer must be one of {', '.join(RUNTIME_OPTIMIZERS)}, not {runtime_optimizer!r}",
                         where="serving config")
    if intra_op < 0 or inter_op < 0:
        raise UsageError("thread counts must be >= 0 (0 lets TensorFlow choose)", where="serving config")
    config = config_pb2.ConfigProto(intra_op_parallelism_threads=intra_op, inter_op_parallelism_threads=inter_op)
    rewrite = config.graph_options.rewrite_options
    if runtime_optimizer == "off":
        rewrite.disable_meta_optimizer = True
    elif runtime_optimizer in ("constfold", "remap"):
        # A non-empty optimizer list makes Grappler run exactly these, nothing else.
        rewrite.optimizers.append(runtime_optimizer)
        if runtime_optimizer == "remap":
            # One pass finds every fusion; the default second iteration would only copy the graph again.
            rewrite.meta_optimizer_iterations = rewrite.ONE
    return config


def session_config_text(**options: Any) -> str:
    """:func:`session_config` as text, the content of ``--tensorflow_session_config_file``."""
    from google.protobuf import text_format

    return text_format.MessageToString(session_config(**options))


_MESSAGES: dict[str, Any] = {}


def _platform_messages() -> tuple[Any, Any]:
    """(SavedModelBundleSourceAdapterConfig class, descriptor pool), described from TF Serving's .proto files.

    Only the fields written here are declared (field numbers as in
    tensorflow_serving/servables/tensorflow/{session_bundle_config,saved_model_bundle_source_adapter}.proto).
    """
    if _MESSAGES:
        return _MESSAGES["adapter"], _MESSAGES["pool"]
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from tensorflow.core.protobuf import config_pb2

    pool = descriptor_pool.DescriptorPool()
    config_file = descriptor_pb2.FileDescriptorProto()
    for fd in _file_closure(config_pb2.DESCRIPTOR):
        config_file.Clear()
        fd.CopyToProto(config_file)
        pool.Add(config_file)
    f = descriptor_pb2.FileDescriptorProto(name="graphopt/tf_serving_session_bundle.proto",
                                           package="tensorflow.serving", syntax="proto3",
                                           dependency=[config_pb2.DESCRIPTOR.name])
    msg = f.message_type.add(name="SessionBundleConfig")
    msg.field.add(name="session_target", number=1, type=9, label=1)
    msg.field.add(name="session_config", number=2, type=11, label=1, type_name=".tensorflow.ConfigProto")
    msg = f.message_type.add(name="SavedModelBundleSourceAdapterConfig")
    msg.field.add(name="legacy_config", number=1000, type=11, label=1,
                  type_name=".tensorflow.serving.SessionBundleConfig")
    pool.Add(f)
    adapter = message_factory.GetMessageClass(pool.FindMessageTypeByName(_ADAPTER))
    _MESSAGES.update(adapter=adapter, pool=pool)
    return adapter, pool


def _file_closure(fd: Any) -> list[Any]:
    # A pool needs every imported file before the file importing it.
    out: list[Any] = []
    seen: set[str] = set()

    def visit(f: Any) -> None:
        if f.name in seen:
            return
        seen.add(f.name)
        for dep in f.dependencies:
            visit(dep)
        out.append(f)

    visit(fd)
    return out


def platform_config_proto(**options: Any) -> Any:
    """A ``tensorflow.serving.PlatformConfigMap`` for the ``tensorflow`` platform holding the session config."""
    from tensorflow_serving.config import platform_config_pb2

    adapter_cls, _ = _platform_messages()
    adapter = adapter_cls()
    adapter.legacy_config.session_config.ParseFromString(session_config(**options).SerializeToString())
    platform_map = platform_config_pb2.PlatformConfigMap()
    platform_map.platform_configs["tensorflow"].source_adapter_config.Pack(adapter)
    return platform_map


def platform_config_text(**options: Any) -> str:
    """:func:`platform_config_proto` as text with the ``Any`` expanded, the content of ``--platform_config_file``."""
    from google.protobuf import text_format

    _, pool = _platform_messages()
    return text_format.MessageToString(platform_config_proto(**options), descriptor_pool=pool)


def parse_platform_config(text: str) -> Any:
    """Read a platform config file back into ``(PlatformConfigMap, session ConfigProto)``; used by tests and ``serve``."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import config_pb2
    from tensorflow_serving.config import platform_config_pb2

    adapter_cls, pool = _platform_messages()
    platform_map = text_format.Parse(text, platform_config_pb2.PlatformConfigMap(), descriptor_pool=pool)
    adapter = adapter_cls()
    platform_map.platform_configs["tensorflow"].source_adapter_config.Unpack(adapter)
    session = config_pb2.ConfigProto.FromString(adapter.legacy_config.session_config.SerializeToString())
    return platform_map, session


def recommended_environment(model: Any = None) -> dict[str, str]:
    """Environment a model's server needs: oneDNN on when ``grappler_optimize(onednn=on)`` built its kernels."""
    meta = getattr(model, "metadata", None) or {}
    return serving_environment(onednn=True) if meta.get("grappler_onednn") is True else {}


def serving_environment(*, onednn: bool | None = None) -> dict[str, str]:
    """Environment variables for the server process (``None`` leaves TensorFlow's own default)."""
    return {} if onednn is None else {"TF_ENABLE_ONEDNN_OPTS": "1" if onednn else "0"}


def model_server_flags(directory: str | Path, *, platform: bool = True) -> list[str]:
    """The ``tensorflow_model_server`` flags that use the files :func:`write_serving_config` wrote in ``directory``."""
    name = PLATFORM_CONFIG_FILE if platform else SESSION_CONFIG_FILE
    flag = "--platform_config_file" if platform else "--tensorflow_session_config_file"
    return [f"{flag}={Path(directory) / name}"]


def write_serving_config(directory: str | Path, **options: Any) -> dict[str, Path]:
    """Write ``session_config.pbtxt`` and ``platform_config.pbtxt`` into ``directory``; returns their paths.

    Pass the same options as :func:`session_config`. Give TF Serving one of
    the two files (see :func:`model_server_flags`), not both.
    """
    directory = Path(directory)
    texts = {"session": session_config_text(**options), "platform": platform_config_text(**options)}
    paths = {"session": directory / SESSION_CONFIG_FILE, "platform": directory / PLATFORM_CONFIG_FILE}
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for key, path in paths.items():
            path.write_text(texts[key])
    except OSError as exc:
        raise OutputError(f"cannot write the serving config: {exc.strerror or exc}", where=str(directory)) from None
    return paths
