"""Signatures from what TensorFlow gives (tensors, TensorInfo protos) or from names the user gives.

Shared by every loader: a signature key maps to a tensor name in the frozen
graph plus its dtype and static shape.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from graphopt.errors import InputError
from graphopt.graph.names import node_name, tensor_name
from graphopt.model import DEFAULT_SIGNATURE, Signature, TensorSpec

# Ops that are never a model's output even when nothing reads them.
NON_OUTPUT_OPS = {"NoOp", "Assert", "Print", "PrintV2", "SaveV2", "Save", "SaveSlices", "RestoreV2", "Restore",
                  "RestoreSlice", "MergeV2Checkpoints", "Const", "Placeholder", "PlaceholderWithDefault",
                  "VariableV2", "Variable", "VarHandleOp", "Assign", "AssignVariableOp", "AssignAdd", "AssignSub",
                  "AssignAddVariableOp", "AssignSubVariableOp", "InitializeTableV2", "InitializeTable",
                  "InitializeTableFromTextFileV2", "InitializeTableFromTextFile", "LookupTableImportV2",
                  "HashTableV2", "HashTable", "ScalarSummary", "HistogramSummary", "MergeSummary", "WriteSummary",
                  "VarIsInitializedOp", "IsVariableInitialized"}


# tf.debugging.Assert builds an If ("AssertGuard") whose Identity output nobody reads.
_ASSERT_SCOPE = re.compile(r"(^|/)(Assert|AssertGuard)(/|$)")


def sanitize_key(name: str) -> str:
    """A node or tensor name as a signature key: ``"scope/out:1"`` -> ``"scope_out_1"``."""
    name = name[:-2] if name.endswith(":0") else name
    return re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_") or "tensor"


def shape_of(shape: Any) -> tuple[int | None, ...] | None:
    """A ``TensorShape`` or ``TensorShapeProto`` as graphopt's shape tuple (``None`` = unknown rank)."""
    if hasattr(shape, "unknown_rank"):  # TensorShapeProto
        if shape.unknown_rank:
            return None
        return tuple(None if d.size < 0 else int(d.size) for d in shape.dim)
    if shape.rank is None:
        return None
    return tuple(None if d is None else int(d) for d in shape.as_list())


def spec_from_tensor(tensor: Any, name: str | None = None) -> TensorSpec:
    return TensorSpec(name=name or tensor.name, dtype=tensor.dtype.name, shape=shape_of(tensor.shape))


def spec_from_tensor_info(info: Any) -> TensorSpec:
    import tensorflow as tf

    if not info.name:
        raise InputError("signature tensor is not a dense tensor (sparse/ragged/composite signatures are not supported)",
                         hint="export a signature with dense tensors")
    return TensorSpec(name=tensor_name(info.name), dtype=tf.as_dtype(info.dtype).name,
                      shape=shape_of(info.tensor_shape))


def signature_from_def(sig_def: Any, key: str) -> Signature:
    """A :class:`Signature` from a ``SignatureDef`` proto (TF1 SavedModels, meta graphs)."""
    return Signature(inputs={k: spec_from_tensor_info(v) for k, v in sorted(sig_def.inputs.items())},
                     outputs={k: spec_from_tensor_info(v) for k, v in sorted(sig_def.outputs.items())}, key=key)


def choose_key(available: Iterable[str], wanted: str | None, where: str) -> str:
    """The signature key to use: ``wanted``, else ``serving_default``, else the only one."""
    keys = sorted(available)
    if wanted is not None:
        if wanted not in keys:
            raise InputError(f"no signature '{wanted}'", where=where,
                             hint=f"available signatures: {', '.join(keys) or '(none)'}; pick one with --signature")
        return wanted
    if DEFAULT_SIGNATURE in keys:
        return DEFAULT_SIGNATURE
    if len(keys) == 1:
        return keys[0]
    if not keys:
        raise InputError("the model has no signatures", where=where,
                         hint="give --inputs and --outputs, or export the model with a serving signature")
    raise InputError(f"no '{DEFAULT_SIGNATURE}' signature and several others", where=where,
                     hint=f"pick one with --signature: {', '.join(keys)}")


