"""Freezing a TF2 SavedModel's signature from its protos and checkpoint, without ``tf.saved_model.load``.

``tf.saved_model.load`` + ``convert_variables_to_constants_v2`` hold every
variable as an eager tensor, the signature's function graph, the converter's
copy and a re-imported frozen function at once: 1.95 GB of peak RSS to freeze
ResNet50's 103 MB (measured), and hundreds of MB the process never gets back.
TF Serving never builds any of that: it imports the meta graph and restores the
checkpoint. This module does the same with protos:

1. the signature's call node, its variable handles and the function library
   are cut out of ``saved_model.pb`` (no weights: a few MB);
2. Grappler inlines the functions, exactly as
   ``convert_variables_to_constants_v2`` does (``lower_control_flow=False``);
3. TF's own converter (the one ``convert_variables_to_constants_v2`` uses,
   which also rewrites ``ResourceGather`` and resources passed into
   ``While``/``If`` bodies) turns each handle into a constant, reading one
   tensor at a time from the checkpoint, so the weights exist once: in the
   frozen GraphDef.

Which checkpoint entry a handle reads comes from the object graph: the call's
captured inputs are the concrete function's ``bound_inputs`` (object ids), and
the checkpoint's own object graph, walked from the root by child names, gives
each variable object's ``VARIABLE_VALUE`` key. Anything this path does not
cover (lookup tables and other non-variable resources, ops other than calls,
handles and placeholders at the top level, a checkpoint that does not match)
raises :class:`NotDirect` and the loader falls back to ``tf.saved_model.load``.

TF's converter classes are private API; graphopt pins TensorFlow's version.
"""

from __future__ import annotations

import os
from typing import Any

from graphopt.graph.names import node_name
from graphopt.loaders.tables import RESOURCE
from graphopt.model import Model, Signature

# What a TF2 SavedModel's top-level graph holds on a signature's path.
_TOP_LEVEL_OPS = {"Placeholder", "Const", "Identity", "NoOp", "VarHandleOp", "StatefulPartitionedCall",
                  "PartitionedCall"}
_CALL_OPS = {"StatefulPartitionedCall", "PartitionedCall"}
# Resource ops TF's converter rewrites; any of them left afterwards means a variable stayed a variable.
_RESOURCE_OPS = {"VarHandleOp", "ReadVariableOp", "ResourceGather", "ResourceGatherNd", "AssignVariableOp"}


class NotDirect(Exception):
    """This model needs ``tf.saved_model.load``; the message says why (kept in the model's metadata)."""


def freeze_signature(path: str, meta: Any, key: str, signature: Signature, *, fmt: str = "saved_model") -> Model:
    """Freeze signature ``key`` of the TF2 meta graph ``meta`` read from the SavedModel at ``path``."""
    sig_def = meta.signature_def[key]
    outputs = [node_name(t.name) for t in sig_def.outputs.values()]
    graph_def = _signature_subgraph(meta.graph_def, outputs)
    handles = _variable_keys(path, meta, graph_def)
    inlined = _inline_functions(graph_def, [t.name for t in sig_def.inputs.values()] +
                                [t.name for t in sig_def.outputs.values()])
    stateful = _shared_resources(inlined, set(handles))
    if stateful:
        raise NotDirect(f"the signature uses {stateful[0]}, state the loader sets up (a table?), not a variable")
    frozen = _replace_handles(path, inlined, handles)
    _read_weights_directly(frozen, set(handles), {node_name(t.name) for t in sig_def.outputs.values()})
    return Model(graph_def=frozen, signature=signature, source=path, format=fmt, metadata={"freeze": "direct"})


def _signature_subgraph(graph_def: Any, outputs: list[str]) -> Any:
    """The nodes the outputs depend on (in graph order), with the library and versions; no weights."""
    from graphopt.loaders.signatures import ancestors

    keep = ancestors(graph_def, outputs)
    out = type(graph_def)()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name not in keep:
            continue
        if node.op not in _TOP_LEVEL_OPS:
            raise NotDirect(f"top-level op {node.op} ({node.name}) on the signature's path")
        if node.op == "Placeholder" and node.attr["dtype"].type == RESOURCE:
            raise NotDirect(f"resource placeholder {node.name}")
        out.node.add().CopyFrom(node)
    return out


