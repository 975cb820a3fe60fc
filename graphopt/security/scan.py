"""The allowlist check: every op of a model that could run, judged before anything runs it.

A model is a program (docs/guide/security.md). Loading a GraphDef is harmless; *running*
it -- a loader's init and restore ops, verification, constant folding, Grappler,
bench, serve -- executes whatever ops it holds. Each of those places calls one
of the checks here first, and each check judges ops against the allowlist
(:mod:`graphopt.security.allowlist`, data in ``allowed_ops.toml``):

- :func:`scan` walks *every* node of a graph, every ``FunctionDef`` of its
  library and every graph embedded in a string constant or attribute (a
  serialized ``GraphDef``, such as the one ``DatasetFromGraph`` runs), and
  returns a :class:`Finding` for each op not known to compute only, naming the
  op, the node, the function and the embedding. :func:`ensure_safe` raises
  :class:`~graphopt.errors.UnsafeGraphError` for the findings the user did not
  allow (``--allow-op``, ``GRAPHOPT_ALLOW_OPS``); ``graphopt inspect`` lists them.
- :func:`load_time_findings` judges what TensorFlow's own loaders run while
  *loading*: the saver's restore op (the only place a ``RestoreV2`` is allowed,
  and only reading the file the loader feeds), every init op
  (``__saved_model_init_op``, ``saved_model_main_op``, ``legacy_init_op``,
  table initializers; a vocabulary file only when it is one of the model's own
  assets) and what freezing evaluates. :func:`tf2_load_time_findings` does the
  same for ``tf.saved_model.load``: the resources' ``_create_resource``,
  ``_initialize`` and ``_destroy_resource`` functions and the saveables'
  restore functions; one that names a function the library lacks cannot be
  checked and is refused. :func:`check_assets` refuses asset paths that leave
  the model's folder.
- :func:`check_saved_model` does both for a SavedModel that TF's loader will
  load and then run (``graphopt serve``, ``graphopt bench``).

Only what could run is walked in a SavedModel's meta graph (the closure of its
restore op, init ops and signatures): the saver's *save* ops, say, are in every
SavedModel and run only when saving. A loaded :class:`~graphopt.model.Model` is
walked whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphopt.errors import InputError, UnsafeGraphError
from graphopt.graph.names import node_name, source_of
from graphopt.security.allowlist import (
    ENV_ALLOW_OPS,
    NOT_LISTED,
    Allow,
    allowlist,
    permission,
)

DT_STRING = 7
MAX_NESTING = 4  # graphs embedded in graphs embedded in ...: deeper than this is refused outright
_SHOWN = 8  # findings listed in a refusal; the rest are counted

# Contexts a graph runs in: a loader restoring the model, or anything else (verify, fold, bench, serve).
LOAD, RUN = "load", "run"
# What a conditional op's file input must come from (the `when` of its group in allowed_ops.toml), and which
# input that is.
CHECKPOINT, ASSET = "model_checkpoint", "model_asset"
_FILE_INPUT = {"RestoreV2": 0, "Restore": 0, "RestoreSlice": 0,
               "InitializeTableFromTextFile": 1, "InitializeTableFromTextFileV2": 1}
# Call ops whose data inputs become the called function's arguments from this input on.
_ARGS_FROM = {"PartitionedCall": 0, "StatefulPartitionedCall": 0, "While": 0, "StatelessWhile": 0, "_While": 0,
              "If": 1, "StatelessIf": 1, "_If": 1, "Case": 1, "StatelessCase": 1}
# A serialized GraphDef starts with one of its fields: node (1), library (2) or versions (4).
_GRAPH_FIRST_BYTES = (0x0A, 0x12, 0x22)

_INIT_COLLECTIONS = ("saved_model_main_op", "legacy_init_op")
INIT_OP_SIGNATURE_KEY = "__saved_model_init_op"
_LOAD_TIME_CHILDREN = ("_create_resource", "_initialize", "_destroy_resource")
_VARIABLE_OPS = {"VariableV2", "Variable", "VarHandleOp"}
_TABLE_OPS = {"HashTable", "HashTableV2", "MutableHashTable", "MutableHashTableV2", "MutableHashTableOfTensors",
              "MutableHashTableOfTensorsV2", "MutableDenseHashTable", "MutableDenseHashTableV2"}


@dataclass(frozen=True)
class Finding:
    """One op that is not known to compute only: the node, its op, why, the function holding it (``None``
    in the main graph) and, for a graph embedded in a constant, where that constant is."""

    node: str
    op: str
    reason: str
    function: str | None = None
    nested: str | None = None

    @property
    def location(self) -> str:
        where = f"{self.function}/{self.node}" if self.function else self.node
        return f"[graph in {self.nested}] {where}" if self.nested else where

    def to_dict(self) -> dict[str, str | None]:
        return {"node": self.node, "op": self.op, "reason": self.reason, "function": self.function,
                "nested": self.nested}


# --- walking graphs, functions and embedded graphs ------------------------------------------------------------


class _Scope:
    """One body being walked: the main graph (``function`` is None) or a function's, with the inputs known to
    carry the model's checkpoint path or one of its asset paths (``marks``: producer -> CHECKPOINT/ASSET)."""

    def __init__(self, nodes: Iterable[Any], function: str | None, marks: dict[str, str]) -> None:
        self.by_name = {n.name: n for n in nodes}
        self.function = function
        self.marks = marks

    def _producer(self, inp: str) -> str:
        # In a function body a bare name is an argument ("arg:"), "node:out:0" a node; in a graph "node:1".
        if self.function is not None and ":" not in inp:
            return "arg:" + inp
        return source_of(inp) if self.function is not None else node_name(inp)

    def mark(self, inp: str) -> str | None:
        """CHECKPOINT/ASSET when ``inp`` carries such a path: directly, or through ``Identity`` nodes."""
        seen: set[str] = set()  # a loop through NextIteration is no Identity chain, but a hostile graph may cycle
        while not inp.startswith("^"):
            name = self._producer(inp)
            if name in self.marks:
                return self.marks[name]
            node = self.by_name.get(name)
            if node is None or node.op != "Identity" or not node.input or name in seen:
                return None
            seen.add(name)
            inp = node.input[0]
        return None


