"""Grappler, run offline for a stated target device, so the runtime has nothing left to do.

TensorFlow's runtime optimizer (Grappler) rewrites a graph when a session first
builds an executor, i.e. on the first request. Running it here instead, and
serving with runtime Grappler off (see :mod:`graphopt.runtime.config`), moves
that cost out of the first request at equal latency. Fusions only a oneDNN
build runs (depthwise conv + BiasAdd + activation, Swish) cannot stay in a
portable graph: where such ops remain (:func:`runtime_fusion_candidates`), the
shipped config runs the remapper alone at serving time (``"remap"``).

Every node is placed on the target device first (default ``/device:CPU:0``):
Grappler's remapper only fuses ops it knows run on CPU, so without placement
offline Grappler leaves batch norms as Mul/Add the runtime cannot re-fuse and
the graph runs slower; placed, it builds the same graph the runtime would
(``_FusedConv2D``, ``_FusedDepthwiseConv2dNative``, ``_FusedMatMul``).

``OptimizeGraph`` aborts the whole process (``F tensor.cc ... Type not set``)
on a feed without a dtype, which no ``except`` catches: preconditions are
checked first. Grappler's constant folding also *executes* parts of the graph, so
it runs in a sandboxed child (:mod:`graphopt.security.sandbox`) whose crash or
exhausted limit becomes a :class:`~graphopt.errors.ResourceError`.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from graphopt.errors import GraphoptError, PassError
from graphopt.graph.edit import unused_name
from graphopt.graph.encoding import graph_def_chunks, join, length_delimited
from graphopt.graph.names import node_name
from graphopt.model import Model
from graphopt.passes.base import Option, Pass, PassResult

DEFAULT_DEVICE = "/device:CPU:0"
# Names Grappler's meta optimizer accepts in RewriterConfig.optimizers (MakeNewOptimizer in meta_optimizer.cc);
# it silently skips any other name, so they are checked here.
GRAPPLER_OPTIMIZERS = ("pruning", "function", "constfold", "shape", "remap", "layout", "auto_mixed_precision",
                       "auto_mixed_precision_mkl", "auto_mixed_precision_onednn_bfloat16", "auto_mixed_precision_cpu",
                       "memory", "common_subgraph_elimination", "arithmetic", "autoparallel", "loop", "dependency",
                       "debug_stripper", "scoped_allocator", "pin_to_host")


def check_preconditions(model: Model) -> list[str]:
    """Reasons ``OptimizeGraph`` could abort the process on this model; empty when it is safe to call."""
    problems: list[str] = []
    nodes = {n.name: n for n in model.graph_def.node}
    for key, spec in model.signature.inputs.items():
        node = nodes.get(spec.node)
        if node is None:
            problems.append(f"signature input '{key}' names node '{spec.node}', which is not in the graph")
        elif not spec.dtype or spec.dtype == "invalid":
            problems.append(f"signature input '{key}' has no dtype")
    for key, spec in model.signature.outputs.items():
        if spec.node not in nodes:
            problems.append(f"signature output '{key}' names node '{spec.node}', which is not in the graph")
    for node in model.graph_def.node:
        if node.op in ("Placeholder", "PlaceholderV2", "PlaceholderWithDefault") and (
                "dtype" not in node.attr or node.attr["dtype"].type == 0):
            problems.append(f"placeholder '{node.name}' has no dtype")
    for name in model.init_ops:
        if node_name(name) not in nodes:
            problems.append(f"init op '{name}' is not in the graph")
    return problems


def _meta_graph_shell(model: Model) -> Any:
    """The MetaGraphDef Grappler reads feeds and fetches from, without its graph: signature, init ops as fetches."""
    from tensorflow.core.protobuf import meta_graph_pb2

    meta = meta_graph_pb2.MetaGraphDef()
    meta.signature_def[model.signature.key].CopyFrom(model.signature.to_proto())
    # Fetch nodes are never pruned nor renamed; init ops must survive although no output needs them.
    fetch = dict.fromkeys(model.signature.output_nodes + [node_name(n) for n in model.init_ops])
    meta.collection_def["train_op"].node_list.value.extend(fetch)
    return meta


def build_meta_graph(model: Model, device: str) -> Any:
    """A MetaGraphDef Grappler reads feeds and fetches from: the signature, plus init ops as fetches.

    Holds a copy of the graph; :func:`meta_graph_bytes` / :func:`write_meta_graph` give its
    serialization without one.
    """
    meta = _meta_graph_shell(model)
    meta.graph_def.CopyFrom(model.graph_def)
    if device:
        for node in meta.graph_def.node:
            node.device = device
    return meta


_GRAPH_DEF_FIELD = 2  # MetaGraphDef.graph_def


def _meta_graph_chunks(model: Model, device: str) -> tuple[int, Iterator[bytes]]:
    """Size and pieces of the serialized ``build_meta_graph(model, device)``, one node at a time.

    The graph_def field (tag, length, then the GraphDef written node by node with ``device`` set,
    see :mod:`graphopt.graph.encoding`) followed by the rest of the MetaGraphDef: TensorFlow parses
    exactly the message ``build_meta_graph`` builds, but no second copy of the graph is held.
    """
    graph_size, graph_chunks = graph_def_chunks(model.graph_def, device=device)
    head = length_delimited(_GRAPH_DEF_FIELD, graph_size)
    rest = _meta_graph_shell(model).SerializeToString()
    return len(head) + graph_size + len(rest), itertools.chain([head], graph_chunks, [rest])


def meta_graph_bytes(model: Model, device: str) -> bytearray:
    """``build_meta_graph(model, device).SerializeToString()``, built in one buffer of its final size."""
    return join(*_meta_graph_chunks(model, device))


def write_meta_graph(model: Model, device: str, path: str) -> None:
    """Write ``build_meta_graph(model, device)`` serialized to ``path``, one node at a time."""
    _, chunks = _meta_graph_chunks(model, device)
    with open(path, "wb") as f:
        for chunk in chunks:
            f.write(chunk)


def grappler_config(optimizers: list[str] | None = None) -> Any:
    """The ConfigProto offline Grappler runs with: Grappler's default optimizers (or the ones named)."""
    from tensorflow.core.protobuf import config_pb2

    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.min_graph_nodes = -1  # optimize small graphs too (default skips graphs under 4 nodes)
    if optimizers:
        rewrite.optimizers.extend(optimizers)
    return config


