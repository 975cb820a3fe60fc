"""A pass plugin: a pass class, registered through ``graphopt_register_passes``, used by name.

    python examples/pass_plugin.py

An installed plugin is a module named by a ``[project.entry-points.graphopt]``
line in its ``pyproject.toml`` (docs/develop/writing-a-plugin.md). Here the plugin is
an object handed to ``Host.create(extra=...)``, as tests and notebooks do; the
pass then works by name in transform strings, reports and errors name it, and
it is validated like any built-in.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import graphopt  # noqa: E402
from graphopt import Model, Option, Pass, PassResult, Signature, TensorSpec, hookimpl  # noqa: E402


class StripDevices(Pass):
    """Clear device placements (``/device:GPU:0`` written at export) so the server places every op."""

    name = "strip_devices"
    description = "Clear the device field of every node (keep= names to leave alone)."
    options = {"keep": Option(list, [], "node names whose device stays")}

    def run(self, model: Model) -> PassResult:
        keep = set(self.config["keep"])
        cleared = 0
        for node in model.graph_def.node:  # a private copy: edit in place
            if node.device and node.name not in keep:
                node.device = ""
                cleared += 1
        return PassResult(model, modified=cleared > 0, counters={"cleared": cleared})


class DevicesPlugin:
    @hookimpl
    def graphopt_register_passes(self, register):
        register(StripDevices)


def small_model() -> Model:
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [2, 4], name="x")
        with tf.device("/device:CPU:0"):
            h = tf.matmul(x, tf.constant(np.ones((4, 3), np.float32)), name="matmul")
        with tf.device("/job:localhost/replica:0/task:0/device:CPU:0"):
            y = tf.nn.relu(tf.identity(h, name="copy"), name="y")
    spec = lambda t: TensorSpec(t.name, "float32", tuple(t.shape.as_list()))  # noqa: E731
    return Model(g.as_graph_def(), Signature({"x": spec(x)}, {"y": spec(y)}))


def main() -> None:
    host = graphopt.Host.create(extra=[("graphopt-devices", DevicesPlugin())])
    info = host.registry.passes["strip_devices"]
    print(f"registered strip_devices from {info.origin}: {info.cls.description}")
    model = small_model()
    result = graphopt.Pipeline.parse("strip_devices(keep=y) strip_debug_ops", host=host).run(model)
    for record in result.records:
        print(f"{record.name:<16} {record.status:<9} origin={record.origin} counters={record.counters}")
    print("devices left:", {n.name: n.device for n in result.model.graph_def.node if n.device})


if __name__ == "__main__":
    main()
