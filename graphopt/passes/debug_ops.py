"""Remove debugging and pass-through ops that serving does not need, without changing what the graph computes.

``Identity``, ``IdentityN``, ``CheckNumerics``, ``StopGradient``,
``PreventGradient``, ``Snapshot`` and ``Print`` pass their input through: each
reader of the op's output reads the op's input instead. ``Assert`` and
``PrintV2`` have no data outputs: they are dropped together with the control
edges that pointed at them, and their now-unused inputs are pruned.

GTT's ``remove_nodes(op=Identity)`` does this blindly (its README calls it
dangerous). Here a node is kept, and reported as skipped, when removing it
could change behaviour:

* it is a signature input or output, or an init op (``Model.protected_nodes``);
* it lies inside a TF1 control-flow context: reachable from an ``Enter`` before
  the matching ``Exit`` (a while-loop frame), or from a ``Switch`` before a
  ``Merge`` (a cond branch; the Identity after a Switch is the branch's pivot);
* it has control inputs (``tf.control_dependencies([...])`` around an
  ``identity`` orders work: moving them is a different program), unless those
  control inputs were Asserts this same pass removed;
* its output or input is a reference or resource tensor (a TF1 variable read:
  the Identity *is* the snapshot of the value);
* it copies a tensor between two explicitly different devices.

Nodes that wait on a removed pass-through op (``^identity``) wait on its
input's producer instead, so ordering is kept. Control edges that wait for
nothing (on a constant, or on a NoOp that only waits on constants, as TF2
freezing leaves them) are dropped, outside control-flow frames.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from graphopt.graph.edit import GraphEditor, join_tensor, split_tensor
from graphopt.model import Model, node_name
from graphopt.passes.base import Option, Pass, PassResult

PASS_THROUGH_OPS = ("Identity", "IdentityN", "CheckNumerics", "StopGradient", "PreventGradient", "Snapshot", "Print")
SINK_OPS = ("Assert", "PrintV2")
ALL_OPS = PASS_THROUGH_OPS + SINK_OPS
_DT_RESOURCE = 20
_REF_OFFSET = 100  # DT_FLOAT_REF = 101 ...


def control_flow_context(graph_def: Any) -> set[str]:
    """Nodes inside a TF1 while frame (from Enter up to Exit) or cond branch (from Switch up to Merge)."""
    readers: dict[str, list[Any]] = {}
    for node in graph_def.node:
        for inp in node.input:
            readers.setdefault(node_name(inp), []).append(node)
    # A while loop's Switch also feeds its Exit: stop there too, or everything after a loop would count.
    exits = ("Exit", "RefExit")
    stops = {"Enter": exits, "RefEnter": exits, "Switch": ("Merge", "RefMerge", *exits),
             "RefSwitch": ("Merge", "RefMerge", *exits)}
    inside: set[str] = set()
    for start in graph_def.node:
        if start.op not in stops:
            continue
        todo = deque([start.name])
        seen = {start.name}
        while todo:
            for reader in readers.get(todo.popleft(), []):
                if reader.name in seen:
                    continue
                seen.add(reader.name)
                if reader.op not in stops[start.op]:
                    todo.append(reader.name)
        inside |= seen
    return inside


class StripDebugOps(Pass):
    name = "strip_debug_ops"
    description = ("Remove Identity, IdentityN, CheckNumerics, StopGradient, PreventGradient, Snapshot, Print, "
                   "Assert and PrintV2 where it is safe (never signature nodes, control anchors, loop frames).")
    options = {
        "op": Option(list, list(ALL_OPS), "op types to remove (repeat: op=Identity, op=CheckNumerics)",
                     choices=ALL_OPS),
    }

    edits_input = False  # works on its own copy, made only when there is something to strip

    def run(self, model: Model) -> PassResult:
        wanted = set(self.config["op"])
        if not any(n.op in wanted for n in model.graph_def.node):
            return PassResult(model, modified=False, counters={"removed": 0, "skipped": 0, "pruned": 0,
                                                               "control_edges_dropped": 0})
        from graphopt.graph import weightless as stand_ins

        given = model
        # Edits a copy with stand-ins for the weights (this pass never reads them), restored at the end.
        light, weights = stand_ins.strip(model.graph_def, model.protected_nodes, any_reader=True)
        model = model.with_graph(light)
        ed = GraphEditor(model.graph_def, model.protected_nodes, weights=weights)
        frames = control_flow_context(model.graph_def)
        self._dtypes = _TensorTypes(model.graph_def)
        removed: Counter = Counter()
        skipped: dict[str, str] = {}
        # Sinks first: dropping an Assert frees Identities that only waited on it.
        for node in [n for n in model.graph_def.node if n.op in SINK_OPS and n.op in wanted]:
            why = self._sink_blocker(ed, node, frames)
            if why:
                skipped[node.name] = f"{node.op}: {why}"
                continue
            ed.rewire_control(node.name, [])
            inputs = list(node.input)
            ed.remove([node.name])
            removed[node.op] += 1
            removed["pruned"] += ed.prune_dead(inputs)
        dropped = _drop_empty_waits(ed, frames)
        for node in [n for n in model.graph_def.node if n.op in PASS_THROUGH_OPS and n.op in wanted]:
            if node.name in ed.removed:
                continue
            why = self._bypass_blocker(ed, node, frames)
            if why:
                skipped[node.name] = f"{node.op}: {why}"
                continue
            data = ed.data_inputs(node)
            ports = range(len(data)) if node.op == "IdentityN" else [0]
            for port in ports:
                ed.rewire(join_tensor(node.name, port), data[port])
            # Waiting on a pass-through op means waiting on what produced its input.
            ed.rewire_control(node.name, [data[p] for p in ports])
            ed.remove([node.name])
            removed[node.op] += 1
            # Print's extra inputs (the values it printed) are now unused.
            removed["pruned"] += ed.prune_dead(data[1:] if node.op != "IdentityN" else [])
        ed.commit()
        pruned = removed.pop("pruned", 0)
        counters: dict[str, int | float] = {f"removed_{op}": removed[op] for op in sorted(removed)}
        counters["removed"] = sum(removed.values())
        counters["skipped"] = len(skipped)
        counters["pruned"] = pruned
        counters["control_edges_dropped"] = dropped
        reasons = Counter(skipped.values())
        notes = [f"kept {count} {why}" for why, count in sorted(reasons.items())]
        self._dtypes = None  # its tf.Graph would outlive the run on the pass object
        modified = bool(counters["removed"] or pruned or dropped)
        if not modified:
            return PassResult(given, modified=False, counters=counters, notes=notes)
        stand_ins.restore(model.graph_def, weights)
        return PassResult(model, modified=modified, counters=counters,
                          notes=notes)

    def _sink_blocker(self, ed: GraphEditor, node: Any, frames: set[str]) -> str:
        if node.name in ed.protected:
            return "signature node or init op"
        if node.name in frames or any(c.name in frames for c in ed.control_consumers(node.name)):
            return "inside a control-flow frame"
        return ""

    def _bypass_blocker(self, ed: GraphEditor, node: Any, frames: set[str]) -> str:
        if node.name in ed.protected:
            return "signature node or init op"
        if node.name in frames:
            return "inside a control-flow frame"
        if ed.control_inputs(node):
            return "has control inputs"
        data = ed.data_inputs(node)
        if not data:
            return "has no input"
        for inp in data if node.op == "IdentityN" else data[:1]:
            producer = ed.node(inp)
            if producer is None:
                return "input missing"
            if producer.device and node.device and producer.device != node.device:
                return "copies between devices"
            if self._dtypes.is_ref_or_resource(inp):
                return "reads a reference or resource tensor"
        if node.op != "IdentityN" and self._dtypes.attr_is_ref_or_resource(node):
            return "passes a reference or resource tensor"
        return ""


def _drop_empty_waits(ed: GraphEditor, frames: set[str]) -> int:
    """Drop control edges that wait for nothing: on a constant, or on a NoOp that itself only waits
    on constants (TF2 freezing leaves ``Identity(out, ^NoOp)`` with the NoOp waiting on every weight).
    Such NoOps, once unread, go too. Returns the number of control edges dropped."""
    memo: dict[str, bool] = {}

    def empty(name: str) -> bool:
        if name not in memo:
            memo[name] = False  # cycle guard
            node = ed.node(name)
            if node is not None and name not in frames:
                if node.op == "NoOp":
                    memo[name] = all(i.startswith("^") and empty(i[1:]) for i in node.input)
                else:
                    memo[name] = ed.const_value(name) is not None
        return memo[name]

    dropped = 0
    for node in list(ed.graph_def.node):
        if node.name in ed.removed or node.name in frames:
            continue
        waits = [i for i in ed.control_inputs(node) if empty(i[1:])]
        if waits:
            ed.set_inputs(node, [i for i in node.input if i not in waits])
            dropped += len(waits)
    for name, is_empty in list(memo.items()):
        node = ed.node(name)
        if is_empty and node is not None and node.op == "NoOp" and name not in ed.protected and not ed.consumers(name):
            inputs = list(node.input)
            ed.set_inputs(node, [])
            ed.remove([name])
            ed.prune_dead(inputs)
    return dropped


class _TensorTypes:
    """Tensor dtypes, from TensorFlow's own import of the graph (ref-typedness is not in the GraphDef)."""

    def __init__(self, graph_def: Any) -> None:
        self._graph_def = graph_def
        self._graph: Any = None
        self._failed = False

    def _load(self) -> Any:
        if self._graph is None and not self._failed:
            import tensorflow as tf

            from graphopt.graph.checks import skeleton

            graph = tf.Graph()
            try:
                with graph.as_default():  # dtypes only: the skeleton spares importing the weights
                    tf.graph_util.import_graph_def(skeleton(self._graph_def), name="")
                self._graph = graph
            except Exception:  # an unimportable graph: decide from attributes, conservatively
                self._failed = True
        return self._graph

    def is_ref_or_resource(self, tensor: str) -> bool:
        name, port = split_tensor(tensor)
        graph = self._load()
        if graph is None:
            return True
        try:
            dtype = graph.get_operation_by_name(name).outputs[port].dtype
        except (KeyError, IndexError, ValueError):
            return True
        return dtype._is_ref_dtype or dtype.base_dtype.as_datatype_enum == _DT_RESOURCE

    @staticmethod
    def attr_is_ref_or_resource(node: Any) -> bool:
        t = node.attr["T"].type if "T" in node.attr else 0
        return t == _DT_RESOURCE or t > _REF_OFFSET


PASSES = [StripDebugOps]
