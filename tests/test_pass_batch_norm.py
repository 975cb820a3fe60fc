"""fold_all_batch_norms: every pattern on a hand-built graph, then real Keras architectures.

Each test checks the structure the pass changed AND runs the graph before and after.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from graphopt.passes.batch_norm import FUSED_BN_OPS, FoldAllBatchNorms
from graphopt.runtime.session import run_model
from tests.models import frozen_keras, graph_model, randomize_batch_norms

RNG = np.random.default_rng(0)


def ops(model) -> Counter:
    return Counter(n.op for n in model.graph_def.node)


def bn_params(c: int):
    import tensorflow as tf

    return dict(scale=tf.constant(RNG.uniform(0.5, 1.5, c).astype(np.float32)),
                offset=tf.constant(RNG.normal(0, 0.3, c).astype(np.float32)),
                mean=tf.constant(RNG.normal(0, 0.5, c).astype(np.float32)),
                variance=tf.constant(RNG.uniform(0.5, 2.0, c).astype(np.float32)))


def weights(*shape, identity: bool = True):
    """A Const of random weights, read through an Identity as frozen TF1 variables are."""
    import tensorflow as tf

    w = tf.constant(RNG.normal(0, 0.5, shape).astype(np.float32))
    return tf.identity(w) if identity else w


def check(model, *, atol: float = 1e-4, **expect):
    """Run the pass, compare outputs on random inputs, return (result model, counters)."""
    result = FoldAllBatchNorms().run(model)
    feeds = {k: RNG.random([d or 2 for d in spec.shape]).astype(np.float32) for k, spec in model.signature.inputs.items()}
    before, after = run_model(model, feeds), run_model(result.model, feeds)
    for key in before:
        scale = max(1.0, float(np.abs(before[key]).max()))
        np.testing.assert_allclose(after[key], before[key], rtol=1e-4, atol=atol * scale)
    for key, value in expect.items():
        assert result.counters[key] == value, (key, result.counters, result.notes)
    return result.model, result


def image(c: int = 3, size: int = 8):
    return {"x": ("float32", [2, size, size, c])}


@pytest.mark.parametrize("op", ["FusedBatchNorm", "FusedBatchNormV3"])
def test_fused_after_conv2d(op):
    import tensorflow as tf

    def build(x):
        h = tf.nn.conv2d(x, weights(3, 3, 3, 5), 1, "SAME")
        y = getattr(tf.raw_ops, op)(x=h, **bn_params(5), epsilon=1e-3, is_training=False, name="bn")[0]
        return {"y": tf.nn.relu(y)}

    out, _ = check(graph_model(build, image()), folded=1, converted=0)
    assert not set(ops(out)) & set(FUSED_BN_OPS)
    nodes = {n.name: n for n in out.graph_def.node}
    assert nodes["bn"].op == "BiasAdd" and nodes[nodes["bn"].input[0]].op == "Conv2D"


def test_v3_after_depthwise_with_multiplier():
    import tensorflow as tf

    def build(x):
        h = tf.nn.depthwise_conv2d(x, weights(3, 3, 3, 2), [1, 1, 1, 1], "SAME")  # 3 in x 2 mult = 6 out
        return {"y": tf.raw_ops.FusedBatchNormV3(x=h, **bn_params(6), epsilon=1e-3, is_training=False)[0]}

    out, _ = check(graph_model(build, image()), folded=1)
    assert ops(out)["DepthwiseConv2dNative"] == 1 and ops(out)["BiasAdd"] == 1
    assert not set(ops(out)) & set(FUSED_BN_OPS)


def test_v3_after_conv_bias_add_merges_bias():
    import tensorflow as tf

    def build(x):
        h = tf.nn.bias_add(tf.nn.conv2d(x, weights(3, 3, 3, 4), 2, "VALID"), tf.constant(RNG.normal(size=4), tf.float32))
        return {"y": tf.raw_ops.FusedBatchNormV2(x=h, **bn_params(4), epsilon=1e-5, is_training=False)[0]}

    out, _ = check(graph_model(build, image()), folded=1)
    assert ops(out)["BiasAdd"] == 1  # the old BiasAdd is gone, the BN node became the only one
    assert not set(ops(out)) & set(FUSED_BN_OPS)


def test_conv2d_backprop_input():
    import tensorflow as tf

    def build(x):
        h = tf.nn.conv2d_transpose(x, weights(3, 3, 6, 3), [2, 16, 16, 6], 2, "SAME")  # filter [h, w, out, in]
        return {"y": tf.raw_ops.FusedBatchNormV3(x=h, **bn_params(6), epsilon=1e-3, is_training=False)[0]}

    out, _ = check(graph_model(build, image()), folded=1)
    assert ops(out)["Conv2DBackpropInput"] == 1 and not set(ops(out)) & set(FUSED_BN_OPS)


def test_nchw():
    import tensorflow as tf

    def build(x):
        h = tf.nn.conv2d(x, weights(3, 3, 3, 4), 1, "SAME", data_format="NCHW")
        return {"y": tf.raw_ops.FusedBatchNormV3(x=h, **bn_params(4), epsilon=1e-3, is_training=False,
                                                 data_format="NCHW")[0]}

    model = graph_model(build, {"x": ("float32", [2, 3, 8, 8])})
    feeds = {"x": RNG.random((2, 3, 8, 8)).astype(np.float32)}
    try:
        run_model(model, feeds)
        runs = True
    except Exception:  # CPU kernels without NCHW Conv2D: check the structure only
        runs = False
    if runs:
        out, _ = check(model, folded=1)
    else:
        out = FoldAllBatchNorms().run(model).model
    bias = [n for n in out.graph_def.node if n.op == "BiasAdd"]
    assert len(bias) == 1 and bias[0].attr["data_format"].s == b"NCHW"
    assert not set(ops(out)) & set(FUSED_BN_OPS)


def test_unfused_mul_add_after_matmul_bias_add():
    """tf.compat.v1 layers' unfused form: Rsqrt/Mul/Sub/Add over constants, after MatMul + BiasAdd."""
    import tensorflow as tf

    def build(x):
        h = tf.nn.bias_add(tf.matmul(x, weights(6, 4)), tf.constant(RNG.normal(size=4), tf.float32))
        p = bn_params(4)
        y = tf.compat.v1.nn.batch_normalization(h, p["mean"], p["variance"], p["offset"], p["scale"], 1e-3)
        return {"y": tf.nn.relu(y)}

    model = graph_model(build, {"x": ("float32", [3, 6])})
    assert ops(model)["Rsqrt"] == 1
    out, _ = check(model, folded=1, bias_merged=1)
    assert ops(out)["Rsqrt"] == 0 and ops(out)["Mul"] == 0 and ops(out)["Sub"] == 0
    assert ops(out)["BiasAdd"] == 1 and ops(out)["MatMul"] == 1


