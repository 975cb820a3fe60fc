"""Graph analysis: a GraphDef as networkx graphs, and the statistics users read before and after passes.

:func:`to_networkx` turns a ``GraphDef`` into a :class:`GraphModel`: the main
graph and every function of the library, each its own ``networkx.DiGraph``.
Nodes are keyed by node name and carry ``op`` and ``device``; an edge
``u -> v`` carries ``data`` (a list of ``(output_port, input_index)`` pairs,
since one producer may feed several inputs of one consumer) and ``control``
(true when ``v`` has a ``^u`` control input). TF1 loops make the graph cyclic
(``NextIteration`` feeds ``Merge``); nothing here assumes a DAG.

:func:`analyze` returns :class:`GraphStats`, plain data with ``to_dict()`` for
JSON (schema in docs/guide/analysis.md). It is a read-only view: no TensorFlow call
runs the graph, and constants are sized from their protos without decoding.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from graphopt.graph.encoding import encoded_size
from graphopt.graph.names import parse_input, source_of
from graphopt.hookspecs import hookimpl
from graphopt.model import Model
from graphopt.security.scan import scan as scan_unsafe

if TYPE_CHECKING:  # pragma: no cover
    import networkx as nx

STATS_SCHEMA_VERSION = 1
LARGEST_CONSTANTS = 10
# Ops whose output a frozen graph treats as learned weights when counting parameters.
_FLOAT_DTYPES = {"float16", "bfloat16", "float32", "float64"}
MISSING_OP = "<missing>"  # a node some input names but the graph does not define


@dataclass
class GraphModel:
    """A GraphDef as networkx graphs: ``main`` and one graph per library function."""

    main: "nx.DiGraph"
    functions: dict[str, "nx.DiGraph"] = field(default_factory=dict)


@contextlib.contextmanager
def gc_paused():
    """Pause the cyclic garbage collector while building big graphs.

    Building a 100,000-node graph allocates millions of small dicts and tuples, none
    of them garbage; left on, the collector rescans them again and again and takes
    more time than the work itself (half the run on the synthetic benchmark).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


NodeRow = tuple  # (name, op, device, inputs): a NodeDef's fields read once (proto access dominates big graphs)


def node_table(nodes: Iterable[Any]) -> list[NodeRow]:
    """Each NodeDef's name, op, device and inputs, read from the protos once."""
    return [(n.name, n.op, n.device, tuple(n.input)) for n in nodes]


def graph_of_rows(rows: list[NodeRow], *, args: Iterable[str] = (), rets: dict[str, str] | None = None
                  ) -> "nx.DiGraph":
    """One ``DiGraph`` from node rows; ``args``/``rets`` add a function's ``_Arg``/``_Retval`` nodes.

    ``g.graph`` holds ``data_edges`` and ``control_edges`` counts.
    """
    import networkx as nx

    rows = list(rows)
    for key, ref in (rets or {}).items():
        rows.append((f"ret:{key}", "_Retval", "", (ref,)))  # ':' cannot be in a node name: never clashes
    g = nx.DiGraph()
    g.add_nodes_from((a, {"op": "_Arg", "device": ""}) for a in args)
    g.add_nodes_from((name, {"op": op, "device": device}) for name, op, device, _ in rows)
    edges: dict[tuple[str, str], dict[str, Any]] = {}
    n_data = n_control = 0
    for name, _, _, inputs in rows:
        index = 0
        for text in inputs:
            src, port, control = parse_input(text) if ":" in text or text[:1] == "^" else (text, 0, False)
            edge = edges.get((src, name))
            if edge is None:
                edge = edges[(src, name)] = {"data": [], "control": False}
            if control:
                if not edge["control"]:
                    n_control += 1
                edge["control"] = True
            else:
                edge["data"].append((port, index))
                index += 1
                n_data += 1
    missing = {u for u, _ in edges} - set(g)
    g.add_nodes_from((m, {"op": MISSING_OP, "device": ""}) for m in missing)
    g.add_edges_from((u, v, d) for (u, v), d in edges.items())
    g.graph["data_edges"], g.graph["control_edges"] = n_data, n_control
    return g


def graph_of_nodes(nodes: Iterable[Any], *, args: Iterable[str] = (), rets: dict[str, str] | None = None
                   ) -> "nx.DiGraph":
    """One ``DiGraph`` from NodeDefs (see :func:`graph_of_rows`)."""
    return graph_of_rows(node_table(nodes), args=args, rets=rets)


