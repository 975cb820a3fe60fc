"""Frozen GraphDefs: binary ``.pb`` and text ``.pbtxt``.

Inputs and outputs are the names given, or inferred: every (non-resource)
Placeholder the outputs depend on is an input; every sink is an output (a node
nobody reads, other than no-ops, asserts, savers, initialisers and constants).
Signature keys are the node names, sanitised. Table init ops already in the
graph (from a graphopt export) become the model's init ops again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from graphopt.errors import InputError
from graphopt.loaders import signatures as sigs
from graphopt.model import Model

TABLE_INIT_OPS = {"InitializeTableV2", "InitializeTable", "InitializeTableFromTextFileV2",
                  "InitializeTableFromTextFile", "LookupTableImportV2"}


def read_graph_def(path: str) -> Any:
    """Parse a binary or text GraphDef; :class:`InputError` if it is neither."""
    from google.protobuf import text_format
    from tensorflow.core.framework import graph_pb2

    graph_def = graph_pb2.GraphDef()
    data = Path(path).read_bytes()
    text = path.lower().endswith((".pbtxt", ".txt"))
    try:
        if text:
            text_format.Parse(data.decode("utf-8"), graph_def)
        else:
            graph_def.ParseFromString(data)
    except Exception as exc:  # DecodeError / ParseError / UnicodeDecodeError
        kind = "text" if text else "binary"
        raise InputError(f"not a {kind} GraphDef: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                         where=path, hint="the file is corrupt, or has the wrong extension (.pb binary, .pbtxt text)"
                         ) from None
    if not graph_def.node:
        raise InputError("the GraphDef has no nodes", where=path, hint="the file is probably not a TensorFlow graph")
    from graphopt.graph.checks import malformed_constants

    broken = malformed_constants(graph_def)  # TF imports these, then native code aborts on them
    if broken:
        raise InputError(f"the GraphDef is corrupt: {broken[0]}", where=path, details=broken[1:6],
                         hint="the file was damaged, or written by a buggy tool; export it again")
    return graph_def


def table_init_ops(graph_def: Any) -> list[str]:
    return [n.name for n in graph_def.node if n.op in TABLE_INIT_OPS]


def load_graph_def(path: str, *, signature: str | None = None, tags: Sequence[str] | None = None,
                   inputs: Sequence[str] | None = None, outputs: Sequence[str] | None = None) -> Model:
    """Load a frozen ``.pb``/``.pbtxt`` (see module docstring). ``signature`` and ``tags`` do not apply."""
    graph_def = read_graph_def(path)
    variables = [n.name for n in graph_def.node if n.op in ("VariableV2", "VarHandleOp", "Variable")]
    if variables:
        raise InputError(f"the GraphDef is not frozen: it has {len(variables)} variables ({variables[0]}, ...)",
                         where=path, hint="load the checkpoint or SavedModel it came from instead")
    sig = sigs.signature_from_names(graph_def, inputs, outputs, path)
    if signature:
        sig = type(sig)(inputs=sig.inputs, outputs=sig.outputs, key=signature)
    fmt = "pbtxt" if path.lower().endswith((".pbtxt", ".txt")) else "pb"
    model = Model(graph_def=graph_def, signature=sig, init_ops=table_init_ops(graph_def), source=path, format=fmt)
    model.metadata["inferred"] = {"inputs": not inputs, "outputs": not outputs}
    return model
