"""Does a budgeted ``graphopt tune`` find a variant at least as fast as the best fixed preset? (issue 15, item 5)

    python benchmarks/tune.py [--budget 10] [--models MobileNetV2,ResNet50] [--cache .bench-cache] [--rounds 12]

For each of the benchmark suite's five ``keras.applications`` models (224x224, InceptionV3
299x299, ``weights=None``, batch-norm statistics randomized: benchmarks/suite_models.py):

1. ``tune`` runs with the default search space (every preset, every target the installed
   plugins register, TF Serving's runtime modes and threads; lossless) and the budget;
2. a first heat measures, side by side in worker processes of their own, interleaved round
   by round, the model as exported (anchor) and every lossless TF Serving preset with the
   session config graphopt ships for it (the "fixed presets"; built now if the budget left
   one out), to find the best fixed preset;
3. a second heat measures the anchor, tune's winner and that best fixed preset head to head;
   the target is met when the winner is verified and its ratio to the anchor is at most the
   best fixed preset's plus the noise margin of the two (tune's own rule); ``faster_outright``
   says whether it was faster without the margin.

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


def _heat(work: Path, plugins: list[str], members: list[dict], rounds: int) -> dict:
    """One heat (graphopt.tuning.workers.run_heat) and each member's figure against the first member."""
    from graphopt.tuning import race
    from graphopt.tuning.workers import run_heat

    tolerance = {"atol": 1e-4, "rtol": 1e-4, "source": "lossless default"}
    out = run_heat({"workdir": str(work), "reference": str(work / "reference.npz"), "tolerance": tolerance,
                    "plugins": plugins, "mode": "warm", "rounds": rounds, "reps": 5, "warmup": 3, "members": members})
    anchor = out["members"][members[0]["id"]]
    figures = {}
    for m in members[1:]:
        res = out["members"].get(m["id"], {})
        f = race.figure(res, anchor, "warm") if res.get("status") == "ok" and anchor.get("status") == "ok" else None
        figures[m["id"]] = {"status": res.get("status"), "figure": f.to_dict() if f else None,
                            "verification": res.get("verification"), "error": res.get("error")}
    return figures


def verdict(result, host, rounds: int) -> dict:
    """Winner vs the best lossless fixed preset (each with the runtime mode graphopt ships for it).

    Heat 1: the anchor and every fixed preset, to find the best one. Heat 2: the anchor, the
    winner and that preset head to head -- a small heat, like tune's final rungs (a server runs
    one model, not seven).
    """
    from graphopt.tuning import race
    from graphopt.tuning.space import Build, Candidate
    from graphopt.tuning.workers import run_build

    work = result.workdir
    log = [json.loads(line) for line in (work / "trials.jsonl").read_text().splitlines() if line.strip()]
    ref = next(r for r in log if r["type"] == "reference" and r.get("status") == "ok")
    builds = {r["key"]: r for r in log if r["type"] == "build"}
    plugins = sorted(n for n, o in host.pm.origins.items() if o.kind == "plugin")
    anchor = {"id": "anchor", "target": "tfserving", "spec": ref["baseline_spec"],
              "runtime": {"optimizer": "full", "intra_op": 0, "inter_op": 0}}
    tolerance = {"atol": 1e-4, "rtol": 1e-4, "source": "lossless default"}
    fixed, members = {}, {}
    for preset in FIXED:
        b = Build(preset)
        rec = builds.get(b.key)
        if rec is None or rec.get("status") != "ok" or not Path(rec.get("artifact", "")).is_dir():
            rec = run_build({"action": "build", "workdir": str(work), "name": f"verdict-{b.key}",
                             "src": result.source, "build": b.to_dict(), "out": str(work / "verdict" / b.key),
                             "reference": str(work / "reference.npz"), "tolerance": tolerance, "plugins": plugins})
        name = preset or "no passes"
        if rec.get("status") != "ok":
            fixed[name] = {"status": rec.get("status"), "error": rec.get("error")}
            continue
        settings = {"optimizer": rec.get("recommended_optimizer") or "full", "intra_op": 0, "inter_op": 0}
        cid = Candidate.make(b, settings).id
        fixed[name] = {"status": "ok", "id": cid, "runtime": settings}
        members[name] = {"id": cid, "target": "tfserving", "spec": rec["spec"], "runtime": settings}
    presets = _heat(work, plugins, [anchor, *members.values()], rounds)
    for info in fixed.values():
        if info.get("id"):
            info["heat1"] = presets[info["id"]]
    ranked = sorted((n for n in members if (presets[members[n]["id"]] or {}).get("figure")),
                    key=lambda n: presets[members[n]["id"]]["figure"]["ratio"])
    if not ranked:
        return {"fixed": fixed, "met": None, "why": "no fixed preset could be measured"}
    best_name = ranked[0]
    win = result.winner
    winner = {"id": "winner", "target": win.candidate.build.target, "spec": builds[win.candidate.build.key]["spec"],
              "runtime": win.candidate.settings}
    best_member = {**members[best_name], "id": "best-fixed"}
    final = _heat(work, plugins, [anchor, winner, best_member], rounds)
    w, b = final["winner"], final["best-fixed"]
    met = None
    if w["figure"] and b["figure"]:
        margin = max(race.NOISE_FLOOR, (w["figure"]["spread"] or 0) + (b["figure"]["spread"] or 0))
        met = bool((w.get("verification") or {}).get("passed") and w["figure"]["ratio"] <= b["figure"]["ratio"] + margin)
    return {"fixed": fixed, "best_fixed": best_name, "best_fixed_figure": b["figure"], "winner_figure": w["figure"],
            "winner_verified": (w.get("verification") or {}).get("passed"), "met": met,
            "faster_outright": bool(w["figure"] and b["figure"] and w["figure"]["ratio"] <= b["figure"]["ratio"])}


def render(rows: list[dict]) -> str:
    """The markdown table of a run (``--from-json`` prints it again from the results file)."""
    lines = ["| model | tune s | trials | winner | winner vs as exported | best fixed preset | its ratio | met | "
             "faster outright |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v = r.get("verdict") or {}
        wf, bf = v.get("winner_figure") or {}, v.get("best_fixed_figure") or {}
        lines.append(f"| {r['model']} | {r['tune_seconds']:.0f} | {sum(r['counts'].values())} | "
                     f"{(r['winner'] or {}).get('label', 'none').replace('|', '/')} | {wf.get('ratio', float('nan')):.3f} ± "
                     f"{wf.get('spread', float('nan')):.3f} | {v.get('best_fixed')} | "
                     f"{bf.get('ratio', float('nan')):.3f} ± {bf.get('spread', float('nan')):.3f} | {v.get('met')} | "
                     f"{v.get('faster_outright', '-')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=10.0, help="minutes per model (default 10)")
    parser.add_argument("--models", help="comma-separated subset of the suite's keras models")
    parser.add_argument("--cache", type=Path, default=Path(".bench-cache"))
    parser.add_argument("--rounds", type=int, default=12, help="rounds of the verdict heat (default 12)")
    parser.add_argument("--from-json", type=Path, help="print the table of an earlier run's results file and stop")
    args = parser.parse_args(argv)
    if args.from_json:
        print(render(json.loads(args.from_json.read_text())["rows"]))
        return 0

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
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
