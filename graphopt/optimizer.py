"""``graphopt.optimize``: load any model, run a pipeline, verify the result, write it. The one flow.

The CLI's ``optimize``, the demo and the benchmarks call :func:`optimize`; a
library user gets the same guarantees from it as from the command line:

- every output path (``out``, ``serving_dir``, ``report``) is checked before the
  model is loaded (replace rules, folders, not inside the input or another
  output) and locked against a concurrent run writing it, so a bad one fails in
  seconds; nothing is written when any one of them would fail;
- the original's reference outputs are computed before the pipeline (the
  original and the optimized graph never run, or are held, at the same time);
- nothing is written until the result was verified, and then every output is
  staged beside its destination and all are moved into place together
  (:class:`graphopt.savers.Outputs`); an error or interrupt leaves nothing behind;
- the result says what was written, with the per-pass records and the
  verification report.

``progress`` receives one line per step (what the CLI prints to stderr); core
code itself never prints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from graphopt.errors import GraphoptError, PassError, UsageError
from graphopt.runtime import memory
from graphopt.security.sandbox import with_shared_sandbox

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from graphopt.model import Model
    from graphopt.passes.pipeline import Pipeline, PipelineResult
    from graphopt.plugins import Host
    from graphopt.targets.base import Target, TargetExport
    from graphopt.verify.compare import Reference, VerificationReport

SaveFormat = Literal["saved_model", "pb", "pbtxt"]
Progress = Callable[[str], None]


@dataclass
class OptimizeResult:
    """What :func:`optimize` did: the pipeline's result, its verification and every path it wrote."""

    pipeline: "PipelineResult"
    verification: "VerificationReport | None" = None
    written: list[Path] = field(default_factory=list)
    format: SaveFormat | None = None
    source: str = ""
    target: "TargetExport | None" = None  # what --serving-dir received: target, precision, its own verification
    # optimize(diff=...): (pass, iteration, GraphDiff) per run of a chosen pass; error: why a failed run stopped.
    diffs: list[Any] = field(default_factory=list)
    error: Any = None
    serving_line: str = ""  # what to tell the user about the serving export (where it went, how to serve it)
    report_path: Path | None = None

    @property
    def model(self) -> "Model":
        """The optimized model."""
        return self.pipeline.model

    @property
    def records(self) -> list[Any]:
        """One ``PassRecord`` per pass run (see :class:`graphopt.passes.pipeline.PassRecord`)."""
        return self.pipeline.records

    def to_dict(self) -> dict[str, Any]:
        """The JSON ``--report`` holds (docs/guide/analysis.md)."""
        return {"source": self.source, "outputs": [str(p) for p in self.written], "format": self.format,
                "signature": self.model.signature.to_dict(), **self.pipeline.to_dict(),
                "verification": self.verification.to_dict() if self.verification else None,
                "target": self.target.to_dict() if self.target else None,
                "status": "failed" if self.error is not None or (self.verification is not None
                                                                 and not self.verification.passed) else "ok",
                "error": None if self.error is None else {"message": self.error.message, "where": self.error.where,
                                                          "hint": self.error.hint, "code": int(self.error.code)},
                "diffs": [{"pass": name, "iteration": it, "diff": d.to_dict()} for name, it, d in self.diffs]}


def default_spec(host: "Host") -> str:
    """The pipeline ``optimize`` runs when none is given: preset ``serving`` where it is registered."""
    return "serving" if "serving" in host.registry.presets else "gtt-seed"


def build_pipeline(transforms: "str | Sequence[Any] | Pipeline | None" = None, *, config: str | os.PathLike | None = None,
                   host: "Host | None" = None) -> "Pipeline":
    """A pipeline from a transform string / preset, a list of passes and strings, or a TOML config file."""
    from graphopt.passes.pipeline import Pipeline
    from graphopt.plugins import default_host

    host = host or default_host()
    if config is not None and transforms is not None:
        raise UsageError("give transforms or a config file, not both", where="optimize")
    if isinstance(transforms, Pipeline):
        return transforms
    if config is not None:
        return Pipeline.from_config(Path(config), host=host)
    if transforms is None or isinstance(transforms, str):
        return Pipeline.parse(transforms or default_spec(host), host=host)
    return Pipeline(list(transforms), host=host)


