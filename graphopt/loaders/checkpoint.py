"""TF1 checkpoints: a ``.meta`` file, or a prefix with ``prefix.meta`` beside it.

The meta graph is imported into a fresh graph, the variables restored from the
prefix and table initialisers run, then frozen like a TF1 SavedModel. The
signature is a ``signature_def`` from the meta graph when it has one (chosen
by key like SavedModels); otherwise the outputs given, or inferred with this
heuristic: sinks of the graph, ignoring the saver (``save/``), initialisers
(``init``, ``init_all_tables``), ``gradients/`` and optimizer/training nodes
(ops whose name starts with ``Apply``/``ResourceApply``, scopes named after
optimizers, summaries); and when the graph trains (it has ``Apply*`` ops),
scalar sinks and sinks named like ``*loss*`` are dropped if other sinks remain.
The outputs chosen are named in ``Model.metadata``
(``inferred_outputs``) so a report can show them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from graphopt.errors import InputError
from graphopt.loaders import signatures as sigs
from graphopt.loaders.saved_model_tf1 import freeze_session
from graphopt.model import Model

TRAINING_PREFIXES = ("save", "init", "init_all_tables", "init_1", "gradients", "train", "report_uninitialized_variables",
                     "Adam", "GradientDescent", "Momentum", "RMSProp", "Adagrad", "Adadelta", "Ftrl", "global_step",
                     "summaries")
TRAINING_OP_PREFIXES = ("Apply", "ResourceApply", "SparseApply", "ResourceSparseApply", "Scatter", "ResourceScatter")


def _paths(src: str) -> tuple[Path, str]:
    if src.endswith(".meta"):
        return Path(src), src[: -len(".meta")]
    if src.endswith(".index"):
        src = src[: -len(".index")]
    return Path(src + ".meta"), src


def _training_sinks(graph_def: Any) -> list[str]:
    return [n.name for n in graph_def.node if n.op.startswith(TRAINING_OP_PREFIXES)]


def _serving_sinks(graph: Any, sinks: list[str], has_training: bool) -> list[str]:
    """In a training graph, a loss is a sink too: drop scalar sinks and sinks named like a loss, if others remain."""
    if not has_training:
        return sinks

    def looks_like_loss(name: str) -> bool:
        outs = graph.get_operation_by_name(name).outputs
        return "loss" in name.lower() or bool(outs) and outs[0].shape.rank == 0

    served = [s for s in sinks if not looks_like_loss(s)]
    return served or sinks


def _refuse_unsafe_restore(meta: Any, where: str) -> None:
    """Loading runs the saver's restore op and the table initializers, and freezing evaluates the variables and
    tables: refuse ops among them that are not known to compute only (a hostile .meta can name any op as its
    restore op). ``RestoreV2`` may read only the checkpoint the loader feeds; no asset is fed, so a table read
    from a vocabulary file is refused unless allowed."""
    from graphopt.security.scan import load_time_findings, refuse_unsafe_load

    collection = meta.collection_def.get("table_initializer")
    init = list(collection.node_list.value) if collection is not None else []
    found = load_time_findings(meta, init=init, assets_fed=False)
    refuse_unsafe_load(found, runs="its restore op, table initializers and variables", where=where,
                       why="loading a checkpoint runs them")


def load_checkpoint(src: str, *, signature: str | None = None, tags: Sequence[str] | None = None,
                    inputs: Sequence[str] | None = None, outputs: Sequence[str] | None = None) -> Model:
    """Load a TF1 checkpoint and freeze it (see module docstring for how outputs are chosen)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2

    meta_path, prefix = _paths(src)
    meta = meta_graph_pb2.MetaGraphDef()
    try:
        meta.ParseFromString(meta_path.read_bytes())
    except Exception:
        raise InputError("the .meta file is not a MetaGraphDef", where=str(meta_path),
                         hint="give the checkpoint prefix (model.ckpt) or its .meta file") from None
    if not Path(prefix + ".index").is_file() and not Path(prefix).is_file():
        raise InputError("no checkpoint data beside the .meta file", where=prefix,
                         hint=f"expected {prefix}.index and {prefix}.data-*")
    _refuse_unsafe_restore(meta, str(meta_path))
    available = sorted(meta.signature_def)
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        with graph.as_default():
            saver = tf.compat.v1.train.import_meta_graph(meta, clear_devices=True)
            if saver is not None:
                saver.restore(sess, prefix)
            table_inits = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.TABLE_INITIALIZERS)
            if table_inits:
                sess.run(table_inits)
        inferred: list[str] = []
        if available and not outputs:
            key = sigs.choose_key(available, signature, src)
            sig = sigs.override(sigs.signature_from_def(meta.signature_def[key], key), graph, inputs, outputs, src)
        else:
            graph_def = graph.as_graph_def()
            training = set(_training_sinks(graph_def))
            ignore = list(TRAINING_PREFIXES) + sorted(training)
            if not outputs:
                outputs = inferred = _serving_sinks(graph, sigs.infer_outputs(graph_def, ignore), bool(training))
            sig = sigs.signature_from_names(graph_def, inputs, outputs, src, ignore_prefixes=ignore)
        frozen, init_ops = freeze_session(sess, graph, sig)
    model = Model(graph_def=frozen, signature=sig, init_ops=init_ops, source=src, format="checkpoint")
    if inferred:
        model.metadata["inferred_outputs"] = inferred
    model.metadata["signatures"] = available
    return model
