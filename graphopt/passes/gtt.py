"""GTT's native transforms as graphopt passes, run through the binding TensorFlow still ships.

TF 2.21 removed ``tensorflow.tools.graph_transforms`` from the pip package but
kept ``_pywrap_transform_graph.TransformGraphWithStringInputs``. Each native
transform becomes a :class:`NativeTransform` pass so it can sit in one pipeline
with Python passes and get its own report line.

GTT silently ignores arguments it does not know (``fold_constants(foo=1)`` runs),
so every transform's arguments are declared here from its source
(tensorflow/tools/graph_transforms/*.cc) and checked before anything runs.
Inputs and outputs come from the model's signature; ``strip_unused_nodes``
without ``type``/``shape`` gets them from the signature too, instead of GTT's
float default that breaks non-float inputs (tensorflow#5913).
"""

from __future__ import annotations

import re
from typing import Any

from graphopt.errors import PassError, UsageError
from graphopt.graph.checks import structural_problems
from graphopt.graph.default_attrs import default_attr_fills
from graphopt.graph.encoding import serialize_graph_def
from graphopt.graph.names import node_name
from graphopt.hookspecs import hookimpl
from graphopt.model import Model
from graphopt.passes.base import Option, Pass, PassResult

_L = list

# name -> (description, {option: Option}). Options mirror GetOneStringParameter /
# GetStringParameters calls in each transform's .cc file; every transform also takes ignore_errors.
NATIVE_TRANSFORMS: dict[str, tuple[str, dict[str, Option]]] = {
    "add_default_attributes": ("Add attributes a newer op version defines with defaults.", {}),
    "backport_concatv2": ("Rewrite ConcatV2 as Concat for old runtimes.", {}),
    "backport_tensor_array_v3": ("Rewrite TensorArray*V3 ops as V2 for old runtimes.", {}),
    # flatten_atrous_conv is graphopt's own (graphopt/passes/atrous.py): GTT's ignores paddings and crops,
    # changing the outputs of VALID dilated convs, and aborts the process on a filter behind an Identity.
    "fold_batch_norms": ("Fold a constant Mul after Conv2D/DepthwiseConv2dNative/MatMul into the weights "
                         "(needs fold_constants first).", {}),
    "fold_constants": ("Evaluate subgraphs that are constant and replace them by Const nodes.", {
        "clear_output_shapes": Option(bool, True, "drop _output_shapes attributes before folding"),
        "exclude_op": Option(_L, [], "op types never folded"),
        "exclude_node": Option(_L, [], "node names never folded"),
        "max_constant_size_in_bytes": Option(int, 10 * 1024 * 1024, "largest folded constant (TF's default, 10 MiB)"),
    }),
    "fold_old_batch_norms": ("Fold BatchNormWithGlobalNormalization / FusedBatchNorm (v1) directly after Conv2D.",
                             {}),
    "freeze_requantization_ranges": ("Replace RequantizationRange ops by ranges from a log.", {
        "min_max_log_file": Option(str, None, "log written by insert_logging", required=True),
        "min_percentile": Option(float, 5.0, "percentile of logged minima"),
        "max_percentile": Option(float, 5.0, "percentile of logged maxima"),
    }),
    "fuse_pad_and_conv": ("Fuse MirrorPad into a following Conv2D.", {}),
    "fuse_resize_and_conv": ("Fuse ResizeBilinear into a following Conv2D.", {}),
    "fuse_resize_pad_and_conv": ("Fuse ResizeBilinear and MirrorPad into a following Conv2D.", {}),
    "inline_partitionedcall": ("Inline PartitionedCall / StatefulPartitionedCall function calls.", {}),
    "insert_logging": ("Insert Print ops after matching nodes.", {
        "op": Option(_L, [], "ops to log"),
        "prefix": Option(_L, [], "node name prefixes to log"),
        "show_name": Option(bool, False, "print the node name"),
        "show_op": Option(bool, False, "print the op type"),
        "first_n": Option(int, -1, "log only the first n runs"),
        "summarize": Option(int, 1024, "how many values to print"),
        "message": Option(str, "", "message prefix"),
    }),
    "merge_duplicate_nodes": ("Merge nodes with the same op, inputs and attributes (including equal constants).",
                              {}),
    "obfuscate_names": ("Replace node names by short random ones (inputs and outputs kept).", {}),
    "quantize_nodes": ("Replace float ops by eight-bit quantized equivalents (lossy).", {
        "input_min": Option(float, None, "range minimum of float Placeholders (with input_max)"),
        "input_max": Option(float, None, "range maximum of float Placeholders (with input_min)"),
        "fallback_min": Option(float, None, "fixed requantization minimum (with fallback_max)"),
        "fallback_max": Option(float, None, "fixed requantization maximum (with fallback_min)"),
        "ignore_op": Option(_L, [], "float ops to leave unquantized"),
    }),
    "quantize_weights": ("Store large float constants as eight-bit with one range per tensor (lossy).", {
        "minimum_size": Option(int, 1024, "smallest constant (elements) to quantize"),
    }),
    "remove_attribute": ("Remove an attribute from all nodes, or from nodes of one op.", {
        "attribute_name": Option(str, None, "attribute to remove", required=True),
        "op_name": Option(str, "*", "only nodes of this op"),
    }),
    "remove_control_dependencies": ("Remove every control dependency.", {}),
    "remove_device": ("Clear the device of every node.", {}),
    "remove_nodes": ("Bypass single-input nodes of the given ops (dangerous on some graphs).", {
        "op": Option(_L, [], "op types to remove", required=True),
        "max_inputs": Option(int, 1, "remove only nodes with at most this many inputs"),
    }),
    "rename_attribute": ("Rename an attribute on all nodes, or nodes of one op.", {
        "old_attribute_name": Option(str, None, "attribute to rename", required=True),
        "new_attribute_name": Option(str, None, "new attribute name", required=True),
        "op_name": Option(str, "*", "only nodes of this op"),
    }),
    "rename_node": ("Rename a node and the references to it.", {
        "old_node_name": Option(str, None, "node to rename", required=True),
        "new_node_name": Option(str, None, "new name", required=True),
    }),
    "rename_op": ("Change the op type of matching nodes.", {
        "old_op_name": Option(str, None, "op to rename", required=True),
        "new_op_name": Option(str, None, "new op", required=True),
    }),
    "round_weights": ("Round float weights to a fixed number of levels (lossy; compresses better).", {
        "num_steps": Option(int, 256, "levels per tensor"),
    }),
    "set_device": ("Set the device of nodes.", {
        "device": Option(str, "", "device string, e.g. /device:CPU:0 (empty clears it)"),
        "if_default": Option(bool, False, "only where no device is set"),
    }),
    "sort_by_execution_order": ("Order nodes so every node comes after its inputs.", {}),
    "sparsify_gather": ("Turn Gather on sparse [N, 1] weights into a hash-table lookup.", {
        "input_checkpoint": Option(str, None, "checkpoint to read Variable weights from"),
        "group_init_node": Option(str, "group_deps", "NoOp the table initialisers are attached to"),
    }),
    "strip_unused_nodes": ("Remove nodes not needed for the outputs; turn inputs into Placeholders.", {
        "type": Option(str, None, "dtype of replaced inputs (default: from the signature)"),
        "shape": Option(str, None, "shape of replaced inputs, e.g. \"1,224,224,3\" (default: from the signature)"),
        "name": Option(_L, [], "inputs the type/shape apply to"),
        "type_for_name": Option(_L, [], "per-input dtype, in the order of name="),
        "shape_for_name": Option(_L, [], "per-input shape, in the order of name="),
    }),
}