def _optimize_here(config_bytes: bytes, meta_bytes: bytes | bytearray) -> bytes:
    """The optimized GraphDef, serialized, from Grappler in this process.

    Calls the binding ``tf_optimizer.OptimizeGraph`` wraps, which takes and returns serialized
    protos: the wrapper would parse our bytes into a MetaGraphDef only to serialize it again and
    parse its result, three more copies of the graph (~+400 MB on a 100 MB graph).
    """
    from tensorflow.python.grappler import _pywrap_tf_optimizer, cluster, tf_optimizer

    optimize = getattr(_pywrap_tf_optimizer, "TF_OptimizeGraphSerialized", None)
    if optimize is None:  # pragma: no cover - a TF build without the serialized entry point
        from tensorflow.core.protobuf import config_pb2, meta_graph_pb2

        meta = meta_graph_pb2.MetaGraphDef.FromString(bytes(meta_bytes))
        return tf_optimizer.OptimizeGraph(config_pb2.ConfigProto.FromString(config_bytes), meta,
                                          verbose=False).SerializeToString()
    # As OptimizeGraph does: Grappler assumes one cluster alive at a time, and the cluster is shut down at once.
    with tf_optimizer._OPTIMIZE_GRAPH_CLUSTER_LOCK:
        machine = cluster.Cluster()
        try:
            return optimize(machine.tf_cluster, config_bytes, meta_bytes, False, b"graph_to_optimize", False)
        finally:
            machine.Shutdown()


