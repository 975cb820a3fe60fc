"""The difference between two graphs: nodes added, removed and changed, op and size deltas.

Nodes are matched by name first. Where names changed (``obfuscate_names``, a
re-export that renumbered scopes), the nodes left over on each side are matched
by structure: same op, same inputs (after translating the inputs already
matched) and, for constants, the same content hash. Matching walks graph A in
topological order so a renamed chain is matched link by link in one pass; TF1
loop back edges are visited last instead of breaking the walk.

:func:`diff_models` returns a :class:`GraphDiff`; ``to_dict()`` is the stable
JSON of ``graphopt diff --json`` (``schema_version`` 1, documented in
docs/guide/analysis.md). Nothing here imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from graphopt.analysis.stats import NodeRow, constant_info, gc_paused, node_table, op_histogram
from graphopt.graph.encoding import encoded_size
from graphopt.graph.names import parse_input, source_of
from graphopt.hookspecs import hookimpl
from graphopt.model import Model

DIFF_SCHEMA_VERSION = 1
_ATTR_TEXT_LIMIT = 120
_MAX_ROUNDS = 4


@dataclass
class NodeChange:
    """A node present in both graphs that differs: op, inputs, device or attributes (by key)."""

    name: str
    op: str
    renamed_from: str | None = None
    op_before: str | None = None
    inputs_before: list[str] | None = None
    inputs_after: list[str] | None = None
    device: tuple[str, str] | None = None
    attrs: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op": self.op,
            "renamed_from": self.renamed_from,
            "op_before": self.op_before,
            "inputs": (None if self.inputs_before is None
                       else {"before": self.inputs_before, "after": self.inputs_after}),
            "device": None if self.device is None else {"before": self.device[0], "after": self.device[1]},
            "attrs": {k: {"before": b, "after": a} for k, (b, a) in sorted(self.attrs.items())},
        }


@dataclass
class Neighbourhood:
    """A connected group of changes, with the unchanged nodes around it (names in graph B, else A)."""

    removed: list[str]
    added: list[str]
    changed: list[str]
    boundary: list[str]

    @property
    def size(self) -> int:
        return len(self.removed) + len(self.added) + len(self.changed)

    def to_dict(self) -> dict[str, Any]:
        return {"removed": self.removed, "added": self.added, "changed": self.changed, "boundary": self.boundary}


@dataclass
class GraphSide:
    """One side of a diff: main-graph nodes and ops, each function's ops, and what its loader pruned.

    ``load_pruned`` lists the nodes of the stored graph that loading dropped (unreachable from the
    signature's outputs; ``model.metadata["load_pruned"]``, set by the loaders that prune).
    """

    label: str
    nodes: int
    size_bytes: int
    ops: dict[str, int]
    function_ops: dict[str, dict[str, int]] = field(default_factory=dict)
    load_pruned: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total_ops(self) -> dict[str, int]:
        """Ops of the main graph and every function together."""
        total: Counter = Counter(self.ops)
        for ops in self.function_ops.values():
            total.update(ops)
        return dict(sorted(total.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def total_nodes(self) -> int:
        return self.nodes + sum(sum(ops.values()) for ops in self.function_ops.values())

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "nodes": self.nodes, "size_bytes": self.size_bytes, "ops": dict(self.ops),
                "function_ops": {k: dict(v) for k, v in self.function_ops.items()},
                "total": {"nodes": self.total_nodes, "ops": self.total_ops},
                "load_pruned": [{"name": n, "op": op} for n, op in self.load_pruned]}


@dataclass
class FunctionChange:
    """A library function added, removed or changed: its body's nodes and ops before and after."""

    name: str
    status: str  # "added" | "removed" | "changed"
    nodes_before: int
    nodes_after: int
    ops_delta: dict[str, int]
    added: list[str] = field(default_factory=list)  # body nodes, by name
    removed: list[str] = field(default_factory=list)
    renamed_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "renamed_from": self.renamed_from,
                "nodes_before": self.nodes_before,
                "nodes_after": self.nodes_after, "ops_delta": dict(self.ops_delta), "added": list(self.added),
                "removed": list(self.removed)}