# Transforms whose output can differ numerically from their input on purpose.
LOSSY_NATIVE = {"quantize_weights", "quantize_nodes", "round_weights", "freeze_requantization_ranges"}
# Transforms that rename or remove signature nodes: the exporter must not rely on names after them.
RENAMING_NATIVE = {"obfuscate_names", "rename_node"}


def _binding():
    try:
        from tensorflow.python.util import _pywrap_transform_graph
    except ImportError as exc:  # pragma: no cover - depends on the TF build
        raise PassError("this TensorFlow build has no Graph Transform Tool binding", hint="install tensorflow-cpu==2.21.0",
                        details=[str(exc)]) from None
    return _pywrap_transform_graph.TransformGraphWithStringInputs


_DTYPE_TO_GTT = {"float32": "float", "float64": "double", "float16": "half", "bfloat16": "bfloat16", "int32": "int32",
                 "int64": "int64", "uint8": "uint8", "int8": "int8", "int16": "int16", "uint16": "uint16",
                 "uint32": "uint32", "uint64": "uint64", "string": "string", "bool": "bool",
                 "complex64": "complex64", "complex128": "complex128"}
# Names DataTypeFromString (tensorflow/core/framework/types.cc) accepts for strip_unused_nodes' type arguments.
GTT_TYPE_NAMES = frozenset(_DTYPE_TO_GTT.values()) | {"qint8", "quint8", "qint16", "quint16", "qint32"}
# TensorShapeFromString: comma-separated non-negative ints. A negative dim is not an error there but a
# CHECK failure that aborts the whole process, so shapes are checked here first.
_SHAPE_RE = re.compile(r"^\s*(\d+\s*(,\s*\d+\s*)*)?$")


