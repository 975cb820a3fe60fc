"""The pattern-rewrite API (graphopt.rewrite) and the graph-editing helpers it is built on (graphopt.graph.edit).

Every rule here is a small complete one; each test builds a graph, runs the rule, checks the structure
(or the reason it did not fire) and runs both graphs to show the outputs agree.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from graphopt.graph.edit import GraphEditor, constant_value, prune_functions
from graphopt.passes.pipeline import Pipeline
from graphopt.rewrite import Const, Match, Refuse, Rule, RulePass, Status, apply_rules, rule_pass
from graphopt.runtime.session import run_model
from tests.models import graph_model

RNG = np.random.default_rng(3)


def ops(model) -> Counter:
    return Counter(n.op for n in model.graph_def.node)


def nodes(model) -> dict:
    return {n.name: n for n in model.graph_def.node}


def run(model, *rules, same=True, **kwargs):
    """Run ``rules`` as a pass; check the outputs agree; return the PassResult."""
    result = rule_pass("test_rules", list(rules), **kwargs)().run(model)
    feeds = {k: RNG.random([d or 2 for d in s.shape]).astype(np.float32) for k, s in model.signature.inputs.items()}
    before, after = run_model(model, feeds), run_model(result.model, feeds)
    for key in before:
        np.testing.assert_allclose(after[key], before[key], rtol=1e-6, atol=1e-6)
    return result


def why(result, node):
    return [e.reason for e in result.explanations if e.node == node and not e.fired]


# --- rules used below -------------------------------------------------------------------------------------------


class MulByOne(Rule):
    fired_verb, kept_verb = "removed", "kept"
    commutative = True

    def pattern(self, op, x):
        return op.Mul(x, Const("one"), _commutative=self.commutative)

    def condition(self, m):
        one = m.values["one"]
        return None if one.ndim == 0 and one == 1 else f"multiplies by {one}, not a scalar 1"

    def rewrite(self, r, m):
        return m["x"]


class MulByOneInOrder(MulByOne):
    commutative = False


class FoldAddConstants(Rule):
    """(x + c1) + c2 -> x + (c1 + c2), for scalars."""

    exclusive = True

    def pattern(self, op, x):
        inner = op.AddV2(x, Const("c1"), _name="inner", _commutative=True, _exclusive=self.exclusive)
        return op.AddV2(inner, Const("c2"), _commutative=True)

    def condition(self, m):
        return None if m.values["c1"].ndim == 0 and m.values["c2"].ndim == 0 else "not scalars"

    def rewrite(self, r, m):
        return r.AddV2(m["x"], r.const(m.values["c1"] + m.values["c2"]), T=m.attr(m.root, "T"))


class FoldAddConstantsShared(FoldAddConstants):
    name = "fold_add_constants_shared"
    exclusive = False


class IdentityPool(Rule):
    """A 1x1 pooling with stride 1 is its input."""

    fired_verb, kept_verb = "removed", "kept"

    def pattern(self, op, x):
        return op["MaxPool", "AvgPool"](x, ksize=[1, 1, 1, 1], strides=[1, 1, 1, 1], padding=("VALID", "SAME"),
                                        data_format=lambda f: f == "NHWC")

    def rewrite(self, r, m):
        return m["x"]


class PackOfUnpack(Rule):
    """Pack(Unpack(x)) along the same axis, outputs in order, is x: one multi-output node bound once."""

    def pattern(self, op, x):
        a, b = op.Unpack(x, _name="unpack", _outputs=2, num=2)
        return op.Pack(a, b)

    def condition(self, m):
        return None if m.attr("unpack", "axis") == m.attr(m.root, "axis") else "packs along another axis"

    def rewrite(self, r, m):
        return m["x"]


class UnpackToGather(Rule):
    """Unpack(x, num=2, axis=0) -> two GatherV2: a root with two outputs, replaced together."""

    def pattern(self, op, x):
        return op.Unpack(x, _outputs=2, num=2, axis=0)

    def rewrite(self, r, m):
        import tensorflow as tf

        axis = r.const(np.int32(0))
        return tuple(r.GatherV2(m["x"], r.const(np.int32(i)), axis, Tparams=m.attr(m.root, "T"), Tindices=tf.int32,
                                Taxis=tf.int32, batch_dims=0) for i in range(2))


# --- matching ---------------------------------------------------------------------------------------------------


def test_op_alternatives_and_attribute_values_tuples_predicates():
    import tensorflow as tf

    def build(x):
        a = tf.nn.max_pool2d(x, 1, 1, "VALID", name="max1")
        b = tf.nn.avg_pool2d(a, 1, 1, "SAME", name="avg1")
        c = tf.nn.max_pool2d(b, 2, 2, "VALID", name="max2")  # a real pooling: kept
        return {"y": tf.identity(c, name="y")}

    result = run(graph_model(build, {"x": ("float32", [1, 4, 4, 2])}), IdentityPool())
    assert ops(result.model)["MaxPool"] == 1 and ops(result.model)["AvgPool"] == 0
    assert result.counters["identity_pool"] == 2 and result.counters["kept"] == 1
    assert why(result, "max2") == ["has ksize=[1, 2, 2, 1], not [1, 1, 1, 1]"]


def test_constants_through_identity_and_commutative_inputs():
    import tensorflow as tf

    def build(x):
        one = tf.identity(tf.identity(tf.constant(1.0), name="one_read"), name="one_read2")
        a = tf.multiply(x, one, name="a")
        b = tf.multiply(tf.constant(1.0), a, name="b")  # constant first
        c = tf.multiply(b, tf.constant(2.0), name="c")  # not 1: the condition says so
        return {"y": tf.identity(c, name="y")}

    model = graph_model(build, {"x": ("float32", [2, 3])})
    result = run(model, MulByOne())
    left = nodes(result.model)
    assert "a" not in left and "b" not in left and left["c"].input[0] == "x"
    assert why(result, "c") == ["multiplies by 2.0, not a scalar 1"]
    assert "one_read" not in left  # the constant's Identity chain went with the Mul (nothing else read it)
    in_order = run(model, MulByOneInOrder())
    assert "a" not in nodes(in_order.model) and "b" in nodes(in_order.model)
    assert why(in_order, "b") == ["input 1 is not a constant"]


def test_multi_output_inner_node_bound_once():
    import tensorflow as tf

    def build(x):
        a, b = tf.unstack(x, num=2, axis=1, name="u1")
        same = tf.stack([a, b], axis=1, name="same")
        c, d = tf.unstack(x, num=2, axis=1, name="u2")
        swapped = tf.stack([d, c], axis=1, name="swapped")
        return {"y": tf.identity(same + swapped, name="y")}

    result = run(graph_model(build, {"x": ("float32", [3, 2, 4])}), PackOfUnpack())
    left = nodes(result.model)
    assert "same" not in left and "u1" not in left and "swapped" in left
    assert why(result, "swapped") == ["input 0 is output 1 of Unpack 'u2', not output 0"]


def test_multi_output_root_and_outputs_it_does_not_replace():
    import tensorflow as tf

    def build(x):
        a, b = tf.unstack(x, num=2, axis=0, name="split")
        return {"y": tf.identity(a * 2.0 + b, name="y")}

    result = run(graph_model(build, {"x": ("float32", [2, 3])}), UnpackToGather())
    assert ops(result.model)["Unpack"] == 0 and ops(result.model)["GatherV2"] == 2

    class FirstOnly(UnpackToGather):  # replaces output 0 only: output 1 is read, so it cannot fire
        def pattern(self, op, x):
            return op.Unpack(x, _outputs=2, num=2, axis=0)[0]

        def rewrite(self, r, m):  # pragma: no cover - never reached
            raise AssertionError

    kept = run(graph_model(build, {"x": ("float32", [2, 3])}), FirstOnly())
    assert not kept.modified and why(kept, "split") == ["output 1 is read by 'add'"]


def test_no_other_consumer_unless_the_pattern_allows_it():
    import tensorflow as tf

    def build(x):
        inner = tf.add(x, 1.0, name="inner")
        outer = tf.add(inner, 2.0, name="outer")
        return {"y": tf.identity(outer, name="y"), "z": tf.identity(inner * 3.0, name="z")}

    model = graph_model(build, {"x": ("float32", [2])})
    result = run(model, FoldAddConstants())
    assert not result.modified
    (exp,) = [e for e in result.explanations if e.node == "outer"]
    assert exp.text == "AddV2 'outer' not rewritten: its AddV2 'inner' also feeds 'mul'"
    shared = run(model, FoldAddConstantsShared())
    left = nodes(shared.model)
    assert "inner" in left and left["outer"].input[0] == "x"  # inner kept for its other reader


# --- replacement ------------------------------------------------------------------------------------------------


def test_replacement_fresh_names_device_colocation_and_control_inputs():
    import tensorflow as tf

    def build(x):
        with tf.device("/device:CPU:0"):
            inner = tf.add(x, 1.0, name="inner")
        tf.no_op(name="first")
        outer = tf.add(inner, 2.0, name="outer")
        return {"y": tf.identity(outer * 1.0, name="y")}

    model = graph_model(build, {"x": ("float32", [2])})
    for node in model.graph_def.node:
        if node.name == "outer":
            node.device = "/device:CPU:0"
            node.attr["_class"].list.s.append(b"loc:@inner")
            node.input.append("^first")  # (tf.control_dependencies would put it on the constant)
        if node.name == "mul":
            node.attr["_class"].list.s.append(b"loc:@outer")
    result = run(model, FoldAddConstants())
    left = nodes(result.model)
    outer = left["outer"]  # the new AddV2 took the root's name: readers and signatures stay
    assert outer.op == "AddV2" and outer.input[0] == "x" and "^first" in outer.input
    assert outer.device == "/device:CPU:0"
    assert "inner" not in left and "_class" not in outer.attr  # colocation with a node that went is dropped
    assert list(left["mul"].attr["_class"].list.s) == [b"loc:@outer"]
    const = left[outer.input[1]]
    assert const.op == "Const" and const.name not in nodes(model) and float(constant_value(
        result.model.graph_def, const.name)) == 3.0


def test_a_root_the_signature_names_is_never_bypassed():
    import tensorflow as tf

    def build(x):
        return {"y": tf.multiply(x, 1.0, name="y")}

    result = run(graph_model(build, {"x": ("float32", [2])}), MulByOne())
    assert not result.modified and why(result, "y") == ["is a signature node or init op"]


def test_a_refused_replacement_leaves_no_trace():
    import tensorflow as tf

    class HalfDone(MulByOne):
        def rewrite(self, r, m):
            r.Neg(m["x"], T=tf.float32)
            raise Refuse("changed its mind")

    def build(x):
        return {"y": tf.identity(tf.multiply(x, 1.0, name="m"), name="y")}

    model = graph_model(build, {"x": ("float32", [2])})
    result = run(model, HalfDone())
    assert not result.modified and result.model.graph_def == model.graph_def
    assert why(result, "m") == ["changed its mind"]
    ed = GraphEditor(model.copy().graph_def)
    attempt = HalfDone().try_at(ed, ed.node("m"))
    assert attempt.status == Status.REPLACEMENT_FAILED and not ed.removed


def test_rules_run_to_a_fixpoint():
    import tensorflow as tf

    def build(x):
        h = x
        for i in range(1, 5):
            h = tf.add(h, float(i), name=f"a{i}")
        return {"y": tf.identity(h, name="y")}

    model = graph_model(build, {"x": ("float32", [2])})
    # Outer adds first: each round folds pairs, so it takes rounds to reach x + 10.
    order = list(model.graph_def.node)
    del model.graph_def.node[:]
    model.graph_def.node.extend(reversed(order))
    ed = GraphEditor(model.copy().graph_def, model.protected_nodes)
    stats = apply_rules(ed, [FoldAddConstants()])
    assert stats.converged and stats.rounds == 3 and stats.fired["fold_add_constants"] == 3
    ed.commit()
    a4 = {n.name: n for n in ed.graph_def.node}["a4"]
    assert a4.input[0] == "x" and float(constant_value(ed.graph_def, a4.input[1])) == 10.0
    bounded = apply_rules(GraphEditor(model.copy().graph_def, model.protected_nodes), [FoldAddConstants()],
                          max_rounds=1)
    assert not bounded.converged
    result = run(model, FoldAddConstants())
    assert ops(result.model)["AddV2"] == 1


def test_a_failed_condition_returns_its_reason_and_the_match_has_the_values():
    import tensorflow as tf

    seen: list[Match] = []

    class Spy(MulByOne):
        def condition(self, m):
            seen.append(m)
            return "not today"

    def build(x):
        return {"y": tf.identity(tf.multiply(x, tf.identity(tf.constant(1.0), name="r"), name="m"), name="y")}

    result = run(graph_model(build, {"x": ("float32", [2])}), Spy())
    assert why(result, "m") == ["not today"] and result.counters == {"spy": 0, "kept": 1, "pruned": 0}
    (m,) = seen
    assert m["x"] == "x" and m["one"] == "r" and float(m.values["one"]) == 1.0 and m.root.name == "m"


# --- function bodies --------------------------------------------------------------------------------------------


def cond_model():
    """A frozen TF2 function whose tf.cond branches (If, library functions) multiply by one."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from graphopt.model import Model, Signature, TensorSpec

    @tf.function
    def f(x):
        y = tf.cond(tf.reduce_sum(x) > 0, lambda: tf.multiply(x, 1.0, name="then_mul") + 1.0,
                    lambda: tf.multiply(x, 1.0, name="else_mul") - 1.0)
        return tf.identity(y * 2.0)

    frozen = convert_variables_to_constants_v2(f.get_concrete_function(tf.TensorSpec([2, 3], tf.float32, name="x")),
                                               lower_control_flow=False)
    sig = Signature({"x": TensorSpec(frozen.inputs[0].name, "float32", (2, 3))},
                    {"y": TensorSpec(frozen.outputs[0].name, "float32", (2, 3))})
    return Model(frozen.graph.as_graph_def(), sig)


