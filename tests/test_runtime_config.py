"""The session/platform config graphopt ships (graphopt.runtime.config): TF Serving parses it, and it rebuilds what it should."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from models import small_mobilenet
from support import run_in_fresh_process

from graphopt.errors import UsageError
from graphopt.passes.grappler import onednn_enabled
from graphopt.passes.pipeline import Pipeline
from graphopt.runtime import config as serving_config
from graphopt.runtime.config import session_config
from graphopt.runtime.session import random_inputs, run_model


@pytest.fixture(scope="module")
def mobilenet():
    model = small_mobilenet()
    feeds = random_inputs(model.signature)
    return model, feeds, run_model(model, feeds)["output"]


def off():
    return session_config("off")


def ops(model):
    return Counter(n.op for n in model.graph_def.node)


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
    remap = serving_config.session_config(runtime_optimizer="remap").graph_options.rewrite_options
    assert list(remap.optimizers) == ["remap"] and not remap.disable_meta_optimizer
    with pytest.raises(UsageError):
        serving_config.session_config(runtime_optimizer="sometimes")


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
    shipped, got = executed_ops(out, feeds, serving_config.session_config(runtime_optimizer=mode))
    split, _ = executed_ops(out, feeds, off())
    full, _ = executed_ops(out, feeds, serving_config.session_config(runtime_optimizer="full"))
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
        got = run_in_fresh_process(out, feeds, setting, mode)["output"]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