def _check_strip_unused_options(config: dict[str, Any]) -> None:
    where = "pass strip_unused_nodes"
    for key in ("shape", "shape_for_name"):
        values = config.get(key)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and not _SHAPE_RE.match(value):
                raise UsageError(f"option '{key}' must be comma-separated non-negative sizes, got {value!r}",
                                 where=where, hint='e.g. shape="1,224,224,3"; GTT cannot express unknown (-1) sizes')
    for key in ("type", "type_for_name"):
        values = config.get(key)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and value not in GTT_TYPE_NAMES:
                raise UsageError(f"option '{key}': unknown type {value!r}", where=where,
                                 hint="one of " + ", ".join(sorted(GTT_TYPE_NAMES)))
    names = config.get("name") or []
    for key in ("type_for_name", "shape_for_name"):
        given = config.get(key) or []
        if (names or given) and len(given) != len(names):
            raise UsageError(f"give one '{key}' per 'name' ({len(names)} name, {len(given)} {key})", where=where,
                             hint="strip_unused_nodes(name=a, type_for_name=float, shape_for_name=\"1,3\", name=b, ...)")


def _strip_unused_args(model: Model, config: dict[str, Any]) -> list[tuple[str, str]]:
    # GTT keeps inputs that are already Placeholders, but turns any other input
    # node into a Placeholder of `type` (default float) and `shape` (default
    # scalar). Give it each input's dtype from the signature, so uint8/string
    # inputs survive (tensorflow#5913). GTT requires a shape_for_name per name and
    # aborts on unknown (-1) sizes, so unknown sizes go in as 1 and the real
    # partial shape is written back afterwards (_restore_input_placeholders).
    specs = list(model.signature.inputs.values())
    if config.get("type") or config.get("shape") or config.get("name") or not specs:
        return []
    args: list[tuple[str, str]] = []
    for spec in specs:
        args.append(("name", spec.node))
        args.append(("type_for_name", _DTYPE_TO_GTT.get(spec.dtype, spec.dtype)))
        shape = spec.shape if spec.shape is not None else (1,)
        args.append(("shape_for_name", ",".join("1" if d is None or d < 0 else str(d) for d in shape)))
    return args


