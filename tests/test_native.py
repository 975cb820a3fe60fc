"""GTT's native transforms as passes: options checked against GTT's sources, graphs that still import and run.

Every transform that needs no external file is run on a small real graph, through
a Pipeline (so the graph check runs after it), and its outputs are compared with
the original's. The main ones also get their structural change asserted.
"""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import PassError, UsageError
from graphopt.passes.gtt import NATIVE_TRANSFORMS, NativeTransform
from graphopt.passes.pipeline import Pipeline
from graphopt.plugins import Host
from graphopt.runtime.session import random_inputs, run_model
from tests.models import graph_model, tf2_function_model


@pytest.fixture(scope="module")
def host():
    return Host.create(plugins=False)


def _conv_bn_graph():
    """Conv2D -> FusedBatchNorm (v1, inference) -> Relu -> Identity -> CheckNumerics, plus foldable and
    duplicate constants, a `_class` colocation attribute and a branch no output needs."""
    import tensorflow as tf

    rng = np.random.default_rng(0)

    def build(x):
        w = tf.constant(rng.standard_normal((3, 3, 3, 4)).astype(np.float32), name="conv/w")
        with tf.compat.v1.colocate_with(w):
            w_read = tf.identity(w, name="conv/w/read")
        conv = tf.nn.conv2d(x, w_read, strides=1, padding="SAME", name="conv/Conv2D")
        c = lambda v, n: tf.constant(np.asarray(v, np.float32), name=n)  # noqa: E731
        bn = tf.raw_ops.FusedBatchNorm(x=conv, scale=c(rng.uniform(0.5, 2, 4), "bn/gamma"),
                                       offset=c(rng.standard_normal(4), "bn/beta"),
                                       mean=c(rng.standard_normal(4), "bn/mean"),
                                       variance=c(rng.uniform(0.5, 2, 4), "bn/var"),
                                       epsilon=0.001, is_training=False, name="bn/FusedBatchNorm")[0]
        h = tf.nn.relu(bn, name="relu")
        h = tf.identity(h, name="relu/Identity")
        h = tf.debugging.check_numerics(h, "bad", name="relu/CheckNumerics")
        scale = tf.add(tf.multiply(tf.constant(2.0, name="k/two"), tf.constant(3.0, name="k/three")), 1.0,
                       name="k/seven")  # a constant subgraph fold_constants turns into one Const
        pooled = tf.reduce_mean(h, axis=[1, 2], name="pool")
        a = tf.add(pooled, tf.constant([1.0, 2.0, 3.0, 4.0], name="dup_a"), name="add_a")
        b = tf.add(pooled, tf.constant([1.0, 2.0, 3.0, 4.0], name="dup_b"), name="add_b")
        tf.reduce_sum(x, name="unused/sum")  # reaches no output
        return {"y": tf.multiply(a + b, scale, name="y")}

    return graph_model(build, {"x": (tf.float32, (1, 8, 8, 3))})


@pytest.fixture(scope="module")
def conv_model():
    return _conv_bn_graph()


def _run(model, text, host, **kw):
    return Pipeline.parse(text, host=host).run(model, **kw)


def _outputs(model, feeds):
    return run_model(model, feeds)


def _ops(model):
    return [n.op for n in model.graph_def.node]


# --- option table ------------------------------------------------------------------------------


def test_every_native_transform_is_registered_in_the_binding(host):
    from tensorflow.python.util import _pywrap_transform_graph

    assert set(NATIVE_TRANSFORMS) <= set(host.registry.passes)
    for name in NATIVE_TRANSFORMS:
        with pytest.raises(Exception) as info:  # a name GTT does not know fails differently from one it knows
            _pywrap_transform_graph.TransformGraphWithStringInputs(b"", "", "", name + "_not_a_transform")
        assert "not recognized" in str(info.value)