def to_networkx(graph_def: Any, *, functions: bool = True, rows: list[NodeRow] | None = None) -> GraphModel:
    """The graph model of ``graph_def``: main graph plus each library function as its own subgraph."""
    main = graph_of_rows(rows if rows is not None else node_table(graph_def.node))
    fns: dict[str, Any] = {}
    if functions:
        for fdef in graph_def.library.function:
            args = [a.name for a in fdef.signature.input_arg]
            fns[fdef.signature.name] = graph_of_nodes(fdef.node_def, args=args, rets=dict(fdef.ret))
    return GraphModel(main, fns)


def data_edges(g: "nx.DiGraph") -> int:
    """Data edges of ``g``, one per (output port, input index) pair."""
    if "data_edges" in g.graph:
        return g.graph["data_edges"]
    return sum(len(d["data"]) for _, _, d in g.edges(data=True))


def control_edges(g: "nx.DiGraph") -> int:
    if "control_edges" in g.graph:
        return g.graph["control_edges"]
    return sum(1 for _, _, d in g.edges(data=True) if d["control"])


# --- constants ------------------------------------------------------------------------

_DTYPE_CACHE: dict[int, tuple[str, int]] = {}


def _dtype_info(enum: int) -> tuple[str, int]:
    """(name, itemsize) of a DataType enum; itemsize 0 where it has none (string, resource, variant)."""
    if enum not in _DTYPE_CACHE:
        import tensorflow as tf

        try:
            dt = tf.dtypes.as_dtype(enum)
            name = dt.name
            size = 0 if dt in (tf.string, tf.resource, tf.variant) else dt.size
        except (TypeError, ValueError):
            name, size = f"dtype_{enum}", 0
        _DTYPE_CACHE[enum] = (name, size)
    return _DTYPE_CACHE[enum]


@dataclass(frozen=True)
class ConstantInfo:
    """One ``Const`` node: dtype, static shape, element count and bytes when materialised."""

    name: str
    dtype: str
    shape: tuple[int, ...] | None
    elements: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": None if self.shape is None else list(self.shape),
                "elements": self.elements, "bytes": self.bytes}


def constant_info(node: Any) -> ConstantInfo | None:
    """Size a Const node from its TensorProto without decoding the values (None if it has no value)."""
    if "value" not in node.attr:
        return None
    t = node.attr["value"].tensor
    dtype, itemsize = _dtype_info(t.dtype)
    shape = None if t.tensor_shape.unknown_rank else tuple(d.size for d in t.tensor_shape.dim)
    elements = 1
    for d in shape or ():
        elements *= max(d, 0)
    if dtype == "string":
        # Materialised strings are their bytes; a single string_val is broadcast to the shape.
        vals = t.string_val
        nbytes = sum(len(s) for s in vals) * (elements if len(vals) == 1 and elements > 1 else 1)
    elif itemsize or not t.tensor_content:
        # From the shape, not len(tensor_content): reading that field copies the whole weight.
        nbytes = elements * itemsize
    else:
        nbytes = len(t.tensor_content)
    return ConstantInfo(node.name, dtype, shape, elements, nbytes)


# --- statistics -----------------------------------------------------------------------


@dataclass
class GraphStats:
    """What :func:`analyze` found. ``to_dict()`` is the JSON of ``graphopt inspect --json``.

    ``unreachable`` lists nodes no output (nor init op) depends on through data
    or control edges; ``longest_path`` counts edges on the longest chain and is
    ``None`` when the graph has cycles (TF1 loops).
    """

    nodes: int
    ops: dict[str, int]
    size_bytes: int
    const_bytes: int
    const_bytes_by_dtype: dict[str, int]
    const_count: int
    parameter_count: int
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    data_edges: int
    control_edges: int
    unreachable: list[str]
    cyclic: bool
    longest_path: int | None
    functions: dict[str, int]
    largest_constants: list[ConstantInfo]
    # Ops inside each library function, and nodes/ops of the main graph and every function together.
    function_ops: dict[str, dict[str, int]] = field(default_factory=dict)
    total_nodes: int = 0
    total_ops: dict[str, int] = field(default_factory=dict)
    signature: dict[str, Any] | None = None
    source: str | None = None
    format: str | None = None
    # ops not on the allowlist (graphopt.security.scan.scan): {node, op, reason, function, nested}
    unsafe_ops: list[dict[str, Any]] = field(default_factory=list)

    @property
    def num_functions(self) -> int:
        return len(self.functions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": STATS_SCHEMA_VERSION,
            "source": self.source,
            "format": self.format,
            "signature": self.signature,
            "nodes": self.nodes,
            "ops": dict(self.ops),
            "size_bytes": self.size_bytes,
            "const_bytes": self.const_bytes,
            "const_bytes_by_dtype": dict(self.const_bytes_by_dtype),
            "const_count": self.const_count,
            "parameter_count": self.parameter_count,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "edges": {"data": self.data_edges, "control": self.control_edges},
            "unreachable": list(self.unreachable),
            "cyclic": self.cyclic,
            "longest_path": self.longest_path,
            "num_functions": self.num_functions,
            "functions": dict(self.functions),
            "function_ops": {name: dict(ops) for name, ops in self.function_ops.items()},
            "total": {"nodes": self.total_nodes, "ops": dict(self.total_ops)},
            "largest_constants": [c.to_dict() for c in self.largest_constants],
            "unsafe_ops": [dict(u) for u in self.unsafe_ops],
        }


