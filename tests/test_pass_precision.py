"""weights_to_fp16 and weights_to_int8: structure, size, error, and the all-zero case GTT gets wrong."""

from __future__ import annotations

import numpy as np
import pytest
from models import small_mobilenet

from graphopt.model import Model, Signature, TensorSpec
from graphopt.passes.pipeline import Pipeline
from graphopt.passes.precision import WeightsToFp16, WeightsToInt8, channel_axes, quantize_int8
from graphopt.runtime.config import session_config
from graphopt.runtime.session import random_inputs, run_model


@pytest.fixture(scope="module")
def mobilenet():
    model = small_mobilenet()
    feeds = random_inputs(model.signature)
    return model, feeds, run_model(model, feeds)["output"]


def rel_diff(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def consts(model, dtype_enum):
    return [n for n in model.graph_def.node if n.op == "Const" and n.attr["dtype"].type == dtype_enum]


def big_float_consts(model, minimum=1024):
    out = []
    for n in consts(model, 1):
        size = int(np.prod([d.size for d in n.attr["value"].tensor.tensor_shape.dim]))
        if size >= minimum:
            out.append(n.name)
    return out


def test_fp16_halves_weights_and_keeps_outputs(mobilenet):
    model, feeds, ref = mobilenet
    result = WeightsToFp16().run(model.copy())
    out = result.model
    assert result.modified and WeightsToFp16.lossy and WeightsToFp16.tolerance
    assert result.counters["converted"] == len(big_float_consts(model)) > 30
    assert not big_float_consts(out)  # every large float32 weight is now half
    halves = consts(out, 19)
    assert len(halves) == result.counters["converted"]
    # each compressed weight keeps its name, now a Cast half -> float that reads the half constant
    nodes = {n.name: n for n in out.graph_def.node}
    for h in halves:
        cast = nodes[h.name[: -len("/fp16")]]
        assert cast.op == "Cast" and cast.attr["SrcT"].type == 19 and cast.attr["DstT"].type == 1
    assert out.size_bytes < 0.56 * model.size_bytes  # small model: BN vectors under minimum_size stay float32
    assert result.counters["bytes_saved"] > 0.4 * model.size_bytes
    assert 0 < result.counters["max_relative_weight_error"] <= 2.0 ** -11
    got = run_model(out, feeds)["output"]
    assert rel_diff(got, ref) <= 1e-3
    # runtime Grappler off: the Casts run per request, outputs agree up to kernel rounding (no fusion)
    assert rel_diff(run_model(out, feeds, config=session_config("off"))["output"], got) < 1e-5
    assert out.metadata["weight_storage"] == "fp16"


def test_int8_per_channel_beats_gtt_quantize_weights(mobilenet):
    model, feeds, ref = mobilenet
    result = WeightsToInt8().run(model.copy())
    out = result.model
    assert result.modified and result.counters["converted"] > 30
    assert result.counters["per_channel"] == result.counters["converted"]
    nodes = {n.name: n for n in out.graph_def.node}
    from tensorflow.python.framework import tensor_util

    def quantized_weight(op):
        # the first reader of this op whose weight was large enough to convert: op -> Identity -> Mul
        for n in out.graph_def.node:
            if n.op == op and nodes[nodes[n.input[1]].input[0]].op == "Mul":
                return nodes[nodes[n.input[1]].input[0]]
        raise AssertionError(f"no {op} reads an int8 weight")

    for op, scale_rank in (("Conv2D", 1), ("DepthwiseConv2dNative", 2)):
        weight = quantized_weight(op)
        q = nodes[nodes[weight.input[0]].input[0]]
        scale = tensor_util.MakeNdarray(nodes[weight.input[1]].attr["value"].tensor)
        assert q.attr["dtype"].type == 6  # int8
        assert scale.ndim == scale_rank and scale.size > 1  # Conv2D: [out]; depthwise: [in, multiplier]
    assert out.size_bytes < 0.32 * model.size_bytes
    got = run_model(out, feeds)["output"]
    err = rel_diff(got, ref)
    assert err <= WeightsToInt8.tolerance

    gtt = Pipeline.parse("quantize_weights").run(model).model
    gtt_err = rel_diff(run_model(gtt, feeds)["output"], ref)
    assert err < 0.6 * gtt_err, (err, gtt_err)


def test_per_channel_scales_win_when_channel_ranges_differ():
    # After batch norms are folded into weights, output channels differ in range by gamma/sqrt(var):
    # one scale per tensor then wastes most of the int8 levels on the small channels.
    rng = np.random.default_rng(4)
    w = (rng.uniform(-1, 1, (128, 64)) * np.logspace(-2, 0, 64)).astype(np.float32)
    model = _dense_model(w)
    feeds = {"x": rng.random((4, 128)).astype(np.float32)}
    ref = run_model(model, feeds)["y"] - run_model(model, {"x": np.zeros((4, 128), np.float32)})["y"]
    bias = run_model(model, {"x": np.zeros((4, 128), np.float32)})["y"]

    def err(m):
        return np.abs(run_model(m, feeds)["y"] - bias - ref).max(axis=0) / np.abs(ref).max(axis=0)

    per_channel = err(WeightsToInt8().run(model.copy()).model)
    per_tensor = err(WeightsToInt8(per_channel=False).run(model.copy()).model)
    gtt = err(Pipeline.parse("quantize_weights").run(model).model)
    assert per_channel.max() < 0.05
    assert per_channel.max() * 10 < per_tensor.max()
    assert per_channel.max() * 10 < gtt.max()


def _dense_model(weight: np.ndarray) -> Model:
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, weight.shape[0]], name="x")
        w = tf.constant(weight, name="w")
        b = tf.constant(np.linspace(-1, 1, weight.shape[1]).astype(np.float32), name="b")
        tf.nn.bias_add(tf.matmul(x, w), b, name="y")
    sig = Signature({"x": TensorSpec("x:0", "float32", (None, weight.shape[0]))},
                    {"y": TensorSpec("y:0", "float32", (None, weight.shape[1]))})
    return Model(g.as_graph_def(), sig)


