"""The Target interface: deliver an optimized model to a runtime, verified before anything is written.

A target is how graphopt

1. turns its optimized, frozen :class:`~graphopt.model.Model` into a runtime's form
   (:meth:`Target.convert`, writing one version's files);
2. runs that form (:meth:`Target.open` gives a :class:`Runner`), for verification,
   ``graphopt bench`` and ``graphopt serve``;
3. writes the runtime server's model repository: ``BASE/<version>/`` (atomically,
   :meth:`Target.export`) plus the server's config files (:meth:`Target.server_files`,
   :meth:`Target.base_files`);
4. serves it in ``graphopt serve`` (:func:`graphopt.serving.server.target_runner`, the server's
   model-execution seam, with :func:`served_signature_defs`).

:meth:`Target.write_version` is the one flow every target shares: refuse what the runtime
cannot take (:meth:`Target.check`, naming op and target), convert, write the manifest, load
the result *exactly as the server will* and compare its outputs with the TensorFlow
original's on the same inputs (the existing verification: per-output tolerance,
``--sample``). It writes into a hidden folder staged beside the version
(:class:`graphopt.savers.Outputs`, which :func:`graphopt.optimize` and :meth:`Target.export`
use), and the version is moved into ``BASE`` only once verified: a failure at any step
leaves ``BASE`` as it was.

The manifest (``BASE/<version>/graphopt-target.json``) records the target, the precision,
the runtime settings the server must use (OpenVINO's ``plugin_config``...) and the
signature, so ``graphopt serve``, ``graphopt bench`` and ``graphopt serving-config`` all
run the export with the settings it was verified with. Servers ignore the file.

Targets are registered like passes (``graphopt_register_targets``); the built-in
``tfserving`` target (:mod:`graphopt.targets.tfserving`) is today's TF Serving export.
docs/develop/writing-a-target.md walks through writing one.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from graphopt.errors import GraphoptError, InputError, OutputError, UsageError, VerificationError
from graphopt.model import Model, Signature, TensorSpec

if TYPE_CHECKING:  # pragma: no cover
    from graphopt.plugins import Host
    from graphopt.serving.model_config import ServedModel
    from graphopt.verify.compare import Reference, Tolerance, VerificationReport

MANIFEST_FILE = "graphopt-target.json"
DEFAULT_TARGET = "tfserving"
# Preset ``serving`` without ``grappler_optimize`` (graphopt/builtin.py): the default pipeline of targets whose
# runtime is not TensorFlow, since grappler_optimize's fused kernels (_FusedConv2D...) exist only in TensorFlow.
PORTABLE_PRESET = "serving-portable"
Feeds = Mapping[str, np.ndarray]
Progress = Callable[[str], None]

# Ops that hold or query a lookup table: runtimes other than TensorFlow have no tables (their converters
# either fail on them or need the SavedModel's own initialiser, which a frozen graph does not have).
TABLE_OPS = frozenset({
    "HashTable", "HashTableV2", "MutableHashTable", "MutableHashTableV2", "MutableHashTableOfTensors",
    "MutableHashTableOfTensorsV2", "MutableDenseHashTable", "MutableDenseHashTableV2", "LookupTableFind",
    "LookupTableFindV2", "LookupTableImport", "LookupTableImportV2", "LookupTableInsert", "LookupTableInsertV2",
    "LookupTableSize", "LookupTableSizeV2", "LookupTableExport", "LookupTableExportV2", "InitializeTable",
    "InitializeTableV2", "InitializeTableFromTextFile", "InitializeTableFromTextFileV2", "AnonymousHashTable",
})


@dataclass(frozen=True)
class Precision:
    """One precision a target offers. A lossy one declares the tolerance it is verified against.

    ``tolerance`` is a maximum relative difference (``max|a-b| / max|a|`` per output), the same
    unit lossy passes declare; ``needs_samples`` means it is calibrated on the user's data
    (``--sample``), as post-training int8 quantization is.
    """

    name: str
    description: str
    lossy: bool = False
    tolerance: float | None = None
    needs_samples: bool = False


F32 = Precision("f32", "float32 throughout: lossless")


class Runner:
    """A model loaded by a runtime: ``run(feeds) -> outputs``, both keyed by the signature's keys.

    ``description`` says what runs it and with which settings (for reports and error messages).
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, signature: Signature, description: str) -> None:
        self.signature = signature
        self.description = description

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the runtime's resources (the default holds none)."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def signature_from_dict(data: Mapping[str, Any]) -> Signature:
    """The inverse of :meth:`Signature.to_dict` (manifests store signatures that way)."""

    def specs(side: Mapping[str, Any]) -> dict[str, TensorSpec]:
        return {k: TensorSpec(v["name"], v["dtype"], None if v["shape"] is None else
                              tuple(None if d is None or d < 0 else int(d) for d in v["shape"]))
                for k, v in side.items()}

    return Signature(inputs=specs(data["inputs"]), outputs=specs(data["outputs"]),
                     key=data.get("key", "serving_default"),
                     method_name=data.get("method_name", "tensorflow/serving/predict"))