def _restore_input_placeholders(before: Model, graph_def: Any) -> None:
    """Give Placeholders GTT made from non-Placeholder inputs the signature's dtype and (partial) shape."""
    import tensorflow as tf

    old_ops = {n.name: n.op for n in before.graph_def.node}
    specs = {spec.node: spec for spec in before.signature.inputs.values()}
    for node in graph_def.node:
        spec = specs.get(node.name)
        if spec is None or node.op != "Placeholder" or old_ops.get(node.name) == "Placeholder":
            continue
        node.attr["dtype"].type = tf.as_dtype(spec.dtype).as_datatype_enum
        shape = tf.TensorShape(None if spec.shape is None else list(spec.shape))
        node.attr["shape"].shape.CopyFrom(shape.as_proto())


def _restore_subgraph(original: Any, graph_def: Any, roots: list[str]) -> None:
    """Put back the nodes ``roots`` need (transitively) that a transform dropped, as they were."""
    present = {n.name for n in graph_def.node}
    by_name = {n.name: n for n in original.node}
    todo = [r for r in roots if r not in present]
    while todo:
        name = todo.pop()
        if name in present or name not in by_name:
            continue
        graph_def.node.add().CopyFrom(by_name[name])
        present.add(name)
        todo.extend(node_name(i) for i in by_name[name].input)


def _same_graph_ignoring_order(a: Any, b: Any, b_replaced: dict[int, Any] | None = None) -> bool:
    """``a`` and ``b`` hold the same nodes (in any order); ``b_replaced`` overrides some of ``b``'s nodes by index."""
    if len(a.node) != len(b.node) or a.library != b.library or a.versions != b.versions:
        return False
    b_replaced = b_replaced or {}
    nodes = {n.name: b_replaced.get(i, n) for i, n in enumerate(b.node)}
    # Protobuf equality compares field by field in C++: no need to serialise either graph.
    return all(_same_node(n, nodes.get(n.name)) for n in a.node)


def _canonical(text: str) -> str:
    """``"x:0"`` -> ``"x"``: two spellings of one tensor (GTT writes the first, TF and graphopt the second)."""
    return text[:-2] if text.endswith(":0") and not text.startswith("^") else text


def _same_node(a: Any, b: Any) -> bool:
    if b is None:
        return False
    if a == b:
        return True
    if len(a.input) != len(b.input) or [_canonical(i) for i in a.input] != [_canonical(i) for i in b.input]:
        return False
    copy = type(a)()
    copy.CopyFrom(a)
    copy.input[:] = list(b.input)
    return copy == b


def canonical_inputs(graph_def: Any) -> None:
    """Spell every input of output 0 ``"x"``, not ``"x:0"``, in place (GraphDef's canonical spelling).

    GTT's transforms rebuild a graph through TF's Graph, which writes ``"x:0"`` for every input it read
    as ``"x"``; a fold with nothing to fold would then differ from its input, and a repeat group of it
    and a pass writing ``"x"`` would never converge.
    """
    for node in graph_def.node:
        for i, text in enumerate(node.input):
            if text.endswith(":0") and not text.startswith("^"):
                node.input[i] = text[:-2]


def _in_execution_order(graph_def: Any) -> bool:
    seen: set[str] = set()
    for node in graph_def.node:
        if any(node_name(i) not in seen for i in node.input):
            return False
        seen.add(node.name)
    return True


_GTT_BARE = re.compile(r"^[A-Za-z0-9_./\-]+$")


def gtt_step(name: str, args: list[tuple[str, str]]) -> str:
    """One step in the text GTT's own parser reads (transform_graph.cc: ParseTransformParameters).

    GTT reads bare values of letters, digits, ``-./_`` only, and quoted values
    verbatim (a backslash is kept, not an escape), so this differs from
    graphopt's :func:`~graphopt.passes.transform_string.format_step`: ``/device:CPU:0``
    must be quoted for GTT.
    """
    if not args:
        return name
    return f"{name}(" + ", ".join(f"{k}={v}" if _GTT_BARE.match(v) else f'{k}="{v}"' for k, v in args) + ")"


