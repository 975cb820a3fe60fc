"""Stand-ins: whole-graph native tools run without the weights they never read, and give the same graph."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.graph import weightless as stand_ins
from graphopt.passes.pipeline import Pipeline
from graphopt.plugins import Host
from graphopt.runtime.session import random_inputs, run_model
from tests.models import graph_model


@pytest.fixture(scope="module")
def model():
    import tensorflow as tf

    rng = np.random.default_rng(0)

    def const(shape, name):
        return tf.constant(rng.standard_normal(shape).astype(np.float32), name=name)

    def build(x):
        kernel = const((3, 3, 8, 64), "kernel")                    # 18 KB, read only by Conv2D: a stand-in
        twin = tf.constant(kernel.op.get_attr("value"), name="twin")  # same value: merges with kernel
        h = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, kernel, 1, "SAME"), const((64,), "bias")))  # small: kept
        h2 = tf.nn.conv2d(x, twin, 1, "SAME", name="conv_twin")
        scaled = tf.identity(const((64, 64), "dense") * 2.0, name="scaled")  # folded: its value is read
        pooled = tf.reduce_mean(h + h2, axis=[1, 2])
        return {"y": tf.matmul(pooled, scaled, name="y")}

    return graph_model(build, {"x": (tf.float32, (None, 6, 6, 8))})


def test_only_weights_no_tool_reads_become_stand_ins(model):
    light, weights = stand_ins.strip(model.graph_def, model.protected_nodes)
    ops = {n.name: n for n in light.node}
    assert {n for n, node in ops.items() if stand_ins.ATTR in node.attr} == {"kernel", "twin"}
    assert ops["kernel"].op == "Placeholder" and ops["dense"].op == "Const" and ops["bias"].op == "Const"
    assert ops["kernel"].attr[stand_ins.ATTR] == ops["twin"].attr[stand_ins.ATTR]  # equal values, one digest
    assert len(weights) == 1 and light.ByteSize() < model.graph_def.ByteSize() / 2
    restored = stand_ins.restore(light, weights)
    assert {n.name: n for n in restored.node} == {n.name: n for n in model.graph_def.node}


@pytest.mark.parametrize("spec", ["fold_constants", "merge_duplicate_nodes", "strip_unused_nodes",
                                  "grappler_optimize"])
def test_a_tool_gives_the_same_graph_with_stand_ins(model, spec, monkeypatch):
    host = Host.create(plugins=False)
    with_stand_ins = Pipeline.parse(spec, host=host).run(model).model.graph_def
    monkeypatch.setattr(stand_ins, "swappable", lambda graph_def, protected=(), any_reader=False: [])
    plain = Pipeline.parse(spec, host=host).run(model).model.graph_def
    assert not [n.name for n in with_stand_ins.node if stand_ins.ATTR in n.attr or
                (n.op == "Placeholder" and n.name != "x")]
    # Grappler's shape annotations number unknown dims differently; nothing else may differ.
    for graph in (with_stand_ins, plain):
        for node in graph.node:
            node.attr.pop("_input_shapes", None)
    assert {n.name: n for n in with_stand_ins.node} == {n.name: n for n in plain.node}
    if spec == "merge_duplicate_nodes":
        assert "twin" not in {n.name for n in with_stand_ins.node}  # the equal kernels did merge
    feeds = random_inputs(model.signature, batch=2)
    np.testing.assert_allclose(run_model(model, feeds)["y"],
                               run_model(model.with_graph(with_stand_ins), feeds)["y"], rtol=1e-4, atol=1e-4)


def test_an_unknown_stand_in_is_an_error(model):
    light, _ = stand_ins.strip(model.graph_def, model.protected_nodes)
    with pytest.raises(ValueError, match="has no weight"):
        stand_ins.restore(light, stand_ins.Weights({"other": model.graph_def.node[0]}))


def test_a_session_feeding_its_weights_gives_the_same_outputs(model):
    from graphopt.runtime.session import Session
    from graphopt.verify.compare import verification_config

    feeds = random_inputs(model.signature, batch=3)
    with Session(model, config=verification_config(), feed_weights=True) as sess:
        fed = sess.run(feeds)
        ops = {op.name: op.type for op in sess.graph.get_operations()}
    assert ops["kernel"] == "Placeholder" and ops["dense"] == "Placeholder" and ops["bias"] == "Const"
    # Nothing rewrites the graph under verification's config: the same kernels run, bit for bit.
    np.testing.assert_array_equal(fed["y"], run_model(model, feeds, config=verification_config())["y"])