def _data_inputs(node: Any) -> list[str]:
    return [i for i in node.input if not i.startswith("^")]


def _func_names(value: Any) -> list[str]:
    """Function names an attribute value refers to (a ``func``, a list of them, and their own ``func`` attrs)."""
    kind = value.WhichOneof("value")
    refs = [value.func] if kind == "func" else list(value.list.func) if kind == "list" else []
    names = []
    for ref in refs:
        if ref.name:
            names.append(ref.name)
        for inner in ref.attr.values():
            names.extend(_func_names(inner))
    return names


def _embedded_strings(node: Any) -> Iterable[bytes]:
    """Every string a node's attributes carry: constant values (tensors) and string attributes."""
    for value in node.attr.values():
        kind = value.WhichOneof("value")
        if kind == "tensor":
            tensors = [value.tensor]
        elif kind == "list":
            tensors = list(value.list.tensor)
            yield from value.list.s
        elif kind == "s":
            yield value.s
            continue
        else:
            continue
        for tensor in tensors:
            if tensor.dtype == DT_STRING:
                yield from tensor.string_val


def as_graph(data: bytes) -> Any | None:
    """``data`` parsed as a serialized ``GraphDef`` holding at least one op, else ``None``."""
    if len(data) < 8 or data[0] not in _GRAPH_FIRST_BYTES:
        return None
    from google.protobuf.message import DecodeError
    from tensorflow.core.framework import graph_pb2

    try:
        graph = graph_pb2.GraphDef.FromString(data)
    except (DecodeError, ValueError, RuntimeError):
        return None
    if not any(n.op for n in graph.node) and not any(f.node_def for f in graph.library.function):
        return None
    return graph


