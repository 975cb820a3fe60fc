"""Matching a compiled pattern at one node of a graph, with the reason when it does not match.

The matcher walks from the root towards the inputs. At each pattern node it
checks the op type, then matches the inputs (both orders for a commutative
node, keeping the attempt that got further), and only then the node's
attributes, so that a node whose *attributes* are wrong still binds the nodes
below it: the explanation can then name them. When the whole structure is
bound, the framework conditions run: every inner node feeds nothing outside
the match (``_exclusive``) and is not a signature node, and the root's outputs
the pattern does not replace are not read.

A failure is a :class:`Failure`: a phrase (``"also feeds 'branch/relu'"``) and
the node it is about. :mod:`graphopt.rewrite.tracer` turns it into a sentence
about the site the rule explains (``"FusedBatchNormV3 'bn3' not folded: its
Conv2D 'conv3' also feeds 'branch/relu'"``). There is no table of messages:
each phrase is written where the check that fails is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from graphopt.graph.names import split_tensor
from graphopt.rewrite.pattern import (
    CompiledPattern,
    Const,
    NodeOutput,
    NodePattern,
    Var,
    _short,
    attr_matches,
    attr_value,
    describe_spec,
)

if TYPE_CHECKING:  # pragma: no cover
    from graphopt.graph.edit import GraphEditor


class Status(enum.IntEnum):
    """How far an attempt got (higher is further), as onnxscript's ``MatchStatus``."""

    NO_MATCH = 0
    CONDITION_FAILED = 1
    REPLACEMENT_FAILED = 2
    SUCCESS = 3


@dataclass
class Failure:
    """Why an attempt stopped: ``reason`` is said of ``node`` (a node name), or of the whole site if None."""

    reason: str
    node: str | None = None


class Refuse(Exception):
    """Raise from a condition or replacement (or a helper they call) to refuse with a reason."""

    def __init__(self, reason: str, node: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.node = getattr(node, "name", node)


@dataclass
class Match:
    """What a pattern bound at one site: nodes by ``_name``, tensors by Var/Const name, constant values.

    ``m["x"]`` is the tensor bound to Var or Const ``x``; ``m.values["c"]`` the value of Const ``c``;
    ``m.nodes["conv"]`` the NodeDef bound to ``_name="conv"``; ``m.root`` the root node;
    ``m.graph`` the :class:`~graphopt.graph.edit.GraphEditor` (consumers, shapes, constants).
    ``m.function`` names the function body the graph is, or is None for the main graph.
    """

    graph: "GraphEditor"
    root: Any
    nodes: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, str] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    ports: tuple[int, ...] = ()
    status: Status = Status.NO_MATCH
    failure: Failure | None = None
    subject: Any = None
    site_op: str = ""  # the subject's op when matched (a replacement may turn the node into another op)
    function: str | None = None
    detail: str = ""  # a replacement may say what it did ("EXPLICIT padding [0, 1, 0, 1]")
    pruned: int = 0  # nodes that only the replaced ones fed, removed after the replacement
    bound: dict[int, Any] = field(default_factory=dict)  # id(NodePattern) -> NodeDef

    def __getitem__(self, name: str) -> str:
        return self.tensors[name]

    def attr(self, node: Any, key: str) -> Any:
        """Attribute ``key`` of a node (or of the node bound to that ``_name``), as a Python value."""
        if isinstance(node, str):
            node = self.nodes[node]
        return attr_value(self.graph.attr(node, key))

    @property
    def matched(self) -> list[Any]:
        """Every node the pattern bound, root first."""
        return _unique(self.bound.values())

    @property
    def ok(self) -> bool:
        return self.status == Status.SUCCESS

    def fail(self, reason: str, node: Any = None, status: Status = Status.NO_MATCH) -> "Match":
        self.failure = Failure(reason, getattr(node, "name", node))
        self.status = status
        return self

    def score(self) -> int:
        """Which of two attempts got further: status first, then how many nodes were bound."""
        return int(self.status) * 1000 + len(self.bound)


