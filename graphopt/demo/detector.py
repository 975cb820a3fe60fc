"""A small SSD detector with a MobileNetV2 backbone, written as a TF1 Hub-format module.

It stands in for ``https://tfhub.dev/google/openimages_v4/ssd/mobilenet_v2/1``,
the module the seed post optimized, without any download: same interface
(signature ``default`` under tags ``[]``, input ``images`` float32
``[?, ?, ?, 3]`` in [0, 1], dict outputs ``detection_boxes``,
``detection_class_entities``, ``detection_class_names``,
``detection_class_labels``, ``detection_scores``) and the things such old
modules carry that GTT's seed list was written for:

- ``VariableV2`` ref variables whose read ``Identity`` nodes have ``_class: loc:@var``,
  and more ``_class`` attributes from ``colocate_with``;
- ``FusedBatchNorm`` (v1, ``is_training=False``) after every ``Conv2D`` and
  depthwise conv, with non-trivial moving mean/variance;
- ``Identity`` and ``CheckNumerics`` on the inference path;
- a training-only branch (a loss, a ``tf.summary`` and a Momentum optimizer
  whose slot variables double the weight bytes) off the inference path;
- a TF1 ``while_loop`` (``Enter``/``Exit``/``Merge``/``Switch``/``NextIteration``)
  over classes running ``NonMaxSuppressionV3`` per class, with TensorArrays.

The weights are random but seeded: the same arguments give the same module.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# MobileNetV2's inverted residual settings: expansion t, output channels c, repeats n, first stride s.
MOBILENET_V2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1))
LABELS = ("Person", "Car", "Dog", "Cat", "Bicycle", "Bird", "Tree", "Building")
# Open Images style machine ids for the class entities (made up, in the real format).
ENTITIES = tuple(f"/m/0demo{i:02d}" for i in range(len(LABELS)))
OUTPUT_KEYS = ("detection_boxes", "detection_class_entities", "detection_class_names", "detection_class_labels",
               "detection_scores")
# tensorflow_hub's module_def.proto: `message ModuleDef { Format format = 1; ... }`, FORMAT_V3 = 3.
# tensorflow_hub 0.16 no longer ships module_def_pb2, so the two bytes are written as the proto encodes them.
MODULE_DEF_V3 = b"\x08\x03"


def _make_divisible(v: float, divisor: int = 8) -> int:
    # MobileNetV2's channel rounding, as in the paper's reference code.
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


@contextlib.contextmanager
def control_flow_v1() -> Iterator[None]:
    """Build TF1 control flow (Enter/Exit/Switch/Merge) instead of While/If ops, as TF1.x did; restored after."""
    from tensorflow.python.ops import control_flow_util

    old = control_flow_util.ENABLE_CONTROL_FLOW_V2
    control_flow_util.ENABLE_CONTROL_FLOW_V2 = False
    try:
        yield
    finally:
        control_flow_util.ENABLE_CONTROL_FLOW_V2 = old


class _Builder:
    """Builds the graph: one object so layers share the seeded RNG and the variable list."""

    def __init__(self, tf: Any, seed: int) -> None:
        self.tf = tf
        self.rng = np.random.default_rng(seed)
        self.values: dict[Any, np.ndarray] = {}

    def var(self, name: str, value: np.ndarray, trainable: bool = True):
        tf = self.tf
        # use_resource=False: a ref VariableV2, as TF1 modules had (not a VarHandleOp resource).
        # The seeded value is loaded after initialisation, not baked into the initializer, so the
        # module's graph stays as small as a trained module's and the weights live in variables/.
        v = tf.compat.v1.get_variable(name, initializer=tf.compat.v1.zeros_initializer(), shape=value.shape,
                                      dtype=tf.float32, trainable=trainable, use_resource=False)
        self.values[v] = value
        return v

    def bn(self, x, channels: int, name: str):
        tf = self.tf
        with tf.compat.v1.variable_scope(name):
            gamma = self.var("gamma", self.rng.uniform(0.5, 1.5, channels).astype(np.float32))
            beta = self.var("beta", self.rng.normal(0, 0.1, channels).astype(np.float32))
            mean = self.var("moving_mean", self.rng.normal(0, 0.5, channels).astype(np.float32), trainable=False)
            var = self.var("moving_variance", self.rng.uniform(0.5, 2.0, channels).astype(np.float32),
                           trainable=False)
            y = tf.raw_ops.FusedBatchNorm(x=x, scale=gamma, offset=beta, mean=mean, variance=var,
                                                epsilon=1e-3, data_format="NHWC", is_training=False,
                                                name="FusedBatchNorm")[0]
        return y

    def conv(self, x, out_ch: int, k: int, stride: int, name: str, *, act: bool = True, bn: bool = True,
             gain: float = 1.0, bias: float = 0.0):
        tf = self.tf
        in_ch = int(x.shape[-1])
        std = gain * np.sqrt(2.0 / (k * k * in_ch))
        with tf.compat.v1.variable_scope(name):
            w = self.var("weights", self.rng.normal(0, std, (k, k, in_ch, out_ch)).astype(np.float32))
            y = tf.nn.conv2d(x, w, strides=[1, stride, stride, 1], padding="SAME", name="Conv2D")
            if bn:
                y = self.bn(y, out_ch, "BatchNorm")
            else:
                b = self.var("biases", self.rng.normal(bias, 0.1, out_ch).astype(np.float32))
                y = tf.nn.bias_add(y, b)
        return tf.nn.relu6(y, name=f"{name}/Relu6") if act else y

    def depthwise(self, x, stride: int, name: str):
        tf = self.tf
        ch = int(x.shape[-1])
        with tf.compat.v1.variable_scope(name):
            w = self.var("depthwise_weights", self.rng.normal(0, np.sqrt(2.0 / 9), (3, 3, ch, 1)).astype(np.float32))
            y = tf.nn.depthwise_conv2d(x, w, strides=[1, stride, stride, 1], padding="SAME")
            y = self.bn(y, ch, "BatchNorm")
        return tf.nn.relu6(y, name=f"{name}/Relu6")

    def inverted_residual(self, x, t: int, out_ch: int, stride: int, name: str):
        tf = self.tf
        in_ch = int(x.shape[-1])
        with tf.compat.v1.variable_scope(name):
            y = self.conv(x, in_ch * t, 1, 1, "expand") if t != 1 else x
            y = self.depthwise(y, stride, "depthwise")
            y = self.conv(y, out_ch, 1, 1, "project", act=False)
            if stride == 1 and in_ch == out_ch:
                y = tf.add(x, y, name="add")
        return y


def _anchors(grids: list[int], scales: list[float]) -> np.ndarray:
    """SSD anchors (ycenter, xcenter, h, w) for square feature maps, 3 aspect ratios per location."""
    out = []
    for grid, scale in zip(grids, scales):
        centers = (np.arange(grid, dtype=np.float32) + 0.5) / grid
        cy, cx = np.meshgrid(centers, centers, indexing="ij")
        for ratio in (1.0, 2.0, 0.5):
            h, w = scale / np.sqrt(ratio), scale * np.sqrt(ratio)
            out.append(np.stack([cy, cx, np.full_like(cy, h), np.full_like(cx, w)], axis=-1))
    # order: location-major, then ratio, matching the box predictor's reshape
    per_map, start = [], 0
    for _grid in grids:
        block = np.stack(out[start:start + 3], axis=2).reshape(-1, 4)
        per_map.append(block)
        start += 3
    return np.concatenate(per_map).astype(np.float32)


@dataclass
class DetectorGraph:
    """The built graph, its signature tensors by key, and the seeded value of every variable."""

    graph: Any
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    weights: dict[Any, np.ndarray]


def build_graph(*, alpha: float = 0.35, image_size: int = 192, max_per_class: int = 20,
                max_detections: int = 100, seed: int = 0) -> DetectorGraph:
    """Build the module's graph in a new ``tf.Graph`` (the training op sits in its TRAIN_OP collection)."""
    import tensorflow as tf

    graph = tf.Graph()
    num_classes = len(LABELS)
    with graph.as_default(), control_flow_v1():
        tf.compat.v1.set_random_seed(seed)
        b = _Builder(tf, seed)
        images = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="images")
        with tf.compat.v1.variable_scope("FeatureExtractor/MobilenetV2"):
            x = tf.raw_ops.ResizeBilinear(images=images, size=[image_size, image_size], name="ResizeImage")
            x = tf.identity(x * 2.0 - 1.0, name="Preprocessor/normalized")  # MobileNet expects [-1, 1]
            x = b.conv(x, _make_divisible(32 * alpha), 3, 2, "Conv")
            feature_maps, idx = [], 0
            for t, c, n, s in MOBILENET_V2_BLOCKS:
                for i in range(n):
                    x = b.inverted_residual(x, t, _make_divisible(c * alpha), s if i == 0 else 1,
                                            f"expanded_conv_{idx}" if idx else "expanded_conv")
                    idx += 1
                    if idx == 13:  # stride 16, as SSD taps MobileNetV2's layer 15 expansion
                        feature_maps.append(x)
            x = b.conv(x, 1280, 1, 1, "Conv_1")  # stays 1280 for alpha < 1, as in the paper
            feature_maps.append(x)
            x = b.conv(x, 64, 1, 1, "layer_19_1_Conv2d_2_1x1_64")
            x = b.conv(x, 128, 3, 2, "layer_19_2_Conv2d_2_3x3_s2_128")
            feature_maps.append(x)
        # CheckNumerics on every feature map, as the OD API's debug builds put on the path.
        feature_maps = [tf.debugging.check_numerics(f, f"feature map {i}", name=f"CheckNumerics_fm{i}")
                        for i, f in enumerate(feature_maps)]

        anchors_per_loc = 3
        encodings, logits = [], []
        with tf.compat.v1.variable_scope("BoxPredictor"):
            for i, fmap in enumerate(feature_maps):
                with tf.compat.v1.variable_scope(f"BoxPredictor_{i}"):
                    # small gains keep box offsets and scores in a trained model's range, so scores
                    # spread over (0, 1) instead of saturating (and tying) at 1.0
                    enc = b.conv(fmap, anchors_per_loc * 4, 3, 1, "BoxEncodingPredictor", act=False, bn=False,
                                 gain=0.05)
                    cls = b.conv(fmap, anchors_per_loc * num_classes, 3, 1, "ClassPredictor", act=False, bn=False,
                                 gain=0.05, bias=-2.0)
                encodings.append(tf.reshape(enc, [-1, 4]))
                logits.append(tf.reshape(cls, [-1, num_classes]))
        grids = [int(f.shape[1]) for f in feature_maps]
        anchors_np = _anchors(grids, [0.2, 0.45, 0.75])
        box_encodings = tf.debugging.check_numerics(tf.concat(encodings, 0), "box encodings")
        class_logits = tf.concat(logits, 0, name="class_logits")

        with tf.name_scope("Postprocessor"):
            anchors = tf.constant(anchors_np, name="anchors")
            # colocate the decoding with the encodings, as the OD API's box coder does: a `_class` attribute
            with tf.compat.v1.colocate_with(box_encodings):
                ty, tx, th, tw = tf.unstack(box_encodings / [10.0, 10.0, 5.0, 5.0], axis=1)
                ya, xa, ha, wa = tf.unstack(anchors, axis=1)
                yc, xc = ty * ha + ya, tx * wa + xa
                h, w = tf.exp(tf.minimum(th, 2.0)) * ha, tf.exp(tf.minimum(tw, 2.0)) * wa
                boxes = tf.clip_by_value(tf.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=1),
                                         0.0, 1.0)
                boxes = tf.identity(boxes, name="decoded_boxes")
            scores = tf.sigmoid(class_logits, name="scores")
            boxes_out, scores_out, labels_out = _per_class_nms(tf, boxes, scores, num_classes, max_per_class,
                                                               max_detections)
        label_index = labels_out - 1
        outputs = {
            "detection_boxes": tf.identity(boxes_out, name="detection_boxes"),
            "detection_scores": tf.identity(scores_out, name="detection_scores"),
            "detection_class_labels": tf.identity(labels_out, name="detection_class_labels"),
            "detection_class_entities": tf.gather(tf.constant(ENTITIES), label_index,
                                                  name="detection_class_entities"),
            "detection_class_names": tf.gather(tf.constant(LABELS), label_index, name="detection_class_names"),
        }
        _training_branch(tf, box_encodings, class_logits)
    return DetectorGraph(graph, {"images": images}, outputs, b.values)


