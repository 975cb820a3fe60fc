"""The variants every suite model is measured in, and how each is made, saved and served.

* ``original``: the author's model, frozen by graphopt's loader and saved with
  no pass applied, so every ratio measures the passes and nothing else;
* ``gtt-seed``: the seed post's GTT list (preset ``gtt-seed``);
* ``grappler-offline``: TensorFlow's ``OptimizeGraph`` run offline with its
  default optimizers and no device placement -- the plain baseline anyone can
  run -- served with TensorFlow's default session config;
* ``serving``, ``serving-fp16``, ``serving-int8``: graphopt's presets, each
  served with the session config graphopt ships for it
  (``session_config.pbtxt`` beside the version folder).

Every variant is written as ``<cache>/variants/<model>/<variant>/1/`` (a TF
Serving base with version 1).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VARIANTS = ["original", "gtt-seed", "grappler-offline", "serving", "serving-fp16", "serving-int8"]
PRESET_OF = {"gtt-seed": "gtt-seed", "serving": "serving", "serving-fp16": "serving-fp16",
             "serving-int8": "serving-int8"}
SHIPPED = {"serving", "serving-fp16", "serving-int8"}  # served with the config graphopt ships


@dataclass
class Variant:
    name: str
    model: Any  # graphopt Model (in memory, for verification)
    path: Path | None  # the SavedModel folder (BASE/1)
    seconds: float  # time to optimize
    lossy: bool = False
    tolerance: Any = None
    runtime: str = "full"  # what bench is asked to use: full, or shipped
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)


def available_presets(host: Any) -> set[str]:
    return set(host.registry.presets)


def _pipeline(name: str, host: Any) -> Any:
    from graphopt.passes.pipeline import Pipeline

    if name == "grappler-offline":
        # Plain OptimizeGraph: default optimizers, no device placement (the baseline the issue measured).
        cls = host.registry.passes["grappler_optimize"].cls
        return Pipeline([cls(device="")], host=host)
    return Pipeline([PRESET_OF[name]], host=host)


def _save(model: Any, base: Path, runtime: str) -> Path:
    """Write ``base/1`` as a SavedModel, plus the shipped session config when the variant ships one."""
    from graphopt.savers import write_saved_model

    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    path = base / "1"
    write_saved_model(model, path)
    if runtime == "shipped":
        from graphopt.runtime.config import recommended_optimizer, write_serving_config

        write_serving_config(base, runtime_optimizer=recommended_optimizer(model))
    return path


def make_variant(name: str, original: Any, out: Path, host: Any) -> Variant:
    """Optimize ``original`` into variant ``name`` and save it under ``out/<name>``; a missing preset is skipped."""
    from graphopt.verify.compare import tolerance_for

    runtime = "shipped" if name in SHIPPED else "full"
    if name == "original":
        t0 = time.perf_counter()
        path = _save(original, out / name, runtime)
        return Variant(name, original, path, time.perf_counter() - t0, runtime=runtime)
    needed = "grappler_optimize" if name == "grappler-offline" else PRESET_OF[name]
    registry = host.registry
    if needed not in registry.presets and needed not in registry.passes:
        return Variant(name, None, None, 0.0, runtime=runtime, skipped=f"'{needed}' is not registered in this build")
    import graphopt

    t0 = time.perf_counter()
    # graphopt.optimize, as the CLI runs it; verification is run.py's own (the suite's samples, all outputs kept).
    result = graphopt.optimize(original, transforms=_pipeline(name, host), verify=False, host=host).pipeline
    seconds = time.perf_counter() - t0
    path = _save(result.model, out / name, runtime)
    notes = [f"{r.name}: {r.status}" + (f" ({r.error})" if r.error else "") for r in result.records
             if r.status in ("rolled_back", "failed")]
    return Variant(name, result.model, path, seconds, lossy=result.lossy, tolerance=tolerance_for(result, host=host),
                   runtime=runtime, notes=notes)


def quantize_weights_error(original: Any, serving: Any, host: Any, samples: Any) -> dict[str, Any]:
    """GTT's ``quantize_weights`` -- the bar int8 must clear -- applied to the same graph int8 quantizes.

    ``serving-int8`` quantizes the ``serving`` graph (batch norms already folded
    into the weights), so the comparison that isolates the quantization scheme is
    ``serving`` + ``quantize_weights``; ``quantize_weights`` on the original graph
    is measured too, for reference.
    """
    from graphopt.passes.pipeline import Pipeline
    from graphopt.verify.compare import verify

    out: dict[str, Any] = {}
    for base_name, base in (("serving", serving), ("original", original)):
        if base is None:
            continue
        result = Pipeline(["quantize_weights"], host=host).run(base)
        report = verify(original, result.model, samples=samples, tolerance=1e9)
        out[base_name] = {"graph_bytes": result.model.size_bytes, "max_rel": report.max_rel,
                          "max_abs": report.max_abs, "nan_mismatch": sum(o.nan_mismatch for o in report.outputs)}
    return out
