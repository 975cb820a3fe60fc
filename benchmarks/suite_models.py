"""The benchmark suite's models, each written once as the SavedModel a user would hand to graphopt.

* five ``keras.applications`` architectures with ``weights=None`` and randomized
  batch-norm statistics (with mean 0 / variance 1 a BN is the identity and
  folding it proves nothing), exported with ``model.export`` (TF2 SavedModel);
* a TF1-style graph: ``VariableV2`` weights, Conv2D+BiasAdd followed by an
  *unfused* batch norm (Rsqrt/Mul/Sub/Add from ``tf.compat.v1.nn.batch_normalization``),
  Conv2D and depthwise convs followed by v1 ``FusedBatchNorm``, and
  ``CheckNumerics`` on the inference path, saved with ``simple_save``;
* the demo detector (:mod:`graphopt.demo`), wrapped and saved as-is the way the
  seed post did, when that module exists.

Each builder returns a :class:`SuiteModel`; builds are cached in a folder.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graphopt.testing import randomize_batch_norms

KERAS_MODELS = {
    "MobileNetV2": ("MobileNetV2", 224),
    "ResNet50": ("ResNet50", 224),
    "InceptionV3": ("InceptionV3", 299),
    "EfficientNetB0": ("EfficientNetB0", 224),
    "DenseNet121": ("DenseNet121", 224),
}
TF1_GRAPH = "TF1 graph (unfused + v1 BN, CheckNumerics)"
DETECTOR = "demo detector"
ALL_MODELS = [*KERAS_MODELS, TF1_GRAPH, DETECTOR]
SHORT_NAMES = {TF1_GRAPH: "tf1", DETECTOR: "detector"}


@dataclass
class SuiteModel:
    name: str
    path: Path  # the SavedModel as its author exported it
    samples: dict[str, np.ndarray] | None = None  # real inputs where random ones would mislead
    notes: list[str] = field(default_factory=list)


def slug(name: str) -> str:
    return SHORT_NAMES.get(name, name.lower())


def build_keras(name: str, path: Path) -> SuiteModel:
    import keras

    cls_name, size = KERAS_MODELS[name]
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, cls_name)(weights=None, input_shape=(size, size, 3))
    randomize_batch_norms(model)
    model.export(str(path), format="tf_saved_model", verbose=False)
    keras.backend.clear_session()
    return SuiteModel(name, path)


def build_tf1_graph(path: Path) -> SuiteModel:
    """A TF1 graph of the kind GTT's seed list was written for (about 5 MB of weights)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 224, 224, 3], name="image")

        def var(name: str, value: np.ndarray):
            return v1.get_variable(name, initializer=value.astype(np.float32), use_resource=False)

        def bn_stats(c: int, scope: str):
            return (var(f"{scope}/gamma", rng.uniform(0.5, 1.5, c)), var(f"{scope}/beta", rng.normal(0, 0.2, c)),
                    var(f"{scope}/mean", rng.normal(0, 0.5, c)), var(f"{scope}/variance", rng.uniform(0.5, 2.0, c)))

        def fused_v1(h, gamma, beta, mean, variance, name: str):
            # tf.compat.v1.nn.fused_batch_norm now emits V3; old graphs (and GTT's fold) have v1.
            return tf.raw_ops.FusedBatchNorm(x=h, scale=gamma, offset=beta, mean=mean, variance=variance,
                                             epsilon=1e-3, is_training=False, name=name)[0]

        def conv(h, cin: int, cout: int, stride: int, scope: str, kind: str, k: int = 1):
            w = var(f"{scope}/weights", rng.normal(0, (2.0 / (k * k * cin)) ** 0.5, (k, k, cin, cout)))
            h = tf.nn.conv2d(h, w, strides=stride, padding="SAME", name=f"{scope}/Conv2D")
            gamma, beta, mean, variance = bn_stats(cout, f"{scope}/bn")
            if kind == "unfused":  # Conv2D + BiasAdd + BN as separate Rsqrt/Mul/Sub/Add ops
                h = tf.nn.bias_add(h, var(f"{scope}/bias", rng.normal(0, 0.1, cout)), name=f"{scope}/BiasAdd")
                h = v1.nn.batch_normalization(h, mean, variance, beta, gamma, 1e-3, name=f"{scope}/bn/unfused")
            else:  # v1 FusedBatchNorm in inference mode, as TF1 slim models have
                h = fused_v1(h, gamma, beta, mean, variance, f"{scope}/bn/FusedBatchNorm")
            return tf.nn.relu6(h, name=f"{scope}/Relu6")

        def depthwise(h, c: int, scope: str):
            w = var(f"{scope}/depthwise_weights", rng.normal(0, 0.3, (3, 3, c, 1)))
            h = tf.nn.depthwise_conv2d(h, w, [1, 1, 1, 1], "SAME", name=f"{scope}/depthwise")
            gamma, beta, mean, variance = bn_stats(c, f"{scope}/bn")
            h = fused_v1(h, gamma, beta, mean, variance, f"{scope}/bn/FusedBatchNorm")
            return tf.nn.relu6(h, name=f"{scope}/Relu6")

        h = conv(x, 3, 32, 2, "conv0", "unfused", k=3)
        # MobileNet-v1 style: depthwise 3x3 then pointwise 1x1, strides on the pointwise conv.
        channels = [(32, 64, 2), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
                    (512, 512, 1)]
        for i, (cin, cout, stride) in enumerate(channels, 1):
            h = depthwise(h, cin, f"block{i}/dw")
            h = conv(h, cin, cout, stride, f"block{i}/conv", "unfused" if i % 2 else "fused")
            h = tf.debugging.check_numerics(h, f"block{i} activations", name=f"block{i}/CheckNumerics")
        h = tf.reduce_mean(h, axis=[1, 2], name="pool")
        w = var("logits/weights", rng.normal(0, 0.05, (512, 1000)))
        logits = tf.nn.bias_add(tf.matmul(h, w), var("logits/bias", np.zeros(1000)), name="logits")
        probs = tf.nn.softmax(logits, name="probs")
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            v1.saved_model.simple_save(sess, str(path), inputs={"image": x}, outputs={"probs": probs})
    return SuiteModel(TF1_GRAPH, path)