@with_shared_sandbox  # the graph's executions (verification, constant folding, Grappler) share one sandboxed child
def optimize(src: "str | os.PathLike | Model", out: str | os.PathLike | None = None, *,
             transforms: "str | Sequence[Any] | Pipeline | None" = None, config: str | os.PathLike | None = None,
             format: SaveFormat | None = None, serving_dir: str | os.PathLike | None = None,
             version: int | None = None, warmup: bool = True, report: str | os.PathLike | None = None,
             verify: bool = True, tolerance: float | None = None,
             sample: "str | os.PathLike | Mapping[str, np.ndarray] | None" = None,
             allow_unsafe: bool | Sequence[str] = False, keep_going: bool = False, force: bool = False,
             explain: bool = False, target: str | None = None, precision: str | None = None,
             input_shapes: "Mapping[str, Sequence[int]] | Sequence[str] | None" = None,
             diff: Sequence[str] | None = None, strict: bool = False,
             signature: str | None = None, tags: Sequence[str] | None = None, inputs: Sequence[str] | None = None,
             outputs: Sequence[str] | None = None, host: "Host | None" = None,
             progress: Progress | None = None,
             on_pipeline_done: "Callable[[PipelineResult], None] | None" = None,
             on_verified: "Callable[[VerificationReport], None] | None" = None,
             on_target_verified: "Callable[[VerificationReport], None] | None" = None,
             on_loaded: "Callable[[Model], None] | None" = None, announce_writes: bool = True) -> OptimizeResult:
    """Load ``src``, run ``transforms`` (default: preset ``serving``), verify, and write the result.

    ``src`` is anything :func:`graphopt.load` reads, or a loaded :class:`Model`.
    ``out`` is a SavedModel folder or a ``.pb``/``.pbtxt`` file; ``serving_dir``
    a TF Serving base (``BASE/<version>/`` with warm-up records); both may be
    given, or neither (then nothing is written and the result is only returned).
    ``report`` receives the JSON of :meth:`OptimizeResult.to_dict`.

    Raises :class:`~graphopt.errors.VerificationError` (nothing written) when the
    result differs from the original beyond ``tolerance`` (default 1e-4, or the
    lossy passes' own), and the other :class:`~graphopt.errors.GraphoptError`
    classes for what went wrong and where. ``on_pipeline_done`` and
    ``on_verified`` see the pipeline's result and the verification report as
    soon as each exists (before a failed verification raises), so a caller can
    show them either way. ``target`` names the runtime target ``serving_dir`` is written for (default
    ``tfserving``; plugins add ``openvino``, ``onnx``... see :mod:`graphopt.targets`) and ``precision`` its
    option; a target other than TF Serving converts the verified graph, and its runtime's outputs are
    verified against the original's too (``on_target_verified`` sees that report) before the version is
    moved into place. ``explain`` keeps in each pass record (and the report) the pass's
    explanations: per candidate site of its rules, whether it fired and why not.

    ``input_shapes`` specializes the inputs right after loading (``{"image": (1, 224, 224, 3)}``, or
    ``["image=1,224,224,3"]``, or ``["sample"]`` for the shapes of ``sample``; see
    :mod:`graphopt.passes.shapes`). ``diff`` names passes (or ``["all"]``) whose before/after diff goes
    into the result and the report. ``strict`` turns passes rolled back under ``keep_going`` into a
    :class:`~graphopt.errors.PassError` after the pipeline (all passes still run, so the report lists
    every failure). When the pipeline or verification fails, ``on_pipeline_done`` still sees the
    records so far and ``report`` is still written (``"status": "failed"`` with the error), nothing else.
    ``on_loaded`` sees the model as loaded. ``announce_writes=False`` leaves the lines saying what was
    written to the caller (:func:`written_lines`): a confined run's parent says them once it moved the
    outputs into place (:mod:`graphopt.confined_run`).
    """
    from graphopt.loaders import load
    from graphopt.model import Model
    from graphopt.savers import Outputs, write_model
    from graphopt.targets.base import DEFAULT_TARGET

    say = progress or (lambda _line: None)
    runtime, transforms = check_options(target, precision, host=host, serving_dir=serving_dir, version=version,
                                        sample=sample, transforms=transforms, config=config)
    pipeline = build_pipeline(transforms, config=config, host=host)  # bad transform strings fail before loading
    with Outputs(force=force, source=src.source if isinstance(src, Model) else src) as writes:
        # Every output is checked before the model is even loaded (a bad one fails in seconds, and none is
        # written when any would fail), then reserved against a concurrent run writing the same path.
        plan = plan_outputs(writes, out=out, format=format, serving_dir=serving_dir, version=version, report=report,
                            runtime=runtime)
        out_item, serving_item, report_item, fmt = plan.out_item, plan.serving_item, plan.report_item, plan.format
        writes.check_source(src.source if isinstance(src, Model) else src)
        writes.reserve()
        if isinstance(src, Model):
            model, source = src, src.source
        else:
            model = load(src, signature=signature, tags=list(tags) if tags is not None else None,
                         inputs=list(inputs) if inputs else None, outputs=list(outputs) if outputs else None,
                         allow_ops=allow_unsafe)
            source = str(src)
        writes.check_input(model)  # a loader may read from elsewhere than the path given (a Hub cache)
        if on_loaded is not None:
            on_loaded(model)
        if input_shapes:
            model = _specialize(model, input_shapes, sample)
        if serving_item is not None:
            runtime.prepare(model)  # what the target refuses (tables, strings; a CPU without bf16), before the pipeline
        say(f"loaded {source} ({model.format}): {model.node_count} nodes, {model.size_bytes:,} bytes")
        reference = None
        if verify:
            from graphopt.verify.compare import reference_outputs

            # The original runs now, before the pipeline: its outputs (one batch) are all verification needs
            # of it, so the original and optimized graphs never run, or need holding, at the same time.
            reference = reference_outputs(model, samples=sample if isinstance(sample, Mapping) or sample is None
                                          else Path(sample), allow_unsafe=allow_unsafe)
        diffs = _watch_diffs(pipeline, diff)
        try:
            result = pipeline.run(model, keep_going=keep_going, allow_ops=allow_unsafe, explain=explain)
        except GraphoptError as exc:  # the records so far are shown and reported all the same (docs/guide/errors.md)
            partial = getattr(exc, "partial", None)
            if partial is not None:
                if on_pipeline_done is not None:
                    on_pipeline_done(partial)
                _failed_report(writes, report_item, OptimizeResult(partial, format=fmt, source=source,
                                                                   diffs=diffs.diffs if diffs else []), exc)
            raise
        finally:
            if diffs is not None:
                pipeline.host.pm.unregister(diffs)
        del model  # nothing below reads the original: its graph is garbage unless the pipeline kept it unchanged
        memory.release()
        if on_pipeline_done is not None:
            on_pipeline_done(result)
        done = OptimizeResult(result, format=fmt, source=source, diffs=diffs.diffs if diffs else [])
        if strict and result.unexpected_rollbacks:
            error = _strict_error(result)
            _failed_report(writes, report_item, done, error)
            raise error
        if reference is not None:
            from graphopt.verify.compare import verify_result

            done.verification = verify_result(reference, result, tolerance=tolerance, check=False,
                                              allow_unsafe=allow_unsafe)
            if runtime.name == DEFAULT_TARGET:
                del reference  # TF Serving runs the graph just verified; other runtimes are compared below
            if on_verified is not None:
                on_verified(done.verification)
            if not done.verification.passed:
                _failed_report(writes, report_item, done, None)
            done.verification.check()  # raises VerificationError before anything is written
        # Each output is staged beside its destination, then all are moved into place together.
        optimized = result.model
        if out_item is not None:
            writes.stage(out_item, lambda target: write_model(optimized, target, fmt or "saved_model"))
        if serving_item is not None:
            lossy = done.verification.tolerance if done.verification is not None else None
            done.target, done.serving_line = _stage_version(
                writes, serving_item, optimized, runtime, warmup=warmup, sample=sample,
                reference=reference if runtime.name != DEFAULT_TARGET else None,
                tolerance=runtime.tolerance(lossy, tolerance), on_verified=on_target_verified)
            done.target.path = serving_item.path  # where the staged folder is moved by the commit
            done.target.files = [serving_item.path]  # not the staged paths; the base's files are added after the commit
        done.written = [item.path for item in (out_item, serving_item) if item is not None]
        if report_item is not None:
            text = json.dumps(done.to_dict(), indent=2, default=str)
            writes.stage(report_item, lambda target: target.write_text(text, encoding="utf-8"))
        writes.commit()
    done.report_path = report_item.path if report_item is not None else None
    if done.target is not None and serving_item is not None and announce_writes:
        done.target.files = [serving_item.path, *runtime.write_base_files(serving_item.path)]
    if announce_writes:
        for line in written_lines(done):
            say(line)
    return done


