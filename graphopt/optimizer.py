"""``graphopt.optimize``: load any model, run a pipeline, verify the result, write it. The one flow.

The CLI's ``optimize``, the demo and the benchmarks call :func:`optimize`; a
library user gets the same guarantees from it as from the command line:

- every output path (``out``, ``serving_dir``, ``report``) is checked before the
  pipeline runs, so a bad one fails in seconds and nothing is written;
- the original's reference outputs are computed before the pipeline (the
  original and the optimized graph never run, or are held, at the same time);
- nothing is written until the result was verified;
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

from graphopt.errors import OutputError, UsageError
from graphopt.runtime import memory

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from graphopt.model import Model
    from graphopt.passes.pipeline import Pipeline, PipelineResult
    from graphopt.plugins import Host
    from graphopt.verify.compare import VerificationReport

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

    @property
    def model(self) -> "Model":
        """The optimized model."""
        return self.pipeline.model

    @property
    def records(self) -> list[Any]:
        """One ``PassRecord`` per pass run (see :class:`graphopt.passes.pipeline.PassRecord`)."""
        return self.pipeline.records

    def to_dict(self) -> dict[str, Any]:
        """The JSON ``--report`` holds (docs/analysis.md)."""
        return {"source": self.source, "outputs": [str(p) for p in self.written], "format": self.format,
                "signature": self.model.signature.to_dict(), **self.pipeline.to_dict(),
                "verification": self.verification.to_dict() if self.verification else None}


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
        return Pipeline.from_config(config, host=host)
    if transforms is None or isinstance(transforms, str):
        return Pipeline.parse(transforms or default_spec(host), host=host)
    return Pipeline(list(transforms), host=host)


def optimize(src: "str | os.PathLike | Model", out: str | os.PathLike | None = None, *,
             transforms: "str | Sequence[Any] | Pipeline | None" = None, config: str | os.PathLike | None = None,
             format: SaveFormat | None = None, serving_dir: str | os.PathLike | None = None,
             version: int | None = None, warmup: bool = True, report: str | os.PathLike | None = None,
             verify: bool = True, tolerance: float | None = None,
             sample: "str | os.PathLike | Mapping[str, np.ndarray] | None" = None,
             allow_unsafe: bool | Sequence[str] = False, keep_going: bool = False, force: bool = False,
             signature: str | None = None, tags: Sequence[str] | None = None, inputs: Sequence[str] | None = None,
             outputs: Sequence[str] | None = None, host: "Host | None" = None,
             progress: Progress | None = None,
             on_pipeline_done: "Callable[[PipelineResult], None] | None" = None,
             on_verified: "Callable[[VerificationReport], None] | None" = None) -> OptimizeResult:
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
    show them either way.
    """
    from graphopt.loaders import load
    from graphopt.model import Model
    from graphopt.savers import check_destination, format_for, refuse_input_overlap

    say = progress or (lambda _line: None)
    if version is not None and serving_dir is None:
        raise UsageError("a version goes with a serving dir", where="optimize", hint="give --serving-dir BASE too")
    pipeline = build_pipeline(transforms, config=config, host=host)  # bad transform strings fail before loading
    out_path = Path(out) if out is not None else None
    fmt: SaveFormat | None = format_for(out_path, format) if out_path is not None else None  # type: ignore[assignment]
    if report is not None and Path(report).exists() and not force:
        raise OutputError("the report file already exists", where=str(report), hint="pass --force to replace it")
    if isinstance(src, Model):
        model, source = src, src.source
    else:
        model = load(src, signature=signature, tags=list(tags) if tags is not None else None,
                     inputs=list(inputs) if inputs else None, outputs=list(outputs) if outputs else None)
        source = str(src)
    if out_path is not None:
        check_destination(model, out_path.absolute(), force)  # fail before the (slow) pipeline runs
    for other in (serving_dir, report):  # neither may write into (or over) the input either
        if other is not None:
            refuse_input_overlap(model, Path(other))
    say(f"loaded {source} ({model.format}): {model.node_count} nodes, {model.size_bytes:,} bytes")
    reference = None
    if verify:
        from graphopt.verify.compare import reference_outputs

        # The original runs now, before the pipeline: its outputs (one batch) are all verification needs
        # of it, so the original and optimized graphs never run, or need holding, at the same time.
        reference = reference_outputs(model, samples=sample, allow_unsafe=allow_unsafe)
    result = pipeline.run(model, keep_going=keep_going)
    del model  # nothing below reads the original: its graph is garbage unless the pipeline kept it unchanged
    memory.release()
    if on_pipeline_done is not None:
        on_pipeline_done(result)
    done = OptimizeResult(result, format=fmt, source=source)
    if reference is not None:
        from graphopt.verify.compare import verify_result

        done.verification = verify_result(reference, result, tolerance=tolerance, check=False,
                                          allow_unsafe=allow_unsafe)
        del reference
        if on_verified is not None:
            on_verified(done.verification)
        done.verification.check()  # raises VerificationError before anything is written
    if out_path is not None:
        from graphopt.savers import save

        path = save(result.model, out_path, format=fmt, force=force)
        done.written.append(path)
        say(f"saved {fmt} to {path}: {result.model.node_count} nodes, {result.model.size_bytes:,} bytes")
    if serving_dir is not None:
        done.written.append(_export(result.model, Path(serving_dir), version, warmup=warmup, sample=sample,
                                    force=force, say=say))
    if report is not None:
        Path(report).write_text(json.dumps(done.to_dict(), indent=2, default=str))
    return done


def _export(model: "Model", base: Path, version: int | None, *, warmup: bool, sample: Any, force: bool,
            say: Progress) -> Path:
    """Versioned export, plus the session/platform config a pre-optimized model wants beside it."""
    from graphopt.runtime.config import PLATFORM_CONFIG_FILE, recommended_optimizer
    from graphopt.serving.export import export_versioned

    samples = None
    if sample is not None:
        from graphopt.verify.compare import load_samples

        samples = load_samples(sample, model.signature) if not isinstance(sample, Mapping) else dict(sample)
    optimizer = recommended_optimizer(model)
    path = export_versioned(model, base, version, warmup=warmup, samples=samples, force=force,
                            runtime_optimizer=optimizer)
    say(f"exported version {path.name} to {path} (runtime optimizer: {optimizer}; give TF Serving "
        f"--platform_config_file={path / 'assets.extra' / PLATFORM_CONFIG_FILE})")
    return path