class _Walker:
    """Judges nodes in one context (LOAD or RUN) against the allowlist, following calls into the library and
    into embedded graphs; collects :class:`Finding` s."""

    def __init__(self, library: Any, context: str, *, depth: int = 0, nested: str | None = None) -> None:
        self.library = {f.signature.name: f for f in library.function}
        self.context = context
        self.depth = depth
        self.nested = nested
        self.findings: list[Finding] = []
        self._walked: set[tuple[str, frozenset]] = set()
        # Functions still to walk: a worklist, not recursion, so a chain of thousands of calls is no deeper.
        self._pending: list[tuple[str, frozenset]] = []

    def _add(self, node: Any, scope: _Scope, reason: str, op: str | None = None) -> None:
        self.findings.append(Finding(node.name, op or node.op, reason, scope.function, self.nested))

    def whole(self, graph_def: Any) -> None:
        """Every node of the graph and every function of its library."""
        scope = _Scope(graph_def.node, None, {})
        for node in graph_def.node:
            self.node(node, scope)
        for name in self.library:
            self.function(name, frozenset())
        self.drain()

    def closure(self, graph_def: Any, roots: Iterable[str], marks: dict[str, str] | None = None) -> None:
        """The nodes running ``roots`` runs (their inputs, data and control, transitively), and what they call."""
        scope = _Scope(graph_def.node, None, dict(marks or {}))
        seen: set[str] = set()
        todo = [node_name(r) for r in roots]
        while todo:
            name = todo.pop()
            if name in seen or name not in scope.by_name:
                continue
            seen.add(name)
            todo.extend(node_name(i) for i in scope.by_name[name].input)
        for node in graph_def.node:
            if node.name in seen:
                self.node(node, scope)
        self.drain()

    def function(self, name: str, marks: frozenset) -> None:
        """Queue a function's whole body (walked by :meth:`drain`); ``marks`` are (argument index,
        CHECKPOINT/ASSET) pairs."""
        key = (name, marks)
        if key not in self._walked and name in self.library:
            self._walked.add(key)
            self._pending.append(key)

    def drain(self) -> None:
        """Walk the queued functions, and the ones they call."""
        while self._pending:
            name, marks = self._pending.pop()
            fdef = self.library[name]
            args = [a.name for a in fdef.signature.input_arg]
            scope = _Scope(fdef.node_def, name, {"arg:" + args[i]: kind for i, kind in marks if i < len(args)})
            for node in fdef.node_def:
                self.node(node, scope)

    def node(self, node: Any, scope: _Scope) -> None:
        reason = self._judge(node, scope)
        if reason:
            self._add(node, scope, reason)
        data = _data_inputs(node)
        calls: list[tuple[str, int | None]] = [(node.op, 0)] if node.op in self.library else []
        calls += [(fn, _ARGS_FROM.get(node.op)) for fn in (n for v in node.attr.values() for n in _func_names(v))]
        for fn, first in calls:
            if fn not in self.library:
                self._add(node, scope, f"calls function '{fn}', which the model's library does not define")
                continue
            marks = frozenset() if first is None else frozenset(
                (i - first, kind) for i, inp in enumerate(data) if i >= first and (kind := scope.mark(inp)))
            self.function(fn, marks)
        self._embedded(node, scope)

    def _judge(self, node: Any, scope: _Scope) -> str | None:
        if node.op in self.library:
            return None  # a call by function name: its body is walked
        table = allowlist()
        group = table.group(node.op)
        if group is None:
            return NOT_LISTED
        if group.kind == "allowed":
            return None
        if group.kind == "load_only" and self.context == LOAD:
            if group.when is None:
                return None
            data, index = _data_inputs(node), _FILE_INPUT.get(node.op)
            if index is not None and index < len(data) and scope.mark(data[index]) == group.when:
                return None
        return table.reason(node.op)

    def _embedded(self, node: Any, scope: _Scope) -> None:
        for data in _embedded_strings(node):
            graph = as_graph(data)
            if graph is None:
                continue
            here = f"{scope.function}/{node.name}" if scope.function else node.name
            where = f"{self.nested} > {here}" if self.nested else here
            if self.depth >= MAX_NESTING:
                self._add(node, scope, f"holds graphs embedded more than {MAX_NESTING} deep")
                return
            # An embedded graph runs only through an op that is itself refused (DatasetFromGraph): its ops
            # are judged as a graph that is run, and listed so the user sees what it would do.
            inner = _Walker(graph.library, RUN, depth=self.depth + 1, nested=where)
            inner.whole(graph)
            self.findings.extend(inner.findings)


def _unique(findings: Iterable[Finding]) -> list[Finding]:
    return list(dict.fromkeys(findings))


# --- graphs and models -----------------------------------------------------------------------------------------


