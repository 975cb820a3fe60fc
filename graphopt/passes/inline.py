"""Inline function calls every pass is blind to, unless the body needs XLA to run.

TF2 loaders already inline calls (Grappler's function optimizer, as
``convert_variables_to_constants_v2`` runs it), but Grappler leaves calls marked
for XLA compilation (``_XlaMustCompile``, ``_noinline``): Keras 3 compiles its
grouped convolutions (``Conv2D(groups>1)``, ConvNeXt's 7x7 "depthwise" convs)
with ``tf.function(jit_compile=True)``. Such a call stays a
``StatefulPartitionedCall``: no pass sees inside it (no folding of its bias,
no fusion by the runtime's remapper), and TF Serving runs it through XLA's
compile cache.

``inline_functions`` replaces each ``PartitionedCall``/``StatefulPartitionedCall``
(and each call by function name) whose body TensorFlow's own CPU kernels can
run by the body itself:

* body nodes are copied under ``<call>/``, reading the call's inputs where
  they read arguments; a body node without inputs of its own waits for the
  call's control inputs (a ``NoOp`` collects them), so nothing runs earlier
  than it did;
* the call node becomes an ``IdentityN`` of the same name over the returned
  tensors, waiting on the body's control returns (its Asserts), so readers
  of ``call:k`` and ``^call`` keep their meaning (``strip_debug_ops`` bypasses
  the ``IdentityN`` later);
* calls inside an inlined body are then inlined too; functions nothing calls
  any more are pruned.

A call is kept, and reported with the reason, when its body (or a function it
calls) holds:

* an op with no CPU kernel of its own: the ``Xla*`` ops (``XlaConvV2``,
  ``XlaDot``, ``XlaReduceWindow``...), which exist only to be compiled -- TF
  registers a CPU kernel for them that compiles each op with XLA on demand,
  so inlining would trade one compiled cluster for one compilation per op;
  and ops registered for XLA devices only;
* an op TensorFlow does not know, or a polymorphic signature;
* a call to itself (recursion);
* a name given in ``keep=``.

A grouped ``Conv2D`` from an XLA-marked body is no reason by itself: TF
2.21's plain CPU kernel runs it, but Grappler's remapper fuses it with its bias
into ``_FusedConv2D``, whose CPU kernel refuses groups unless oneDNN rewrites it
first. So inlining rewrites it on the spot (:mod:`graphopt.passes.grouped_conv`:
a depthwise conv, or one conv per group), and keeps the call where the input
channel count is unknown and the conv may be grouped.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from graphopt.graph.edit import GraphEditor, prune_functions
from graphopt.graph.functions import UnsupportedFunction, function_to_graph, library_index
from graphopt.graph.names import node_name, split_tensor
from graphopt.model import Model
from graphopt.passes.base import Option, Pass, PassResult
from graphopt.passes.grouped_conv import rewrite_grouped_conv

CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")
_MAX_ROUNDS = 20  # nesting depth of calls inlined in one run


def called_function(node: Any, library: dict[str, Any]) -> str | None:
    """The library function ``node`` calls, or None if it is no call."""
    if node.op in CALL_OPS and "f" in node.attr:
        return node.attr["f"].func.name
    return node.op if node.op in library else None


_KERNEL_CACHE: dict[str, str] = {}


def cpu_blocker(op: str) -> str:
    """Why TensorFlow's CPU runtime cannot run ``op`` outside an XLA cluster ("" if it can)."""
    if op not in _KERNEL_CACHE:
        from tensorflow.python.framework import kernels, op_def_registry

        if op_def_registry.get(op) is None:
            why = f"op {op} is not registered in this TensorFlow"
        else:
            devices = {k.device_type for k in kernels.get_registered_kernels_for_op(op).kernel}
            if op.startswith("Xla"):
                # tf2xla's ops: the CPU kernel registered for them (XlaCompileOnDemandOp) compiles each op alone.
                why = f"op {op} exists only to be compiled by XLA"
            elif devices and not devices & {"CPU", "DEFAULT"}:
                why = f"op {op} has kernels only for {', '.join(sorted(devices))}"
            else:
                why = ""
        _KERNEL_CACHE[op] = why
    return _KERNEL_CACHE[op]