def _unique(nodes: Any) -> list[Any]:
    out, seen = [], set()
    for n in nodes:
        if id(n) not in seen:
            seen.add(id(n))
            out.append(n)
    return out


class _State:
    """Bindings made so far; copied at a commutative node so a failed order leaves no trace."""

    def __init__(self) -> None:
        self.bound: dict[int, Any] = {}
        self.by_node: dict[str, int] = {}
        self.nodes: dict[str, Any] = {}
        self.tensors: dict[str, str] = {}
        self.values: dict[str, np.ndarray] = {}
        self.subject: Any = None
        self.failure: Failure | None = None

    def copy(self) -> "_State":
        out = _State()
        out.bound, out.by_node, out.nodes = dict(self.bound), dict(self.by_node), dict(self.nodes)
        out.tensors, out.values, out.subject = dict(self.tensors), dict(self.values), self.subject
        return out

    def fail(self, reason: str, node: Any) -> bool:
        self.failure = Failure(reason, getattr(node, "name", node))
        return False


def match_at(pattern: CompiledPattern, node: Any, ed: "GraphEditor", *, subject: NodePattern | None = None,
             function: str | None = None) -> Match:
    """Match ``pattern`` with its root at ``node``. The result's ``status`` is SUCCESS or NO_MATCH."""
    st = _State()
    matcher = _Matcher(ed, subject)
    ok = matcher.node(pattern.root, node, st)
    m = Match(ed, node, st.nodes, st.tensors, st.values, subject=st.subject, function=function, bound=st.bound,
              site_op=st.subject.op if st.subject is not None else "")
    if not ok:
        m.failure = st.failure
        return m
    failure = _framework_checks(pattern, node, st, ed)
    if failure is not None:
        m.failure = failure
        return m
    m.ports = _root_ports(pattern, node, ed)
    m.status = Status.SUCCESS  # of the match; the rule's condition and replacement may still refuse
    return m