def scan(graph_def: Any) -> list[Finding]:
    """Every op not known to compute only: in the graph, in every function of its library, in embedded graphs."""
    walker = _Walker(graph_def.library, RUN)
    walker.whole(graph_def)
    return _unique(walker.findings)


def _refusal(action: str, runs: str, refused: list[Finding], source: str | None, hint: str) -> UnsafeGraphError:
    ops = sorted({f.op for f in refused})
    details = [f"{f.location}: {f.op} {f.reason}" for f in refused[:_SHOWN]]
    if len(refused) > _SHOWN:
        details.append(f"... and {len(refused) - _SHOWN} more")
    return UnsafeGraphError(f"refusing to {action}: {runs} {len(refused)} op(s) not known to compute only "
                            f"({', '.join(ops)})", where=source, details=details, hint=hint)


def allow_hint(ops: Iterable[str]) -> str:
    ops = sorted(set(ops))
    flags = " ".join(f"--allow-op {op}" for op in ops)
    return (f"if you trust this model, allow them: {flags} (or {ENV_ALLOW_OPS}={','.join(ops)}); "
            "see docs/guide/security.md")


def ensure_safe(graph_def: Any, *, allow: Allow = None, action: str = "run the graph",
                source: str | None = None, why: str = "") -> list[Finding]:
    """Raise :class:`UnsafeGraphError` if :func:`scan` finds ops the user did not allow.

    ``allow`` is True (every op), op names, or nothing; ``GRAPHOPT_ALLOW_OPS`` adds to it
    (:func:`graphopt.security.allowlist.permission`). Returns the findings that were allowed.
    """
    return enforce(scan(graph_def), allow=allow, action=action, source=source, why=why)


def enforce(findings: Sequence[Finding], *, allow: Allow = None, action: str, source: str | None,
            runs: str = "the graph holds", loading: bool = False, why: str = "") -> list[Finding]:
    """Raise for the findings ``allow`` (and the environment) does not permit; return the permitted ones.

    The message reads "refusing to <action>: <runs> N op(s) not known to compute only (...)".
    """
    granted = permission(allow, loading=loading)
    refused = [f for f in findings if not granted.permits(f.op)]
    if refused:
        hint = allow_hint(f.op for f in refused)
        raise _refusal(action, runs, refused, source, f"{why}; {hint}" if why else hint)
    return list(findings)


def check_model(model: Any, *, allow: Allow = None, action: str = "run the model", why: str = "") -> list[Finding]:
    """:func:`ensure_safe` on a loaded :class:`~graphopt.model.Model` (named by its source)."""
    return ensure_safe(model.graph_def, allow=allow, action=action, source=model.source or None, why=why)


# --- what TensorFlow's loaders run while loading --------------------------------------------------------------


def init_op_names(meta_graph_def: Any) -> list[str]:
    """Every init op TF1's SavedModel loader may run: the ``__saved_model_init_op`` signature (which it reads
    first), then the ``saved_model_main_op`` and ``legacy_init_op`` collections."""
    names = []
    if INIT_OP_SIGNATURE_KEY in meta_graph_def.signature_def:
        sig = meta_graph_def.signature_def[INIT_OP_SIGNATURE_KEY]
        names += [node_name(t.name) for t in sig.outputs.values() if t.name]
    collections = meta_graph_def.collection_def
    names += [node_name(v) for key in _INIT_COLLECTIONS if key in collections
              for v in collections[key].node_list.value]
    return names


def asset_files(meta_graph_def: Any) -> list[Any]:
    """The ``AssetFileDef`` s TF's loader feeds, chosen as it chooses them: ``asset_file_def`` when present,
    else the ``saved_model_assets`` collection."""
    from tensorflow.core.protobuf import meta_graph_pb2

    if meta_graph_def.asset_file_def:
        return list(meta_graph_def.asset_file_def)
    found = []
    collection = meta_graph_def.collection_def.get("saved_model_assets")
    for packed in collection.any_list.value if collection is not None else ():
        asset = meta_graph_pb2.AssetFileDef()
        if packed.Unpack(asset):
            found.append(asset)
    return found


def _stateful_roots(graph_def: Any) -> list[str]:
    # Freezing evaluates every variable and exports every table: whatever those nodes wait on runs too.
    return [n.name for n in graph_def.node if n.op in _VARIABLE_OPS | _TABLE_OPS]


