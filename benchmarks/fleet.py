"""graphopt fleet over a 6-model TF Serving repository: wall time per model, and the report against per-model runs.

    python benchmarks/fleet.py [--cache DIR] [--ray auto|local|ADDRESS] [--tune --budget MIN] [--no-standalone]

Models: six ``keras.applications`` architectures at small input sizes (``weights=None``,
batch-norm statistics randomized, as the benchmark suite does), each exported with
``model.export`` as ``<repo>/<name>/1`` and listed in a ``models.config`` written by
graphopt's own ``model_config_text``. The fleet runs over it (preset ``serving`` by
default); then each model is run alone through ``graphopt.tuning.tune`` with the same
space, and the two reports are compared: same verified variant, same size, same
verification error, and latency ratios within the two runs' noise.

Results go to ``benchmarks/results/fleet-<UTC time>.json``; the markdown printed at the
end is what docs/guide/scaling.md quotes, with the 500-model estimate computed from the
measured per-model times (method in docs/guide/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODELS = {  # name: (keras.applications class, input size, extra constructor arguments)
    "mobilenet_v2": ("MobileNetV2", 96, {"alpha": 0.35}),
    "mobilenet_v3_small": ("MobileNetV3Small", 96, {}),
    "resnet50": ("ResNet50", 64, {}),
    "efficientnet_b0": ("EfficientNetB0", 64, {}),
    "densenet121": ("DenseNet121", 64, {}),
    "inception_v3": ("InceptionV3", 75, {}),
}
NODES = (1, 4, 16, 64)


def build_repo(cache: Path) -> Path:
    """``cache/repo/<name>/1`` for each model (built once) and ``cache/repo/models.config``."""
    from graphopt.serving.model_config import ServedModel, model_config_text
    from graphopt.testing import randomize_batch_norms

    repo = cache / "repo"
    for name, (cls, size, extra) in MODELS.items():
        path = repo / name / "1"
        done = repo / name / ".done"
        if done.exists():
            continue
        import keras

        shutil.rmtree(path, ignore_errors=True)
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, cls)(weights=None, input_shape=(size, size, 3), **extra)
        randomize_batch_norms(model)
        model.export(str(path), format="tf_saved_model", verbose=False)
        keras.backend.clear_session()
        done.write_text("ok\n")
        print(f"built {name} ({cls} {size}x{size})", flush=True)
    config = repo / "models.config"
    config.write_text(model_config_text([ServedModel(name, str(repo / name)) for name in MODELS]))
    return config


def standalone(job: dict, cache: Path, options: dict) -> dict:
    """The same model version through ``tune`` alone, with the space the fleet gave it."""
    from graphopt.plugins import default_host
    from graphopt.tuning import TuneOptions, build_space, tune
    from graphopt.tuning.fleet import summarize

    out = cache / "standalone" / job["model"]
    shutil.rmtree(out, ignore_errors=True)
    space = build_space(default_host(), pipelines=job["space"]["pipelines"], targets=job["space"]["targets"],
                        fixed_runtime={"optimizer": "full", "intra_op": 0, "inter_op": 0})
    t0 = time.time()
    result = tune(job["source"], out, options=TuneOptions(**options), space=space)
    return summarize({"model": job["model"], "version": job["version"], "src": job["source"]}, result,
                     time.time() - t0)


def matches(a: dict, b: dict) -> dict:
    """Does a per-model run agree with the fleet's row? Same variant, size and error; ratios within noise."""
    na, nb = a.get("new") or {}, b.get("new") or {}
    if not na or not nb:
        return {"match": False, "why": "one of the runs has no result"}
    margin = max(0.03, (na.get("spread") or 0) + (nb.get("spread") or 0))
    same = {"variant": na["label"] == nb["label"], "size": na["disk_bytes"] == nb["disk_bytes"],
            "error": math.isclose(na["max_rel"] or 0, nb["max_rel"] or 0, rel_tol=1e-6, abs_tol=1e-12),
            "ratio": abs(na["ratio"] - nb["ratio"]) <= margin}
    return {"match": all(same.values()), **same, "fleet_ratio": na["ratio"], "alone_ratio": nb["ratio"],
            "margin": margin}