def written_lines(done: OptimizeResult) -> list[str]:
    """What :func:`optimize` says once its outputs are in place: one line per output written."""
    lines = []
    if done.format is not None and done.written:  # a format is set only for -o, whose path is written first
        model = done.model
        lines.append(f"saved {done.format} to {done.written[0]}: {model.node_count} nodes, {model.size_bytes:,} bytes")
    if done.serving_line:
        lines.append(done.serving_line)
    if done.report_path is not None:
        lines.append(f"wrote the report to {done.report_path}")
    return lines


@dataclass
class OutputPlan:
    """The outputs of one run, checked and added to its :class:`~graphopt.savers.Outputs` (not reserved yet)."""

    out_item: Any
    serving_item: Any
    report_item: Any
    format: SaveFormat | None


def check_options(target: str | None, precision: str | None, *, host: "Host | None", serving_dir: Any,
                  version: int | None, sample: Any, transforms: Any, config: Any) -> tuple["Target", Any]:
    """The target named and the transforms to run: options that contradict each other fail here, before anything
    is loaded (and before a confined run's child starts)."""
    from graphopt.targets.base import DEFAULT_TARGET, create_target

    if version is not None and serving_dir is None:
        raise UsageError("a version goes with a serving dir", where="optimize", hint="give --serving-dir BASE too")
    runtime = create_target(target, precision, host=host)  # unknown target / precision: fail before anything
    if serving_dir is not None:
        runtime.check_host()  # a precision this CPU lacks fails now, not after the pipeline
    if runtime.name != DEFAULT_TARGET and serving_dir is None:
        raise UsageError(f"target '{runtime.name}' writes a model server's repository", where="--target",
                         hint="give --serving-dir BASE")
    if runtime.precision_info.needs_samples and sample is None:
        raise UsageError(f"precision {runtime.precision} of target '{runtime.name}' is calibrated on your data",
                         where="--precision", hint="give representative inputs with --sample FILE.npz")
    if transforms is None and config is None and runtime.transforms is not None:
        transforms = runtime.transforms  # e.g. no grappler_optimize: its fused kernels are TensorFlow's own
    return runtime, transforms