class _Matcher:
    def __init__(self, ed: "GraphEditor", subject: NodePattern | None) -> None:
        self.ed = ed
        self.subject = subject

    def node(self, p: NodePattern, node: Any, st: _State) -> bool:
        if id(p) in st.bound:  # the same pattern node reached twice (two outputs of one node)
            return st.bound[id(p)] is node or st.fail(f"reads '{node.name}' where the pattern needs "
                                                      f"'{st.bound[id(p)].name}' again", node)
        if node.name in st.by_node:
            return st.fail("would be matched twice by the pattern", node)
        if p is self.subject:
            st.subject = node
        st.bound[id(p)] = node
        st.by_node[node.name] = id(p)
        if p.name:
            st.nodes[p.name] = node
        data = [i for i in node.input if not i.startswith("^")]
        if len(data) < len(p.inputs) or (len(data) > len(p.inputs) and not p.variadic):
            return st.fail(f"has {len(data)} data inputs, the pattern {len(p.inputs)}", node)
        if p.commutative:
            first = st.copy()
            if self.inputs(p, node, [data[0], data[1]], first):
                _adopt(st, first)
            else:
                second = st.copy()
                if not self.inputs(p, node, [data[1], data[0]], second):
                    better = first if len(first.bound) >= len(second.bound) else second
                    _adopt(st, better)
                    return False
                _adopt(st, second)
        elif not self.inputs(p, node, data, st):
            return False
        # Checks of the node itself come after its inputs, so the nodes below are bound (and named) either way.
        if not p.control_inputs and len(data) < len(node.input):
            return st.fail("has control inputs", node)
        for key, spec in p.attrs.items():
            value = attr_value(self.ed.attr(node, key))
            if not attr_matches(spec, value):
                return st.fail(f"has {key}={_value_text(value)}, not {describe_spec(spec)}", node)
        return True

    def inputs(self, p: NodePattern, node: Any, data: list[str], st: _State) -> bool:
        for i, (vp, tensor) in enumerate(zip(p.inputs, data)):
            if vp is None:
                continue
            if isinstance(vp, Var):
                if vp.name in st.tensors and st.tensors[vp.name] != tensor:
                    return st.fail(f"input {i} is not the tensor bound as {vp.name} ({st.tensors[vp.name]})", node)
                st.tensors[vp.name] = tensor
            elif isinstance(vp, Const):
                if not self.const(vp, node, i, tensor, st):
                    return False
            elif isinstance(vp, NodeOutput):
                producer = self.ed.node(tensor)
                if producer is None:
                    return st.fail(f"input {i} ({tensor}) has no producer in this graph", node)
                port = split_tensor(tensor)[1]
                if vp.node.ops is not None and producer.op not in vp.node.ops:
                    return st.fail(f"input {i} comes from {producer.op} '{producer.name}', not {vp.node.op_text}", node)
                if port != vp.port:
                    return st.fail(f"input {i} is output {port} of {producer.op} '{producer.name}', "
                                   f"not output {vp.port}", node)
                if not self.node(vp.node, producer, st):
                    return False
        return True

    def const(self, vp: Const, node: Any, i: int, tensor: str, st: _State) -> bool:
        value = self.ed.const_value(tensor)
        if value is None:
            return st.fail(f"input {i} is not a constant", node)
        if vp.value is not None:
            want = np.asarray(vp.value)
            try:
                equal = bool(np.all(np.broadcast_to(want, np.broadcast_shapes(want.shape, value.shape)) == value))
            except ValueError:
                equal = False
            if not equal:
                return st.fail(f"input {i} is {_short(value)}, not {vp.describe()}", node)
        if vp.check is not None and not vp.check(value):
            return st.fail(f"input {i} is {_short(value)}, not {vp.describe()}", node)
        if vp.name:
            if vp.name in st.tensors and st.tensors[vp.name] != tensor:
                return st.fail(f"input {i} is not the tensor bound as {vp.name}", node)
            st.tensors[vp.name] = tensor
            st.values[vp.name] = value
        return True


def _adopt(st: _State, other: _State) -> None:
    st.bound, st.by_node, st.nodes = other.bound, other.by_node, other.nodes
    st.tensors, st.values, st.subject, st.failure = other.tensors, other.values, other.subject, other.failure


def _framework_checks(pattern: CompiledPattern, root: Any, st: _State, ed: "GraphEditor") -> Failure | None:
    """What makes a structural match unusable whatever the rule says: shared inner nodes, read outputs."""
    inside = set(st.by_node)
    for p in pattern.nodes:
        node = st.bound.get(id(p))
        if node is None or p is pattern.root or not p.exclusive:
            continue
        if node.name in ed.protected:
            return Failure("is a signature node or init op", node.name)
        outside = sorted({c.name for c, i in ed.consumers(node.name)
                          if c.name not in inside and not c.input[i].startswith("^")})
        if outside:
            more = f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""
            return Failure(f"also feeds '{outside[0]}'{more}", node.name)
    if pattern.ports is not None:
        for consumer, i in ed.consumers(root.name):
            port = split_tensor(consumer.input[i])[1]
            if port >= 0 and port not in pattern.ports:
                return Failure(f"output {port} is read by '{consumer.name}'", root.name)
    return None


def _root_ports(pattern: CompiledPattern, root: Any, ed: "GraphEditor") -> tuple[int, ...]:
    if pattern.ports is not None:
        return pattern.ports
    read = [split_tensor(c.input[i])[1] for c, i in ed.consumers(root.name)]
    return tuple(range(max([p for p in read if p >= 0], default=-1) + 1))


def _value_text(value: Any) -> str:
    if hasattr(value, "as_datatype_enum"):
        return value.name
    if isinstance(value, np.ndarray):
        return _short(value)
    return repr(value)
