"""Graph analysis: a GraphDef as networkx graphs, and the statistics users read before and after passes.

:func:`to_networkx` turns a ``GraphDef`` into a :class:`GraphModel`: the main
graph and every function of the library, each its own ``networkx.DiGraph``.
Nodes are keyed by node name and carry ``op`` and ``device``; an edge
``u -> v`` carries ``data`` (a list of ``(output_port, input_index)`` pairs,
since one producer may feed several inputs of one consumer) and ``control``
(true when ``v`` has a ``^u`` control input). TF1 loops make the graph cyclic
(``NextIteration`` feeds ``Merge``); nothing here assumes a DAG.

:func:`analyze` returns :class:`GraphStats`, plain data with ``to_dict()`` for
JSON (schema in docs/analysis.md). It is a read-only view: no TensorFlow call
runs the graph, and constants are sized from their protos without decoding.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from graphopt.model import Model

if TYPE_CHECKING:  # pragma: no cover
    import networkx as nx

STATS_SCHEMA_VERSION = 1
LARGEST_CONSTANTS = 10
# Ops whose output a frozen graph treats as learned weights when counting parameters.
_FLOAT_DTYPES = {"float16", "bfloat16", "float32", "float64"}
MISSING_OP = "<missing>"  # a node some input names but the graph does not define


def parse_input(text: str) -> tuple[str, int | str, bool]:
    """``"a:1"`` -> ``("a", 1, False)``; ``"^a"`` -> ``("a", -1, True)``; function refs keep ``"out:0"`` ports."""
    if text.startswith("^"):
        return text[1:], -1, True
    head, sep, port = text.rpartition(":")
    if not sep:
        return text, 0, False
    if port.isdigit():
        # "node:out_arg:2" inside a function body: the node is before the first colon.
        node, sep2, out_arg = head.partition(":")
        if sep2:
            return node, f"{out_arg}:{port}", False
        return head, int(port), False
    return text, 0, False


@dataclass
class GraphModel:
    """A GraphDef as networkx graphs: ``main`` and one graph per library function."""

    main: "nx.DiGraph"
    functions: dict[str, "nx.DiGraph"] = field(default_factory=dict)


def _add_node_edges(g: "nx.DiGraph", name: str, inputs: Iterable[str], known: set[str] | None = None) -> None:
    data_index = 0
    for text in inputs:
        src, port, control = parse_input(text)
        if src not in g:
            g.add_node(src, op=MISSING_OP, device="")
        edge = g.get_edge_data(src, name)
        if edge is None:
            g.add_edge(src, name, data=[], control=False)
            edge = g[src][name]
        if control:
            edge["control"] = True
        else:
            edge["data"].append((port, data_index))
            data_index += 1


def graph_of_nodes(nodes: Iterable[Any], *, args: Iterable[str] = (), rets: dict[str, str] | None = None) -> "nx.DiGraph":
    """One ``DiGraph`` from NodeDefs; ``args``/``rets`` add a function's ``_Arg``/``_Retval`` nodes."""
    import networkx as nx

    g = nx.DiGraph()
    nodes = list(nodes)
    for a in args:
        g.add_node(a, op="_Arg", device="")
    for node in nodes:
        # A node may have been added as <missing> by an earlier consumer: set its real attributes.
        g.add_node(node.name, op=node.op, device=node.device)
    for node in nodes:
        _add_node_edges(g, node.name, node.input)
    for key, ref in (rets or {}).items():
        ret = f"ret:{key}"  # ':' cannot appear in a node name, so this never clashes
        g.add_node(ret, op="_Retval", device="")
        _add_node_edges(g, ret, [ref])
    return g


def to_networkx(graph_def: Any, *, functions: bool = True) -> GraphModel:
    """The graph model of ``graph_def``: main graph plus each library function as its own subgraph."""
    main = graph_of_nodes(graph_def.node)
    fns: dict[str, Any] = {}
    if functions:
        for fdef in graph_def.library.function:
            args = [a.name for a in fdef.signature.input_arg]
            fns[fdef.signature.name] = graph_of_nodes(fdef.node_def, args=args, rets=dict(fdef.ret))
    return GraphModel(main, fns)


def data_edges(g: "nx.DiGraph") -> int:
    return sum(len(d["data"]) for _, _, d in g.edges(data=True))


def control_edges(g: "nx.DiGraph") -> int:
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
    elif t.tensor_content:
        nbytes = len(t.tensor_content)
    else:
        nbytes = elements * itemsize
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
    signature: dict[str, Any] | None = None
    source: str | None = None
    format: str | None = None

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
            "largest_constants": [c.to_dict() for c in self.largest_constants],
        }


def op_histogram(graph_def: Any) -> dict[str, int]:
    """Op -> count, most frequent first (ties by name)."""
    counts = Counter(node.op for node in graph_def.node)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def infer_io(graph_def: Any) -> tuple[list[str], list[str]]:
    """Inputs (Placeholders) and outputs (nodes nothing reads, NoOps and Asserts aside) of a bare GraphDef."""
    consumed: set[str] = set()
    for node in graph_def.node:
        for text in node.input:
            consumed.add(parse_input(text)[0])
    inputs = [n.name for n in graph_def.node if n.op in ("Placeholder", "PlaceholderV2")]
    outputs = [n.name for n in graph_def.node
               if n.name not in consumed and n.op not in ("NoOp", "Assert", "Placeholder", "PlaceholderV2")]
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
    indeg = {n: d for n, d in g.in_degree()}
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


def analyze(source: Model | Any, *, graph: GraphModel | None = None, largest: int = LARGEST_CONSTANTS) -> GraphStats:
    """Statistics of a :class:`Model` or a bare ``GraphDef`` (inputs/outputs then inferred)."""
    model = source if isinstance(source, Model) else None
    graph_def = model.graph_def if model else source
    gm = graph or to_networkx(graph_def)
    g = gm.main

    if model is not None:
        sig = model.signature
        inputs = [{"key": k, **v.to_dict()} for k, v in sig.inputs.items()]
        outputs = [{"key": k, **v.to_dict()} for k, v in sig.outputs.items()]
        roots = set(sig.output_nodes) | {parse_input(n)[0] for n in model.init_ops}
    else:
        in_names, out_names = infer_io(graph_def)
        inputs = [{"key": None, "name": f"{n}:0", "dtype": None, "shape": None} for n in in_names]
        outputs = [{"key": None, "name": f"{n}:0", "dtype": None, "shape": None} for n in out_names]
        roots = set(out_names)

    by_dtype: Counter = Counter()
    consts: list[ConstantInfo] = []
    params = 0
    for node in graph_def.node:
        if node.op != "Const":
            continue
        info = constant_info(node)
        if info is None:
            continue
        consts.append(info)
        by_dtype[info.dtype] += info.bytes
        if info.dtype in _FLOAT_DTYPES:
            params += info.elements
    consts_sorted = sorted(consts, key=lambda c: (-c.bytes, c.name))

    reach = reachable_to(g, roots)
    unreachable = sorted(n for n, op in g.nodes(data="op") if n not in reach and op != MISSING_OP)
    longest = longest_path_length(g)
    return GraphStats(
        nodes=len(graph_def.node),
        ops=op_histogram(graph_def),
        size_bytes=graph_def.ByteSize(),
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
        signature=model.signature.to_dict() if model else None,
        source=model.source if model else None,
        format=model.format if model else None,
    )
