"""Function bodies as GraphDefs, so a pass written for graphs runs inside ``If``/``While`` branches and calls.

A TF2 export keeps its control flow, its asserts and its XLA-compiled pieces in
the ``FunctionDef``\\ s of the graph's library. A ``FunctionDef`` spells tensors
differently from a ``GraphDef``: a body node reads ``"node:out_arg:2"`` (an
output *argument* and its index) or an argument name, where a graph says
``"node:5"``. :func:`function_to_graph` turns a body into an ordinary
``GraphDef`` -- one ``Placeholder`` per argument, named after it, then the body
nodes with flat tensor names -- and :func:`graph_to_function` turns it back.
The round trip is exact: converting a body and back, unchanged, gives a
``FunctionDef`` equal to the original, field for field (tests/test_functions.py
checks it on a Keras LSTM, ``tf.debugging`` asserts, ``If``/``While`` and
XLA-compiled calls).

The flat names come from the op's ``OpDef`` (or, for a call by function name,
the called function's signature): output argument ``k`` of a node starts at
the sum of the sizes of the arguments before it, a size being 1, a
``number_attr`` or the length of a ``type_list_attr``. That is how TensorFlow's
own ``function_def_to_graph_def`` maps them; that helper cannot be used here
because it looks functions up in the default ``tf.Graph``, not in the graph's
library.

:func:`body_model` wraps a body as a :class:`~graphopt.model.Model` whose
signature is the function's arguments and return values, so a pass sees the
protection it sees on a main graph: arguments and returned tensors are never
removed. Control returns (the Asserts a body must run) are not protected:
removing one is exactly what ``strip_debug_ops`` is for, and the converter
drops the control return of a node that is gone. :func:`apply_to_functions`
runs a pass on every function body; the pipeline calls it for passes whose
``applies_to_functions`` is true.

Frozen TF2 graphs pass their weights into ``If`` branches and ``While`` bodies
as inputs. An argument every call passes as the same constant (and, for a
``While``, that the body returns unchanged) is that ``Const`` in the body graph
(:func:`constant_arguments`), so a batch norm in a branch folds; converted back,
the body reads the argument again where it still needs it. Known cost: weights a
pass rewrites there (folded kernels) become constants of the body while the
caller still passes the originals, unused, until Grappler specializes the call.

No TensorFlow import at module level.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from graphopt.graph.edit import function_references
from graphopt.graph.names import node_name

if TYPE_CHECKING:  # pragma: no cover
    from tensorflow.core.framework.function_pb2 import FunctionDef
    from tensorflow.core.framework.graph_pb2 import GraphDef

    from graphopt.model import Model
    from graphopt.passes.base import PassResult

_DT_INVALID = 0


class UnsupportedFunction(Exception):
    """A body this module cannot convert (an op it does not know, a polymorphic argument); the message says which."""


# --- references ------------------------------------------------------------------------


def library_index(graph_def: "GraphDef") -> dict[str, "FunctionDef"]:
    """Function name -> FunctionDef of the graph's library."""
    return {f.signature.name: f for f in graph_def.library.function}


def called_functions(nodes: Iterable[Any], library: dict[str, Any]) -> set[str]:
    """Library functions ``nodes`` call, and the ones those call, transitively."""
    seen: set[str] = set()
    todo = [ref for node in nodes for ref in function_references(node) if ref in library]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(ref for node in library[name].node_def for ref in function_references(node) if ref in library)
    return seen


def function_histograms(graph_def: "GraphDef") -> dict[str, Counter]:
    """Function name -> op histogram of its body (arguments and returns are not nodes and are not counted)."""
    return {f.signature.name: Counter(n.op for n in f.node_def) for f in graph_def.library.function}


# --- arguments every caller passes as the same constant ------------------------------------------

_BRANCH_OPS = {"If": ("then_branch", "else_branch"), "StatelessIf": ("then_branch", "else_branch")}
_CASE_OPS = ("Case", "StatelessCase")
_LOOP_OPS = ("While", "StatelessWhile")


def call_targets(node: Any, library: dict[str, Any]) -> list[tuple[str, int, bool]]:
    """``[(function, first input feeding its argument 0, is a loop)]`` for each function ``node`` calls
    with its own inputs (If/Case branches skip the condition; While's cond and body take every input)."""
    if node.op in ("PartitionedCall", "StatefulPartitionedCall") and "f" in node.attr:
        return [(node.attr["f"].func.name, 0, False)]
    if node.op in library:
        return [(node.op, 0, False)]
    if node.op in _BRANCH_OPS:
        return [(node.attr[key].func.name, 1, False) for key in _BRANCH_OPS[node.op]]
    if node.op in _CASE_OPS:
        return [(f.name, 1, False) for f in node.attr["branches"].list.func]
    if node.op in _LOOP_OPS:
        return [(node.attr["cond"].func.name, 0, True), (node.attr["body"].func.name, 0, True)]
    return []