def load_time_findings(meta_graph_def: Any, *, init: Iterable[str] | None = None, restore: bool = True,
                       assets_fed: bool = True, freeze: bool = True) -> list[Finding]:
    """What TF1's loaders (SavedModel ``loader.load``, ``import_meta_graph`` + ``Saver.restore``) and freezing
    would run, judged for loading.

    - the saver's restore op (``restore``), where ``RestoreV2`` may read only the file the loader feeds
      through the saver's filename tensor;
    - ``init`` (default: :func:`init_op_names`), where a vocabulary file may be read only through an asset
      tensor the loader feeds (``assets_fed``; a checkpoint's loader feeds none);
    - with ``freeze``, every variable and table node (freezing evaluates them) and what they wait on.
    """
    graph = meta_graph_def.graph_def
    findings: list[Finding] = []
    saver = meta_graph_def.saver_def
    if restore and saver.restore_op_name:
        walker = _Walker(graph.library, LOAD)
        marks = {node_name(saver.filename_tensor_name): CHECKPOINT} if saver.filename_tensor_name else {}
        walker.closure(graph, [saver.restore_op_name], marks)
        findings += walker.findings
    roots = list(init_op_names(meta_graph_def) if init is None else init)
    if freeze:
        roots += _stateful_roots(graph)
    if roots:
        walker = _Walker(graph.library, LOAD)
        marks = {node_name(a.tensor_info.name): ASSET for a in asset_files(meta_graph_def)} if assets_fed else {}
        walker.closure(graph, roots, marks)
        findings += walker.findings
    return _unique(findings)


def _concrete_functions(objects: Any, node_id: int) -> list[str]:
    obj = objects.nodes[node_id]
    kind = obj.WhichOneof("kind")
    if kind == "function":
        return list(obj.function.concrete_functions)
    if kind == "bare_concrete_function":
        return [obj.bare_concrete_function.concrete_function_name]
    return []


def _object_paths(objects: Any) -> dict[int, str]:
    """Object id -> its path from the root by child names (``root.table``), for messages."""
    paths, todo = {0: "root"}, [0]
    while todo:
        parent = todo.pop()
        for child in objects.nodes[parent].children:
            if child.node_id not in paths and child.node_id < len(objects.nodes):
                paths[child.node_id] = f"{paths[parent]}.{child.local_name}"
                todo.append(child.node_id)
    return paths


def tf2_load_time_findings(meta_graph_def: Any) -> list[Finding]:
    """What ``tf.saved_model.load`` would run for a TF2 SavedModel, judged for loading: every resource's
    ``_create_resource``, ``_initialize`` and ``_destroy_resource`` (run when the object is freed) and every
    saveable's save/restore function, with all they call. A table may read a vocabulary file only through a
    captured asset. A function the library does not define cannot be checked: it is a finding, so the object
    is never created.
    """
    objects = meta_graph_def.object_graph_def
    graph = meta_graph_def.graph_def
    library = {f.signature.name: f for f in graph.library.function}
    paths = _object_paths(objects)
    walker = _Walker(graph.library, LOAD)
    unchecked: list[Finding] = []

    def visit(owner: int, role: str, node_id: int) -> None:
        names = _concrete_functions(objects, node_id) if 0 < node_id < len(objects.nodes) else []
        where = paths.get(owner, f"object {owner}")
        if not names:
            unchecked.append(Finding(where, role, f"is object {node_id}, not a function graphopt can check"))
        for name in names:
            if name not in library:
                unchecked.append(Finding(where, role, f"names function {name}, which the model's library does "
                                                      "not define: graphopt cannot check what it would run"))
                continue
            bound = list(objects.concrete_functions[name].bound_inputs) if name in objects.concrete_functions \
                else []
            args = library[name].signature.input_arg
            first = len(args) - len(bound)
            marks = frozenset((first + i, ASSET) for i, b in enumerate(bound)
                              if 0 <= b < len(objects.nodes) and objects.nodes[b].WhichOneof("kind") == "asset")
            walker.function(name, marks)

    for owner, obj in enumerate(objects.nodes):
        for child in obj.children:
            if child.local_name in _LOAD_TIME_CHILDREN:
                visit(owner, child.local_name, child.node_id)
        for saveable in obj.saveable_objects.values():
            for role, node_id in (("save_function", saveable.save_function),
                                  ("restore_function", saveable.restore_function)):
                if node_id:
                    visit(owner, role, node_id)
    walker.drain()
    return _unique(unchecked + walker.findings)


