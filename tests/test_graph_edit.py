"""graph_edit: the GraphDef editing helpers passes share."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.graph.edit import GraphEditor, consumers_map
from graphopt.graph.names import join_tensor, split_tensor


def _graph():
    """x -> mul(x, scale) -> out; scale = Rsqrt(Identity(var) + eps) computed from consts; colocation on w/read."""
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [2, 3], name="x")
        var = tf.constant(np.array([1.0, 4.0, 16.0], np.float32), name="var")
        with v1.colocate_with(var):
            read = tf.identity(var, name="var/read")
        scale = tf.math.rsqrt(tf.reshape(read, [1, 3]) + 0.0, name="scale")
        mul = tf.multiply(x, scale, name="mul")
        guard = tf.no_op(name="guard")
        two = tf.constant(2.0, name="two")
        with tf.control_dependencies([guard]):
            guarded = tf.identity(two, name="guarded")
        tf.identity(mul * guarded, name="out")
    return g.as_graph_def()


def test_split_and_join():
    assert split_tensor("a/b:1") == ("a/b", 1)
    assert split_tensor("a/b") == ("a/b", 0)
    assert split_tensor("^a") == ("a", -1)
    assert [join_tensor(*split_tensor(t)) for t in ("a", "a:2", "^a")] == ["a", "a:2", "^a"]


def test_consumers_and_constant_values():
    gd = _graph()
    assert {c.name for c, _ in consumers_map(gd)["var/read"]} == {"Reshape"}
    ed = GraphEditor(gd)
    np.testing.assert_allclose(ed.const_value("scale"), [[1.0, 0.5, 0.25]])
    assert ed.const_value("mul") is None  # depends on the placeholder
    assert ed.const_value("guarded") is None  # a control input may guard it
    assert ed.const_root("var/read").name == "var"
    assert [c.name for c, _ in ed.data_consumers("scale")] == ["mul"]
    assert [c.name for c in ed.control_consumers("guard")] == ["guarded"]


def test_rewire_prune_commit_and_colocation():
    import tensorflow as tf

    gd = _graph()
    ed = GraphEditor(gd, protected={"x", "out"})
    new = ed.add_const("scale", np.array([[2.0, 2.0, 2.0]], np.float32))
    assert new == "scale_1"
    assert ed.rewire("scale", new) == 1
    # scale, add, add/y, Reshape, Reshape/shape, var/read, var
    assert ed.prune_dead(["scale"]) == 7
    ed.commit()
    names = {n.name for n in gd.node}
    assert "var/read" not in names and "var" not in names and "x" in names
    assert all("_class" not in n.attr for n in gd.node)  # loc:@var dropped with var
    g = tf.Graph()
    with g.as_default():
        tf.graph_util.import_graph_def(gd, name="")
    with tf.compat.v1.Session(graph=g) as sess:
        out = sess.run("out:0", {"x:0": np.ones((2, 3), np.float32)})
    np.testing.assert_allclose(out, np.full((2, 3), 4.0))


def test_control_edges_to_constants_do_not_keep_them_alive():
    gd = _graph()
    ed = GraphEditor(gd)
    waiter = ed.add_node("waiter", "NoOp", ["^var/read"])
    ed.rewire("scale", "x")  # mul now reads x twice; scale and its inputs are dead
    ed.prune_dead(["scale"])
    assert ed.node("var/read") is None and list(waiter.input) == []


def test_rewire_control_and_dangling_commit_fails():
    gd = _graph()
    ed = GraphEditor(gd)
    ed.rewire_control("guard", ["two"])
    assert list(ed.node("guarded").input) == ["two"]  # reading "two" already orders it after "two"
    ed.remove(["mul"])
    with pytest.raises(ValueError, match="still reads removed 'mul'"):
        ed.commit()