def _loop_invariant(body: Any, index: int) -> bool:
    """Whether a While body returns its argument ``index`` unchanged (through Identity only)."""
    args = body.signature.input_arg
    outs = body.signature.output_arg
    if index >= len(args) or index >= len(outs):
        return False
    nodes = {n.name: n for n in body.node_def}
    tensor = body.ret.get(outs[index].name, "")
    for _ in range(len(nodes) + 1):
        if tensor == args[index].name:
            return True
        node = nodes.get(tensor.split(":")[0])
        data = [i for i in node.input if not i.startswith("^")] if node is not None else []
        if node is None or node.op != "Identity" or len(data) != 1:
            return False
        tensor = data[0]
    return False


def constant_arguments(graph_def: "GraphDef", library: dict[str, Any]) -> dict[str, dict[int, Any]]:
    """Function -> {argument index: Const NodeDef} for arguments every call passes the same constant.

    Inside such a body the argument *is* that constant, so a pass run on the body may read it (a batch
    norm's weights, passed into an ``If`` branch as inputs, then fold). Only functions whose every call
    is in the main graph qualify, and a ``While``'s loop variable only when the body returns it as is.
    """
    from graphopt.graph.edit import GraphEditor

    nested = {ref for f in library.values() for node in f.node_def for ref, _, _ in call_targets(node, library)}
    ed = GraphEditor(graph_def)
    found: dict[str, dict[int, Any]] = {}
    blocked: dict[str, set[int]] = {}
    for node in graph_def.node:
        targets = call_targets(node, library)
        if not targets:
            continue
        data = [i for i in node.input if not i.startswith("^")]
        body = next((library.get(f) for f, _, loop in targets if loop and node.attr["body"].func.name == f), None)
        for fname, offset, loop in targets:
            fdef = library.get(fname)
            if fdef is None or fname in nested:
                continue
            for i in range(len(fdef.signature.input_arg)):
                const = ed.const_root(data[i + offset]) if i + offset < len(data) else None
                if const is None or (loop and (body is None or not _loop_invariant(body, i))):
                    blocked.setdefault(fname, set()).add(i)
                    continue
                seen = found.setdefault(fname, {}).get(i)
                if seen is not None and seen.attr["value"] != const.attr["value"]:
                    blocked.setdefault(fname, set()).add(i)
                found[fname].setdefault(i, const)
    return {f: {i: c for i, c in args.items() if i not in blocked.get(f, set())} for f, args in found.items()
            if set(args) - blocked.get(f, set())}


# --- output arguments ----------------------------------------------------------------------


def _arg_size(arg: Any, node: Any) -> int:
    # core/framework/node_def_util.cc ComputeArgRange, as function_def_to_graph._get_num_args.
    if arg.number_attr:
        return node.attr[arg.number_attr].i
    if arg.type_list_attr:
        return len(node.attr[arg.type_list_attr].list.type)
    if arg.type_attr or arg.type != _DT_INVALID:
        return 1
    raise UnsupportedFunction(f"output argument {arg.name} of {node.op} has no type")


def output_args(node: Any, library: dict[str, Any]) -> list[tuple[str, int]]:
    """``[(output argument name, size), ...]`` of a node, from its OpDef or the called function's signature."""
    fdef = library.get(node.op)
    if fdef is not None:
        args = fdef.signature.output_arg
    else:
        from tensorflow.python.framework import op_def_registry

        op_def = op_def_registry.get(node.op)
        if op_def is None:
            raise UnsupportedFunction(f"op {node.op} ({node.name}) is neither registered nor a library function")
        args = op_def.output_arg
    return [(arg.name, _arg_size(arg, node)) for arg in args]


def _nested_names(node: Any, library: dict[str, Any]) -> list[str]:
    """The FunctionDef spelling of each flat output of ``node``: index ``k`` -> ``"node:arg:i"``."""
    out: list[str] = []
    for arg, size in output_args(node, library):
        out.extend(f"{node.name}:{arg}:{i}" for i in range(size))
    return out


# --- conversion ------------------------------------------------------------------------------


@dataclass
class FunctionGraph:
    """A function body as a GraphDef: argument Placeholders first, then the body nodes (flat tensor names).

    ``outputs`` maps each return key to the flat tensor it returns; ``control_outputs`` each control
    return key to its node. ``graph_def.library`` holds the functions the body calls (so TensorFlow
    can import it), and ``graph_def.versions`` the main graph's.
    """

    name: str
    graph_def: "GraphDef"
    args: list[str]
    outputs: dict[str, str]
    control_outputs: dict[str, str] = field(default_factory=dict)


