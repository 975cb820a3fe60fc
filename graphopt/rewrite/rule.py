"""Rewrite rules: a pattern, a condition and a replacement; run to a fixpoint over a graph.

A rule is a small class (as onnxscript's ``RewriteRuleClassBase``)::

    class RemoveMulByOne(Rule):
        fired_verb, kept_verb = "removed", "kept"

        def pattern(self, op, x):
            return op.Mul(x, Const("one"), _commutative=True)

        def condition(self, m):
            return None if m.values["one"].ndim == 0 and m.values["one"] == 1 else "not a scalar 1"

        def rewrite(self, r, m):
            return m["x"]

- :meth:`Rule.pattern` is described in :mod:`graphopt.rewrite.pattern`.
- :meth:`Rule.condition` sees the :class:`~graphopt.rewrite.matcher.Match` and
  returns None (or True) to go on, or a reason string to refuse.
- :meth:`Rule.rewrite` builds the replacement with ``r`` (a :class:`Replacement`)
  and returns the tensor(s) that stand in for the root's outputs (None for a
  root without outputs); it refuses by raising :class:`Refuse`.

Installing a replacement (done here, the same for every rule): new nodes get
fresh names and the device and colocation (``_class``) of the matched node
they are ``_like`` (default: the root); the new node giving the root's first
output takes over the root's name, so readers, signature names and function
outputs keep pointing at it; the matched nodes' control inputs move to the new
nodes; nodes that waited on a removed node wait on its replacement; the root
and the inner nodes go, and then whatever only they fed (old weights).

:func:`apply_rules` runs rules over a graph until none fires; :class:`RulePass`
makes a pass of a list of rules, and :func:`rule_pass` does so in one line.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from graphopt.graph.names import join_tensor, node_name, split_tensor
from graphopt.model import Model
from graphopt.passes.base import Option, Pass, PassResult
from graphopt.rewrite.matcher import Match, Refuse, Status, match_at
from graphopt.rewrite.pattern import CompiledPattern, NodePattern, compile_pattern, to_attr
from graphopt.rewrite.tracer import Explanation, Tracer

if TYPE_CHECKING:  # pragma: no cover
    from graphopt.graph.edit import GraphEditor

MAX_ROUNDS = 20


class Rule:
    """Base class of rewrite rules; see the module docstring.

    ``name`` defaults to the class name in snake_case. ``subject`` names the
    pattern node (by ``_name``) that explanations are about, by default the
    root: ``fold_pad_into_conv`` matches from the convolution but explains the
    Pad. ``fired_verb`` / ``kept_verb`` complete the sentences "Pad 'p' folded",
    "Pad 'p' kept: <reason>".
    """

    name: ClassVar[str] = ""
    subject: ClassVar[str | None] = None
    fired_verb: ClassVar[str] = "rewritten"
    kept_verb: ClassVar[str] = "not rewritten"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()

    def pattern(self, op: Any, *variables: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def condition(self, m: Match) -> str | bool | None:
        """None or True: go on; a string: refuse, saying why (False: refuse without a reason)."""
        return None

    def rewrite(self, r: "Replacement", m: Match) -> str | Sequence[str] | None:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def compiled(self) -> CompiledPattern:
        cached = self.__dict__.get("_compiled")
        if cached is None:
            cached = self.__dict__["_compiled"] = compile_pattern(self.pattern)
        return cached

    @property
    def subject_pattern(self) -> NodePattern:
        return self.compiled.root if self.subject is None else self.compiled.named(self.subject)

    @property
    def root_ops(self) -> frozenset[str] | None:
        return self.compiled.root.ops

    def try_at(self, ed: "GraphEditor", node: Any, *, tracer: Tracer | None = None,
               function: str | None = None) -> Match:
        """Match at ``node``; if the condition holds, build and install the replacement. Returns the attempt."""
        m = match_at(self.compiled, node, ed, subject=self.subject_pattern, function=function)
        if m.ok:
            _decide(self, ed, m)
        if tracer is not None:
            tracer.record(self, m)
        return m

    def __repr__(self) -> str:
        return f"<rule {self.name}>"


def _decide(rule: Rule, ed: "GraphEditor", m: Match) -> None:
    verdict: str | bool | Refuse | None
    try:
        verdict = rule.condition(m)
    except Refuse as exc:
        verdict = exc
    if isinstance(verdict, Refuse):
        m.fail(verdict.reason, verdict.node, Status.CONDITION_FAILED)
        return
    if verdict is False or isinstance(verdict, str):
        m.fail(verdict or "its condition does not hold", None, Status.CONDITION_FAILED)
        return
    r = Replacement(ed, m)
    try:
        outputs = rule.rewrite(r, m)
        _install(ed, m, rule.compiled, r, outputs)
    except Refuse as exc:
        m.fail(exc.reason, exc.node, Status.REPLACEMENT_FAILED)
        return
    m.status = Status.SUCCESS


class Replacement:
    """Builds the nodes of a replacement. ``r.Conv2D(x, w, padding="SAME")``, ``r.op("Conv2D", ...)``,
    ``r.copy(node, ...)``, ``r.const(value)``; each returns the new tensor name (a tuple for ``_outputs=N``).

    Nodes are staged: nothing touches the graph until the replacement is complete, so a
    replacement that raises :class:`Refuse` half-way leaves no trace.
    """

    def __init__(self, ed: "GraphEditor", m: Match) -> None:
        self._ed, self._m = ed, m
        self.nodes: list[Any] = []
        self.sources: dict[str, str] = {}  # staged copy -> the matched node it copies
        self._names: set[str] = set()

    def __getattr__(self, op: str) -> Any:
        if op.startswith("_"):
            raise AttributeError(op)
        return lambda *inputs, **kwargs: self.op(op, *inputs, **kwargs)

    def op(self, op_type: str, *inputs: str, _name: str | None = None, _like: Any = None, _outputs: int = 1,
           **attrs: Any) -> Any:
        """A new ``op_type`` node reading ``inputs``; ``attrs`` are Python values or AttrValues."""
        from tensorflow.core.framework.node_def_pb2 import NodeDef

        node = NodeDef(name=self._fresh(_name or f"{self._m.root.name}/{op_type}"), op=op_type)
        node.input.extend(inputs)
        self._carry(node, self._like(_like))
        for key, value in attrs.items():
            node.attr[key].CopyFrom(to_attr(value))
        return self._stage(node, _outputs)

    def copy(self, original: Any, *inputs: str, _name: str | None = None, _outputs: int = 1, **attrs: Any) -> Any:
        """A new node like ``original`` (a matched node or its ``_name``): same op and attributes but
        ``attrs``, its data inputs unless ``inputs`` are given."""
        from tensorflow.core.framework.node_def_pb2 import NodeDef

        original = self._like(original)
        node = NodeDef(name=self._fresh(_name or original.name), op=original.op, device=original.device)
        self.sources[node.name] = original.name
        node.input.extend(inputs or [i for i in original.input if not i.startswith("^")])
        for key, value in original.attr.items():
            node.attr[key].CopyFrom(value)
        for key, value in attrs.items():
            node.attr[key].CopyFrom(to_attr(value))
        return self._stage(node, _outputs)

    def const(self, value: Any, *, dtype: Any = None, _name: str | None = None, _like: Any = None) -> str:
        """A new Const holding ``value`` (numpy dtype kept unless ``dtype`` is given), on the device of
        ``_like`` (default: the root)."""
        from tensorflow import make_tensor_proto
        from tensorflow.core.framework.node_def_pb2 import NodeDef

        node = NodeDef(name=self._fresh(_name or f"{self._m.root.name}/const"), op="Const",
                       device=self._like(_like).device)
        proto = make_tensor_proto(np.asarray(value), dtype=dtype)
        node.attr["dtype"].type = proto.dtype
        node.attr["value"].tensor.CopyFrom(proto)
        return self._stage(node, 1)

    def _like(self, like: Any) -> Any:
        if like is None:
            return self._m.root
        return self._m.nodes[like] if isinstance(like, str) else like

    @staticmethod
    def _carry(node: Any, like: Any) -> None:
        node.device = like.device
        if "_class" in like.attr:
            node.attr["_class"].CopyFrom(like.attr["_class"])

    def _fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self._ed.nodes or name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def _stage(self, node: Any, outputs: int) -> Any:
        self.nodes.append(node)
        if outputs == 1:
            return node.name
        return tuple(join_tensor(node.name, p) for p in range(outputs))


def _install(ed: "GraphEditor", m: Match, pattern: CompiledPattern, r: Replacement, outputs: Any) -> None:
    """Put the replacement in the graph (see the module docstring). Refuses before touching anything."""
    root = m.root
    if outputs is None:
        outputs = ()
    elif isinstance(outputs, str):
        outputs = (outputs,)
    outputs = tuple(outputs)
    # A "*" root may be given more outputs than are read: nodes waiting on it then wait on their producers.
    every = pattern.ports is None and len(outputs) >= len(m.ports)
    if len(outputs) != len(m.ports) and not every:
        raise Refuse(f"the replacement gives {len(outputs)} outputs for {len(m.ports)}")
    mapping = dict(zip(range(len(outputs)), outputs)) if every else dict(zip(m.ports, outputs))
    staged = {n.name: n for n in r.nodes}
    target = None
    if 0 in mapping and split_tensor(mapping[0]) == (node_name(mapping[0]), 0) and mapping[0] in staged:
        target = staged[mapping[0]]
        source = r.sources.get(target.name)
        if source not in (None, root.name) and root.name not in ed.protected:
            target = None  # a changed copy of an inner node keeps that node's name; the root's readers move to it
    if target is None and root.name in ed.protected:
        raise Refuse("is a signature node or init op", root)
    # Matched nodes that go: the root, and inner _exclusive nodes, unless something kept still reads them.
    referenced = {node_name(i) for n in r.nodes for i in n.input} | {node_name(t) for t in outputs}
    nodes_by_pattern = [(p, m.bound[id(p)]) for p in pattern.nodes if id(p) in m.bound]
    going = {n.name: n for p, n in nodes_by_pattern if (p is pattern.root or p.exclusive)
             and (n.name not in referenced or n is root and target is not None)}
    changed = True
    while changed:
        changed = False
        for name in list(going):
            readers = {c.name for c, i in ed.consumers(name) if not c.input[i].startswith("^")}
            if name != root.name and readers - set(going):
                del going[name]
                changed = True
    if root.name not in going:
        raise Refuse("the replacement still reads the root")
    # Control inputs order what the matched nodes computed, so they move to the nodes computing it now;
    # a sink (no outputs: Assert) orders nothing downstream and its control inputs go with it.
    controls = [] if not mapping else list(dict.fromkeys(
        i for n in going.values() for i in n.input if i.startswith("^") and i[1:] not in going))
    carriers = [n for n in r.nodes if n.op != "Const"] or r.nodes  # a Const with a control input is no constant
    if controls and not carriers:
        raise Refuse(f"has control inputs ({controls[0]}) and the replacement adds no node to carry them")

    # From here on nothing refuses: edit the graph.
    # The new node giving the root's output takes the root's name; a copy of a matched node that goes
    # takes that node's name: both are the same node changed, for readers, signatures and diffs.
    rename = {target.name: root.name} if target is not None else {}
    morphs = {root.name: target} if target is not None else {}
    for staged_name, source in r.sources.items():
        if source in going and source not in morphs and staged_name not in rename:
            rename[staged_name] = source
            morphs[source] = staged[staged_name]

    def renamed(tensor: str) -> str:
        head, port = split_tensor(tensor)
        return join_tensor(rename.get(head, head), port) if head in rename else tensor

    old_inputs = [i for n in going.values() for i in n.input]
    for node in r.nodes:
        node.input[:] = [renamed(i) for i in node.input]
        if any(node is c for c in carriers):
            node.input.extend(c for c in controls if c not in node.input)
    mapping = {port: renamed(t) for port, t in mapping.items()}
    for port, tensor in mapping.items():
        if tensor != join_tensor(root.name, port):
            ed.rewire(join_tensor(root.name, port), tensor)
    producers = list(dict.fromkeys(node_name(t) for t in mapping.values()))
    for name, new in morphs.items():
        node = going[name]
        ed.replace_node(node, new.op, list(new.input), dict(new.attr))
        node.device = new.device
        if "_class" not in new.attr and "_class" in node.attr:
            del node.attr["_class"]
    for node in r.nodes:
        if not any(node is new for new in morphs.values()):
            ed.insert(node)
    for name in going:
        if name not in morphs:
            ed.rewire_control(name, producers)
    ed.remove([name for name in going if name not in morphs])
    m.pruned = ed.prune_dead(old_inputs)


@dataclass
class RewriteStats:
    """What :func:`apply_rules` did: firings per rule and per site op, nodes pruned, rounds run."""

    fired: Counter = field(default_factory=Counter)
    fired_ops: Counter = field(default_factory=Counter)
    pruned: int = 0
    rounds: int = 0
    converged: bool = True

    @property
    def total(self) -> int:
        return sum(self.fired.values())


def apply_at(ed: "GraphEditor", rules: Sequence[Rule], node: Any, *, tracer: Tracer | None = None,
             function: str | None = None, stats: RewriteStats | None = None) -> Match | None:
    """Try ``rules`` in order at ``node``; the first that fires wins. Returns its match, or None."""
    for rule in rules:
        ops = rule.root_ops
        if ops is not None and node.op not in ops:
            continue
        op = node.op
        m = rule.try_at(ed, node, tracer=tracer, function=function)
        if m.ok:
            if stats is not None:
                stats.fired[rule.name] += 1
                stats.fired_ops[m.site_op or op] += 1
                stats.pruned += m.pruned
            return m
    return None


def apply_rules(ed: "GraphEditor", rules: Sequence[Rule], *, tracer: Tracer | None = None,
                max_rounds: int = MAX_ROUNDS, function: str | None = None) -> RewriteStats:
    """Run ``rules`` over every node, round after round, until a round fires none (a fixpoint).

    Removals are marked on ``ed``; the caller commits. ``converged`` is False when the
    last of ``max_rounds`` rounds still fired.
    """
    stats = RewriteStats()
    ops: set[str] | None = set()
    for rule in rules:
        ops = None if ops is None or rule.root_ops is None else ops | rule.root_ops
    for _ in range(max_rounds):
        if tracer is not None:
            tracer.next_round()
        stats.rounds += 1
        before = stats.total
        for node in list(ed.graph_def.node):
            if node.name in ed.removed or (ops is not None and node.op not in ops):
                continue
            apply_at(ed, rules, node, tracer=tracer, function=function, stats=stats)
        if stats.total == before:
            return stats
    stats.converged = False
    return stats


class RulePass(Pass):
    """A pass made of rewrite rules, run to a fixpoint (see :func:`apply_rules`).

    Subclasses list ``rules`` (instances), or override :meth:`make_rules` when
    options choose them. Counters: firings per rule, ``kept`` (sites where no
    rule fired) and ``pruned``; ``explanations`` say, per rule and site, why.
    The pass edits a copy without the weights (:mod:`graphopt.graph.weightless`)
    and works on any GraphDef, a function body as well as the main graph.
    """

    rules: ClassVar[Sequence[Rule]] = ()
    max_rounds: ClassVar[int] = MAX_ROUNDS
    edits_input = False
    explains = True
    applies_to_functions = True

    def make_rules(self) -> list[Rule]:
        return list(type(self).rules)

    def run(self, model: Model) -> PassResult:
        from graphopt.graph import weightless as stand_ins
        from graphopt.graph.edit import GraphEditor

        rules = self.make_rules()
        counters: dict[str, int | float] = {r.name: 0 for r in rules}
        counters.update(kept=0, pruned=0)
        wanted: set[str] | None = set()
        for rule in rules:
            for p in (rule.compiled.root, rule.subject_pattern):
                wanted = None if wanted is None or p.ops is None else wanted | p.ops
        if wanted is not None and not any(n.op in wanted for n in model.graph_def.node):
            return PassResult(model, modified=False, counters=counters)
        light, weights = stand_ins.strip(model.graph_def, model.protected_nodes, any_reader=True)
        ed = GraphEditor(light, model.protected_nodes, weights=weights)
        tracer = Tracer()
        stats = apply_rules(ed, rules, tracer=tracer, max_rounds=self.max_rounds)
        ed.commit()
        explanations = tracer.explanations(ed, rules)
        counters.update(stats.fired)
        counters["kept"] = sum(1 for e in explanations if not e.fired)
        counters["pruned"] = stats.pruned
        notes = summarize(explanations)
        if not stats.converged:
            notes.insert(0, f"still rewriting after {self.max_rounds} rounds; stopped at the bound")
        if not stats.total:
            return PassResult(model, modified=False, counters=counters, notes=notes, explanations=explanations)
        stand_ins.restore(light, weights)
        return PassResult(model.with_graph(light), modified=True, counters=counters, notes=notes,
                          explanations=explanations)


def summarize(explanations: Sequence[Explanation], limit: int = 5) -> list[str]:
    """Notes for the pass report: the sites not rewritten, grouped by reason, most frequent first."""
    reasons = Counter(f"{e.op}: {e.reason}" for e in explanations if not e.fired)
    return [f"kept {n} {why}" for why, n in reasons.most_common(limit)]


def rule_pass(name: str, rules: Sequence[Rule], *, description: str = "",
              options: dict[str, Option] | None = None) -> type[RulePass]:
    """A :class:`RulePass` class named ``name`` running ``rules``: register it as any pass."""
    doc = description or "Rewrite rules: " + ", ".join(r.name for r in rules) + "."
    return type(f"RulePass_{name}", (RulePass,), {"name": name, "description": doc, "rules": tuple(rules),
                                                   "options": dict(options or {}), "__doc__": doc})