def build_detector(path: Path) -> SuiteModel:
    """The demo SSD detector wrapped with a uint8 image input and frozen as-is, as the seed's ``models/1``."""
    from graphopt.demo.detector import build_module
    from graphopt.demo.workflow import freeze_in_place, sample_image, save_as_is, wrap_module

    module = path.parent / (path.name + "-module")
    if not module.exists():
        build_module(module)
    graph, sess, inputs, outputs = wrap_module(module)
    try:
        graph_def = freeze_in_place(sess, graph)
    finally:
        sess.close()
    save_as_is(graph_def, inputs, outputs, path)
    return SuiteModel(DETECTOR, path, samples={"inputs": sample_image((1, 320, 320, 3))},
                      notes=["inputs: a 320x320 synthetic picture (random noise would give no detections)"])


def detector_available() -> bool:
    try:
        import graphopt.demo.detector  # noqa: F401
        import graphopt.demo.workflow  # noqa: F401
    except ImportError:
        return False
    return True


def build(name: str, cache: Path) -> SuiteModel:
    """The model's SavedModel under ``cache`` (built on first use; a half-built folder is rebuilt)."""
    path = cache / "models" / slug(name)
    done = path.parent / (path.name + ".done")
    builder: Callable[[Path], SuiteModel]
    if name in KERAS_MODELS:
        builder = lambda p: build_keras(name, p)  # noqa: E731
    elif name == TF1_GRAPH:
        builder = build_tf1_graph
    elif name == DETECTOR:
        builder = build_detector
    else:
        raise KeyError(name)
    if not done.exists():
        shutil.rmtree(path, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        model = builder(path)
        done.write_text("ok\n")
        return model
    if name == DETECTOR:
        from graphopt.demo.workflow import sample_image

        return SuiteModel(name, path, samples={"inputs": sample_image((1, 320, 320, 3))},
                          notes=["inputs: a 320x320 synthetic picture (random noise would give no detections)"])
    return SuiteModel(name, path)