def test_unfused_mul_then_sub_after_conv_with_transpose_b_matmul():
    import tensorflow as tf

    def build(x):
        h = tf.nn.conv2d(x, weights(1, 1, 3, 4, identity=False), 1, "SAME")
        h = tf.subtract(h * tf.constant(RNG.uniform(0.5, 2, (1, 1, 1, 4)), tf.float32),
                        tf.constant(RNG.normal(size=4), tf.float32))
        flat = tf.reshape(h, [2, -1])
        m = tf.matmul(flat, weights(5, 8 * 8 * 4), transpose_b=True)
        return {"y": m * tf.constant(RNG.uniform(0.5, 2, 5), tf.float32) + 1.5}

    out, _ = check(graph_model(build, image()), folded=2, bias_merged=2)
    assert ops(out)["Mul"] == 0 and ops(out)["Sub"] == 0 and ops(out)["AddV2"] == 0


def test_not_per_channel_or_shared_output_is_left_alone():
    """A Mul whose constant varies over space, and a conv read twice, must not be folded."""
    import tensorflow as tf

    def build(x):
        h = tf.nn.conv2d(x, weights(3, 3, 3, 4), 1, "SAME")
        spatial = h * tf.constant(RNG.uniform(0.5, 2, (8, 8, 1)), tf.float32)
        g = tf.nn.conv2d(x, weights(3, 3, 3, 4), 1, "SAME")
        bn = tf.raw_ops.FusedBatchNormV3(x=g, **bn_params(4), epsilon=1e-3, is_training=False, name="shared_bn")[0]
        return {"a": spatial, "b": bn + tf.nn.relu(g)}

    out, result = check(graph_model(build, image()), folded=0, converted=1, skipped=2)
    assert ops(out)["Conv2D"] == 2
    assert any("not per-channel" in n for n in result.notes)
    assert any(n.startswith("skipped shared_bn/mul:") and "2 consumers" in n for n in result.notes)
    assert {n.name: n.op for n in out.graph_def.node}["shared_bn"] == "AddV2"


