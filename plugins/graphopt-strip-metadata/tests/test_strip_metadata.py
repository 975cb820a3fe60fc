"""strip_metadata removes metadata attributes and devices (function bodies too); outputs do not change."""

from __future__ import annotations

import graphopt_strip_metadata
import numpy as np
import pytest

from graphopt.errors import UsageError
from graphopt.passes.pipeline import Pipeline
from graphopt.plugins import Host
from graphopt.runtime.session import run_model


@pytest.fixture(scope="module")
def host():
    return Host.create(plugins=True, allow=["strip_metadata"], extra=[("strip_metadata", graphopt_strip_metadata)])


def _model():
    import tensorflow as tf

    from graphopt.model import Model, Signature, TensorSpec

    g = tf.Graph()
    with g.as_default(), g.device("/device:CPU:0"):
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        w = tf.constant(np.arange(9, dtype=np.float32).reshape(3, 3), name="w")
        with tf.compat.v1.colocate_with(w):
            w_read = tf.identity(w, name="w/read")
        a = tf.add(tf.matmul(x, w_read), tf.constant([1.0, 2.0, 3.0], name="b1"), name="a")
        with g.device(None):
            b = tf.add(a, tf.constant([1.0, 2.0, 3.0], name="b2"), name="b")
        tf.nn.relu(b, name="y")
    gd = g.as_graph_def(add_shapes=True)  # _output_shapes on every node, as old exporters wrote
    for node in gd.node:
        if node.op == "MatMul":
            node.attr["_XlaCompile"].b = True
            node.attr["_XlaScope"].s = b"cluster_0"
    sig = Signature({"x": TensorSpec("x:0", "float32", (None, 3))}, {"y": TensorSpec("y:0", "float32", (None, 3))})
    return Model(gd, sig)


def _attrs(model):
    return {a for n in model.graph_def.node for a in n.attr if a.startswith("_")}


def test_strip_metadata_removes_attributes_and_devices_and_keeps_outputs(host):
    model = _model()
    assert _attrs(model) >= {"_class", "_output_shapes", "_XlaCompile", "_XlaScope"}
    assert any(n.device for n in model.graph_def.node)
    result = Pipeline.parse("strip_metadata", host=host).run(model)
    (rec,) = result.records
    assert rec.origin.startswith("strip_metadata") or "graphopt-strip-metadata" in rec.origin
    assert _attrs(result.model) == set()
    assert not any(n.device for n in result.model.graph_def.node)
    assert rec.counters["bytes_saved"] == model.size_bytes - result.model.size_bytes > 0
    assert rec.counters["attrs_removed"] >= len(model.graph_def.node)  # every node had _output_shapes
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)}
    np.testing.assert_array_equal(run_model(result.model, feeds)["y"], run_model(model, feeds)["y"])


def test_options_keep_filter_and_devices(host):
    model = _model()
    result = Pipeline.parse("strip_metadata(keep=_output_shapes, op=MatMul, devices=false)", host=host).run(model)
    matmul = next(n for n in result.model.graph_def.node if n.op == "MatMul")
    assert "_XlaCompile" not in matmul.attr and "_output_shapes" in matmul.attr and matmul.device
    ident = next(n for n in result.model.graph_def.node if n.name == "w/read")
    assert "_class" in ident.attr  # not a MatMul: untouched
    with pytest.raises(UsageError, match="did you mean 'devices'"):
        Pipeline.parse("strip_metadata(device=false)", host=host)


def test_the_preset_merges_what_only_metadata_kept_apart(host):
    model = _model()
    # b1 and b2 are equal constants that differ only by device: merge_duplicate_nodes alone keeps both.
    alone = Pipeline.parse("merge_duplicate_nodes", host=host).run(model).model
    assert {"b1", "b2"} <= {n.name for n in alone.graph_def.node}
    merged = Pipeline.parse("strip-and-merge", host=host).run(model)
    names = {n.name for n in merged.model.graph_def.node}
    assert len({"b1", "b2"} & names) == 1
    feeds = {"x": np.ones((1, 3), np.float32)}
    np.testing.assert_array_equal(run_model(merged.model, feeds)["y"], run_model(model, feeds)["y"])


def test_function_bodies_are_stripped_too(host):
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from graphopt.model import Model, Signature, TensorSpec

    @tf.function
    def f(x):
        return tf.while_loop(lambda i, v: i < 2, lambda i, v: (i + 1, v * 2.0), [0, x])[1]

    frozen = convert_variables_to_constants_v2(f.get_concrete_function(tf.TensorSpec([2], tf.float32)),
                                               lower_control_flow=False)
    gd = frozen.graph.as_graph_def()
    for fn in gd.library.function:
        for node in fn.node_def:
            node.device = "/job:worker/device:CPU:0"
    model = Model(gd, Signature({"x": TensorSpec(frozen.inputs[0].name, "float32", (2,))},
                                {"y": TensorSpec(frozen.outputs[0].name, "float32", (2,))}))
    result = Pipeline.parse("strip_metadata", host=host).run(model)
    assert not any(n.device for fn in result.model.graph_def.library.function for n in fn.node_def)
    assert result.records[0].counters["devices_cleared"] > 0
    x = np.array([1.0, 2.0], np.float32)
    np.testing.assert_array_equal(run_model(result.model, {"x": x})["y"], x * 4)