@dataclass
class Manifest:
    """What ``BASE/<version>/graphopt-target.json`` records about an export."""

    target: str
    precision: str
    settings: dict[str, Any]
    signature: dict[str, Any]
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    graphopt: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def write(self, version_dir: Path) -> Path:
        path = Path(version_dir) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, version_dir: str | Path) -> Manifest | None:
        path = Path(version_dir) / MANIFEST_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(target=str(data["target"]), precision=str(data["precision"]),
                       settings=dict(data.get("settings") or {}), signature=dict(data["signature"]),
                       files=list(data.get("files") or []), notes=list(data.get("notes") or []),
                       graphopt=str(data.get("graphopt", "")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"unreadable target manifest: {type(exc).__name__}: {exc}", where=str(path),
                             hint="re-export the model with graphopt optimize --target ...") from None

    @property
    def sig(self) -> Signature:
        return signature_from_dict(self.signature)


@dataclass
class TargetExport:
    """What :meth:`Target.export` wrote: the version folder, the files beside it, and its verification."""

    target: str
    precision: str
    path: Path
    files: list[Path] = field(default_factory=list)
    verification: VerificationReport | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "precision": self.precision, "path": str(self.path),
                "files": [str(f) for f in self.files], "settings": dict(self.settings), "notes": list(self.notes),
                "verification": self.verification.to_dict() if self.verification else None}