def refuse_unsafe_load(found: Sequence[Finding], *, runs: str, where: str, why: str = "") -> None:
    """Raise :class:`UnsafeGraphError` for ops a loader would run while loading that the user did not allow
    (``--allow-op``, ``GRAPHOPT_ALLOW_OPS``, or the old ``GRAPHOPT_ALLOW_UNSAFE_LOAD=1``).
    ``runs`` names what runs them ("the model's init ops")."""
    enforce(found, action="load", runs=f"{runs} would run", source=where, loading=True, why=why)


# --- assets ---------------------------------------------------------------------------------------------------


def check_assets(export_dir: str | Path, meta_graph_def: Any) -> None:
    """Refuse asset paths that leave the model's folder: absolute, with ``..``, or a symlink pointing out.

    TF's loader joins ``<export_dir>/assets`` with each asset's file name and hands the result to the
    model's init ops, which read it: a name such as ``../../x`` or ``/x`` (or a link in ``assets/``) would
    have them read, and freezing bake into the output, any file on this machine.
    """
    folder = Path(export_dir)
    root = folder.resolve()
    for asset in asset_files(meta_graph_def):
        name = asset.filename
        path = Path(name)
        target = (folder / "assets" / path).resolve()
        if path.is_absolute() or ".." in path.parts or not target.is_relative_to(root):
            why = ("is an absolute path" if path.is_absolute() else "climbs out with '..'" if ".." in path.parts
                   else f"resolves to {target}, outside the model's folder (a symlink?)")
            raise UnsafeGraphError(f"asset '{name}' {why}", where=str(export_dir),
                                   details=[f"tensor {asset.tensor_info.name} would be fed this path"],
                                   hint="a model's assets must be files inside its assets/ folder; copy the file "
                                        "there and export the model again")


# --- a SavedModel TF's loader will load and run (serve, bench) ------------------------------------------------


def read_meta_graph(export_dir: str | Path, tags: Sequence[str]) -> Any:
    """The meta graph tagged exactly ``tags`` (as TF's loader picks it); :class:`InputError` if none."""
    from graphopt.loaders.saved_model_proto import read_saved_model

    metas = list(read_saved_model(export_dir).meta_graphs)
    meta = next((m for m in metas if set(m.meta_info_def.tags) == set(tags)), None)
    if meta is None:
        listing = ", ".join(str(sorted(m.meta_info_def.tags)) for m in metas)
        raise InputError(f"no meta graph with tags {sorted(tags)}", where=str(export_dir),
                         hint=f"tag sets in the model: {listing}")
    return meta


def saved_model_findings(meta_graph_def: Any) -> list[Finding]:
    """Everything TF's SavedModel loader and then requests would run: the restore and init ops (judged for
    loading) and every signature's outputs (judged as a graph that is run)."""
    findings = load_time_findings(meta_graph_def, freeze=False)
    outputs = [t.name for key, sig in meta_graph_def.signature_def.items() if key != INIT_OP_SIGNATURE_KEY
               for t in sig.outputs.values() if t.name]
    if outputs:
        walker = _Walker(meta_graph_def.graph_def.library, RUN)
        walker.closure(meta_graph_def.graph_def, outputs)
        findings += walker.findings
    return _unique(findings)


def check_saved_model(export_dir: str | Path, *, tags: Sequence[str] = ("serve",), allow: Allow = None,
                      action: str = "serve it", meta: Any = None) -> list[Finding]:
    """Refuse a SavedModel TF's loader would load and run (``graphopt serve``, ``bench``) unless everything
    that runs is allowed: assets inside the folder, :func:`saved_model_findings` allowed. Returns the
    findings that were allowed."""
    meta = meta if meta is not None else read_meta_graph(export_dir, tags)
    check_assets(export_dir, meta)
    return enforce(saved_model_findings(meta), allow=allow, action=action, source=str(export_dir))