def estimate(seconds: list[float], overhead_s: float, n_models: int = 500) -> list[dict]:
    """Wall time of ``n_models`` on N nodes, one model version per node at a time (method: docs/guide/scaling.md)."""
    mean, worst = statistics.mean(seconds), max(seconds)
    out = []
    for n in NODES:
        # Greedy list scheduling bound: total work / N, plus at most one job's length for the last wave.
        per_node = math.ceil(n_models / n)
        t = n_models * (mean + overhead_s) / n + (worst if n > 1 else 0)
        out.append({"nodes": n, "models_per_node": per_node, "hours": t / 3600})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path(".bench-cache/fleet"))
    parser.add_argument("--ray", help="run the fleet as Ray tasks (auto, local or an address)")
    parser.add_argument("--tune", action="store_true", help="search each model instead of preset serving")
    parser.add_argument("--budget", type=float, help="with --tune: minutes per model")
    parser.add_argument("--no-standalone", action="store_true", help="skip the per-model comparison runs")
    parser.add_argument("--fresh", action="store_true", help="discard earlier fleet output (else it resumes)")
    args = parser.parse_args(argv)

    from graphopt.bench import machine_info
    from graphopt.tuning import TuneOptions
    from graphopt.tuning.engine import make_engine
    from graphopt.tuning.fleet import fleet

    args.cache.mkdir(parents=True, exist_ok=True)
    config = build_repo(args.cache)
    out = args.cache / "new"
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    options = {"budget_minutes": args.budget} if args.tune else {}
    engine = make_engine(args.ray)
    machine = machine_info()
    t0 = time.time()
    result = fleet(config, out, tune=args.tune, options=TuneOptions(**options), engine=engine,
                   on_event=lambda k, d: print(f"  {k}: {d.get('model', '')} v{d.get('version', '')} "
                                               f"{d.get('status', '')} {((d.get('new') or {}).get('label') or '')} "
                                               f"{d.get('seconds', 0) or 0:.0f} s", flush=True)
                   if k == "job_done" else None)
    wall = time.time() - t0
    engine.close()
    rows = result.jobs
    comparisons = {}
    if not args.no_standalone:
        for job in rows:
            if job["status"] != "ok":
                continue
            spec = {"model": job["model"], "version": job["version"], "source": job["source"],
                    "space": {"pipelines": ["serving"], "targets": ["tfserving"]}}
            alone = standalone(spec, args.cache, {**options, "export_if_slower": not args.tune})
            comparisons[job["model"]] = {"alone": alone, **matches(job, alone)}
            print(f"  alone {job['model']}: {comparisons[job['model']]}", flush=True)
    seconds = [j["seconds"] for j in rows if j.get("seconds")]
    overhead = max(0.0, (wall - sum(seconds)) / max(len(seconds), 1))
    data = {"machine": machine, "wall_s": wall, "engine": result.engine, "mode": result.mode, "jobs": rows,
            "comparisons": comparisons, "estimate_500": estimate(seconds, overhead) if seconds else [],
            "overhead_per_job_s": overhead, "command": " ".join(sys.argv)}
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    path = results / f"fleet-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    print(f"\nresults: {path}\n")
    print("| model | input | status | variant | MB served -> new | warm ms served -> new | ratio ± noise | "
          "max rel err | job s | alone: ratio, match |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for j in rows:
        s, n = j.get("served") or {}, j.get("new") or {}
        cls, size, _ = MODELS.get(j["model"], ("?", "?", None))
        cmp = comparisons.get(j["model"], {})
        print(f"| {j['model']} | {size} | {j['status']} | {n.get('label', '-')} | "
              f"{(s.get('disk_bytes') or 0) / 1e6:.2f} -> {(n.get('disk_bytes') or 0) / 1e6:.2f} | "
              f"{s.get('median') or 0:.2f} -> {n.get('median') or 0:.2f} | {n.get('ratio') or 0:.3f} ± "
              f"{n.get('spread') or 0:.3f} | {n.get('max_rel') or 0:.1e} | {j.get('seconds') or 0:.0f} | "
              f"{cmp.get('alone_ratio', float('nan')):.3f}, {cmp.get('match', '-')} |")
    print(f"\nwall time {wall:.0f} s for {len(rows)} model versions ({result.engine.get('engine')}); "
          f"per job mean {statistics.mean(seconds) if seconds else 0:.0f} s")
    for e in data["estimate_500"]:
        print(f"500 models on {e['nodes']} node(s): {e['hours']:.1f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