# Transforms that read or copy attributes by name with CHECK-failing lookups (transform_utils.cc
# CopyNodeAttr, attr().at()): an attribute left at its default and stripped from the GraphDef
# (strip_default_attrs, hand-written graphs) aborts the whole process -- measured: quantize_nodes
# "No key 'transpose_a' found", fold_old_batch_norms "key not found: epsilon". They get the defaults first.
_NEEDS_DEFAULT_ATTRS = {"quantize_nodes", "fold_old_batch_norms", "fold_batch_norms", "fuse_pad_and_conv",
                        "fuse_resize_and_conv", "fuse_resize_pad_and_conv", "flatten_atrous_conv"}


# Transforms that never read the values of weights feeding Conv2D/MatMul/... (graphopt.graph.weightless): they
# run on a graph with stand-ins for them. The folds and quantizations read or rewrite weights; rename_op
# could rename the stand-ins' Placeholder op.
WEIGHT_BLIND = {"strip_unused_nodes", "remove_attribute", "remove_nodes", "merge_duplicate_nodes", "fold_constants",
                "sort_by_execution_order", "remove_device", "set_device", "add_default_attributes",
                "remove_control_dependencies", "rename_attribute"}


def native_preconditions(graph_def: Any, names: list[str], *, importable: bool = False) -> list[str]:
    """What must hold before GTT's binding sees ``graph_def``, as problems naming the node at fault.

    Structure (unique names, inputs that exist, constants that decode: TF imports a constant
    whose bytes do not match its shape, GTT aborts on it) and the signature's nodes present.
    ``importable`` also imports the graph (without large constant values): the transforms that
    decode constants and copy attributes abort on a rank or dtype mismatch TF's importer reports
    (fold_old_batch_norms on a rank-1 or int32 Conv2D filter, quantize_nodes on a Conv2D without
    ``strides``). Graphs from loaders and passes are importable already; this protects API callers.
    """
    problems = structural_problems(graph_def)
    present = {n.name for n in graph_def.node}
    problems += [f"signature node '{n}' is not in the graph" for n in dict.fromkeys(names) if n not in present]
    if importable and not problems:
        import tensorflow as tf

        from graphopt.graph.checks import skeleton

        try:
            with tf.Graph().as_default():
                tf.graph_util.import_graph_def(skeleton(graph_def), name="")
        except Exception as exc:  # any import error means GTT would get a graph TF itself rejects
            problems.append("TensorFlow cannot import it: " + (str(exc).strip().split("\n")[0] or type(exc).__name__))
    return problems


