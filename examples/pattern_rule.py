"""A pattern-rule pass: ``Minimum(Relu(x), 6)`` becomes ``Relu6(x)``, and where it does not, it says why.

    python examples/pattern_rule.py

Graphs converted from other frameworks often spell ReLU6 as a clamp. The rule
is a pattern (the ops it matches), a condition (a reason string when it does
not hold) and a replacement; ``rule_pass`` makes a pass of it that runs the
rule to a fixpoint, in the main graph and in every function body, and returns
an explanation per candidate site -- the same ones ``graphopt explain`` prints.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections import Counter  # noqa: E402

import numpy as np  # noqa: E402

from graphopt import Model, Signature, TensorSpec  # noqa: E402
from graphopt.rewrite import Const, Rule, rule_pass  # noqa: E402


class ClampToRelu6(Rule):
    fired_verb, kept_verb = "became Relu6", "kept"

    def pattern(self, op, x):
        relu = op.Relu(x, _name="relu")  # _exclusive by default: the Relu must feed nothing else
        return op.Minimum(relu, Const("limit"), _commutative=True)  # min(relu, 6) or min(6, relu)

    def condition(self, m):
        limit = m.values["limit"]
        return None if limit.size == 1 and float(limit.reshape(-1)[0]) == 6.0 else f"clamps at {limit}, not 6"

    def rewrite(self, r, m):
        return r.Relu6(m["x"], T=m.attr("relu", "T"))


ClampToRelu6Pass = rule_pass("clamp_to_relu6", [ClampToRelu6()], description="Minimum(Relu(x), 6) -> Relu6(x).")


def small_model() -> Model:
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 8], name="x")
        h = tf.matmul(x, tf.constant(np.random.default_rng(0).normal(0, 4, (8, 8)).astype(np.float32)))
        a = tf.minimum(tf.nn.relu(h, name="relu_a"), 6.0, name="clamp_a")
        b = tf.minimum(6.0, tf.nn.relu(a * 2.0, name="relu_b"), name="clamp_b")  # constant first
        c = tf.minimum(tf.nn.relu(b - 3.0, name="relu_c"), 4.0, name="clamp_c")  # a ReLU4: kept
        shared = tf.nn.relu(c + 1.0, name="relu_d")
        d = tf.minimum(shared, 6.0, name="clamp_d") + shared  # the Relu feeds the Add too: kept
        y = tf.identity(d, name="y")
    spec = lambda t: TensorSpec(t.name, "float32", tuple(t.shape.as_list()))  # noqa: E731
    return Model(g.as_graph_def(), Signature({"x": spec(x)}, {"y": spec(y)}))


def main() -> None:
    from graphopt.runtime.session import run_model

    model = small_model()
    result = ClampToRelu6Pass().run(model)
    for explanation in result.explanations:
        print(explanation.text)
    before, after = Counter(n.op for n in model.graph_def.node), Counter(n.op for n in result.model.graph_def.node)
    print(f"Minimum {before['Minimum']} -> {after['Minimum']}, Relu {before['Relu']} -> {after['Relu']}, "
          f"Relu6 {before['Relu6']} -> {after['Relu6']}; counters {result.counters}")
    feeds = {"x": np.random.default_rng(1).normal(0, 1, (1, 8)).astype(np.float32)}
    diff = float(np.abs(run_model(model, feeds)["y"] - run_model(result.model, feeds)["y"]).max())
    print(f"largest output difference {diff:g}")


if __name__ == "__main__":
    main()
