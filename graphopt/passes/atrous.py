"""``flatten_atrous_conv``: SpaceToBatchND -> Conv2D -> BatchToSpaceND as one dilated Conv2D, padding kept exact.

``tf.nn.convolution`` with a dilation rate (Keras 3's ``Conv2D(dilation_rate=r)``)
builds ``BatchToSpaceND(Conv2D(SpaceToBatchND(x, r, paddings), w, VALID), r, crops)``.
GTT's native transform of the same name (tensorflow/tools/graph_transforms/flatten_atrous.cc)
replaces that by a Conv2D with an upsampled filter and **always** ``padding=SAME``: it
never reads ``paddings`` nor ``crops``. That is right only for a SAME conv; on a
``padding="valid"`` dilated conv it changes the output (shape 11x11 -> 15x15 on a
15x15 input; on other graphs, where a later op hides the shape change, only values:
the max abs 0.0268 / rel 0.084 reported). It also reads the block shape and filter as
``Const`` nodes directly and aborts the whole process (``Check failed: key not found:
value``) when either sits behind an ``Identity``, and assumes a float32 filter.

This pass replaces it. The three ops compute exactly a dilated convolution of ``x``
padded by ``paddings - crops`` (S2B pads by ``paddings`` and splits the padded input
into ``r`` phases; a VALID conv per phase then B2S interleaving gives the dilated
VALID conv of the padded input, output ``o`` reading rows ``o, o+r, ...``; cropping
``c_before`` outputs is starting ``c_before`` rows later, i.e. padding that much less).
So the result is ``Conv2D(x, w, dilations=[1, r_h, r_w, 1])`` with padding ``VALID``
when ``paddings == crops``, ``SAME`` when ``paddings - crops`` is what SAME pads for
the dilated kernel, and ``EXPLICIT`` otherwise -- the same sum for every output.

Left as they are (counted as ``skipped``, with the reason in the notes):

* block shape, paddings or crops not constant, or not 2-D;
* a crop larger than its padding (negative padding);
* an inner conv that is not a stride-1, VALID, NHWC ``Conv2D``, or whose output
  something else reads;
* ``DepthwiseConv2dNative``: TF's CPU depthwise kernel has no dilation (without
  oneDNN it fails at run time: "Current kernel implementation does not support
  dilations"), so flattening it would make the model unservable there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphopt.graph.edit import GraphEditor, split_tensor
from graphopt.model import Model
from graphopt.passes.base import Pass, PassResult


def _attr(**fields: Any) -> Any:
    from tensorflow.core.framework.attr_value_pb2 import AttrValue

    return AttrValue(**fields)


def _ints(values: list[int]) -> Any:
    from tensorflow.core.framework.attr_value_pb2 import AttrValue

    return AttrValue(list=AttrValue.ListValue(i=[int(v) for v in values]))


def _small_const(ed: GraphEditor, tensor: str) -> Any:
    """The value of a constant parameter, also of a Const with control inputs (TF2 freezing gates Consts on
    NoOps that wait for nothing; the value does not depend on them)."""
    value = ed.const_value(tensor)
    node = ed.node(tensor)
    if value is None and node is not None and node.op == "Const" and split_tensor(tensor)[1] == 0:
        from tensorflow import make_ndarray

        value = make_ndarray(node.attr["value"].tensor)
    return value


def _why_not(ed: GraphEditor, b2s: Any) -> tuple[str, dict[str, Any]]:
    """The reason a BatchToSpaceND cannot be flattened ("" if it can), and what flattening needs."""
    conv = ed.node(b2s.input[0])
    if conv is None or split_tensor(b2s.input[0])[1] != 0 or conv.op not in ("Conv2D", "DepthwiseConv2dNative"):
        return "its input is not a convolution", {}
    if conv.op == "DepthwiseConv2dNative":
        return "a dilated DepthwiseConv2dNative has no CPU kernel without oneDNN", {}
    s2b = ed.node(conv.input[0])
    if s2b is None or s2b.op != "SpaceToBatchND" or split_tensor(conv.input[0])[1] != 0:
        return f"{conv.op} '{conv.name}' does not read a SpaceToBatchND", {}
    for inner in (conv, s2b):
        if inner.name in ed.protected or len(ed.data_consumers(inner.name)) != 1:
            return f"'{inner.name}' is read elsewhere too", {}
    values = [_small_const(ed, t) for t in (s2b.input[1], s2b.input[2], b2s.input[1], b2s.input[2])]
    if any(v is None for v in values):
        return "block shape, paddings or crops are not constant", {}
    block, paddings, block2, crops = (np.asarray(v).astype(np.int64) for v in values)
    if block.shape != (2,) or paddings.shape != (2, 2) or crops.shape != (2, 2) or not np.array_equal(block, block2):
        return "not a 2-D block with matching SpaceToBatchND/BatchToSpaceND", {}
    if (ed.attr(conv, "data_format").s or b"NHWC") != b"NHWC":
        return "data format is not NHWC", {}
    if list(ed.attr(conv, "strides").list.i) != [1, 1, 1, 1] or any(d != 1 for d in ed.attr(conv, "dilations").list.i):
        return "the inner conv is strided or dilated itself", {}
    if ed.attr(conv, "padding").s != b"VALID":
        return f"the inner conv pads ({ed.attr(conv, 'padding').s.decode()})", {}
    pads = paddings - crops
    if (pads < 0).any():
        return f"crops {crops.tolist()} exceed paddings {paddings.tolist()}", {}
    w = ed.const_value(conv.input[1])
    kernel = w.shape[:2] if w is not None else (ed.static_shape(conv.input[1]) or (None, None))[:2]
    if None in kernel:
        return "filter size unknown", {}
    return "", {"conv": conv, "s2b": s2b, "block": block, "pads": pads, "kernel": kernel}


def _padding(pads: np.ndarray, kernel: tuple[int, int], block: np.ndarray) -> tuple[bytes, list[int]]:
    """VALID, SAME (what SAME pads for the dilated kernel at stride 1) or EXPLICIT with these pads."""
    if not pads.any():
        return b"VALID", []
    same = []
    for k, r in zip(kernel, block):
        total = (int(k) - 1) * int(r)  # dilated kernel size minus one
        same.append([total // 2, total - total // 2])
    if np.array_equal(pads, np.array(same)):
        return b"SAME", []
    return b"EXPLICIT", [0, 0, *pads[0].tolist(), *pads[1].tolist(), 0, 0]


class FlattenAtrousConv(Pass):
    name = "flatten_atrous_conv"
    description = ("Turn SpaceToBatchND/Conv2D/BatchToSpaceND into one dilated Conv2D, keeping the exact padding "
                   "(GTT's native version ignores paddings and crops).")
    edits_input = False  # edits its own copy
    applies_to_functions = True

    def run(self, model: Model) -> PassResult:
        if not any(n.op == "BatchToSpaceND" for n in model.graph_def.node):
            return PassResult(model, modified=False, counters={"flattened": 0, "skipped": 0})
        out = model.copy()
        ed = GraphEditor(out.graph_def, out.protected_nodes)
        flattened, notes = 0, []
        for b2s in [n for n in out.graph_def.node if n.op == "BatchToSpaceND"]:
            why, found = _why_not(ed, b2s)
            if why:
                notes.append(f"kept BatchToSpaceND '{b2s.name}': {why}")
                continue
            conv, s2b = found["conv"], found["s2b"]
            padding, explicit = _padding(found["pads"], found["kernel"], found["block"])
            attrs = {"T": _attr(type=conv.attr["T"].type), "strides": _ints([1, 1, 1, 1]),
                     "padding": _attr(s=padding), "data_format": _attr(s=b"NHWC"),
                     "dilations": _ints([1, *found["block"].tolist(), 1])}
            if explicit:
                attrs["explicit_paddings"] = _ints(explicit)
            if "use_cudnn_on_gpu" in conv.attr:
                attrs["use_cudnn_on_gpu"] = _attr(b=conv.attr["use_cudnn_on_gpu"].b)
            controls = [i for n in (b2s, conv, s2b) for i in n.input if i.startswith("^")]
            old = [b2s.input[1], b2s.input[2], s2b.input[1], s2b.input[2]]
            x, w = s2b.input[0], conv.input[1]
            # The BatchToSpaceND's name stays (its readers are unchanged); the other two go.
            ed.replace_node(b2s, conv.op, [x, w] + list(dict.fromkeys(controls)), attrs)
            for node in (conv, s2b):
                ed.set_inputs(node, [])
            ed.remove([conv.name, s2b.name])
            ed.prune_dead(old)
            flattened += 1
        if not flattened:
            return PassResult(model, modified=False, counters={"flattened": 0, "skipped": len(notes)}, notes=notes)
        ed.commit()
        return PassResult(out, modified=True, counters={"flattened": flattened, "skipped": len(notes)}, notes=notes)


PASSES = [FlattenAtrousConv]
