"""TF1 SavedModels (``tf.compat.v1.saved_model.Builder``, ``simple_save``, Estimator exports), and freezing a session.

The meta graph is chosen by tags (auto when there is one, or when one is
exactly ``serve``), loaded in a session in a fresh graph (which restores the
variables and runs the main op / legacy init op), then frozen with
``graph_util.convert_variables_to_constants`` keeping the signature's inputs
and outputs. Lookup tables are exported from the session and re-created from
Consts (see :mod:`graphopt.loaders.tables`), so no asset path remains.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from graphopt.errors import InputError
from graphopt.loaders import signatures as sigs
from graphopt.loaders.saved_model_proto import read_saved_model
from graphopt.loaders.tables import inline_session_tables
from graphopt.model import Model, Signature


def tag_sets(path: str | Path) -> list[list[str]]:
    return [sorted(mg.meta_info_def.tags) for mg in read_saved_model(path).meta_graphs]


def is_tf1_saved_model(path: str | Path) -> bool:
    """TF2 SavedModels carry an object graph; TF1 ones (Builder, Hub TF1 format) do not."""
    proto = read_saved_model(path)
    return not any(len(mg.object_graph_def.nodes) for mg in proto.meta_graphs)


def choose_meta_graph(path: str, tags: Sequence[str] | None, preferred: Sequence[str] | None = ("serve",)) -> Any:
    """The meta graph for ``tags``; when not given: the only one, else the one tagged exactly ``preferred``."""
    metas = list(read_saved_model(path).meta_graphs)
    listing = ", ".join(str(sorted(m.meta_info_def.tags)) for m in metas)

    def tagged(wanted: Sequence[str]) -> Any:
        return next((m for m in metas if set(m.meta_info_def.tags) == set(wanted)), None)

    if tags is not None:
        found = tagged(tags)
        if found is not None:
            return found
        raise InputError(f"no meta graph with tags {sorted(tags)}", where=path,
                         hint=f"tag sets in the model: {listing}; pick one with --tags t1,t2")
    if len(metas) == 1:
        return metas[0]
    found = tagged(preferred) if preferred is not None else None
    if found is not None:
        return found
    raise InputError(f"the model has {len(metas)} meta graphs", where=path,
                     hint=f"pick one with --tags t1,t2 (use --tags '' for the empty set); tag sets: {listing}")


def freeze_session(session: Any, graph: Any, signature: Signature) -> tuple[Any, list[str]]:
    """Freeze ``graph`` in ``session`` keeping the signature's inputs and outputs; return (GraphDef, init ops)."""
    import tensorflow as tf

    keep = list(dict.fromkeys(signature.output_nodes + signature.input_nodes))
    graph_def = graph.as_graph_def()
    frozen = tf.compat.v1.graph_util.convert_variables_to_constants(session, graph_def, keep)
    init_ops = inline_session_tables(session, graph, frozen)
    return frozen, init_ops


def _refuse_unsafe_init(meta: Any, path: str) -> None:
    """Loading runs the restore op and the init ops, and freezing evaluates the variables and tables: refuse
    ops among them that are not known to compute only, and assets outside the folder (docs/guide/security.md)."""
    from graphopt.security.scan import check_assets, load_time_findings, refuse_unsafe_load

    check_assets(path, meta)
    refuse_unsafe_load(load_time_findings(meta), runs="its restore op, init ops and variables", where=path,
                       why="loading a TF1 SavedModel runs them")


def load_saved_model_tf1(path: str, *, signature: str | None = None, tags: Sequence[str] | None = None,
                         inputs: Sequence[str] | None = None, outputs: Sequence[str] | None = None,
                         fmt: str = "saved_model_tf1", preferred_tags: Sequence[str] | None = ("serve",),
                         preferred_signature: str | None = None) -> Model:
    """Load a TF1 SavedModel, run its init ops, and freeze the chosen signature (see module docstring)."""
    import tensorflow as tf

    meta = choose_meta_graph(path, tags, preferred_tags)
    chosen_tags = list(meta.meta_info_def.tags)
    available = sorted(meta.signature_def)
    if signature is None and preferred_signature in available:
        signature = preferred_signature
    given = bool(inputs and outputs)
    key = sigs.choose_key(available, signature, path) if (available or not given) else "serving_default"
    _refuse_unsafe_init(meta, path)
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        # loader.load restores the variables and runs main_op / legacy_init_op (table initialisers).
        tf.compat.v1.saved_model.loader.load(sess, chosen_tags, path, clear_devices=True)
        if available and key in available:
            sig = sigs.signature_from_def(meta.signature_def[key], key)
            sig = sigs.override(sig, graph, inputs, outputs, path)
        else:
            sig = sigs.signature_from_names(graph.as_graph_def(), inputs, outputs, path)
        graph_def, init_ops = freeze_session(sess, graph, sig)
    model = Model(graph_def=graph_def, signature=sig, init_ops=init_ops, source=path, format=fmt)
    model.metadata.update(tags=sorted(chosen_tags), signatures=available)
    # Freezing keeps only what the signature needs: `graphopt diff` reports these apart from a pass's changes.
    kept = {n.name for n in graph_def.node}
    model.metadata["load_pruned"] = [(n.name, n.op) for n in meta.graph_def.node if n.name not in kept]
    return model
