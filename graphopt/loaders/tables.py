"""Lookup tables made self-contained: keys and values exported once, re-created in the graph at load.

A frozen graph cannot hold a table's contents the way it holds a variable's,
and a table initialised from an asset file breaks once the file is not beside
the model. So every table the outputs depend on is exported (keys and values,
through ``LookupTableExportV2``) and given an init op fed from two Consts. The
init ops' names go into ``Model.init_ops``; the session runs them before the
first request and the SavedModel writer makes them its main op, so TF Serving
runs them at load.
"""

from __future__ import annotations

import hashlib
from typing import Any

from graphopt.graph.names import source_of

RESOURCE = 20  # DT_RESOURCE
IMMUTABLE_TABLE_OPS = {"HashTableV2", "HashTable"}
MUTABLE_TABLE_OPS = {"MutableHashTableV2", "MutableHashTableOfTensorsV2", "MutableDenseHashTableV2"}
TABLE_OPS = IMMUTABLE_TABLE_OPS | MUTABLE_TABLE_OPS
_FIND_OPS = {"LookupTableFindV2", "LookupTableFind", "LookupTableInsertV2", "LookupTableImportV2",
             "LookupTableRemoveV2"}
_PASS_THROUGH = {"Identity", "IdentityN"}


def _const(graph_def: Any, name: str, array: Any) -> None:
    import tensorflow as tf

    node = graph_def.node.add()
    node.name = name
    node.op = "Const"
    proto = tf.make_tensor_proto(array)
    node.attr["dtype"].type = proto.dtype
    node.attr["value"].tensor.CopyFrom(proto)


def _unique(graph_def: Any, name: str) -> str:
    names = {n.name for n in graph_def.node}
    candidate, i = name, 1
    while candidate in names:
        candidate, i = f"{name}_{i}", i + 1
    return candidate


def add_table_init(graph_def: Any, table: str, table_op: str, keys: Any, values: Any) -> str:
    """Append Const keys/values and the op that loads them into ``table``; return the init op's name."""
    import tensorflow as tf

    base = _unique(graph_def, f"{table}/graphopt_init")
    _const(graph_def, f"{base}/keys", keys)
    _const(graph_def, f"{base}/values", values)
    node = graph_def.node.add()
    node.name = base
    if table_op in MUTABLE_TABLE_OPS:
        node.op = "LookupTableImportV2"
        node.attr["Tin"].type = tf.as_dtype(keys.dtype).as_datatype_enum
        node.attr["Tout"].type = tf.as_dtype(values.dtype).as_datatype_enum
    else:
        node.op = "InitializeTableV2" if table_op.endswith("V2") else "InitializeTable"
        node.attr["Tkey"].type = tf.as_dtype(keys.dtype).as_datatype_enum
        node.attr["Tval"].type = tf.as_dtype(values.dtype).as_datatype_enum
    node.input.extend([table, f"{base}/keys", f"{base}/values"])
    return base


def _in_key_order(keys: Any, values: Any) -> tuple[Any, Any]:
    # A hash table exports in no particular order; sorting makes two loads of one
    # model give the same graph (reproducible exports, empty diffs).
    import numpy as np

    if keys.ndim != 1 or len(keys) != len(values):
        return keys, values
    order = np.argsort(keys, kind="stable")
    return keys[order], values[order]


def _shared_name(node: str, keys: Any, values: Any) -> str:
    digest = hashlib.sha1(node.encode() + repr(keys.tolist()).encode() + repr(values.tolist()).encode())
    return f"graphopt_table_{node}_{digest.hexdigest()[:12]}"


_CALL_OPS = {"PartitionedCall", "StatefulPartitionedCall"}
_WHILE_OPS = {"While", "StatelessWhile"}
_IF_OPS = {"If", "StatelessIf"}


def _dtypes_of(node: Any) -> tuple[Any, Any] | None:
    import tensorflow as tf

    for k, v in (("Tin", "Tout"), ("Tkeys", "Tvalues")):
        if node.op in _FIND_OPS | {"LookupTableExportV2"} and k in node.attr and v in node.attr:
            return tf.as_dtype(node.attr[k].type), tf.as_dtype(node.attr[v].type)
    return None


def _callees(node: Any, position: int, library: dict[str, Any]) -> list[tuple[Any, int]]:
    """Functions ``node`` calls and the argument index its input ``position`` becomes in each."""
    if node.op in _WHILE_OPS:
        return [(library[node.attr[a].func.name], position) for a in ("cond", "body")
                if node.attr[a].func.name in library]
    if node.op in _IF_OPS:
        return [(library[node.attr[a].func.name], position - 1) for a in ("then_branch", "else_branch")
                if position > 0 and node.attr[a].func.name in library]
    if node.op in _CALL_OPS and node.attr["f"].func.name in library:
        return [(library[node.attr["f"].func.name], position)]
    if node.op in library:  # a function called directly as an op
        return [(library[node.op], position)]
    return []