def test_rules_reach_inside_function_bodies():
    model = cond_model()
    assert sum(n.op == "Mul" for f in model.graph_def.library.function for n in f.node_def) >= 2

    class RemoveMulByOne(RulePass):
        name = "remove_mul_by_one"
        rules = (MulByOne(),)

    assert RemoveMulByOne.applies_to_functions
    result = Pipeline([RemoveMulByOne()]).run(model, explain=True)
    after = result.model.graph_def
    muls = [n.name for f in after.library.function for n in f.node_def if n.op == "Mul"]
    assert not any("then_mul" in n or "else_mul" in n for n in muls)
    fired = [e for e in result.records[0].explanations if e["fired"]]
    assert {e["node"] for e in fired} == {"cond/then_mul", "cond/else_mul"}
    assert all(e["function"] and e["function"] != "main" for e in fired)
    x = RNG.random((2, 3)).astype(np.float32)
    for feed in (x, -x):
        np.testing.assert_allclose(run_model(result.model, {"x": feed})["y"], run_model(model, {"x": feed})["y"])


# --- graph-editing helpers --------------------------------------------------------------------------------------


def test_remove_and_rewire_moves_data_and_control_readers_and_prunes():
    import tensorflow as tf

    def build(x):
        w = tf.identity(tf.constant([1.0, 2.0], name="w"), name="w_read")
        s = tf.add(x, w, name="s")
        h = tf.identity(s, name="h")
        with tf.control_dependencies([h]):
            z = tf.add(x, 1.0, name="z")
        return {"y": tf.identity(h + z, name="y")}

    model = graph_model(build, {"x": ("float32", [2])})
    ed = GraphEditor(model.copy().graph_def, model.protected_nodes)
    assert ed.remove_and_rewire("h", ["s"]) == 0
    assert [c.name for c, _ in ed.data_consumers("s")] == ["add"] and ed.control_consumers("s")[0].name == "z/y"
    assert ed.remove_with_inputs("z") == 0  # its input x stays (a signature input); y still reads z...
    with pytest.raises(ValueError, match="still reads removed 'z'"):
        ed.commit()
    ed = GraphEditor(model.copy().graph_def, model.protected_nodes)
    with pytest.raises(ValueError, match="reads output 0"):
        ed.remove_and_rewire("s", [])
    ed.rewire("s", "x")
    assert ed.remove_with_inputs("s") == 2  # s's weight and its Identity: nothing else read them
    assert {"w", "w_read"}.isdisjoint(n.name for n in ed.commit().node)