def _arg_shapes(fdef: Any) -> list[Any]:
    """Each argument's shape proto where the function records it (``_output_shapes`` arg attr, ``_input_shapes``)."""
    listed = fdef.attr["_input_shapes"].list.shape if "_input_shapes" in fdef.attr else []
    shapes = []
    for i in range(len(fdef.signature.input_arg)):
        attrs = fdef.arg_attr[i].attr if i in fdef.arg_attr else {}
        shape = None
        if "_output_shapes" in attrs:
            value = attrs["_output_shapes"]
            shape = value.list.shape[0] if value.HasField("list") and value.list.shape else (
                value.shape if value.HasField("shape") else None)
        elif i < len(listed):
            shape = listed[i]
        shapes.append(shape)
    return shapes


def function_to_graph(fdef: "FunctionDef", library: dict[str, Any], *, versions: Any = None,
                      input_shapes: list[Any] | None = None, with_library: bool = True,
                      constants: dict[int, Any] | None = None) -> FunctionGraph:
    """The body of ``fdef`` as a :class:`FunctionGraph`; :class:`UnsupportedFunction` if it cannot be converted.

    ``input_shapes`` (TensorShapeProtos or None per argument) override the shapes the function records
    for its arguments, e.g. with the shapes of a call site. ``constants`` (argument index -> Const
    NodeDef, see :func:`constant_arguments`) turns those arguments' nodes into that Const: the body
    reads the argument all the same once converted back.
    """
    from tensorflow.core.framework import graph_pb2

    graph_def = graph_pb2.GraphDef()
    if versions is not None:
        graph_def.versions.CopyFrom(versions)
    shapes = input_shapes if input_shapes is not None else _arg_shapes(fdef)
    args = []
    flat: dict[str, str] = {}
    for i, arg in enumerate(fdef.signature.input_arg):
        if arg.type == _DT_INVALID or arg.number_attr or arg.type_list_attr:
            raise UnsupportedFunction(f"argument {arg.name} of {fdef.signature.name} is polymorphic")
        const = (constants or {}).get(i)
        if const is not None and const.attr["dtype"].type == arg.type:
            node = graph_def.node.add(name=arg.name, op="Const")
            node.attr["dtype"].type = arg.type
            node.attr["value"].CopyFrom(const.attr["value"])
        else:
            node = graph_def.node.add(name=arg.name, op="Placeholder")
            node.attr["dtype"].type = arg.type
            if i < len(shapes) and shapes[i] is not None:
                node.attr["shape"].shape.CopyFrom(shapes[i])
        args.append(arg.name)
        flat[arg.name] = arg.name
    for node in fdef.node_def:
        for k, nested in enumerate(_nested_names(node, library)):
            flat[nested] = node.name if k == 0 else f"{node.name}:{k}"
    for node in fdef.node_def:
        copy = graph_def.node.add()
        copy.CopyFrom(node)
        for i, text in enumerate(node.input):
            if text.startswith("^"):
                continue
            if text not in flat:
                raise UnsupportedFunction(f"{node.name} in {fdef.signature.name} reads {text}, which is no tensor "
                                          "of the body")
            copy.input[i] = flat[text]
    if with_library:
        called = called_functions(fdef.node_def, library)
        for name in sorted(called):
            graph_def.library.function.add().CopyFrom(library[name])
    outputs = {}
    for key, value in fdef.ret.items():
        if value not in flat:
            raise UnsupportedFunction(f"return {key} of {fdef.signature.name} names {value}, no tensor of the body")
        outputs[key] = flat[value]
    return FunctionGraph(fdef.signature.name, graph_def, args, outputs, dict(fdef.control_ret))


def graph_to_function(fg: FunctionGraph, original: "FunctionDef", library: dict[str, Any]) -> "FunctionDef":
    """The FunctionDef of a (possibly edited) :class:`FunctionGraph`; signature and attributes from ``original``.

    Argument Placeholders are dropped (reads of them become argument names again); every other node
    keeps its NodeDef with inputs in FunctionDef spelling. Control returns whose node is gone are dropped
    from ``control_ret`` and the signature's ``control_output``.
    """
    from tensorflow.core.framework import function_pb2

    args = set(fg.args)
    body = [n for n in fg.graph_def.node if n.name not in args]
    nested: dict[str, list[str]] = {}
    for node in body:
        nested[node.name] = _nested_names(node, library)

    def spell(text: str) -> str:
        if text.startswith("^"):
            return text
        name = node_name(text)
        port = 0 if name == text else int(text[len(name) + 1:])
        if name in args:
            if port != 0:
                raise UnsupportedFunction(f"{text}: an argument has one output")
            return name
        names = nested.get(name)
        if names is None or port >= len(names):
            raise UnsupportedFunction(f"{text} is no tensor of the body of {fg.name}")
        return names[port]

    out = function_pb2.FunctionDef()
    out.CopyFrom(original)
    del out.node_def[:]
    for node in body:
        copy = out.node_def.add()
        copy.CopyFrom(node)
        for i, text in enumerate(node.input):
            copy.input[i] = spell(text)
    out.ret.clear()
    for key, tensor in fg.outputs.items():
        out.ret[key] = spell(tensor)
    present = {n.name for n in body}
    gone = [key for key, target in original.control_ret.items() if target not in present]
    for key in gone:
        del out.control_ret[key]
    if gone:
        kept = [c for c in original.signature.control_output if c not in gone]
        del out.signature.control_output[:]
        out.signature.control_output.extend(kept)
    return out


