"""strip_debug_ops: removes pass-through and assert ops, keeps every node whose removal would change behaviour."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from graphopt.passes.debug_ops import StripDebugOps, control_flow_context
from graphopt.runtime.session import run_model
from tests.models import graph_model

RNG = np.random.default_rng(1)


def ops(model) -> Counter:
    return Counter(n.op for n in model.graph_def.node)


def names(model) -> dict[str, str]:
    return {n.name: n.op for n in model.graph_def.node}


def strip(model, feeds=None, **options):
    """Run the pass, check the graph imports and outputs agree, return the result."""
    result = StripDebugOps(**options).run(model)
    feeds = feeds or {k: RNG.random([d or 2 for d in s.shape]).astype(np.float32)
                      for k, s in model.signature.inputs.items()}
    before, after = run_model(model, feeds), run_model(result.model, feeds)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])
    return result


@pytest.fixture(scope="module")
def v1_control_flow():
    """Build TF1 control flow (Enter/Exit/Switch/Merge), not functional While/If."""
    from tensorflow.python.ops import control_flow_util

    saved = control_flow_util.ENABLE_CONTROL_FLOW_V2
    control_flow_util.ENABLE_CONTROL_FLOW_V2 = False
    try:
        yield
    finally:
        control_flow_util.ENABLE_CONTROL_FLOW_V2 = saved


def test_identity_chain_check_numerics_and_friends_go():
    import tensorflow as tf

    def build(x):
        w = tf.identity(tf.constant(RNG.normal(size=(4, 3)).astype(np.float32)), name="w/read")
        h = tf.identity(tf.identity(x, name="id1"), name="id2")
        h = tf.debugging.check_numerics(tf.matmul(h, w), "bad", name="check")
        h = tf.stop_gradient(h, name="stop")
        h = tf.raw_ops.PreventGradient(input=h, name="prevent")
        h = tf.raw_ops.Snapshot(input=h, name="snap")
        h = tf.compat.v1.Print(h, [h], "value", name="print")
        a, b = tf.raw_ops.IdentityN(input=[h, h * 2.0], name="idn")
        return {"y": tf.nn.relu(a + b, name="y")}

    model = graph_model(build, {"x": ("float32", [2, 4])})
    result = strip(model)
    left = ops(result.model)
    for op in ("Identity", "IdentityN", "CheckNumerics", "StopGradient", "PreventGradient", "Snapshot", "Print"):
        assert left[op] == 0, op
    assert result.counters["removed_Identity"] == 3 and result.counters["removed_CheckNumerics"] == 1
    assert result.counters["removed_IdentityN"] == 1 and result.counters["skipped"] == 0


def test_op_option_limits_what_goes():
    import tensorflow as tf

    def build(x):
        return {"y": tf.nn.relu(tf.debugging.check_numerics(tf.identity(x, name="id"), "bad", name="check"))}

    result = strip(graph_model(build, {"x": ("float32", [2, 4])}), op=["CheckNumerics"])
    assert names(result.model)["id"] == "Identity" and "check" not in names(result.model)
    assert result.counters == {"removed_CheckNumerics": 1, "removed": 1, "skipped": 0, "pruned": 0,
                               "control_edges_dropped": 0}


def test_signature_output_identity_and_control_anchor_stay():
    import tensorflow as tf

    def build(x):
        h = tf.identity(x * 2.0, name="anchor")
        with tf.control_dependencies([h]):  # ^anchor: must be rewired to anchor's producer
            z = tf.add(x, 1.0, name="z")
        with tf.control_dependencies([tf.random.uniform([], name="side")]):  # a stateful op: may matter
            guarded = tf.identity(z, name="guarded")
        with tf.control_dependencies([tf.no_op(name="nothing")]):  # waits for nothing: dropped, then bypassed
            free = tf.identity(guarded, name="free")
        return {"out": tf.identity(free + h, name="out")}

    model = graph_model(build, {"x": ("float32", [2, 3])})
    result = strip(model)
    after = {n.name: n for n in result.model.graph_def.node}
    assert after["out"].op == "Identity"  # signature output
    assert "guarded" in after  # has a control input that may matter
    assert "free" not in after and "nothing" not in after and result.counters["control_edges_dropped"] == 1
    assert "anchor" not in after and list(after["z/y"].input) == ["^mul"]  # its control consumer waits on its producer
    assert any("control inputs" in n for n in result.notes)


def test_assert_with_control_deps_is_dropped_and_freed_identity_goes():
    import tensorflow as tf

    def build(x):
        check = tf.raw_ops.Assert(condition=tf.reduce_all(x > -1.0), data=[x], name="positive")
        with tf.control_dependencies([check]):
            y = tf.identity(x, name="checked")
        return {"y": tf.nn.relu(y, name="y")}

    model = graph_model(build, {"x": ("float32", [2, 3])})
    assert ops(model)["Assert"] == 1
    result = strip(model)
    after = names(result.model)
    assert "Assert" not in after.values() and "checked" not in after
    assert "All" not in after.values() and "Greater" not in after.values()  # the assert's condition was pruned
    assert result.counters["removed_Assert"] == 1 and result.counters["removed_Identity"] == 1
    # only Assert removal asked for: the Identity loses its control input but stays
    result = strip(model, op=["Assert"])
    assert names(result.model)["checked"] == "Identity" and list(
        {n.name: n for n in result.model.graph_def.node}["checked"].input) == ["x"]


def test_while_loop_v1_identities_stay(v1_control_flow):
    import tensorflow as tf

    def build(x):
        def body(i, v):
            v = tf.identity(v * 0.5, name="in_loop")
            return i + 1, tf.debugging.check_numerics(v, "loop")

        _, v = tf.compat.v1.while_loop(lambda i, v: i < 3, body, [tf.constant(0), tf.identity(x, name="before")])
        v = tf.identity(v, name="after_loop")
        v = tf.compat.v1.cond(tf.reduce_sum(v) > 0, lambda: tf.identity(v * 2.0), lambda: v - 1.0)
        return {"y": tf.identity(v, name="after") + 1.0}

    model = graph_model(build, {"x": ("float32", [2, 3])})
    assert {"Enter", "Exit", "Switch", "Merge", "NextIteration"} <= set(ops(model))
    frames = control_flow_context(model.graph_def)
    in_loop = [n for n in names(model) if n.endswith("in_loop")]
    assert in_loop and set(in_loop) <= frames
    result = strip(model)
    after = names(result.model)
    assert set(in_loop) <= set(after)
    assert not {"before", "after_loop", "after"} & set(after)  # outside any frame: removed
    kept_identities = [n for n, op in after.items() if op == "Identity"]
    assert kept_identities and set(kept_identities) <= frames
    assert any("control-flow frame" in n for n in result.notes)


def test_ref_variable_read_stays():
    """A TF1 ref variable's Identity is the read; bypassing it would hand consumers the ref."""
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [2], name="x")
        var = v1.Variable([1.0, 2.0], name="var", use_resource=False)
        y = tf.add(x, tf.identity(var, name="read"), name="y")
        init = var.initializer
    from graphopt.model import Model, Signature, TensorSpec

    model = Model(g.as_graph_def(), Signature({"x": TensorSpec("x:0", "float32", (2,))},
                                              {"y": TensorSpec(y.name, "float32", (2,))}), init_ops=[init.name])
    result = strip(model, feeds={"x": np.ones(2, np.float32)})
    assert names(result.model)["var/read"] == "Identity" and "read" not in names(result.model)
    assert any("reference" in n for n in result.notes)


