"""Calls and shapes that block every pass: ConvNeXt-Tiny (Keras 3) before and after inlining and shape specialization.

Keras 3 compiles ConvNeXt's 7x7 "depthwise" convolutions (``Conv2D(groups=channels)``)
with XLA: after loading they are 18 ``StatefulPartitionedCall``\\ s of
``_XlaMustCompile`` functions, and its LayerNorms compute their shapes at run time
(``Shape``/``GatherV2``/``Prod``/``Pack``, 36-72 each) because the batch is unknown.

    python benchmarks/calls_and_shapes.py [--runs 20] [--cache benchmarks/.cache]

Variants (each verified against the original on the same inputs, then benchmarked
side by side with graphopt.bench: warm latency interleaved run by run, cold start in
a fresh process):

* ``original``: frozen by the loader, no pass, TF's default runtime config;
* ``serving without inlining``: the ``serving`` preset as it was (no ``inline_functions``);
* ``serving``: the preset now (``inline_functions`` first);
* ``serving --input-shape 1,224,224,3``: the same after shape specialization.

Results go to ``benchmarks/results/calls_and_shapes.json`` and the table in
``docs/measurements/calls-and-shapes.md`` is regenerated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

MODEL = "ConvNeXtTiny"
SHAPE = (1, 224, 224, 3)
OLD_SERVING = ("strip_debug_ops remove_attribute(attribute_name=_class, ignore_errors=true) "
               "strip_unused_nodes(ignore_errors=true) fold_constants(ignore_errors=true) fold_all_batch_norms "
               "merge_duplicate_nodes(ignore_errors=true) grappler_optimize")
BEGIN, END = "<!-- calls-and-shapes:begin -->", "<!-- calls-and-shapes:end -->"


def build(cache: Path) -> Path:
    path = cache / "convnext_tiny"
    if not (path / "saved_model.pb").exists():
        import keras

        keras.utils.set_random_seed(0)
        model = keras.applications.ConvNeXtTiny(weights=None, input_shape=SHAPE[1:])
        model.export(str(path), format="tf_saved_model", verbose=False)
        keras.backend.clear_session()
    return path


def _ops(model) -> dict[str, int]:
    main = Counter(n.op for n in model.graph_def.node)
    for f in model.graph_def.library.function:
        main.update(n.op for n in f.node_def)
    keys = ("StatefulPartitionedCall", "Shape", "GatherV2", "Prod", "Pack", "Conv2D", "DepthwiseConv2dNative")
    return {k: main.get(k, 0) for k in keys}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--cache", type=Path, default=HERE / ".cache")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "measurements" / "calls-and-shapes.md")
    p.add_argument("--bench-only", action="store_true",
                   help="reuse the variants (and their verification) the last run optimized; only benchmark")
    args = p.parse_args(argv)

    import variants

    from graphopt.bench import bench
    from graphopt.loaders import load
    from graphopt.passes.pipeline import Pipeline
    from graphopt.passes.shapes import specialize
    from graphopt.plugins import Host
    from graphopt.verify.compare import make_inputs, verify

    host = Host.create(plugins=False)
    args.cache.mkdir(parents=True, exist_ok=True)
    src = build(args.cache)
    original = load(str(src))
    feeds = make_inputs(specialize(original, {k: SHAPE for k in original.signature.inputs}))
    out = args.cache / "variants" / "calls_and_shapes"
    partial = out / "variants.json"
    rows = []
    plans = [("original", None, None), ("serving without inlining", OLD_SERVING, None), ("serving", "serving", None),
             (f"serving --input-shape {','.join(map(str, SHAPE))}", "serving", SHAPE)]
    paths, runtimes = [], []
    if args.bench_only:
        saved = json.loads(partial.read_text())
        rows, paths, runtimes = saved["rows"], saved["paths"], saved["runtimes"]
        plans = []
    for label, transforms, shape in plans:
        t0 = time.perf_counter()
        model = original
        if shape is not None:
            model = specialize(original, {k: shape for k in original.signature.inputs})
        if transforms is not None:
            model = Pipeline.parse(transforms, host=host).run(model).model
        seconds = time.perf_counter() - t0
        runtime = "full" if transforms is None else "shipped"
        path = variants._save(model, out / label.replace(" ", "_").replace(",", "x"), runtime)
        report = verify(original, model, samples=feeds)
        rows.append({"variant": label, "transforms": transforms, "input_shape": list(shape) if shape else None,
                     "optimize_s": seconds, "nodes": model.node_count, "ops": _ops(model),
                     "verify": {"passed": report.passed, "max_abs": report.max_abs, "max_rel": report.max_rel}})
        paths.append(str(path))
        runtimes.append(runtime)
        print(f"{label}: optimized in {seconds:.1f} s, {model.node_count} nodes, verified max rel "
              f"{report.max_rel:.2g}", file=sys.stderr, flush=True)
    partial.write_text(json.dumps({"rows": rows, "paths": paths, "runtimes": runtimes}, default=str))
    rep = bench(paths, labels=[r["variant"] for r in rows], grappler=runtimes, runs=args.runs, warmup=args.warmup,
                samples=feeds)
    for row, mb in zip(rows, rep.models):
        row["bench"] = mb.to_dict()
    result = {"model": MODEL, "when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": rep.machine,
              "runs": args.runs, "warmup": args.warmup, "command": "python benchmarks/calls_and_shapes.py " +
              " ".join(argv if argv is not None else sys.argv[1:]), "rows": rows, "notes": rep.notes}
    results = HERE / "results" / "calls_and_shapes.json"
    results.parent.mkdir(exist_ok=True)
    results.write_text(json.dumps(result, indent=2, default=str))
    table = render(result)
    print(table)
    if args.docs.exists():
        text = args.docs.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            args.docs.write_text(head + BEGIN + "\n" + table + END + rest.split(END, 1)[1])
    return 0


def render(result: dict) -> str:
    base = result["rows"][0]["bench"]
    lines = [f"{result['model']}, {result['runs']} warm runs per variant (interleaved), batch 1; "
             f"{result['when']}; `{result['command'].strip()}`", "",
             "| variant | nodes | XLA calls | Shape / GatherV2 / Prod | warm median ms | vs original | "
             "first request s | verified (max rel) |",
             "|---|---:|---:|---|---:|---:|---:|---|"]
    for row in result["rows"]:
        b = row["bench"]
        warm = (b.get("warm") or {}).get("median_ms")
        base_warm = (base.get("warm") or {}).get("median_ms")
        ratio = f"{base_warm / warm:.2f}x" if warm and base_warm else "n/a"
        cold = (b.get("cold") or {}).get("first_run_s")
        ops = row["ops"]
        lines.append(f"| {row['variant']} | {row['nodes']} | {ops['StatefulPartitionedCall']} | "
                     f"{ops['Shape']} / {ops['GatherV2']} / {ops['Prod']} | "
                     f"{warm:.1f} | {ratio} | {cold:.2f} | "
                     f"{'yes' if row['verify']['passed'] else 'NO'} ({row['verify']['max_rel']:.2g}) |"
                     if warm is not None and cold is not None else
                     f"| {row['variant']} | {row['nodes']} | {ops['StatefulPartitionedCall']} | - | - | - | - | - |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
