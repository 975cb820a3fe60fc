"""A hook plugin: watch every pass of a run, and wrap each one to add a counter of its own.

    python examples/hook_plugin.py

Two kinds of hooks (docs/develop/hooks.md): observers (``graphopt_pass_finish``) see
each pass's result and record; wrappers (``graphopt_run_pass`` with
``wrapper=True``) run around the pass and may change its result. This plugin
keeps an audit trail of the ops each pass removed and adds ``cpu_ms`` to every
pass's counters, so it shows in the report like the pass's own numbers.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import graphopt  # noqa: E402
from graphopt import Model, Signature, TensorSpec, hookimpl  # noqa: E402


class AuditPlugin:
    def __init__(self) -> None:
        self.trail: list[str] = []

    @hookimpl(wrapper=True)
    def graphopt_run_pass(self, pass_, model, context):
        start = time.process_time()
        result = yield  # the pass runs here (or raises: then so does this wrapper)
        result.counters["cpu_ms"] = round(1000 * (time.process_time() - start), 1)
        return result

    @hookimpl
    def graphopt_pass_finish(self, pass_, before, result, context):
        removed = {op: -d for op, d in context.records[-1].ops_delta.items() if d < 0}
        self.trail.append(f"{pass_.name}: removed {removed or 'nothing'}")


def small_model() -> Model:
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [2, 4], name="x")
        h = tf.debugging.check_numerics(tf.matmul(x, tf.constant(np.ones((4, 3), np.float32))), "nan in h")
        h = tf.identity(tf.identity(h))
        y = tf.nn.relu(h + tf.constant(1.0) * tf.constant(2.0), name="y")
    spec = lambda t: TensorSpec(t.name, "float32", tuple(t.shape.as_list()))  # noqa: E731
    return Model(g.as_graph_def(), Signature({"x": spec(x)}, {"y": spec(y)}))


def main() -> None:
    audit = AuditPlugin()
    host = graphopt.Host.create(extra=[("audit", audit)])
    result = graphopt.Pipeline.parse("strip_debug_ops fold_constants", host=host).run(small_model())
    for record in result.records:
        print(f"{record.name:<16} {record.status:<9} cpu_ms={record.counters['cpu_ms']}")
    for line in audit.trail:
        print(line)


if __name__ == "__main__":
    main()
