"""grappler_optimize (offline Grappler for a target device) and the serving config that goes with it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from models import small_mobilenet
from support import run_in_fresh_process

from graphopt.errors import PassError, ResourceError, UsageError
from graphopt.model import Model, Signature, TensorSpec
from graphopt.passes.grappler import (
    GrapplerOptimize,
    _optimize_in_child,
    build_meta_graph,
    grappler_config,
    non_portable_nodes,
)
from graphopt.passes.pipeline import Pipeline
from graphopt.runtime import config as serving_config
from graphopt.runtime.config import session_config
from graphopt.runtime.session import random_inputs, run_model


def off():
    return session_config("off")


@pytest.fixture(scope="module")
def mobilenet():
    model = small_mobilenet()
    feeds = random_inputs(model.signature)
    return model, feeds, run_model(model, feeds)["output"]


def ops(model):
    return Counter(n.op for n in model.graph_def.node)


def test_fuses_for_cpu_keeps_names_and_runs_without_runtime_grappler(mobilenet):
    model, feeds, ref = mobilenet
    result = GrapplerOptimize().run(model.copy())
    out = result.model
    assert result.modified
    assert ops(out)["_FusedConv2D"] >= 20 and result.counters["fused_ops"] == sum(
        c for op, c in ops(out).items() if op.startswith("_Fused"))
    assert len(out.graph_def.node) < 0.5 * len(model.graph_def.node)
    names = {n.name for n in out.graph_def.node}
    assert model.protected_nodes <= names  # signature input and output keep their names
    assert all(n.device == "" for n in out.graph_def.node)  # clear_devices (default)
    assert out.metadata["grappler_device"] == "/device:CPU:0"
    # the pre-optimized graph, run with runtime Grappler off, gives the original's outputs
    got = run_model(out, feeds, config=off())["output"]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    # and an unoptimized graph run the same way gets no fused kernels at all: the pass did the work
    assert ops(model)["_FusedConv2D"] == 0


def test_without_device_placement_the_remapper_fuses_nothing(mobilenet):
    model, feeds, ref = mobilenet
    unplaced = GrapplerOptimize(device="").run(model.copy()).model
    assert not any(op.startswith("_Fused") for op in ops(unplaced))
    np.testing.assert_allclose(run_model(unplaced, feeds, config=off())["output"], ref, rtol=1e-5, atol=1e-7)
    kept = GrapplerOptimize(clear_devices=False).run(model.copy()).model
    assert {n.device for n in kept.graph_def.node} == {"/device:CPU:0"}


def _dense_relu_with_table() -> Model:
    """x -> MatMul -> BiasAdd -> Relu, plus a string lookup whose table needs an init op."""
    import tensorflow as tf

    v1 = tf.compat.v1
    rng = np.random.default_rng(0)
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None, 16], name="x")
        words = v1.placeholder(tf.string, [None], name="words")
        w = tf.constant(rng.standard_normal((16, 8)).astype(np.float32), name="w")
        b = tf.constant(rng.standard_normal(8).astype(np.float32), name="b")
        h = tf.nn.relu(tf.nn.bias_add(tf.matmul(x, w), b), name="h")
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(["a", "b", "c"]), tf.constant([1, 2, 3], tf.int64)), -1)
        ids = tf.identity(table.lookup(words), name="ids")
        init = v1.tables_initializer(name="init_all_tables")
    sig = Signature({"x": TensorSpec("x:0", "float32", (None, 16)), "words": TensorSpec("words:0", "string", (None,))},
                    {"h": TensorSpec(h.name, "float32", (None, 8)), "ids": TensorSpec(ids.name, "int64", (None,))})
    return Model(g.as_graph_def(), sig, init_ops=[init.name])


def test_matmul_fusion_and_init_ops_survive():
    model = _dense_relu_with_table()
    feeds = {"x": np.random.default_rng(1).random((2, 16)).astype(np.float32),
             "words": np.array([b"a", b"c", b"zz"], dtype=object)}
    ref = run_model(model, feeds)
    out = GrapplerOptimize().run(model.copy()).model
    assert ops(out)["_FusedMatMul"] == 1 and ops(out)["MatMul"] == 0
    assert "init_all_tables" in {n.name for n in out.graph_def.node}
    got = run_model(out, feeds, config=off())
    np.testing.assert_allclose(got["h"], ref["h"], rtol=1e-6)
    assert got["ids"].tolist() == [1, 3, -1]


def test_isolated_child_gives_the_same_graph(mobilenet):
    model = mobilenet[0]
    here = GrapplerOptimize(isolate="never", onednn="current").run(model.copy())
    child = GrapplerOptimize(isolate="always", onednn="current").run(model.copy())
    assert child.counters["isolated"] == 1 and here.counters["isolated"] == 0
    assert ops(child.model) == ops(here.model)


def test_default_graph_runs_on_servers_with_and_without_onednn(mobilenet):
    # oneDNN-only fusions (Conv + BiasAdd + Add) fail on a oneDNN-off server with "Fusion is not implemented":
    # the default (onednn=off) leaves them out, whatever this process runs.
    model, feeds, ref = mobilenet
    out = GrapplerOptimize().run(model.copy()).model
    fused = [list(n.attr["fused_ops"].list.s) for n in out.graph_def.node if n.op.startswith("_Fused")]
    assert all(set(f) <= {b"BiasAdd", b"Relu", b"Relu6", b"Elu", b"LeakyRelu"} for f in fused)
    assert not non_portable_nodes(out.graph_def)
    assert out.metadata["grappler_onednn"] is False
    for setting in ("0", "1"):
        got = run_in_fresh_process(out, feeds, setting)["output"]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif("not __import__('graphopt.passes.grappler').passes.grappler.onednn_enabled()",
                    reason="oneDNN-only fusions appear only where oneDNN is on")
def test_onednn_fusions_are_split_into_portable_ops(mobilenet):
    from graphopt.passes.grappler import split_onednn_fusions

    model, feeds, ref = mobilenet
    folded = Pipeline.parse("fold_all_batch_norms").run(model).model
    native = GrapplerOptimize(onednn="on").run(folded.copy()).model
    # [BiasAdd, Add] fusions of the residual blocks and fused depthwise convs
    assert non_portable_nodes(native.graph_def)
    graph_def = type(native.graph_def)()
    graph_def.CopyFrom(native.graph_def)
    assert split_onednn_fusions(graph_def) == len(non_portable_nodes(native.graph_def))
    assert not non_portable_nodes(graph_def)
    portable = native.with_graph(graph_def)
    assert ops(portable)["_FusedDepthwiseConv2dNative"] == 0 < ops(native)["_FusedDepthwiseConv2dNative"]
    assert ops(portable)["_FusedConv2D"] == ops(native)["_FusedConv2D"]
    np.testing.assert_allclose(run_in_fresh_process(portable, feeds, "0")["output"], ref, rtol=1e-4, atol=1e-6)
    default = GrapplerOptimize().run(folded.copy())
    # optimized in the sandboxed child with this process's oneDNN setting, split here
    assert default.counters["onednn_fusions_split"] > 0 and default.counters["isolated"] == 1
    assert serving_config.recommended_environment(native) == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    assert serving_config.recommended_environment(default.model) == {}
    assert ops(default.model) == ops(portable)


def test_a_placeholder_without_dtype_is_refused_before_grappler_can_abort():
    model = _dense_relu_with_table()
    for node in model.graph_def.node:
        if node.name == "x":
            del node.attr["dtype"]
    with pytest.raises(PassError, match="placeholder 'x' has no dtype"):
        GrapplerOptimize().run(model.copy())
    missing = _dense_relu_with_table()
    missing = missing.replace(signature=Signature({"x": TensorSpec("nope:0", "float32", (None, 16))},
                                                  missing.signature.outputs))
    with pytest.raises(PassError, match="'nope', which is not in the graph"):
        GrapplerOptimize().run(missing)


def test_a_grappler_abort_in_the_child_becomes_a_resource_error():
    # A feed without a dtype makes OptimizeGraph abort the process (F tensor.cc ... Type not set):
    # in the sandboxed child that is a ResourceError naming the signal, and this process lives on.
    model = _dense_relu_with_table()
    meta = build_meta_graph(model, "/device:CPU:0")
    meta.signature_def[model.signature.key].inputs["x"].dtype = 0
    with pytest.raises(ResourceError, match="Grappler crashed.*SIGABRT") as info:
        _optimize_in_child(grappler_config().SerializeToString(), meta.SerializeToString(), timeout=300)
    assert any("Type not set" in d for d in info.value.details) and info.value.limit == "crash"


def test_options_from_a_transform_string_and_bad_options():
    model = _dense_relu_with_table()
    result = Pipeline.parse("grappler_optimize(optimizers=constfold, optimizers=remap)").run(model)
    assert result.records[0].status == "applied"
    assert ops(result.model)["_FusedMatMul"] == 1
    with pytest.raises(UsageError):
        Pipeline.parse("grappler_optimize(isolate=sometimes)")
    with pytest.raises(UsageError, match="constfolding"):  # Grappler itself would silently skip a wrong name
        Pipeline.parse("grappler_optimize(optimizers=constfolding)")


def test_weights_compressed_after_grappler_stay_compressed_and_ask_for_constfold(mobilenet):
    model, feeds, ref = mobilenet
    result = Pipeline.parse("grappler_optimize weights_to_fp16").run(model)
    out = result.model
    assert ops(out)["_FusedConv2D"] >= 20 and any(
        n.op == "Const" and n.attr["dtype"].type == 19 for n in out.graph_def.node)
    assert serving_config.recommended_optimizer(out) == "constfold"
    assert serving_config.recommended_optimizer(Pipeline.parse("grappler_optimize").run(model).model) == "remap"
    assert serving_config.recommended_optimizer(model) == "full"
    # nothing left for the runtime remapper (no depthwise conv, Sigmoid, ...): runtime Grappler off, cheapest start
    dense = GrapplerOptimize().run(_dense_relu_with_table()).model
    assert serving_config.recommended_optimizer(dense) == "off"
    config = serving_config.session_config(runtime_optimizer="constfold")
    got = run_model(out, feeds, config=config)["output"]
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-3


def test_a_graph_with_a_function_library_is_optimized_in_a_child_and_still_runs():
    from models import tf2_function_model

    model = tf2_function_model()
    assert len(model.graph_def.library.function) > 0
    feeds = {"x": np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)}
    ref = run_model(model, feeds)["y"]
    result = GrapplerOptimize(onednn="current").run(model.copy())
    assert result.counters["isolated"] == 1  # isolate=auto: function bodies are only checked inside Grappler
    np.testing.assert_allclose(run_model(result.model, feeds, config=off())["y"], ref, rtol=1e-6)
    serving = Pipeline.parse("serving").run(model).model
    np.testing.assert_allclose(run_model(serving, feeds, config=off())["y"], ref, rtol=1e-6)


@pytest.mark.parametrize("device", ["/device:CPU:0", ""])
def test_meta_graph_bytes_are_the_meta_graph_written_node_by_node(mobilenet, device):
    # Written node by node into one buffer (no second in-memory graph): TensorFlow must parse
    # exactly the MetaGraphDef build_meta_graph makes, devices set, signature and fetches included.
    from tensorflow.core.protobuf import meta_graph_pb2

    from graphopt.graph.encoding import serialize_graph_def
    from graphopt.passes.grappler import meta_graph_bytes, same_graph, write_meta_graph

    model = mobilenet[0]
    expected = build_meta_graph(model, device)
    assert meta_graph_pb2.MetaGraphDef.FromString(bytes(meta_graph_bytes(model, device))) == expected
    assert not device or all(n.device != device for n in model.graph_def.node)  # the input is left as it was
    import tempfile

    with tempfile.NamedTemporaryFile() as f:
        write_meta_graph(model, device, f.name)
        assert meta_graph_pb2.MetaGraphDef.FromString(open(f.name, "rb").read()) == expected
    parsed = type(model.graph_def).FromString(bytes(serialize_graph_def(model.graph_def)))
    assert parsed == model.graph_def and same_graph(parsed, model.graph_def)
    del parsed.node[-1]
    assert not same_graph(parsed, model.graph_def)