def _variable_keys(path: str, meta: Any, graph_def: Any) -> dict[str, tuple[str, Any]]:
    """VarHandleOp node name -> (checkpoint key, checkpoint reader) for every handle the calls capture."""
    objects = meta.object_graph_def
    nodes = {n.name: n for n in graph_def.node}
    captured: dict[str, int] = {}
    for call in (n for n in graph_def.node if n.op in _CALL_OPS):
        fn = call.attr["f"].func.name
        if fn not in objects.concrete_functions:
            raise NotDirect(f"{call.name} calls {fn}, which the object graph does not describe")
        bound = list(objects.concrete_functions[fn].bound_inputs)
        data = [i for i in call.input if not i.startswith("^")]
        if len(bound) > len(data):
            raise NotDirect(f"{call.name} has fewer inputs than its function's captures")
        for tensor, object_id in zip(data[len(data) - len(bound):], bound):
            handle = nodes.get(node_name(tensor))
            kind = objects.nodes[object_id].WhichOneof("kind")
            if handle is None or handle.op != "VarHandleOp" or kind != "variable":
                raise NotDirect(f"{call.name} captures a {kind} ({node_name(tensor)}), not a variable")
            captured[handle.name] = object_id
    unused = [n.name for n in graph_def.node if n.op == "VarHandleOp" and n.name not in captured]
    if unused:
        raise NotDirect(f"variable handle {unused[0]} is read outside a function call")
    if not captured:
        return {}

    reader = _checkpoint_reader(path)
    ids = _checkpoint_ids(objects, reader)
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    out = {}
    for name, object_id in captured.items():
        ckpt_node = ids.get(object_id)
        keys = [a.checkpoint_key for a in ckpt_node.attributes if a.name == "VARIABLE_VALUE"] if ckpt_node else []
        if not keys or keys[0] not in shapes:
            raise NotDirect(f"no checkpoint value for variable {name}")
        handle, key = nodes[name], keys[0]
        spec, actual = handle.attr["shape"].shape, shapes[key]
        if dtypes[key].as_datatype_enum != handle.attr["dtype"].type or not spec.unknown_rank and (
                len(spec.dim) != len(actual) or any(d.size >= 0 and d.size != a for d, a in zip(spec.dim, actual))):
            raise NotDirect(f"checkpoint value of {name} does not match its dtype/shape")
        out[name] = (key, reader)
    return out


