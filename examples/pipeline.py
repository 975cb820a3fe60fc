"""Compose a pipeline in Python and run it with verification: ``graphopt.optimize``.

    python examples/pipeline.py [WORKDIR]

The pipeline mixes a pass object, passes by name (with options) and a group
repeated until nothing changes. ``graphopt.optimize`` runs the original on
sample inputs first, then the pipeline, compares the outputs of both, and
writes the SavedModel only if they agree (it raises ``VerificationError``, and
writes nothing, if they do not).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import graphopt  # noqa: E402
from graphopt.passes.pad_conv import FoldPadIntoConvPass  # noqa: E402


def small_model() -> graphopt.Model:
    """A Keras CNN with what exports carry: ZeroPadding2D before VALID convs, batch norms, a dense head."""
    import keras

    from graphopt.testing import frozen_keras, randomize_batch_norms

    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((32, 32, 3))
    x = L.ZeroPadding2D(((0, 1), (0, 1)))(inp)
    x = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(8, 3, strides=2, padding="valid", use_bias=False)(x)))
    x = L.ZeroPadding2D(((0, 1), (0, 1)))(x)
    x = L.ReLU(6.0)(L.BatchNormalization()(L.DepthwiseConv2D(3, strides=2, padding="valid", use_bias=False)(x)))
    x = L.Dense(4)(L.GlobalAveragePooling2D()(L.BatchNormalization()(L.Conv2D(16, 1)(x))))
    return frozen_keras(randomize_batch_norms(keras.Model(inp, x)))


def main(workdir: Path) -> None:
    model = small_model()
    pipeline = graphopt.Pipeline([
        "strip_debug_ops",
        FoldPadIntoConvPass(),
        graphopt.Repeat(["fold_constants(ignore_errors=true)", "fold_all_batch_norms"], max_iterations=3),
        "merge_duplicate_nodes(ignore_errors=true)",
    ])
    print(f"pipeline: {pipeline.spec}")
    result = graphopt.optimize(model, workdir / "optimized", transforms=pipeline, tolerance=1e-4)
    for record in result.records:
        step = record.name + (f" #{record.iteration}" if record.iteration is not None else "")
        counters = ", ".join(f"{k}={v}" for k, v in record.counters.items() if v)
        print(f"{step:<28} {record.status:<9} {record.nodes_before:>4} -> {record.nodes_after:<4} {counters}")
    print(result.verification.lines()[0])
    print(f"wrote {result.written[0].name}/: {model.node_count} -> {result.model.node_count} nodes")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory(prefix="graphopt-example-") as tmp:
            main(Path(tmp))
