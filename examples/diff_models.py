"""Diff two models from Python: what an optimization removed, added and changed, node by node.

    python examples/diff_models.py [WORKDIR]

Builds a small Keras model, exports it as a SavedModel, optimizes it into a
second SavedModel, loads both back and diffs them with
``graphopt.analysis.diff.diff_models`` -- what ``graphopt diff A B`` prints,
as data: ``removed``/``added`` are ``(name, op)`` pairs, ``changed`` says
which fields of a node differ, ``to_dict()`` is the JSON of ``--json``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import graphopt  # noqa: E402
from graphopt.analysis.diff import diff_models  # noqa: E402


def export_small_model(path: Path) -> None:
    import keras

    from graphopt.testing import randomize_batch_norms

    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((16, 16, 3), name="image")
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(inp)))
    x = L.Dense(2)(L.GlobalAveragePooling2D()(x))
    randomize_batch_norms(keras.Model(inp, x)).export(str(path), verbose=False)


def main(workdir: Path) -> None:
    original, optimized = workdir / "original", workdir / "optimized"
    export_small_model(original)
    graphopt.optimize(str(original), optimized, transforms="strip_debug_ops fold_constants fold_all_batch_norms")
    a, b = graphopt.load(str(original)), graphopt.load(str(optimized))
    diff = diff_models(a, b, a_label="original", b_label="optimized")
    print(diff.summary())
    print("ops delta:", ", ".join(f"{op} {d:+d}" for op, d in sorted(diff.ops_delta.items())))
    for name, op in [(n, op) for n, op in diff.removed if op not in ("Identity", "NoOp", "Const")][:5]:
        print(f"  - {op} {name}")
    for change in diff.changed[:5]:
        what = (["op " + change.op_before + " -> " + change.op] if change.op_before else []) + (
            ["inputs"] if change.inputs_before is not None else []) + sorted(change.attrs)
        print(f"  ~ {change.op} {change.name}: {', '.join(what)}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory(prefix="graphopt-example-") as tmp:
            main(Path(tmp))
