"""Fold inference batch norms into the convolution or matmul before them.

GTT's ``fold_old_batch_norms`` matches only ``FusedBatchNorm`` v1 right after
``Conv2D``; TF2/Keras graphs hold ``FusedBatchNormV3`` (tf_keras) or an unfused
``x * m + (beta - mean * m)`` (Keras 3), after depthwise convs and after
``Conv2D + BiasAdd``. This pass handles all of them with three local rewrites,
repeated until nothing changes:

* **FusedBatchNorm / V2 / V3** (``is_training=False``, constant parameters, only
  output 0 read): ``y = x * s + o`` with ``s = gamma / sqrt(var + eps)`` and
  ``o = beta - mean * s``. If ``x`` comes from a foldable producer the weights
  are scaled by ``s`` and the batch-norm node *becomes* a ``BiasAdd`` of the
  same name (so consumers and signature names stay). Otherwise the node becomes
  ``Mul`` + ``Add`` with precomputed constants (``converted``), which removes
  the fused op and lets the runtime fuse the ``Mul``/``Add`` where it can.
  These two are rewrite rules (:class:`FoldBatchNorm`, :class:`ConvertBatchNorm`,
  see :mod:`graphopt.rewrite`), so ``graphopt explain SRC fold_all_batch_norms``
  says for each fused batch norm why it did not fold.
* **Mul by a per-channel constant** after a foldable producer: the constant is
  folded into the weights (and into the bias of an intervening ``BiasAdd``),
  and the ``Mul`` is bypassed.
* **Add / AddV2 / Sub of a per-channel constant** after a producer: becomes a
  ``BiasAdd`` (merged with an existing one), which the runtime fuses into the
  convolution (``_FusedConv2D``).

A *foldable producer* is ``Conv2D``, ``DepthwiseConv2dNative``, ``MatMul``
(weights as input b) or ``Conv2DBackpropInput`` with constant weights (Const,
possibly behind Identity), optionally followed by a ``BiasAdd`` with a constant
bias. Weights are scaled only when every node between them and the batch norm
has exactly one data consumer and is not a protected node; a convolution whose
output is read elsewhere too is left alone (duplicating it would cost a second
convolution), and reported as skipped.

Not done, on purpose: folding *forward* into the convolution after a batch norm
(DenseNet's pre-activation BNs sit after Concat and before a ReLU, so nothing
is linear up to the next convolution; and with SAME padding the offset does not
commute with zero padding). Those BNs are converted to Mul/Add instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from graphopt.graph.edit import GraphEditor
from graphopt.graph.names import join_tensor, split_tensor
from graphopt.model import Model
from graphopt.passes.base import Option, Pass, PassResult
from graphopt.rewrite import Const, Match, Rule, Tracer, apply_at
from graphopt.rewrite.rule import RewriteStats

FUSED_BN_OPS = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
PRODUCER_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul", "Conv2DBackpropInput")
_WEIGHT_INPUT = {"Conv2D": 1, "DepthwiseConv2dNative": 1, "MatMul": 1, "Conv2DBackpropInput": 1}
_FLOAT_TYPES = (1, 2, 19)  # DT_FLOAT, DT_DOUBLE, DT_HALF
_MAX_ROUNDS = 20


@dataclass
class _Producer:
    """A weighted op (``conv``) and the BiasAdd after it (``bias_add``, may be None)."""

    conv: Any
    bias_add: Any
    weights: np.ndarray
    channels: int
    channel_axis: int  # in the producer's output
    rank: int
    data_format: str  # "NHWC" or "NCHW", what a BiasAdd after it must use

    @property
    def output(self) -> Any:
        return self.bias_add if self.bias_add is not None else self.conv


def _out_channels(op: str, w: np.ndarray, transpose_b: bool) -> int:
    if op == "Conv2D":
        return w.shape[3]
    if op == "DepthwiseConv2dNative":
        return w.shape[2] * w.shape[3]
    if op == "Conv2DBackpropInput":
        return w.shape[2]
    return w.shape[0] if transpose_b else w.shape[1]


def _scale_weights(op: str, w: np.ndarray, s: np.ndarray, transpose_b: bool) -> np.ndarray:
    """Weights whose outputs come out multiplied by ``s`` per output channel."""
    w64 = w.astype(np.float64)
    if op == "Conv2D":  # [h, w, in, out]
        out = w64 * s
    elif op == "DepthwiseConv2dNative":  # [h, w, in, multiplier]; output channel = in * mult + m
        out = w64 * s.reshape(1, 1, w.shape[2], w.shape[3])
    elif op == "Conv2DBackpropInput":  # [h, w, out, in]
        out = w64 * s.reshape(1, 1, -1, 1)
    else:  # MatMul: [in, out], or [out, in] with transpose_b
        out = w64 * (s.reshape(-1, 1) if transpose_b else s)
    return out.astype(w.dtype)


def _attr(**fields: Any) -> Any:
    from tensorflow.core.framework.attr_value_pb2 import AttrValue

    return AttrValue(**fields)


def per_channel(c: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """``c`` as a length-``channels`` vector if broadcasting it over a rank-``rank`` tensor
    only varies along ``axis`` and leaves the shape unchanged; else None."""
    if c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    flat = c.reshape(-1).astype(np.float64)
    return np.full(channels, flat[0]) if flat.size == 1 else flat


def _format(ed: GraphEditor, node: Any) -> str:
    return ed.attr(node, "data_format").s.decode() or "NHWC"


def _scale_offset(ed: GraphEditor, m: Match) -> tuple[np.ndarray, np.ndarray]:
    """``y = x * s + o``: s = gamma / sqrt(var + eps), o = beta - mean * s, in float64."""
    gamma, beta, mean, var = (m.values[k].astype(np.float64) for k in ("gamma", "beta", "mean", "var"))
    s = gamma / np.sqrt(var + ed.attr(m.root, "epsilon").f)
    return s, beta - mean * s


def _batch_norm(op: Any, x: Any) -> Any:
    """The pattern of an inference batch norm with constant parameters (output 0 only: no batch statistics)."""
    return op[FUSED_BN_OPS](x, Const("gamma"), Const("beta"), Const("mean"), Const("var"), _name="bn",
                            is_training=False)


class FoldBatchNorm(Rule):
    """A fused batch norm after a weighted op (and its BiasAdd): weights scaled, the batch norm becomes a BiasAdd."""

    name = "fold_batch_norm"
    fired_verb, kept_verb = "folded", "not folded"

    def __init__(self, bias_add: bool) -> None:
        self.bias_add = bias_add

    def pattern(self, op: Any, x: Any) -> Any:
        y = op[PRODUCER_OPS](x, Const("w"), _name="conv", _variadic=True)
        return _batch_norm(op, op.BiasAdd(y, Const("bias"), _name="bias_add") if self.bias_add else y)

    def condition(self, m: Match) -> str | None:
        conv, ed = m.nodes["conv"], m.graph
        if conv.attr["T"].type not in _FLOAT_TYPES:
            return "producer is not floating point"
        fmt = _format(ed, conv)
        if self.bias_add and _format(ed, m.nodes["bias_add"]) != fmt:
            return "BiasAdd data format differs from the producer's"
        s, m.values["offset"] = _scale_offset(ed, m)
        m.values["scale"] = s
        if conv.op == "MatMul" or fmt != _format(ed, m.root) or _out_channels(conv.op, m.values["w"], False) != s.size:
            return "producer layout differs from the batch norm's"
        return None

    def rewrite(self, r: Any, m: Match) -> str:
        conv, s = m.nodes["conv"], m.values["scale"]
        weights = _scale_weights(conv.op, m.values["w"], s, False)
        inputs = [i for i in conv.input if not i.startswith("^")]
        inputs[_WEIGHT_INPUT[conv.op]] = r.const(weights, _name=conv.name + "/folded_weights", _like=conv)
        bias = m.values["offset"] + (m.values["bias"].astype(np.float64) * s if self.bias_add else 0.0)
        m.detail = f"into {conv.op} '{conv.name}'"
        return r.BiasAdd(r.copy(conv, *inputs), r.const(bias.astype(weights.dtype), _name=m.root.name + "/bias"),
                         T=conv.attr["T"], data_format=_format(m.graph, conv))


class ConvertBatchNorm(Rule):
    """A fused batch norm that cannot fold becomes ``Mul`` + ``AddV2`` with precomputed constants."""

    name = "convert_batch_norm"
    fired_verb, kept_verb = "converted to Mul and AddV2", "not converted"

    def pattern(self, op: Any, x: Any) -> Any:
        return _batch_norm(op, x)

    def rewrite(self, r: Any, m: Match) -> str:
        bn = m.root
        s, o = _scale_offset(m.graph, m)
        t = m.graph.attr(bn, "T")
        fmt = _format(m.graph, bn)
        np_dtype = {1: np.float32, 2: np.float64, 19: np.float16}.get(t.type, np.float32)
        shape = [-1] if fmt in ("NHWC", "NDHWC") else [-1] + [1] * (len(fmt) - 2)
        scale = r.const(s.reshape(shape).astype(np_dtype), _name=bn.name + "/scale")
        offset = r.const(o.reshape(shape).astype(np_dtype), _name=bn.name + "/offset")
        return r.AddV2(r.Mul(m["x"], scale, T=t, _name=bn.name + "/mul"), offset, T=t)


class FoldAllBatchNorms(Pass):
    name = "fold_all_batch_norms"
    description = ("Fold FusedBatchNorm/V2/V3 and unfused Mul/Add batch norms into a preceding Conv2D, "
                   "DepthwiseConv2dNative, MatMul or Conv2DBackpropInput (through BiasAdd); convert the rest "
                   "to Mul/Add.")
    options = {
        "convert_unfoldable": Option(bool, True, "turn fused batch norms that cannot fold into Mul+Add"),
        "merge_bias_adds": Option(bool, True, "turn Add/Sub of a per-channel constant after a producer into BiasAdd"),
    }

    edits_input = False  # works on its own copy
    explains = True  # the fused batch norms: fold_batch_norm and convert_batch_norm are rules
    applies_to_functions = True  # If/While branches and called functions too (graphopt.graph.functions)

    def run(self, model: Model) -> PassResult:
        from graphopt.graph import weightless as stand_ins

        # The copy edited holds stand-ins for the weights (the editor reads their values from `model`); only
        # the folded kernels are new bytes, the others come back at the end: one graph's worth of memory.
        given = model
        light, weights = stand_ins.strip(model.graph_def, model.protected_nodes, any_reader=True)
        model = model.with_graph(light)
        ed = GraphEditor(light, model.protected_nodes, weights=weights)
        self._counters = {"folded": 0, "converted": 0, "bias_merged": 0, "precomputed": 0, "skipped": 0,
                          "pruned": 0}
        self._notes: dict[str, str] = {}
        rules: list[Rule] = [FoldBatchNorm(bias_add=False), FoldBatchNorm(bias_add=True)]
        rules += [ConvertBatchNorm()] if self.config["convert_unfoldable"] else []
        tracer, stats = Tracer(), RewriteStats()
        for _ in range(_MAX_ROUNDS):
            changed = False
            tracer.next_round()
            for node in list(ed.graph_def.node):
                if node.name in ed.removed:
                    continue
                if node.op in FUSED_BN_OPS:
                    changed |= apply_at(ed, rules, node, tracer=tracer, stats=stats) is not None
                elif node.op == "Mul":
                    changed |= self._mul(ed, node)
                elif node.op in ("Add", "AddV2", "Sub") and self.config["merge_bias_adds"]:
                    changed |= self._add(ed, node)
            if not changed:
                break
        ed.commit()
        explanations = tracer.explanations(ed, rules)
        # The last rule tried says why a batch norm is left: convert's reason if converting, else fold's.
        self._notes.update({e.node: e.reason or "" for e in explanations if not e.fired})
        self._counters["folded"] += stats.fired["fold_batch_norm"]
        self._counters["converted"] = stats.fired["convert_batch_norm"]
        self._counters["pruned"] += stats.pruned
        counters: dict[str, int | float] = dict(self._counters)
        # Skips found in an early round may have been resolved by a later one; report the final ones.
        notes = [f"skipped {name}: {why}" for name, why in sorted(self._notes.items()) if ed.node(name) is not None
                 and ed.node(name).op in FUSED_BN_OPS + ("Mul",)]
        counters["skipped"] = len(notes)
        modified = any(counters[k] for k in ("folded", "converted", "bias_merged", "precomputed", "pruned"))
        if not modified:
            return PassResult(given, modified=False, counters=counters, notes=notes, explanations=explanations)
        stand_ins.restore(light, weights)
        return PassResult(model, modified=modified, counters=counters, notes=notes, explanations=explanations)

    def _prune(self, ed: GraphEditor, names: Any) -> None:
        self._counters["pruned"] += ed.prune_dead(names)

    def _precompute(self, ed: GraphEditor, node: Any, c: np.ndarray) -> bool:
        """Replace a computed constant operand (Rsqrt of a variance...) by one Const; the runtime
        would fold it anyway, but the graph gets smaller and the batch norm reads as Mul/Add."""
        for i, inp in enumerate(ed.data_inputs(node)):
            value = ed.const_value(inp)
            # Small operands only: a computed constant can be far larger than its sources (broadcasts).
            if value is not None and value.size <= 1 << 16 and ed.const_root(inp) is None:
                const = ed.add_const(node.name + "/precomputed", value, device=node.device)
                ed.set_input(node, i, const)
                self._prune(ed, [inp])
                self._counters["precomputed"] += 1
                return True
        return False

    # -- matching -----------------------------------------------------------------

    def _producer(self, ed: GraphEditor, tensor: str, *, for_weights: bool) -> tuple[_Producer | None, str]:
        """The foldable producer of ``tensor``, or None and why not."""
        node = ed.node(tensor)
        if node is None or split_tensor(tensor)[1] != 0:
            return None, "input is not output 0 of a node"
        bias_add = None
        if node.op == "BiasAdd":
            bias = ed.const_value(node.input[1])
            if bias is None:
                return None, "BiasAdd bias is not constant"
            bias_add, node = node, ed.node(node.input[0])
            if node is None or split_tensor(bias_add.input[0])[1] != 0:
                return None, "BiasAdd input is not a producer"
        if node.op not in PRODUCER_OPS:
            return None, f"input comes from {node.op}, not a conv/matmul"
        if node.attr["T"].type not in _FLOAT_TYPES:
            return None, "producer is not floating point"
        w = ed.const_value(node.input[_WEIGHT_INPUT[node.op]])
        if w is None:
            return None, f"weights of {node.name} are not constant"
        transpose_b = node.op == "MatMul" and ed.attr(node, "transpose_b").b
        channels = _out_channels(node.op, w, transpose_b)
        fmt = ed.attr(node, "data_format").s.decode() or "NHWC"
        if fmt not in ("NHWC", "NCHW"):
            return None, f"data format {fmt}"
        if bias_add is not None:
            bias_fmt = ed.attr(bias_add, "data_format").s.decode() or "NHWC"
            if bias_fmt != fmt:
                return None, "BiasAdd data format differs from the producer's"
        rank = 2 if node.op == "MatMul" else 4
        axis = rank - 1 if fmt == "NHWC" else 1
        prod = _Producer(node, bias_add, w, channels, axis, rank, fmt)
        if for_weights:
            chain = [node] + ([bias_add] if bias_add is not None else [])
            for n in chain:
                if n.name in ed.protected:
                    return None, f"{n.name} is a signature output or protected"
                readers = ed.data_consumers(n.name)
                if len(readers) != 1:
                    return None, f"{n.name} output has {len(readers)} consumers"
        return prod, ""

    # -- rewrites -------------------------------------------------------------------

    def _apply_scale(self, ed: GraphEditor, prod: _Producer, s: np.ndarray) -> None:
        conv = prod.conv
        transpose_b = conv.op == "MatMul" and ed.attr(conv, "transpose_b").b
        widx = _WEIGHT_INPUT[conv.op]
        old_w = conv.input[widx]
        new_w = ed.add_const(conv.name + "/folded_weights", _scale_weights(conv.op, prod.weights, s, transpose_b),
                             device=conv.device)
        ed.set_input(conv, widx, new_w)
        self._prune(ed, [old_w])
        if prod.bias_add is not None:
            b = ed.require_const(prod.bias_add.input[1])
            old_b = prod.bias_add.input[1]
            new_b = ed.add_const(prod.bias_add.name + "/folded_bias", (b.astype(np.float64) * s).astype(b.dtype),
                                 device=prod.bias_add.device)
            ed.set_input(prod.bias_add, 1, new_b)
            self._prune(ed, [old_b])

    def _become_bias_add(self, ed: GraphEditor, node: Any, prod: _Producer, offset: np.ndarray) -> None:
        """Turn ``node`` (same name, so consumers stay) into BiasAdd(producer, bias + offset)."""
        conv = prod.conv
        dtype = prod.weights.dtype
        bias = offset.astype(np.float64)
        old_bias_add = prod.bias_add
        if old_bias_add is not None:
            bias = bias + ed.require_const(old_bias_add.input[1]).astype(np.float64)
        old_inputs = list(node.input)
        controls = [i for i in old_inputs if i.startswith("^")]
        bias_name = ed.add_const(node.name + "/bias", bias.astype(dtype), device=node.device)
        fmt = _attr(s=prod.data_format.encode())
        ed.replace_node(node, "BiasAdd", [join_tensor(conv.name, 0), bias_name] + controls,
                        {"T": conv.attr["T"], "data_format": fmt})
        self._prune(ed, [split_tensor(i)[0] for i in old_inputs if not i.startswith("^")])

    def _split_const(self, ed: GraphEditor, node: Any, commutative: bool) -> tuple[str, np.ndarray] | None:
        ins = ed.data_inputs(node)
        if len(ins) != 2:
            return None
        c = ed.const_value(ins[1])
        if c is not None and ed.const_value(ins[0]) is None:
            return ins[0], c
        if commutative:
            c = ed.const_value(ins[0])
            if c is not None and ed.const_value(ins[1]) is None:
                return ins[1], c
        return None

    def _mul(self, ed: GraphEditor, node: Any) -> bool:
        if node.attr["T"].type not in _FLOAT_TYPES or ed.control_inputs(node):
            return False
        split = self._split_const(ed, node, commutative=True)
        if split is None:
            return False
        x, c = split
        prod, why = self._producer(ed, x, for_weights=True)
        if prod is None:
            if "not a conv" not in why and c.size > 1:
                self._notes[node.name] = why
            return self._precompute(ed, node, c)
        s = per_channel(c, prod.rank, prod.channel_axis, prod.channels)
        if s is None:
            self._notes[node.name] = f"constant of shape {list(c.shape)} is not per-channel"
            return False
        self._apply_scale(ed, prod, s)
        out = join_tensor(prod.output.name, 0)
        if node.name in ed.protected:
            # Keep the name a signature points at: the Mul becomes Identity(producer).
            old_inputs = list(node.input)
            ed.replace_node(node, "Identity", [out], {"T": _attr(type=node.attr["T"].type)})
            self._prune(ed, [split_tensor(i)[0] for i in old_inputs if split_tensor(i)[0] != prod.output.name])
        else:
            self._counters["pruned"] += ed.remove_and_rewire(node.name, [out])
        self._counters["folded"] += 1
        self._notes.pop(node.name, None)
        return True

    def _add(self, ed: GraphEditor, node: Any) -> bool:
        if node.attr["T"].type not in _FLOAT_TYPES or ed.control_inputs(node):
            return False
        split = self._split_const(ed, node, commutative=node.op != "Sub")
        if split is None:
            return False
        x, c = split
        prod, _ = self._producer(ed, x, for_weights=False)
        o = None if prod is None else per_channel(c, prod.rank, prod.channel_axis, prod.channels)
        if o is None:
            return self._precompute(ed, node, c)
        if node.op == "Sub":
            o = -o
        assert prod is not None  # per_channel found a channel axis on it
        old_bias_add = prod.bias_add
        self._become_bias_add(ed, node, prod, o)
        if old_bias_add is not None:
            self._prune(ed, [old_bias_add.name])
        self._counters["bias_merged"] += 1
        return True


PASSES = [FoldAllBatchNorms]
