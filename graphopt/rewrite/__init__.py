"""Pattern rewrites for GraphDefs: a rule is a pattern, a condition and a replacement.

Modelled on onnxscript's rewriter (``onnxscript/rewriter``): the pattern is
written as the ops it matches, a condition that does not hold returns the
reason, and a tracer keeps, per site, why a rule did not fire, which is what
``graphopt explain`` and ``optimize --explain`` print.

- :mod:`graphopt.rewrite.pattern`: ``op.Conv2D(...)``, :class:`Var`, :class:`Const`;
- :mod:`graphopt.rewrite.matcher`: matching at one node, :class:`Match`, the failure phrases;
- :mod:`graphopt.rewrite.rule`: :class:`Rule`, the replacement builder, the fixpoint
  (:func:`apply_rules`) and :class:`RulePass` / :func:`rule_pass`;
- :mod:`graphopt.rewrite.tracer`: :class:`Explanation` per rule and site.

docs/develop/writing-a-pass.md shows a complete rule plugin.
"""

from graphopt.rewrite.matcher import Match, Refuse, Status
from graphopt.rewrite.pattern import Const, Var, attr_value
from graphopt.rewrite.rule import Replacement, RewriteStats, Rule, RulePass, apply_at, apply_rules, rule_pass
from graphopt.rewrite.tracer import Explanation, Tracer

__all__ = ["Const", "Explanation", "Match", "Refuse", "Replacement", "RewriteStats", "Rule", "RulePass", "Status",
           "Tracer", "Var", "apply_at", "apply_rules", "attr_value", "rule_pass"]