def _per_class_nms(tf: Any, boxes, scores, num_classes: int, max_per_class: int, max_detections: int):
    """Per-class NonMaxSuppressionV3 in a TF1 while_loop over classes, then the top ``max_detections`` overall."""
    ta_boxes = tf.TensorArray(tf.float32, size=num_classes, element_shape=[max_per_class, 4], name="nms_boxes")
    ta_scores = tf.TensorArray(tf.float32, size=num_classes, element_shape=[max_per_class], name="nms_scores")

    def body(c, tb, ts):
        class_scores = tf.gather(scores, c, axis=1)
        keep = tf.image.non_max_suppression(boxes, class_scores, max_per_class, iou_threshold=0.5,
                                            score_threshold=0.05)
        pad = max_per_class - tf.shape(keep)[0]
        kept_boxes = tf.pad(tf.gather(boxes, keep), [[0, pad], [0, 0]])
        kept_scores = tf.pad(tf.gather(class_scores, keep), [[0, pad]])
        return c + 1, tb.write(c, kept_boxes), ts.write(c, kept_scores)

    _, tb, ts = tf.compat.v1.while_loop(lambda c, tb, ts: c < num_classes, body,
                                        [tf.constant(0), ta_boxes, ta_scores], back_prop=False,
                                        name="MultiClassNonMaxSuppression")
    all_boxes = tf.reshape(tb.stack(), [-1, 4])
    all_scores = tf.reshape(ts.stack(), [-1])
    k = min(max_detections, num_classes * max_per_class)
    top_scores, top_idx = tf.nn.top_k(all_scores, k=k, sorted=True)
    labels = tf.cast(top_idx // max_per_class + 1, tf.int64)
    return tf.gather(all_boxes, top_idx), top_scores, labels


def _training_branch(tf: Any, box_encodings, class_logits) -> None:
    """A loss, a summary and a Momentum step: off the inference path, as in a module exported from training."""
    with tf.name_scope("Loss"):
        loss = tf.reduce_mean(tf.square(box_encodings)) + tf.reduce_mean(tf.nn.softplus(class_logits))
        weights = [v for v in tf.compat.v1.trainable_variables() if v.op.name.endswith("weights")]
        loss = tf.add(loss, 4e-5 * tf.add_n([tf.nn.l2_loss(w) for w in weights]), name="total_loss")
    tf.compat.v1.summary.scalar("total_loss", loss)
    global_step = tf.compat.v1.get_variable(
        "global_step", shape=[], dtype=tf.int64, initializer=tf.compat.v1.zeros_initializer(), trainable=False,
        use_resource=False, collections=[tf.compat.v1.GraphKeys.GLOBAL_VARIABLES, tf.compat.v1.GraphKeys.GLOBAL_STEP])
    opt = tf.compat.v1.train.MomentumOptimizer(0.004, momentum=0.9)
    train_op = opt.minimize(loss, global_step=global_step, name="train_op")
    tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.TRAIN_OP, train_op)


