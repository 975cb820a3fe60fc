"""Editing a GraphDef in place: who reads what, constant values, fresh names, rewiring, removal.

Passes that rewrite graphs share these helpers so every pass gets the fiddly
parts right the same way: control inputs (``^name``) are edges too, a removed
node must not be named by another node's colocation attribute (``_class:
loc:@name``, which ``import_graph_def`` rejects), and a new node never reuses
a name. A :class:`GraphEditor` keeps an index of nodes and consumers that is
rebuilt lazily after edits; removals are applied in one sweep by
:meth:`GraphEditor.commit`, because deleting from a protobuf repeated field one
node at a time is quadratic on large graphs.

The plumbing every pass needs, and where it is:

=========================================  ===================================================
who reads a node or tensor                 :meth:`GraphEditor.consumers`, ``data_consumers``,
                                           ``control_consumers``; :func:`consumers_map` (no editor)
remove a node, its readers read others     :meth:`GraphEditor.remove_and_rewire` (data and
                                           control edges, then what only it fed)
remove what only X feeds                   :meth:`GraphEditor.remove_with_inputs`,
                                           :meth:`GraphEditor.prune_dead`
the constant value through Identity        :meth:`GraphEditor.const_value` (also small arithmetic),
                                           :meth:`GraphEditor.const_root`; :func:`constant_value`
a static shape                             :meth:`GraphEditor.static_shape`
fresh names, new nodes                     :meth:`GraphEditor.unique_name`, ``add_node``, ``add_const``
drop unused library functions              :func:`prune_functions`
=========================================  ===================================================

The pattern rewriter (:mod:`graphopt.rewrite`) is built on these; a pass written
by hand uses them directly.

No TensorFlow import at module level; TF is needed only to convert tensors.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from graphopt.graph.names import join_tensor, node_name, split_tensor

if TYPE_CHECKING:  # pragma: no cover
    from tensorflow.core.framework.graph_pb2 import GraphDef
    from tensorflow.core.framework.node_def_pb2 import NodeDef


def consumers_map(graph_def: "GraphDef") -> dict[str, list[tuple["NodeDef", int]]]:
    """Node name -> ``[(consumer NodeDef, input index), ...]`` over data and control inputs."""
    out: dict[str, list[tuple[Any, int]]] = defaultdict(list)
    for node in graph_def.node:
        for i, inp in enumerate(node.input):
            out[node_name(inp)].append((node, i))
    return out


# Stateless ops whose value numpy can compute from constant inputs. Enough for the
# parameter arithmetic of batch norms (Keras emits Rsqrt/Mul/Sub/AddV2 over
# ReadVariableOp Identities, sometimes behind Reshape/Squeeze).
_UNARY = {
    "Rsqrt": lambda x: 1.0 / np.sqrt(x),
    "Sqrt": np.sqrt,
    "Reciprocal": lambda x: 1.0 / x,
    "Inv": lambda x: 1.0 / x,
    "Neg": np.negative,
    "Square": np.square,
}
_BINARY = {
    "Add": np.add,
    "AddV2": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "RealDiv": np.divide,
    "Maximum": np.maximum,
    "Minimum": np.minimum,
}
_PASS_THROUGH = {"Identity", "Snapshot", "StopGradient", "PreventGradient"}
_CACHE_MAX_BYTES = 1 << 20


def unused_name(base: str, names: set[str]) -> str:
    """``base`` if not in ``names``, else ``base_1``, ``base_2``...; the name returned is added to ``names``."""
    name, i = base, 1
    while name in names:
        name, i = f"{base}_{i}", i + 1
    names.add(name)
    return name


def constant_value(graph_def: "GraphDef", tensor: str) -> np.ndarray | None:
    """The value of ``tensor`` if Const nodes alone compute it (through Identity and the like), else None.

    A one-off lookup; a pass that asks many times keeps a :class:`GraphEditor` (it indexes once).
    """
    return GraphEditor(graph_def).const_value(tensor)


def function_references(node: Any) -> list[str]:
    """Names of the functions a node calls: its op (a library function), and every ``func`` attribute
    (``If``'s branches, ``While``'s cond and body, ``PartitionedCall``'s ``f``, lists of them)."""
    out = [node.op]
    for value in node.attr.values():
        if value.HasField("func"):
            out.append(value.func.name)
        elif value.HasField("list"):
            out.extend(f.name for f in value.list.func)
    return out


def prune_functions(graph_def: "GraphDef") -> list[str]:
    """Remove the library functions nothing in the main graph calls, directly or through other functions.

    A function's registered gradient (``library.gradient``) is kept with it. Returns the names of the
    functions removed, sorted. Passes that inline or drop calls leave such functions behind; TensorFlow
    would load them (and keep their constants) for nothing.
    """
    library = graph_def.library
    if not library.function:
        return []
    by_name = {f.signature.name: f for f in library.function}
    gradients = {g.function_name: g.gradient_func for g in library.gradient}
    used: set[str] = set()
    todo = [name for node in graph_def.node for name in function_references(node) if name in by_name]
    while todo:
        name = todo.pop()
        if name in used or name not in by_name:
            continue
        used.add(name)
        todo.extend(ref for node in by_name[name].node_def for ref in function_references(node) if ref in by_name)
        if name in gradients:
            todo.append(gradients[name])
    unused = sorted(set(by_name) - used)
    if unused:
        drop = set(unused)
        kept = [f for f in library.function if f.signature.name not in drop]
        kept_gradients = [g for g in library.gradient if g.function_name not in drop]
        del library.function[:]
        library.function.extend(kept)
        del library.gradient[:]
        library.gradient.extend(kept_gradients)
    return unused


class GraphEditor:
    """An index over a GraphDef that a pass edits in place, then :meth:`commit`\\ s.

    ``protected`` names nodes that must survive (signature inputs/outputs, init
    ops): :meth:`prune_dead` never removes them. ``weights`` (from
    :func:`graphopt.graph.weightless.strip`) makes the stand-ins in ``graph_def`` read as
    the constants they stand for, so a pass can edit a copy without the weights.
    """

    def __init__(self, graph_def: "GraphDef", protected: Iterable[str] = (), *, weights: Any = None) -> None:
        self.graph_def = graph_def
        self.protected = set(protected)
        self.weights = weights
        self.nodes: dict[str, Any] = {n.name: n for n in graph_def.node}
        self.removed: set[str] = set()
        self._consumers: dict[str, dict[tuple[str, int], Any]] | None = None
        self._const_cache: dict[str, np.ndarray | None] = {}
        self._shapes: dict[str, list[tuple[int | None, ...] | None]] | None = None

    # -- lookup ---------------------------------------------------------------

    def node(self, tensor_or_node: str) -> Any:
        """The NodeDef producing a tensor (``"a:1"``, ``"^a"`` or ``"a"``), or None."""
        name = node_name(tensor_or_node)
        return None if name in self.removed else self.nodes.get(name)

    def _index(self) -> dict[str, dict[tuple[str, int], Any]]:
        # name -> {(consumer name, input index): consumer}; kept up to date by every edit below.
        if self._consumers is None:
            self._consumers = defaultdict(dict)
            for node in self.graph_def.node:
                if node.name not in self.removed:
                    for i, inp in enumerate(node.input):
                        self._consumers[node_name(inp)][(node.name, i)] = node
        return self._consumers

    def _unindex(self, node: Any) -> None:
        index = self._index()
        for i, inp in enumerate(node.input):
            index[node_name(inp)].pop((node.name, i), None)

    def _reindex(self, node: Any) -> None:
        index = self._index()
        for i, inp in enumerate(node.input):
            index[node_name(inp)][(node.name, i)] = node

    def consumers(self, name: str) -> list[tuple[Any, int]]:
        """``[(consumer, input index)]`` of node ``name``, data and control."""
        entries = self._index().get(name)
        return [(node, i) for (_, i), node in entries.items()] if entries else []

    def data_consumers(self, tensor: str) -> list[tuple[Any, int]]:
        """Consumers reading exactly ``tensor`` (node and port), not control edges."""
        name, port = split_tensor(tensor)
        return [(c, i) for c, i in self.consumers(name) if split_tensor(c.input[i]) == (name, port)]

    def control_consumers(self, name: str) -> list[Any]:
        return [c for c, i in self.consumers(name) if c.input[i].startswith("^")]

    def control_inputs(self, node: Any) -> list[str]:
        return [i for i in node.input if i.startswith("^")]

    def data_inputs(self, node: Any) -> list[str]:
        return [i for i in node.input if not i.startswith("^")]

    def unique_name(self, base: str) -> str:
        """``base`` if free, else ``base_1``, ``base_2``... (removed names are never reused in one edit)."""
        name, i = base, 0
        while name in self.nodes:
            i += 1
            name = f"{base}_{i}"
        return name

    # -- constants --------------------------------------------------------------

    def const_value(self, tensor: str) -> np.ndarray | None:
        """The value of ``tensor`` if it is computable from Const nodes alone, else None.

        Follows Identity-like ops and evaluates a small set of stateless
        arithmetic ops in numpy. A node with control inputs is not treated as
        constant: its control dependency may guard it (an Assert).
        """
        name, port = split_tensor(tensor)
        if port != 0:
            return None
        if name in self._const_cache:
            return self._const_cache[name]
        self._const_cache[name] = None  # cycle guard (loops)
        value = self._evaluate(self.node(name))
        self._const_cache[name] = value
        if value is not None and value.nbytes > _CACHE_MAX_BYTES:
            del self._const_cache[name]  # weights: cached, they would be a second copy of the model
        return value

    def _evaluate(self, node: Any) -> np.ndarray | None:
        if node is None or self.control_inputs(node):
            return None
        original = self._stood_in(node)
        if original is not None or node.op == "Const":
            from tensorflow import make_ndarray

            return make_ndarray((original or node).attr["value"].tensor)
        ins = self.data_inputs(node)
        if node.op in _PASS_THROUGH and len(ins) == 1:
            return self.const_value(ins[0])
        maybe = [self.const_value(i) for i in ins]
        args = [a for a in maybe if a is not None]
        if len(args) != len(maybe):
            return None
        try:
            with np.errstate(all="ignore"):
                if node.op in _UNARY and len(args) == 1:
                    return np.asarray(_UNARY[node.op](args[0])).astype(args[0].dtype)  # type: ignore[operator]
                if node.op in _BINARY and len(args) == 2:
                    return np.asarray(_BINARY[node.op](args[0], args[1])).astype(args[0].dtype)
                if node.op == "Reshape" and len(args) == 2:
                    return args[0].reshape([int(d) for d in args[1].reshape(-1)])
                if node.op == "Squeeze" and len(args) == 1:
                    dims = list(node.attr["squeeze_dims"].list.i)
                    return np.squeeze(args[0], axis=tuple(dims) if dims else None)
                if node.op == "ExpandDims" and len(args) == 2:
                    return np.expand_dims(args[0], int(args[1].reshape(-1)[0]))
                if node.op == "Cast" and len(args) == 1:
                    from tensorflow import as_dtype

                    return args[0].astype(as_dtype(node.attr["DstT"].type).as_numpy_dtype)
        except (ValueError, TypeError):
            return None
        return None

    def require_const(self, tensor: str) -> np.ndarray:
        """:meth:`const_value` where the caller already matched a constant (a ValueError if it is not one)."""
        value = self.const_value(tensor)
        if value is None:
            raise ValueError(f"'{tensor}' is not a constant")
        return value

    def const_root(self, tensor: str) -> Any:
        """The Const node behind ``tensor`` through Identity-like ops, or None."""
        node = self.node(tensor)
        while node is not None and node.op in _PASS_THROUGH and not self.control_inputs(node):
            ins = self.data_inputs(node)
            if len(ins) != 1:
                return None
            node = self.node(ins[0])
        return node if node is not None and (node.op == "Const" or self._stood_in(node) is not None) else None

    def _stood_in(self, node: Any) -> Any:
        """The original Const a stand-in stands for (None for any other node)."""
        return None if self.weights is None else self.weights.original_of(node)

    def add_const(self, base: str, value: np.ndarray, dtype: Any = None, device: str = "") -> str:
        """Add a Const node holding ``value`` under a fresh name; returns its name."""
        from tensorflow import make_tensor_proto

        node = self.graph_def.node.add()
        node.name = self.unique_name(base)
        node.op = "Const"
        if device:
            node.device = device
        proto = make_tensor_proto(np.asarray(value), dtype=dtype)
        node.attr["dtype"].type = proto.dtype
        node.attr["value"].tensor.CopyFrom(proto)
        self.nodes[node.name] = node
        return node.name

    def add_node(self, base: str, op: str, inputs: Iterable[str], attrs: dict[str, Any] | None = None,
                 device: str = "") -> Any:
        """Add a node under a fresh name; ``attrs`` values are AttrValue protos or copied from them."""
        node = self.graph_def.node.add()
        node.name = self.unique_name(base)
        node.op = op
        node.input.extend(inputs)
        if device:
            node.device = device
        for key, value in (attrs or {}).items():
            node.attr[key].CopyFrom(value)
        self.nodes[node.name] = node
        self._reindex(node)
        return node

    def insert(self, node_def: Any) -> Any:
        """Add a copy of a NodeDef built elsewhere (its name must be free); returns the node in the graph."""
        if node_def.name in self.nodes:
            raise ValueError(f"node name '{node_def.name}' is taken")
        node = self.graph_def.node.add()
        node.CopyFrom(node_def)
        self.nodes[node.name] = node
        self._reindex(node)
        return node

    # -- rewiring and removal -------------------------------------------------------

    def set_input(self, node: Any, index: int, tensor: str) -> None:
        """Point one input of ``node`` at ``tensor``, keeping the consumer index right."""
        self._unindex(node)
        node.input[index] = tensor
        self._reindex(node)

    def set_inputs(self, node: Any, inputs: Iterable[str]) -> None:
        """Replace all inputs of ``node`` (control inputs are moved after data inputs)."""
        self._unindex(node)
        _set_inputs(node, list(inputs))
        self._reindex(node)

    def replace_node(self, node: Any, op: str, inputs: Iterable[str], attrs: dict[str, Any]) -> None:
        """Turn ``node`` into another op in place: same name (consumers and signatures stay), new
        op, inputs and attributes (AttrValue protos); device and colocation are kept."""
        keep = {k: node.attr[k] for k in ("_class",) if k in node.attr}
        for key in list(node.attr):
            if key not in keep:
                del node.attr[key]
        node.op = op
        for key, value in attrs.items():
            node.attr[key].CopyFrom(value)
        self.set_inputs(node, inputs)
        self._const_cache.pop(node.name, None)

    def rewire(self, old: str, new: str, *, skip: Iterable[str] = ()) -> int:
        """Every data consumer of tensor ``old`` reads ``new`` instead; returns how many edges moved."""
        skip = set(skip)
        moved = 0
        for consumer, i in self.data_consumers(old):
            if consumer.name in skip:
                continue
            self.set_input(consumer, i, new)
            moved += 1
        return moved

    def rewire_control(self, old: str, new: Iterable[str]) -> None:
        """Control consumers of node ``old`` depend on nodes ``new`` instead (``[]`` drops the edge)."""
        new = [node_name(n) for n in new]
        for consumer in list(self.control_consumers(old)):
            kept = [i for i in consumer.input if i != "^" + old]
            reads = {node_name(i) for i in kept}
            for n in new:
                if n != consumer.name and n not in reads:  # a data input already orders it
                    kept.append("^" + n)
            self.set_inputs(consumer, kept)

    def remove_and_rewire(self, name: str, outputs: Sequence[str] = (), *, prune: bool = True) -> int:
        """Remove node ``name``: readers of its output ``p`` read tensor ``outputs[p]`` instead.

        Nodes that wait on it (``^name``) wait on the producers of ``outputs`` instead, so
        ordering is kept; with no ``outputs`` (a sink such as ``Assert``) those edges go. Then
        what only ``name`` fed is removed too (``prune``, see :meth:`remove_with_inputs`).
        Raises ValueError if an output that is read has no replacement. Returns the number of
        nodes pruned besides ``name``.
        """
        node = self.node(name)
        if node is None:
            raise ValueError(f"no node '{name}'")
        for consumer, i in self.consumers(name):
            port = split_tensor(consumer.input[i])[1]
            if port >= len(outputs):
                raise ValueError(f"'{consumer.name}' reads output {port} of '{name}', which has no replacement")
        for port, tensor in enumerate(outputs):
            self.rewire(join_tensor(name, port), tensor)
        self.rewire_control(name, list(dict.fromkeys(node_name(t) for t in outputs)))
        if not prune:
            self.remove([name])
            return 0
        return self.remove_with_inputs(name)

    def remove_with_inputs(self, name: str) -> int:
        """Remove node ``name`` (nothing may read it any more) and then what only it fed, transitively.

        The inputs go as :meth:`prune_dead` decides: stateless, no control inputs, not
        protected, nothing else reading them. Returns the number removed besides ``name``.
        """
        node = self.node(name)
        if node is None:
            return 0
        inputs = list(node.input)
        self.remove([name])
        return self.prune_dead(inputs)

    def add_control_inputs(self, node: Any, controls: Iterable[str]) -> None:
        inputs = list(node.input)
        for c in controls:
            c = "^" + node_name(c)
            if c not in inputs and c[1:] != node.name:
                inputs.append(c)
        self.set_inputs(node, inputs)

    def remove(self, names: Iterable[str]) -> None:
        """Mark nodes removed; :meth:`commit` deletes them. Callers rewire consumers first."""
        for name in names:
            node = self.node(name)
            if node is not None:
                self._unindex(node)
                self.removed.add(name)
                self._const_cache.pop(name, None)

    def attr(self, node: Any, key: str) -> Any:
        """``node.attr[key]``, or the op's registered default when the GraphDef omits it.

        SavedModels are often written with ``strip_default_attrs``: a FusedBatchNorm
        with the default epsilon (and ``is_training=True``!) then carries no such attr,
        and reading the proto field directly would give 0.0 / False.
        """
        if key in node.attr:
            return node.attr[key]
        from tensorflow.core.framework.attr_value_pb2 import AttrValue
        from tensorflow.python.framework import op_def_registry

        op_def = op_def_registry.get(node.op)
        for attr_def in op_def.attr if op_def is not None else []:
            if attr_def.name == key and attr_def.HasField("default_value"):
                return attr_def.default_value
        return AttrValue()

    def static_shape(self, tensor: str) -> tuple[int | None, ...] | None:
        """The static shape TensorFlow infers for ``tensor`` (unknown dims None), or None if its rank is unknown.

        Shapes are those of the graph the editor was built on (imported once, weights left out):
        nodes added since read as unknown. Enough for rewrites, which keep every shape they touch.
        """
        name, port = split_tensor(tensor)
        if self._shapes is None:
            self._shapes = _infer_shapes(self.graph_def)
        shapes = self._shapes.get(name)
        if shapes is None or port < 0 or port >= len(shapes):
            return None
        return shapes[port]

    def is_stateful(self, node: Any) -> bool:
        """Whether the op has side effects (never pruned as dead); unknown ops count as stateful."""
        from tensorflow.python.framework import op_def_registry

        op_def = op_def_registry.get(node.op)
        return True if op_def is None else bool(op_def.is_stateful)

    def prune_dead(self, candidates: Iterable[str]) -> int:
        """Remove candidates that nothing reads any more, and then their inputs likewise.

        Only stateless nodes without control inputs go (a dead node's control
        input may be an Assert the original graph ran); protected nodes stay.
        Control edges *to* a constant (Identity of a Const) are dropped first.
        Returns the number of nodes removed.
        """
        todo = [node_name(c) for c in candidates]
        count = 0
        while todo:
            name = todo.pop()
            node = self.node(name)
            if node is None or name in self.protected:
                continue
            if self.control_inputs(node) or self.is_stateful(node) or (
                    node.op in ("Placeholder", "NoOp") and self._stood_in(node) is None):  # stand-ins are constants
                continue
            readers = self.consumers(name)
            if readers and all(c.input[i].startswith("^") for c, i in readers) and self.const_value(name) is not None:
                # Waiting for a constant orders nothing: TF2 freezing leaves a NoOp with control
                # edges to every weight read, which would otherwise keep replaced weights alive.
                self.rewire_control(name, [])
                readers = self.consumers(name)
            if readers:
                continue
            inputs = list(node.input)
            self.remove([name])
            count += 1
            todo.extend(inputs)
        return count

    def commit(self) -> "GraphDef":
        """Apply removals in one sweep; drop colocation entries that name removed nodes."""
        if self.removed:
            kept = [n for n in self.graph_def.node if n.name not in self.removed]
            dangling = [(n.name, i) for n in kept for i in n.input if node_name(i) in self.removed]
            if dangling:  # a pass bug; fail loudly rather than write a graph TF rejects later
                raise ValueError(f"node '{dangling[0][0]}' still reads removed '{dangling[0][1]}'")
            for node in kept:
                _drop_colocation(node, self.removed)
            # Delete from the back by index: only pointers move, kept NodeDef objects stay valid.
            for index in reversed([i for i, n in enumerate(self.graph_def.node) if n.name in self.removed]):
                del self.graph_def.node[index]
            for name in self.removed:
                self.nodes.pop(name, None)
            self.nodes = {n.name: n for n in self.graph_def.node}
            self.removed.clear()
        self._consumers = None
        return self.graph_def


def _infer_shapes(graph_def: Any) -> dict[str, list[tuple[int | None, ...] | None]]:
    """Node name -> static shape of each output, from TensorFlow's import of the graph's skeleton."""
    import tensorflow as tf

    from graphopt.graph.checks import skeleton

    graph = tf.Graph()
    try:
        with graph.as_default():
            tf.graph_util.import_graph_def(skeleton(graph_def), name="")
    except Exception:  # a graph TensorFlow cannot import (unknown ops, a bare function body): no shapes
        return {}
    return {op.name: [None if t.shape.rank is None else tuple(t.shape.as_list()) for t in op.outputs]
            for op in graph.get_operations()}


def _set_inputs(node: Any, inputs: list[str]) -> None:
    # GraphDef requires data inputs before control inputs.
    data = [i for i in inputs if not i.startswith("^")]
    ctrl = [i for i in inputs if i.startswith("^")]
    del node.input[:]
    node.input.extend(data + ctrl)


def _drop_colocation(node: Any, removed: set[str]) -> None:
    if "_class" not in node.attr:
        return
    values = list(node.attr["_class"].list.s)
    kept = [v for v in values if not (v.startswith(b"loc:@") and v[5:].decode() in removed)]
    if len(kept) == len(values):
        return
    if kept:
        del node.attr["_class"].list.s[:]
        node.attr["_class"].list.s.extend(kept)
    else:
        del node.attr["_class"]