@dataclass
class GraphDiff:
    """What changed from graph A to graph B."""

    a: GraphSide
    b: GraphSide
    added: list[tuple[str, str]]  # (name, op) in B
    removed: list[tuple[str, str]]  # (name, op) in A
    changed: list[NodeChange]
    unchanged: int
    neighbourhoods: list[Neighbourhood]
    functions: dict[str, list[str]]
    function_changes: list[FunctionChange] = field(default_factory=list)
    # Nodes one side holds and the other side's *loader* dropped (its stored graph still has them): the
    # loaded graphs differ there, the stored ones do not, so they are not counted as removed or added.
    pruned_by_loading: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: {"a": [], "b": []})

    @property
    def renamed(self) -> int:
        return sum(1 for c in self.changed if c.renamed_from)

    @property
    def ops_delta(self) -> dict[str, int]:
        ops = sorted(set(self.a.ops) | set(self.b.ops))
        delta = {op: self.b.ops.get(op, 0) - self.a.ops.get(op, 0) for op in ops}
        return {op: d for op, d in delta.items() if d}

    @property
    def total_ops_delta(self) -> dict[str, int]:
        """Op deltas over the main graph and every function together."""
        a, b = self.a.total_ops, self.b.total_ops
        delta = {op: b.get(op, 0) - a.get(op, 0) for op in sorted(set(a) | set(b))}
        return {op: d for op, d in delta.items() if d}

    @property
    def size_delta(self) -> int:
        return self.b.size_bytes - self.a.size_bytes

    @property
    def identical(self) -> bool:
        # Functions renamed with the same content (a loader's numbering) are no difference.
        return not (self.added or self.removed or self.changed
                    or any(self.functions.get(k) for k in ("added", "removed", "changed")))

    def summary(self) -> str:
        """One line: ``-12 nodes removed, +0 added, 4 changed (1 renamed); 3.2 MB -> 1.6 MB (-50.0%)``."""
        pct = f" ({100.0 * self.size_delta / self.a.size_bytes:+.1f}%)" if self.a.size_bytes else ""
        return (f"{len(self.removed)} removed, {len(self.added)} added, {len(self.changed)} changed"
                f" ({self.renamed} renamed), {self.unchanged} unchanged; nodes {self.a.nodes} -> {self.b.nodes};"
                f" size {self.a.size_bytes} -> {self.b.size_bytes} bytes{pct}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": DIFF_SCHEMA_VERSION,
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "summary": {
                "added": len(self.added), "removed": len(self.removed), "changed": len(self.changed),
                "renamed": self.renamed, "unchanged": self.unchanged, "nodes_delta": self.b.nodes - self.a.nodes,
                "size_delta": self.size_delta, "identical": self.identical,
                "total_nodes_delta": self.b.total_nodes - self.a.total_nodes,
                "pruned_by_loading": {k: len(v) for k, v in self.pruned_by_loading.items()},
            },
            "ops_delta": self.ops_delta,
            "total_ops_delta": self.total_ops_delta,
            "added": [{"name": n, "op": op} for n, op in self.added],
            "removed": [{"name": n, "op": op} for n, op in self.removed],
            "changed": [c.to_dict() for c in self.changed],
            "functions": {k: list(v) for k, v in self.functions.items()},
            "function_changes": [c.to_dict() for c in self.function_changes],
            "pruned_by_loading": {k: [{"name": n, "op": op} for n, op in v] for k, v in self.pruned_by_loading.items()},
            "neighbourhoods": [n.to_dict() for n in self.neighbourhoods],
        }


# --- helpers ---------------------------------------------------------------------------


def _graph_def(x: Any) -> Any:
    return x.graph_def if isinstance(x, Model) else x


def _label(x: Any, default: str) -> str:
    return x.source if isinstance(x, Model) and x.source != "<memory>" else default


def _content_hash(node: Any) -> str:
    # Hash every attribute except colocation hints, so equal constants match even if one lost its _class.
    h = hashlib.blake2b(digest_size=12)
    for key in sorted(node.attr):
        if key == "_class":
            continue
        h.update(key.encode())
        h.update(node.attr[key].SerializeToString(deterministic=True))
    return h.hexdigest()


def _canonical(text: str, mapping: dict[str, str] | None = None) -> str:
    """An input reference with ``:0`` dropped (``x:0`` and ``x`` are one tensor), its node renamed by ``mapping``."""
    name, port, control = parse_input(text)
    if mapping is not None:
        name = mapping.get(name, name)
    if control:
        return "^" + name
    return name if port == 0 else f"{name}:{port}"


