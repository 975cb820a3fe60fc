"""Attributes a node leaves at its op's registered default: filled in where TensorFlow's code needs them.

``tf.import_graph_def`` fills them in the graph it imports, but GraphDefs written with
``strip_default_attrs`` (or by hand) lack them, and native code that reads attributes by name
(GTT's transforms, Grappler through TF_OptimizeGraph) aborts the process on a missing one. One scan,
three ways to use it: in place with an undo list, as a few filled copies, or as a filled graph copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def _missing(graph_def: Any) -> Iterator[tuple[int, Any, Any, bool]]:
    """``(node index, node, AttrDef, existed)`` for each attr absent (or present without a value) that has a default.

    Nodes whose op is not registered (function calls, custom ops) are skipped.
    """
    from tensorflow.python.framework import op_def_registry

    for i, node in enumerate(graph_def.node):
        op_def = op_def_registry.get(node.op)
        if op_def is None:
            continue
        for attr_def in op_def.attr:
            if not attr_def.HasField("default_value"):
                continue
            existed = attr_def.name in node.attr
            if not existed or node.attr[attr_def.name].WhichOneof("value") is None:
                yield i, node, attr_def, existed


def add_default_attrs(graph_def: Any) -> list[tuple[Any, str, bool]]:
    """Fill the defaults in place; returns ``(node, attr, existed)`` per fill for :func:`undo_default_attrs`."""
    added = []
    for _, node, attr_def, existed in list(_missing(graph_def)):
        node.attr[attr_def.name].CopyFrom(attr_def.default_value)
        added.append((node, attr_def.name, existed))
    return added


def undo_default_attrs(added: list[tuple[Any, str, bool]]) -> None:
    """Put back what :func:`add_default_attrs` changed."""
    for node, name, existed in added:
        if existed:
            node.attr[name].Clear()
        else:
            del node.attr[name]


def default_attr_fills(graph_def: Any) -> dict[int, Any]:
    """Copies of the nodes that lack a registered attr default, with it filled in, by node index.

    Usually none or a few small nodes: the graph itself is never copied (100 MB on ResNet50).
    """
    fills: dict[int, Any] = {}
    for i, node, attr_def, _ in _missing(graph_def):
        if i not in fills:
            fills[i] = type(node)()
            fills[i].CopyFrom(node)
        fills[i].attr[attr_def.name].CopyFrom(attr_def.default_value)
    return fills


def with_default_attrs(graph_def: Any) -> Any:
    """``graph_def`` itself if no node lacks a registered attr default, else a copy with them filled in."""
    fills = default_attr_fills(graph_def)
    if not fills:
        return graph_def
    out = type(graph_def)()
    out.CopyFrom(graph_def)
    for i, node in fills.items():
        out.node[i].CopyFrom(node)
    return out
