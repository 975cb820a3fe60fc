"""Why a rule fired or did not, at each candidate site: the matcher's own failures, kept per site.

onnxscript's ``MatchingTracer`` keeps, per rule and node, the attempt that got
furthest. This one does the same per *site*: the node a rule's explanation is
about (its ``subject``, by default the pattern's root). A ``fold_pad_into_conv``
attempt starts at a Conv2D but explains a Pad, so a Pad feeding two
convolutions gets one sentence, from the better of the two attempts.

Rules run in rounds until nothing fires; a site keeps the reason from the last
round that tried it (an earlier round's reason may no longer hold). A site a
rule never tried, because no node of the pattern's shape reads it, is
explained from the pattern itself ("read by MaxPool 'pool', not by
Conv2D|DepthwiseConv2dNative"), after the last round.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from graphopt.rewrite.matcher import Match, Status

if TYPE_CHECKING:  # pragma: no cover
    from graphopt.graph.edit import GraphEditor
    from graphopt.rewrite.rule import Rule


@dataclass
class Explanation:
    """One rule at one site: whether it fired and, if not, why (``text`` is the whole sentence)."""

    rule: str
    node: str
    op: str
    fired: bool
    reason: str | None
    text: str
    function: str | None = None  # the function body the site is in; None for the main graph

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Tracer:
    """Collects the attempts of rules on one graph (see the module docstring)."""

    def __init__(self, function: str | None = None) -> None:
        self.function = function
        self.round = 0
        self._best: dict[tuple[str, str], tuple[int, int, Explanation]] = {}
        self._fired: dict[tuple[str, str], Explanation] = {}
        self._order: dict[str, int] | None = None  # graph order before any rewrite: the order of the report

    def next_round(self) -> None:
        self.round += 1

    def record(self, rule: "Rule", m: Match) -> None:
        """Keep attempt ``m`` of ``rule`` if it says more about its site than what is kept."""
        if self._order is None:
            self._order = {n.name: i for i, n in enumerate(m.graph.graph_def.node)}
        site = m.subject
        if site is None:
            return  # the pattern never reached a node of the subject's kind: not about any site
        key = (rule.name, site.name)
        if m.status == Status.SUCCESS:
            text = f"{m.site_op} '{site.name}' {rule.fired_verb}" + (f" ({m.detail})" if m.detail else "")
            self._fired.setdefault(key, Explanation(rule.name, site.name, m.site_op, True, None, text,
                                                    self.function))
            return
        score = m.score()
        kept = self._best.get(key)
        if kept is not None and kept[0] == self.round and kept[1] >= score:
            return
        reason = _reason(m)
        text = f"{m.site_op} '{site.name}' {rule.kept_verb}: {reason}"
        self._best[key] = (self.round, score, Explanation(rule.name, site.name, m.site_op, False, reason, text,
                                                          self.function))

    def explanations(self, ed: "GraphEditor", rules: list["Rule"]) -> list[Explanation]:
        """One explanation per rule and site, in graph order: fired, not fired and why, never tried and why."""
        order = dict(self._order or {})
        for node in ed.graph_def.node:
            order.setdefault(node.name, len(order))
        out: list[Explanation] = list(self._fired.values())
        for key, (_, _, exp) in self._best.items():
            # A site the rule fired at in one round and failed at later (a new node of the same name) fired.
            if key not in self._fired and ed.node(exp.node) is not None:
                out.append(exp)
        seen = {(e.rule, e.node) for e in out}
        for rule in rules:
            subject = rule.subject_pattern
            if subject is rule.compiled.root or subject.ops is None:
                continue  # every candidate root is tried, so it has an attempt above
            for node in ed.graph_def.node:
                if node.op in subject.ops and node.name not in ed.removed and (rule.name, node.name) not in seen:
                    reason = _untried(rule, node, ed)
                    out.append(Explanation(rule.name, node.name, node.op, False, reason,
                                           f"{node.op} '{node.name}' {rule.kept_verb}: {reason}", self.function))
        rank = {r.name: i for i, r in enumerate(rules)}
        out.sort(key=lambda e: (order.get(e.node, len(order)), rank.get(e.rule, 0)))
        return out


def _reason(m: Match) -> str:
    failure = m.failure
    if failure is None:
        return "not matched"
    if failure.node is None or failure.node == m.subject.name:
        return failure.reason
    node = m.graph.node(failure.node) or m.graph.nodes.get(failure.node)
    op = f"{node.op} " if node is not None else ""
    return f"its {op}'{failure.node}' {failure.reason}"


def _untried(rule: "Rule", node: Any, ed: "GraphEditor") -> str:
    """Why no attempt reached ``node``: what reads it is not what the pattern has there."""
    parent = rule.compiled.parent_of(rule.subject_pattern)
    readers = [c for c, i in ed.consumers(node.name) if not c.input[i].startswith("^")]
    if not readers:
        return "nothing reads it"
    if parent is None:  # pragma: no cover - the root is never untried
        return "not matched"
    pattern, index = parent
    shown = ", ".join(f"{c.op} '{c.name}'" for c in readers[:3]) + (" ..." if len(readers) > 3 else "")
    return f"read by {shown}, not as input {index} of {pattern.op_text}"