class Target:
    """A runtime graphopt can deliver a model to. Subclass it, set the class attributes, implement
    :meth:`convert` and :meth:`open` (and :meth:`check` for what the runtime refuses), and register the
    class with ``graphopt_register_targets``.

    An instance is one choice of options (``precision``). Targets are created by name through the
    registry (:func:`create_target`), so a plugin's target is used exactly like a built-in one.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    server: ClassVar[str] = ""  # the model server that reads the export
    # Modules the runtime needs, imported before anything is timed (benchmarks count load, not import).
    runtime_modules: ClassVar[tuple[str, ...]] = ()
    precisions: ClassVar[dict[str, Precision]] = {"f32": F32}
    default_precision: ClassVar[str] = "f32"
    # The pipeline ``graphopt optimize --target NAME`` runs when no --transforms is given (None: optimize's own).
    transforms: ClassVar[str | None] = None
    origin: Any = None  # set by the registry: where the target came from

    def __init__(self, precision: str | None = None) -> None:
        precision = precision or self.default_precision
        if precision not in self.precisions:
            raise UsageError(f"target '{self.name}' has no precision '{precision}'", where="--precision",
                             hint=f"precisions of {self.name}: {', '.join(self.precisions)}")
        self.precision = precision

    # --- what a target declares ------------------------------------------------------------------

    @property
    def precision_info(self) -> Precision:
        return self.precisions[self.precision]

    def settings(self) -> dict[str, Any]:
        """Runtime settings the server must use (recorded in the manifest, the server config and used by
        :meth:`open`): the export is verified, benchmarked and served with exactly these."""
        return {}

    def notes(self) -> list[str]:
        """Facts about what the export stores, recorded in its manifest (e.g. how weights are stored)."""
        return []

    def describe(self, settings: Mapping[str, Any] | None = None) -> str:
        """One line: the runtime and its settings, e.g. ``openvino CPU, INFERENCE_PRECISION_HINT=f32``."""
        settings = self.settings() if settings is None else settings
        shown = ", ".join(f"{k}={v}" for k, v in settings.items())
        return f"{self.name} ({self.precision}{'; ' + shown if shown else ''})"

    def tolerance(self, lossy: Tolerance | None = None, given: Tolerance | float | None = None) -> Tolerance:
        """What the export's outputs are checked against: ``given`` (``--tolerance``) if set; else the
        lossless default, plus the lossy pipeline's (``lossy``) and this precision's declared tolerances."""
        from graphopt.verify.compare import DEFAULT_ATOL, DEFAULT_RTOL, Tolerance, as_tolerance

        explicit = as_tolerance(given)
        if explicit is not None:
            return explicit
        rtol, sources = 0.0, []
        if lossy is not None and lossy.source != "lossless default":
            rtol += lossy.rtol
            sources.append(lossy.source)
        prec = self.precision_info
        if prec.lossy:
            rtol += prec.tolerance if prec.tolerance is not None else 5e-2
            sources.append(f"target {self.name} precision {prec.name}")
        if not sources:
            return Tolerance()
        return Tolerance(atol=DEFAULT_ATOL, rtol=max(rtol, DEFAULT_RTOL), source="lossy: " + ", ".join(sources))

    # --- what a target implements ----------------------------------------------------------------

    def check_host(self) -> None:
        """Raise (:class:`UsageError`) when this machine cannot run the chosen options (a CPU without bf16...).

        Called before anything slow: a precision the CPU lacks is an error, never a silent fallback.
        """

    def check(self, model: Model) -> None:
        """Raise :class:`InputError` naming the op (and this target) for anything the runtime cannot take.

        Called before converting; :func:`refuse_tables_and_strings` covers what no runtime but TensorFlow has.
        """

    def convert(self, model: Model, out_dir: Path, *, samples: Feeds | None = None) -> list[str]:
        """Write the runtime's form of ``model`` into ``out_dir`` (one version folder); return the file names.

        ``model`` is graphopt's optimized, frozen graph with hint attributes stripped
        (:func:`portable_graph_def`); ``samples`` are the user's ``--sample`` arrays (calibration data
        for a precision with ``needs_samples``). Raise :class:`InputError` naming the op and the target
        for a conversion the runtime cannot do.
        """
        raise NotImplementedError

    def open(self, version_dir: Path, *, settings: Mapping[str, Any] | None = None) -> Runner:
        """Load ``version_dir`` as the server would, with ``settings`` (default: the manifest's, else
        :meth:`settings`), and return a :class:`Runner`."""
        raise NotImplementedError

    @classmethod
    def owns(cls, version_dir: Path) -> bool:
        """Whether ``version_dir`` holds this target's export when it has no manifest (a hand-made one)."""
        return False

    def server_files(self, models: Sequence[ServedModel], *, settings: Mapping[str, Mapping[str, Any]] | None = None
                     ) -> dict[str, str]:
        """The server's config files for ``models`` (``graphopt serving-config``): relative path -> text.

        ``settings`` maps a model name to the runtime settings its export was verified with.
        """
        raise UsageError(f"target '{self.name}' writes no server config", where="serving-config")

    def base_files(self, name: str, version_dir: Path, manifest: Manifest) -> dict[str, str]:
        """Files the server wants in ``BASE`` beside the versions (Triton's ``config.pbtxt``): name -> text.

        ``name`` is the model's name on the server, ``version_dir`` the version just written.
        """
        return {}

    # --- the shared flow -------------------------------------------------------------------------

    def prepare(self, model: Model) -> None:
        """Everything that can refuse before a slow step: the host's abilities, then the model's ops."""
        self.check_host()
        self.check(model)

    def write_version(self, model: Model, directory: Path, *, reference: Reference | None = None,
                      tolerance: Tolerance | None = None, samples: Feeds | None = None, warmup: bool = True,
                      model_name: str = "", on_verified: Callable[[VerificationReport], None] | None = None
                      ) -> TargetExport:
        """Write one complete, verified version folder at ``directory`` (which must not exist yet).

        Converts (:meth:`convert`), writes the manifest, loads the result with :meth:`open` exactly as
        the server will and compares its outputs with ``reference`` (the TensorFlow original's, from
        :func:`graphopt.verify.compare.reference_outputs`) against ``tolerance`` (see :meth:`tolerance`);
        a difference raises :class:`VerificationError`. Not atomic by itself: callers write into a
        temporary folder and move it into place (:meth:`export`, :func:`graphopt.optimize`).
        """
        from graphopt.verify.compare import compare_outputs

        directory = Path(directory)
        self.prepare(model)
        prec = self.precision_info
        if prec.needs_samples and not samples:
            raise UsageError(f"precision {prec.name} of target '{self.name}' is calibrated on your data",
                             where="--precision", hint="give representative inputs with --sample FILE.npz")
        tol = tolerance or self.tolerance()
        directory.mkdir()
        portable = portable_model(model)
        files = self.convert(portable, directory, samples=samples if prec.needs_samples else None)
        del portable
        manifest = Manifest(self.name, self.precision, self.settings(), model.signature.to_dict(),
                            files=sorted(files), notes=self.notes(), graphopt=_graphopt_version())
        manifest.write(directory)
        report = None
        if reference is not None:
            outputs, runtime = run_for_verification(self, directory, reference.feeds)
            report = compare_outputs(reference, outputs, tol)
            report.notes.append(f"runtime: {runtime}, compared with the TensorFlow original")
            if on_verified is not None:
                on_verified(report)
            report.check()  # raises VerificationError: the caller removes the folder, nothing is served
        if warmup:
            from graphopt.serving import warmup as warmup_mod

            # graphopt serve replays these (OpenVINO Model Server and Triton ignore the folder).
            warmup_mod.write_warmup(directory, warmup_mod.warmup_logs(model, samples, model_name=model_name))
        return TargetExport(self.name, self.precision, directory, [directory], report, self.settings())

    def export(self, model: Model, base: str | Path, version: int | None = None, *,
               reference: Reference | None = None, tolerance: Tolerance | None = None,
               samples: Feeds | None = None, warmup: bool = True, force: bool = False, model_name: str = "",
               progress: Progress | None = None,
               on_verified: Callable[[VerificationReport], None] | None = None) -> TargetExport:
        """Convert, verify and write ``BASE/<version>/`` atomically (plus :meth:`base_files` beside it).

        The version is staged next to its destination and moved into place only once
        :meth:`write_version` verified it; on any failure ``BASE`` is left as it was.
        """
        from graphopt.savers import Outputs
        from graphopt.serving.export import plan_version

        say = progress or (lambda _line: None)
        check_base(Path(base), self.name)
        self.prepare(model)
        done: list[TargetExport] = []
        with Outputs(force=force) as writes:
            item = plan_version(writes, base, version, flag="the serving base", reserve=False)
            writes.check_input(model)
            writes.reserve()
            writes.stage(item, lambda directory: done.append(self.write_version(
                model, directory, reference=reference, tolerance=tolerance, samples=samples, warmup=warmup,
                model_name=model_name, on_verified=on_verified)))
            writes.commit()
        export = done[0]
        export.path = item.path
        export.files = [item.path, *self.write_base_files(item.path, model_name)]
        say(f"exported version {item.path.name} for {self.server or self.name} to {item.path} ({self.describe()})")
        return export

    def write_base_files(self, version_dir: Path, model_name: str = "") -> list[Path]:
        """Write :meth:`base_files` for a version just committed (each file atomically); their paths."""
        base = Path(version_dir).parent
        manifest = Manifest.read(version_dir)
        if manifest is None:
            return []
        name = model_name or base.resolve().name
        return [write_atomic(base / f, text) for f, text in self.base_files(name, Path(version_dir), manifest).items()]