def _checkpoint_reader(path: str) -> Any:
    import tensorflow as tf

    prefix = os.path.join(path, "variables", "variables")
    try:
        return tf.train.load_checkpoint(prefix)
    except Exception as exc:  # missing or corrupt variables/: tf.saved_model.load reports it in its own words
        raise NotDirect(f"checkpoint unreadable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                        ) from None


def _checkpoint_ids(objects: Any, reader: Any) -> dict[int, Any]:
    """SavedObjectGraph node id -> the checkpoint's TrackableObjectGraph node, matched by child names from
    the root (how TF's own restore matches them; the ids usually coincide, but nothing promises it)."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    ckpt = trackable_object_graph_pb2.TrackableObjectGraph()
    try:
        ckpt.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    except Exception:
        raise NotDirect("the checkpoint has no object graph") from None
    pairs, todo = {0: 0}, [0]
    while todo:
        saved = todo.pop()
        children = {c.local_name: c.node_id for c in ckpt.nodes[pairs[saved]].children}
        for child in objects.nodes[saved].children:
            if child.local_name in children and child.node_id not in pairs:
                pairs[child.node_id] = children[child.local_name]
                todo.append(child.node_id)
    return {saved: ckpt.nodes[c] for saved, c in pairs.items() if c < len(ckpt.nodes)}


def _inline_functions(graph_def: Any, fetches: list[str]) -> Any:
    """Grappler's function inlining, configured as ``convert_variables_to_constants_v2`` configures it."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
    from tensorflow.python.framework.convert_to_constants import disable_lower_using_switch_merge
    from tensorflow.python.grappler import tf_optimizer

    from graphopt.graph.default_attrs import with_default_attrs

    # Grappler's item builder aborts the process on graphs TF's importer rejects (an input without a
    # dtype, an unknown op): import the (weightless) graph first, and let tf.saved_model.load report it.
    try:
        with tf.Graph().as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
    except Exception as exc:
        raise NotDirect(f"graph not importable: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    graph_def = disable_lower_using_switch_merge(graph_def)
    for function in graph_def.library.function:
        # A secondary implementation (e.g. CuDNN LSTM) would keep its call from being inlined.
        if "api_implements" in function.attr:
            del function.attr["api_implements"]
    meta = meta_graph_pb2.MetaGraphDef()
    meta.graph_def.CopyFrom(graph_def)
    meta.collection_def["train_op"].node_list.value.extend(fetches)  # what Grappler must keep
    config = config_pb2.ConfigProto()
    config.graph_options.rewrite_options.min_graph_nodes = -1
    config.graph_options.rewrite_options.optimizers.append("function")
    # Function bodies saved by TF2 omit attrs that have defaults; the frozen graph carries them, as a
    # graph built by TF would (GTT's transforms and graphopt's passes read them).
    return with_default_attrs(tf_optimizer.OptimizeGraph(config, meta))


def _shared_resources(graph_def: Any, handles: set[str]) -> list[str]:
    """Ops (in the graph or its functions) creating a named resource other than the handles to convert.

    A resource with a ``shared_name`` (a table, a variable created inside a function, an iterator) holds
    state ``tf.saved_model.load`` initialises; per-run resources (TensorArrays) have no such name.
    """
    from tensorflow.python.framework import op_def_registry

    found = []
    nodes = [(n, "") for n in graph_def.node if n.name not in handles]
    nodes += [(n, f" in {f.signature.name}") for f in graph_def.library.function for n in f.node_def]
    for node, where in nodes:
        op_def = op_def_registry.get(node.op)
        if op_def is not None and any(a.type == RESOURCE for a in op_def.output_arg) and \
                any(a.name == "shared_name" for a in op_def.attr):
            found.append(f"{node.op} {node.name}{where}")
    return found


def _read_weights_directly(graph_def: Any, weights: set[str], protected: set[str]) -> None:
    """Let every reader of a frozen variable read its constant, not a chain of Identities.

    Freezing leaves one Identity per variable read (the ReadVariableOp) and inlining one more per call
    level, each waiting on an input_control_node NoOp: artifacts of variables and calls. Here those
    NoOps wait on constants only, so runtime Grappler folds every chain at the first request, copying
    the weights (measured: ResNet50's first inference 1.1 -> 1.6 s); TF's converter also colocates the
    readers with the variable (``_class: loc:@variable``). The chains go, the constants stay.
    """
    nodes = {n.name: n for n in graph_def.node}
    root = {name: name for name in weights}
    changed = True
    while changed:  # chains are a few Identities long
        changed = False
        for n in graph_def.node:
            if n.op != "Identity" or n.name in root or n.name in protected or not n.input:
                continue
            head = node_name(n.input[0])
            if head in root and not n.input[0].startswith("^") and all(
                    i.startswith("^") and getattr(nodes.get(i[1:]), "op", None) == "NoOp" for i in n.input[1:]):
                root[n.name] = root[head]
                changed = True
    bypass = {name: target for name, target in root.items() if name not in weights}
    for node in graph_def.node:
        for i, inp in enumerate(node.input):
            head = node_name(inp)
            if head in bypass:
                node.input[i] = "^" + bypass[head] if inp.startswith("^") else bypass[head]
        if "_class" in node.attr:
            kept = [s for s in node.attr["_class"].list.s
                    if s.decode().removeprefix("loc:@") not in weights and s.decode().removeprefix("loc:@") not in bypass]
            if kept:
                node.attr["_class"].list.s[:] = kept
            else:
                del node.attr["_class"]
    # From the back by index: the other NodeDefs are not copied or moved (100 MB of weights).
    for index in reversed([i for i, n in enumerate(graph_def.node) if n.name in bypass]):
        del graph_def.node[index]


def _replace_handles(path: str, graph_def: Any, handles: dict[str, tuple[str, Any]]) -> Any:
    """Each variable handle becomes a constant, its readers identities; one tensor in memory at a time."""
    import tensorflow as tf
    from tensorflow.python.framework import convert_to_constants as ctc

    graph = ctc._GraphDef(graph_def)
    for name, (key, reader) in sorted(handles.items()):
        if name not in graph.nodes:  # Grappler dropped a handle nothing reads
            continue
        dtype = tf.as_dtype(graph.nodes[name].node.attr["dtype"].type).as_datatype_enum
        graph.nodes[name].convert_variable_to_constant(None, ctc._TensorData(reader.get_tensor(key), dtype, None))
    frozen = graph.converted_self().graph_def
    # Saved shapes describe the handles (scalars), not the values now flowing there (a While's loop
    # variable, for one); TF's importer rejects such a mismatch. A graph TF builds carries none.
    for node in [*frozen.node, *(n for f in frozen.library.function for n in f.node_def)]:
        if "_output_shapes" in node.attr:
            del node.attr["_output_shapes"]
    left = [n.name for n in frozen.node if n.op in _RESOURCE_OPS]
    left += [f"{f.signature.name}({a.name})" for f in frozen.library.function for a in f.signature.input_arg
             if a.type == RESOURCE]
    if left:
        raise NotDirect(f"resources left after freezing: {', '.join(left[:3])}")
    return frozen
