"""Run a frozen :class:`~graphopt.model.Model` the way TF Serving runs a TF1 SavedModel: one session.

Used by verification, benchmarks, the local PredictionService and tests. Init ops
(table initialisers) run once when the session is made, as TF Serving runs a
SavedModel's main op at load.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from graphopt.errors import InputError
from graphopt.model import Model, Signature


def add_default_attrs(graph_def: Any) -> list[tuple[Any, str, bool]]:
    """Fill every node's missing attrs that have an op default, in place (unknown ops, e.g. functions, skipped).

    What ``tf.import_graph_def`` does to the GraphDef it is given: callers of :class:`Session` and the
    SavedModel writer have always seen their model's defaults filled. Returns ``(node, attr, existed)``
    for each attr filled (``existed``: an entry without a value was there), so it can be undone.
    """
    from tensorflow.python.framework import op_def_registry

    added = []
    for node in graph_def.node:
        op_def = op_def_registry.get(node.op)
        if op_def is None:
            continue
        for attr_def in op_def.attr:
            if not attr_def.HasField("default_value"):
                continue
            existed = attr_def.name in node.attr
            if not existed or node.attr[attr_def.name].WhichOneof("value") is None:
                node.attr[attr_def.name].CopyFrom(attr_def.default_value)
                added.append((node, attr_def.name, existed))
    return added


def _undo_default_attrs(added: list[tuple[Any, str, bool]]) -> None:
    for node, name, existed in added:
        if existed:
            node.attr[name].Clear()
        else:
            del node.attr[name]


def session_config(*, grappler: bool = True, intra_op: int = 0, inter_op: int = 0):
    """A ``ConfigProto``; ``grappler=False`` turns runtime graph optimisation off (pre-optimized graphs)."""
    import tensorflow as tf

    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=intra_op, inter_op_parallelism_threads=inter_op)
    if not grappler:
        config.graph_options.rewrite_options.disable_meta_optimizer = True
    return config


class Session:
    """A TF session over one model: ``Session(model).run({"input": array})`` -> ``{"output": array}``."""

    def __init__(self, model: Model, *, config: Any = None, add_defaults: bool = True,
                 feed_weights: bool = False) -> None:
        """``add_defaults=False`` leaves ``model.graph_def`` as it was (importing fills its default attrs).

        ``feed_weights`` imports the graph with stand-ins for its large constants and feeds their values
        on every run (:mod:`graphopt.graph.weightless`): a session holds about four copies of the graph it runs,
        and this way none of them holds the weights. The kernels that run are the same only when no
        graph optimizer runs (``config`` off, as verification's): folding and fusion need constants.
        """
        import tensorflow as tf

        from graphopt.graph import weightless as stand_ins

        self.model = model
        self.graph = tf.Graph()
        self._weights: dict[str, Any] = {}
        graph_def = model.graph_def
        if feed_weights:
            graph_def, weights = stand_ins.strip(graph_def, model.protected_nodes, any_reader=True)
            self._weights = stand_ins.feeds(graph_def, weights)
        added = [] if add_defaults or feed_weights else add_default_attrs(graph_def)
        try:
            with self.graph.as_default():
                tf.graph_util.import_graph_def(graph_def, name="")
        finally:
            _undo_default_attrs(added)
        del graph_def
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        if model.init_ops:
            self.session.run([self.graph.get_operation_by_name(n.split(":")[0]) for n in model.init_ops],
                             feed_dict=self._weights)

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        sig = self.model.signature
        missing = sorted(set(sig.inputs) - set(feeds))
        if missing:
            raise InputError(f"no value for input {', '.join(missing)}", where=f"signature {sig.key}",
                             hint=f"inputs are: {', '.join(sig.inputs)}")
        feed_dict = {sig.inputs[k].name: v for k, v in feeds.items() if k in sig.inputs}
        feed_dict.update(self._weights)
        keys = list(sig.outputs)
        values = self.session.run([sig.outputs[k].name for k in keys], feed_dict=feed_dict)
        return dict(zip(keys, values))

    def close(self) -> None:
        self.session.close()
        self._weights = {}

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_model(model: Model, feeds: Mapping[str, Any], *, config: Any = None) -> dict[str, np.ndarray]:
    """Run once and close: outputs by signature key."""
    with Session(model, config=config) as sess:
        return sess.run(feeds)


def random_inputs(signature: Signature, *, batch: int = 1, dynamic: int = 32, seed: int = 0,
                  vocabulary: Mapping[str, list] | None = None) -> dict[str, np.ndarray]:
    """Inputs from the signature's dtypes and shapes. Unknown batch dims get ``batch``, other unknown dims ``dynamic``.

    ``vocabulary`` maps an input key to values to draw from (string inputs that
    should hit a lookup table); other strings are short random words.
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for key, spec in signature.inputs.items():
        shape = spec.shape if spec.shape is not None else (batch,)
        shape = tuple((batch if i == 0 else dynamic) if d is None or d < 0 else d for i, d in enumerate(shape))
        dtype = tf.as_dtype(spec.dtype)
        if dtype == tf.string:
            pool = list((vocabulary or {}).get(key) or [f"w{i}" for i in range(10)])
            values = rng.choice(np.array([str(v) for v in pool], dtype=object), size=shape)
            out[key] = values.astype(object).astype(bytes)
        elif dtype == tf.bool:
            out[key] = rng.random(shape) > 0.5
        elif dtype.is_integer:
            lo, hi = (0, 255) if dtype == tf.uint8 else (0, 10)
            out[key] = rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype.as_numpy_dtype)
        elif dtype.is_floating:
            out[key] = rng.random(shape).astype(dtype.as_numpy_dtype)
        else:
            raise InputError(f"cannot generate inputs of dtype {spec.dtype}", where=f"input {key}",
                             hint="give sample inputs with --sample FILE.npz")
    return out
