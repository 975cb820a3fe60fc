"""Is this GraphDef one TensorFlow can import? Checked after every pass that changed the graph.

A cheap structural check runs first (unique names, every input names an existing
node, protected nodes kept) so the common mistakes get a message naming the node;
then TensorFlow itself imports the graph, which catches unknown ops, bad attrs and
type mismatches.
"""

from __future__ import annotations

from collections.abc import Iterable

from graphopt.errors import PassError
from graphopt.model import Model, node_name


def structural_problems(graph_def, must_keep: Iterable[str] = ()) -> list[str]:
    """Problems a GraphDef has before TensorFlow sees it, each naming the node at fault."""
    problems: list[str] = []
    names: set[str] = set()
    for node in graph_def.node:
        if not node.name:
            problems.append(f"a node of op {node.op or '?'} has no name")
        elif node.name in names:
            problems.append(f"node '{node.name}' appears twice")
        names.add(node.name)
    for node in graph_def.node:
        for inp in node.input:
            if node_name(inp) not in names:
                problems.append(f"node '{node.name}' reads '{inp}', which does not exist")
    for keep in must_keep:
        if keep not in names:
            problems.append(f"node '{keep}' (signature input/output or init op) was removed")
    return problems


def check_graph(model: Model, must_keep: Iterable[str] | None = None) -> None:
    """Raise :class:`PassError` if ``model``'s graph is not importable or lost a protected node."""
    keep = model.protected_nodes if must_keep is None else set(must_keep)
    problems = structural_problems(model.graph_def, keep)
    if problems:
        raise PassError("the pass returned an invalid graph: " + problems[0],
                        details=problems[1:6] + ([f"... and {len(problems) - 6} more"] if len(problems) > 6 else []),
                        hint="a pass must keep every node it does not rewire, and never reuse a name")
    import tensorflow as tf

    try:
        with tf.Graph().as_default():
            tf.graph_util.import_graph_def(model.graph_def, name="")
    except (ValueError, tf.errors.OpError, TypeError) as exc:
        raise PassError("the pass returned a graph TensorFlow cannot import: " + str(exc).strip().split("\n")[0],
                        hint="a pass must keep every node it does not rewire, and never reuse a name") from None