def build_module(path: str | os.PathLike, **options: Any) -> Path:
    """Write the detector as a TF1 Hub-format module folder at ``path`` and return it.

    The folder is a TF1 SavedModel (one meta graph, tags ``[]``, signature
    ``default``, weights in ``variables/``) plus ``tfhub_module.pb``, as
    ``hub.Module`` exported them. ``options`` go to :func:`build_graph`.
    """
    import tensorflow as tf

    path = Path(path)
    built = build_graph(**options)
    inputs, outputs = built.inputs, built.outputs
    with built.graph.as_default(), tf.compat.v1.Session(graph=built.graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        # one run that feeds every initializer its seeded value (var.load would be a run per variable)
        sess.run([v.initializer for v in built.weights],
                 feed_dict={v.initializer.inputs[1]: value for v, value in built.weights.items()})
        signature = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs={k: tf.compat.v1.saved_model.utils.build_tensor_info(t) for k, t in inputs.items()},
            outputs={k: tf.compat.v1.saved_model.utils.build_tensor_info(t) for k, t in outputs.items()},
            method_name=tf.compat.v1.saved_model.signature_constants.PREDICT_METHOD_NAME)
        builder = tf.compat.v1.saved_model.Builder(str(path))
        builder.add_meta_graph_and_variables(sess, tags=[], signature_def_map={"default": signature},
                                             strip_default_attrs=False)
        builder.save()
    (path / "tfhub_module.pb").write_bytes(MODULE_DEF_V3)
    return path