def plan_outputs(writes: Any, *, out: Any, format: SaveFormat | None, serving_dir: Any, version: int | None,
                 report: Any, runtime: "Target") -> OutputPlan:
    """Check every output path of a run and add it to ``writes`` (see :class:`graphopt.savers.Outputs`)."""
    from graphopt.savers import format_for
    from graphopt.serving.export import plan_version
    from graphopt.targets.base import check_base

    out_path = Path(out) if out is not None else None
    fmt: SaveFormat | None = format_for(out_path, format) if out_path is not None else None  # type: ignore[assignment]
    out_item = writes.add(out_path, fmt or "saved_model", flag="-o", reserve=False) if out_path is not None else None
    if serving_dir is not None:
        check_base(Path(serving_dir), runtime.name)
    serving_item = (plan_version(writes, serving_dir, version, flag="--serving-dir", reserve=False)
                    if serving_dir is not None else None)
    report_item = (writes.add(report, "report", flag="--report", what="the report file", reserve=False)
                   if report is not None else None)
    return OutputPlan(out_item, serving_item, report_item, fmt)


def _specialize(model: "Model", shapes: Any, sample: Any) -> "Model":
    """``model`` with the input shapes asked for (``--input-shape``), before its reference outputs are computed."""
    from graphopt.passes.shapes import parse_shapes, specialize

    if isinstance(shapes, Mapping):
        return specialize(model, shapes)
    items = list(shapes)
    if "sample" in items:
        if sample is None:
            raise UsageError("--input-shape sample needs --sample FILE.npz", where="--input-shape")
        from graphopt.verify.compare import load_samples

        arrays = load_samples(sample, model.signature) if not isinstance(sample, Mapping) else dict(sample)
        items = [i for i in items if i != "sample"] + [f"{k}={','.join(map(str, a.shape))}" for k, a in arrays.items()]
    return specialize(model, parse_shapes(items, model.signature))


