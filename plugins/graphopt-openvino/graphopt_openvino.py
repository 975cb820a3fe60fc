"""graphopt-openvino: deliver a graphopt-optimized model to OpenVINO Model Server, verified against TensorFlow.

Target ``openvino``. The conversion is OpenVINO's own TensorFlow frontend
(``openvino.convert_model`` on graphopt's optimized, frozen GraphDef): no converter is
written here. What this module adds is what makes the result a drop-in replacement for
a TF Serving export:

- **names**: every model input and output tensor is named by the original signature's key,
  so OVMS answers a TF Serving ``PredictRequest`` built from the signature as it is (OVMS uses
  tensor names as request keys);
- **layout**: ``BASE/<version>/model.xml`` + ``model.bin``, OVMS's model repository format
  (openvinotoolkit/model_server docs/models_repository.md), written atomically by graphopt;
  ``graphopt serving-config --target openvino`` writes OVMS's ``config.json``
  (docs/starting_server.md) with each model's ``plugin_config``;
- **precision** is a runtime setting in OpenVINO (``INFERENCE_PRECISION_HINT``), not a property
  of the IR, and the CPU plugin silently computes in bf16 wherever the CPU has it. So every
  export records the exact ``plugin_config`` it was verified with, the server config pins it,
  and ``graphopt serve`` / ``graphopt bench`` compile with it:

  ============  =========================================  ==================================  ==========
  precision     runtime setting                            weights in model.bin                tolerance
  ============  =========================================  ==================================  ==========
  ``f32``       ``INFERENCE_PRECISION_HINT: f32``           float32 (``compress_to_fp16=False``)  lossless
  ``bf16``      ``INFERENCE_PRECISION_HINT: bf16``          float16 (``compress_to_fp16=True``)   5e-2
  ``int8``      NNCF int8 IR; what stays in float runs      int8 for quantized ops, float32       0.1
                with hint ``bf16`` where the CPU has it     for the rest
                (else ``f32``)
  ============  =========================================  ==================================  ==========

  ``openvino.save_model`` compresses weights to float16 by default; that moves outputs by
  ~2e-4 of their scale, so the lossless ``f32`` export stores float32 weights. ``bf16``
  stores float16: the CPU rounds them to bf16 (fewer mantissa bits than float16) anyway, and
  the file is half the size. A precision the CPU lacks (``bf16`` without AVX512_BF16/AMX) is an
  error, never a fallback. ``int8`` is NNCF post-training quantization (``nncf.quantize``)
  calibrated on the user's ``--sample`` data.

Lookup tables and string tensors have no OpenVINO form here: they are refused, naming the op.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graphopt import hookimpl
from graphopt.errors import InputError, UsageError
from graphopt.model import Model, Signature, TensorSpec
from graphopt.targets.base import (
    PORTABLE_PRESET,
    Feeds,
    Manifest,
    Precision,
    Runner,
    Target,
    manifest_settings,
    nodes_of,
    refuse_tables_and_strings,
    unsupported,
)

XML, BIN = "model.xml", "model.bin"
CONFIG_FILE = "config.json"
DEVICE = "CPU"
# What each precision needs from the CPU plugin's OPTIMIZATION_CAPABILITIES.
CAPABILITY = {"bf16": "BF16", "int8": "INT8"}

PRECISIONS = {
    "f32": Precision("f32", "float32 weights and compute (INFERENCE_PRECISION_HINT f32): lossless"),
    # bf16 keeps 8 bits of mantissa (4e-3 per rounding), and depth accumulates it: measured on Keras nets
    # (benchmarks/targets_runtimes.py) 3e-3 (MobileNetV2), 8e-3 (EfficientNetB0), 2.2e-2 (ResNet50) of the logits' scale.
    "bf16": Precision("bf16", "bfloat16 compute (INFERENCE_PRECISION_HINT bf16), float16 weights; CPUs with "
                              "AVX512_BF16 or AMX", lossy=True, tolerance=5e-2),
    # NNCF's int8 (with bias correction), measured 8e-3 .. 4.4e-2 on the same nets; GTT's quantize_weights 7e-3 .. 0.10.
    "int8": Precision("int8", "NNCF post-training int8, calibrated on --sample data; what stays in float runs in "
                              "bf16 where the CPU has it, else f32",
                      lossy=True, tolerance=0.1, needs_samples=True),
}

# OpenVINO element types -> TensorFlow dtype names (for signatures read from a bare IR).
_OV_TO_TF = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64", "i8": "int8", "i16": "int16",
             "i32": "int32", "i64": "int64", "u8": "uint8", "u16": "uint16", "u32": "uint32", "u64": "uint64",
             "boolean": "bool"}


def cpu_capabilities() -> list[str]:
    """The CPU plugin's ``OPTIMIZATION_CAPABILITIES`` on this machine (``FP32``, ``BF16``, ``INT8``...)."""
    import openvino as ov

    return list(ov.Core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))


