"""Lossy weight compression: float32 weights stored as float16, or as int8 with per-channel scales.

Both passes keep the graph's arithmetic in float32. A compressed weight keeps
its node name, so nothing that reads it changes:

* ``weights_to_fp16``: ``w`` (Const float32) becomes ``w/fp16`` (Const half)
  -> ``w`` (Cast to float32).
* ``weights_to_int8``: ``w`` becomes ``w/int8`` (Const int8) -> ``w/dequantize``
  (Cast to float32) -> ``w`` (Mul by ``w/scale``, float32, shaped to broadcast
  along the weight's output-channel axis).

The ops after the Consts only read constants, so TensorFlow constant-folds
them when a session builds its executor (Grappler's constant folding, or the
classic graph optimizer that still runs when Grappler is switched off): the
file is smaller, the running graph is the float32 graph with rounded weights.

Unlike GTT's ``quantize_weights`` (per-tensor, and NaN on an all-zero constant
of >= 1024 elements) the int8 pass is per output channel and exact on all-zero
and constant tensors; tensors holding NaN/Inf are left as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphopt.graph.edit import GraphEditor
from graphopt.model import Model
from graphopt.passes.base import Option, Pass, PassResult

# Ops whose reading is transparent for "which op consumes this weight".
_PASS_THROUGH = {"Identity", "IdentityN", "Snapshot", "StopGradient", "PreventGradient"}
_FP16_MAX = float(np.finfo(np.float16).max)


def channel_axes(shape: tuple[int, ...], readers: list[tuple[Any, int]]) -> tuple[int, ...] | None:
    """Axes of a weight that index the output channels of the ops reading it; ``None`` means per-tensor.

    Conv2D/Conv3D/MatMul weights are scaled along their output axis; a depthwise
    filter ``[h, w, in, multiplier]`` along its last two axes (output channel
    ``in * multiplier``); a transposed-conv filter ``[h, w, out, in]`` along axis 2.
    When readers disagree or are unknown, one scale for the whole tensor.
    """
    rank = len(shape)
    choices: set[tuple[int, ...] | None] = set()
    for node, index in readers:
        op = node.op
        if op in ("Conv2D", "Conv3D", "_FusedConv2D", "FusedResizeAndPadConv2D", "FusedPadConv2D") and index == 1:
            choices.add((rank - 1,) if rank >= 2 else None)
        elif op in ("DepthwiseConv2dNative", "_FusedDepthwiseConv2dNative") and index == 1 and rank == 4:
            choices.add((2, 3))
        elif op in ("Conv2DBackpropInput", "Conv3DBackpropInputV2") and index == 1 and rank >= 3:
            choices.add((rank - 2,))
        elif op in ("MatMul", "_FusedMatMul") and index == 1 and rank == 2:
            transposed = node.attr["transpose_b"].b if "transpose_b" in node.attr else False
            choices.add((0,) if transposed else (1,))
        elif op in ("MatMul", "_FusedMatMul") and index == 0 and rank == 2:
            transposed = node.attr["transpose_a"].b if "transpose_a" in node.attr else False
            choices.add((1,) if transposed else (0,))
        elif op in ("GatherV2", "ResourceGather", "Gather") and index == 0 and rank == 2:
            choices.add((0,))  # embedding tables: one scale per row (per looked-up vector)
        else:
            choices.add(None)
    if len(choices) != 1:
        return None
    return choices.pop()


def _real_consumers(editor: GraphEditor, name: str, depth: int = 0) -> list[tuple[Any, int]]:
    """Who reads a weight, looking through pass-through ops: frozen TF2 graphs read every weight
    through an Identity (the old ReadVariableOp)."""
    found: list[tuple[Any, int]] = []
    for node, index in editor.data_consumers(name):
        if node.op in _PASS_THROUGH and depth < 8:
            found.extend(_real_consumers(editor, node.name, depth + 1))
        else:
            found.append((node, index))
    return found


def _attrs(**values: int | bool) -> dict[str, Any]:
    from tensorflow.core.framework.attr_value_pb2 import AttrValue

    return {k: AttrValue(b=v) if isinstance(v, bool) else AttrValue(type=v) for k, v in values.items()}


def _add_const(editor: GraphEditor, base: str, array: np.ndarray, like: Any) -> str:
    # A Const inside a TF1 while loop has a control input that puts it in the loop's frame; its
    # replacements need the same, or the loop reads a tensor from outside its frame.
    name = editor.add_const(base, array, device=like.device)
    controls = editor.control_inputs(like)
    if controls:
        editor.add_control_inputs(editor.nodes[name], controls)
    return name


def _float_consts(graph_def, protected: set[str], minimum_size: int):
    """(node, array) for every float32 Const with at least ``minimum_size`` elements, not protected."""
    from tensorflow.python.framework import tensor_util

    for node in graph_def.node:
        if node.op != "Const" or node.name in protected or node.attr["dtype"].type != 1:  # DT_FLOAT
            continue
        shape = node.attr["value"].tensor.tensor_shape
        size = int(np.prod([d.size for d in shape.dim])) if shape.dim else 1
        if size < max(1, minimum_size):
            continue
        yield node, tensor_util.MakeNdarray(node.attr["value"].tensor)


def _stored_as(model: Model, graph_def: Any, storage: str, converted: int) -> Model:
    # Recorded for graphopt.runtime.config: these weights want runtime constant folding (see its docstring).
    if not converted:
        return model.with_graph(graph_def)
    previous = model.metadata.get("weight_storage")
    storage = storage if not previous or previous == storage else f"{previous}+{storage}"
    return model.replace(graph_def=graph_def, metadata={**model.metadata, "weight_storage": storage})


class WeightsToFp16(Pass):
    """Store float32 weights as float16 and cast them back, halving their bytes."""

    name = "weights_to_fp16"
    description = "Store float32 Const weights as float16 + Cast to float32 (half the bytes; lossy)."
    options = {
        "minimum_size": Option(int, 1024, "only weights with at least this many elements"),
    }
    lossy = True
    # fp16 keeps 11 significant bits: a weight moves by at most 2**-11 of itself (4.9e-4).
    tolerance = 1e-2

    def run(self, model: Model) -> PassResult:
        gd = model.graph_def
        editor = GraphEditor(gd, model.protected_nodes)
        converted = skipped = 0
        bytes_saved = 0
        max_err = 0.0
        for node, w in list(_float_consts(gd, model.protected_nodes, self.config["minimum_size"])):
            finite = np.isfinite(w)
            if not finite.all() or (np.abs(w[finite]).max(initial=0.0) > _FP16_MAX):
                skipped += 1  # would turn into Inf or lose NaN/Inf semantics: leave it exact
                continue
            half = w.astype(np.float16)
            scale = float(np.abs(w).max(initial=0.0))
            if scale > 0:
                max_err = max(max_err, float(np.abs(half.astype(np.float32) - w).max() / scale))
            before = node.ByteSize()
            const_name = _add_const(editor, f"{node.name}/fp16", half, node)
            editor.replace_node(node, "Cast", [const_name],
                                _attrs(SrcT=19, DstT=1, Truncate=False))  # half -> float
            bytes_saved += before - node.ByteSize() - editor.nodes[const_name].ByteSize()
            converted += 1
        gd = editor.commit()
        counters = {"converted": converted, "skipped_nonfinite_or_range": skipped, "bytes_saved": bytes_saved,
                    "max_relative_weight_error": float(f"{max_err:.3g}")}
        notes = [f"max weight error {max_err:.2e} of each tensor's largest magnitude"] if converted else []
        return PassResult(_stored_as(model, gd, "fp16", converted), modified=converted > 0, counters=counters,
                          notes=notes)


def quantize_int8(w: np.ndarray, axes: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantization of ``w`` with one float32 scale per slice along ``axes`` (all if ``None``).

    Returns ``(q, scale)`` with ``q`` int8 in [-127, 127] and ``scale`` shaped to
    broadcast against ``w`` (trailing axes after the last channel axis kept as 1).
    A slice whose values are all zero gets scale 1 (zeros are exact); a constant
    slice is exact up to one rounding of ``c / 127 * 127``.
    """
    w = w.astype(np.float32)
    if axes is None or w.ndim == 0:
        amax = np.abs(w).max(initial=0.0).reshape(())
    else:
        reduce = tuple(i for i in range(w.ndim) if i not in axes)
        amax = np.abs(w).max(axis=reduce, keepdims=True) if reduce else np.abs(w)
        # Drop leading broadcast axes so a Conv2D scale is just [out_channels].
        first = min(axes)
        amax = amax.reshape(amax.shape[first:])
    scale = (amax / 127.0).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale


