"""Size and output error of graphopt's fp16/int8 weight passes against GTT's quantize_weights.

    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/weight_precision.py [--models MobileNetV2 ResNet50] [--json]

Keras applications with weights=None and randomized batch-norm statistics, frozen at
batch 1. Size is the GraphDef's bytes; the error is verification's measure,
max|a - b| / max|a| over the outputs, on the same random inputs for every variant.
``quantize_weights`` is run both on the original graph and on the ``serving``
graph (batch norms folded), which is what ``serving-int8`` quantizes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VARIANTS = {
    "serving": "serving",
    "serving-fp16": "serving-fp16",
    "serving-int8": "serving-int8",
    "int8 on original": "weights_to_int8",
    "quantize_weights on original": "quantize_weights",
    "quantize_weights on serving": "serving quantize_weights",
}


def measure(name: str, seeds: int = 2) -> list[dict]:
    import keras
    import numpy as np

    from graphopt.passes.pipeline import Pipeline
    from graphopt.runtime.session import random_inputs, run_model
    from graphopt.testing import frozen_keras, randomize_batch_norms

    keras.utils.set_random_seed(0)
    model = frozen_keras(randomize_batch_norms(getattr(keras.applications, name)(weights=None)))
    feeds = [random_inputs(model.signature, seed=s) for s in range(seeds)]
    refs = [run_model(model, f)["output"] for f in feeds]
    rows = [{"model": name, "variant": "original", "bytes": model.size_bytes, "size_ratio": 1.0, "rel_error": 0.0}]
    for label, spec in VARIANTS.items():
        out = Pipeline.parse(spec).run(model).model
        err = max(float(np.abs(run_model(out, f)["output"] - r).max() / np.abs(r).max()) for f, r in zip(feeds, refs))
        rows.append({"model": name, "variant": label, "bytes": out.size_bytes,
                     "size_ratio": round(out.size_bytes / model.size_bytes, 4), "rel_error": err})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["MobileNetV2", "ResNet50"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [row for name in args.models for row in measure(name)]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("| model | variant | size MB | size ratio | relative output error |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['variant']} | {r['bytes'] / 1e6:.2f} | {r['size_ratio']:.3f} | {r['rel_error']:.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
