"""Count the batch norms left in keras.applications graphs: original, GTT's seed list, graphopt.

    /work/venv/bin/python benchmarks/bn_fold_counts.py [--size 96] [--models MobileNetV2,...] [--json]

Each model is built with ``weights=None`` and randomized BN statistics (with mean 0 /
variance 1 a batch norm is the identity and folding it proves nothing), in both
Keras 3 (BN as unfused Rsqrt/Mul/Sub/AddV2) and tf_keras (``FusedBatchNormV3``),
frozen with ``convert_variables_to_constants_v2`` of ``tf.function(model)`` with an
input TensorSpec. The input size does not change the graph's structure, so a small
one keeps this quick.

A batch norm is counted as *left* while its fused op, or a ``Mul`` of a tensor by a
constant per-channel vector (the unfused form, computed or folded), is in the graph;
*foldable left* is what one more run of ``fold_all_batch_norms`` would still
fold (0 means the pass reached its fixed point). Outputs (logits) of the original and
the folded graph are compared on one random input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODELS = ["MobileNetV2", "ResNet50", "InceptionV3", "EfficientNetB0", "DenseNet121"]
FLAVORS = ["keras", "tf_keras"]
FUSED = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")


def build(name: str, flavor: str, size: int):
    """Frozen graphopt Model of ``keras.applications.<name>`` (logits out), BN statistics randomized."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from graphopt.model import Model, Signature, TensorSpec
    from graphopt.testing import randomize_batch_norms

    if flavor == "tf_keras":
        import tf_keras as keras
    else:
        import keras
    keras.utils.set_random_seed(0)
    km = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    randomize_batch_norms(km)
    spec = tf.TensorSpec([1, size, size, 3], tf.float32)
    fn = tf.function(lambda x: km(x, training=False)).get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(fn)
    keras.backend.clear_session()
    sig = Signature({"x": TensorSpec(frozen.inputs[0].name, "float32", (1, size, size, 3))},
                    {"y": TensorSpec(frozen.outputs[0].name, "float32", None)})
    return Model(frozen.graph.as_graph_def(), sig, source=f"{flavor}.{name}")


def bn_count(model) -> tuple[int, int]:
    """(fused batch-norm ops, Muls of a non-constant tensor by a constant vector): a batch norm in
    either form (Keras 3's ``x * m``, with ``m`` computed or already folded to a Const)."""
    from graphopt.graph.edit import GraphEditor

    ed = GraphEditor(model.graph_def)
    fused = sum(1 for n in model.graph_def.node if n.op in FUSED)
    scaled = 0
    for node in model.graph_def.node:
        if node.op == "Mul":
            values = [ed.const_value(i) for i in ed.data_inputs(node)]
            if len(values) == 2 and sum(v is None for v in values) == 1:
                c = next(v for v in values if v is not None)
                scaled += c.size > 1
    return fused, scaled


def measure(name: str, flavor: str, size: int) -> dict:
    from graphopt.passes.batch_norm import FoldAllBatchNorms
    from graphopt.passes.pipeline import Pipeline
    from graphopt.runtime.session import run_model

    model = build(name, flavor, size)
    row: dict = {"model": name, "flavor": flavor, "bn": sum(bn_count(model)), "nodes": len(model.graph_def.node)}
    gtt = Pipeline.parse("gtt-seed").run(model, keep_going=True).model
    row["gtt_seed_left"] = sum(bn_count(gtt))
    t0 = time.perf_counter()
    result = FoldAllBatchNorms().run(model)
    row["seconds"] = round(time.perf_counter() - t0, 2)
    row.update({k: result.counters[k] for k in ("folded", "converted", "bias_merged", "precomputed", "skipped")})
    row["fused_left"], row["as_mul_add"] = bn_count(result.model)
    again = FoldAllBatchNorms().run(result.model)
    row["foldable_left"] = again.counters["folded"] + again.counters["converted"]
    row["nodes_after"] = len(result.model.graph_def.node)
    x = {"x": np.random.default_rng(1).random((1, size, size, 3)).astype(np.float32)}
    a, b = run_model(model, x)["y"], run_model(result.model, x)["y"]
    row["max_abs_diff"] = float(np.abs(a - b).max())
    row["max_rel_diff"] = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))
    row["notes"] = result.notes
    return row


def markdown(rows: list[dict]) -> str:
    head = ("| model | flavor | BNs | left by GTT seed list | folded | converted (fused -> Mul+Add) "
            "| left as Mul+Add | fused left | foldable left | nodes before -> after | max rel diff |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['flavor']} | {r['bn']} | {r['gtt_seed_left']} | {r['folded']} | "
                     f"{r['converted']} | {r['as_mul_add']} | {r['fused_left']} | {r['foldable_left']} | "
                     f"{r['nodes']} -> {r['nodes_after']} | {r['max_rel_diff']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=96, help="input height/width (InceptionV3 needs >= 75)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--flavors", default=",".join(FLAVORS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = [measure(m, f, args.size) for f in args.flavors.split(",") for m in args.models.split(",")]
    print(json.dumps(rows, indent=2) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
