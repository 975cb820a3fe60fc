"""grappler_optimize (offline Grappler for a target device) and the serving config that goes with it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from models import small_mobilenet

from graphopt.errors import PassError, UsageError
from graphopt.model import Model, Signature, TensorSpec
from graphopt.passes.grappler import (
    GrapplerOptimize,
    _optimize_in_child,
    build_meta_graph,
    grappler_config,
    non_portable_nodes,
    onednn_enabled,
)
from graphopt.passes.pipeline import Pipeline
from graphopt.runtime import config as serving_config
from graphopt.runtime.session import random_inputs, run_model, session_config


def off():
    return session_config(grappler=False)


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


def _run_in_fresh_process(model, feeds, onednn: str, runtime_optimizer: str = "off"):
    """Outputs of ``model`` run with ``runtime_optimizer`` (default off) in a new process with
    TF_ENABLE_ONEDNN_OPTS=onednn."""
    import os
    import pickle
    import subprocess
    import sys
    import tempfile

    code = ("import pickle, sys\n"
            "from graphopt.runtime.session import run_model\n"
            "from graphopt.runtime.config import session_config_proto\n"
            "model, feeds = pickle.load(open(sys.argv[1], 'rb'))\n"
            "out = run_model(model, feeds, config=session_config_proto(runtime_optimizer=sys.argv[2]))\n"
            "pickle.dump(out, open(sys.argv[1], 'wb'))\n")
    with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as f:
        pickle.dump((model, feeds), f)
    try:
        proc = subprocess.run([sys.executable, "-c", code, f.name, runtime_optimizer], capture_output=True, text=True,
                              env=dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="2"))
        assert proc.returncode == 0, proc.stderr[-1500:]
        with open(f.name, "rb") as g:
            return pickle.load(g)
    finally:
        os.unlink(f.name)


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
        got = _run_in_fresh_process(out, feeds, setting)["output"]
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
    np.testing.assert_allclose(_run_in_fresh_process(portable, feeds, "0")["output"], ref, rtol=1e-4, atol=1e-6)
    default = GrapplerOptimize().run(folded.copy())
    assert default.counters["onednn_fusions_split"] > 0 and default.counters["isolated"] == 0
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


def test_a_grappler_abort_in_the_child_becomes_a_pass_error():
    # A feed without a dtype makes OptimizeGraph abort the process (F tensor.cc ... Type not set):
    # in the child that is a PassError, and this process lives on.
    model = _dense_relu_with_table()
    meta = build_meta_graph(model, "/device:CPU:0")
    meta.signature_def[model.signature.key].inputs["x"].dtype = 0
    with pytest.raises(PassError, match="Grappler crashed") as info:
        _optimize_in_child(grappler_config().SerializeToString(), meta.SerializeToString(), timeout=300)
    assert any("Type not set" in d for d in info.value.details)


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
    config = serving_config.session_config_proto(runtime_optimizer="constfold")
    got = run_model(out, feeds, config=config)["output"]
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-3


def test_serving_config_texts_parse_back_as_the_protos_tf_serving_reads(tmp_path):
    from google.protobuf import text_format
    from tensorflow.core.protobuf import config_pb2

    text = serving_config.session_config_text(runtime_optimizer="off", intra_op=2, inter_op=1)
    parsed = text_format.Parse(text, config_pb2.ConfigProto())
    assert parsed.graph_options.rewrite_options.disable_meta_optimizer
    assert (parsed.intra_op_parallelism_threads, parsed.inter_op_parallelism_threads) == (2, 1)

    platform = serving_config.platform_config_text(runtime_optimizer="constfold")
    assert "[type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig]" in platform
    platform_map, session = serving_config.parse_platform_config(platform)
    assert list(platform_map.platform_configs) == ["tensorflow"]
    assert list(session.graph_options.rewrite_options.optimizers) == ["constfold"]
    assert not session.graph_options.rewrite_options.disable_meta_optimizer

    paths = serving_config.write_serving_config(tmp_path / "cfg", intra_op=4)
    assert paths["session"].read_text() == serving_config.session_config_text(intra_op=4)
    assert serving_config.parse_platform_config(paths["platform"].read_text())[1].intra_op_parallelism_threads == 4
    assert serving_config.model_server_flags(tmp_path / "cfg") == [f"--platform_config_file={paths['platform']}"]
    assert serving_config.serving_environment(onednn=True) == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    remap = serving_config.session_config_proto(runtime_optimizer="remap").graph_options.rewrite_options
    assert list(remap.optimizers) == ["remap"] and not remap.disable_meta_optimizer
    with pytest.raises(UsageError):
        serving_config.session_config_proto(runtime_optimizer="sometimes")


def test_serving_preset_beats_gtt_and_grappler_on_a_keras_model(mobilenet):
    model, feeds, ref = mobilenet
    serving = Pipeline.parse("serving").run(model)
    gtt = Pipeline.parse("gtt-seed").run(model).model
    grappler = Pipeline.parse("grappler_optimize").run(model).model
    out = serving.model
    c = ops(out)
    # every batch norm folded (Grappler alone leaves those after depthwise convs as Mul/Add), every Conv2D a
    # portable fused kernel; depthwise convs keep a plain BiasAdd (their fused kernel needs oneDNN)
    assert c["Conv2D"] == c["Mul"] == c["_FusedDepthwiseConv2dNative"] == 0
    assert c["_FusedConv2D"] >= 30 and c["DepthwiseConv2dNative"] == c["BiasAdd"] >= 15
    assert ops(grappler)["Mul"] > 0
    assert len(out.graph_def.node) <= min(len(gtt.graph_def.node), len(grappler.graph_def.node))
    assert out.size_bytes <= min(gtt.size_bytes, grappler.size_bytes)
    assert not serving.lossy
    np.testing.assert_allclose(run_model(out, feeds, config=off())["output"], ref, rtol=1e-4, atol=1e-6)
    assert serving_config.recommended_optimizer(out) == "remap"

    fast = Pipeline.parse("serving-onednn").run(model).model  # for servers with oneDNN on
    assert ops(fast)["_FusedDepthwiseConv2dNative"] == c["DepthwiseConv2dNative"]
    assert len(fast.graph_def.node) < len(out.graph_def.node)
    assert serving_config.recommended_environment(fast) == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    if onednn_enabled():
        np.testing.assert_allclose(run_model(fast, feeds, config=off())["output"], ref, rtol=1e-4, atol=1e-6)


def test_serving_preset_on_a_tf1_graph_removes_check_numerics():
    from models import tf1_seed_graph

    model, facts = tf1_seed_graph()
    feeds = random_inputs(model.signature)
    ref = run_model(model, feeds)
    out = Pipeline.parse("serving").run(model).model
    names = {n.name for n in out.graph_def.node}
    assert not names & set(facts["check_numerics"]) and not names & set(facts["train"])
    assert not any("__cf__" in n for n in names)  # folded constants got back the names of what they replace
    assert len(out.graph_def.node) < len(model.graph_def.node)
    for key, value in run_model(out, feeds, config=off()).items():
        np.testing.assert_allclose(value, ref[key], rtol=1e-6)


@pytest.mark.parametrize("preset, max_size, max_error", [("serving-fp16", 0.56, 1e-3), ("serving-int8", 0.32, 2e-2)])
def test_lossy_presets_shrink_and_report_their_error(mobilenet, preset, max_size, max_error):
    model, feeds, ref = mobilenet
    result = Pipeline.parse(preset).run(model)
    assert result.lossy and result.records[-1].name in ("weights_to_fp16", "weights_to_int8")
    assert result.records[-1].counters["max_relative_weight_error"] > 0
    out = result.model
    assert out.size_bytes < max_size * model.size_bytes
    assert ops(out)["_FusedConv2D"] >= 30  # compression came after Grappler, which did not fold it back
    config = serving_config.session_config_proto(runtime_optimizer=serving_config.recommended_optimizer(out))
    got = run_model(out, feeds, config=config)["output"]
    assert np.abs(got - ref).max() / np.abs(ref).max() <= max_error


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


def executed_ops(model, feeds, config) -> tuple[Counter, np.ndarray]:
    """Ops of the graph the session really executed (after runtime Grappler and oneDNN's rewrites), and the output."""
    import tensorflow as tf

    from graphopt.runtime.session import Session

    with Session(model, config=config) as sess:
        graph = sess.graph
        fetch = graph.get_tensor_by_name(next(iter(model.signature.outputs.values())).name)
        feed = {graph.get_tensor_by_name(model.signature.inputs[k].name): v for k, v in feeds.items()}
        meta = tf.compat.v1.RunMetadata()
        out = sess.session.run(fetch, feed, options=tf.compat.v1.RunOptions(output_partition_graphs=True),
                               run_metadata=meta)
    return Counter(n.op for g in meta.partition_graphs for n in g.node), out


def test_shipped_remap_config_rebuilds_the_fusions_the_portable_graph_leaves_split(mobilenet):
    # The portable serving graph keeps depthwise conv + BiasAdd + Relu6 split (its fused kernel needs oneDNN);
    # the shipped config runs only the remapper at the first request, which fuses them where this build can.
    model, feeds, ref = mobilenet
    out = Pipeline.parse("serving").run(model).model
    mode = serving_config.recommended_optimizer(out)
    assert mode == "remap"
    shipped, got = executed_ops(out, feeds, serving_config.session_config_proto(runtime_optimizer=mode))
    split, _ = executed_ops(out, feeds, off())
    full, _ = executed_ops(out, feeds, serving_config.session_config_proto(runtime_optimizer="full"))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
    depthwise = ops(out)["DepthwiseConv2dNative"]
    assert depthwise >= 15
    if onednn_enabled():
        fused = "_MklNativeFusedDepthwiseConv2dNative"
        assert shipped[fused] == full[fused] == depthwise and split[fused] == 0
        assert shipped["Relu6"] == full["Relu6"] == 0 < split["Relu6"]
    # the remapper alone gives the same executed graph as TensorFlow's full runtime Grappler
    assert shipped == full
    for setting in ("0", "1"):  # and it runs on servers with oneDNN off and on
        got = _run_in_fresh_process(out, feeds, setting, mode)["output"]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)


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
