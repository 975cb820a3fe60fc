"""The demo: the detector module carries what old TF1 Hub modules carried, and the seed's workflow holds end to end."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from graphopt.demo.detector import MODULE_DEF_V3, OUTPUT_KEYS, build_module
from graphopt.graph.names import node_name


@pytest.fixture(scope="session")
def module_dir(model_path):
    return model_path("demo_detector_module", build_module)


@pytest.fixture(scope="session")
def module_meta(module_dir):
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((module_dir / "saved_model.pb").read_bytes())
    assert len(sm.meta_graphs) == 1
    return sm.meta_graphs[0]


@pytest.fixture(scope="session")
def demo(module_dir, tmp_path_factory):
    from graphopt.demo.workflow import run_workflow

    return run_workflow(tmp_path_factory.mktemp("demo") / "work", module=module_dir)


def _ancestors(graph_def, roots):
    by_name = {n.name: n for n in graph_def.node}
    seen, stack = set(), [node_name(r) for r in roots]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(node_name(i) for i in by_name[name].input)
    return seen


def test_module_is_a_tf1_hub_module(module_dir, module_meta):
    assert (module_dir / "tfhub_module.pb").read_bytes() == MODULE_DEF_V3
    assert list(module_meta.meta_info_def.tags) == []
    sig = module_meta.signature_def["default"]
    assert list(sig.inputs) == ["images"]
    images = sig.inputs["images"]
    assert images.dtype == 1  # DT_FLOAT
    assert [d.size for d in images.tensor_shape.dim] == [-1, -1, -1, 3]
    assert set(sig.outputs) == set(OUTPUT_KEYS)
    assert any(p.name.startswith("variables.") for p in (module_dir / "variables").iterdir())


def test_module_carries_what_old_modules_carry(module_meta):
    gd = module_meta.graph_def
    ops = Counter(n.op for n in gd.node)
    for op in ("VariableV2", "FusedBatchNorm", "CheckNumerics", "Identity", "Enter", "Exit", "NextIteration",
               "Switch", "Merge", "LoopCond", "NonMaxSuppressionV3", "TensorArrayV3", "DepthwiseConv2dNative",
               "ApplyMomentum", "ScalarSummary"):
        assert ops[op] > 0, op
    for op in ("VarHandleOp", "FusedBatchNormV3", "While", "StatelessWhile"):
        assert ops[op] == 0, op
    by_name = {n.name: n for n in gd.node}
    for n in gd.node:
        if n.op == "FusedBatchNorm":
            assert n.attr["is_training"].b is False
    # ref variables' reads are Identity nodes colocated with their variable (optimizer slots: with the primary)
    reads = [n for n in gd.node if n.op == "Identity" and by_name[node_name(n.input[0])].op == "VariableV2"]
    assert len(reads) > 100
    assert all(len(n.attr["_class"].list.s) == 1 and n.attr["_class"].list.s[0].startswith(b"loc:@") for n in reads)
    assert sum(n.attr["_class"].list.s == [b"loc:@" + n.input[0].encode()] for n in reads) > 100
    # colocate_with in the box decoder gives _class to ops that are not variable reads
    assert any("_class" in n.attr and n.name.startswith("Postprocessor/") for n in gd.node)
    # NMS sits inside the while loop's frame, and the path to the outputs runs through it
    sig = module_meta.signature_def["default"]
    path = _ancestors(gd, [t.name for t in sig.outputs.values()])
    path_ops = Counter(by_name[n].op for n in path)
    for op in ("NonMaxSuppressionV3", "Enter", "Exit", "NextIteration", "CheckNumerics", "FusedBatchNorm",
               "VariableV2"):
        assert path_ops[op] > 0, op
    assert all("MultiClassNonMaxSuppression/" in n for n in path if by_name[n].op == "NonMaxSuppressionV3")
    # the training branch is off the inference path
    train_only = {n.name for n in gd.node if n.op in ("ApplyMomentum", "ScalarSummary")} | {
        n.name for n in gd.node if n.name.startswith("gradients/")}
    assert train_only and not (train_only & path)


def test_module_weights_are_seeded_and_batch_norm_stats_non_trivial(module_dir):
    import tensorflow as tf

    from graphopt.demo.detector import build_graph

    reader = tf.train.load_checkpoint(str(module_dir / "variables" / "variables"))
    built = build_graph()  # same default seed as build_module
    assert len(built.weights) > 100
    for var, value in built.weights.items():
        np.testing.assert_array_equal(reader.get_tensor(var.op.name), value)
    means = [reader.get_tensor(n) for n in reader.get_variable_to_shape_map() if n.endswith("moving_mean")]
    variances = [reader.get_tensor(n) for n in reader.get_variable_to_shape_map() if n.endswith("moving_variance")]
    assert len(means) == 54 and all(np.abs(m).max() > 0.1 for m in means)
    assert all(np.abs(v - 1).max() > 0.1 for v in variances)


def test_module_runs_as_a_detector(module_dir):
    import tensorflow as tf

    from graphopt.demo.workflow import sample_image

    image = sample_image((1, 240, 320, 3)).astype(np.float32) / 255.0
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, [], str(module_dir))
        sig = meta.signature_def["default"]
        out = sess.run({k: v.name for k, v in sig.outputs.items()}, {sig.inputs["images"].name: image})
    boxes, scores = out["detection_boxes"], out["detection_scores"]
    assert boxes.shape == (100, 4) and scores.shape == (100,)
    assert np.all(np.diff(scores) <= 0) and 0 < scores.max() < 1 and np.ptp(scores) > 0.01
    assert np.all((boxes >= 0) & (boxes <= 1))
    assert set(out["detection_class_labels"].tolist()) <= set(range(1, 9))
    assert out["detection_class_names"].dtype == object


def test_workflow_halves_the_saved_model_and_keeps_outputs(demo):
    seed = demo.seed
    assert seed.pipeline == "gtt-seed" and seed.error is None
    assert demo.as_is_variables_files == 0 and seed.variables_files == 0  # all weights are constants
    assert seed.saved_model_bytes < 0.6 * demo.as_is_saved_model_bytes
    assert seed.nodes < demo.loaded_nodes < demo.as_is_nodes
    assert seed.max_diff < 1e-4 and seed.classes_equal
    assert [r["name"] for r in seed.records] == ["remove_attribute", "remove_nodes", "strip_unused_nodes",
                                                 "fold_constants", "fold_batch_norms", "fold_old_batch_norms",
                                                 "merge_duplicate_nodes"]
    assert all(r["status"] in ("applied", "unchanged") for r in seed.records)


def test_seed_list_on_the_whole_graph_as_the_post_ran_it(demo):
    # training branch (gradients with control-dependency Identities), loop Identities and all
    whole = demo.whole_graph
    assert whole["nodes_before"] == demo.as_is_nodes
    assert whole["strip_unused_removed"] > 1000 and whole["nodes_after"] <= demo.loaded_nodes
    assert whole["max_diff"] < 1e-4 and whole["classes_equal"]


def test_workflow_folds_batch_norms_strips_debug_ops_and_keeps_the_loop(demo):
    before, after = demo.as_is_ops, demo.seed.ops
    assert before["FusedBatchNorm"] == 54 and after["FusedBatchNorm"] == 0
    assert before["Identity"] > 0 and after["Identity"] == 0
    assert before["CheckNumerics"] > 0 and after["CheckNumerics"] == 0
    # remove_nodes(op=Identity) bypassed the loop's own Identity nodes too; the TF1 loop is still there and runs
    for op in ("Enter", "Exit", "NextIteration", "NonMaxSuppressionV3"):
        assert after[op] > 0, op


def test_optimized_saved_model_keeps_the_seed_signature(demo):
    import tensorflow as tf

    from graphopt.demo.workflow import predict, sample_image

    for path in (demo.as_is_path, demo.seed.path):
        graph = tf.Graph()
        with tf.compat.v1.Session(graph=graph) as sess:
            meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        sig = meta.signature_def["serving_default"]
        assert sig.method_name == "tensorflow/serving/predict"
        assert list(sig.inputs) == ["inputs"] and sig.inputs["inputs"].dtype == tf.uint8.as_datatype_enum
        assert set(sig.outputs) == {"detection_boxes", "detection_classes", "detection_scores"}
    # another picture than the one the workflow compared on: still the same answers
    image = sample_image((1, 200, 260, 3), seed=7)
    a, b = predict(demo.as_is_path, image), predict(demo.seed.path, image)
    assert a["detection_boxes"].shape == (1, 100, 4) and a["detection_classes"].shape == (1, 100)
    np.testing.assert_array_equal(a["detection_classes"], b["detection_classes"])
    np.testing.assert_allclose(a["detection_scores"], b["detection_scores"], atol=1e-5)
    np.testing.assert_allclose(a["detection_boxes"], b["detection_boxes"], atol=1e-5)


def test_other_pipelines_are_reported_beside_the_seed(demo):
    by_name = {o.pipeline: o for o in demo.optimizations}
    # GTT README's deployment list has no remove_attribute(_class): removing the CheckNumerics that the box
    # decoder is colocated with leaves `_class: loc:@module/CheckNumerics` dangling, and graphopt refuses the
    # graph with a PassError naming the pass, instead of saving a SavedModel TensorFlow cannot import.
    deploy = by_name["gtt-deploy"]
    assert deploy.error and "remove_nodes" in deploy.error and "colocated" in deploy.error
    assert not deploy.path and demo.seed.error is None
    if "serving" in by_name:  # graphopt's own preset, when registered
        serving = by_name["serving"]
        assert serving.error is None and serving.classes_equal and serving.max_diff < 1e-4
        assert serving.saved_model_bytes < 0.6 * demo.as_is_saved_model_bytes


def test_workdir_that_holds_a_run_is_refused(demo, cli):
    from pathlib import Path

    workdir = Path(demo.workdir)
    (workdir / "module").mkdir(exist_ok=True)
    code, out, err = cli("demo", "--workdir", workdir)
    assert code == 6, err
    assert "already holds" in err and "hint:" in err


def test_demo_command(cli):
    code, out, err = cli("demo")
    assert code == 0, err
    assert "saved_model.pb" in out and "gtt-seed" in out and "largest output difference" in out
    assert "fold_old_batch_norms" in out and "122 MB -> 58 MB" in out and "classes equal" in out


def test_diff_of_the_seed_list_on_the_whole_graph_shows_exactly_what_it_removed(demo):
    """The seed list, run on the whole as-is graph as the post did, diffed node by node.

    Removed must be exactly: the training branch (everything the outputs do not
    need), every Identity and CheckNumerics, nodes whose value was constant
    (folded into new Consts by fold_constants / fold_old_batch_norms) and twins
    merge_duplicate_nodes merged. Added: Consts only.
    """
    import graphopt
    from graphopt.analysis.diff import diff_models
    from graphopt.demo.workflow import _saved_graph_def

    frozen = _saved_graph_def(demo.as_is_path)
    model = graphopt.load(demo.as_is_path)
    after = graphopt.Pipeline.parse("gtt-seed").run(model.replace(graph_def=frozen, init_ops=[])).model
    d = diff_models(frozen, after.graph_def)

    by_name = {n.name: n for n in frozen.node}
    needed = _ancestors(frozen, [t.name for t in model.signature.outputs.values()])
    training_branch = set(by_name) - needed
    debug_ops = {n for n in needed if by_name[n].op in ("Identity", "CheckNumerics")}
    # Values that do not depend on the image's pixels: fold_constants evaluates them (static shapes included).
    constant = {n for n in needed if by_name[n].op != "Placeholder"
                and not any(by_name[a].op == "Placeholder" for a in _value_ancestors(by_name, n))}
    duplicates = _merged_duplicates(frozen)  # what merge_duplicate_nodes folds into a twin
    removed = {name for name, _ in d.removed}

    assert any("Momentum" in n for n in training_branch) and any("gradients" in n for n in training_branch)
    assert training_branch <= removed
    assert debug_ops <= removed and {by_name[n].op for n in debug_ops} == {"Identity", "CheckNumerics"}
    assert removed <= training_branch | debug_ops | constant | duplicates
    assert {op for _, op in d.added} == {"Const"}
    assert d.ops_delta["FusedBatchNorm"] == -54


def _value_ancestors(by_name, root):
    """Ancestors through data inputs, not through Shape/Size/Rank (a static shape is a constant)."""
    seen, stack = set(), [root]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if by_name[name].op not in ("Shape", "Size", "Rank"):
            stack.extend(node_name(i) for i in by_name[name].input if not i.startswith("^"))
    return seen


def _merged_duplicates(graph_def):
    """Nodes that have a twin (same op, attrs and inputs, inputs seen through twins), to a fixed point.

    Either twin may be the one merge_duplicate_nodes keeps, so both are returned.
    """
    by_name = {n.name: n for n in graph_def.node}
    canon = {name: name for name in by_name}

    def resolve(name):
        while canon[name] != name:
            name = canon[name]
        return name

    changed = True
    while changed:
        changed, first = False, {}
        for node in graph_def.node:
            if resolve(node.name) != node.name or node.op in ("Placeholder",):
                continue
            inputs = tuple(("^" if i.startswith("^") else "") + resolve(node_name(i)) + (i[i.rindex(":"):] if ":" in i else "")
                           for i in node.input)
            key = (node.op, inputs, tuple(sorted((k, v.SerializeToString(deterministic=True))
                                                 for k, v in node.attr.items())))
            if key in first:
                canon[node.name] = first[key]
                changed = True
            else:
                first[key] = node.name
    merged = {name for name in by_name if resolve(name) != name}
    return merged | {resolve(name) for name in merged}