class OpenVINORunner(Runner):
    """An IR compiled for the CPU with fixed settings; one infer request, outputs copied out."""

    def __init__(self, version_dir: Path, settings: Mapping[str, Any], signature: Signature | None,
                 precision: str) -> None:
        import openvino as ov

        xml = _find_xml(version_dir)
        core = ov.Core()
        try:
            model = core.read_model(str(xml))
            self.compiled = core.compile_model(model, DEVICE, {k: str(v) for k, v in settings.items()})
        except Exception as exc:  # OpenVINO raises RuntimeError with its own multi-line text
            raise InputError(f"OpenVINO cannot load the model: {_reason(exc)}", where=str(xml)) from None
        self._request = self.compiled.create_infer_request()
        self._out_ports = list(self.compiled.outputs)
        self._out_keys = [p.get_any_name() for p in self._out_ports]
        in_keys = [p.get_any_name() for p in self.compiled.inputs]
        sig = signature or _signature_of(self.compiled)
        missing = [k for k in sig.outputs if k not in self._out_keys]
        if missing:
            raise InputError(f"the IR has no output named {', '.join(missing)}", where=str(xml),
                             hint="export it with graphopt optimize --target openvino")
        self._in_keys = set(in_keys)
        shown = ", ".join(f"{k}={v}" for k, v in settings.items())
        super().__init__(sig, f"openvino {ov.__version__} {DEVICE} ({precision}; {shown})")

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        missing = sorted(k for k in self.signature.inputs if k in self._in_keys and k not in feeds)
        if missing:
            raise InputError(f"no value for input {', '.join(missing)}", where=f"signature {self.signature.key}")
        results = self._request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items() if k in self._in_keys})
        # The request reuses its output buffers: copy before the next call overwrites them.
        out = {key: np.array(results[port]) for key, port in zip(self._out_keys, self._out_ports)}
        return {k: out[k] for k in self.signature.outputs}

    def close(self) -> None:
        self._request = None
        self.compiled = None


def _find_xml(version_dir: Path) -> Path:
    xml = Path(version_dir) / XML
    if xml.is_file():
        return xml
    found = sorted(p for p in Path(version_dir).glob("*.xml") if p.with_suffix(".bin").is_file())
    if not found:
        raise InputError("no OpenVINO IR (.xml + .bin) here", where=str(version_dir))
    return found[0]


def _signature_of(compiled: Any) -> Signature:
    """A signature from the IR's own tensor names (an IR graphopt did not write has no manifest)."""

    def specs(ports: Sequence[Any]) -> dict[str, TensorSpec]:
        out = {}
        for port in ports:
            shape = port.get_partial_shape()
            dims = None if shape.rank.is_dynamic else tuple(
                None if d.is_dynamic else d.get_length() for d in shape)
            name = port.get_any_name()
            out[name] = TensorSpec(name, _OV_TO_TF.get(port.get_element_type().get_type_name(), "float32"), dims)
        return out

    return Signature(specs(compiled.inputs), specs(compiled.outputs))


