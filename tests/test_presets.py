"""The presets (serving, serving-fp16, serving-int8) against GTT's list and offline Grappler, on real graphs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from models import small_mobilenet

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
    config = serving_config.session_config(runtime_optimizer=serving_config.recommended_optimizer(out))
    got = run_model(out, feeds, config=config)["output"]
    assert np.abs(got - ref).max() / np.abs(ref).max() <= max_error
