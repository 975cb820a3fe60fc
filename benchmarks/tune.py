"""Does a budgeted ``graphopt tune`` find a variant at least as fast as the best fixed preset? (issue 15, item 5)

    python benchmarks/tune.py [--budget 10] [--models MobileNetV2,ResNet50] [--cache .bench-cache] [--rounds 12]

For each of the benchmark suite's five ``keras.applications`` models (224x224, InceptionV3
299x299, ``weights=None``, batch-norm statistics randomized: benchmarks/suite_models.py):

1. ``tune`` runs with the default search space (every preset, every target the installed
   plugins register, TF Serving's runtime modes and threads; lossless) and the budget;
2. a **verdict heat** then measures, side by side in worker processes of their own,
   interleaved round by round: the model as exported (anchor), tune's winner, and every
   lossless TF Serving preset with the session config graphopt ships for it (the "fixed
   presets"; built now if the budget left one out);
3. the target is met when the winner is verified and its ratio to the anchor is at most the
   best fixed preset's plus the noise margin of the two (tune's own pruning rule).

Results: ``benchmarks/results/tune-<UTC time>.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

FIXED = ("serving", "serving-onednn", "gtt-seed", "gtt-deploy", "")  # "" = frozen, no passes


def verdict(result, host, rounds: int) -> dict:
    """Winner vs every lossless fixed preset (its shipped runtime mode), one heat, against the anchor."""
    from graphopt.tuning import race
    from graphopt.tuning.space import Build, Candidate
    from graphopt.tuning.workers import run_build, run_heat

    work = result.workdir
    log = [json.loads(line) for line in (work / "trials.jsonl").read_text().splitlines() if line.strip()]
    ref = next(r for r in log if r["type"] == "reference" and r.get("status") == "ok")
    builds = {r["key"]: r for r in log if r["type"] == "build"}
    plugins = sorted(n for n, o in host.pm.origins.items() if o.kind == "plugin")
    members = [{"id": "anchor", "target": "tfserving", "spec": ref["baseline_spec"],
                "runtime": {"optimizer": "full", "intra_op": 0, "inter_op": 0}}]
    win = result.winner
    wrec = builds[win.candidate.build.key]
    members.append({"id": "winner", "target": win.candidate.build.target, "spec": wrec["spec"],
                    "runtime": win.candidate.settings})
    tolerance = {"atol": 1e-4, "rtol": 1e-4, "source": "lossless default"}
    fixed = {}
    for preset in FIXED:
        b = Build(preset)
        rec = builds.get(b.key)
        if rec is None or rec.get("status") != "ok" or not Path(rec.get("artifact", "")).is_dir():
            rec = run_build({"action": "build", "workdir": str(work), "name": f"verdict-{b.key}",
                             "src": result.source, "build": b.to_dict(), "out": str(work / "verdict" / b.key),
                             "reference": str(work / "reference.npz"), "tolerance": tolerance, "plugins": plugins})
        if rec.get("status") != "ok":
            fixed[preset or "no passes"] = {"status": rec.get("status"), "error": rec.get("error")}
            continue
        settings = {"optimizer": rec.get("recommended_optimizer") or "full", "intra_op": 0, "inter_op": 0}
        cid = Candidate.make(b, settings).id
        fixed[preset or "no passes"] = {"status": "ok", "id": cid, "runtime": settings}
        members.append({"id": cid, "target": "tfserving", "spec": rec["spec"], "runtime": settings})
    heat = {"workdir": str(work), "reference": str(work / "reference.npz"), "tolerance": tolerance,
            "plugins": plugins, "mode": "warm", "rounds": rounds, "reps": 3, "warmup": 3, "members": members}
    out = run_heat(heat)
    anchor = out["members"]["anchor"]
    figures = {}
    for m in members[1:]:
        res = out["members"].get(m["id"], {})
        f = race.figure(res, anchor, "warm") if res.get("status") == "ok" else None
        figures[m["id"]] = {"status": res.get("status"), "figure": f.to_dict() if f else None,
                            "verification": res.get("verification"), "error": res.get("error")}
    best_name, best = None, None
    for name, info in fixed.items():
        fig = (figures.get(info.get("id")) or {}).get("figure")
        if fig and (best is None or fig["ratio"] < best["ratio"]):
            best_name, best = name, fig
    w = figures["winner"]
    met = None
    if w["figure"] and best:
        margin = max(race.NOISE_FLOOR, (w["figure"]["spread"] or 0) + (best["spread"] or 0))
        met = bool(w["verification"]["passed"] and w["figure"]["ratio"] <= best["ratio"] + margin)
    return {"fixed": fixed, "figures": figures, "best_fixed": best_name, "best_fixed_figure": best,
            "winner_figure": w["figure"], "winner_verified": (w.get("verification") or {}).get("passed"),
            "met": met, "anchor_median_ms": race.figure(anchor, anchor, "warm").median
            if anchor.get("status") == "ok" else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=10.0, help="minutes per model (default 10)")
    parser.add_argument("--models", help="comma-separated subset of the suite's keras models")
    parser.add_argument("--cache", type=Path, default=Path(".bench-cache"))
    parser.add_argument("--rounds", type=int, default=12, help="rounds of the verdict heat (default 12)")
    args = parser.parse_args(argv)

    import suite_models

    from graphopt.bench import machine_info
    from graphopt.plugins import default_host
    from graphopt.tuning import TuneOptions, build_space, tune

    host = default_host()
    names = args.models.split(",") if args.models else list(suite_models.KERAS_MODELS)
    rows = []
    for name in names:
        model = suite_models.build(name, args.cache)
        out = args.cache / "tune" / suite_models.slug(name)
        t0 = time.time()
        print(f"{name}: tune, budget {args.budget} min", flush=True)
        result = tune(model.path, out / "base", options=TuneOptions(budget_minutes=args.budget, keep_artifacts=True,
                                                                     force=True), space=build_space(host))
        seconds = time.time() - t0
        row = {"model": name, "tune_seconds": seconds, "counts": result.counts(), "notes": result.notes,
               "winner": result.winner.to_dict() if result.winner else None, "report": str(result.report)}
        if result.winner is not None:
            print(f"  winner {result.winner.candidate.label}; verdict heat", flush=True)
            row["verdict"] = verdict(result, host, args.rounds)
        rows.append(row)
        print(json.dumps({k: row.get(k) for k in ("model", "tune_seconds", "counts")}), flush=True)
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    path = results / f"tune-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps({"machine": machine_info(), "budget_minutes": args.budget, "rows": rows,
                                "command": " ".join(sys.argv)}, indent=2, default=str))
    print(f"\nresults: {path}\n")
    print("| model | tune s | trials | winner | winner vs as exported | best fixed preset | its ratio | met |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        v = r.get("verdict") or {}
        wf, bf = v.get("winner_figure") or {}, v.get("best_fixed_figure") or {}
        print(f"| {r['model']} | {r['tune_seconds']:.0f} | {sum(r['counts'].values())} | "
              f"{(r['winner'] or {}).get('label', 'none')} | {wf.get('ratio', float('nan')):.3f} ± "
              f"{wf.get('spread', float('nan')):.3f} | {v.get('best_fixed')} | {bf.get('ratio', float('nan')):.3f} ± "
              f"{bf.get('spread', float('nan')):.3f} | {v.get('met')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