def _struct_key(node: Any, mapping: dict[str, str] | None, unknown: set[str] | None = None) -> tuple:
    """Op, inputs (renamed by ``mapping``; names in ``unknown`` become ``?``) and, for sources, attributes."""
    data: list[str] = []
    ctrl: list[str] = []
    for text in node.input:
        t = _canonical(text, mapping)
        if unknown is not None:
            name = source_of(t)
            if name in unknown:
                t = ("^?" if t.startswith("^") else "?")
        (ctrl if t.startswith("^") else data).append(t)
    # Source nodes (Const, Placeholder) have no inputs to tell them apart: their attributes do.
    content = _content_hash(node) if not data else None
    return node.op, tuple(data), tuple(sorted(ctrl)), content


def _topological(rows: list[NodeRow]) -> list[str]:
    """Names of ``rows`` with their inputs among ``rows`` first; nodes on cycles (TF1 loops) follow in graph order."""
    names = {r[0] for r in rows}
    indeg: dict[str, int] = {}
    consumers: dict[str, list[str]] = {}
    for name, _, _, inputs in rows:
        srcs = {source_of(t) for t in inputs}
        if not srcs <= names:
            srcs &= names
        indeg[name] = len(srcs)
        for src in srcs:
            consumers.setdefault(src, []).append(name)
    queue = deque(r[0] for r in rows if indeg[r[0]] == 0)
    order: list[str] = []
    while queue:
        name = queue.popleft()
        order.append(name)
        for c in consumers.get(name, ()):
            indeg[c] -= 1
            if indeg[c] == 0:
                queue.append(c)
    placed = set(order)
    return order + [r[0] for r in rows if r[0] not in placed]


def _attr_text(value: Any) -> str:
    kind = value.WhichOneof("value")
    if kind == "tensor":
        fake = type("N", (), {"name": "", "attr": {"value": value}})()
        info = constant_info(fake)
        assert info is not None  # constant_info reads any node with a tensor 'value'
        digest = hashlib.blake2b(value.SerializeToString(deterministic=True), digest_size=6).hexdigest()
        shape = "?" if info.shape is None else ",".join(map(str, info.shape))
        return f"{info.dtype}[{shape}] {info.bytes} B #{digest}"
    text = " ".join(str(value).split())
    return text if len(text) <= _ATTR_TEXT_LIMIT else text[: _ATTR_TEXT_LIMIT - 3] + "..."


def _same_attr(va: Any, vb: Any, fmap: dict[str, str]) -> bool:
    """Equal attribute values, a function of A's counting as equal to the B function it was matched with."""
    if va == vb:
        return True
    if va is None or vb is None or not fmap:
        return False
    kind = va.WhichOneof("value")
    if kind == "func" or (kind == "list" and va.list.func):
        va = _translated(va, fmap)
    return va == vb


def _translated(value: Any, fmap: dict[str, str]) -> Any:
    out = type(value)()
    out.CopyFrom(value)
    if out.HasField("func"):
        out.func.name = fmap.get(out.func.name, out.func.name)
    for f in out.list.func:
        f.name = fmap.get(f.name, f.name)
    return out


def _compare(a: Any, b: Any, mapping: dict[str, str], fmap: dict[str, str] | None = None) -> NodeChange | None:
    if a == b and a.name == b.name:
        return None
    fmap = fmap or {}
    change = NodeChange(name=b.name, op=b.op, renamed_from=a.name if a.name != b.name else None)
    if fmap.get(a.op, a.op) != b.op:
        change.op_before = a.op
    after = [_canonical(t) for t in b.input]
    if [_canonical(t, mapping) for t in a.input] != after:
        change.inputs_before, change.inputs_after = [_canonical(t) for t in a.input], after
    if a.device != b.device:
        change.device = (a.device, b.device)
    for key in sorted(set(a.attr) | set(b.attr)):
        va = a.attr[key] if key in a.attr else None
        vb = b.attr[key] if key in b.attr else None
        if not _same_attr(va, vb, fmap):
            change.attrs[key] = (None if va is None else _attr_text(va), None if vb is None else _attr_text(vb))
    if (change.renamed_from is None and change.op_before is None and change.inputs_before is None
            and change.device is None and not change.attrs):
        return None
    return change