@pytest.mark.parametrize("text, option", [
    ("fold_constants(foo=1)", "foo"),
    ("remove_nodes(op=Identity, max_input=2)", "max_input"),
    ("quantize_nodes(op=Conv2D)", "op"),  # GTT's quantize_nodes takes ignore_op, not op
    ("sparsify_gather(group_name=x)", "group_name"),  # ... and group_init_node, not group_name
])
def test_unknown_arguments_are_rejected_naming_the_pass_and_its_options(host, text, option):
    # GTT would run these and silently ignore the argument.
    with pytest.raises(UsageError) as info:
        Pipeline.parse(text, host=host)
    err = info.value
    name = text.split("(")[0]
    assert name in err.message and option in err.message
    for known in NATIVE_TRANSFORMS[name][1]:
        assert known in err.hint


def test_options_are_typed_and_checked_before_gtt_runs(host):
    with pytest.raises(UsageError, match="expects int"):
        Pipeline.parse("remove_nodes(op=Identity, max_inputs=two)", host=host)
    with pytest.raises(UsageError, match="required"):
        Pipeline.parse("remove_attribute", host=host)
    with pytest.raises(UsageError, match="given 2 times"):
        Pipeline.parse("remove_attribute(attribute_name=a, attribute_name=b)", host=host)
    # A negative size is a CHECK failure in GTT that kills the process; here it is a usage error.
    with pytest.raises(UsageError, match="non-negative"):
        Pipeline.parse('strip_unused_nodes(shape="-1,224,224,3")', host=host)
    with pytest.raises(UsageError, match="unknown type"):
        Pipeline.parse("strip_unused_nodes(type=float32)", host=host)
    with pytest.raises(UsageError, match="one 'shape_for_name' per 'name'"):
        Pipeline.parse("strip_unused_nodes(name=a, type_for_name=float)", host=host)
    ok = Pipeline.parse("fold_constants(exclude_op=Shape, exclude_op=Size, clear_output_shapes=false)", host=host)
    (step,) = ok.steps
    assert step.config["exclude_op"] == ["Shape", "Size"] and step.config["clear_output_shapes"] is False
    assert step.gtt_args() == [("clear_output_shapes", "false"), ("exclude_op", "Shape"), ("exclude_op", "Size")]


# --- every transform runs -----------------------------------------------------------------------

# Arguments for transforms that need some; lossy ones are only checked to run and import.
_ARGS = {
    "insert_logging": "insert_logging(op=Relu, first_n=1)",
    # GTT's obfuscate_names renames nodes but not `_class` colocation references (see the test below).
    "obfuscate_names": "remove_attribute(attribute_name=_class) obfuscate_names",
    "remove_attribute": "remove_attribute(attribute_name=_class)",
    "remove_nodes": "remove_nodes(op=Identity, op=CheckNumerics)",
    "rename_attribute": "rename_attribute(old_attribute_name=_class, new_attribute_name=_colocate)",
    "rename_node": "rename_node(old_node_name=pool, new_node_name=pool_renamed)",
    "rename_op": "rename_op(old_op_name=Relu, new_op_name=Relu6)",  # changes outputs on purpose
    "set_device": 'set_device(device="/device:CPU:0")',
}
_CHANGES_OUTPUTS = {"rename_op", "quantize_nodes", "quantize_weights", "round_weights"}
_NEEDS_FILE = {"freeze_requantization_ranges"}


@pytest.mark.parametrize("name", sorted(set(NATIVE_TRANSFORMS) - _NEEDS_FILE))
def test_each_native_transform_runs_and_the_graph_still_imports(host, conv_model, name):
    feeds = random_inputs(conv_model.signature)
    before = _outputs(conv_model, feeds)
    result = _run(conv_model, _ARGS.get(name, name), host)
    record = result.records[-1]
    assert record.name == name and record.origin == "native"
    assert all(r.status in ("applied", "unchanged") for r in result.records), record.error
    after = _outputs(result.model, feeds)  # importing and running it is the check
    assert set(after) == {"y"}
    if name not in _CHANGES_OUTPUTS:
        np.testing.assert_allclose(after["y"], before["y"], rtol=1e-4, atol=1e-4)
    else:
        assert np.all(np.isfinite(after["y"]))