class WeightsToInt8(Pass):
    """Store float32 weights as int8 with one float32 scale per output channel."""

    name = "weights_to_int8"
    description = ("Store float32 Const weights as int8 with per-output-channel scales + Cast + Mul "
                   "(a quarter of the bytes; exact on all-zero and constant tensors; lossy).")
    options = {
        "minimum_size": Option(int, 1024, "only weights with at least this many elements"),
        "per_channel": Option(bool, True, "one scale per output channel of the reading op (else one per tensor)"),
        # Vectors (biases, batch-norm statistics) are a sliver of the bytes but feed Rsqrt/Add directly,
        # where one coarse step moves every output: GTT's quantize_weights loses most accuracy there.
        "min_rank": Option(int, 2, "only weights of at least this rank (2 leaves biases and BN vectors float)"),
    }
    lossy = True
    # Relative to the largest output: per-channel int8 moves each weight by at most 1/254 of its channel's range.
    tolerance = 5e-2

    def run(self, model: Model) -> PassResult:
        gd = model.graph_def
        editor = GraphEditor(gd, model.protected_nodes)
        counters: dict[str, int | float] = {"converted": 0, "per_channel": 0, "per_tensor": 0, "zero_tensors": 0,
                                            "skipped_nonfinite": 0, "bytes_saved": 0, "max_relative_weight_error": 0.0}
        for node, w in list(_float_consts(gd, model.protected_nodes, self.config["minimum_size"])):
            if w.ndim < self.config["min_rank"]:
                continue
            if not np.isfinite(w).all():
                counters["skipped_nonfinite"] += 1
                continue
            axes = channel_axes(w.shape, _real_consumers(editor, node.name)) if self.config["per_channel"] else None
            q, scale = quantize_int8(w, axes)
            amax = float(np.abs(w).max(initial=0.0))
            if amax == 0:
                counters["zero_tensors"] += 1
            else:
                err = float(np.abs(q.astype(np.float32) * scale - w).max() / amax)
                counters["max_relative_weight_error"] = max(counters["max_relative_weight_error"], err)
            before = node.ByteSize()
            q_name = _add_const(editor, f"{node.name}/int8", q, node)
            scale_name = _add_const(editor, f"{node.name}/scale", scale, node)
            cast = editor.add_node(f"{node.name}/dequantize", "Cast", [q_name],
                                   _attrs(SrcT=6, DstT=1, Truncate=False), device=node.device)  # int8 -> float
            editor.replace_node(node, "Mul", [cast.name, scale_name], _attrs(T=1))
            added = [editor.nodes[q_name], editor.nodes[scale_name], cast]
            counters["bytes_saved"] += before - node.ByteSize() - sum(n.ByteSize() for n in added)
            counters["converted"] += 1
            counters["per_channel" if axes is not None and scale.size > 1 else "per_tensor"] += 1
        gd = editor.commit()
        counters["max_relative_weight_error"] = float(f"{counters['max_relative_weight_error']:.3g}")
        notes = []
        if counters["converted"]:
            notes.append(f"max weight error {counters['max_relative_weight_error']:.2e} of each tensor's largest "
                         f"magnitude; {counters['per_channel']} per-channel, {counters['per_tensor']} per-tensor")
        return PassResult(_stored_as(model, gd, "int8", int(counters["converted"])), modified=counters["converted"] > 0,
                          counters=counters, notes=notes)


PASSES = [WeightsToFp16, WeightsToInt8]
