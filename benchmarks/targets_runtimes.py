"""Runtime targets side by side (issue 13, item 6): TF Serving, OpenVINO (f32, bf16, int8) and ONNX Runtime.

    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/targets_runtimes.py [--models MobileNetV2 ResNet50 EfficientNetB0
        detector] [--runs 10] [--rounds 3] [--warmup 3] [--cold-repeats 1]

For each model (``keras.applications`` at 224x224, weights=None, batch-norm statistics
randomized, exported by Keras; the demo detector saved as the seed did) this writes, with
graphopt's own CLI flow (:func:`graphopt.optimize`, each export verified against the
TensorFlow original before it is written):

* ``as exported``: the SavedModel as its author exported it, served as TF Serving loads it
  (TensorFlow's default session config) -- the baseline, what users serve today;
* ``serving``: ``graphopt optimize --serving-dir`` (preset ``serving``, shipped session config);
* ``openvino untouched``: ``openvino.convert_model`` on the SavedModel as exported, no graphopt pass,
  run with the same settings as graphopt's f32 export (the bar graphopt's f32 must clear);
* ``openvino f32`` / ``bf16`` / ``int8``: ``--target openvino --precision ...`` (int8 calibrated on
  8 random images, or the detector's picture);
* ``onnx``: ``--target onnx``.

Then ``graphopt.targets.timing.bench_exports`` times them all: each in a worker process of its
own, loaded once, alternating rounds of ``--runs`` calls (the starting worker rotating), the
parent waiting for a worker's threads to go quiet before timing the next; cold start (load +
first request) in those fresh workers. Results go to ``benchmarks/results/targets-<UTC>.json``
and ``targets-latest.json``, and the section between the markers in docs/measurements/benchmarks.md is
rewritten from them (benchmarks/report.py keeps it when it regenerates the file).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import suite_models  # noqa: E402
import targets  # noqa: E402

MODELS = ["MobileNetV2", "ResNet50", "EfficientNetB0", suite_models.DETECTOR]
VARIANTS = ["as exported", "serving", "openvino untouched", "openvino f32", "openvino bf16", "openvino int8", "onnx"]
START, END = "<!-- runtime-targets:start -->", "<!-- runtime-targets:end -->"
DOC = ROOT / "docs" / "measurements" / "benchmarks.md"


def _log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _samples(sm: suite_models.SuiteModel, signature: Any, folder: Path) -> Path:
    """The --sample file: the model's own inputs where it has them, else 8 seeded random images."""
    import numpy as np

    path = folder / "sample.npz"
    if sm.samples:
        np.savez(path, **sm.samples)
    else:
        (key, spec), = signature.inputs.items()
        shape = [8, *[d for d in spec.shape[1:]]]
        np.savez(path, **{key: np.random.default_rng(0).random(shape).astype(np.float32)})
    return path


def untouched_openvino(src: Path, base: Path, signature: Any) -> Path:
    """``openvino.convert_model`` on the SavedModel as exported, named by the signature's keys, f32 settings."""
    import openvino as ov

    from graphopt.targets.base import Manifest

    version = base / "1"
    version.mkdir(parents=True)
    model = ov.convert_model(str(src))
    for side, ports in ((signature.inputs, model.inputs), (signature.outputs, model.outputs)):
        for i, (key, spec) in enumerate(side.items()):
            port = next((p for p in ports if key in p.get_names() or spec.name in p.get_names()), ports[i])
            port.get_tensor().set_names({key})
    ov.save_model(model, str(version / "model.xml"), compress_to_fp16=False)
    Manifest("openvino", "f32", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"},
             signature.to_dict(), files=["model.bin", "model.xml"],
             notes=["openvino.convert_model on the SavedModel as exported: no graphopt pass"]).write(version)
    return version


