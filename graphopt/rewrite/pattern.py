"""Patterns: the subgraph a rewrite rule looks for, written as the TensorFlow ops it matches.

A rule's ``pattern`` method receives an op builder and one :class:`Var` per
further parameter, and returns what the rule replaces::

    def pattern(self, op, x, w):
        padded = op["Pad", "PadV2"](x, Const("paddings"), _name="pad", _variadic=True)
        return op["Conv2D", "DepthwiseConv2dNative"](padded, w, _name="conv", padding="VALID")

- ``op.Conv2D(...)`` matches one op type, ``op["Pad", "PadV2"](...)`` any of several,
  ``op.any(...)`` any op at all.
- Positional arguments match the node's data inputs, in order: a :class:`Var`
  (any tensor; the same Var twice must be the same tensor), a :class:`Const`
  (a tensor that Const nodes compute, through Identity; its value is bound for
  the condition and the replacement), a Python number (a constant equal to
  it), ``None`` (anything), or another op's output.
- Keyword arguments match attributes: a value (``padding="VALID"``), a tuple of
  accepted values (``data_format=("NHWC", "NCHW")``) or a predicate
  (``T=lambda t: t.is_floating``). Attribute values are read as Python values
  (see :func:`attr_value`), with the op's registered default when the node
  omits one.
- Options start with ``_``: ``_name`` (the key the match binds the node under),
  ``_commutative`` (two inputs, either order), ``_variadic`` (more data inputs
  than listed are allowed), ``_exclusive`` (default True: an inner node must
  feed nothing outside the match, or it could not be removed),
  ``_control_inputs`` (default True: allowed, and carried over to the
  replacement), ``_outputs`` (how many outputs to unpack: ``2`` gives two
  outputs of one multi-output node, ``0`` gives the node itself for ops
  without outputs such as ``Assert``, ``"*"`` gives the node and says the
  replacement stands in for every output it has).

What the pattern returns is its *root*: one output, a tuple of outputs of the
same node (multi-output), or a node (``_outputs=0`` or ``"*"``). The root's
outputs that the pattern does not return must have no readers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class ValuePattern:
    """Something that matches one tensor: an input of a node in the pattern."""


@dataclass(eq=False)
class Var(ValuePattern):
    """Any tensor, bound under ``name`` (``m["x"]`` in the condition and the replacement)."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(eq=False)
class Const(ValuePattern):
    """A tensor Const nodes compute (through Identity and small arithmetic), bound under ``name``.

    ``m.values[name]`` is its numpy value, ``m[name]`` the tensor. ``value`` requires it to
    equal a value (broadcast, exact); ``check`` is a predicate on the value.
    """

    name: str | None = None
    value: Any = None
    check: Callable[[np.ndarray], bool] | None = None

    def describe(self) -> str:
        if self.value is not None:
            return f"the constant {_short(np.asarray(self.value))}"
        return "a constant" if self.check is None else f"a constant accepted by {_callable_name(self.check)}"