def test_a_transform_needing_a_file_says_so(host):
    with pytest.raises(UsageError, match="min_max_log_file"):
        Pipeline.parse("freeze_requantization_ranges", host=host)


# --- the main transforms, structure and outputs ---------------------------------------------------


def test_remove_nodes_and_remove_attribute(host, conv_model):
    feeds = random_inputs(conv_model.signature)
    result = _run(conv_model, "remove_attribute(attribute_name=_class) remove_nodes(op=Identity, op=CheckNumerics)",
                  host)
    ops = _ops(result.model)
    assert "CheckNumerics" not in ops and "Identity" not in ops
    assert not any("_class" in n.attr for n in result.model.graph_def.node)
    assert any("_class" in n.attr for n in conv_model.graph_def.node)
    assert [r.status for r in result.records] == ["applied", "applied"]
    assert result.records[1].ops_delta == {"CheckNumerics": -1, "Identity": -2}  # w/read and relu/Identity
    np.testing.assert_allclose(_outputs(result.model, feeds)["y"], _outputs(conv_model, feeds)["y"], rtol=1e-6)


def test_fold_constants_and_strip_unused_nodes(host, conv_model):
    feeds = random_inputs(conv_model.signature)
    result = _run(conv_model, "strip_unused_nodes fold_constants(ignore_errors=true)", host)
    names = {n.name for n in result.model.graph_def.node}
    assert "unused/sum" not in names
    assert {"k/two", "k/three"}.isdisjoint(names)  # 2 * 3 + 1 is one Const now
    assert result.records[0].nodes_before - result.records[0].nodes_after >= 2
    np.testing.assert_allclose(_outputs(result.model, feeds)["y"], _outputs(conv_model, feeds)["y"], rtol=1e-5)


def test_fold_old_batch_norms_folds_fused_batch_norm_v1_after_conv2d(host, conv_model):
    feeds = random_inputs(conv_model.signature)
    # remove_nodes first: GTT's pattern needs the weights Const directly on the Conv2D.
    result = _run(conv_model, "remove_nodes(op=Identity, op=CheckNumerics) fold_old_batch_norms", host)
    assert "FusedBatchNorm" in _ops(conv_model)
    assert "FusedBatchNorm" not in _ops(result.model)
    assert result.records[1].ops_delta.get("FusedBatchNorm") == -1
    np.testing.assert_allclose(_outputs(result.model, feeds)["y"], _outputs(conv_model, feeds)["y"],
                               rtol=1e-4, atol=1e-4)


def test_merge_duplicate_nodes(host, conv_model):
    feeds = random_inputs(conv_model.signature)
    result = _run(conv_model, "merge_duplicate_nodes", host)
    names = {n.name for n in result.model.graph_def.node}
    assert len({"dup_a", "dup_b"} & names) == 1 and len({"add_a", "add_b"} & names) == 1
    np.testing.assert_allclose(_outputs(result.model, feeds)["y"], _outputs(conv_model, feeds)["y"], rtol=1e-6)


def test_strip_unused_nodes_keeps_a_uint8_input_that_is_not_a_placeholder(host):
    """GTT turns non-Placeholder inputs into float scalars unless told otherwise (tensorflow#5913)."""
    import tensorflow as tf

    def build(raw):
        image = tf.identity(raw, name="image")  # the signature input is this Identity, not the Placeholder
        f = tf.cast(image, tf.float32) / 255.0
        tf.reduce_max(f, name="unused")
        return {"mean": tf.reduce_mean(f, axis=[1, 2, 3], name="mean")}

    model = graph_model(build, {"raw": (tf.uint8, (None, 4, 4, 3))})
    from graphopt.model import TensorSpec

    model = model.replace(signature=model.signature.__class__(
        inputs={"image": TensorSpec("image:0", "uint8", (None, 4, 4, 3))}, outputs=model.signature.outputs))
    feeds = {"image": np.arange(2 * 48, dtype=np.uint8).reshape(2, 4, 4, 3)}
    before = _outputs(model, feeds)
    result = _run(model, "strip_unused_nodes", host)
    image = next(n for n in result.model.graph_def.node if n.name == "image")
    assert image.op == "Placeholder"
    assert tf.as_dtype(image.attr["dtype"].type) == tf.uint8
    assert tf.TensorShape(image.attr["shape"].shape).as_list() == [None, 4, 4, 3]
    assert "unused" not in {n.name for n in result.model.graph_def.node}
    np.testing.assert_allclose(_outputs(result.model, feeds)["mean"], before["mean"], rtol=1e-6)