class OpenVINOTarget(Target):
    """OpenVINO IR for OpenVINO Model Server: BASE/<version>/model.xml + model.bin, config.json."""

    name = "openvino"
    description = ("OpenVINO Model Server: BASE/<version>/model.xml + model.bin (IR from openvino.convert_model), "
                   "inputs/outputs named by the signature's keys; config.json with the verified plugin_config")
    server = "OpenVINO Model Server"
    runtime_modules = ("openvino",)
    precisions = PRECISIONS
    default_precision = "f32"
    transforms = PORTABLE_PRESET

    def settings(self) -> dict[str, Any]:
        # PERFORMANCE_HINT is pinned too, so OVMS, graphopt serve and graphopt bench make the same streams.
        hint = "f32"
        if self.precision == "bf16":
            hint = "bf16"
        elif self.precision == "int8" and "BF16" in cpu_capabilities():
            # What NNCF left in float (first/last layers, softmax...) runs in bf16 where the CPU has it: in f32
            # those layers cost more than int8 saves (measured: MobileNetV2 int8 slower than f32). Recorded in
            # the manifest and config.json, verified with, and covered by int8's declared tolerance.
            hint = "bf16"
        return {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}

    def notes(self) -> list[str]:
        if self.precision == "bf16":
            return ["model.bin holds float16 weights (openvino.save_model compress_to_fp16=True): the CPU rounds "
                    "them to bf16 anyway, and the file is half the size"]
        if self.precision == "int8":
            return ["model.bin holds int8 weights where NNCF quantized (nncf.quantize, calibrated on --sample) and "
                    "float32 elsewhere (compress_to_fp16=False)"]
        return ["model.bin holds float32 weights (openvino.save_model compress_to_fp16=False: its float16 default "
                "moves outputs by ~2e-4 of their scale)"]

    def check_host(self) -> None:
        need = CAPABILITY.get(self.precision)
        if need is None:
            return
        have = cpu_capabilities()
        if need not in have:
            raise UsageError(f"this CPU cannot run OpenVINO in {self.precision}: its CPU plugin reports "
                             f"{', '.join(have) or 'nothing'}, not {need}", where="--precision",
                             hint=("bf16 needs AVX512_BF16 or AMX; " if need == "BF16" else "")
                                  + "use --precision f32 (OpenVINO does not fall back silently here)")

    def check(self, model: Model) -> None:
        refuse_tables_and_strings(self.name, model)
        fused = nodes_of(model, [n.op for n in model.graph_def.node if n.op.startswith("_Fused")])
        if fused:
            raise unsupported(self.name, [n.op for n in fused], [n.name for n in fused],
                              "a TensorFlow-only kernel made by grappler_optimize",
                              hint="leave grappler_optimize out of --transforms (the openvino target's default "
                                   "pipeline does: OpenVINO fuses for its own kernels); nothing was written")
        by_tensor: dict[str, list[str]] = {}
        for key, spec in model.signature.outputs.items():
            by_tensor.setdefault(spec.name, []).append(key)
        shared = [keys for keys in by_tensor.values() if len(keys) > 1]
        if shared:
            raise InputError(f"outputs {', '.join(shared[0])} are one tensor; OpenVINO names a tensor once, so "
                             "they cannot all be request keys", where=f"target {self.name}",
                             hint="serve it with TF Serving, or export a signature with one key per tensor")

    def convert(self, model: Model, out_dir: Path, *, samples: Feeds | None = None) -> list[str]:
        import openvino as ov

        sig = model.signature
        try:
            with _quiet():
                ov_model = ov.convert_model(model.graph_def, input=[s.name for s in sig.inputs.values()],
                                            output=list(dict.fromkeys(s.name for s in sig.outputs.values())))
        except Exception as exc:  # OpenVINO's frontend raises OpConversionFailure / RuntimeError / Exception
            raise _conversion_error(exc, model) from None
        _name_by_keys(ov_model, sig)
        compress = self.precision == "bf16"
        if self.precision == "int8":
            ov_model = _quantize(ov_model, sig, samples or {})
        out_dir = Path(out_dir)
        ov.save_model(ov_model, str(out_dir / XML), compress_to_fp16=compress)
        return [XML, BIN]

    def open(self, version_dir: Path, *, settings: Mapping[str, Any] | None = None) -> Runner:
        version_dir = Path(version_dir)
        manifest = Manifest.read(version_dir)
        if settings is None:
            settings = manifest_settings(version_dir) or self.settings()
        return OpenVINORunner(version_dir, settings, manifest.sig if manifest else None, self.precision)

    @classmethod
    def owns(cls, version_dir: Path) -> bool:
        return any(p.with_suffix(".bin").is_file() for p in Path(version_dir).glob("*.xml"))

    def server_files(self, models: Sequence[Any], *, settings: Mapping[str, Mapping[str, Any]] | None = None
                     ) -> dict[str, str]:
        """OVMS's ``config.json``: one ``model_config_list`` entry per model, with its verified ``plugin_config``."""
        entries = []
        for m in models:
            if m.labels:
                raise UsageError(f"model {m.name}: OpenVINO Model Server has no version labels", where="--label",
                                 hint="leave --label out for --target openvino")
            policy: dict[str, Any] = ({"specific": {"versions": sorted(set(m.versions))}} if m.versions
                                      else {"latest": {"num_versions": 1}})
            plugin = dict((settings or {}).get(m.name) or self.settings())
            entries.append({"config": {"name": m.name, "base_path": str(m.base_path), "target_device": DEVICE,
                                       "model_version_policy": policy,
                                       "plugin_config": {k: str(v) for k, v in plugin.items()}}})
        return {CONFIG_FILE: json.dumps({"model_config_list": entries}, indent=2) + "\n"}