@dataclass(eq=False)
class NodePattern:
    """One node of a pattern. Built by :class:`OpBuilder`, not by hand."""

    ops: frozenset[str] | None
    inputs: tuple[ValuePattern | None, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    commutative: bool = False
    variadic: bool = False
    exclusive: bool = True
    control_inputs: bool = True
    outputs: int | str = 1

    @property
    def op_text(self) -> str:
        return "any op" if self.ops is None else "|".join(sorted(self.ops))

    def __str__(self) -> str:
        return f"{self.op_text}" + (f" '{self.name}'" if self.name else "")


@dataclass(eq=False)
class NodeOutput(ValuePattern):
    """Output ``port`` of a node matching ``node``."""

    node: NodePattern
    port: int = 0


class _OpFactory:
    def __init__(self, ops: frozenset[str] | None) -> None:
        self.ops = ops

    def __call__(self, *inputs: Any, _name: str | None = None, _commutative: bool = False,
                 _variadic: bool = False, _exclusive: bool = True, _control_inputs: bool = True,
                 _outputs: int | str = 1, **attrs: Any) -> Any:
        if _commutative and len(inputs) != 2:
            raise TypeError("_commutative needs exactly two inputs")
        node = NodePattern(self.ops, tuple(_value_pattern(i) for i in inputs), dict(attrs), _name, _commutative,
                           _variadic, _exclusive, _control_inputs, _outputs)
        if _outputs == "*" or _outputs == 0:
            return node
        if not isinstance(_outputs, int) or _outputs < 0:
            raise TypeError(f"_outputs must be a count or '*', not {_outputs!r}")
        outs = tuple(NodeOutput(node, port) for port in range(_outputs))
        return outs[0] if _outputs == 1 else outs


class OpBuilder:
    """``op.Conv2D(...)``, ``op["Pad", "PadV2"](...)``, ``op.any(...)``: see the module docstring."""

    def __getattr__(self, op: str) -> _OpFactory:
        if op.startswith("_"):
            raise AttributeError(op)
        return _OpFactory(frozenset([op]))

    def __getitem__(self, ops: str | tuple[str, ...]) -> _OpFactory:
        return _OpFactory(frozenset([ops] if isinstance(ops, str) else ops))

    @property
    def any(self) -> _OpFactory:
        return _OpFactory(None)


def _value_pattern(value: Any) -> ValuePattern | None:
    if value is None or isinstance(value, ValuePattern):
        return value
    if isinstance(value, NodePattern):
        raise TypeError(f"{value} has no outputs to read: give it _outputs=N")
    if isinstance(value, (int, float, bool, np.ndarray, list)):
        return Const(None, value=value)
    raise TypeError(f"cannot match an input against {value!r}")


@dataclass
class CompiledPattern:
    """A pattern function, run once: its root, the root's outputs it replaces, every node by name."""

    root: NodePattern
    ports: tuple[int, ...] | None  # None: every output the root has ("*")
    nodes: list[NodePattern]
    variables: list[str]

    def named(self, name: str) -> NodePattern:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"the pattern has no node named {name!r}")

    def parent_of(self, child: NodePattern) -> tuple[NodePattern, int] | None:
        """The pattern node reading ``child`` and at which input, or None for the root."""
        for node in self.nodes:
            for i, inp in enumerate(node.inputs):
                if isinstance(inp, NodeOutput) and inp.node is child:
                    return node, i
        return None


def compile_pattern(fn: Callable[..., Any]) -> CompiledPattern:
    """Run a pattern function (``fn(op, var1, var2, ...)``; a bound method's ``self`` is already bound)."""
    params = list(inspect.signature(fn).parameters)[1:]
    out = fn(OpBuilder(), *[Var(p) for p in params])
    ports: tuple[int, ...] | None
    if isinstance(out, NodePattern):
        root, ports = out, None if out.outputs == "*" else ()
    elif isinstance(out, NodeOutput):
        root, ports = out.node, (out.port,)
    elif isinstance(out, tuple) and out and all(isinstance(o, NodeOutput) for o in out):
        root = out[0].node
        if any(o.node is not root for o in out):
            raise TypeError("a pattern returns outputs of one node (its root)")
        ports = tuple(o.port for o in out)
    else:
        raise TypeError(f"a pattern returns an op's output(s) or node, not {out!r}")
    nodes: list[NodePattern] = []

    def walk(node: NodePattern) -> None:
        if any(n is node for n in nodes):
            return
        nodes.append(node)
        for inp in node.inputs:
            if isinstance(inp, NodeOutput):
                walk(inp.node)

    walk(root)
    names = [n.name for n in nodes if n.name]
    if len(names) != len(set(names)):
        raise TypeError(f"two pattern nodes share a _name: {sorted(names)}")
    return CompiledPattern(root, ports, nodes, params)


# --- attribute values -------------------------------------------------------------------------------------------


def attr_value(attr: Any) -> Any:
    """An ``AttrValue`` as a Python value: str (decoded), int, float, bool, ``tf.DType``, shape tuple
    (unknown dims None; None for unknown rank), numpy array, function name, or a list of those."""
    kind = attr.WhichOneof("value")
    if kind is None:
        return None
    if kind == "s":
        return attr.s.decode("utf-8", "replace")
    if kind in ("i", "f", "b"):
        return getattr(attr, kind)
    if kind == "type":
        from tensorflow import as_dtype

        return as_dtype(attr.type)
    if kind == "shape":
        return _shape(attr.shape)
    if kind == "tensor":
        from tensorflow import make_ndarray

        return make_ndarray(attr.tensor)
    if kind == "func":
        return attr.func.name
    if kind == "list":
        lst = attr.list
        if lst.s:
            return [s.decode("utf-8", "replace") for s in lst.s]
        for field_name in ("i", "f", "b"):
            if getattr(lst, field_name):
                return list(getattr(lst, field_name))
        if lst.type:
            from tensorflow import as_dtype

            return [as_dtype(t) for t in lst.type]
        if lst.shape:
            return [_shape(s) for s in lst.shape]
        if lst.func:
            return [f.name for f in lst.func]
        return []
    return None  # placeholder attrs of function bodies