# --- a body as a Model, and a pass over every body -------------------------------------------


def body_model(fg: FunctionGraph, main: "Model") -> "Model":
    """A Model of a function body: arguments are its inputs, returned tensors its outputs (all protected)."""
    from tensorflow.python.framework import dtypes

    from graphopt.model import Signature, TensorSpec

    nodes = {n.name: n for n in fg.graph_def.node}
    inputs = {}
    for arg in fg.args:
        placeholder = nodes[arg]  # or the Const every caller passes (constant_arguments)
        shape = None
        if placeholder.op == "Const":
            shape = tuple(d.size for d in placeholder.attr["value"].tensor.tensor_shape.dim)
        elif "shape" in placeholder.attr and not placeholder.attr["shape"].shape.unknown_rank:
            shape = tuple(None if d.size < 0 else d.size for d in placeholder.attr["shape"].shape.dim)
        inputs[arg] = TensorSpec(f"{arg}:0", dtypes.as_dtype(placeholder.attr["dtype"].type).name, shape)
    # Return tensors have no dtype at hand without TensorFlow's inference, and passes only need their
    # names; "float32" is a placeholder nobody reads (body models are never run or exported).
    outputs = {key: TensorSpec(tensor if ":" in tensor else f"{tensor}:0", "float32", None)
               for key, tensor in fg.outputs.items()}
    return main.replace(graph_def=fg.graph_def, signature=Signature(inputs=inputs, outputs=outputs, key=fg.name),
                        init_ops=[], assets={}, metadata={"function": fg.name}, source=f"{main.source}#{fg.name}")


@dataclass
class FunctionRun:
    """What a pass did to the function bodies of one graph (see :func:`apply_to_functions`)."""

    changed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # function -> why it was not converted
    counters: dict[str, int | float] = field(default_factory=dict)  # summed over the bodies
    notes: list[str] = field(default_factory=list)
    explanations: list[Any] = field(default_factory=list)  # graphopt.rewrite.Explanation, function set


def apply_to_functions(run: Callable[["Model"], "PassResult"], model: "Model", *,
                       check: Callable[["Model", "Model"], None] | None = None) -> tuple["GraphDef", FunctionRun]:
    """Run ``run`` (a pass's ``run``) on the body of every function ``model``'s main graph calls.

    Returns the graph with each changed body written back (a copy; ``model`` is not touched unless
    nothing changed, then its own graph is returned) and what happened. Bodies are converted from the
    library as it was before any of them changed, so each function is seen once. ``check(after,
    before)`` validates each changed body model. An exception from ``run`` or ``check`` is raised
    with ``.function`` set to the function's name.
    """
    graph_def = model.graph_def
    library = library_index(graph_def)
    if not library:
        return graph_def, FunctionRun()
    done = FunctionRun()
    replaced: dict[str, Any] = {}
    constants = constant_arguments(graph_def, library)
    for name in sorted(called_functions(graph_def.node, library)):
        fdef = library[name]
        try:
            fg = function_to_graph(fdef, library, versions=graph_def.versions, constants=constants.get(name))
        except UnsupportedFunction as exc:
            done.skipped[name] = str(exc)
            continue
        before = body_model(fg, model)
        try:
            result = run(before)
            if result.modified and check is not None:
                check(result.model, before)
        except Exception as exc:
            exc.function = name  # type: ignore[attr-defined]  # the pipeline names it in the PassError
            raise
        for key, value in result.counters.items():
            done.counters[key] = done.counters.get(key, 0) + value
        done.notes.extend(f"{name}: {note}" for note in result.notes)
        for explanation in getattr(result, "explanations", None) or []:
            if getattr(explanation, "function", "") is None:
                explanation.function = name
            done.explanations.append(explanation)
        if not result.modified:
            continue
        fg.graph_def = result.model.graph_def
        new = graph_to_function(fg, fdef, library)
        if new != fdef:
            replaced[name] = new
    if not replaced:
        return graph_def, done
    out = type(graph_def)()
    out.CopyFrom(graph_def)
    for fdef in out.library.function:
        if fdef.signature.name in replaced:
            fdef.CopyFrom(replaced[fdef.signature.name])
    done.changed = sorted(replaced)
    return out, done
