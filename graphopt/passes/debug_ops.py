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

The removals are two rewrite rules (:class:`DropSink`, :class:`Bypass`; see
:mod:`graphopt.rewrite`), so ``graphopt explain SRC strip_debug_ops`` says
which node was kept and why. Nodes that wait on a removed pass-through op
(``^identity``) wait on its input's producer instead, so ordering is kept. Control edges that wait for
nothing (on a constant, or on a NoOp that only waits on constants, as TF2
freezing leaves them) are dropped, outside control-flow frames.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from graphopt.graph.edit import GraphEditor
from graphopt.graph.names import node_name, split_tensor
from graphopt.model import Model
from graphopt.passes.base import Option, Pass, PassResult
from graphopt.rewrite import Match, Rule, Tracer, apply_rules

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
    explains = True  # its removals are the rules drop_sink and bypass
    applies_to_functions = True  # If/While branches and called functions too (graphopt.graph.functions)

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
        dtypes = _TensorTypes(model.graph_def)
        tracer = Tracer()
        sinks = [op for op in SINK_OPS if op in wanted]
        passing = [op for op in PASS_THROUGH_OPS if op in wanted]
        rules: list[Rule] = ([DropSink(sinks, frames)] if sinks else []) + (
            [Bypass(passing, frames, dtypes)] if passing else [])
        # Sinks first: dropping an Assert frees Identities that only waited on it.
        stats = [apply_rules(ed, [r], tracer=tracer) for r in rules if isinstance(r, DropSink)]
        dropped = _drop_empty_waits(ed, frames)
        stats += [apply_rules(ed, [r], tracer=tracer) for r in rules if isinstance(r, Bypass)]
        ed.commit()
        removed = sum((s.fired_ops for s in stats), Counter())
        pruned = sum(s.pruned for s in stats)
        counters: dict[str, int | float] = {f"removed_{op}": removed[op] for op in sorted(removed)}
        counters["removed"] = sum(removed.values())
        explanations = tracer.explanations(ed, rules)
        reasons = Counter(f"{e.op}: {e.reason}" for e in explanations if not e.fired)
        counters["skipped"] = sum(reasons.values())
        counters["pruned"] = pruned
        counters["control_edges_dropped"] = dropped
        notes = [f"kept {count} {why}" for why, count in sorted(reasons.items())]
        dtypes.close()  # its tf.Graph would outlive the run
        modified = bool(counters["removed"] or pruned or dropped)
        if not modified:
            return PassResult(given, modified=False, counters=counters, notes=notes, explanations=explanations)
        stand_ins.restore(model.graph_def, weights)
        return PassResult(model, modified=modified, counters=counters, notes=notes, explanations=explanations)


class DropSink(Rule):
    """``Assert`` / ``PrintV2`` have no outputs: they go with the control edges that waited on them."""

    name = "drop_sink"
    fired_verb, kept_verb = "removed", "kept"

    def __init__(self, ops: list[str], frames: set[str]) -> None:
        self.ops, self.frames = tuple(ops), frames

    def pattern(self, op: Any) -> Any:
        return op[self.ops](_variadic=True, _outputs=0)

    def condition(self, m: Match) -> str | None:
        node, ed = m.root, m.graph
        if node.name in ed.protected:
            return "signature node or init op"
        if node.name in self.frames or any(c.name in self.frames for c in ed.control_consumers(node.name)):
            return "inside a control-flow frame"
        return None

    def rewrite(self, r: Any, m: Match) -> None:
        return None


class Bypass(Rule):
    """A pass-through op: its readers read its input, nodes waiting on it wait on its input's producer."""

    name = "bypass"
    fired_verb, kept_verb = "removed", "kept"

    def __init__(self, ops: list[str], frames: set[str], dtypes: "_TensorTypes") -> None:
        self.ops, self.frames, self.dtypes = tuple(ops), frames, dtypes

    def pattern(self, op: Any) -> Any:
        return op[self.ops](_variadic=True, _outputs="*")

    def condition(self, m: Match) -> str | None:
        node, ed = m.root, m.graph
        if node.name in ed.protected:
            return "signature node or init op"
        if node.name in self.frames:
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
            if self.dtypes.is_ref_or_resource(inp):
                return "reads a reference or resource tensor"
        if node.op != "IdentityN" and self.dtypes.attr_is_ref_or_resource(node):
            return "passes a reference or resource tensor"
        return None

    def rewrite(self, r: Any, m: Match) -> list[str]:
        data = m.graph.data_inputs(m.root)
        return data if m.root.op == "IdentityN" else data[:1]  # Print's other inputs are pruned


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

    def close(self) -> None:
        self._graph = self._graph_def = None

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