def _watch_diffs(pipeline: "Pipeline", passes: Sequence[str] | None) -> Any:
    """A :class:`~graphopt.analysis.diff.PassDiffs` registered on the pipeline's host, or None."""
    if not passes:
        return None
    from graphopt.analysis.diff import PassDiffs

    names = {p.name for p in pipeline.passes()}
    unknown = sorted(set(passes) - names - {"all"})
    if unknown:
        raise UsageError(f"--diff names '{unknown[0]}', which is not in the pipeline", where="--diff",
                         hint=f"passes in it: {', '.join(sorted(names))} (or 'all')")
    watcher = PassDiffs(list(passes))
    pipeline.host.pm.register(watcher)
    return watcher


def _strict_error(result: "PipelineResult") -> PassError:
    rolled = result.unexpected_rollbacks
    return PassError(f"{len(rolled)} pass(es) failed and were rolled back, and --strict is set", where="--strict",
                     details=[f"{r.name}: {(r.error or '').splitlines()[0][:200]}" for r in rolled[:6]],
                     hint="fix or drop those passes, or run without --strict to accept the rollbacks")


def _failed_report(writes: Any, item: Any, done: OptimizeResult, error: Any) -> None:
    """Write the report of a run about to fail with ``error`` (None: its verification failed). Only the
    report is written: the model outputs are never staged."""
    done.error = error
    if item is not None:
        text = json.dumps(done.to_dict(), indent=2, default=str)
        writes.stage(item, lambda target: target.write_text(text, encoding="utf-8"))
        writes.commit()


def _stage_version(writes: Any, item: Any, model: "Model", runtime: "Target", *, warmup: bool, sample: Any,
                   reference: "Reference | None", tolerance: Any,
                   on_verified: "Callable[[VerificationReport], None] | None") -> tuple["TargetExport", str]:
    """Stage a versioned export for ``runtime`` (TF Serving: the SavedModel plus the session/platform config a
    pre-optimized model wants; another target: its converted model, verified against ``reference``)."""
    from graphopt.runtime.config import PLATFORM_CONFIG_FILE

    samples = None
    if sample is not None:
        from graphopt.verify.compare import load_samples

        samples = load_samples(sample, model.signature) if not isinstance(sample, Mapping) else dict(sample)
    done: list[TargetExport] = []
    writes.stage(item, lambda directory: done.append(runtime.write_version(
        model, directory, reference=reference, tolerance=tolerance, samples=samples, warmup=warmup,
        on_verified=on_verified)))
    export, path = done[0], item.path
    if runtime.name == "tfserving":
        optimizer = export.settings.get("runtime_optimizer")
        return export, (f"exported version {path.name} to {path} (runtime optimizer: {optimizer}; give TF Serving "
                        f"--platform_config_file={path / 'assets.extra' / PLATFORM_CONFIG_FILE})")
    return export, (f"exported version {path.name} for {runtime.server or runtime.name} to {path} "
                    f"({runtime.describe()}); server config: graphopt serving-config --target {runtime.name} "
                    f"--model NAME={path.parent} -o DIR")
