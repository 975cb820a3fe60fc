"""fold_pad_into_conv: Keras ZeroPadding2D + VALID convolutions become one convolution; every refusal says why."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from graphopt.passes.pad_conv import FoldPadIntoConvPass, same_pads
from graphopt.passes.pipeline import Pipeline
from graphopt.runtime.session import run_model
from tests.models import frozen_keras, graph_model, small_mobilenet

RNG = np.random.default_rng(11)
PADS = ("Pad", "PadV2")


def ops(model) -> Counter:
    return Counter(n.op for n in model.graph_def.node)


def convs(model) -> dict:
    return {n.name: n for n in model.graph_def.node if n.op in ("Conv2D", "DepthwiseConv2dNative")}


def fold(model, *, exact: bool = True):
    """Run the pass, compare outputs on random inputs, return the result."""
    result = FoldPadIntoConvPass().run(model)
    feeds = {k: RNG.random([d or 5 for d in s.shape]).astype(np.float32) for k, s in model.signature.inputs.items()}
    before, after = run_model(model, feeds), run_model(result.model, feeds)
    for key in before:
        if exact:
            np.testing.assert_allclose(after[key], before[key], rtol=1e-5, atol=1e-5)
    return result


def kept(result) -> dict[str, str]:
    return {e.node: e.text for e in result.explanations if not e.fired}


def weights(*shape):
    import tensorflow as tf

    return tf.constant(RNG.normal(0, 0.5, shape).astype(np.float32))


def test_same_pads_is_tensorflows_rule():
    assert same_pads(224, 3, 2, 1) == (0, 1)  # MobileNetV2's correct_pad for even sizes
    assert same_pads(224, 7, 2, 1) == (2, 3)  # ResNet50 pads (3, 3): not SAME, so EXPLICIT
    assert same_pads(15, 3, 2, 1) == (1, 1)
    assert same_pads(8, 3, 1, 2) == (2, 2)


@pytest.mark.parametrize("size", [16, 15])
def test_keras_mobilenet_v2_style_strided_blocks(size):
    """ZeroPadding2D(correct_pad) + DepthwiseConv2D / Conv2D stride 2 VALID, as keras.applications.MobileNetV2."""
    import keras

    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((size, size, 3))
    x = L.ZeroPadding2D(((0, 1), (0, 1)), name="block_pad")(inp)
    x = L.DepthwiseConv2D(3, strides=2, padding="valid", name="block_depthwise")(x)
    x = L.ZeroPadding2D(((0, 1), (0, 1)), name="conv_pad")(L.ReLU()(x))
    x = L.Conv2D(4, 3, strides=2, padding="valid", name="conv")(x)
    model = frozen_keras(keras.Model(inp, x))
    keras.backend.clear_session()
    assert sum(ops(model)[p] for p in PADS) == 2
    result = fold(model)
    assert sum(ops(result.model)[p] for p in PADS) == 0
    assert result.counters["fold_pad_into_conv"] == 2 and result.counters["kept"] == 0
    paddings = {n.op: n.attr["padding"].s.decode() for n in convs(result.model).values()}
    # 16 is even: SAME pads (0, 1) exactly as the Pad did; 15 is odd: SAME would pad (1, 1), so EXPLICIT.
    expect = "SAME" if size % 2 == 0 else "EXPLICIT"
    assert paddings == {"DepthwiseConv2dNative": expect, "Conv2D": expect}
    if expect == "EXPLICIT":
        dw = next(n for n in convs(result.model).values() if n.op == "DepthwiseConv2dNative")
        assert list(dw.attr["explicit_paddings"].list.i) == [0, 0, 0, 1, 0, 1, 0, 0]


def test_keras_resnet50_style_stem():
    """ZeroPadding2D(3) + Conv2D 7x7/2 VALID folds (EXPLICIT); ZeroPadding2D(1) + MaxPool is kept, with the reason."""
    import keras

    keras.utils.set_random_seed(1)
    L = keras.layers
    inp = keras.Input((32, 32, 3))
    x = L.ZeroPadding2D(3, name="conv1_pad")(inp)
    x = L.Conv2D(8, 7, strides=2, padding="valid", name="conv1_conv")(x)
    x = L.ReLU(name="conv1_relu")(L.BatchNormalization(name="conv1_bn")(x))
    x = L.ZeroPadding2D(1, name="pool1_pad")(x)
    x = L.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    model = frozen_keras(keras.Model(inp, x))
    keras.backend.clear_session()
    result = fold(model)
    assert result.counters["fold_pad_into_conv"] == 1 and result.counters["kept"] == 1
    (conv,) = convs(result.model).values()
    assert conv.attr["padding"].s == b"EXPLICIT" and list(conv.attr["explicit_paddings"].list.i) == [0, 0, 3, 3, 3, 3,
                                                                                                     0, 0]
    (pad,) = [n for n in result.model.graph_def.node if n.op in PADS]
    assert kept(result) == {pad.name: f"{pad.op} '{pad.name}' kept: read by MaxPool '{pad_reader(result, pad)}', "
                                      "not as input 0 of Conv2D|DepthwiseConv2dNative"}


def pad_reader(result, pad) -> str:
    return next(n.name for n in result.model.graph_def.node if any(i == pad.name for i in n.input))


def test_real_mobilenet_v2_every_pad_folds():
    model = small_mobilenet()
    n_pads = sum(ops(model)[p] for p in PADS)
    assert n_pads == 4  # block_1, 3, 6 and 13 pad before their stride-2 depthwise convs
    result = fold(model)
    assert sum(ops(result.model)[p] for p in PADS) == 0 and result.counters["fold_pad_into_conv"] == n_pads
    assert result.model.node_count == model.node_count - 2 * n_pads  # each Pad and its paddings constant
    through_pipeline = Pipeline(["fold_pad_into_conv"]).run(model)
    assert through_pipeline.records[0].counters["fold_pad_into_conv"] == n_pads


def test_nchw_dilated_unknown_size_and_a_conv_already_explicit():
    import tensorflow as tf

    def build(x, d):
        # NCHW: H and W are dims 2 and 3.
        a = tf.nn.conv2d(tf.pad(x, [[0, 0], [0, 0], [1, 2], [0, 1]], name="pad_nchw"), weights(3, 3, 3, 4),
                         1, "VALID", data_format="NCHW", name="conv_nchw")
        # Dilation 2: SAME pads (k - 1) * d = 4 in all, (2, 2): exactly this Pad.
        b = tf.nn.conv2d(tf.pad(d, [[0, 0], [2, 2], [2, 2], [0, 0]], name="pad_dilated"), weights(3, 3, 3, 4), 1,
                         "VALID", dilations=2, name="conv_dilated")
        # Two Pads in a row: the first fold makes the conv EXPLICIT, the next round adds the second Pad to it.
        inner = tf.pad(d, [[0, 0], [1, 0], [0, 0], [0, 0]], name="pad_inner")
        c = tf.nn.conv2d(tf.pad(inner, [[0, 0], [0, 1], [1, 1], [0, 0]], name="pad_outer"), weights(2, 2, 3, 4), 1,
                         "VALID", name="conv_twice")
        return {"a": a, "b": b, "c": c}

    model = graph_model(build, {"x": ("float32", [1, 3, 6, 6]), "d": ("float32", [1, 6, 6, 3])})
    try:
        run_model(model, {"x": np.ones((1, 3, 6, 6), np.float32), "d": np.ones((1, 6, 6, 3), np.float32)})
        runs = True
    except Exception:  # a CPU build without NCHW convolutions: check the structure only
        runs = False
    result = fold(model) if runs else FoldPadIntoConvPass().run(model)
    assert not [n for n in result.model.graph_def.node if n.op in PADS]
    c = convs(result.model)
    assert list(c["conv_nchw"].attr["explicit_paddings"].list.i) == [0, 0, 0, 0, 1, 2, 0, 1]
    assert c["conv_dilated"].attr["padding"].s == b"SAME"
    assert list(c["conv_twice"].attr["explicit_paddings"].list.i) == [0, 0, 1, 1, 1, 1, 0, 0]
    # Height and width unknown: SAME cannot be proven equal, EXPLICIT always is.
    unknown = graph_model(lambda d: {"y": tf.nn.conv2d(tf.pad(d, [[0, 0], [2, 2], [2, 2], [0, 0]]), weights(3, 3, 3, 4),
                                                       1, "VALID", dilations=2, name="conv")},
                          {"d": ("float32", [1, None, None, 3])})
    assert convs(fold(unknown).model)["conv"].attr["padding"].s == b"EXPLICIT"


def test_what_is_kept_and_why():
    import tensorflow as tf

    def build(x, fill):
        w = weights(3, 3, 3, 4)
        zero = [[0, 0], [1, 1], [1, 1], [0, 0]]
        shared = tf.pad(x, zero, name="shared")
        outs = [tf.nn.conv2d(shared, w, 1, "VALID", name="conv_shared")]
        other = tf.nn.relu(shared, name="other")
        ones = tf.pad(x, zero, constant_values=1.0, name="ones")
        outs.append(tf.nn.conv2d(ones, w, 1, "VALID"))
        runtime = tf.raw_ops.PadV2(input=x, paddings=zero, constant_values=fill, name="runtime_fill")
        outs.append(tf.nn.conv2d(runtime, w, 1, "VALID"))
        # (A channel pad would not even run as written: the runtime's oneDNN Pad+Conv2D fusion drops it.)
        batch = tf.nn.conv2d(tf.pad(x, [[1, 0], [1, 1], [1, 1], [0, 0]], name="batch"), w, 1, "VALID")
        amounts = tf.pad(x, tf.reshape(tf.cast(tf.shape(x)[0] * 0 + 1, tf.int32) * tf.constant(zero), [4, 2]),
                         name="amounts")
        outs.append(tf.ensure_shape(tf.nn.conv2d(amounts, w, 1, "VALID"), [1, 6, 6, 4]))
        same = tf.pad(x, zero, name="before_same")
        outs.append(tf.nn.conv2d(same, w, 1, "SAME", name="conv_same")[:, 1:-1, 1:-1])
        return {"y": tf.add_n(outs, name="y"), "o": tf.identity(other, name="o"), "b": tf.identity(batch, name="b"), "p": tf.identity(tf.nn.conv2d(tf.pad(x, zero, name="sig"), w, 1,
                                                                              "VALID"), name="p"),
                "q": tf.pad(x, zero, name="q_pad")}

    def with_q(x, fill):
        out = build(x, fill)
        out["q_conv"] = tf.nn.conv2d(out["q"], weights(3, 3, 3, 2), 1, "VALID")
        return out

    model = graph_model(with_q, {"x": ("float32", [1, 6, 6, 3]), "fill": ("float32", [])})
    result = fold(model)
    reasons = kept(result)
    assert reasons["shared"] == "Pad 'shared' kept: also feeds 'other'"
    assert reasons["ones"] == "PadV2 'ones' kept: non-zero constant_values"
    assert reasons["runtime_fill"] == "PadV2 'runtime_fill' kept: constant_values is not a constant"
    assert reasons["batch"] == "Pad 'batch' kept: pads the batch or channel dimension"
    assert reasons["amounts"] == "Pad 'amounts' kept: input 1 is not a constant"
    assert reasons["before_same"] == ("Pad 'before_same' kept: its Conv2D 'conv_same' has padding='SAME', "
                                      "not one of 'VALID', 'EXPLICIT'")
    assert reasons["q_pad"] == "Pad 'q_pad' kept: is a signature node or init op"
    assert "sig" not in {n.name for n in result.model.graph_def.node}  # the one plain case folds
    assert result.counters["fold_pad_into_conv"] == 1 and result.counters["kept"] == len(reasons) == 7
    assert [note for note in result.notes if "also feeds" in note] == ["kept 1 Pad: also feeds 'other'"]
