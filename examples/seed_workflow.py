"""The seed post's workflow with graphopt's Python API, on the demo detector.

    python examples/seed_workflow.py [WORKDIR]

What the post did in TF1 with ``TransformGraph(graph_def, inputs, outputs, transforms)``
is, with graphopt: load the as-is SavedModel, run the same seven GTT transforms as a
pipeline, save the result for TF Serving. The model here is the detector that
``graphopt demo`` builds (an SSD/MobileNetV2 TF1 Hub module), wrapped for serving
the way the post wrapped the real one; any other SavedModel works from step 2 on.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import graphopt  # noqa: E402
from graphopt.demo.detector import build_module  # noqa: E402
from graphopt.demo.workflow import freeze_in_place, predict, sample_image, save_as_is, wrap_module  # noqa: E402

TRANSFORMS = """
remove_attribute(attribute_name=_class)
remove_nodes(op=Identity, op=CheckNumerics)
strip_unused_nodes
fold_constants(ignore_errors=true)
fold_batch_norms
fold_old_batch_norms
merge_duplicate_nodes
"""


def main(workdir: Path) -> None:
    # 1. The model and its serving wrapper, as in the post: uint8 input_image -> module -> Reshape outputs.
    module = build_module(workdir / "module")
    graph, sess, inputs, outputs = wrap_module(module)
    with sess:
        frozen = freeze_in_place(sess, graph)  # weights become constants, as they were in the post's module
    save_as_is(frozen, inputs, outputs, workdir / "models" / "1")

    # 2. graphopt: load (any format; frozen, signature kept), transform, save for TF Serving.
    model = graphopt.load(str(workdir / "models" / "1"))
    result = graphopt.Pipeline.parse(TRANSFORMS).run(model)  # same as Pipeline.parse("gtt-seed")
    for record in result.records:
        print(f"{record.name:<22} {record.status:<10} {record.nodes_before:>5} -> {record.nodes_after:<5} nodes "
              f"{record.seconds:.2f}s")
    graphopt.save(result.model, str(workdir / "models" / "2"), format="saved_model")

    # 3. Sizes, and the same picture through both SavedModels (loaded with TF's own loader, as TF Serving does).
    sizes = [(workdir / "models" / v / "saved_model.pb").stat().st_size for v in ("1", "2")]
    image = sample_image()
    before, after = predict(workdir / "models" / "1", image), predict(workdir / "models" / "2", image)
    diff = max(float(abs(before[k] - after[k]).max()) for k in ("detection_boxes", "detection_scores"))
    print(f"saved_model.pb {sizes[0] / 1e6:.2f} MB -> {sizes[1] / 1e6:.2f} MB; largest output difference {diff:.3g}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory(prefix="graphopt-example-") as tmp:
            main(Path(tmp))