def onednn_enabled() -> bool:
    """Whether this process's TensorFlow runs oneDNN kernels (``TF_ENABLE_ONEDNN_OPTS``, read at import)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def _optimize_in_child(config_bytes: bytes, meta: bytes | bytearray | Callable[[str], None], timeout: float,
                       onednn: bool | None = None, *, size_bytes: int = 0, notes: list[str] | None = None) -> bytes:
    """The optimized GraphDef, serialized, from Grappler in a sandboxed child (:mod:`graphopt.security.sandbox`).

    ``meta`` is the serialized MetaGraphDef or a function writing it to a path (:func:`write_meta_graph`),
    so this process never holds the bytes while the child holds its own copies. ``onednn`` sets the child's
    ``TF_ENABLE_ONEDNN_OPTS`` (None: this process's). ``timeout`` is the wall-clock limit; memory and CPU
    limits are the sandbox's for a model of ``size_bytes``. A crash, a limit hit or a write outside the
    child's folder raises :class:`~graphopt.errors.ResourceError`. ``notes`` receives what a report should
    say when the child ran less confined than it should.
    """
    from graphopt.security.sandbox import default_limits, sandbox_for

    # With the sandbox off a child is still needed here (another oneDNN setting, isolate=always): a confined one.
    mode = "on" if default_limits().mode == "off" else None
    env = {} if onednn is None else {"TF_ENABLE_ONEDNN_OPTS": "1" if onednn else "0"}
    with sandbox_for(size_bytes, label="Grappler", env=env, wall_seconds=timeout, mode=mode) as box:
        paths = [str(box.path / n) for n in ("config.pb", "meta.pb", "out.pb")]
        with box.open_input("config.pb") as f:
            f.write(config_bytes)
        if callable(meta):
            meta(paths[1])
        else:
            with box.open_input("meta.pb") as f:
                f.write(meta)
        box.call(_optimize_files, *paths)
        if notes is not None:
            notes.extend(box.notes("Grappler"))
        return box.read_file("out.pb")


def _optimize_files(config_path: str, meta_path: str, out_path: str) -> None:
    """The sandboxed child's side of :func:`_optimize_in_child`: config, meta graph in; optimized GraphDef out."""
    with open(config_path, "rb") as f:
        config_bytes = f.read()
    with open(meta_path, "rb") as f:
        meta_bytes = f.read()
    try:
        out = _optimize_here(config_bytes, meta_bytes)
    except Exception as exc:  # a TF status error: name it, never let it escape raw
        from graphopt.security.sandbox import resource_error, tf_error_text

        limit_hit = resource_error(exc)
        if limit_hit is not None:
            raise limit_hit from None
        raise PassError(f"Grappler failed: {tf_error_text(exc)}") from None
    del meta_bytes
    with open(out_path, "wb") as f:
        f.write(out)


_ACTIVATIONS = ("Relu", "Relu6", "Elu", "LeakyRelu")
# Fusions TensorFlow's default (Eigen) CPU kernels implement. With oneDNN on, the remapper also emits others
# (a residual Add fused in, _Mkl* ops) that a server with oneDNN off refuses: "Fusion is not implemented";
# _FusedDepthwiseConv2dNative is registered there but computes nothing ("Missing 0-th output").
PORTABLE_FUSIONS = {
    "_FusedConv2D": {("BiasAdd",), ("FusedBatchNorm",)} | {(b, a) for b in ("BiasAdd", "FusedBatchNorm")
                                                         for a in _ACTIVATIONS},
    "_FusedMatMul": {("BiasAdd",)} | {("BiasAdd", a) for a in _ACTIVATIONS},
}


def _fusion(node: Any) -> tuple[str, ...]:
    return tuple(s.decode() for s in node.attr["fused_ops"].list.s)


# Ops the runtime remapper of a oneDNN build fuses into kernels a portable offline graph cannot hold
# (split back by split_onednn_fusions or never made where oneDNN is off): depthwise conv + BiasAdd [+ activation]
# (_MklNativeFusedDepthwiseConv2dNative), Sigmoid * x (_MklSwish), GELU's Erf/Tanh into _MklFusedMatMul.
RUNTIME_FUSION_OPS = frozenset({"DepthwiseConv2dNative", "Sigmoid", "Erf", "Tanh"})


def runtime_fusion_candidates(graph_def: Any) -> int:
    """How many nodes only the serving build's runtime remapper can still fuse (see ``RUNTIME_FUSION_OPS``)."""
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    return sum(1 for n in nodes if n.op in RUNTIME_FUSION_OPS)


def non_portable_nodes(graph_def: Any) -> list[str]:
    """Nodes only a oneDNN-enabled TensorFlow can run (oneDNN-only fusions and ``_Mkl*`` ops)."""
    out = []
    for node in graph_def.node:
        if node.op.startswith("_Mkl") or (node.op in PORTABLE_FUSIONS
                                          and _fusion(node) not in PORTABLE_FUSIONS[node.op]):
            out.append(node.name)
        elif node.op.startswith("_Fused") and node.op not in PORTABLE_FUSIONS:
            out.append(node.name)
    return out


def split_onednn_fusions(graph_def: Any) -> int:
    """Rewrite the oneDNN-only fusions Grappler makes into ops every TensorFlow CPU build runs.

    Conv2D/MatMul + BiasAdd + Add [+ activation] becomes the portable fused op, AddV2 [, activation];
    fused depthwise conv + BiasAdd [+ activation] becomes DepthwiseConv2dNative, BiasAdd [, activation].
    The node keeps its name (now the last op of the chain), so readers are unchanged. Returns how many.
    """
    from tensorflow.core.framework import node_def_pb2

    names = {n.name for n in graph_def.node}
    added: list[Any] = []
    count = 0
    for node in graph_def.node:
        fusion = _fusion(node) if node.op in ("_FusedConv2D", "_FusedMatMul", "_FusedDepthwiseConv2dNative") else ()
        data = [i for i in node.input if not i.startswith("^")]
        control = [i for i in node.input if i.startswith("^")]
        if node.op == "_FusedDepthwiseConv2dNative":
            if fusion[:1] != ("BiasAdd",) or len(fusion) > 2 or len(data) != 3:
                continue
            tail = fusion[1:]
        elif fusion[:2] == ("BiasAdd", "Add") and len(data) == 4:
            tail = fusion[2:]
        else:
            continue
        if len(tail) > 1 or (tail and tail[0] not in _ACTIVATIONS):
            continue
        original, device, dtype = node.name, node.device, node.attr["T"].type
        activation = tail[0] if tail else None
        alpha = node.attr["leakyrelu_alpha"].f if "leakyrelu_alpha" in node.attr else None
        chain: list[Any] = []
        if node.op == "_FusedDepthwiseConv2dNative":
            conv = node_def_pb2.NodeDef(name=unused_name(f"{original}/depthwise", names), op="DepthwiseConv2dNative",
                                        input=data[:2] + control, device=device)
            for key in ("T", "strides", "padding", "explicit_paddings", "data_format", "dilations"):
                if key in node.attr:
                    conv.attr[key].CopyFrom(node.attr[key])
            last = node_def_pb2.NodeDef(name=original, op="BiasAdd", input=[conv.name, data[2]], device=device)
            last.attr["T"].type = dtype
            last.attr["data_format"].s = node.attr["data_format"].s or b"NHWC"
        else:
            conv = node_def_pb2.NodeDef()
            conv.CopyFrom(node)
            conv.name = unused_name(f"{original}/biased", names)
            del conv.input[:]
            conv.input.extend(data[:3] + control)
            del conv.attr["fused_ops"].list.s[:]
            conv.attr["fused_ops"].list.s.append(b"BiasAdd")
            conv.attr["num_args"].i = 1
            del conv.attr["TArgs"].list.type[1:]
            if "_input_shapes" in conv.attr:
                del conv.attr["_input_shapes"]
            last = node_def_pb2.NodeDef(name=original, op="AddV2", input=[conv.name, data[3]], device=device)
            last.attr["T"].type = dtype
        chain.append(conv)
        if activation:
            last.name = unused_name(f"{original}/{last.op}", names)
            chain.append(last)
            last = node_def_pb2.NodeDef(name=original, op=activation, input=[last.name], device=device)
            last.attr["T"].type = dtype
            if activation == "LeakyRelu" and alpha is not None:
                last.attr["alpha"].f = alpha
        node.CopyFrom(last)
        added.extend(chain)
        count += 1
    graph_def.node.extend(added)
    return count


_FOLDED_NAME = re.compile(r"^(.*)/_\d+__cf__\d+$")


def tidy_folded_names(graph_def: Any, protected: set[str]) -> int:
    """Give constants Grappler folded (``w1/read/_0__cf__0``) back the name of the node they replace (``w1/read``).

    Only when that name is free; readers are rewired. Shorter names, fewer bytes, readable diffs.
    """
    names = {n.name for n in graph_def.node}
    renames: dict[str, str] = {}
    for node in graph_def.node:
        m = _FOLDED_NAME.match(node.name)
        if m and node.name not in protected and m.group(1) not in names and m.group(1) not in renames.values():
            renames[node.name] = m.group(1)
    if not renames:
        return 0
    for node in graph_def.node:
        if node.name in renames:
            node.name = renames[node.name]
        for i, inp in enumerate(node.input):
            head = node_name(inp)
            if head in renames:
                ctrl = inp[:1] == "^"  # keep the spelling ("^a", "a:0"): only the node's name changes
                node.input[i] = ("^" if ctrl else "") + renames[head] + inp[ctrl + len(head):]
    return len(renames)


def same_graph(a: Any, b: Any) -> bool:
    """``a == b`` for two GraphDefs, compared node by node.

    Equal node counts first, then one node at a time: ``ByteSize()`` or ``==`` of a whole 100 MB
    graph encodes it in upb (measured +200 MB peak for the two ByteSize calls on ResNet50).
    """
    if len(a.node) != len(b.node):
        return False
    rest = [[(fd.name, value) for fd, value in g.ListFields() if fd.name != "node"] for g in (a, b)]
    return rest[0] == rest[1] and all(x == y for x, y in zip(a.node, b.node))


class GrapplerOptimize(Pass):
    """Run Grappler offline for one device, keeping signature names, so serving can skip runtime Grappler."""

    name = "grappler_optimize"
    description = ("Run TensorFlow's Grappler offline with every node placed on a target device "
                   "(fused kernels as the runtime would build them); serve with runtime Grappler off.")
    options = {
        "device": Option(str, DEFAULT_DEVICE, "device every node is placed on before optimizing ('' for none)"),
        "optimizers": Option(list, [], "Grappler optimizers to run (e.g. constfold, remap); default: Grappler's set",
                             choices=GRAPPLER_OPTIMIZERS),
        "clear_devices": Option(bool, True, "remove the device placement afterwards (keeps the export portable)"),
        "isolate": Option(str, "auto", "run Grappler in a sandboxed child process: auto (always, unless "
                                       "GRAPHOPT_SANDBOX=off; then when the graph has functions), always, or never "
                                       "(in this process, unconfined)", choices=("auto", "always", "never")),
        "onednn": Option(str, "off", "oneDNN setting Grappler optimizes for: off (fusions every TF CPU build "
                                     "runs), on (adds oneDNN-only fusions such as Conv+BiasAdd+Add, which fail where "
                                     "oneDNN is off) or current (this process's setting)",
                         choices=("off", "on", "current")),
        "timeout": Option(float, 600.0, "seconds (wall clock) the sandboxed child may take"),
    }

    edits_input = False  # builds a new graph

    def run(self, model: Model) -> PassResult:
        from graphopt.graph import weightless as stand_ins

        # Grappler holds ~14x the graph it optimizes; it never reads the weights that feed Conv2D/MatMul next
        # to run-time inputs, so it optimizes a graph with stand-ins for them (the result is the same graph).
        light, weights = stand_ins.strip(model.graph_def, model.protected_nodes, merge_equal=True)
        result = self._optimize(model.with_graph(light) if weights else model)
        stand_ins.restore(result.model.graph_def, weights)  # equal light graphs mean equal graphs: `modified` holds
        return result

    def _optimize(self, model: Model) -> PassResult:
        problems = check_preconditions(model)
        if problems:
            raise PassError("Grappler cannot run on this graph: " + problems[0], details=problems[1:5],
                            hint="give every placeholder a dtype and name existing signature tensors")
        device = self.config["device"]
        config_bytes = grappler_config(self.config["optimizers"]).SerializeToString()
        isolate = self.config["isolate"]
        # With oneDNN on, the remapper emits fusions ([BiasAdd, Add], ...) only oneDNN kernels implement: a graph
        # pre-optimized that way fails on a server with oneDNN off ("Fusion is not implemented"). oneDNN is chosen
        # when TensorFlow loads, so another setting than this process's needs a child process.
        wanted = {"off": False, "on": True, "current": None}[self.config["onednn"]]
        here = onednn_enabled()
        onednn = wanted if wanted is not None else here
        # Portable output from a oneDNN process: optimize here (depthwise fusions exist only on that path), then
        # split the oneDNN-only residual fusions; anything else non-portable sends the work to a oneDNN-off child.
        switch = wanted is True and not here
        if switch and isolate == "never":
            raise PassError(f"optimizing for onednn={self.config['onednn']} needs a child process "
                            f"(this process has oneDNN {'on' if onednn_enabled() else 'off'})",
                            hint="drop isolate=never, or use onednn=current")
        # Grappler's constant folding executes parts of the graph, and function bodies can hold feeds and shapes
        # checked only inside Grappler: both run in a sandboxed child (graphopt.security.sandbox) unless told never.
        from graphopt.security.sandbox import default_limits

        size = model.size_bytes
        sandbox = default_limits(size)
        if isolate == "never" and sandbox.mode == "require":
            raise PassError("isolate=never would run Grappler unconfined, and GRAPHOPT_SANDBOX=require forbids it",
                            hint="drop isolate=never")
        in_child = switch or isolate == "always" or (isolate == "auto" and (
            sandbox.confined or len(model.graph_def.library.function) > 0))
        notes: list[str] = []
        if not in_child:
            notes.append("Grappler ran in this process, unconfined (" + (
                "isolate=never" if isolate == "never" else "GRAPHOPT_SANDBOX=off") + ")")

        # Memory (optimize's peak is reached in this pass): the MetaGraphDef is serialized node by node, straight
        # into one buffer (or the child's input file), never as a second in-memory graph; the input bytes are
        # dropped before the output is parsed. Grappler's own copies (~13x the graph here) are TensorFlow's.
        def write_meta(path: str) -> None:
            write_meta_graph(model, device, path)

        try:
            if in_child:
                out_bytes = _optimize_in_child(config_bytes, write_meta, self.config["timeout"],
                                               onednn if switch else None, size_bytes=size, notes=notes)
            else:
                meta_bytes = meta_graph_bytes(model, device)
                try:
                    out_bytes = _optimize_here(config_bytes, meta_bytes)
                finally:
                    del meta_bytes
        except GraphoptError:
            raise
        except Exception as exc:  # a TF status error: name it, never let it escape raw
            raise PassError(f"Grappler failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}",
                            where=f"device {device or 'none'}") from None
        graph_def = type(model.graph_def).FromString(out_bytes)
        del out_bytes
        split = 0
        if onednn is False and here:
            split = split_onednn_fusions(graph_def)
            left = non_portable_nodes(graph_def)
            if left and isolate == "never":
                raise PassError(f"oneDNN-only kernels left (e.g. '{left[0]}') and isolate=never forbids the "
                                "oneDNN-off child that would avoid them", hint="use onednn=current or drop isolate")
            if left:
                del graph_def
                out_bytes = _optimize_in_child(config_bytes, write_meta, self.config["timeout"], False,
                                               size_bytes=size, notes=notes)
                graph_def, split, in_child = type(model.graph_def).FromString(out_bytes), 0, True
                del out_bytes
        if not graph_def.HasField("versions") and model.graph_def.HasField("versions"):
            graph_def.versions.CopyFrom(model.graph_def.versions)
        tidied = tidy_folded_names(graph_def, model.protected_nodes)
        if self.config["clear_devices"]:
            for node in graph_def.node:
                node.device = ""
            for fn in graph_def.library.function:
                for node in fn.node_def:
                    node.device = ""
        names = {n.name for n in graph_def.node}
        lost = sorted(n for n in model.protected_nodes if n not in names)
        if lost:
            raise PassError(f"Grappler removed or renamed signature/init node '{lost[0]}'", details=lost[1:5],
                            hint="report this graph; run the pipeline without grappler_optimize meanwhile")
        before, after = Counter(n.op for n in model.graph_def.node), Counter(n.op for n in graph_def.node)
        fused = sum(c for op, c in after.items() if op.startswith("_Fused"))
        counters: dict[str, int | float] = {"nodes_before": len(model.graph_def.node), "nodes_after": len(graph_def.node),
                    "fused_ops": fused, "isolated": int(in_child), "onednn_fusions_split": split,
                    "names_tidied": tidied}
        modified = not same_graph(graph_def, model.graph_def)
        if model.metadata.get("weight_storage"):
            notes.append(f"weights stored as {model.metadata['weight_storage']} were folded back to float32: "
                         "run weights_to_fp16/weights_to_int8 after grappler_optimize")
        if fused:
            kinds = ", ".join(f"{op} {after[op] - before[op]:+d}" for op in sorted(after) if op.startswith("_Fused"))
            notes.append(f"fused kernels: {kinds}")
        # Recorded for graphopt.runtime.config: a pre-optimized graph is served with runtime Grappler off.
        metadata = {k: v for k, v in model.metadata.items() if k != "weight_storage"}
        metadata["grappler_device"] = device
        metadata["grappler_onednn"] = onednn
        return PassResult(model.replace(graph_def=graph_def, metadata=metadata), modified=modified, counters=counters,
                          notes=notes)


PASSES = [GrapplerOptimize]