def test_keras_tf2_frozen_graph():
    """Frozen TF2 graphs read every weight through an Identity that a NoOp waits on."""
    import keras

    from tests.models import frozen_keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="swish")(inp)  # swish -> IdentityN (custom gradient)
    x = keras.layers.BatchNormalization()(x)
    model = frozen_keras(keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(x))))
    assert ops(model)["Identity"] > 3
    result = strip(model)
    left = ops(result.model)
    assert left["Identity"] == 1  # the signature output
    assert result.counters["removed_Identity"] > 3 and result.counters["removed_IdentityN"] == 1
    assert result.notes == ["kept 1 Identity: signature node or init op"]
    # the NoOp that waited on every weight read orders nothing once they are constants: gone
    assert left["NoOp"] == 0 and result.counters["control_edges_dropped"] > 3


def test_seed_style_graph_with_colocation_and_loop():
    """The TF1 graph GTT's remove_nodes breaks (``_class: loc:@w1/read`` left dangling) stays importable."""
    from graphopt.graph.checks import check_graph
    from tests.models import tf1_seed_graph

    model, facts = tf1_seed_graph()
    result = strip(model)
    check_graph(result.model)
    after = names(result.model)
    assert not set(facts["identity_reads"] + facts["check_numerics"]) & set(after)
    assert all(not v.startswith(b"loc:@w1/read") for n in result.model.graph_def.node if "_class" in n.attr
               for v in n.attr["_class"].list.s)
    assert {"Enter", "Exit", "NextIteration"} <= set(after.values())


def test_in_a_pipeline_by_name():
    """Both passes by name in a GTT-style transform string, with counters in the pass records."""
    import tensorflow as tf

    from graphopt.passes.pipeline import Pipeline

    def build(x):
        h = tf.nn.conv2d(x, tf.identity(tf.constant(RNG.normal(size=(3, 3, 3, 4)).astype(np.float32))), 1, "SAME")
        p = {k: tf.constant(RNG.uniform(0.5, 1.5, 4).astype(np.float32)) for k in ("scale", "offset", "mean", "variance")}
        h = tf.raw_ops.FusedBatchNorm(x=h, **p, epsilon=1e-3, is_training=False)[0]
        return {"y": tf.nn.relu(tf.debugging.check_numerics(h, "bad"))}

    model = graph_model(build, {"x": ("float32", [1, 6, 6, 3])})
    run = Pipeline.parse("fold_all_batch_norms strip_debug_ops(op=CheckNumerics, op=Identity)").run(model)
    records = {r.name: r for r in run.records}
    assert records["fold_all_batch_norms"].counters["folded"] == 1
    assert records["strip_debug_ops"].counters["removed_CheckNumerics"] == 1
    assert set(ops(run.model)) == {"Placeholder", "Const", "Conv2D", "BiasAdd", "Relu"}
    feeds = {"x": RNG.random((1, 6, 6, 3)).astype(np.float32)}
    np.testing.assert_allclose(run_model(run.model, feeds)["y"], run_model(model, feeds)["y"], rtol=1e-5, atol=1e-5)
