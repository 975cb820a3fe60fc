"""Numerical verification: run the original and the optimized model on the same inputs and compare outputs.

Inputs are either a user's samples (``--sample FILE.npz``, keys = signature input
keys) or generated from the signature: dtypes and shapes as declared, unknown
batch dimensions set to ``batch`` and other unknown dimensions to ``dynamic``,
and string inputs drawn from the keys of the graph's lookup tables when it has
any (random words would all miss the vocabulary and only test the default value).

The rule an output must meet (documented in docs/measurements/benchmarks.md)::

    max|a - b| <= atol + rtol * max|a|        (a = original, b = optimized)

over finite elements, with no NaN/Inf mismatch and the same shape and dtype.
The lossless default is ``atol = rtol = 1e-4``: folding batch norms and
constants reorders float arithmetic, which moves results by a few ulps scaled by
the magnitude of the activations, never by 1e-4 of the largest output.
Lossy passes (fp16/int8 weights) declare their own ``tolerance`` (a max relative
difference); :func:`tolerance_for` turns a pipeline run into the tolerance its
result is checked against. Non-float outputs (ints, bools, strings) must be equal.

The relative difference reported is ``max|a - b| / max(max|a|, tiny)``: relative
to the output's scale rather than element by element, so a value that happens to
be near zero does not turn a 1e-7 wobble into an "error" of 100%.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from graphopt.errors import GraphoptError, InputError, VerificationError
from graphopt.graph.names import node_name, source_of
from graphopt.model import Model, Signature
from graphopt.runtime import memory

if TYPE_CHECKING:  # pragma: no cover
    from graphopt.passes.pipeline import PipelineResult

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4
# A lossy pass that forgot to declare its tolerance still gets checked, loosely.
LOSSY_FALLBACK_RTOL = 5e-2
DEFAULT_DYNAMIC = 32
# Ops that fill a table from (table, keys, values) inputs: initialisers, and the import graphopt's loaders
# write for mutable tables.
_TABLE_LOADS = ("InitializeTableV2", "InitializeTable", "LookupTableImportV2", "LookupTableImport")
_TINY = 1e-12
_NMS_OPS = ("NonMaxSuppression", "NonMaxSuppressionV2", "NonMaxSuppressionV3", "NonMaxSuppressionV4",
            "NonMaxSuppressionV5", "CombinedNonMaxSuppression")


@dataclass(frozen=True)
class Tolerance:
    """``max|a-b| <= atol + rtol * max|a|`` per output; ``source`` says where the numbers came from."""

    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    source: str = "lossless default"

    def allowed(self, scale: float) -> float:
        return self.atol + self.rtol * scale

    def to_dict(self) -> dict[str, Any]:
        return {"atol": self.atol, "rtol": self.rtol, "source": self.source}


def as_tolerance(value: "Tolerance | float | None", *, source: str = "--tolerance") -> Tolerance | None:
    """A float means both atol and rtol (``--tolerance 1e-3``); a Tolerance passes through."""
    if value is None or isinstance(value, Tolerance):
        return value
    value = float(value)
    if not value >= 0:
        raise InputError(f"tolerance must be >= 0, got {value}", where=source)
    return Tolerance(atol=value, rtol=value, source=source)


def tolerance_for(result: "PipelineResult", *, host: Any = None) -> Tolerance:
    """The tolerance a pipeline's result is verified against.

    Lossless pipelines get the default. When lossy passes were applied, their
    declared tolerances add up (each adds its own error on top of the others'),
    and the sum becomes the relative tolerance.
    """
    lossy = [r for r in result.records if r.lossy and r.status == "applied"]
    if not lossy:
        return Tolerance()
    from graphopt.plugins import default_host

    registry = (host or default_host()).registry
    total, names = 0.0, []
    for record in lossy:
        info = registry.passes.get(record.name)
        declared = getattr(info.cls, "tolerance", None) if info else None
        total += float(declared) if declared is not None else LOSSY_FALLBACK_RTOL
        names.append(record.name)
    names = list(dict.fromkeys(names))
    return Tolerance(atol=DEFAULT_ATOL, rtol=max(total, DEFAULT_RTOL), source=f"lossy: {', '.join(names)}")


# --- inputs ------------------------------------------------------------------------


def _producers(graph_def: Any) -> dict[str, Any]:
    nodes = {n.name: n for n in graph_def.node}
    for fn in graph_def.library.function:
        for n in fn.node_def:
            nodes.setdefault(n.name, n)
    return nodes


def _const_strings(node: Any, nodes: Mapping[str, Any], depth: int = 0) -> list[str]:
    # Keys usually come straight from a Const, sometimes through Identity (frozen variables).
    if node is None or depth > 4:
        return []
    if node.op == "Const":
        t = node.attr["value"].tensor
        if t.dtype == 7:  # DT_STRING
            return [v.decode("utf-8", "replace") for v in t.string_val]
        return []
    if node.op in ("Identity", "IdentityN", "StopGradient") and node.input:
        return _const_strings(nodes.get(source_of(node.input[0])), nodes, depth + 1)
    return []


def _vocabulary_file(node: Any, nodes: Mapping[str, Any], model: Model) -> list[str]:
    # InitializeTableFromTextFileV2(table, filename): the file is an asset; key_index -2 = whole line.
    if node.attr["key_index"].i != -2 or len(node.input) < 2:
        return []
    names = _const_strings(nodes.get(node_name(node.input[1])), nodes)
    for name in names:
        candidates = [Path(name), *(Path(p) for k, p in model.assets.items() if Path(k).name == Path(name).name)]
        for path in candidates:
            if path.is_file():
                try:
                    return [line for line in path.read_text(errors="replace").splitlines() if line][:10000]
                except OSError:
                    continue
    return []


def table_vocabulary(model: Model) -> list[str]:
    """String keys of every lookup table the graph fills (``InitializeTableV2``/``LookupTableImportV2`` consts,
    vocabulary files)."""
    nodes = _producers(model.graph_def)
    keys: list[str] = []
    for node in nodes.values():
        if node.op in _TABLE_LOADS and len(node.input) >= 2:
            keys.extend(_const_strings(nodes.get(node_name(node.input[1])), nodes))
        elif node.op in ("InitializeTableFromTextFileV2", "InitializeTableFromTextFile"):
            keys.extend(_vocabulary_file(node, nodes, model))
    return list(dict.fromkeys(keys))


def make_inputs(model: Model, *, batch: int = 1, dynamic: int = DEFAULT_DYNAMIC, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs from the signature; string inputs hit the lookup tables' keys when there are any."""
    from graphopt.runtime.session import random_inputs

    sig = model.signature
    vocab = table_vocabulary(model) if any(s.dtype == "string" for s in sig.inputs.values()) else []
    vocabulary = {k: vocab for k, s in sig.inputs.items() if s.dtype == "string"} if vocab else None
    return random_inputs(sig, batch=batch, dynamic=dynamic, seed=seed, vocabulary=vocabulary)


def load_samples(path: str | Path, signature: Signature) -> dict[str, np.ndarray]:
    """Read ``--sample FILE.npz``: one array per signature input key, checked against dtype and shape."""
    import tensorflow as tf

    where = str(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise InputError("sample file not found", where=where,
                         hint="give an .npz with one array per signature input key (numpy.savez)") from None
    except ValueError as exc:
        # Object arrays need pickle, which would execute code from the file.
        raise InputError(f"sample file cannot be read safely: {exc}", where=where,
                         hint="save strings as a numpy str/bytes array (not dtype=object)") from None
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError: not an .npz
        raise InputError(f"not a readable .npz file: {exc}", where=where,
                         hint="write one with numpy.savez(path, <input_key>=array, ...)") from None
    # Let users name inputs by tensor or node name too: they see those in graphs.
    by_name = {}
    for key, spec in signature.inputs.items():
        by_name[spec.name] = key
        by_name[spec.node] = key
    renamed = {by_name.get(k, k): v for k, v in arrays.items()}
    missing = sorted(set(signature.inputs) - set(renamed))
    unknown = sorted(set(renamed) - set(signature.inputs))
    if missing or unknown:
        details = ([f"missing: {', '.join(missing)}"] if missing else []) + \
                  ([f"not an input: {', '.join(unknown)}"] if unknown else [])
        raise InputError("sample file does not match the signature's inputs", where=where, details=details,
                         hint=f"the inputs are: {', '.join(signature.inputs)}")
    out: dict[str, np.ndarray] = {}
    for key, spec in signature.inputs.items():
        out[key] = _coerce_sample(renamed[key], spec, tf, where=f"{where}, input {key}")
    return out


def _coerce_sample(value: np.ndarray, spec: Any, tf: Any, *, where: str) -> np.ndarray:
    want = tf.as_dtype(spec.dtype)
    kind = value.dtype.kind
    if want == tf.string:
        if kind not in "SU":
            raise InputError(f"expected strings, got {value.dtype}", where=where)
        value = value.astype(object).astype(bytes) if kind == "U" else value
    elif want.is_floating:
        if kind not in "fiu":
            raise InputError(f"expected {spec.dtype}, got {value.dtype}", where=where)
        value = value.astype(want.as_numpy_dtype)  # float64 from numpy defaults is common and harmless
    elif want.is_integer or want == tf.bool:
        target = np.dtype(want.as_numpy_dtype)
        if kind not in "iub" or (kind != "b" and want == tf.bool):
            raise InputError(f"expected {spec.dtype}, got {value.dtype}", where=where)
        if kind in "iu" and value.size and (value.min() < np.iinfo(target).min or value.max() > np.iinfo(target).max):
            raise InputError(f"values do not fit {spec.dtype}", where=where)
        value = value.astype(target)
    if spec.shape is not None:
        if value.ndim != len(spec.shape) or any(d is not None and d >= 0 and d != v
                                                for d, v in zip(spec.shape, value.shape)):
            shown = "[" + ", ".join("?" if d is None else str(d) for d in spec.shape) + "]"
            raise InputError(f"shape {list(value.shape)} does not fit the signature's {shown}", where=where)
    return value


# --- comparison --------------------------------------------------------------------


@dataclass
class OutputDiff:
    """How one output of the optimized model differs from the original's."""

    key: str
    dtype: str
    shape: list[int]
    optimized_dtype: str
    optimized_shape: list[int]
    max_abs: float = 0.0
    max_rel: float = 0.0
    scale: float = 0.0  # max|a| of the original: what rtol is relative to
    mismatched: int = 0  # elements that differ (exact comparison) or exceed the tolerance
    nan_mismatch: int = 0  # positions where exactly one side is NaN
    inf_mismatch: int = 0  # positions where exactly one side is +/-Inf, or the signs differ
    allowed: float = 0.0
    passed: bool = True
    exact: bool = False  # compared for equality (non-float)
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class VerificationReport:
    """Per-output differences, the tolerance used and how the inputs were made."""

    outputs: list[OutputDiff]
    tolerance: Tolerance
    inputs: dict[str, dict[str, Any]]
    input_source: str  # "random (seed 0, batch 1, dynamic dims 32)" or the sample file
    notes: list[str] = field(default_factory=list)
    detection: bool = False  # the graph runs non-max suppression

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def max_abs(self) -> float:
        """Worst absolute difference; ``inf`` when an output has NaN/Inf where the other has a number."""
        return max((_overall(o, o.max_abs) for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        """Worst relative difference; ``inf`` when an output has NaN/Inf where the other has a number."""
        return max((_overall(o, o.max_rel) for o in self.outputs), default=0.0)

    def worst(self, n: int = 5) -> list[OutputDiff]:
        """Failing outputs first, then by relative difference."""
        return sorted(self.outputs, key=lambda o: (o.passed, -_finite(o.max_rel)))[:n]

    def check(self) -> "VerificationReport":
        """Raise :class:`VerificationError` listing the worst outputs if any output failed; else return self."""
        if self.passed:
            return self
        failing = [o for o in self.outputs if not o.passed]
        details = [_describe(o) for o in self.worst(5) if not o.passed]
        if len(failing) > 5:
            details.append(f"... and {len(failing) - 5} more")
        details.append(f"inputs: {self.input_source}; tolerance: atol {self.tolerance.atol:g} + rtol "
                       f"{self.tolerance.rtol:g} x max|original| ({self.tolerance.source})")
        details.extend(self.notes)
        hint = "nothing was written; find the pass with --keep-going / a shorter --transforms list"
        if any(o.problem and "shape" in o.problem and "detection" in o.problem for o in failing):
            hint = ("detection outputs change length when scores sit near the NMS threshold; verify with real "
                    "images (--sample FILE.npz), or skip with --no-verify")
        elif self.detection:
            hint = ("the graph runs non-max suppression: a tiny change in scores can reorder or swap the boxes it "
                    "keeps, so boxes/classes differ position by position; verify with real images "
                    "(--sample FILE.npz) or a looser --tolerance, or skip with --no-verify")
        elif self.tolerance.source != "lossless default":
            hint = "a looser --tolerance accepts this if the error is acceptable; " + hint
        raise VerificationError(f"{len(failing)} of {len(self.outputs)} outputs differ from the original beyond "
                                "tolerance", where="verification", hint=hint, details=details)

    def lines(self) -> list[str]:
        """Plain-text summary, one line per output, for the CLI to print (worst first)."""
        head = (f"verification {'passed' if self.passed else 'FAILED'}: {len(self.outputs)} outputs, inputs "
                f"{self.input_source}; tolerance atol {self.tolerance.atol:g} + rtol {self.tolerance.rtol:g} x "
                f"max|original| ({self.tolerance.source})")
        body = []
        for o in self.worst(len(self.outputs)):
            status = "ok" if o.passed else "FAIL"
            body.append(f"  {status:4} {_describe(o)}" if (o.problem or o.exact or not o.passed) else
                        f"  {status:4} {o.key}: max abs {o.max_abs:.3g}, rel {o.max_rel:.3g}")
        return [head, *body]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "max_abs": self.max_abs, "max_rel": self.max_rel,
                "tolerance": self.tolerance.to_dict(), "input_source": self.input_source, "inputs": self.inputs,
                "outputs": [o.to_dict() for o in self.outputs], "notes": list(self.notes),
                "detection": self.detection}


def _overall(o: OutputDiff, value: float) -> float:
    # Per-output figures cover finite elements only; a NaN that appeared must not read as "no difference".
    return float("inf") if o.nan_mismatch or o.inf_mismatch or (o.problem and not o.passed) else value


def _finite(x: float) -> float:
    return x if np.isfinite(x) else 1e300


def _describe(o: OutputDiff) -> str:
    if o.problem:
        return f"{o.key}: {o.problem}"
    parts = [f"{o.key}: max abs {o.max_abs:.3g}, rel {o.max_rel:.3g} (allowed abs {o.allowed:.3g})"]
    if o.exact:
        parts = [f"{o.key}: {o.mismatched} of {int(np.prod(o.shape)) if o.shape else 1} values differ "
                 f"({o.dtype}, compared exactly)"]
    if o.nan_mismatch:
        parts.append(f"{o.nan_mismatch} NaN mismatches")
    if o.inf_mismatch:
        parts.append(f"{o.inf_mismatch} Inf mismatches")
    return ", ".join(parts)


def compare_output(key: str, a: np.ndarray, b: np.ndarray, tol: Tolerance, *, detection: bool = False) -> OutputDiff:
    """Compare one output array ``a`` (original) with ``b`` (optimized)."""
    a, b = np.asarray(a), np.asarray(b)
    diff = OutputDiff(key=key, dtype=str(a.dtype), shape=list(a.shape), optimized_dtype=str(b.dtype),
                      optimized_shape=list(b.shape))
    if a.shape != b.shape:
        diff.passed = False
        diff.problem = f"shape {list(a.shape)} in the original, {list(b.shape)} after optimizing"
        if detection:
            diff.problem += (" (detection output: the number of boxes kept by non-max suppression changed, so "
                             "element-wise comparison is impossible)")
        return diff
    if a.dtype != b.dtype:
        diff.passed = False
        diff.problem = f"dtype {a.dtype} in the original, {b.dtype} after optimizing"
        return diff
    if a.dtype.kind not in "fc":
        diff.exact = True
        diff.mismatched = int(np.count_nonzero(a != b))
        if a.dtype.kind in "iub" and a.size:
            d = np.abs(a.astype(np.float64) - b.astype(np.float64))
            diff.max_abs = float(d.max())
            diff.scale = float(np.abs(a.astype(np.float64)).max())
            diff.max_rel = diff.max_abs / max(diff.scale, _TINY)
        elif diff.mismatched:
            diff.max_abs = diff.max_rel = float("inf")
        diff.passed = diff.mismatched == 0
        return diff
    a64, b64 = a.astype(np.complex128 if a.dtype.kind == "c" else np.float64), b.astype(
        np.complex128 if b.dtype.kind == "c" else np.float64)
    nan_a, nan_b = np.isnan(a64), np.isnan(b64)
    inf_a, inf_b = np.isinf(a64), np.isinf(b64)
    diff.nan_mismatch = int(np.count_nonzero(nan_a != nan_b))
    diff.inf_mismatch = int(np.count_nonzero((inf_a != inf_b) | (inf_a & inf_b & (a64 != b64))))
    finite = np.isfinite(a64) & np.isfinite(b64)
    if finite.any():
        d = np.abs(a64[finite] - b64[finite])
        diff.max_abs = float(d.max())
        diff.scale = float(np.abs(a64[finite]).max())
        diff.max_rel = diff.max_abs / max(diff.scale, _TINY)
    diff.allowed = tol.allowed(diff.scale)
    diff.mismatched = int(np.count_nonzero(np.abs(a64[finite] - b64[finite]) > diff.allowed)) if finite.any() else 0
    diff.passed = diff.max_abs <= diff.allowed and not diff.nan_mismatch and not diff.inf_mismatch
    return diff


def _describe_inputs(feeds: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    return {k: {"dtype": str(v.dtype), "shape": list(np.shape(v))} for k, v in feeds.items()}


def _has_nms(model: Model) -> bool:
    return any(n.op in _NMS_OPS for n in _producers(model.graph_def).values())


def verification_config() -> Any:
    """The session config verification runs both models with (when no ``config`` is given).

    The graphs run as written: no Grappler rewrites (``disable_meta_optimizer``), no classic
    graph optimizer (constant folding / CSE, ``opt_level L0``), and the session keeps the pruned
    GraphDef rather than a second, full Graph (``place_pruned_graph``). Those rewrites do not
    change what a graph computes beyond float reordering -- which the tolerance is for -- but on
    a 100 MB graph Grappler alone costs ~700 MB and the classic optimizer ~130 MB more while the
    session is made. Pass a ``config`` (e.g. ``graphopt.runtime.config.session_config("full")``) for TF's defaults.
    """
    from graphopt.runtime.config import session_config

    config = session_config("off")
    config.graph_options.optimizer_options.opt_level = -1  # L0
    config.graph_options.place_pruned_graph = True
    return config


@dataclass
class Reference:
    """The original model's side of a verification: the inputs, its outputs and what comparing needs.

    Small (arrays the size of one batch): computing it first lets a caller drop the original
    model before the optimized one runs (``graphopt optimize`` does, before its pipeline).
    """

    signature: Signature
    feeds: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    input_source: str
    detection: bool  # the original graph runs non-max suppression
    notes: list[str] = field(default_factory=list)  # how the original ran, when less confined than it should


def _scan(model: Model, which: str, allow_unsafe: bool | Iterable[str]) -> None:
    from graphopt.security.scan import ensure_safe

    ensure_safe(model.graph_def, allow=allow_unsafe, action=f"run the {which} model for verification",
                source=model.source)


def _inputs(original: Model, samples: str | Path | Mapping[str, np.ndarray] | None, seed: int, batch: int,
            dynamic: int) -> tuple[dict[str, np.ndarray], str]:
    sig = original.signature
    if samples is None:
        feeds = make_inputs(original, batch=batch, dynamic=dynamic, seed=seed)
        source = f"random (seed {seed}, batch {batch}, unknown dims {dynamic})"
        if any(s.dtype == "string" for s in sig.inputs.values()):
            source += "; strings from the lookup tables' keys" if table_vocabulary(original) else "; random strings"
    elif isinstance(samples, (str, Path)):
        feeds = load_samples(samples, sig)
        source = f"samples from {samples}"
    else:
        feeds = {k: np.asarray(v) for k, v in samples.items()}
        source = "given samples"
    return feeds, source


def _run_original(original: Model, feeds: dict[str, np.ndarray], source: str, config: Any) -> Reference:
    from graphopt.runtime.session import Session

    # The original's GraphDef is left as it was (importing fills default attrs in place): a pipeline may
    # still run on it, and its records (sizes) must not see a graph verification touched.
    outputs, notes = _run(partial(Session, add_defaults=False), original, feeds, config, "original")
    memory.release()  # the original's session is closed: give its graph and buffers back before anything else
    return Reference(original.signature, feeds, outputs, source, _has_nms(original), notes)


def reference_outputs(original: Model, *, samples: str | Path | Mapping[str, np.ndarray] | None = None, seed: int = 0,
                      batch: int = 1, dynamic: int = DEFAULT_DYNAMIC, config: Any = None,
                      allow_unsafe: bool | Iterable[str] = False) -> Reference:
    """Run the original model once on the verification inputs (see :func:`verify`) and keep what comparing needs.

    Give the result to :func:`verify_result` / :func:`compare` instead of the model. The graph
    is scanned first (:mod:`graphopt.security.scan`), as :func:`verify` does.
    """
    _scan(original, "original", allow_unsafe)
    feeds, source = _inputs(original, samples, seed, batch, dynamic)
    return _run_original(original, feeds, source, config)


def verify(original: Model, optimized: Model, *, samples: str | Path | Mapping[str, np.ndarray] | None = None,
           tolerance: Tolerance | float | None = None, lossy_tolerance: Tolerance | float | None = None,
           seed: int = 0, batch: int = 1, dynamic: int = DEFAULT_DYNAMIC, config: Any = None,
           allow_unsafe: bool | Iterable[str] = False) -> VerificationReport:
    """Run both models on the same inputs and compare every output of the original's signature.

    ``samples`` is a path to an ``.npz`` or a dict of arrays; without it inputs are
    generated (see :func:`make_inputs`). The tolerance used is ``tolerance`` if
    given (a user's explicit choice), else ``lossy_tolerance`` (from
    :func:`tolerance_for` of a lossy pipeline), else the lossless default.
    Never raises on a mismatch: call :meth:`VerificationReport.check` for that.
    Both graphs are scanned first (:mod:`graphopt.security.scan`): running them executes
    their ops, so file/Python/network ops are refused unless ``allow_unsafe``.
    The models run one after the other, each session closed and released before
    the next, with :func:`verification_config` unless ``config`` is given.
    """
    _scan(original, "original", allow_unsafe)
    _scan(optimized, "optimized", allow_unsafe)
    tol = _tolerance(tolerance, lossy_tolerance)
    feeds, source = _inputs(original, samples, seed, batch, dynamic)
    _check_inputs_kept(original.signature, optimized)
    ref = _run_original(original, feeds, source, config)
    return _compare(ref, optimized, tol, config)


def compare(ref: Reference, optimized: Model, *, tolerance: Tolerance | float | None = None,
            lossy_tolerance: Tolerance | float | None = None, config: Any = None,
            allow_unsafe: bool | Iterable[str] = False) -> VerificationReport:
    """Run ``optimized`` on the inputs of ``ref`` (from :func:`reference_outputs`) and compare, as :func:`verify`."""
    _scan(optimized, "optimized", allow_unsafe)
    tol = _tolerance(tolerance, lossy_tolerance)
    _check_inputs_kept(ref.signature, optimized)
    return _compare(ref, optimized, tol, config)


def _tolerance(tolerance: Tolerance | float | None, lossy_tolerance: Tolerance | float | None) -> Tolerance:
    return as_tolerance(tolerance) or as_tolerance(lossy_tolerance, source="lossy passes") or Tolerance()


def _check_inputs_kept(sig: Signature, optimized: Model) -> None:
    missing_in = [k for k in sig.inputs if k not in optimized.signature.inputs]
    if missing_in:
        raise VerificationError("the optimized model lost signature inputs", where="verification",
                                details=[f"missing: {', '.join(missing_in)}"])


def _compare(ref: Reference, optimized: Model, tol: Tolerance, config: Any) -> VerificationReport:
    from graphopt.runtime.session import Session

    missing_out = [k for k in ref.signature.outputs if k not in optimized.signature.outputs]
    b_out, notes = _run(Session, optimized, {k: v for k, v in ref.feeds.items() if k in optimized.signature.inputs},
                        config, "optimized")
    memory.release()
    report = compare_outputs(ref, b_out, tol, missing=missing_out)
    report.notes.extend(n for n in [*ref.notes, *notes] if n not in report.notes)
    return report


def compare_outputs(ref: Reference, outputs: Mapping[str, np.ndarray], tol: Tolerance, *,
                    missing: Iterable[str] = ()) -> VerificationReport:
    """Compare outputs computed elsewhere (another runtime: ``graphopt.targets``) with the reference's.

    An output key of the reference absent from ``outputs`` (or named in ``missing``) fails.
    """
    a_out = ref.outputs
    missing_out = set(missing) | {k for k in ref.signature.outputs if k not in outputs}
    b_out = outputs
    diffs: list[OutputDiff] = []
    for key in ref.signature.outputs:
        if key in missing_out:
            diffs.append(OutputDiff(key=key, dtype=str(a_out[key].dtype), shape=list(a_out[key].shape),
                                    optimized_dtype="-", optimized_shape=[], passed=False,
                                    problem="missing from the optimized model's signature"))
            continue
        diffs.append(compare_output(key, a_out[key], b_out[key], tol, detection=ref.detection))
    notes = []
    if ref.detection:
        notes.append("the graph runs non-max suppression: outputs after it can legitimately reorder or change "
                     "length when scores tie")
    return VerificationReport(diffs, tol, _describe_inputs(ref.feeds), ref.input_source, notes,
                              detection=ref.detection)


def _run(session_cls: Any, model: Model, feeds: Mapping[str, np.ndarray], config: Any,
         which: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """The model's outputs on ``feeds``, and notes for the report when it ran less confined than it should.

    In a sandboxed child (:mod:`graphopt.security.sandbox`: memory, CPU and wall-clock limits, writes only in
    its own folder) unless the sandbox is off; running out of a limit or crashing raises ResourceError.
    """
    from graphopt.security.sandbox import confinement_notes, default_limits, sandbox_for

    limits = default_limits(model.size_bytes)
    if not limits.confined:
        return _run_here(session_cls, model, feeds, config, which), confinement_notes(None, limits, "verification")
    from graphopt.runtime.session import write_model

    with sandbox_for(model.size_bytes, label=f"the {which} model") as box:
        spec = write_model(model, box)
        try:
            outputs = box.call(_run_in_child, spec, dict(feeds),
                               config.SerializeToString() if config is not None else None, which)
        except GraphoptError as exc:
            exc.where = exc.where if exc.where and exc.where != "sandboxed child" else f"{which} model {model.source}"
            raise
        return outputs, box.notes("verification")


def _run_in_child(spec: Mapping[str, Any], feeds: Mapping[str, np.ndarray], config_bytes: bytes | None,
                  which: str) -> dict[str, np.ndarray]:
    # The confined child's side of _run: the model written by write_model, run as _run_here would.
    from graphopt.runtime.session import Session, read_model

    config = None
    if config_bytes is not None:
        from tensorflow.core.protobuf import config_pb2

        config = config_pb2.ConfigProto.FromString(config_bytes)
    return _run_here(Session, read_model(spec), feeds, config, which)


def _run_here(session_cls: Any, model: Model, feeds: Mapping[str, np.ndarray], config: Any, which: str):
    try:
        # With verification's own config nothing rewrites the graph, so its weights can be fed rather than
        # embedded: the session's copies of the graph then hold no weights (same kernels, same results).
        own = config is None
        with session_cls(model, config=verification_config() if own else config, feed_weights=own) as sess:
            return sess.run(feeds)
    except GraphoptError:
        raise
    except Exception as exc:  # a TF error: the graph does not run on these inputs
        from graphopt.security.sandbox import resource_error

        limit_hit = resource_error(exc)  # out of memory, or (in the sandbox) a refused write
        if limit_hit is not None:
            raise limit_hit from None
        message = getattr(exc, "message", None) or str(exc)
        first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
        code = VerificationError if which == "optimized" else InputError
        raise code(f"the {which} model failed to run on the verification inputs: {first[:300]}",
                   where=f"{which} model {model.source}",
                   hint="give real inputs with --sample FILE.npz, or skip verification with --no-verify") from None


def verify_result(original: "Model | Reference", result: "PipelineResult", *, sample: str | Path | None = None,
                  tolerance: float | None = None, seed: int = 0, batch: int = 1, dynamic: int = DEFAULT_DYNAMIC,
                  check: bool = True, allow_unsafe: bool | Iterable[str] = False) -> VerificationReport:
    """What ``graphopt optimize`` calls after the pipeline and before writing anything.

    Uses the pipeline's own tolerance when it was lossy (:func:`tolerance_for`),
    a user's ``--tolerance`` when given, and ``--sample`` inputs when given.
    With ``check`` a failure raises :class:`VerificationError` (exit code 5).
    ``original`` may be the original model's :class:`Reference` (from
    :func:`reference_outputs`, computed before the pipeline ran); its inputs were
    fixed then, so ``sample``/``seed``/``batch``/``dynamic`` are not used again.
    """
    lossy = tolerance_for(result)
    if isinstance(original, Reference):
        report = compare(original, result.model, tolerance=tolerance, lossy_tolerance=lossy,
                         allow_unsafe=allow_unsafe)
    else:
        report = verify(original, result.model, samples=sample, tolerance=tolerance, lossy_tolerance=lossy,
                        seed=seed, batch=batch, dynamic=dynamic, allow_unsafe=allow_unsafe)
    return report.check() if check else report
