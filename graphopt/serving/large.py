"""Models too big for one protobuf: weights kept as variables in ``variables/``, not constants in the graph.

A frozen graph holds every weight in a ``Const`` node, so ``saved_model.pb`` is
as big as the model; protobuf refuses to serialize a message of 2 GB or more
(tensorflow#6144, #54364), and neither TF Serving nor TensorFlow could load it.
Before writing, :func:`consts_to_variables` turns the large constants into
``VariableV2`` nodes *of the same name* (consumers read a ref tensor where they
read a constant; TensorFlow dereferences it implicitly), and
:func:`write_with_variables` writes a SavedModel whose saver restores them from
``variables/variables.*`` at load, as for any TF1 model with variables.

The conversion works on the ``GraphDef`` message before anything is imported:
a graph past 2 GB cannot be serialized, so it can never be imported as is.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graphopt.errors import OutputError
from graphopt.graph.names import node_name
from graphopt.model import Model

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from tensorflow.core.framework.graph_pb2 import GraphDef

PROTOBUF_LIMIT = 2**31 - 1
# Leave room for what the MetaGraphDef adds around the graph (signatures, saver,
# collections) and for protobuf's own framing.
DEFAULT_THRESHOLD = 1_800_000_000
# Small constants (shapes, axes, scalars) stay in the graph: Grappler and the
# kernels want them constant, and they cost nothing.
MIN_VARIABLE_BYTES = 1024
_INIT_SCOPE = "graphopt_weights"


def graph_bytes(graph_def: "GraphDef") -> int:
    """Serialized size of a GraphDef, summed per node so it also works past 2 GB."""
    total = sum(node.ByteSize() + 8 for node in graph_def.node)  # + field tag and length prefix
    return total + graph_def.library.ByteSize() + graph_def.versions.ByteSize() + 16


def needs_variables(model: Model, threshold: int = DEFAULT_THRESHOLD) -> bool:
    """True when the frozen graph would make ``saved_model.pb`` too big to write or load."""
    return graph_bytes(model.graph_def) > threshold


@dataclass
class VariableGraph:
    """A graph whose large constants are now variables, and the values to restore into them."""

    graph_def: "GraphDef"
    values: dict[str, "np.ndarray"] = field(default_factory=dict)

    @property
    def variable_bytes(self) -> int:
        return sum(int(v.nbytes) for v in self.values.values())


def consts_to_variables(graph_def: "GraphDef", *, min_bytes: int = MIN_VARIABLE_BYTES,
                        keep: set[str] | frozenset[str] = frozenset()) -> VariableGraph:
    """Replace each ``Const`` of at least ``min_bytes`` by a ``VariableV2`` of the same name, dtype and shape.

    Constants named in ``keep`` (signature outputs), constants with control
    inputs (they live inside a while-loop frame) and non-numeric ones stay.
    The input graph is not changed.
    """
    import tensorflow as tf
    from tensorflow.core.framework import graph_pb2

    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    values: dict[str, Any] = {}
    for node in graph_def.node:
        new = out.node.add()
        tensor = node.attr["value"].tensor if node.op == "Const" else None
        if (tensor is None or node.name in keep or node.input
                or tensor.dtype in (tf.resource.as_datatype_enum, tf.variant.as_datatype_enum)
                or tensor.ByteSize() < min_bytes):
            new.CopyFrom(node)
            continue
        values[node.name] = tf.make_ndarray(tensor)
        new.name = node.name
        new.op = "VariableV2"
        new.device = node.device
        new.attr["dtype"].type = tensor.dtype
        new.attr["shape"].shape.CopyFrom(tensor.tensor_shape)
        new.attr["container"].s = b""
        new.attr["shared_name"].s = b""
    return VariableGraph(out, values)


def write_with_variables(model: Model, export_dir: str | Path, *, min_bytes: int = MIN_VARIABLE_BYTES) -> dict:
    """Write ``model`` as a TF1 SavedModel (tag ``serve``) whose constants of ``min_bytes`` or more are variables.

    ``export_dir`` must not exist. Init ops become the main op (run after the
    restore at load); assets are copied to ``assets/`` and string constants
    naming them are re-pointed there at load. Returns ``{"variables": n,
    "variable_bytes": b, "graph_bytes": g}``.
    """
    import tensorflow as tf

    export_dir = Path(export_dir)
    keep = set(model.signature.output_nodes) | set(model.signature.input_nodes)
    vg = consts_to_variables(model.graph_def, min_bytes=min_bytes, keep=keep)
    try:
        graph = tf.Graph()
        with graph.as_default():
            tf.graph_util.import_graph_def(vg.graph_def, name="")
            variables, assigns, feeds = {}, [], {}
            for name, value in vg.values.items():
                ref = graph.get_tensor_by_name(f"{name}:0")
                # Fed once from a placeholder, so the weight never becomes a constant of the saved graph.
                init = tf.compat.v1.placeholder(ref.dtype.base_dtype, value.shape, name=f"{_INIT_SCOPE}/{name}/value")
                assigns.append(tf.compat.v1.assign(ref, init, name=f"{_INIT_SCOPE}/{name}/assign"))
                feeds[init] = value
                variables[name] = ref
            saver = tf.compat.v1.train.Saver(var_list=variables, sharded=True, allow_empty=True,
                                             write_version=tf.compat.v1.train.SaverDef.V2)
            main_op = None
            if model.init_ops:
                ops = [graph.get_operation_by_name(node_name(n)) for n in model.init_ops]
                main_op = tf.group(*ops, name=f"{_INIT_SCOPE}/main_op")
            asset_tensors = _asset_tensors(graph, vg.graph_def, model.assets)
            with tf.compat.v1.Session(graph=graph) as sess:
                if assigns:
                    sess.run(assigns, feed_dict=feeds)
                builder = tf.compat.v1.saved_model.Builder(str(export_dir))
                signatures = {model.signature.key: model.signature.to_proto()}
                builder.add_meta_graph_and_variables(
                    sess, [tf.saved_model.SERVING], signature_def_map=signatures,
                    assets_collection=asset_tensors or None, main_op=main_op, saver=saver, strip_default_attrs=True)
                builder.save()
    except Exception as exc:  # TF raises many types here; the user needs one message with the cause
        first_line = (str(exc).splitlines() or [""])[0]
        raise OutputError(f"cannot write SavedModel: {type(exc).__name__}: {first_line}",
                          where=str(export_dir)) from exc
    _copy_unbound_assets(export_dir, model.assets)
    return {"variables": len(vg.values), "variable_bytes": vg.variable_bytes, "graph_bytes": graph_bytes(vg.graph_def)}


def _asset_tensors(graph, graph_def, assets: dict[str, str]) -> list:
    # A frozen table initializer reads its vocabulary from a string Const holding
    # the file's old path; registering that tensor as an asset makes the loader
    # feed the new assets/ path instead, as TF1 SavedModels do.
    if not assets:
        return []
    paths = {str(p).encode() for p in assets.values()}
    found = []
    for node in graph_def.node:
        if node.op != "Const":
            continue
        tensor = node.attr["value"].tensor
        if not tensor.tensor_shape.dim and tensor.string_val[:1] and tensor.string_val[0] in paths:
            found.append(graph.get_tensor_by_name(f"{node.name}:0"))
    return found


def _copy_unbound_assets(export_dir: Path, assets: dict[str, str]) -> None:
    # Assets no constant refers to are still copied: they are part of the model.
    if not assets:
        return
    target = export_dir / "assets"
    target.mkdir(exist_ok=True)
    for src in assets.values():
        dest = target / Path(src).name  # the name the SavedModel builder gives bound assets
        if not dest.exists() and Path(src).is_file():
            shutil.copy2(src, dest)
