"""``graphopt explain``'s core: run one pass with explanations on and return them, for the graph or one node.

The explanations are the pass's own (``Pass.explains``): for rule-based passes
they come from the matcher through :class:`~graphopt.rewrite.tracer.Tracer`.
The pass runs through a one-step :class:`~graphopt.passes.pipeline.Pipeline`,
so it also runs inside function bodies where it applies to them, and each
explanation names the function it is about.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from graphopt.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from graphopt.model import Model
    from graphopt.plugins import Host


@dataclass
class ExplainReport:
    """What ``explain`` found: one dict per rule and candidate site (see ``Explanation.to_dict``)."""

    pass_name: str
    spec: str
    explanations: list[dict[str, Any]]
    status: str
    counters: dict[str, Any] = field(default_factory=dict)
    node: str | None = None
    note: str | None = None  # said instead when --node names no candidate site

    @property
    def fired(self) -> int:
        return sum(1 for e in self.explanations if e["fired"])

    @property
    def kept(self) -> int:
        return sum(1 for e in self.explanations if not e["fired"])

    def to_dict(self) -> dict[str, Any]:
        return {"pass": self.pass_name, "spec": self.spec, "status": self.status, "node": self.node,
                "fired": self.fired, "kept": self.kept, "counters": dict(self.counters), "note": self.note,
                "explanations": list(self.explanations)}


def explaining_passes(host: "Host") -> list[str]:
    """Names of the registered passes that explain themselves."""
    return sorted(name for name, info in host.registry.passes.items() if getattr(info.cls, "explains", False))


def explain(model: "Model", spec: str, *, node: str | None = None, host: "Host | None" = None) -> ExplainReport:
    """Run the one pass ``spec`` names (``"fold_pad_into_conv"``, ``"strip_debug_ops(op=Assert)"``) on
    ``model`` and return its explanations, only those about ``node`` if given.

    Raises :class:`UsageError` when ``spec`` is not exactly one pass, the pass does not explain
    itself, or ``node`` is in neither the graph nor its functions.
    """
    from graphopt.passes.pipeline import Pipeline
    from graphopt.plugins import default_host

    host = host or default_host()
    pipeline = Pipeline.parse(spec, host=host)
    passes = pipeline.passes()
    if len(passes) != 1:
        raise UsageError(f"explain takes one pass, '{spec}' is {len(passes)}", where="explain",
                         hint="name one pass, e.g. fold_pad_into_conv or fold_all_batch_norms")
    pass_ = passes[0]
    if not pass_.explains:
        raise UsageError(f"pass '{pass_.name}' does not say why it did not fire", where="explain",
                         hint="passes that do: " + ", ".join(explaining_passes(host)))
    if node is not None:
        _check_node(model, node)
    result = pipeline.run(model, explain=True)
    record = result.records[-1]
    explanations = [e for e in record.explanations if node is None or e["node"] == node]
    note = None
    if node is not None and not explanations:
        op = _op_of(model, node)
        note = f"{op} '{node}' is no candidate site of {pass_.name}: none of its rules looks at it"
    return ExplainReport(pass_.name, pass_.spec, explanations, record.status, dict(record.counters), node, note)


def _all_nodes(model: "Model") -> dict[str, str]:
    names = {n.name: n.op for n in model.graph_def.node}
    for fdef in model.graph_def.library.function:
        for n in fdef.node_def:
            names.setdefault(n.name, n.op)
    return names


def _op_of(model: "Model", node: str) -> str:
    return _all_nodes(model).get(node, "node")


def _check_node(model: "Model", node: str) -> None:
    names = _all_nodes(model)
    if node not in names:
        close = difflib.get_close_matches(node, list(names), n=3)
        raise UsageError(f"no node '{node}' in the graph or its functions", where="explain --node",
                         hint=f"did you mean {', '.join(close)}?" if close else "graphopt inspect lists the graph")