def op_histogram(graph_def: Any, *, rows: list[NodeRow] | None = None) -> dict[str, int]:
    """Op -> count, most frequent first (ties by name)."""
    counts = Counter(r[1] for r in rows) if rows is not None else Counter(n.op for n in graph_def.node)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def infer_io(graph_def: Any, *, rows: list[NodeRow] | None = None) -> tuple[list[str], list[str]]:
    """Inputs (Placeholders) and outputs (nodes nothing reads, NoOps and Asserts aside) of a bare GraphDef."""
    rows = rows if rows is not None else node_table(graph_def.node)
    consumed = {source_of(t) for r in rows for t in r[3]}
    inputs = [r[0] for r in rows if r[1] in ("Placeholder", "PlaceholderV2")]
    outputs = [r[0] for r in rows
               if r[0] not in consumed and r[1] not in ("NoOp", "Assert", "Placeholder", "PlaceholderV2")]
    return inputs, outputs


def reachable_to(g: "nx.DiGraph", roots: Iterable[str]) -> set[str]:
    """Every node some root depends on (itself included), following edges backwards; cycles are fine."""
    seen = {r for r in roots if r in g}
    queue = deque(seen)
    pred = g._pred  # networkx's adjacency dict: the hot loop of a 100k-node graph, so skip the view layer
    while queue:
        for p in pred[queue.popleft()]:
            if p not in seen:
                seen.add(p)
                queue.append(p)
    return seen


def longest_path_length(g: "nx.DiGraph") -> int | None:
    """Edges on the longest path, or None if ``g`` has a cycle (Kahn's algorithm: one pass, no recursion)."""
    indeg = {n: len(p) for n, p in g._pred.items()}
    depth = dict.fromkeys(g, 0)
    queue = deque(n for n, d in indeg.items() if d == 0)
    done = 0
    succ = g._succ
    while queue:
        n = queue.popleft()
        done += 1
        dn = depth[n] + 1
        for s in succ[n]:
            if dn > depth[s]:
                depth[s] = dn
            indeg[s] -= 1
            if indeg[s] == 0:
                queue.append(s)
    if done != len(indeg):
        return None
    return max(depth.values(), default=0)


def analyze(source: Model | Any, *, graph: GraphModel | None = None, largest: int = LARGEST_CONSTANTS,
            size_bytes: int | None = None) -> GraphStats:
    """Statistics of a :class:`Model` or a bare ``GraphDef`` (inputs/outputs then inferred).

    ``size_bytes`` passes a serialized size already known (the pipeline measures it
    for every pass); otherwise it is summed node by node (:func:`graphopt.graph.encoding.encoded_size`:
    with the upb protobuf runtime ``ByteSize()`` serializes the whole graph).
    """
    with gc_paused():
        return _analyze(source, graph, largest, size_bytes)


