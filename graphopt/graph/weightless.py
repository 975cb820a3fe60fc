"""Running whole-graph native tools (Grappler, GTT transforms) on a graph without its weights.

Grappler holds about 14x the graph it optimizes (measured on ResNet50: +1440 MB
for a 100 MB graph), GTT's transforms 5-12x: each copies the GraphDef several
times, and nearly all of those bytes are weights the tool never reads. A kernel
that feeds only a Conv2D/MatMul/... whose other input is computed at run time
can never be constant-folded, and no graph-level rewrite looks at its values.
Such a constant is swapped for a *stand-in* -- a Placeholder with the same
dtype, shape and attributes -- before the tool runs, and swapped back after:
the tool's copies are small, and the weights stay where they are, in the input
graph the pipeline keeps anyway (for a rollback).

A stand-in carries the digest of its value, so tools that merge identical
nodes (merge_duplicate_nodes, Grappler's common-subexpression elimination)
merge stand-ins exactly when the constants were equal, and a stand-in the tool
renamed still finds its value. Only large constants are swapped: small ones
(per-channel scales, shapes, scalars) are the ones rewrites do read.

Two more users swap every large constant (``any_reader=True``): graphopt's own
passes edit a copy with stand-ins and read values through
:class:`graphopt.graph.edit.GraphEditor` (``weights=``), so only what they
change is new; and verification sessions feed the values (:func:`feeds`) rather
than embed them, so the session's own copies of the graph hold no weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from graphopt.graph.edit import consumers_map
from graphopt.graph.encoding import without_nodes
from graphopt.graph.names import join_tensor, split_tensor

ATTR = "_graphopt_stand_in"
MIN_BYTES = 16 * 1024
# Ops that take weights next to a run-time input and whose rewrites in Grappler and GTT depend on the
# weight's shape (kept on the stand-in), never its values.
WEIGHT_CONSUMERS = frozenset({
    "Conv2D", "Conv3D", "DepthwiseConv2dNative", "Conv2DBackpropInput", "Conv3DBackpropInputV2",
    "MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum", "GatherV2",
    "_FusedConv2D", "_FusedMatMul", "_FusedDepthwiseConv2dNative",
})
_NOT_FEEDABLE = frozenset({7, 20, 21})  # DT_STRING, DT_RESOURCE, DT_VARIANT
# Sources of run-time values: constant folding never evaluates past them.
_RUNTIME_SOURCES = frozenset({"Placeholder", "PlaceholderWithDefault", "PlaceholderV2"})


@dataclass
class Weights:
    """The constants swapped out: digest -> the original Const NodeDef (in a graph the caller keeps alive)."""

    by_digest: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.by_digest)

    def original_of(self, node: Any) -> Any:
        """The original Const that ``node`` stands in for, or None when it is not one of these stand-ins."""
        if node.op != "Placeholder" or ATTR not in node.attr:
            return None
        return self.by_digest.get(node.attr[ATTR].s.decode())


def _data_readers(graph_def: Any) -> dict[str, list[Any]]:
    """Node name -> the nodes reading one of its outputs (control edges left out)."""
    return {name: [c for c, i in readers if not c.input[i].startswith("^")]
            for name, readers in consumers_map(graph_def).items()}


def possibly_constant(graph_def: Any, readers: dict[str, list[Any]] | None = None) -> set[str]:
    """Nodes constant folding might evaluate: everything not downstream (by data edges) of a run-time source.

    An over-approximation on purpose (control edges, control flow and loops count as constant), so a
    weight is only swapped out when folding surely never reads it. ``readers``: :func:`_data_readers`.
    """
    from tensorflow.python.framework import op_def_registry

    def runtime_source(node: Any) -> bool:
        if node.op in _RUNTIME_SOURCES:
            return True
        op_def = op_def_registry.get(node.op)
        return op_def is not None and op_def.is_stateful and node.op != "Const"

    consumers = _data_readers(graph_def) if readers is None else readers
    runtime = {n.name for n in graph_def.node if runtime_source(n)}
    todo = list(runtime)
    while todo:
        for consumer in consumers.get(todo.pop(), []):
            if consumer.name not in runtime:
                runtime.add(consumer.name)
                todo.append(consumer.name)
    return {n.name for n in graph_def.node} - runtime


def swappable(graph_def: Any, protected: Iterable[str] = (), *, any_reader: bool = False) -> list[int]:
    """Indexes of the Const nodes that may become stand-ins (see the module docstring).

    ``any_reader`` swaps every large numeric constant, whoever reads it: for a session that feeds
    the values back in and runs the graph as written (no graph optimizer to fold or fuse them).
    """
    keep = set(protected)
    readers = _data_readers(graph_def)
    candidates = [i for i, n in enumerate(graph_def.node)
                  if n.op == "Const" and not n.input and n.name not in keep and readers.get(n.name)
                  and n.attr["value"].tensor.ByteSize() >= MIN_BYTES]
    if any_reader:
        return [i for i in candidates if graph_def.node[i].attr["dtype"].type not in _NOT_FEEDABLE]
    if not candidates:
        return []
    constant = possibly_constant(graph_def, readers)
    return [i for i in candidates
            if all(r.op in WEIGHT_CONSUMERS and r.name not in constant for r in readers[graph_def.node[i].name])]


def strip(graph_def: Any, protected: Iterable[str] = (), *, merge_equal: bool = False,
          any_reader: bool = False) -> tuple[Any, Weights]:
    """A copy of ``graph_def`` with stand-ins for its swappable weights, and what :func:`restore` needs.

    The copy holds no weight bytes; ``graph_def`` must stay alive and unchanged until :func:`restore`.
    ``merge_equal`` keeps one stand-in per value and rewires the readers of the others to it: what
    Grappler's deduplication does to equal constants, and never to Placeholders.
    """
    swap = set(swappable(graph_def, protected, any_reader=any_reader))
    weights = Weights()
    first: dict[str, str] = {}   # digest -> name of its stand-in
    merged: dict[str, str] = {}  # name of a dropped equal weight -> the stand-in its readers now read
    out = without_nodes(graph_def)
    for i, node in enumerate(graph_def.node):
        if i not in swap:
            out.node.add().CopyFrom(node)
            continue
        tensor = node.attr["value"].tensor
        digest = hashlib.blake2b(tensor.SerializeToString(deterministic=True), digest_size=16).hexdigest()
        if merge_equal and digest in weights.by_digest:
            merged[node.name] = first[digest]
            continue
        weights.by_digest.setdefault(digest, node)
        first[digest] = node.name
        stand_in = out.node.add(name=node.name, op="Placeholder", device=node.device)
        for key, attr in node.attr.items():
            if key != "value":
                stand_in.attr[key].CopyFrom(attr)
        stand_in.attr["shape"].shape.CopyFrom(tensor.tensor_shape)
        stand_in.attr[ATTR].s = digest.encode()
    if merged:
        for node in out.node:
            for i, inp in enumerate(node.input):
                head, port = split_tensor(inp)
                if head in merged:
                    node.input[i] = join_tensor(merged[head], port)
    return out, weights


def feeds(light: Any, weights: Weights) -> dict[str, Any]:
    """Tensor name -> value of every stand-in in ``light``, as 64-byte aligned arrays TF can feed without a copy."""
    import numpy as np
    from tensorflow.python.framework import tensor_util

    out = {}
    for node in light.node:
        if node.op == "Placeholder" and ATTR in node.attr:
            value = tensor_util.MakeNdarray(weights.by_digest[node.attr[ATTR].s.decode()].attr["value"].tensor)
            buffer = np.empty(value.nbytes + 64, np.uint8)
            start = -buffer.ctypes.data % 64
            aligned = buffer[start:start + value.nbytes].view(value.dtype).reshape(value.shape)
            aligned[...] = value
            out[node.name + ":0"] = aligned
    return out


def restore(graph_def: Any, weights: Weights) -> Any:
    """Turn the stand-ins in ``graph_def`` (a tool's output) back into their constants, in place.

    Name, device and attributes are the stand-in's (the tool may have renamed it or dropped a
    ``_class``); value and dtype come from the original. Raises ValueError on an unknown stand-in.
    """
    if not weights:
        return graph_def
    restored = set()
    for node in graph_def.node:
        if node.op != "Placeholder" or ATTR not in node.attr:
            continue
        restored.add(node.name)
        digest = node.attr[ATTR].s.decode()
        original = weights.by_digest.get(digest)
        if original is None:
            raise ValueError(f"stand-in '{node.name}' has no weight (digest {digest})")
        node.op = "Const"
        del node.attr[ATTR]
        del node.attr["shape"]
        node.attr["dtype"].CopyFrom(original.attr["dtype"])
        node.attr["value"].CopyFrom(original.attr["value"])
    # Tools told a stand-in is an input (fold_constants) spell its readers' edges "name:0": spell them back.
    spelled = {f"{name}:0": name for name in restored}
    for node in graph_def.node:
        for i, inp in enumerate(node.input):
            if inp in spelled:
                node.input[i] = spelled[inp]
    return graph_def
