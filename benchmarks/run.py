"""The benchmark suite in one command: build, optimize, verify and measure every model, then write the docs.

    python benchmarks/run.py                       # everything (about 15-20 min on 2 busy cores)
    python benchmarks/run.py --quick               # MobileNetV2 and the TF1 graph, few runs
    python benchmarks/run.py --models ResNet50 tf1 --runs 30

Models are built once into ``--cache`` (default ``benchmarks/.cache``). Results
go to ``benchmarks/results/<UTC time>.json`` and ``latest.json``, and
``docs/measurements/benchmarks.md`` is regenerated from them (``--no-docs`` to skip).
Built-in passes only: third-party plugins are not loaded, so runs compare.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import memory  # noqa: E402
import report  # noqa: E402
import runtime_graph  # noqa: E402
import suite_models  # noqa: E402
import targets  # noqa: E402
import variants  # noqa: E402

QUICK_MODELS = ["MobileNetV2", suite_models.TF1_GRAPH]
SERVING_DEFAULT_CONFIG = "serving, default config"


def _pick_models(names: list[str] | None, quick: bool) -> list[str]:
    if not names:
        chosen = list(QUICK_MODELS if quick else suite_models.ALL_MODELS)
    else:
        by_key = {suite_models.slug(m).lower(): m for m in suite_models.ALL_MODELS}
        by_key.update({m.lower(): m for m in suite_models.ALL_MODELS})
        chosen = []
        for n in names:
            if n.lower() not in by_key:
                sys.exit(f"unknown model {n!r}; choose from: "
                         + ", ".join(suite_models.slug(m) for m in suite_models.ALL_MODELS))
            chosen.append(by_key[n.lower()])
    if suite_models.DETECTOR in chosen and not suite_models.detector_available():
        print("note: graphopt.demo is not available; the detector is left out", file=sys.stderr)
        chosen.remove(suite_models.DETECTOR)
    return chosen


def _log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _cold_repeats(name: str, args: argparse.Namespace) -> int:
    # Models with a cold-start target get more fresh processes: one on a shared machine is noisy.
    return max(args.cold_repeats, args.cold_repeats_targets if name in targets.COLD_TARGETS else 1)


def run_model(name: str, args: argparse.Namespace, host) -> dict:
    """Build, optimize into every variant, verify each, and bench them side by side."""
    from graphopt.bench import bench
    from graphopt.errors import GraphoptError
    from graphopt.loaders import load
    from graphopt.verify.compare import verify

    out: dict = {"model": name, "variants": {}, "notes": []}
    t0 = time.time()
    sm = suite_models.build(name, args.cache)
    out["notes"] += sm.notes
    _log(f"{name}: built/cached in {time.time() - t0:.0f} s")
    original = load(sm.path)
    vdir = args.cache / "variants" / suite_models.slug(name)
    made = []
    for vname in args.variants:
        t1 = time.time()
        try:
            v = variants.make_variant(vname, original, vdir, host)
        except GraphoptError as exc:
            out["variants"][vname] = {"skipped": f"optimizing failed: {exc.message}"[:300]}
            _log(f"{name}/{vname}: FAILED {exc.message[:200]}")
            continue
        if v.skipped:
            out["variants"][vname] = {"skipped": v.skipped}
            _log(f"{name}/{vname}: skipped ({v.skipped})")
            continue
        entry = {"seconds": v.seconds, "runtime": v.runtime, "lossy": v.lossy, "notes": v.notes,
                 "path": str(v.path)}
        try:
            rep = verify(original, v.model, samples=sm.samples, lossy_tolerance=v.tolerance)
            entry["verify"] = {"passed": rep.passed, "max_rel": rep.max_rel, "max_abs": rep.max_abs,
                               "tolerance": rep.tolerance.to_dict(),
                               "outputs": [o.to_dict() for o in rep.outputs]}
        except GraphoptError as exc:
            entry["verify"] = {"passed": False, "max_rel": float("inf"), "max_abs": float("inf"),
                               "error": exc.message}
        out["variants"][vname] = entry
        made.append(v)
        _log(f"{name}/{vname}: optimized in {v.seconds:.1f} s, verified (max rel "
             f"{entry['verify']['max_rel']:.2g}) [{time.time() - t1:.0f} s]")
    if "serving-int8" in out["variants"] and not out["variants"]["serving-int8"].get("skipped"):
        try:
            serving = next((v.model for v in made if v.name == "serving"), None)
            out["quantize_weights"] = variants.quantize_weights_error(original, serving, host, sm.samples)
        except GraphoptError as exc:
            out["notes"].append(f"quantize_weights could not be measured: {exc.message}")
    if made:
        t1 = time.time()
        paths, labels, runtimes = [str(v.path) for v in made], [v.name for v in made], [v.runtime for v in made]
        serving = next((v for v in made if v.name == "serving"), None)
        if serving is not None:
            # The same serving model under TensorFlow's default session config: what the shipped config buys.
            paths.append(str(serving.path))
            labels.append(SERVING_DEFAULT_CONFIG)
            runtimes.append("full")
        rep = bench(paths, labels=labels, grappler=runtimes, runs=args.runs, warmup=args.warmup,
                    cold_repeats=_cold_repeats(name, args), samples=sm.samples)
        for label, mb in zip(labels, rep.models):
            if label == SERVING_DEFAULT_CONFIG:
                out["variants"][label] = {**out["variants"]["serving"], "bench": mb.to_dict(),
                                          "notes": ["the serving SavedModel with runtime Grappler on (TF's default)"]}
            else:
                out["variants"][label]["bench"] = mb.to_dict()
        out["bench_notes"] = rep.notes
        if serving is not None:
            from graphopt.verify.compare import make_inputs

            feeds = sm.samples or make_inputs(original)
            try:
                out["runtime_graph"] = runtime_graph.compare_configs(serving.path, feeds, vdir)
            except Exception as exc:  # diagnostics only: never lose the model's results over it
                out["notes"].append(f"executed-graph comparison failed: {str(exc)[:200]}")
        _log(f"{name}: benchmarked {len(made)} variants in {time.time() - t1:.0f} s")
    out["seconds"] = time.time() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", metavar="NAME", help="models to run (default: all); e.g. ResNet50 tf1")
    p.add_argument("--quick", action="store_true", help="MobileNetV2 and the TF1 graph, 5 runs")
    p.add_argument("--variants", nargs="+", default=variants.VARIANTS, choices=variants.VARIANTS)
    p.add_argument("--runs", type=int, help="timed runs per variant (default 15; --quick 5)")
    p.add_argument("--warmup", type=int, help="warm-up runs per variant (default 3; --quick 1)")
    p.add_argument("--cold-repeats", type=int, default=1, help="fresh processes per variant for cold start")
    p.add_argument("--cold-repeats-targets", type=int, default=3,
                   help="fresh processes per variant for models with a cold-start target (default 3)")
    p.add_argument("--cache", type=Path, default=HERE / ".cache", help="where built models and variants are kept")
    p.add_argument("--results", type=Path, default=HERE / "results", help="where results JSON goes")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "measurements" / "benchmarks.md", help="markdown to regenerate")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite the docs")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement of optimizing")
    p.add_argument("--memory-model", default="ResNet50", help="model for the peak-memory measurement")
    args = p.parse_args(argv)
    args.runs = args.runs or (5 if args.quick else 15)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    models = _pick_models(args.models, args.quick)
    args.cache.mkdir(parents=True, exist_ok=True)

    from graphopt.bench import machine_info
    from graphopt.plugins import Host

    host = Host.create(plugins=False)
    wanted_presets = {variants.PRESET_OF[v] for v in args.variants if v in variants.PRESET_OF}
    missing = sorted(wanted_presets - variants.available_presets(host))
    if missing:
        _log(f"presets not registered in this build: {', '.join(missing)} (their variants are skipped)")
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    args.results.mkdir(parents=True, exist_ok=True)
    data = {"command": "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
            "started": started.isoformat(), "machine": machine_info(), "runs": args.runs, "warmup": args.warmup,
            "cold_repeats": args.cold_repeats, "cold_repeats_targets": args.cold_repeats_targets,
            "variants": args.variants, "missing_presets": missing,
            "models": [], "targets": [], "memory": None}
    data["command"] = data["command"].strip()
    out_file = args.results / f"{stamp}.json"

    def save() -> None:
        text = json.dumps(data, indent=1, default=str)
        out_file.write_text(text)
        (args.results / "latest.json").write_text(text)
        if not args.no_docs:
            args.docs.parent.mkdir(parents=True, exist_ok=True)
            args.docs.write_text(report.render(data, f"benchmarks/results/{out_file.name}"))

    for name in models:
        try:
            result = run_model(name, args, host)
        except Exception as exc:  # one model failing must not lose the others' results
            traceback.print_exc()
            result = {"model": name, "variants": {}, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        data["models"].append(result)
        if not result.get("error"):
            data["targets"] += targets.evaluate(result)
        save()  # after every model, so a run cut short still leaves its results
    if not args.no_memory and args.memory_model in {suite_models.slug(m) for m in models} | set(models):
        name = next(m for m in models if args.memory_model in (m, suite_models.slug(m)))
        _log(f"peak memory of graphopt optimize on {name}...")
        try:
            src = suite_models.build(name, args.cache).path
            orig = next(r for r in data["models"] if r["model"] == name)["variants"].get("original", {})
            model_bytes = (orig.get("bench") or {}).get("disk_bytes") or 0
            mem = memory.optimize_memory(src, model_bytes)
            mem["model"] = name
        except Exception as exc:
            traceback.print_exc()
            mem = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        data["memory"] = mem
        save()
    data["finished"] = datetime.now(UTC).isoformat()
    save()
    _log(f"results: {out_file}" + ("" if args.no_docs else f"; docs: {args.docs}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
