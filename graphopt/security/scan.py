"""Ops that reach outside the process, found before a graph from a stranger is executed.

Loading a GraphDef is harmless; *running* it (verification, benchmarks, the local
server) executes whatever ops it holds. A model from an untrusted source can
read or write files, call back into Python, open network connections or load
checkpoints. :func:`scan` lists such ops in the graph and in every function of
its library; :func:`ensure_safe` refuses to go on unless the user allowed them
(``--allow-unsafe-ops``). ``graphopt inspect`` shows the findings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from graphopt.errors import UnsafeGraphError

# op -> why it is dangerous. Grouped by what the op can do.
_FILES = "reads or writes files"
_PYTHON = "runs arbitrary Python code"
_NETWORK = "opens network connections"
_CHECKPOINT = "saves or restores checkpoints from disk"

UNSAFE_OPS: dict[str, str] = {
    **{op: _PYTHON for op in ("PyFunc", "PyFuncStateless", "EagerPyFunc")},
    **{op: _FILES for op in (
        "ReadFile", "WriteFile", "MatchingFiles", "ImmutableConst", "InitializeTableFromTextFile",
        "InitializeTableFromTextFileV2", "TextLineReader", "TextLineReaderV2", "TFRecordReader", "TFRecordReaderV2",
        "FixedLengthRecordReader", "FixedLengthRecordReaderV2", "WholeFileReader", "WholeFileReaderV2",
        "IdentityReader", "IdentityReaderV2", "LMDBReader", "ReaderRead", "ReaderReadV2", "ReaderReadUpTo",
        "ReaderReadUpToV2", "TextLineDataset", "TFRecordDataset", "TFRecordDatasetV2", "FixedLengthRecordDataset",
        "FixedLengthRecordDatasetV2", "CSVDataset", "CSVDatasetV2", "ExperimentalCSVDataset", "SqlDataset",
        "ExperimentalSqlDataset", "LMDBDataset", "ExperimentalLMDBDataset", "DatasetToTFRecord",
        "ExperimentalDatasetToTFRecord", "SaveDataset", "SaveDatasetV2", "LoadDataset", "SnapshotDataset",
        "SnapshotDatasetV2", "CreateSummaryFileWriter", "WriteSummary", "WriteScalarSummary",
        "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary", "WriteGraphSummary",
        "WriteRawProtoSummary", "CreateSummaryDbWriter", "ImportEvent", "DecodeProtoV2", "EncodeProto",
        "LoadAndRemapMatrix", "GenerateVocabRemapping", "DebugIdentityV3",
    )},
    **{op: _NETWORK for op in (
        "DebugIdentity", "DebugIdentityV2", "DebugNanCount", "DebugNumericSummary", "DebugNumericSummaryV2",
        "DataServiceDataset", "DataServiceDatasetV2", "DataServiceDatasetV3", "DataServiceDatasetV4",
        "RegisterDataset", "RegisterDatasetV2", "CollectiveReduce", "CollectiveReduceV2", "CollectiveReduceV3",
        "CollectiveGather", "CollectiveGatherV2", "CollectiveBcastSend", "CollectiveBcastRecv",
        "CollectiveBcastSendV2", "CollectiveBcastRecvV2", "CollectiveAllToAllV2", "CollectiveAllToAllV3",
        "GcsConfigureCredentials", "GcsConfigureBlockCache", "BigQueryReader",
    )},
    **{op: _CHECKPOINT for op in (
        "Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice", "MergeV2Checkpoints",
        "ShardedFilename", "ShardedFilespec",
    )},
}


@dataclass(frozen=True)
class Finding:
    """One unsafe op: where it is (node, and function if inside the library) and what it can do."""

    node: str
    op: str
    reason: str
    function: str | None = None

    @property
    def location(self) -> str:
        return f"{self.function}/{self.node}" if self.function else self.node

    def to_dict(self) -> dict[str, str | None]:
        return {"node": self.node, "op": self.op, "reason": self.reason, "function": self.function}


def scan(graph_def) -> list[Finding]:
    """Every unsafe op in the graph and in its function library."""
    found = [Finding(n.name, n.op, UNSAFE_OPS[n.op]) for n in graph_def.node if n.op in UNSAFE_OPS]
    for fn in graph_def.library.function:
        found.extend(Finding(n.name, n.op, UNSAFE_OPS[n.op], fn.signature.name)
                     for n in fn.node_def if n.op in UNSAFE_OPS)
    return found


def ensure_safe(graph_def, *, allow: bool | Iterable[str] = False, action: str = "run the graph",
                source: str | None = None) -> list[Finding]:
    """Raise :class:`UnsafeGraphError` if the graph holds unsafe ops not allowed.

    ``allow=True`` allows all; an iterable of op names allows just those.
    Returns the findings that were allowed.
    """
    findings = scan(graph_def)
    if allow is True:
        return findings
    allowed = set(allow or ())
    refused = [f for f in findings if f.op not in allowed]
    if refused:
        ops = sorted({f.op for f in refused})
        raise UnsafeGraphError(
            f"refusing to {action}: the graph holds {len(refused)} op(s) that reach outside the process "
            f"({', '.join(ops)})", where=source,
            details=[f"{f.location}: {f.op} {f.reason}" for f in refused[:8]]
            + ([f"... and {len(refused) - 8} more"] if len(refused) > 8 else []),
            hint="if you trust this model, rerun with --allow-unsafe-ops (or --allow-unsafe-ops "
                 + ",".join(ops) + ")")
    return findings


# A vocabulary table read from one of the model's own asset files is what TF1 main ops normally run.
_ASSET_TABLE_INITS = {"InitializeTableFromTextFile", "InitializeTableFromTextFileV2"}
_INIT_COLLECTIONS = ("saved_model_main_op", "legacy_init_op")


def load_time_findings(meta_graph_def, roots: Iterable[str] | None = None,
                       expected: Iterable[str] = ()) -> list[Finding]:
    """Unsafe ops TF1's SavedModel loader would *run while loading*: the main op / legacy init op and all
    they depend on (and, if that calls functions, the whole library).

    Loading means running these, so ``graphopt inspect`` of a stranger's model would already execute a
    ``WriteFile`` in its main op (measured). Tables initialised from the model's own asset files are
    expected and not listed. ``roots`` replaces the main ops as what runs (e.g. a checkpoint's restore op
    and table initializers), and ops in ``expected`` are not listed (the restore op reads the checkpoint).
    """
    from tensorflow.core.protobuf import meta_graph_pb2

    from graphopt.model import node_name

    collections = meta_graph_def.collection_def
    if roots is None:
        roots = [node_name(v) for key in _INIT_COLLECTIONS if key in collections
                 for v in collections[key].node_list.value]
    roots = [node_name(r) for r in roots]
    expected = set(expected)
    if not roots:
        return []
    assets = {node_name(a.tensor_info.name) for a in meta_graph_def.asset_file_def}
    if "asset_filepaths" in collections:
        assets |= {node_name(v) for v in collections["asset_filepaths"].node_list.value}
    if "saved_model_assets" in collections:
        for packed in collections["saved_model_assets"].any_list.value:
            asset = meta_graph_pb2.AssetFileDef()
            if packed.Unpack(asset):
                assets.add(node_name(asset.tensor_info.name))
    graph = meta_graph_def.graph_def
    by_name = {n.name: n for n in graph.node}
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        todo.extend(node_name(i) for i in by_name[name].input)
    nodes = [by_name[n] for n in sorted(seen)]
    found = [Finding(n.name, n.op, UNSAFE_OPS[n.op]) for n in nodes if n.op in UNSAFE_OPS and n.op not in expected
             and not (n.op in _ASSET_TABLE_INITS and len(n.input) > 1 and node_name(n.input[1]) in assets)]
    functions = {f.signature.name for f in graph.library.function}
    if any(n.op in functions or any(a.HasField("func") for a in n.attr.values()) for n in nodes):
        found += [f for f in scan(graph) if f.function is not None]
    return found


_INIT_FUNCTION_CHILDREN = ("_create_resource", "_initialize")


def _arg_fed(fdef, inp: str) -> bool:
    # In a FunctionDef, "name" alone is a function argument (a captured tensor such as an asset path);
    # outputs of nodes in the body are "node:output:index".
    args = {a.name for a in fdef.signature.input_arg}
    return inp.split(":")[0] in args and ":" not in inp


def tf2_load_time_findings(meta_graph_def) -> list[Finding]:
    """Unsafe ops ``tf.saved_model.load`` would *run while loading* a TF2 SavedModel: the resource
    creators and initializers in its object graph (lookup tables and custom resources) and every
    function they call. A table initialised from a file path passed in as a captured tensor (an
    asset) is expected and not listed; one from a path constant in the body is.
    """
    og = meta_graph_def.object_graph_def
    library = {f.signature.name: f for f in meta_graph_def.graph_def.library.function}

    def concrete(node_id: int) -> list[str]:
        obj = og.nodes[node_id]
        kind = obj.WhichOneof("kind")
        if kind == "function":
            return list(obj.function.concrete_functions)
        if kind == "bare_concrete_function":
            return [obj.bare_concrete_function.concrete_function_name]
        return []

    todo = [name for obj in og.nodes for child in obj.children if child.local_name in _INIT_FUNCTION_CHILDREN
            for name in concrete(child.node_id)]
    seen: set[str] = set()
    found: list[Finding] = []
    while todo:
        name = todo.pop()
        if name in seen or name not in library:
            continue
        seen.add(name)
        fdef = library[name]
        for node in fdef.node_def:
            todo.extend(a.func.name for a in node.attr.values() if a.HasField("func"))
            if node.op in library:
                todo.append(node.op)
            if node.op not in UNSAFE_OPS:
                continue
            if node.op in _ASSET_TABLE_INITS and len(node.input) > 1 and _arg_fed(fdef, node.input[1]):
                continue
            found.append(Finding(node.name, node.op, UNSAFE_OPS[node.op], name))
    return found


ENV_ALLOW_UNSAFE_LOAD = "GRAPHOPT_ALLOW_UNSAFE_LOAD"


def refuse_unsafe_load(found: list[Finding], *, runs: str, where: str, why: str = "") -> None:
    """Raise :class:`UnsafeGraphError` for ops a loader would run while loading, unless
    ``GRAPHOPT_ALLOW_UNSAFE_LOAD=1``. ``runs`` names what runs them ("the model's main op")."""
    import os

    if not found or os.environ.get(ENV_ALLOW_UNSAFE_LOAD, "") == "1":
        return
    ops = sorted({f.op for f in found})
    raise UnsafeGraphError(
        f"refusing to load: {runs} would run {len(found)} op(s) that reach outside the process ({', '.join(ops)})",
        where=where, details=[f"{f.location}: {f.op} {f.reason}" for f in found[:8]],
        hint=f"{why + '; ' if why else ''}if you trust this model, set {ENV_ALLOW_UNSAFE_LOAD}=1")