def _neighbourhoods(a_rows: list[NodeRow], b_rows: list[NodeRow], a2b: dict[str, str],
                    removed: list[str], added: list[str], changed: list[str]) -> list[Neighbourhood]:
    # One namespace: graph B's names for matched and added nodes, ("a", name) for removed ones.
    kind: dict[tuple[str, str], str] = {}
    for n in removed:
        kind[("a", n)] = "removed"
    for n in added:
        kind[("b", n)] = "added"
    for n in changed:
        kind[("b", n)] = "changed"
    parent = {k: k for k in kind}

    def find(k):
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    links: list[tuple[tuple[str, str], tuple[str, str]]] = []

    def a_id(name: str) -> tuple[str, str]:
        return ("b", a2b[name]) if name in a2b else ("a", name)

    removed_set = set(removed)
    for name, _, _, inputs in a_rows:  # edges of A that touch a removed node, either end
        for t in inputs:
            src = source_of(t)
            if src in removed_set or name in removed_set:
                links.append((a_id(src), a_id(name)))
    touched = set(added) | set(changed)
    for name, _, _, inputs in b_rows:
        for t in inputs:
            src = source_of(t)
            if src in touched or name in touched:
                links.append((("b", src), ("b", name)))
    boundary: dict[tuple[str, str], set[str]] = {}
    for u, v in links:
        if u in kind and v in kind:
            ru, rv = find(u), find(v)
            if ru != rv:
                parent[ru] = rv
        elif u in kind or v in kind:
            inside, outside = (u, v) if u in kind else (v, u)
            boundary.setdefault(inside, set()).add(outside[1])
    groups: dict[tuple[str, str], Neighbourhood] = {}
    for k, what in kind.items():
        g = groups.setdefault(find(k), Neighbourhood([], [], [], []))
        getattr(g, what).append(k[1])
    for k, names in boundary.items():
        groups[find(k)].boundary.extend(names)
    out = list(groups.values())
    for g in out:
        g.removed.sort(), g.added.sort(), g.changed.sort()
        g.boundary = sorted(set(g.boundary))
    out.sort(key=lambda g: (-g.size, (g.removed + g.added + g.changed)[0]))
    return out


def _match(order: list[str], b_nodes: dict[str, Any], a_nodes: dict[str, Any], a2b: dict[str, str],
           *, relaxed: bool) -> None:
    """Extend ``a2b`` with unmatched nodes of A whose structural key an unmatched node of B shares.

    Strict: inputs must already be matched (A is walked inputs-first, so chains resolve in
    one walk). Relaxed: unmatched inputs read as ``?`` on both sides, and only keys that are
    unique on both sides match, so a guess never pairs the wrong twin.
    """
    matched_b = set(a2b.values())
    unknown_a = {n for n in a_nodes if n not in a2b} if relaxed else None
    unknown_b = {n for n in b_nodes if n not in matched_b} if relaxed else None
    mapping = dict(a2b) if relaxed else a2b  # relaxed keys must not see this round's own matches
    index: dict[tuple, deque[str]] = {}
    for name, node in b_nodes.items():
        if name not in matched_b:
            index.setdefault(_struct_key(node, None, unknown_b), deque()).append(name)
    if relaxed:
        keys = {n: _struct_key(a_nodes[n], mapping, unknown_a) for n in order if n not in a2b}
        counts: dict[tuple, int] = {}
        for k in keys.values():
            counts[k] = counts.get(k, 0) + 1
        for name, k in keys.items():
            cands = index.get(k)
            if counts[k] == 1 and cands is not None and len(cands) == 1:
                a2b[name] = cands[0]
        return
    for name in order:
        if name in a2b:
            continue
        candidates = index.get(_struct_key(a_nodes[name], a2b))
        while candidates:
            cand = candidates.popleft()
            if cand not in matched_b:
                matched_b.add(cand)
                a2b[name] = cand
                break


# --- the diff --------------------------------------------------------------------------


def diff_models(a: Model | Any, b: Model | Any, *, a_label: str | None = None, b_label: str | None = None,
                structural: bool = True) -> GraphDiff:
    """Diff two Models or GraphDefs. ``structural=False`` matches by name only."""
    with gc_paused():
        return _diff(a, b, a_label, b_label, structural)