def _analyze(source: Any, graph: GraphModel | None, largest: int, size_bytes: int | None) -> GraphStats:
    model = source if isinstance(source, Model) else None
    graph_def = model.graph_def if model else source
    rows = node_table(graph_def.node)
    gm = graph or to_networkx(graph_def, rows=rows)
    g = gm.main

    if model is not None:
        sig = model.signature
        inputs = [{"key": k, **v.to_dict()} for k, v in sig.inputs.items()]
        outputs = [{"key": k, **v.to_dict()} for k, v in sig.outputs.items()]
        roots = set(sig.output_nodes) | {parse_input(n)[0] for n in model.init_ops}
    else:
        in_names, out_names = infer_io(graph_def, rows=rows)
        inputs = [{"key": None, "name": f"{n}:0", "dtype": None, "shape": None} for n in in_names]
        outputs = [{"key": None, "name": f"{n}:0", "dtype": None, "shape": None} for n in out_names]
        roots = set(out_names)

    by_dtype: Counter = Counter()
    consts: list[ConstantInfo] = []
    params = 0
    nodes = graph_def.node
    for i, row in enumerate(rows):
        if row[1] != "Const":
            continue
        info = constant_info(nodes[i])
        if info is None:
            continue
        consts.append(info)
        by_dtype[info.dtype] += info.bytes
        if info.dtype in _FLOAT_DTYPES:
            params += info.elements
    consts_sorted = sorted(consts, key=lambda c: (-c.bytes, c.name))

    reach = reachable_to(g, roots)
    unreachable = sorted(r[0] for r in rows if r[0] not in reach)
    longest = longest_path_length(g)
    ops = op_histogram(graph_def, rows=rows)
    function_ops = {f.signature.name: op_histogram(None, rows=node_table(f.node_def))
                    for f in sorted(graph_def.library.function, key=lambda f: f.signature.name)}
    total: Counter = Counter(ops)
    for fn_ops in function_ops.values():
        total.update(fn_ops)
    return GraphStats(
        nodes=len(rows),
        ops=ops,
        size_bytes=encoded_size(graph_def) if size_bytes is None else size_bytes,
        const_bytes=sum(by_dtype.values()),
        const_bytes_by_dtype=dict(sorted(by_dtype.items(), key=lambda kv: -kv[1])),
        const_count=len(consts),
        parameter_count=params,
        inputs=inputs,
        outputs=outputs,
        data_edges=data_edges(g),
        control_edges=control_edges(g),
        unreachable=unreachable,
        cyclic=longest is None,
        longest_path=longest,
        functions={name: fg.number_of_nodes() for name, fg in sorted(gm.functions.items())},
        largest_constants=consts_sorted[:largest],
        function_ops=function_ops,
        total_nodes=sum(total.values()),
        total_ops=dict(sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))),
        signature=model.signature.to_dict() if model else None,
        source=model.source if model else None,
        format=model.format if model else None,
        unsafe_ops=[f.to_dict() for f in scan_unsafe(graph_def)],
    )


# --- per-pass analysis in a pipeline run -----------------------------------------------


class PassAnalysis:
    """A plugin that runs :func:`analyze` before and after every pass of a pipeline run.

    Register it on a host (``host.pm.register(PassAnalysis())``) and each run's
    ``context.state["analysis"]`` becomes a list, one entry per successful pass,
    of ``{"pass", "iteration", "before", "after"}`` with ``GraphStats.to_dict()``
    values. The graph after one pass is the graph before the next, so each graph
    is analysed once; ``last`` keeps the list of the latest run. Its cost is
    measured in benchmarks/bench_analysis.py.
    """

    def __init__(self) -> None:
        self._cache: tuple[Any, GraphStats] | None = None
        self.last: list[dict[str, Any]] = []
        self.seconds = 0.0  # time spent analysing in the latest run

    def _stats(self, model: Model, size_bytes: int | None) -> GraphStats:
        # The graph after one pass is the one before the next: the same GraphDef object. The cache
        # holds the object itself (not its id, which a freed graph could hand on to a new one).
        if self._cache is None or self._cache[0] is not model.graph_def:
            self._cache = (model.graph_def, analyze(model, size_bytes=size_bytes))
        return self._cache[1]

    @hookimpl
    def graphopt_pipeline_start(self, pipeline, model, context) -> None:
        self._cache = None
        self.seconds = 0.0
        self.last = context.state["analysis"] = []

    @hookimpl
    def graphopt_pass_finish(self, pass_, before, result, context) -> None:
        # The pipeline appended this pass's record (sizes measured) just before this hook.
        t0 = time.perf_counter()
        record = context.records[-1] if context.records else None
        stats_before = self._stats(before, getattr(record, "size_before", None))
        stats_after = (self._stats(result.model, getattr(record, "size_after", None)) if result.modified
                       else stats_before)
        context.state.setdefault("analysis", []).append({
            "pass": pass_.name,
            "iteration": getattr(record, "iteration", None),
            "before": stats_before.to_dict(),
            "after": stats_after.to_dict(),
        })
        self.seconds += time.perf_counter() - t0