# --- helpers targets share ------------------------------------------------------------------------------------


def _graphopt_version() -> str:
    import graphopt

    return graphopt.__version__


def portable_graph_def(graph_def: Any) -> Any:
    """A copy of ``graph_def`` without ``_``-prefixed node attributes, in the function library too.

    They are hints for TensorFlow's own runtime (Grappler's ``_input_shapes``, ``_output_shapes``,
    ``_class`` colocation, XLA marks) that change nothing a graph computes; other converters choke
    on them (tf2onnx: "Could not infer the attribute type from the elements of the passed Iterable
    value"), so every target converts from this copy.
    """
    out = type(graph_def)()
    out.CopyFrom(graph_def)
    nodes = list(out.node) + [n for f in out.library.function for n in f.node_def]
    for node in nodes:
        for name in [a for a in node.attr if a.startswith("_")]:
            del node.attr[name]
    return out


def portable_model(model: Model) -> Model:
    """``model`` with :func:`portable_graph_def`'s graph (the original is not touched)."""
    return model.replace(graph_def=portable_graph_def(model.graph_def), metadata=dict(model.metadata))


def nodes_of(model: Model, ops: Iterable[str]) -> list[Any]:
    """Nodes (main graph and function bodies) whose op is one of ``ops``."""
    wanted = set(ops)
    nodes = list(model.graph_def.node) + [n for f in model.graph_def.library.function for n in f.node_def]
    return [n for n in nodes if n.op in wanted]