def _diff(a: Any, b: Any, a_label: str | None, b_label: str | None, structural: bool) -> GraphDiff:
    ga, gb = _graph_def(a), _graph_def(b)
    a_rows, b_rows = node_table(ga.node), node_table(gb.node)
    a_nodes = dict(zip((r[0] for r in a_rows), ga.node))
    b_nodes = dict(zip((r[0] for r in b_rows), gb.node))
    a2b = {n: n for n in a_nodes if n in b_nodes}

    if structural and len(a2b) < min(len(a_nodes), len(b_nodes)):  # something left to match on both sides
        # Only the order among unmatched nodes matters: name-matched inputs are translated already.
        order = _topological([r for r in a_rows if r[0] not in a2b])
        for _ in range(_MAX_ROUNDS):
            # Strict matching resolves chains; relaxed matching cuts into loops, whose nodes then
            # let the next strict walk go on.
            before = len(a2b)
            for relaxed in (False, True):
                if len(a2b) < min(len(a_nodes), len(b_nodes)):
                    _match(order, b_nodes, a_nodes, a2b, relaxed=relaxed)
            if len(a2b) == before:
                break

    fa = {f.signature.name: f for f in ga.library.function}
    fb = {f.signature.name: f for f in gb.library.function}
    fmap = _match_functions(fa, fb)
    matched_b = set(a2b.values())
    removed = [(r[0], r[1]) for r in a_rows if r[0] not in a2b]
    added = [(r[0], r[1]) for r in b_rows if r[0] not in matched_b]
    # What B's loader pruned is still in B's stored graph: not a removal (and likewise for A).
    a_pruned, b_pruned = _load_pruned(a), _load_pruned(b)
    pruned = {"a": [n for n in added if n[0] in {p for p, _ in a_pruned}],
              "b": [n for n in removed if n[0] in {p for p, _ in b_pruned}]}
    if pruned["a"] or pruned["b"]:
        added = [n for n in added if n not in set(pruned["a"])]
        removed = [n for n in removed if n not in set(pruned["b"])]
    changed: list[NodeChange] = []
    for an, bn in a2b.items():
        c = _compare(a_nodes[an], b_nodes[bn], a2b, fmap)
        if c is not None:
            changed.append(c)
    changed.sort(key=lambda c: c.name)

    functions = {
        "added": sorted(set(fb) - set(fmap.values())),
        "removed": sorted(set(fa) - set(fmap)),
        "changed": sorted(fmap[n] for n in fmap if _translated_function(fa[n], fmap) != fb[fmap[n]]),
        "renamed": sorted([n, fmap[n]] for n in fmap if n != fmap[n]),
    }
    hoods = _neighbourhoods(a_rows, b_rows, a2b, [n for n, _ in removed], [n for n, _ in added],
                            [c.name for c in changed])
    return GraphDiff(
        a=GraphSide(a_label or _label(a, "A"), len(a_rows), encoded_size(ga), op_histogram(ga, rows=a_rows),
                    _function_ops(ga), a_pruned),
        b=GraphSide(b_label or _label(b, "B"), len(b_rows), encoded_size(gb), op_histogram(gb, rows=b_rows),
                    _function_ops(gb), b_pruned),
        added=sorted(added), removed=sorted(removed), changed=changed,
        unchanged=len(a2b) - len(changed), neighbourhoods=hoods, functions=functions,
        function_changes=_function_changes(fa, fb, fmap, functions), pruned_by_loading=pruned,
    )


def _function_ops(graph_def: Any) -> dict[str, dict[str, int]]:
    return {f.signature.name: op_histogram(None, rows=node_table(f.node_def))
            for f in sorted(graph_def.library.function, key=lambda f: f.signature.name)}


def _load_pruned(x: Any) -> list[tuple[str, str]]:
    pruned = x.metadata.get("load_pruned") if isinstance(x, Model) else None
    return [(str(n), str(op)) for n, op in pruned or []]


_NUMBERED = re.compile(r"_\d+$")


def _function_key(fdef: Any) -> bytes:
    """A function's content with its own name and the names of the functions it calls left out."""
    copy = type(fdef)()
    copy.CopyFrom(fdef)
    copy.signature.name = ""
    for node in copy.node_def:
        for value in node.attr.values():
            if value.HasField("func"):
                value.func.name = ""
            for f in value.list.func:
                f.name = ""
    return copy.SerializeToString(deterministic=True)