def test_constant_value_through_identity_and_static_shape():
    import tensorflow as tf

    def build(x):
        c = tf.identity(tf.identity(tf.constant(np.arange(6, dtype=np.float32).reshape(2, 3)), name="i1"), name="i2")
        return {"y": tf.identity(tf.reshape(x, [-1, 3]) + c * 2.0, name="y")}

    model = graph_model(build, {"x": ("float32", [None, 6])})
    np.testing.assert_array_equal(constant_value(model.graph_def, "i2"), np.arange(6).reshape(2, 3))
    assert constant_value(model.graph_def, "x") is None
    ed = GraphEditor(model.graph_def)
    assert ed.const_root("i2").op == "Const" and ed.static_shape("i2") == (2, 3)
    assert ed.static_shape("x") == (None, 6) and ed.static_shape("Reshape") == (None, 3)


def test_prune_functions_keeps_what_is_called():
    model = cond_model()
    gd = model.graph_def
    called = {f.signature.name for f in gd.library.function}
    extra = gd.library.function.add()
    extra.CopyFrom(gd.library.function[0])
    extra.signature.name = "nobody_calls_me"
    assert prune_functions(gd) == ["nobody_calls_me"]
    assert {f.signature.name for f in gd.library.function} == called
    for node in list(gd.node):
        if node.op in ("If", "StatelessIf"):
            for key in ("then_branch", "else_branch"):
                node.attr[key].func.name = "gone"
    assert sorted(prune_functions(gd)) == sorted(called) and not gd.library.function