def unsupported(target: str, ops: Sequence[str], nodes: Sequence[str], reason: str, *, hint: str | None = None
                ) -> InputError:
    """The error every target raises for a conversion its runtime cannot do: it names the ops and the target."""
    shown = ", ".join(dict.fromkeys(ops))
    where = "node " + ", ".join(list(dict.fromkeys(nodes))[:3]) if nodes else f"target {target}"
    if nodes and len(set(nodes)) > 3:
        where += f" (+{len(set(nodes)) - 3} more)"
    return InputError(f"target '{target}' cannot convert op {shown}: {reason}", where=where,
                      hint=hint or "serve this model with TF Serving (the default target, --target tfserving); "
                                   "nothing was written")


def refuse_tables_and_strings(target: str, model: Model) -> None:
    """Refuse lookup tables and string tensors: graphopt's other runtimes have neither."""
    tables = nodes_of(model, TABLE_OPS)
    if tables:
        raise unsupported(target, [n.op for n in tables], [n.name for n in tables],
                          "lookup tables exist only in TensorFlow's runtime (this is a text model's vocabulary)")
    strings = [(side, k, s) for side, specs in (("input", model.signature.inputs), ("output", model.signature.outputs))
               for k, s in specs.items() if s.dtype == "string"]
    if strings:
        side, key, spec = strings[0]
        raise unsupported(target, ["Placeholder" if side == "input" else "string output"], [spec.node],
                          f"{side} '{key}' is a string tensor, which this runtime does not take")


def run_for_verification(target: Target, version_dir: Path, feeds: Feeds) -> tuple[dict[str, np.ndarray], str]:
    """Load ``version_dir`` with ``target`` (as the server will) and run ``feeds`` once: outputs, runner's description.

    The converted model is a stranger's graph in another runtime's hands: it runs in a confined child
    (:mod:`graphopt.security.sandbox`, the run's shared one when it fits), like every execution of a
    TensorFlow graph. The child makes the target again from its class and precision, so a target class
    must be importable by name (module level); one that is not runs here, and the description says so.
    """
    from graphopt.security import sandbox

    version_dir = Path(version_dir)
    try:
        cls_ref = sandbox.function_ref(type(target))
    except ValueError:
        outputs, description = open_and_run(target, version_dir, feeds)
        return outputs, f"{description} (unconfined: target class {type(target).__qualname__} is not importable)"
    from graphopt.savers import disk_bytes

    size = disk_bytes(version_dir)
    with sandbox.sandbox_for(size, label=f"target '{target.name}' running {version_dir.name}") as box:
        outputs, description = box.call(_run_in_child, cls_ref, target.precision, str(version_dir), feeds)
    return outputs, description


def _run_in_child(cls_ref: str, precision: str, version_dir: str, feeds: Feeds) -> tuple[dict[str, np.ndarray], str]:
    """:func:`run_for_verification`'s side in the confined child."""
    from graphopt.security._child import resolve

    return open_and_run(resolve(cls_ref)(precision), Path(version_dir), feeds)


def open_and_run(target: Target, version_dir: Path, feeds: Feeds) -> tuple[dict[str, np.ndarray], str]:
    """Open ``version_dir`` with ``target`` and run ``feeds`` once, in this process."""
    try:
        with target.open(version_dir) as runner:
            return runner.run(feeds), runner.description
    except GraphoptError:
        raise
    except Exception as exc:  # a runtime's own error: the converted model does not run on these inputs
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise VerificationError(f"target '{target.name}': the converted model failed to run on the verification "
                                f"inputs: {first}", where=str(version_dir),
                                hint="nothing was written; give real inputs with --sample FILE.npz") from None


def check_base(base: Path, target: str) -> None:
    """Refuse a ``base`` whose newest version another target wrote: a model server reads one kind of export."""
    from graphopt.serving.export import versions

    found = versions(base)
    if found:
        other = target_of(base / str(found[-1]))
        if other is not None and other != target:
            raise OutputError(f"{base} holds versions for target '{other}', not '{target}'", where=str(base),
                              hint="a model server reads one kind of export per model: give another --serving-dir")


def write_atomic(path: Path, text: str) -> Path:
    """Write a small config file by renaming a complete temporary file over it."""
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path.name}: {exc.strerror or exc}", where=str(path)) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# --- the registry, and finding the target of an export ------------------------------------------------------


def _host(host: Host | None) -> Host:
    from graphopt.plugins import default_host

    return host or default_host()