@pytest.mark.parametrize("fill", [0.0, 0.37, -2.5])
def test_int8_is_exact_on_zero_and_constant_weights_where_gtt_gives_nan(fill):
    model = _dense_model(np.full((64, 64), fill, np.float32))  # 4096 elements: over GTT's minimum_size
    feeds = {"x": np.random.default_rng(0).random((2, 64)).astype(np.float32)}
    ref = run_model(model, feeds)["y"]

    result = WeightsToInt8().run(model.copy())
    assert result.counters["converted"] == 1
    assert result.counters["zero_tensors"] == (1 if fill == 0 else 0)
    got = run_model(result.model, feeds)["y"]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)

    gtt = run_model(Pipeline.parse("quantize_weights").run(model).model, feeds)["y"]
    if fill == 0.0:
        assert np.isnan(gtt).all()  # GTT's degenerate [0, 0] range: the bug graphopt's pass avoids
    fp16 = run_model(WeightsToFp16().run(model.copy()).model, feeds)["y"]
    np.testing.assert_allclose(fp16, ref, rtol=1e-3, atol=1e-3)


def test_non_finite_and_out_of_range_weights_are_left_alone():
    w = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)
    w[3, 5] = np.inf
    model = _dense_model(w)
    r8 = WeightsToInt8().run(model.copy())
    assert not r8.modified and r8.counters["skipped_nonfinite"] == 1
    big = _dense_model(np.full((32, 64), 1e6, np.float32))  # over float16's 65504
    r16 = WeightsToFp16().run(big.copy())
    assert not r16.modified and r16.counters["skipped_nonfinite_or_range"] == 1
    # a modest weight is converted; tiny ones (< minimum_size) are not
    assert WeightsToFp16(minimum_size=4096).run(_dense_model(np.ones((32, 64), np.float32)).copy()).modified is False


def test_channel_axes_follow_the_reading_op():
    from tensorflow.core.framework import node_def_pb2

    def node(op, **bools):
        n = node_def_pb2.NodeDef(name="n", op=op)
        for k, v in bools.items():
            n.attr[k].b = v
        return n

    assert channel_axes((3, 3, 8, 16), [(node("Conv2D"), 1)]) == (3,)
    assert channel_axes((3, 3, 8, 2), [(node("DepthwiseConv2dNative"), 1)]) == (2, 3)
    assert channel_axes((3, 3, 4, 8), [(node("Conv2DBackpropInput"), 1)]) == (2,)
    assert channel_axes((8, 4), [(node("MatMul", transpose_b=False), 1)]) == (1,)
    assert channel_axes((4, 8), [(node("MatMul", transpose_b=True), 1)]) == (0,)
    assert channel_axes((8, 4), [(node("AddV2"), 1)]) is None
    assert channel_axes((8, 4), [(node("MatMul"), 1), (node("MatMul", transpose_b=True), 1)]) is None
    w = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 12
    q, scale = quantize_int8(w, (1, 2))
    assert scale.shape == (3, 4)
    assert np.abs(q.astype(np.float32) * scale - w).max() <= scale.max() / 2 + 1e-6


def test_passes_from_a_transform_string_are_lossy_in_the_pipeline_record():
    w = np.random.default_rng(2).standard_normal((64, 32)).astype(np.float32)
    model = _dense_model(w)
    feeds = {"x": np.random.default_rng(3).random((2, 64)).astype(np.float32)}
    result = Pipeline.parse("weights_to_int8(minimum_size=16, per_channel=false) weights_to_fp16").run(model)
    rec8, rec16 = result.records
    assert rec8.status == "applied" and rec8.lossy and rec8.counters["per_tensor"] == 1
    assert rec16.status == "unchanged"  # nothing float32 and large is left after int8
    assert result.lossy
    ref = run_model(model, feeds)["y"]
    assert rel_diff(run_model(result.model, feeds)["y"], ref) < 2e-2


def test_weights_inside_a_tf1_while_loop_stay_in_the_loop_frame():
    import tensorflow as tf

    v1 = tf.compat.v1
    rng = np.random.default_rng(5)
    w = rng.standard_normal((64, 64)).astype(np.float32) / 8
    cf_v2 = v1.control_flow_v2_enabled()
    v1.disable_control_flow_v2()  # a real TF1 loop: the weight Const gets a control input from the frame
    try:
        g = tf.Graph()
        with g.as_default():
            x = v1.placeholder(tf.float32, [None, 64], name="x")
            _, y = v1.while_loop(lambda i, v: i < 3, lambda i, v: (i + 1, tf.matmul(v, tf.constant(w, name="w"))),
                                 [tf.constant(0), x])
            tf.identity(y, name="y")
    finally:
        if cf_v2:
            v1.enable_control_flow_v2()
    gd = g.as_graph_def()
    assert any(n.op == "Const" and n.input and n.attr["dtype"].type == 1 for n in gd.node)
    model = Model(gd, Signature({"x": TensorSpec("x:0", "float32", (None, 64))},
                                {"y": TensorSpec("y:0", "float32", (None, 64))}))
    feeds = {"x": rng.random((2, 64)).astype(np.float32)}
    ref = run_model(model, feeds)["y"]
    for pass_ in (WeightsToFp16(), WeightsToInt8()):
        result = pass_.run(model.copy())
        assert result.counters["converted"] == 1
        assert rel_diff(run_model(result.model, feeds)["y"], ref) < 3e-2