# --- the rule plugin in docs/develop/writing-a-pass.md --------------------------------------------------------------------


def test_the_rule_plugin_in_the_docs_works_by_name_and_is_at_most_20_lines():
    import re
    import types

    import tensorflow as tf

    from graphopt.plugins import Host
    from tests.conftest import ROOT

    text = (ROOT / "docs" / "develop" / "writing-a-pass.md").read_text()
    section = text[text.index("## A pattern rule"):]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(block.splitlines()) <= 20
    plugin = types.ModuleType("graphopt_mul_by_one")
    exec(compile(block, "docs/develop/writing-a-pass.md", "exec"), plugin.__dict__)
    host = Host.create(plugins=True, allow=["mul-by-one"], extra=[("mul-by-one", plugin)])
    assert host.registry.passes["remove_mul_by_one"].cls.explains

    def build(x):
        return {"y": tf.identity(tf.multiply(1.0, tf.multiply(x, 3.0, name="m3"), name="m1"), name="y")}

    model = graph_model(build, {"x": ("float32", [2])})
    result = Pipeline.parse("remove_mul_by_one", host=host).run(model, explain=True)
    (record,) = result.records
    assert record.counters["mul_by_one"] == 1 and "m1" not in nodes(result.model)
    assert [e["text"] for e in record.explanations] == ["Mul 'm3' kept: not a multiplication by 1", "Mul 'm1' removed"]
    feeds = {"x": np.array([1.0, -2.0], np.float32)}
    np.testing.assert_array_equal(run_model(result.model, feeds)["y"], run_model(model, feeds)["y"])