class NativeTransform(Pass):
    """Base of the generated classes, one per GTT transform."""

    native_name: str = ""
    edits_input = False  # GTT works on a serialized copy

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.native_name == "strip_unused_nodes":
            _check_strip_unused_options(self.config)

    def gtt_args(self) -> list[tuple[str, str]]:
        """The arguments handed to GTT: explicit options only (GTT applies its own defaults)."""
        args: list[tuple[str, str]] = []
        for key, value in self.config.items():
            opt = self.options[key]
            if value is None or (opt.type is list and not value) or (value == opt.default and not opt.required):
                continue
            for v in value if isinstance(value, list) else [value]:
                text = str(v).lower() if isinstance(v, bool) else str(v)
                if '"' in text or text.endswith("\\"):  # GTT's parser cannot pass these through quotes
                    raise UsageError(f"option '{key}' of {self.name} cannot contain '\"' or end with '\\'",
                                     where=f"pass {self.name}")
                args.append((key, text))
        return args

    def run(self, model: Model) -> PassResult:
        if self.native_name not in WEIGHT_BLIND:
            return self._run(model)
        from graphopt.graph import weightless as stand_ins

        # GTT copies the graph 5-12 times; without the weights it never reads, those copies are small.
        light, weights = stand_ins.strip(model.graph_def, model.protected_nodes)
        if not weights:
            return self._run(model)
        result = self._run(model.with_graph(light))
        stand_ins.restore(result.model.graph_def, weights)
        return result

    def _run(self, model: Model) -> PassResult:
        args = self.gtt_args()
        auto_inputs = self.native_name == "strip_unused_nodes" and bool(_strip_unused_args(model, self.config))
        if auto_inputs:
            args.extend(_strip_unused_args(model, self.config))
        if self.native_name == "fold_constants":
            # Constant folding *executes* what it folds: a ReadFile of a constant path would read the file on
            # this machine and bake its bytes into the model (measured). Never fold ops that reach outside.
            from graphopt.security.scan import scan

            for op in sorted({f.op for f in scan(model.graph_def)}):
                if ("exclude_op", op) not in args:
                    args.append(("exclude_op", op))
        spec = gtt_step(self.native_name, args)
        sig = model.signature
        inputs = ",".join(sig.input_nodes)
        if self.native_name == "fold_constants":
            # TF's constant folding evaluates any Placeholder it is not told is an input: name the stand-ins.
            from graphopt.graph.weightless import ATTR

            inputs = ",".join([*sig.input_nodes, *(n.name for n in model.graph_def.node if ATTR in n.attr)])
        # Init ops are outputs too: strip_unused_nodes and the like drop whatever outputs do not reach.
        # fold_constants cannot take them (it fetches its outputs, and a table initialiser's NoOp
        # produces nothing to fetch): it runs without them, and their subgraph is put back after.
        init_nodes = [node_name(op) for op in model.init_ops]
        fetchable_only = self.native_name == "fold_constants"
        outputs = ",".join(dict.fromkeys(sig.output_nodes + ([] if fetchable_only else init_nodes)))
        # GTT CHECK-fails (aborting the process) on malformed graphs: check what it relies on first.
        problems = native_preconditions(model.graph_def, list(sig.input_nodes) + list(sig.output_nodes),
                                        importable=self.native_name in _NEEDS_DEFAULT_ATTRS)
        if problems:
            raise PassError(f"not running {self.native_name}: the graph is malformed: {problems[0]}",
                            where=f"native {spec}", details=problems[1:6],
                            hint="GTT's native code would abort on it; fix the model or the pass that produced it")
        fills = default_attr_fills(model.graph_def) if self.native_name in _NEEDS_DEFAULT_ATTRS else {}
        notes: list[str] = []
        if self.native_name in EXECUTING_NATIVE:
            out_bytes, notes = _transform_confined(model, fills, inputs, outputs, spec, self.native_name)
        else:
            # Memory: serialized node by node into one buffer (defaults filled in on copies of the few nodes that
            # lack them), never via a copy of the graph nor SerializeToString's 2.5x peak; the input bytes are
            # dropped before the output is parsed. GTT's own copies (parse, transform, serialize) are its own.
            source_bytes = serialize_graph_def(model.graph_def, replace=fills)
            try:
                out_bytes = _transform(source_bytes, inputs, outputs, spec)
            finally:
                del source_bytes
        graph_def = type(model.graph_def).FromString(out_bytes)
        del out_bytes
        canonical_inputs(graph_def)
        # GTT copies the function library itself (transform_graph.cc), but transforms that rebuild the
        # GraphDef node by node drop `versions`; without it TF assumes producer 0 and may reject new ops.
        if model.graph_def.HasField("library") and not graph_def.HasField("library"):
            graph_def.library.CopyFrom(model.graph_def.library)
        if model.graph_def.HasField("versions") and not graph_def.HasField("versions"):
            graph_def.versions.CopyFrom(model.graph_def.versions)
        if auto_inputs:
            _restore_input_placeholders(model, graph_def)
        if fetchable_only and init_nodes:
            _restore_subgraph(model.graph_def, graph_def, init_nodes)
        if self.native_name == "sort_by_execution_order":
            # GTT's sort is not stable (run twice, it swaps ties back): "changed" means "was not sorted".
            modified = not _in_execution_order(model.graph_def)
        else:
            # GTT re-emits nodes in a different order even when nothing changed (fold_constants does);
            # order carries no meaning, and counting it as a change would keep repeat groups spinning.
            modified = not _same_graph_ignoring_order(graph_def, model.graph_def, fills)  # filled defaults: no change
        # No counters: GTT reports nothing of its own, and node/op deltas are in every PassRecord.
        return PassResult(model.with_graph(graph_def), modified=modified, notes=notes)


