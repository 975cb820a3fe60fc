"""Tensor and node names as GraphDefs and FunctionDefs spell them: the one place they are parsed.

Main graph: ``"node"``, ``"node:1"``, ``"^node"`` (control). Function bodies add
``"node:out_arg:2"`` (an output argument and its index). Every module that needs
a node from an input reference calls these instead of splitting on ``":"``.
"""

from __future__ import annotations


def node_name(tensor_name: str) -> str:
    """``"scope/op:1"`` -> ``"scope/op"``; ``"^ctrl"`` -> ``"ctrl"``."""
    name = tensor_name[1:] if tensor_name.startswith("^") else tensor_name
    head, sep, port = name.rpartition(":")
    return head if sep and port.isdigit() else name


def tensor_name(name: str) -> str:
    """Normalise a node or tensor name to a tensor name: ``"op"`` -> ``"op:0"``."""
    head, sep, port = name.rpartition(":")
    return name if sep and port.isdigit() else f"{name}:0"


def split_tensor(name: str) -> tuple[str, int]:
    """``"a:1"`` -> ``("a", 1)``; ``"a"`` -> ``("a", 0)``; control inputs (``"^a"``) -> ``("a", -1)``."""
    if name.startswith("^"):
        return name[1:], -1
    head, sep, port = name.rpartition(":")
    if sep and port.isdigit():
        return head, int(port)
    return name, 0


def join_tensor(node: str, port: int) -> str:
    """Inverse of :func:`split_tensor`, in GraphDef's canonical spelling (port 0 has no suffix)."""
    if port < 0:
        return "^" + node
    return node if port == 0 else f"{node}:{port}"


def parse_input(text: str) -> tuple[str, int | str, bool]:
    """``"a:1"`` -> ``("a", 1, False)``; ``"^a"`` -> ``("a", -1, True)``; function refs keep ``"out:0"`` ports."""
    if text.startswith("^"):
        return text[1:], -1, True
    head, sep, port = text.rpartition(":")
    if not sep:
        return text, 0, False
    if port.isdigit():
        # "node:out_arg:2" inside a function body: the node is before the first colon.
        node, sep2, out_arg = head.partition(":")
        if sep2:
            return node, f"{out_arg}:{port}", False
        return head, int(port), False
    return text, 0, False


def source_of(text: str) -> str:
    """The node an input reference reads, in a graph or a function body: ``"^a"``, ``"a:1"``, ``"a:out:0"`` -> ``"a"``."""
    if text[:1] == "^":
        text = text[1:]
    return text.partition(":")[0] if ":" in text else text
