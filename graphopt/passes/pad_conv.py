"""Fold a zero ``Pad`` into the convolution it feeds: one op instead of two, no padded copy of the input.

Keras writes ``ZeroPadding2D`` + ``Conv2D(padding="valid")`` where a framework
with asymmetric padding would write one convolution: MobileNetV2 before every
stride-2 depthwise conv (pad ``(0, 1)``), ResNet50 before its 7x7 stem (pad
``3``). ``Conv2D`` and ``DepthwiseConv2dNative`` take ``padding="EXPLICIT"``
with ``explicit_paddings`` (TF 2.21 op registry, CPU kernels for NHWC and
NCHW), which pads with zeros exactly as a ``Pad`` does, so

    Conv2D(Pad(x, p), w, padding=VALID)  ->  Conv2D(x, w, padding=EXPLICIT, explicit_paddings=p)

and a conv that is already EXPLICIT adds the Pad's amounts to its own. Where
``SAME`` padding would pad exactly as the Pad does -- which depends on the
input's height and width, the stride, kernel size and dilation, so only when
the input's spatial size is known statically -- the conv becomes ``SAME``
instead, the form every runtime fuses.

The Pad stays, and ``graphopt explain`` says why, when it pads with a non-zero
value (``PadV2`` ``constant_values``, or one that is not constant), pads the
batch or channel dimension, feeds anything besides the conv, is a signature
output, or its amounts are not constant.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphopt.rewrite import Const, Match, Refuse, Rule, RulePass

CONV_OPS = ("Conv2D", "DepthwiseConv2dNative")


def same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """What SAME padding adds before and after a spatial dimension (TensorFlow's rule, ``GetWindowedOutputSize``)."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


class FoldPadIntoConv(Rule):
    name = "fold_pad_into_conv"
    subject = "pad"
    fired_verb = "folded"
    kept_verb = "kept"

    def pattern(self, op: Any, x: Any, w: Any) -> Any:
        pad = op["Pad", "PadV2"](x, Const("paddings"), _name="pad", _variadic=True)
        return op[CONV_OPS](pad, w, _name="conv", padding=("VALID", "EXPLICIT"))

    def condition(self, m: Match) -> str | None:
        pad = m.nodes["pad"]
        if pad.op == "PadV2":
            fill = m.graph.const_value(pad.input[2])
            if fill is None:
                return "constant_values is not a constant"
            if np.any(fill != 0):
                return "non-zero constant_values"
        paddings = m.values["paddings"]
        if paddings.shape != (4, 2):
            return f"paddings of shape {list(paddings.shape)}, not [4, 2]"
        if np.any(paddings[self._others(m)] != 0):
            return "pads the batch or channel dimension"
        return None

    def rewrite(self, r: Any, m: Match) -> str:
        conv = m.nodes["conv"]
        h, w = self._spatial(m)
        pads = m.values["paddings"].astype(np.int64)
        total = [int(pads[h, 0]), int(pads[h, 1]), int(pads[w, 0]), int(pads[w, 1])]
        if m.attr(conv, "padding") == "EXPLICIT":
            old = list(m.attr(conv, "explicit_paddings"))
            if len(old) != 8:
                raise Refuse(f"has {len(old)} explicit_paddings, not 8", conv)
            total = [a + b for a, b in zip(total, old[2 * h:2 * h + 2] + old[2 * w:2 * w + 2])]
        elif total == self._same(m, h, w):
            m.detail = f"into {conv.op} '{conv.name}' as SAME padding"
            return r.copy(conv, m["x"], m["w"], padding="SAME", explicit_paddings=[])
        explicit = [0] * 8
        explicit[2 * h:2 * h + 2], explicit[2 * w:2 * w + 2] = total[:2], total[2:]
        m.detail = f"into {conv.op} '{conv.name}' as EXPLICIT padding {total}"
        return r.copy(conv, m["x"], m["w"], padding="EXPLICIT", explicit_paddings=explicit)

    @staticmethod
    def _spatial(m: Match) -> tuple[int, int]:
        return (2, 3) if m.attr("conv", "data_format") == "NCHW" else (1, 2)

    def _others(self, m: Match) -> list[int]:
        h, w = self._spatial(m)
        return [d for d in range(4) if d not in (h, w)]

    def _same(self, m: Match, h: int, w: int) -> list[int] | None:
        """The pads SAME would add to ``x``, or None where ``x``'s height or width is not known."""
        shape, kernel = m.graph.static_shape(m["x"]), m.graph.static_shape(m["w"])
        if shape is None or kernel is None or len(shape) != 4 or len(kernel) != 4:
            return None
        size_h, size_w, k_h, k_w = shape[h], shape[w], kernel[0], kernel[1]
        strides, dilations = m.attr("conv", "strides"), m.attr("conv", "dilations")
        if size_h is None or size_w is None or k_h is None or k_w is None or len(strides) != 4 or len(dilations) != 4:
            return None
        return [*same_pads(size_h, k_h, strides[h], dilations[h]), *same_pads(size_w, k_w, strides[w], dilations[w])]


class FoldPadIntoConvPass(RulePass):
    name = "fold_pad_into_conv"
    description = ("Fold a zero Pad/PadV2 of height and width into the Conv2D/DepthwiseConv2dNative it feeds "
                   "(EXPLICIT padding, or SAME where exactly equal).")
    rules = (FoldPadIntoConv(),)


PASSES = [FoldPadIntoConvPass]
