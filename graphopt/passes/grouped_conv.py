"""Grouped ``Conv2D`` as ops every TensorFlow CPU runtime runs: depthwise, or one convolution per group.

A ``Conv2D`` whose filter has fewer input channels than its input is a grouped
convolution (Keras 3 ``Conv2D(groups=g)``; ConvNeXt's 7x7 "depthwise" convs are
``groups == channels``). Keras compiles them with XLA because TensorFlow's CPU
kernels fall short: the plain ``Conv2D`` kernel runs groups (slowly without
oneDNN: 72 ms where a depthwise conv takes 3 ms, measured on a 56x56x96 7x7
conv), but once Grappler's remapper fuses the bias into ``_FusedConv2D`` --
which it does at the first request, and graphopt's ``grappler_optimize`` does
offline -- the kernel refuses: "Fused conv implementation does not support
grouped convolutions for now" (unless oneDNN rewrites it first). So once a
grouped conv leaves its XLA cluster (``inline_functions``) it is rewritten:

* ``groups == channels`` (one input channel per group), NHWC, stride and
  dilation as ``DepthwiseConv2dNative`` supports them (no dilation: the CPU
  depthwise kernel has none without oneDNN): a ``DepthwiseConv2dNative`` with
  the filter ``[kh, kw, 1, C*m]`` reshaped to ``[kh, kw, C, m]``. Output channel
  ``c*m + j`` is input channel ``c`` times filter ``[:, :, 0, c*m + j]`` in both
  ops, so this is the same sum, term for term;
* otherwise: ``Split`` the input into ``groups`` along channels, one
  ``Conv2D`` per group with its slice of the filter, ``ConcatV2`` back -- the
  definition of a grouped convolution.

The node keeps its name (the depthwise conv, or the concat), so readers are
unchanged. Only NHWC convs whose input channel count is known statically are
rewritten; the others are reported as skipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphopt.graph.edit import GraphEditor
from graphopt.model import Model
from graphopt.passes.base import Option, Pass, PassResult


def _attr(**fields: Any) -> Any:
    from tensorflow.core.framework.attr_value_pb2 import AttrValue

    return AttrValue(**fields)


def _ints(values: list[int]) -> Any:
    from tensorflow.core.framework.attr_value_pb2 import AttrValue

    return AttrValue(list=AttrValue.ListValue(i=values))


def _copy(value: Any) -> Any:
    # replace_node clears the node's attributes before setting the new ones: never pass it its own.
    out = type(value)()
    out.CopyFrom(value)
    return out


def filter_shape(ed: GraphEditor, tensor: str) -> tuple[int, int, int, int] | None:
    """``(kh, kw, input channels per group, output channels)`` of a conv filter, if known."""
    shape = ed.static_shape(tensor)
    if shape is None or None in shape:
        w = ed.const_value(tensor)
        shape = None if w is None else tuple(int(d) for d in w.shape)
    if shape is None or len(shape) != 4:
        return None
    kh, kw, cin, cout = (int(d) for d in shape)  # type: ignore[arg-type]  # None ruled out above
    return kh, kw, cin, cout


def grouping(ed: GraphEditor, node: Any) -> tuple[int, int, str]:
    """``(groups, input channels, why not)`` of a Conv2D: groups 1 = not grouped; 0 = unknown (``why`` says)."""
    fmt = ed.attr(node, "data_format").s.decode() or "NHWC"
    kernel = filter_shape(ed, node.input[1])
    if kernel is None:
        return 0, 0, "filter shape unknown"
    shape = ed.static_shape(node.input[0])
    axis = 3 if fmt == "NHWC" else 1
    channels = None if shape is None or len(shape) != 4 else shape[axis]
    if channels is None:
        return 0, 0, "input channel count unknown"
    per_group = kernel[2]
    if per_group == channels:
        return 1, channels, ""
    if per_group <= 0 or channels % per_group or kernel[3] % (channels // per_group):
        return 0, channels, f"{channels} input channels do not split into groups of {per_group}"
    if fmt != "NHWC":
        return 0, channels, f"data format {fmt}"
    return channels // per_group, channels, ""


def rewrite_grouped_conv(ed: GraphEditor, node: Any, *, depthwise: bool = True) -> str:
    """Rewrite one grouped NHWC Conv2D in place; returns ``"depthwise"``/``"split"``, or ``""`` if not grouped.

    Raises ValueError with the reason when the conv is grouped (or may be) but cannot be rewritten.
    """
    groups, channels, why = grouping(ed, node)
    if groups == 1:
        return ""
    if groups == 0:
        raise ValueError(why)
    x, filt = node.input[0], node.input[1]
    controls = [i for i in node.input if i.startswith("^")]
    t = _copy(node.attr["T"])
    dilations = list(ed.attr(node, "dilations").list.i) or [1, 1, 1, 1]
    strides = list(ed.attr(node, "strides").list.i)
    padding = ed.attr(node, "padding").s
    common = {"T": t, "strides": _copy(ed.attr(node, "strides")), "padding": _copy(ed.attr(node, "padding")),
              "data_format": _attr(s=b"NHWC")}
    if padding == b"EXPLICIT":
        common["explicit_paddings"] = _copy(ed.attr(node, "explicit_paddings"))
    w = ed.const_value(filt)
    kh, kw, _, out_channels = filter_shape(ed, filt) or (0, 0, 0, 0)  # known: grouping() read it
    if (depthwise and groups == channels and dilations == [1, 1, 1, 1] and strides[1] == strides[2]):
        multiplier = out_channels // channels
        if w is not None:
            new_filter = ed.add_const(node.name + "/depthwise_filter",
                                      w.reshape(w.shape[0], w.shape[1], channels, multiplier), device=node.device)
        else:
            shape = ed.add_const(node.name + "/depthwise_shape", np.array([kh, kw, channels, multiplier], np.int32),
                                 device=node.device)
            new_filter = ed.add_node(node.name + "/depthwise_filter", "Reshape", [filt, shape],
                                     {"T": t, "Tshape": _attr(type=3)}, device=node.device).name
        attrs = dict(common, dilations=_ints([1, 1, 1, 1]))
        ed.replace_node(node, "DepthwiseConv2dNative", [x, new_filter] + controls, attrs)
        ed.prune_dead([filt])
        return "depthwise"
    per_out = out_channels // groups
    axis = ed.add_const(node.name + "/group_axis", np.array(3, np.int32), device=node.device)
    split = ed.add_node(node.name + "/split_groups", "Split", [axis, x],
                        {"T": t, "num_split": _attr(i=groups)}, device=node.device)
    if w is None:
        filters = ed.add_node(node.name + "/split_filter", "Split", [axis, filt],
                              {"T": t, "num_split": _attr(i=groups)}, device=node.device).name
    convs = []
    for g in range(groups):
        if w is not None:
            part = ed.add_const(f"{node.name}/filter_{g}", np.ascontiguousarray(w[..., g * per_out:(g + 1) * per_out]),
                                device=node.device)
        else:
            part = f"{filters}:{g}" if g else filters
        conv = ed.add_node(f"{node.name}/group_{g}", "Conv2D", [f"{split.name}:{g}" if g else split.name, part],
                           dict(common, dilations=_ints(dilations), use_cudnn_on_gpu=_attr(b=True)),
                           device=node.device)
        convs.append(conv.name)
    concat_axis = ed.add_const(node.name + "/concat_axis", np.array(3, np.int32), device=node.device)
    ed.replace_node(node, "ConcatV2", convs + [concat_axis] + controls,
                    {"T": t, "N": _attr(i=groups), "Tidx": _attr(type=3)})
    ed.prune_dead([filt])
    return "split"


class RewriteGroupedConvs(Pass):
    name = "rewrite_grouped_convs"
    description = ("Rewrite grouped Conv2D (Keras groups>1, XLA-compiled) as DepthwiseConv2dNative when "
                   "groups == channels, else Split + one Conv2D per group + ConcatV2.")
    options = {
        "depthwise": Option(bool, True, "use DepthwiseConv2dNative where groups == channels (else split too)"),
    }
    edits_input = False  # edits its own copy
    applies_to_functions = True

    def run(self, model: Model) -> PassResult:
        if not any(n.op == "Conv2D" for n in model.graph_def.node):
            return PassResult(model, modified=False, counters={"depthwise": 0, "split": 0, "skipped": 0})
        copy = model.copy()
        ed = GraphEditor(copy.graph_def, copy.protected_nodes)
        counters: dict[str, int | float] = {"depthwise": 0, "split": 0, "skipped": 0}
        notes = []
        for node in [n for n in copy.graph_def.node if n.op == "Conv2D"]:
            try:
                kind = rewrite_grouped_conv(ed, node, depthwise=self.config["depthwise"])
            except ValueError as exc:
                counters["skipped"] += 1
                notes.append(f"kept Conv2D '{node.name}': {exc}")
                continue
            if kind:
                counters[kind] += 1
        if not counters["depthwise"] and not counters["split"]:
            return PassResult(model, modified=False, counters=counters, notes=notes)
        ed.commit()
        return PassResult(copy, modified=True, counters=counters, notes=notes)


PASSES = [RewriteGroupedConvs]
