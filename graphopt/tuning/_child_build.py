"""Worker process for one tuning step: ``python -m graphopt.tuning._child_build SPEC.json RESULT.json``.

Actions (``spec["action"]``):

* ``reference`` -- load the source, run it once on the verification inputs and
  keep inputs and outputs in ``reference.npz``;
* ``build`` -- load the source, run one pipeline, write the target's artifact,
  then open the artifact as it will be served (the target's runtime, the
  candidate's settings) and verify it against the reference.

A crash here (Grappler can abort the process) costs this one trial; the parent
records the exit status and the tail of stderr. The result is written to
RESULT.json, never printed: TensorFlow owns stdout/stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def _error(exc: BaseException, stage: str) -> dict[str, Any]:
    from graphopt.errors import GraphoptError

    if isinstance(exc, GraphoptError):
        return {"status": "failed", "stage": stage, "error": exc.to_dict()}
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]
    return {"status": "failed", "stage": stage,
            "error": {"error": type(exc).__name__, "message": f"{type(exc).__name__}: {text}", "where": stage,
                      "hint": None, "details": traceback.format_exc().splitlines()[-6:]}}


def _load(spec: dict[str, Any]) -> Any:
    from graphopt.loaders import load

    return load(spec["src"], signature=spec.get("signature"), tags=spec.get("tags"), inputs=spec.get("inputs"),
                outputs=spec.get("outputs"), allow_ops=spec.get("allow_unsafe", False))


def _host(spec: dict[str, Any]) -> Any:
    """The parent's plugin selection: the same plugins, so a plugin pass means the same thing here."""
    from graphopt.plugins import Host, set_default_host

    plugins = spec.get("plugins")
    host = Host.create() if plugins is None else Host.create(plugins=bool(plugins), allow=list(plugins) or None)
    set_default_host(host)
    return host


def reference(spec: dict[str, Any], model: Any = None) -> dict[str, Any]:
    from graphopt.savers import disk_bytes
    from graphopt.tuning.checks import save_reference
    from graphopt.tuning.targets import saved_model_spec
    from graphopt.verify.compare import reference_outputs

    t0 = time.perf_counter()
    model = model if model is not None else _load(spec)
    ref = reference_outputs(model, samples=spec.get("sample"), allow_unsafe=spec.get("allow_unsafe", False))
    save_reference(Path(spec["reference"]), ref.feeds, ref.outputs)
    fmt = model.metadata.get("loader", model.format)
    src = Path(spec["src"])
    baseline = None
    if fmt in ("saved_model", "saved_model_tf1") and src.is_dir():
        baseline = saved_model_spec(src, model.signature)
    return {"status": "ok", "format": fmt, "signature": model.signature.to_dict(), "baseline_spec": baseline,
            "disk_bytes": disk_bytes(src) if src.exists() else None, "graph_bytes": model.size_bytes,
            "nodes": model.node_count, "input_source": ref.input_source, "detection": ref.detection,
            "inputs": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in ref.feeds.items()},
            "seconds": time.perf_counter() - t0}


def build(spec: dict[str, Any], model: Any = None) -> dict[str, Any]:
    from graphopt.passes.pipeline import Pipeline
    from graphopt.savers import disk_bytes
    from graphopt.tuning.checks import check_outputs, load_reference, tolerance_from
    from graphopt.tuning.targets import adapter
    from graphopt.verify.compare import tolerance_for

    info: dict[str, Any] = {"status": "ok"}
    t0 = time.perf_counter()
    try:
        model = model if model is not None else _load(spec)
    except Exception as exc:
        return _error(exc, "load")
    stage = "pipeline"
    try:
        b = spec["build"]
        host = _host(spec)
        pipeline = Pipeline.parse(b["pipeline"], host=host) if b["pipeline"] else Pipeline([], host=host)
        result = pipeline.run(model, allow_ops=spec.get("allow_unsafe", False))
        info["pipeline_seconds"] = result.seconds
        info["passes"] = [{"name": r.name, "status": r.status} for r in result.records]
        info["lossy"] = bool(result.lossy)
        info["declared_tolerance"] = tolerance_for(result).to_dict()
        info["graph_bytes"] = result.model.size_bytes
        info["nodes"] = result.model.node_count
        stage = "convert"
        target = adapter(b["target"], host)
        feeds, outputs = load_reference(spec["reference"])
        samples = feeds if spec.get("sample") else None  # the user's inputs become the warm-up records
        out = Path(spec["out"])
        built = target.build(result.model, b["precision"], out, samples=samples)
        del model, result
        info.update(built)
        info["lossy"] = bool(info["lossy"] or built.get("precision_lossy"))
        info["artifact"] = str(out / "1")
        info["disk_bytes"] = disk_bytes(out / "1")
        info["build_seconds"] = time.perf_counter() - t0
        stage = "verify"
        settings = spec.get("runtime") or target.default_runtime(built)
        info["runtime"] = settings
        runner = target.open(built["spec"], settings, allow_unsafe=spec.get("allow_unsafe", False))
        try:
            got = runner.run(feeds)
        finally:
            runner.close()
        verification = check_outputs(outputs, got, tolerance_from(spec.get("tolerance")),
                                     detection=bool(spec.get("detection")))
        info["verification"] = verification
        if not verification["passed"]:
            info["status"] = "rejected"
    except Exception as exc:
        return {**info, **_error(exc, stage)}
    info["seconds"] = time.perf_counter() - t0
    return info


def verify(spec: dict[str, Any]) -> dict[str, Any]:
    """Verify an existing artifact again (the tolerance changed since it was built)."""
    from graphopt.tuning.checks import check_outputs, load_reference, tolerance_from
    from graphopt.tuning.targets import adapter

    t0 = time.perf_counter()
    try:
        target = adapter(spec["target"], _host(spec))
        feeds, outputs = load_reference(spec["reference"])
        runner = target.open(spec["spec"], spec.get("runtime") or {}, allow_unsafe=spec.get("allow_unsafe", False))
        try:
            got = runner.run(feeds)
        finally:
            runner.close()
    except Exception as exc:
        return _error(exc, "verify")
    verification = check_outputs(outputs, got, tolerance_from(spec.get("tolerance")),
                                 detection=bool(spec.get("detection")))
    return {"status": "ok" if verification["passed"] else "rejected", "verification": verification,
            "seconds": time.perf_counter() - t0}


def reference_build(spec: dict[str, Any]) -> dict[str, Any]:
    """The reference, then the first build on the model already loaded (one TensorFlow start, one load less)."""
    try:
        model = _load(spec)
    except Exception as exc:
        return _error(exc, "load")
    try:
        ref = reference(spec, model)
    except Exception as exc:
        return _error(exc, "reference")
    return {"status": ref["status"], "reference": ref,
            "build": build({**spec, "detection": ref.get("detection", False)}, model)}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        action = {"reference": reference, "build": build, "verify": verify, "reference_build": reference_build}[
            spec["action"]]
        result = action(spec)
    except Exception as exc:  # anything not caught inside: still a result, never a silent exit
        result = _error(exc, spec.get("action", "?"))
    tmp = Path(argv[1] + ".partial")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