def test_explicit_type_and_shape_win_over_the_signature(host):
    import tensorflow as tf

    model = graph_model(lambda raw: {"y": tf.identity(tf.identity(raw, name="image") * 2, name="y")},
                        {"raw": (tf.float32, (None, 3))})
    from graphopt.model import Signature, TensorSpec

    model = model.replace(signature=Signature({"image": TensorSpec("image:0", "float32", (None, 3))},
                                              model.signature.outputs))
    result = _run(model, 'strip_unused_nodes(type=float, shape="2,3")', host)
    image = next(n for n in result.model.graph_def.node if n.name == "image")
    assert tf.TensorShape(image.attr["shape"].shape).as_list() == [2, 3]


# --- TF2 graphs: the function library and the signature survive -------------------------------------


def test_native_transforms_keep_the_function_library_and_signature_nodes(host):
    model = tf2_function_model()
    assert len(model.graph_def.library.function) >= 2  # the While loop's cond and body
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)}
    before = _outputs(model, feeds)
    text = ("remove_attribute(attribute_name=_class) set_device(device=/device:CPU:0) remove_device "
            "strip_unused_nodes fold_constants(ignore_errors=true) sort_by_execution_order merge_duplicate_nodes "
            "obfuscate_names")
    result = _run(model, text, host)
    assert all(r.status in ("applied", "unchanged") for r in result.records), [r.error for r in result.records]
    assert result.model.graph_def.library == model.graph_def.library
    assert result.model.graph_def.versions == model.graph_def.versions
    names = {n.name for n in result.model.graph_def.node}
    assert model.protected_nodes <= names
    np.testing.assert_allclose(_outputs(result.model, feeds)["y"], before["y"], rtol=1e-5)


def test_a_failing_native_transform_is_a_pass_error_naming_it(host, conv_model):
    # rename_node to a name already in use: GTT refuses, graphopt names the pass and where it came from.
    with pytest.raises(PassError) as info:
        _run(conv_model, "rename_node(old_node_name=pool, new_node_name=relu)", host)
    assert "rename_node" in info.value.message and "native" in info.value.where


def test_the_graph_check_catches_gtt_breaking_colocation(host, conv_model):
    # obfuscate_names leaves `_class: loc:@conv/w` pointing at a node it renamed: TF cannot import that.
    with pytest.raises(PassError, match="colocated with unknown node") as info:
        _run(conv_model, "obfuscate_names", host)
    assert "remove_attribute(attribute_name=_class) before this pass" in info.value.hint  # what to do about it
    result = _run(conv_model, "obfuscate_names", host, keep_going=True)
    assert [r.status for r in result.records] == ["rolled_back"]
    # The hint's advice works: with colocation stripped first, the same transform gives an importable graph.
    fixed = _run(conv_model, "remove_attribute(attribute_name=_class) obfuscate_names", host)
    assert all(r.status in ("applied", "unchanged") for r in fixed.records)
    result = _run(conv_model, "obfuscate_names", host, keep_going=True)
    assert [r.status for r in result.records] == ["rolled_back"]
    assert result.model.graph_def is conv_model.graph_def


def test_native_pass_classes_are_native_transforms(host):
    for name in NATIVE_TRANSFORMS:
        info = host.registry.passes[name]
        assert issubclass(info.cls, NativeTransform) and info.origin.kind == "native"
        assert info.cls.description