def body_blocker(name: str, library: dict[str, Any], memo: dict[str, str], stack: tuple[str, ...] = ()) -> str:
    """Why the body of function ``name`` (with the functions it calls) must stay a call ("" if it need not).

    ``memo`` caches answers; entries put there first (``keep=``) are answers too.
    """
    if name in memo:
        return memo[name]
    if name in stack:
        return f"{name} calls itself"
    fdef = library[name]
    why = ""
    for node in fdef.node_def:
        if any(value.placeholder for value in node.attr.values()):
            why = f"{node.name} has attributes of a polymorphic function"
        elif node.op in library:
            inner = body_blocker(node.op, library, memo, stack + (name,))
            why = f"calls {node.op}: {inner}" if inner else ""
        else:
            why = cpu_blocker(node.op)
            for value in node.attr.values():  # If/While branches, nested PartitionedCalls
                refs = [value.func.name] if value.HasField("func") else [f.name for f in value.list.func]
                for ref in refs:
                    inner = body_blocker(ref, library, memo, stack + (name,)) if ref in library else ""
                    why = why or (f"calls {ref}: {inner}" if inner else "")
            why = f"{node.name}: {why}" if why else ""
        if why:
            break
    memo[name] = why
    return why


class InlineFunctions(Pass):
    name = "inline_functions"
    description = ("Inline PartitionedCall/StatefulPartitionedCall and direct calls, XLA-compiled ones included, "
                   "wherever TensorFlow's CPU kernels run the body; keep calls that need XLA.")
    options = {
        "keep": Option(list, [], "functions never inlined (repeat: keep=f1, keep=f2)"),
        "depthwise": Option(bool, True, "grouped Conv2D with groups == channels from an XLA body becomes "
                                        "DepthwiseConv2dNative (else Split + Conv2D per group + ConcatV2)"),
    }
    edits_input = False  # builds a new graph

    def run(self, model: Model) -> PassResult:
        graph_def = model.graph_def
        library = library_index(graph_def)
        if not any(called_function(n, library) for n in graph_def.node):
            return PassResult(model, modified=False, counters={"inlined": 0, "kept": 0})
        keep = dict.fromkeys(self.config["keep"], "kept by keep=")
        for _ in range(len(library) + 1):  # each round keeps one more function, or is the last
            out, inlined, kept, origin = self._inline_all(graph_def, library, keep)
            # A grouped Conv2D from an XLA body must not reach Grappler's remapper as is (its fused kernel
            # refuses groups): rewrite it, or keep the call where its input channels are unknown.
            ed = GraphEditor(out, model.protected_nodes)
            rewritten: Counter = Counter()
            blocked: dict[str, str] = {}
            for name, fname in origin.items():
                node = ed.node(name)
                if node is None or node.op != "Conv2D" or not _xla_marked(library[fname]):
                    continue
                try:
                    kind = rewrite_grouped_conv(ed, node, depthwise=self.config["depthwise"])
                except ValueError as exc:
                    blocked[fname] = f"{node.name} may be a grouped Conv2D ({exc}), which only XLA runs safely"
                    continue
                if kind:
                    rewritten[kind] += 1
            if not blocked:
                break
            keep.update(blocked)  # again from the input, without those calls
        ed.commit()
        pruned = prune_functions(out) if inlined else []
        notes = [f"kept call {call}: {why}" for call, why in sorted(kept.items())]
        counters: dict[str, int | float] = {
            "inlined": inlined, "kept": len(kept), "functions_pruned": len(pruned),
            "grouped_to_depthwise": rewritten["depthwise"], "grouped_split": rewritten["split"]}
        if not inlined:
            return PassResult(model, modified=False, counters=counters, notes=notes)
        return PassResult(model.with_graph(out), modified=True, counters=counters, notes=notes)

    @staticmethod
    def _inline_all(graph_def: Any, library: dict[str, Any], keep: dict[str, str]
                    ) -> tuple[Any, int, dict[str, str], dict[str, str]]:
        """Inline every call that can be, calls in inlined bodies too. Returns the new graph, how many calls were
        inlined, the calls kept (with why) and, for each node copied from a body, the function it came from."""
        out = type(graph_def)()
        out.CopyFrom(graph_def)
        memo: dict[str, str] = dict(keep)
        kept: dict[str, str] = {}
        origin: dict[str, str] = {}
        inlined = 0
        for _ in range(_MAX_ROUNDS):
            calls = [(n, f) for n in out.node if (f := called_function(n, library)) is not None
                     and n.name not in kept]
            if not calls:
                break
            names = {n.name for n in out.node}
            for call, fname in calls:
                why = body_blocker(fname, library, memo) if fname in library else f"{fname} is not in the library"
                if not why:
                    try:
                        for name in _inline(out, call, library[fname], library, names):
                            origin[name] = fname
                        inlined += 1
                        continue
                    except UnsupportedFunction as exc:
                        why = str(exc)
                kept[call.name] = f"{fname}: {why}"
        return out, inlined, kept, origin