# Transforms that execute part of the graph (fold_constants runs its constant subgraphs in a session): they run in
# a sandboxed child (graphopt.security.sandbox), so a crash, a loop or a huge allocation there costs a ResourceError.
EXECUTING_NATIVE = frozenset({"fold_constants"})


def _transform(source: bytes | bytearray, inputs: str, outputs: str, spec: str) -> bytes:
    try:
        return _binding()(source, inputs, outputs, spec)
    except Exception as exc:
        from graphopt.security.sandbox import resource_error

        limit_hit = resource_error(exc)
        if limit_hit is not None:
            raise limit_hit from None
        raise PassError(f"GTT transform failed: {str(exc).strip()}", where=f"native {spec}") from None


def _transform_confined(model: Model, fills: dict[int, Any], inputs: str, outputs: str, spec: str,
                        name: str) -> tuple[bytes, list[str]]:
    """GTT's transform in a sandboxed child: the graph goes in and comes out as files in its folder."""
    from graphopt.graph.encoding import graph_def_chunks
    from graphopt.security.sandbox import confinement_notes, default_limits, sandbox_for

    limits = default_limits(model.size_bytes)
    if not limits.confined:
        source_bytes = serialize_graph_def(model.graph_def, replace=fills)
        try:
            return _transform(source_bytes, inputs, outputs, spec), confinement_notes(None, limits, name)
        finally:
            del source_bytes
    with sandbox_for(model.size_bytes, label=f"GTT {name} (it runs the graph's constant parts)") as box:
        _, chunks = graph_def_chunks(model.graph_def, replace=fills)
        with box.open_input("in.pb") as f:  # node by node: never a second copy of the graph here
            for chunk in chunks:
                f.write(chunk)
        box.call(_transform_files, str(box.path / "in.pb"), str(box.path / "out.pb"), inputs, outputs, spec)
        return box.read_file("out.pb"), box.notes(name)


def _transform_files(source_path: str, out_path: str, inputs: str, outputs: str, spec: str) -> None:
    # The sandboxed child's side of _transform_confined.
    with open(source_path, "rb") as f:
        source = f.read()
    out = _transform(source, inputs, outputs, spec)
    del source
    with open(out_path, "wb") as f:
        f.write(out)


def _make(name: str, description: str, options: dict[str, Option]) -> type[Pass]:
    return type(f"Native_{name}", (NativeTransform,), {
        "name": name, "native_name": name, "description": description, "options": options,
        "lossy": name in LOSSY_NATIVE, "__module__": __name__,
        "__doc__": f"GTT's native {name}: {description}",
    })


NATIVE_PASSES = [_make(n, d, o) for n, (d, o) in NATIVE_TRANSFORMS.items()]


@hookimpl
def graphopt_register_passes(register):
    for cls in NATIVE_PASSES:
        register(cls)


@hookimpl
def graphopt_register_presets(register):
    register("gtt-seed", "remove_attribute(attribute_name=_class) remove_nodes(op=Identity, op=CheckNumerics) "
             "strip_unused_nodes fold_constants(ignore_errors=true) fold_batch_norms fold_old_batch_norms "
             "merge_duplicate_nodes",
             "The seed blog post's seven GTT transforms, as it ran them in TF1.")
    register("gtt-deploy", "strip_unused_nodes remove_nodes(op=Identity, op=CheckNumerics) "
             "fold_constants(ignore_errors=true) fold_batch_norms fold_old_batch_norms",
             "GTT README's recommended list for deployment.")