def test_node_order_alone_is_not_a_change_so_repeat_groups_converge(host, conv_model):
    # GTT's fold_constants re-emits nodes in another order even when it folds nothing more.
    result = _run(conv_model, "{ fold_constants }*5", host)
    assert [r.status for r in result.records] == ["applied", "unchanged"]


def test_sort_by_execution_order_changes_only_an_unsorted_graph(host, conv_model):
    shuffled = conv_model.copy()
    nodes = list(shuffled.graph_def.node)[::-1]
    del shuffled.graph_def.node[:]
    shuffled.graph_def.node.extend(nodes)
    result = _run(shuffled, "{ sort_by_execution_order }*5", host)
    assert [r.status for r in result.records] == ["applied", "unchanged"]
    seen = set()
    for node in result.model.graph_def.node:
        assert all(i.lstrip("^").split(":")[0] in seen for i in node.input)
        seen.add(node.name)
    assert [r.status for r in _run(conv_model, "sort_by_execution_order", host).records] == ["unchanged"]


def test_table_initialisers_survive_as_init_ops(host):
    """Init ops are passed to GTT as outputs, so strip_unused_nodes and fold_constants keep them."""
    import tensorflow as tf

    init_ops = []

    def build(words):
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(["a", "b", "c"]), tf.constant([1, 2, 3], tf.int64)), -1)
        init_ops.append(tf.compat.v1.tables_initializer(name="init_all_tables").name)
        return {"ids": tf.identity(table.lookup(words) * 2, name="ids")}

    model = graph_model(build, {"words": (tf.string, (None,))}, init_ops=init_ops)
    model.init_ops.extend(init_ops)
    feeds = {"words": np.array([b"a", b"c", b"zz"], dtype=object)}
    before = _outputs(model, feeds)
    result = _run(model, "strip_unused_nodes fold_constants(ignore_errors=true) remove_nodes(op=Identity) "
                         "merge_duplicate_nodes", host)
    assert all(r.status in ("applied", "unchanged") for r in result.records), [r.error for r in result.records]
    assert "init_all_tables" in {n.name for n in result.model.graph_def.node}
    np.testing.assert_array_equal(_outputs(result.model, feeds)["ids"], before["ids"])
    np.testing.assert_array_equal(before["ids"], [2, 6, -2])


def test_strip_unused_nodes_with_an_input_of_unknown_rank(host):
    import tensorflow as tf

    from graphopt.model import Signature, TensorSpec

    model = graph_model(lambda raw: {"y": tf.identity(tf.identity(raw, name="image") + 1, name="y")},
                        {"raw": (tf.int32, None)})
    model = model.replace(signature=Signature({"image": TensorSpec("image:0", "int32", None)},
                                              model.signature.outputs))
    result = _run(model, "strip_unused_nodes", host)
    image = next(n for n in result.model.graph_def.node if n.name == "image")
    assert image.op == "Placeholder" and image.attr["shape"].shape.unknown_rank
    feeds = {"image": np.arange(6, dtype=np.int32).reshape(2, 3)}
    np.testing.assert_array_equal(_outputs(result.model, feeds)["y"], feeds["image"] + 1)


@pytest.mark.parametrize("text, check", [
    # Each option GTT reads under this name changes the result (an ignored name would not).
    ("fold_constants(exclude_node=k/seven)", lambda ops: ops.get("k/seven") == "AddV2"),
    ("fold_constants(max_constant_size_in_bytes=1)", lambda ops: ops.get("k/seven") == "AddV2"),
    ("fold_constants", lambda ops: "k/seven" not in ops),
    ("quantize_nodes(ignore_op=Conv2D)", lambda ops: "QuantizedConv2D" not in ops.values()),
    ("quantize_nodes", lambda ops: "QuantizedConv2D" in ops.values()),
    ("sparsify_gather(group_init_node=tables_init)", lambda ops: ops.get("tables_init") == "NoOp"),
])
def test_renamed_options_are_the_ones_gtt_reads(host, conv_model, text, check):
    result = _run(conv_model, text, host)
    assert check({n.name: n.op for n in result.model.graph_def.node})