def test_bn_after_concat_is_converted_and_training_mode_skipped():
    import tensorflow as tf

    def build(x):
        h = tf.concat([x, tf.nn.relu(x)], axis=3)
        y = tf.raw_ops.FusedBatchNormV3(x=h, **bn_params(6), epsilon=1e-3, is_training=False, name="bn")[0]
        t = tf.raw_ops.FusedBatchNormV3(x=x, **bn_params(3), epsilon=1e-3, is_training=True,
                                        exponential_avg_factor=1.0, name="train_bn")[0]
        return {"y": y, "t": t}

    out, result = check(graph_model(build, image()), folded=0, converted=1, skipped=1)
    assert any("train_bn" in n and "is_training" in n for n in result.notes)
    names = {n.name: n.op for n in out.graph_def.node}
    assert names["bn"] == "AddV2" and names["train_bn"] == "FusedBatchNormV3"


def test_signature_output_is_the_batch_norm():
    """The BN node itself is the signature output: its name must survive (it becomes the BiasAdd)."""
    import tensorflow as tf

    def build(x):
        h = tf.nn.conv2d(x, weights(3, 3, 3, 4), 1, "SAME", name="conv")
        y = tf.raw_ops.FusedBatchNormV3(x=h, **bn_params(4), epsilon=1e-3, is_training=False, name="bn")
        m = tf.multiply(tf.nn.conv2d(x, weights(3, 3, 3, 4), 1, "SAME"), tf.constant(RNG.random(4), tf.float32),
                        name="mul_out")
        return {"y": y[0], "m": m}

    model = graph_model(build, image())
    out, _ = check(model, folded=2)
    names = {n.name: n.op for n in out.graph_def.node}
    assert names["bn"] == "BiasAdd" and names["mul_out"] == "Identity"


def test_shared_weights_fold_separately():
    import tensorflow as tf

    def build(x):
        w = weights(3, 3, 3, 4)
        a = tf.raw_ops.FusedBatchNormV3(x=tf.nn.conv2d(x, w, 1, "SAME"), **bn_params(4), epsilon=1e-3,
                                        is_training=False)[0]
        b = tf.raw_ops.FusedBatchNormV3(x=tf.nn.conv2d(x, w, 2, "SAME"), **bn_params(4), epsilon=1e-3,
                                        is_training=False)[0]
        return {"a": a, "b": b}

    check(graph_model(build, image()), folded=2)


# --- real architectures -----------------------------------------------------------------------------------------


def _tf_keras_randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__.startswith("BatchNormalization"):
            values = []
            for var in layer.weights:
                n = var.name
                lo_hi = (0.5, 2.0) if "variance" in n else (0.5, 1.5) if "gamma" in n else None
                values.append(rng.uniform(*lo_hi, var.shape) if lo_hi else rng.normal(0, 0.3, var.shape))
            layer.set_weights([v.astype("float32") for v in values])
    return model