@contextlib.contextmanager
def _quiet():
    """Core code never prints: OpenVINO's and NNCF's Python-side progress and warnings go nowhere."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _name_by_keys(ov_model: Any, sig: Signature) -> None:
    """Name each input/output tensor by its signature key only: OVMS uses tensor names as request keys."""
    for side, ports in ((sig.inputs, ov_model.inputs), (sig.outputs, ov_model.outputs)):
        for key, spec in side.items():
            port = next((p for p in ports if spec.name in p.get_names() or spec.node in p.get_names()), None)
            if port is None:
                raise InputError(f"OpenVINO's model has no tensor {spec.name} for signature key '{key}'",
                                 where="target openvino", hint="the converter dropped or renamed it")
            port.get_tensor().set_names({key})


def _quantize(ov_model: Any, sig: Signature, samples: Feeds) -> Any:
    """NNCF post-training int8 calibrated on ``samples``, fed in chunks of the model's batch (1 where it is open)."""
    import logging

    import nncf

    arrays = {k: np.asarray(v) for k, v in samples.items()}
    n = min((len(a) for a in arrays.values()), default=0)
    fixed = {sig.inputs[k].shape[0] for k in arrays if sig.inputs[k].shape and sig.inputs[k].shape[0] is not None}
    step = fixed.pop() if len(fixed) == 1 else 1
    if n < step or len(fixed) > 0 or n % step:
        items = [arrays]  # one batch as given: the model decides whether it takes it
    else:
        items = [{k: a[i:i + step] for k, a in arrays.items()} for i in range(0, n, step)]
    nncf.set_log_level(logging.ERROR)
    try:
        with _quiet():
            return nncf.quantize(ov_model, nncf.Dataset(items), subset_size=len(items))
    except Exception as exc:  # NNCF's own errors: say where
        raise InputError(f"target 'openvino': int8 quantization (nncf.quantize) failed: {_reason(exc)}",
                         where="--precision int8", hint="check the --sample data matches the signature") from None


def _reason(exc: BaseException) -> str:
    """The informative line of an OpenVINO error (its first lines only say which C++ file threw)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(exc).__name__])[0][:300]


_NO_RULE = re.compile(r"No conversion rule found for operations?:\s*([^\n]+)")
_FAILED = re.compile(r"Conversion is failed for:\s*([^\n]+)")
_DETAIL = re.compile(r"--\s*(\S+) with a message:\s*\n([^\n]+)")


def _conversion_error(exc: BaseException, model: Model) -> InputError:
    """OpenVINO's frontend error as graphopt's: the ops it could not convert, their nodes, and why."""
    text = str(exc)
    ops: list[str] = []
    for pattern in (_NO_RULE, _FAILED):
        for m in pattern.finditer(text):
            ops += [o.strip() for o in m.group(1).split(",") if o.strip()]
    if not ops:
        return InputError(f"target 'openvino': OpenVINO's TensorFlow frontend failed: {_reason(exc)}",
                          where="openvino.convert_model", hint="serve it with --target tfserving; nothing was written")
    details = {m.group(1): m.group(2).strip() for m in _DETAIL.finditer(text)}
    reason = details.get(ops[0]) or "OpenVINO's TensorFlow frontend has no conversion rule for it"
    nodes = [n.name for n in nodes_of(model, ops)]
    return unsupported("openvino", ops, nodes, reason)


@hookimpl
def graphopt_register_targets(register):
    register(OpenVINOTarget)