def make_variants(name: str, cache: Path) -> dict[str, Any]:
    import graphopt
    from graphopt.errors import GraphoptError

    sm = suite_models.build(name, cache)
    folder = cache / "targets" / suite_models.slug(name)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    original = graphopt.load(sm.path)
    sample = _samples(sm, original.signature, folder)
    out: dict[str, Any] = {"as exported": {"path": str(sm.path)}}
    specs = {"serving": {}, "openvino f32": {"target": "openvino"},
             "openvino bf16": {"target": "openvino", "precision": "bf16"},
             "openvino int8": {"target": "openvino", "precision": "int8", "sample": sample},
             "onnx": {"target": "onnx"}}
    if sm.samples:  # real inputs where random ones would mislead (the detector): verify on them everywhere
        for spec in specs.values():
            spec["sample"] = sample
    for variant, kwargs in specs.items():
        t0 = time.time()
        try:
            result = graphopt.optimize(original, serving_dir=folder / variant.replace(" ", "_"), **kwargs)
        except GraphoptError as exc:
            out[variant] = {"skipped": exc.render()[:400]}
            _log(f"{name}/{variant}: refused: {exc.message[:200]}")
            continue
        rep = result.target.verification or result.verification
        out[variant] = {"path": str(result.target.path), "seconds": time.time() - t0,
                        "verify": {"max_rel": rep.max_rel, "passed": rep.passed, "tolerance": rep.tolerance.to_dict(),
                                   "input_source": rep.input_source}}
        _log(f"{name}/{variant}: {time.time() - t0:.0f} s, max rel {rep.max_rel:.2g}")
    try:
        out["openvino untouched"] = {"path": str(untouched_openvino(sm.path, folder / "openvino_untouched",
                                                                     original.signature))}
    except Exception as exc:  # noqa: BLE001 - OpenVINO's own errors: record why the column is missing
        out["openvino untouched"] = {"skipped": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
    try:
        from variants import quantize_weights_error

        from graphopt.plugins import Host

        serving = graphopt.load(out["serving"]["path"]) if out.get("serving", {}).get("path") else None
        qw = quantize_weights_error(original, serving, Host.create(plugins=False), sm.samples)
        out["quantize_weights"] = qw
    except Exception as exc:  # noqa: BLE001 - a reference figure only
        out["quantize_weights"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    out["sm_samples"] = str(sample) if sm.samples else None
    return out


def runtime_layers(variants: dict[str, Any]) -> dict[str, Any] | None:
    """The layers OpenVINO's CPU plugin executes for graphopt's f32 export and for the untouched model, counted by
    type after compiling both with the same settings: equal counts mean the same executable graph, so graphopt's
    graph cannot be slower than the untouched one, whatever timing noise says."""
    import collections

    import openvino as ov

    paths = {k: (variants.get(k) or {}).get("path") for k in ("openvino f32", "openvino untouched")}
    if not all(paths.values()):
        return None
    core, counts = ov.Core(), {}
    for key, path in paths.items():
        compiled = core.compile_model(core.read_model(str(Path(path) / "model.xml")), "CPU",
                                      {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
        counts[key] = collections.Counter(str(op.get_rt_info()["layerType"].astype(str))
                                          for op in compiled.get_runtime_model().get_ops())
    a, b = counts["openvino f32"], counts["openvino untouched"]
    return {"graphopt": sum(a.values()), "untouched": sum(b.values()),
            "differ": {k: [a[k], b[k]] for k in sorted(set(a) | set(b)) if a[k] != b[k]}}


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from graphopt.targets.timing import bench_exports

    t0 = time.time()
    made = make_variants(name, args.cache)
    _log(f"{name}: variants in {time.time() - t0:.0f} s")
    labels = [v for v in VARIANTS if made.get(v, {}).get("path")]
    report = bench_exports([made[v]["path"] for v in labels], labels=labels, runs=args.runs, rounds=args.rounds,
                           warmup=args.warmup, cold_repeats=args.cold_repeats, samples=made.get("sm_samples"))
    _log(f"{name}: benchmarked in {time.time() - t0:.0f} s")
    return {"model": name, "variants": {k: v for k, v in made.items() if k in VARIANTS},
            "quantize_weights": made.get("quantize_weights"), "bench": report.to_dict(),
            "openvino_layers": runtime_layers(made)}


# --- the docs section -----------------------------------------------------------------------------------------


def _row(result: dict[str, Any], label: str) -> dict[str, Any] | None:
    return next((m for m in result["bench"]["models"] if m["label"] == label), None)


def _x(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}x"


def geomean(values: list[float]) -> float | None:
    values = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def render_section(data: dict[str, Any]) -> str:
    """The runtime-targets section of docs/measurements/benchmarks.md, every figure from ``data``."""
    m = data["machine"]
    lines = [START, "## Runtime targets (issue 13): TF Serving, OpenVINO, ONNX Runtime", "",
             f"Generated by `benchmarks/targets_runtimes.py` from `{data['results']}`. Command:", "", "```",
             data["command"], "```", "",
             f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gb')} GB, TensorFlow "
             f"{m.get('tensorflow')}, load average at the start {m.get('load_average')} (shared with other work). "
             f"Batch 1. Each export in a worker process of its own (never two runtimes in one process), loaded once, "
             f"{data['rounds']} alternating rounds x {data['runs']} calls after {data['warmup']} warm-up, the parent "
             "waiting for a worker's threads to go quiet before timing the next. Latency = median of all calls; "
             "the ratio is the median over rounds of (variant / as exported in the same round); best = the fastest "
             "call's ratio (the runtime undisturbed by other load). Cold = load as the "
             "server loads it + first request, in a fresh worker after the runtime was imported. Error = max|a-b| / "
             "max|a| of the worst output against the as-exported SavedModel, on the benchmark's inputs.", "",
             "| model | variant | warm ms | vs as exported | best call | cold s (load + first) | size MB | error "
             "| verified |",
             "|---|---|---|---|---|---|---|---|---|"]
    for result in data["models"]:
        if result.get("error"):
            lines.append(f"| {result['model']} | failed: {result['error'][:120]} | | | | | | | |")
            continue
        for label in VARIANTS:
            var = result["variants"].get(label, {})
            row = _row(result, label)
            if row is None:
                reason = (var.get("skipped") or "not measured").splitlines()[0][:140]
                lines.append(f"| {result['model']} | {label} | refused: {reason} | | | | | | |")
                continue
            ver = var.get("verify")
            verified = "-" if ver is None else f"{'ok' if ver['passed'] else 'FAIL'} ({ver['max_rel']:.1g})"
            err = "baseline" if label == "as exported" else ("-" if row["max_rel"] is None else f"{row['max_rel']:.1g}")
            lines.append(f"| {result['model']} | {label} | {row['median_ms']:.2f} | {_x(row['round_ratio'])} "
                         f"| {_x(row.get('min_ratio'))} "
                         f"| {row['cold_s']:.2f} ({row['load_s']:.2f} + {row['first_run_s']:.2f}) "
                         f"| {row['disk_bytes'] / 1e6:.1f} | {err} | {verified} |")
    lines += ["", "Geometric mean of the latency ratio to the SavedModel as exported, over the Keras models:", "",
              "| variant | median ratio | best-call ratio |", "|---|---|---|"]
    for label in VARIANTS[1:]:
        rows = [_row(r, label) or {} for r in data["models"]
                if not r.get("error") and r["model"] != suite_models.DETECTOR]
        med = geomean([x for x in (r.get("round_ratio") for r in rows) if x])
        best = geomean([x for x in (r.get("min_ratio") for r in rows) if x])
        lines.append(f"| {label} | {_x(med)} | {_x(best)} |")
    lines += ["", "int8 error beside GTT's `quantize_weights` (max rel diff to the original, same inputs):", "",
              "| model | openvino int8 | quantize_weights on the serving graph | on the original graph |",
              "|---|---|---|---|"]
    for result in data["models"]:
        if result.get("error"):
            continue
        int8 = (_row(result, "openvino int8") or {}).get("max_rel")
        qw = result.get("quantize_weights") or {}

        def err(entry: dict | None, qw: dict = qw) -> str:
            if not entry or qw.get("error"):
                return "-"
            text = f"{entry['max_rel']:.2g}"
            return text + (f" ({entry['nan_mismatch']} NaN outputs)" if entry.get("nan_mismatch") else "")

        lines.append(f"| {result['model']} | {'refused' if int8 is None else f'{int8:.2g}'} "
                     f"| {err(qw.get('serving'))} | {err(qw.get('original'))} |")
    lines += ["", "Targets of issue 13, item 6 (checked by `benchmarks/targets.py` from this run):", "",
              "| check | measured | limit | result | note |", "|---|---|---|---|---|"]
    for t in data["checks"]:
        verdict = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
        value = t["value"] if isinstance(t["value"], str) else ("-" if t["value"] is None else f"{t['value']:.3g}")
        lines.append(f"| {t['model']}: {t['target']} | {value} | {t['limit']} | {verdict} | {t.get('note') or ''} |")
    lines += ["", data.get("discussion", "").strip(), END]
    return "\n".join(lines) + "\n"


def write_docs(section: str, doc: Path = DOC) -> None:
    """Replace the marked section of docs/measurements/benchmarks.md (or append it)."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.write_text(text)


def latest_section(results: Path = HERE / "results") -> str:
    """The section from the latest run, for benchmarks/report.py (empty when there was none)."""
    path = results / "targets-latest.json"
    return render_section(json.loads(path.read_text())) if path.is_file() else ""


DISCUSSION = HERE / "targets_runtimes.md"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=MODELS, metavar="NAME")
    p.add_argument("--runs", type=int, default=10, help="timed calls per round (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--cold-repeats", type=int, default=1)
    p.add_argument("--cache", type=Path, default=HERE / ".cache")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--render", action="store_true",
                   help="only rewrite the docs section from targets-latest.json (and targets_runtimes.md)")
    args = p.parse_args(argv)
    if args.render:
        data = json.loads((args.results / "targets-latest.json").read_text())
        for result in data["models"]:
            if not result.get("error") and "openvino_layers" not in result:
                result["openvino_layers"] = runtime_layers(result["variants"])
        data["checks"] = targets.evaluate_runtimes(data)
        data["discussion"] = DISCUSSION.read_text() if DISCUSSION.is_file() else ""
        text = json.dumps(data, indent=1, default=str)
        (args.results / "targets-latest.json").write_text(text)
        stamped = args.results / Path(data["results"]).name
        if stamped.is_file():
            stamped.write_text(text)
        write_docs(render_section(data))
        return 0
    from graphopt.bench import machine_info

    names = []
    for n in args.models:
        match = next((m for m in suite_models.ALL_MODELS if n.lower() in (m.lower(), suite_models.slug(m))), None)
        if match is None:
            sys.exit(f"unknown model {n!r}")
        names.append(match)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    args.results.mkdir(parents=True, exist_ok=True)
    out_file = args.results / f"targets-{stamp}.json"
    data: dict[str, Any] = {
        "command": "TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/targets_runtimes.py "
                   + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "results": f"benchmarks/results/{out_file.name}", "machine": machine_info(), "runs": args.runs,
        "rounds": args.rounds, "warmup": args.warmup, "models": [], "checks": []}
    data["command"] = data["command"].strip()
    for name in names:
        try:
            data["models"].append(run_model(name, args))
        except Exception as exc:  # noqa: BLE001 - one model failing must not lose the others
            traceback.print_exc()
            data["models"].append({"model": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
        data["checks"] = targets.evaluate_runtimes(data)
        if DISCUSSION.is_file():
            data["discussion"] = DISCUSSION.read_text()
        text = json.dumps(data, indent=1, default=str)
        out_file.write_text(text)
        (args.results / "targets-latest.json").write_text(text)
        if not args.no_docs:
            write_docs(render_section(data))
    _log(f"results: {out_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