def _translated_function(fdef: Any, fmap: dict[str, str]) -> Any:
    """``fdef`` (of graph A) under its B name, calling B's names of the functions it calls."""
    copy = type(fdef)()
    copy.CopyFrom(fdef)
    copy.signature.name = fmap.get(fdef.signature.name, fdef.signature.name)
    for node in copy.node_def:
        node.op = fmap.get(node.op, node.op)
        for key in list(node.attr):
            value = node.attr[key]
            if value.HasField("func") or value.list.func:
                value.CopyFrom(_translated(value, fmap))
    return copy


def _match_functions(fa: dict[str, Any], fb: dict[str, Any]) -> dict[str, str]:
    """A function name -> B function name: same name; else the same content (a loader's counters number
    frozen functions differently on every load: ``cond_true_frozen_4`` vs ``_298``); else the same name
    up to a trailing number, where that is unique on both sides."""
    fmap = {n: n for n in fa if n in fb}
    for key_of in (_function_key, lambda f: _NUMBERED.sub("", f.signature.name).encode()):
        left_a = [n for n in fa if n not in fmap]
        left_b = [n for n in fb if n not in set(fmap.values())]
        if not left_a or not left_b:
            break
        keys_a: dict[bytes, list[str]] = {}
        keys_b: dict[bytes, list[str]] = {}
        for n in left_a:
            keys_a.setdefault(key_of(fa[n]), []).append(n)
        for n in left_b:
            keys_b.setdefault(key_of(fb[n]), []).append(n)
        for key, names in keys_a.items():
            if len(names) == 1 and len(keys_b.get(key, ())) == 1:
                fmap[names[0]] = keys_b[key][0]
    return fmap


def _function_changes(fa: dict[str, Any], fb: dict[str, Any], fmap: dict[str, str],
                      functions: dict[str, list[str]]) -> list[FunctionChange]:
    """Per added, removed or changed function: nodes and ops of its body before and after, nodes by name."""
    out = []
    back = {b: a for a, b in fmap.items()}
    for status in ("removed", "added", "changed"):
        for name in functions[status]:
            a_name = name if status == "removed" else back.get(name)
            before = list(fa[a_name].node_def) if a_name in fa else []
            after = list(fb[name].node_def) if status != "removed" and name in fb else []
            ops_a = Counter(n.op for n in before)
            ops_b = Counter(n.op for n in after)
            delta = {op: ops_b[op] - ops_a[op] for op in sorted(set(ops_a) | set(ops_b)) if ops_b[op] != ops_a[op]}
            names_a, names_b = {n.name for n in before}, {n.name for n in after}
            out.append(FunctionChange(name, status, len(before), len(after), delta, sorted(names_b - names_a),
                                      sorted(names_a - names_b),
                                      renamed_from=a_name if status == "changed" and a_name != name else None))
    return out



# --- what single passes changed, during a pipeline run ---------------------------------------


class PassDiffs:
    """A plugin that diffs the graph before and after the chosen passes of a pipeline run.

    ``passes`` names passes (``["fold_all_batch_norms"]``) or is ``["all"]``. Register it on a
    host (``host.pm.register(PassDiffs([...]))``); after the run, :attr:`diffs` holds one
    ``(pass name, iteration, GraphDiff)`` per run of a chosen pass that succeeded (a pass that
    changed nothing gets an identical diff). ``graphopt optimize --diff PASS|all`` uses it.
    Each diff is computed right after its pass, so no graph is kept beyond the run.
    """

    def __init__(self, passes: list[str] | tuple[str, ...]) -> None:
        self.passes = set(passes)
        self.diffs: list[tuple[str, int | None, GraphDiff]] = []

    def wants(self, name: str) -> bool:
        return "all" in self.passes or name in self.passes

    @hookimpl
    def graphopt_pipeline_start(self, pipeline, model, context) -> None:
        self.diffs = []

    @hookimpl
    def graphopt_pass_finish(self, pass_, before, result, context) -> None:
        if not self.wants(pass_.name):
            return
        record = context.records[-1] if context.records else None
        after = result.model if result.modified else before
        diff = diff_models(before, after, a_label=f"before {pass_.name}", b_label=f"after {pass_.name}")
        self.diffs.append((pass_.name, getattr(record, "iteration", None), diff))

    def to_list(self) -> list[dict[str, Any]]:
        """The JSON ``--report`` keeps under ``"diffs"``."""
        return [{"pass": name, "iteration": iteration, "diff": diff.to_dict()} for name, iteration, diff in self.diffs]