def _consumer_dtypes(graph_def: Any, start: str) -> tuple[Any, Any] | None:
    """Key/value dtypes read off a lookup op fed by node ``start``, following Identity chains and
    function calls (While/If bodies, PartitionedCall) into the function library."""
    library = {f.signature.name: f for f in graph_def.library.function}
    seen: set[tuple[str, str]] = set()

    def search(nodes: list[Any], start_name: str, scope: str) -> tuple[Any, Any] | None:
        todo = [start_name]
        while todo:
            name = todo.pop()
            if (scope, name) in seen:
                continue
            seen.add((scope, name))
            for reader in nodes:
                positions = [i for i, inp in enumerate(reader.input) if not inp.startswith("^")
                             and source_of(inp) == name]
                if not positions:
                    continue
                if reader.op in _PASS_THROUGH:
                    todo.append(reader.name)
                    continue
                found = _dtypes_of(reader)
                if found:
                    return found
                for pos in positions:
                    for fn, arg in _callees(reader, pos, library):
                        if 0 <= arg < len(fn.signature.input_arg):
                            found = search(list(fn.node_def), fn.signature.input_arg[arg].name, fn.signature.name)
                            if found:
                                return found
        return None

    return search(list(graph_def.node), start, "")


def _export_eager(handle: Any, dtypes: tuple[Any, Any] | None, node: str) -> tuple[Any, Any]:
    import tensorflow as tf

    if dtypes is None:
        # Never guess: LookupTableExportV2 with the wrong dtypes aborts the process (a CHECK failure).
        raise ValueError(f"cannot tell the key/value dtypes of table '{node}': no lookup op reads it")
    keys, values = tf.raw_ops.LookupTableExportV2(table_handle=handle, Tkeys=dtypes[0], Tvalues=dtypes[1])
    return _in_key_order(keys.numpy(), values.numpy())


# --- TF2: tables captured by a concrete function ---------------------------------------------


def inline_captured_tables(graph_def: Any, captures: dict[str, Any]) -> list[str]:
    """Replace resource Placeholders left by freezing with HashTableV2 nodes plus init ops.

    ``captures`` maps a Placeholder node name to the eager resource handle the
    function captured. Returns the init op names. Placeholders whose handle is
    not a table are left alone (the caller reports them).
    """
    init_ops: list[str] = []
    for node in list(graph_def.node):
        if node.op != "Placeholder" or node.attr["dtype"].type != RESOURCE or node.name not in captures:
            continue
        handle = captures[node.name]
        keys, values = _export_eager(handle, _consumer_dtypes(graph_def, node.name), node.name)
        import tensorflow as tf

        key_dtype, value_dtype = tf.as_dtype(keys.dtype), tf.as_dtype(values.dtype)
        node.op = "HashTableV2"
        node.ClearField("attr")
        node.attr["key_dtype"].type = key_dtype.as_datatype_enum
        node.attr["value_dtype"].type = value_dtype.as_datatype_enum
        # A name no other table in the process uses: two models served side by side must not share contents.
        node.attr["shared_name"].s = _shared_name(node.name, keys, values).encode()
        node.attr["container"].s = b""
        node.attr["use_node_name_sharing"].b = False
        init_ops.append(add_table_init(graph_def, node.name, node.op, keys, values))
    return init_ops


# --- TF1: tables living in a session ---------------------------------------------------------


def inline_session_tables(session: Any, graph: Any, graph_def: Any) -> list[str]:
    """For every table node kept in the frozen ``graph_def``, export its contents from ``session``
    and add an init op fed by Consts (so no asset file or text-file initialiser remains)."""
    import tensorflow as tf

    init_ops: list[str] = []
    tables = [n for n in graph_def.node if n.op in TABLE_OPS]
    if not tables:
        return init_ops
    with graph.as_default():
        exports = []
        for n in tables:
            op = graph.get_operation_by_name(n.name)
            kd, vd = op.get_attr("key_dtype"), op.get_attr("value_dtype")
            if n.op == "HashTable":  # ref-typed v1 table
                exports.append(tf.raw_ops.LookupTableExport(table_handle=op.outputs[0], Tkeys=kd, Tvalues=vd))
            else:
                exports.append(tf.raw_ops.LookupTableExportV2(table_handle=op.outputs[0], Tkeys=kd, Tvalues=vd))
    values = session.run(exports)
    for n, (keys, vals) in zip(tables, values):
        keys, vals = _in_key_order(keys, vals)
        # The old shared_name often embeds the vocabulary file's path; the contents are in-graph now.
        n.attr["shared_name"].s = _shared_name(n.name, keys, vals).encode()
        init_ops.append(add_table_init(graph_def, n.name, n.op, keys, vals))
    return init_ops