def _xla_marked(fdef: Any) -> bool:
    return any(key in fdef.attr and fdef.attr[key].b for key in ("_XlaMustCompile", "_noinline"))


def _inline(graph_def: Any, call: Any, fdef: Any, library: dict[str, Any], names: set[str]) -> list[str]:
    """Replace ``call`` in ``graph_def`` by the body of ``fdef`` (see the module docstring); returns the names
    the body's nodes got."""
    from tensorflow.core.framework.attr_value_pb2 import AttrValue

    fg = function_to_graph(fdef, library, with_library=False)
    data = [i for i in call.input if not i.startswith("^")]
    controls = [i for i in call.input if i.startswith("^")]
    if len(data) != len(fg.args):
        raise UnsupportedFunction(f"{call.name} passes {len(data)} inputs to {len(fg.args)} arguments")
    args = dict(zip(fg.args, data))
    prefix = call.name + "/"
    body = [n for n in fg.graph_def.node if n.name not in args]
    renamed: dict[str, str] = {}
    for node in body:
        new = prefix + node.name
        while new in names:  # never reuse a name of the graph
            new = new + "_inlined"
        renamed[node.name] = new
        names.add(new)

    def spell(text: str) -> str:
        control = text.startswith("^")
        name, port = split_tensor(text)
        if name in args:
            source = args[name]
            return "^" + node_name(source) if control else source
        new = renamed[name]
        return "^" + new if control else (new if port == 0 else f"{new}:{port}")

    gate = None
    nodes = {n.name: n for n in graph_def.node}
    controls = [c for c in controls if not _waits_for_nothing(c[1:], nodes, {})]
    if controls:  # the body must not start before what the call waited for
        gate = graph_def.node.add(name=_fresh(prefix + "input_control_node", names), op="NoOp", device=call.device)
        gate.input.extend(controls)
    for node in body:
        copy = graph_def.node.add()
        copy.CopyFrom(node)
        copy.name = renamed[node.name]
        if not copy.device and call.device:
            copy.device = call.device
        del copy.input[:]
        copy.input.extend(spell(i) for i in node.input)
        if gate is not None and not any(node_name(i) in renamed for i in node.input):
            copy.input.append("^" + gate.name)
        if "_class" in copy.attr:  # colocation names body nodes: renamed with them
            values = [v for v in copy.attr["_class"].list.s]
            del copy.attr["_class"].list.s[:]
            copy.attr["_class"].list.s.extend(
                b"loc:@" + renamed.get(v[5:].decode(), v[5:].decode()).encode() if v.startswith(b"loc:@") else v
                for v in values)
    outputs = [spell(fg.outputs[arg.name]) for arg in fdef.signature.output_arg]
    waits = ["^" + renamed[n] for n in fg.control_outputs.values() if n in renamed]
    types = [arg.type for arg in fdef.signature.output_arg]
    name, device = call.name, call.device
    call.Clear()
    call.name, call.device = name, device  # same name: readers of call:k and ^call keep their meaning
    if outputs:
        call.op = "IdentityN"
        call.input.extend(outputs + waits)
        call.attr["T"].CopyFrom(AttrValue(list=AttrValue.ListValue(type=types)))
    else:
        call.op = "NoOp"
        call.input.extend(waits)
    return list(renamed.values())


def _waits_for_nothing(name: str, nodes: dict[str, Any], memo: dict[str, bool]) -> bool:
    """A Const, or a NoOp that only waits on such (TF2 freezing's input_control_node): ordering nothing.
    Gating the body on it would only hide its constants from folding."""
    if name not in memo:
        memo[name] = False  # cycle guard
        node = nodes.get(name)
        memo[name] = node is not None and (node.op == "Const" and not node.input or node.op == "NoOp" and all(
            i.startswith("^") and _waits_for_nothing(i[1:], nodes, memo) for i in node.input))
    return memo[name]


def _fresh(base: str, names: set[str]) -> str:
    name, i = base, 0
    while name in names:
        i += 1
        name = f"{base}_{i}"
    names.add(name)
    return name


PASSES = [InlineFunctions]
