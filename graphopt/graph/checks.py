"""Is this GraphDef one TensorFlow can import? Checked after every pass that changed the graph.

A cheap structural check runs first (unique names, every input names an existing
node, protected nodes kept) so the common mistakes get a message naming the node;
then TensorFlow itself imports the graph, which catches unknown ops, bad attrs and
type mismatches.

Cost, measured on ResNet50 frozen (103 MB, 1,831 nodes, 2 CPU cores): the
structural check takes 2 ms; ``import_graph_def`` of the whole graph 305 ms, almost
all of it copying weight bytes that import never looks at. Importing a *skeleton*
instead -- the same graph with the contents of large constants left out (dtype and
shape kept, so type checking is unchanged) -- takes 10 ms to build and 50 ms to
import. (Under load, load average 8 on the 2 cores: full import 0.62-1.1 s, the
whole check_graph 0.23-0.27 s.) That is cheap enough to run after every pass, native ones included
(``rename_op`` can produce an op TensorFlow does not know), so there is no
"trust this pass" exception to reason about.
"""

from __future__ import annotations

from collections.abc import Iterable

from graphopt.errors import PassError
from graphopt.graph.names import node_name
from graphopt.model import Model


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
    problems.extend(malformed_constants(graph_def))
    return problems


# DataType enum -> bytes per element, for the fixed-size types (types.proto); strings, resources and
# variants have no fixed size. A TensorProto's tensor_content must hold exactly elements x size bytes.
_DTYPE_SIZES = {1: 4, 2: 8, 3: 4, 4: 1, 5: 2, 6: 1, 8: 8, 9: 8, 10: 1, 11: 1, 12: 1, 13: 4, 14: 2, 15: 2, 16: 2,
                17: 2, 18: 16, 19: 2, 22: 4, 23: 8}
_VARIABLE_SIZE_DTYPES = {7, 20, 21} | set(range(24, 31))  # string, resource, variant; float8/int4 left unchecked


def malformed_constants(graph_def) -> list[str]:
    """Const nodes whose tensor cannot be decoded: bad dtype, negative size, content of the wrong length.

    TensorFlow imports such a graph without complaint, but GTT's transforms decode the
    tensor with a CHECK and abort the whole process (fold_old_batch_norms: "Check failed:
    tensor.FromProto(tensor_proto)"), so these are caught before any native code runs.
    """
    problems: list[str] = []
    for node in graph_def.node:
        if node.op != "Const" or "value" not in node.attr:
            continue
        tensor = node.attr["value"].tensor
        dtype = tensor.dtype
        if dtype not in _DTYPE_SIZES and dtype not in _VARIABLE_SIZE_DTYPES:
            problems.append(f"constant '{node.name}' has an invalid dtype ({dtype})")
            continue
        if "dtype" in node.attr and node.attr["dtype"].type != dtype:
            problems.append(f"constant '{node.name}' says dtype {node.attr['dtype'].type} but holds {dtype}")
            continue
        dims = [d.size for d in tensor.tensor_shape.dim]
        if any(d < 0 for d in dims):
            problems.append(f"constant '{node.name}' has a negative dimension {dims}")
            continue
        if tensor.tensor_content and dtype in _DTYPE_SIZES:
            count = 1
            for d in dims:
                count *= d
            if len(tensor.tensor_content) != count * _DTYPE_SIZES[dtype]:
                problems.append(f"constant '{node.name}' of shape {dims} holds {len(tensor.tensor_content)} bytes, "
                                f"not {count * _DTYPE_SIZES[dtype]}")
    return problems


_SKELETON_MIN_BYTES = 1024  # constants larger than this are imported without their contents


def skeleton(graph_def):
    """A copy of ``graph_def`` whose large Const nodes keep dtype and shape but not their values."""
    out = type(graph_def)()
    out.versions.CopyFrom(graph_def.versions)
    if graph_def.HasField("library"):
        out.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        value = node.attr["value"].tensor if node.op == "Const" and "value" in node.attr else None
        if value is None or value.ByteSize() <= _SKELETON_MIN_BYTES:
            out.node.add().CopyFrom(node)
            continue
        slim = out.node.add()
        slim.name, slim.op, slim.device = node.name, node.op, node.device
        slim.input.extend(node.input)
        for key, attr in node.attr.items():
            if key != "value":
                slim.attr[key].CopyFrom(attr)
        tensor = slim.attr["value"].tensor
        tensor.dtype = value.dtype
        tensor.tensor_shape.CopyFrom(value.tensor_shape)
    return out


def new_placeholders(graph_def, before, inputs: Iterable[str]) -> list[str]:
    """Placeholders that were not Placeholders ``before`` and are no signature input: nobody feeds them.

    A graph with one imports fine and fails at the first request ("You must feed a value for
    placeholder tensor ..."), e.g. after ``rename_op(old_op_name=Const, new_op_name=Placeholder)``.
    """
    was = {n.name for n in before.node if n.op == "Placeholder"} | set(inputs)
    return [n.name for n in graph_def.node if n.op == "Placeholder" and n.name not in was]


def check_graph(model: Model, must_keep: Iterable[str] | None = None, *, import_check: bool = True,
                before: Model | None = None) -> None:
    """Raise :class:`PassError` if ``model``'s graph is not importable or lost a protected node.

    ``import_check=False`` runs only the structural check (no TensorFlow). With ``before``
    (the model the pass was given), a Placeholder the pass introduced outside the signature
    is a problem too.
    """
    keep = model.protected_nodes if must_keep is None else set(must_keep)
    problems = structural_problems(model.graph_def, keep)
    if before is not None:
        problems += [f"node '{name}' is now a Placeholder no signature input feeds"
                     for name in new_placeholders(model.graph_def, before.graph_def, model.signature.input_nodes)]
    if problems:
        raise PassError("the pass returned an invalid graph: " + problems[0],
                        details=problems[1:6] + ([f"... and {len(problems) - 6} more"] if len(problems) > 6 else []),
                        hint="a pass must keep every node it does not rewire, and never reuse a name")
    if not import_check:
        return
    import tensorflow as tf

    try:
        with tf.Graph().as_default():
            tf.graph_util.import_graph_def(skeleton(model.graph_def), name="")
    except Exception as exc:  # ValueError, TypeError, OpError, KeyError...: any of them means "not importable"
        first = str(exc).strip().split("\n")[0]
        hint = "a pass must produce nodes of registered ops with valid attributes"
        if "expects to be colocated with unknown node" in first:
            # GTT's remove_nodes and obfuscate_names leave `_class: loc:@name` colocation attributes naming a
            # node that is gone; TF1 users hit the same with the real GTT.
            hint = ("the pass removed or renamed a node another node is colocated with (its `_class` attribute "
                    "names it); "
                    "strip colocation first: remove_attribute(attribute_name=_class) before this pass, as preset "
                    "serving does")
        raise PassError("the pass returned a graph TensorFlow cannot import: " + first, hint=hint) from None