@pytest.fixture(scope="module", params=[("keras", "MobileNetV2"), ("keras", "ResNet50"), ("tf_keras", "MobileNetV2"),
                                        ("tf_keras", "ResNet50")], ids=lambda p: f"{p[0]}-{p[1]}")
def keras_app(request):
    flavor, name = request.param
    if flavor == "tf_keras":
        import tf_keras as keras

        randomize = _tf_keras_randomize
    else:
        import keras

        randomize = randomize_batch_norms
    keras.utils.set_random_seed(0)
    km = getattr(keras.applications, name)(weights=None, input_shape=(64, 64, 3), classifier_activation=None)
    model = frozen_keras(randomize(km))
    keras.backend.clear_session()
    return name, model


def test_keras_applications_have_no_batch_norm_left(keras_app):
    name, model = keras_app
    n_bn = sum(ops(model)[op] for op in FUSED_BN_OPS) + ops(model)["Rsqrt"]
    assert n_bn >= 52
    out, result = check(model, atol=1e-4, folded=n_bn, converted=0, skipped=0)
    after = ops(out)
    assert sum(after[op] for op in FUSED_BN_OPS) == 0 and after["Rsqrt"] == 0
    # every BN became part of a conv's weights and bias: no Mul left, one BiasAdd per conv (+ the classifier)
    assert after["Mul"] == 0
    assert after["BiasAdd"] == after["Conv2D"] + after["DepthwiseConv2dNative"] + after["MatMul"]
    assert out.graph_def.ByteSize() < model.graph_def.ByteSize()


@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
def test_keras_layers_every_producer(flavor):
    """Conv2D, SeparableConv2D (depthwise + pointwise), DepthwiseConv2D, Conv2DTranspose and Dense, each + BN."""
    if flavor == "tf_keras":
        import tf_keras as keras

        randomize = _tf_keras_randomize
    else:
        import keras

        randomize = randomize_batch_norms
    keras.utils.set_random_seed(1)
    L = keras.layers
    inp = keras.Input((12, 12, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(6, 3, padding="same")(inp)))
    x = L.BatchNormalization()(L.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False)(x))
    x = L.BatchNormalization()(L.SeparableConv2D(8, 3)(x))
    x = L.BatchNormalization()(L.Conv2DTranspose(5, 3, strides=2)(x))
    x = L.BatchNormalization()(L.Dense(4)(L.Flatten()(x)))
    model = frozen_keras(randomize(keras.Model(inp, x)))
    keras.backend.clear_session()
    out, result = check(model, folded=5, converted=0, skipped=0)
    after = ops(out)
    assert sum(after[op] for op in FUSED_BN_OPS) == 0 and after["Rsqrt"] == 0 and after["Mul"] == 0
    assert after["Conv2DBackpropInput"] == 1 and after["DepthwiseConv2dNative"] == 2


def test_default_valued_attrs_stripped():
    """SavedModels written with strip_default_attrs omit epsilon=1e-4 and is_training=True: use op defaults."""
    import tensorflow as tf

    def build(x):
        h = tf.nn.conv2d(x, weights(3, 3, 3, 4), 1, "SAME")
        p = dict(bn_params(4), variance=tf.constant(np.full(4, 1e-4, np.float32)))  # epsilon matters: 2x
        y = tf.raw_ops.FusedBatchNormV3(x=h, **p, epsilon=1e-4, is_training=False, name="bn")[0]
        t = tf.raw_ops.FusedBatchNormV3(x=tf.nn.conv2d(x, weights(3, 3, 3, 4), 1, "SAME"), **bn_params(4),
                                        is_training=True, exponential_avg_factor=1.0, name="train_bn")[0]
        return {"y": y, "t": t}

    model = graph_model(build, image())
    for node in model.graph_def.node:
        if node.name == "bn":
            del node.attr["epsilon"]
            del node.attr["data_format"]
        if node.name == "train_bn":
            del node.attr["is_training"]
    out, result = check(model, folded=1, skipped=1)
    assert {n.name: n.op for n in out.graph_def.node}["train_bn"] == "FusedBatchNormV3"