def target_names(host: Host | None = None) -> list[str]:
    return sorted(_host(host).registry.targets)


def target_class(name: str, host: Host | None = None) -> type[Target]:
    """The registered target class called ``name`` (:class:`UsageError` listing the others if none is)."""
    registry = _host(host).registry
    info = registry.targets.get(name)
    if info is None:
        import difflib

        close = difflib.get_close_matches(name, registry.targets, n=2, cutoff=0.5)
        known = ", ".join(sorted(registry.targets)) or "none"
        hint = (f"did you mean {' or '.join(repr(c) for c in close)}? " if close else "") + f"targets: {known}"
        failed = [f.distribution or f.plugin for f in registry.failures]
        if failed:
            hint += f"; plugin(s) that failed to load may provide it: {', '.join(failed)} (graphopt plugins)"
        raise UsageError(f"unknown target '{name}'", where="--target", hint=hint)
    cls = info.cls
    cls.origin = info.origin
    return cls


def create_target(name: str | None = None, precision: str | None = None, *, host: Host | None = None) -> Target:
    """An instance of the target called ``name`` (default ``tfserving``) with ``precision``."""
    cls = target_class(name or DEFAULT_TARGET, host)
    try:
        return cls(precision=precision)
    except GraphoptError:
        raise
    except Exception as exc:  # a plugin's constructor bug: name it
        from graphopt.errors import PluginError

        raise PluginError(f"target '{cls.name}' could not be created: {type(exc).__name__}: {exc}",
                          where=f"plugin {cls.origin}", hint="report it to the plugin's authors") from exc


def version_dir_of(path: str | Path) -> Path:
    """``BASE`` -> its newest ``BASE/<version>``; a version folder (or anything else) -> itself."""
    from graphopt.serving.export import versions

    path = Path(path)
    found = versions(path)
    return path / str(found[-1]) if found else path


def target_of(version_dir: str | Path, host: Host | None = None) -> str | None:
    """The target whose export ``version_dir`` holds: its manifest's, else the first registered target that
    :meth:`~Target.owns` it; ``None`` if none does."""
    version_dir = Path(version_dir)
    manifest = Manifest.read(version_dir)
    if manifest is not None:
        return manifest.target
    if not version_dir.is_dir():
        return None
    try:
        registry = _host(host).registry
    except Exception:  # noqa: BLE001 - no registry (a half-set-up host): fall back on what is built in
        return DEFAULT_TARGET if (version_dir / "saved_model.pb").is_file() else None
    ordered = sorted(registry.targets.values(), key=lambda i: i.name != DEFAULT_TARGET)
    for info in ordered:
        try:
            if info.cls.owns(version_dir):
                return info.name
        except Exception:  # noqa: BLE001,S112 - a plugin's broken owns() must not hide the others
            continue
    return None


def target_for_export(version_dir: str | Path, host: Host | None = None) -> Target:
    """The target instance that reads ``version_dir``, with the manifest's precision."""
    version_dir = Path(version_dir)
    name = target_of(version_dir, host)
    if name is None:
        raise InputError("no model export graphopt can run here", where=str(version_dir),
                         hint=f"a version folder holds saved_model.pb (TF Serving) or another target's files "
                              f"with {MANIFEST_FILE}; targets: {', '.join(target_names(host))}")
    manifest = Manifest.read(version_dir)
    return create_target(name, manifest.precision if manifest else None, host=host)


def open_export(path: str | Path, *, host: Host | None = None) -> Runner:
    """Open any target's export (``BASE`` or ``BASE/<version>``) with the settings it was verified with."""
    version_dir = version_dir_of(path)
    return target_for_export(version_dir, host).open(version_dir)


def manifest_settings(version_dir: Path) -> dict[str, Any] | None:
    """The runtime settings recorded with an export (``None`` when it has no manifest)."""
    manifest = Manifest.read(version_dir)
    return None if manifest is None else dict(manifest.settings)


# --- the server's seam ----------------------------------------------------------------------------------------


def served_signature_defs(version_dir: str | Path) -> dict[str, Any] | None:
    """``{key: SignatureDef}`` of a non-TensorFlow export, from its manifest; ``None`` for a SavedModel."""
    manifest = Manifest.read(version_dir)
    if manifest is None or manifest.target == DEFAULT_TARGET:
        return None
    sig = manifest.sig
    return {sig.key: sig.to_proto()}