def _shape(shape: Any) -> tuple[int | None, ...] | None:
    if shape.unknown_rank:
        return None
    return tuple(d.size if d.size >= 0 else None for d in shape.dim)


def to_attr(value: Any) -> Any:
    """A Python value as an ``AttrValue``: the inverse of :func:`attr_value` (an AttrValue passes through)."""
    from tensorflow.core.framework.attr_value_pb2 import AttrValue

    if isinstance(value, AttrValue):
        return value
    if hasattr(value, "as_datatype_enum"):
        return AttrValue(type=value.as_datatype_enum)
    if isinstance(value, bool):
        return AttrValue(b=value)
    if isinstance(value, (int, np.integer)):
        return AttrValue(i=int(value))
    if isinstance(value, (float, np.floating)):
        return AttrValue(f=float(value))
    if isinstance(value, str):
        return AttrValue(s=value.encode())
    if isinstance(value, bytes):
        return AttrValue(s=value)
    if isinstance(value, np.ndarray):
        from tensorflow import make_tensor_proto

        return AttrValue(tensor=make_tensor_proto(value))
    if isinstance(value, (list, tuple)):
        items = list(value)
        lst = AttrValue.ListValue()
        if all(isinstance(v, bool) for v in items) and items:
            lst.b.extend(items)
        elif all(isinstance(v, (int, np.integer)) for v in items):
            lst.i.extend(int(v) for v in items)
        elif all(isinstance(v, (int, float, np.number)) for v in items):
            lst.f.extend(float(v) for v in items)
        elif all(isinstance(v, str) for v in items):
            lst.s.extend(v.encode() for v in items)
        elif all(hasattr(v, "as_datatype_enum") for v in items):
            lst.type.extend(v.as_datatype_enum for v in items)
        else:
            raise TypeError(f"cannot make an attribute list of {value!r}")
        return AttrValue(list=lst)
    raise TypeError(f"cannot make an attribute of {value!r}")


def attr_matches(spec: Any, value: Any) -> bool:
    """Whether an attribute value is accepted by a pattern's spec (value, tuple of values, or predicate)."""
    if callable(spec) and not hasattr(spec, "as_datatype_enum"):
        return bool(spec(value))
    if isinstance(spec, (tuple, set, frozenset)):
        return any(_equal(s, value) for s in spec)
    return _equal(spec, value)


def describe_spec(spec: Any) -> str:
    if callable(spec) and not hasattr(spec, "as_datatype_enum"):
        return f"what {_callable_name(spec)} accepts"
    if isinstance(spec, (tuple, set, frozenset)):
        return "one of " + ", ".join(_show(s) for s in spec)
    return _show(spec)


def _equal(spec: Any, value: Any) -> bool:
    if isinstance(value, np.ndarray) or isinstance(spec, np.ndarray):
        return np.array_equal(np.asarray(spec), np.asarray(value))
    if isinstance(value, list) and isinstance(spec, tuple):
        return list(spec) == value
    try:
        return bool(spec == value)
    except Exception:  # incomparable types (a DType against a string...)
        return False


def _show(value: Any) -> str:
    if hasattr(value, "as_datatype_enum"):
        return value.name
    if isinstance(value, np.ndarray):
        return _short(value)
    return repr(value)


def _short(value: np.ndarray) -> str:
    flat = value.reshape(-1)
    body = np.array2string(value if value.size <= 8 else flat[:8], separator=",", threshold=8)
    return body.replace("\n", "") + ("..." if value.size > 8 else "")


def _callable_name(fn: Any) -> str:
    name = getattr(fn, "__name__", "") or type(fn).__name__
    return "a predicate" if name == "<lambda>" else name
