"""Quick latency check of fold_all_batch_norms and strip_debug_ops, with the runtime's own Grappler on.

    /work/venv/bin/python benchmarks/bn_fold_latency.py MobileNetV2 [--flavor keras] [--size 224] [--runs 100]
    /work/venv/bin/python benchmarks/bn_fold_latency.py tf1     # the suite's TF1 graph (benchmarks/suite_models.py)

One process, one session per variant (original, each pass alone, both), batch 1,
runs interleaved so load from other processes hits every variant alike; prints
first-run time (session creation + first inference, where runtime Grappler runs)
and the median warm latency as a ratio of the original. The formal, cross-model
numbers are in ``docs/measurements/benchmarks.md``; this answers "which of the two passes buys
latency" for one model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def load_model(name: str, flavor: str, size: int):
    if name == "tf1":
        from benchmarks.suite_models import build_tf1_graph
        from graphopt.loaders import load

        path = Path(tempfile.mkdtemp()) / "tf1"
        build_tf1_graph(path)
        return load(str(path))
    from benchmarks.bn_fold_counts import build

    return build(name, flavor, size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a keras.applications name, or 'tf1'")
    parser.add_argument("--flavor", default="keras", choices=["keras", "tf_keras"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args(argv)

    from graphopt.passes.batch_norm import FoldAllBatchNorms
    from graphopt.passes.debug_ops import StripDebugOps
    from graphopt.runtime.session import Session, random_inputs

    model = load_model(args.model, args.flavor, args.size)
    folded = FoldAllBatchNorms().run(model).model
    variants = {"original": model, "strip_debug_ops": StripDebugOps().run(model).model,
                "fold_all_batch_norms": folded, "both": StripDebugOps().run(folded).model}
    feeds = random_inputs(model.signature)
    sessions, first = {}, {}
    for key, variant in variants.items():
        t0 = time.perf_counter()
        sessions[key] = Session(variant)
        sessions[key].run(feeds)
        first[key] = time.perf_counter() - t0
    times: dict[str, list[float]] = {k: [] for k in variants}
    order = list(sessions)
    for i in range(args.runs):
        for key in order[i % len(order):] + order[:i % len(order)]:  # rotate: no variant always runs first
            t0 = time.perf_counter()
            sessions[key].run(feeds)
            times[key].append(time.perf_counter() - t0)
    base = float(np.median(times["original"]))
    label = args.model if args.model == "tf1" else f"{args.model} ({args.flavor}, {args.size}x{args.size})"
    print(f"| {label} | variant | nodes | first run s | median ms | ratio |")
    print("|---|---|---|---|---|---|")
    for key, variant in variants.items():
        med = float(np.median(times[key]))
        print(f"| | {key} | {len(variant.graph_def.node)} | {first[key]:.2f} | {med * 1000:.1f} | {med / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