def graph_tensors(graph_def: Any) -> Any:
    """Import ``graph_def`` into a fresh graph (to read tensor dtypes and shapes)."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    return graph


def resolve_names(graph: Any, names: Sequence[str], where: str, role: str) -> dict[str, TensorSpec]:
    """User-given node or tensor names -> ``{key: TensorSpec}``; an unknown name is an :class:`InputError`."""
    out: dict[str, TensorSpec] = {}
    for name in names:
        name = name.strip()
        known = {op.name for op in graph.get_operations()}
        if node_name(name) not in known:
            close = _closest(node_name(name), sorted(known))
            raise InputError(f"{role} '{name}' is not in the graph", where=where,
                             hint=(f"did you mean {', '.join(close)}?" if close else
                                   f"the graph has {len(known)} nodes; list them with `graphopt inspect`"))
        try:
            tensor = graph.get_tensor_by_name(tensor_name(name))
        except (KeyError, ValueError):
            raise InputError(f"{role} '{name}' names no tensor (the op has no such output)", where=where,
                             hint="name a tensor-producing node, e.g. 'scope/op' or 'scope/op:0'") from None
        key = sanitize_key(name)
        if key in out:
            key = sanitize_key(tensor.name)
        out[key] = spec_from_tensor(tensor)
    return out


def _closest(name: str, known: list[str]) -> list[str]:
    import difflib

    return difflib.get_close_matches(name, known, n=3, cutoff=0.6)


def infer_inputs(graph_def: Any) -> list[str]:
    """Every Placeholder (not resource-typed: those are tables or variables the loader replaces)."""
    return [n.name for n in graph_def.node if n.op == "Placeholder" and n.attr["dtype"].type != 20]


def infer_outputs(graph_def: Any, ignore_prefixes: Sequence[str] = ()) -> list[str]:
    """Sinks: nodes whose outputs nobody reads, minus no-ops, asserts (and their guards), savers, initialisers,
    constants and names under ``ignore_prefixes``."""
    consumed = {node_name(i) for n in graph_def.node for i in n.input}
    out = []
    for n in graph_def.node:
        if n.name in consumed or n.op in NON_OUTPUT_OPS or _ASSERT_SCOPE.search(n.name):
            continue
        if any(n.name == p or n.name.startswith(p + "/") for p in ignore_prefixes):
            continue
        out.append(n.name)
    return out


def ancestors(graph_def: Any, roots: Sequence[str]) -> set[str]:
    """Names of ``roots`` and every node they read, directly or not."""
    inputs = {n.name: [node_name(i) for i in n.input] for n in graph_def.node}
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(inputs.get(name, []))
    return seen


def signature_from_names(graph_def: Any, inputs: Sequence[str] | None, outputs: Sequence[str] | None, where: str,
                         ignore_prefixes: Sequence[str] = ()) -> Signature:
    """A signature for a graph that has none: the names given, else inferred.

    Inferred outputs are the sinks (:func:`infer_outputs`); inferred inputs are
    the Placeholders those outputs depend on (so a training graph's label
    placeholder is not an input of the served model).
    """
    out_names = list(outputs) if outputs else infer_outputs(graph_def, ignore_prefixes)
    if not out_names:
        raise InputError("cannot tell the graph's outputs: every node's output is read by another", where=where,
                         hint="name them with --outputs")
    if inputs:
        in_names = list(inputs)
    else:
        needed = ancestors(graph_def, [node_name(o) for o in out_names])
        in_names = [n for n in infer_inputs(graph_def) if n in needed]
    graph = graph_tensors(graph_def)
    ins = resolve_names(graph, in_names, where, "input")
    outs = resolve_names(graph, out_names, where, "output")
    return Signature(inputs=ins, outputs=outs)


def override(sig: Signature, graph: Any | Callable[[], Any], inputs: Sequence[str] | None,
             outputs: Sequence[str] | None, where: str) -> Signature:
    """Keep ``sig`` but let user-given inputs/outputs replace either half.

    Each name is a key of the signature or a node/tensor name in ``graph`` (a
    ``tf.Graph``, or a function returning one, called only when needed).
    """
    cache: list[Any] = []

    def get_graph() -> Any:
        if not cache:
            cache.append(graph() if callable(graph) else graph)
        return cache[0]

    def pick(names: Sequence[str] | None, current: dict[str, TensorSpec], role: str) -> dict[str, TensorSpec]:
        if not names:
            return current
        out: dict[str, TensorSpec] = {}
        for name in names:
            out.update({name: current[name]} if name in current else resolve_names(get_graph(), [name], where, role))
        return out

    if not inputs and not outputs:
        return sig
    return Signature(inputs=pick(inputs, sig.inputs, "input"), outputs=pick(outputs, sig.outputs, "output"),
                     key=sig.key, method_name=sig.method_name)


def _output_dtype(node: Any, port: int) -> int | None:
    """The ``DataType`` enum of output ``port`` of ``node``, from its op's definition and attrs (no import of
    the graph); ``None`` when the op or an attr is unknown (then there is nothing to compare)."""
    from tensorflow.python.framework import op_def_registry

    op_def = op_def_registry.get(node.op)
    if op_def is None:
        return None
    defaults = {a.name: a.default_value for a in op_def.attr if a.HasField("default_value")}

    def attr(name: str) -> Any:
        return node.attr[name] if name in node.attr else defaults.get(name)

    types: list[int] = []
    for arg in op_def.output_arg:
        if arg.type_list_attr:
            value = attr(arg.type_list_attr)
            types.extend(value.list.type if value is not None else [])
        else:
            kind = arg.type or (attr(arg.type_attr).type if attr(arg.type_attr) is not None else None)
            count = attr(arg.number_attr).i if arg.number_attr and attr(arg.number_attr) is not None else 1
            if kind is None:
                return None
            types.extend([kind] * count)
        if len(types) > port:
            return types[port]
    return None


def check_dtypes(sig: Signature, graph_def: Any, where: str) -> None:
    """:class:`InputError` when the signature declares a dtype its tensor in ``graph_def`` does not have.

    A SignatureDef is data beside the graph: one saying int32 over a float32 placeholder was silently
    exported with the graph's dtype, and TF Serving clients following the declared one are refused.
    """
    import tensorflow as tf

    nodes = {n.name: n for n in graph_def.node}
    for role, specs in (("input", sig.inputs), ("output", sig.outputs)):
        for key, spec in specs.items():
            name, _, port = tensor_name(spec.name).rpartition(":")
            node = nodes.get(name)
            actual = _output_dtype(node, int(port)) if node is not None else None
            if actual is None or not spec.dtype:
                continue  # a missing node is reported where it is used; unknown ops cannot be compared
            try:
                declared = tf.as_dtype(spec.dtype).base_dtype
                real = tf.as_dtype(actual).base_dtype
            except TypeError:
                continue
            if declared != real:
                raise InputError(f"signature '{sig.key}' declares {role} '{key}' as {declared.name}, but the graph's "
                                 f"tensor {spec.name} is {real.name}", where=where,
                                 hint="the signature does not match the graph (clients sending "
                                      f"{declared.name} would be refused); export the model again, or name the "
                                      "graph's tensors with --inputs/--outputs")
