"""Run a frozen :class:`~graphopt.model.Model` the way TF Serving runs a TF1 SavedModel: one session.

Used by verification, benchmarks, the local PredictionService and tests. Init ops
(table initialisers) run once when the session is made, as TF Serving runs a
SavedModel's main op at load.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from graphopt.errors import InputError
from graphopt.graph.default_attrs import add_default_attrs, undo_default_attrs
from graphopt.graph.names import node_name
from graphopt.model import Model, Signature


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
            undo_default_attrs(added)
        del graph_def
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        if model.init_ops:
            self.session.run([self.graph.get_operation_by_name(node_name(n)) for n in model.init_ops],
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


def run_model(model: Model, feeds: Mapping[str, Any], *, config: Any = None,
              confined: bool = False) -> dict[str, np.ndarray]:
    """Run once and close: outputs by signature key.

    In this process, unless ``confined``: then in a sandboxed child (:func:`run_model_confined`, with the
    default limits). Graphs from strangers must run confined; in-process is for graphs this process built.
    """
    if confined:
        return run_model_confined(model, feeds, config=config)
    with Session(model, config=config) as sess:
        return sess.run(feeds)


MAX_RANDOM_VALUES = 1 << 26  # per input: 256 MB of float32; a real model's sample is far smaller


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
        declared = spec.shape if spec.shape is not None else (batch,)
        shape: tuple[int, ...] = tuple((batch if i == 0 else dynamic) if d is None or d < 0 else d
                                       for i, d in enumerate(declared))
        values = math.prod(max(d, 1) for d in shape)  # zeros left out: numpy refuses [0, 1e6, 1e6, ...] too
        if values > MAX_RANDOM_VALUES:  # e.g. 50 unknown dims: 32**49 values, numpy's "array is too big"
            raise InputError(f"cannot make random inputs for '{key}': its shape ({len(shape)} dimensions, unknown "
                             f"ones filled with {batch} for the batch and {dynamic} elsewhere) holds {values:.3g} values",
                             where=f"input {key}", hint="give real inputs with --sample FILE.npz, or skip "
                                                        "verification with --no-verify")
        dtype = tf.as_dtype(spec.dtype)
        if dtype == tf.string:
            pool = list((vocabulary or {}).get(key) or [f"w{i}" for i in range(10)])
            words = rng.choice(np.array([str(v) for v in pool], dtype=object), size=shape)
            out[key] = words.astype(object).astype(bytes)
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


# --- running a model in a confined child (graphopt.security.sandbox) -----------------------------------


def write_model(model: Model, folder: Any, name: str = "model.pb") -> dict[str, Any]:
    """Write ``model`` for a confined child: the GraphDef into ``folder`` (a :class:`~graphopt.security.sandbox.
    Sandbox` or a path), node by node, and the rest as plain data. :func:`read_model` is the inverse.

    The graph goes through a file rather than the pipe: written node by node it never exists twice in
    this process (pickling it would: bytes, then the pickle).
    """
    from graphopt.graph.encoding import graph_def_chunks

    _, chunks = graph_def_chunks(model.graph_def)
    if hasattr(folder, "open_input"):
        f, path = folder.open_input(name), str(folder.path / name)
    else:
        path = str(folder / name) if hasattr(folder, "joinpath") else f"{folder}/{name}"
        f = open(path, "xb")
    with f:
        for chunk in chunks:
            f.write(chunk)
    return {"graph": path, "signature": model.signature.to_dict(), "init_ops": list(model.init_ops),
            "source": model.source, "format": model.format, "assets": dict(model.assets)}


def read_model(spec: Mapping[str, Any]) -> Model:
    """The :class:`Model` :func:`write_model` wrote (metadata is not carried: running needs none)."""
    from tensorflow.core.framework import graph_pb2

    from graphopt.model import TensorSpec

    def specs(side: Mapping[str, Any]) -> dict[str, TensorSpec]:
        return {k: TensorSpec(v["name"], v["dtype"], None if v["shape"] is None else
                              tuple(None if d is None or d < 0 else int(d) for d in v["shape"]))
                for k, v in side.items()}

    with open(spec["graph"], "rb") as f:
        graph_def = graph_pb2.GraphDef.FromString(f.read())
    sig = spec["signature"]
    signature = Signature(inputs=specs(sig["inputs"]), outputs=specs(sig["outputs"]), key=sig["key"],
                          method_name=sig["method_name"])
    return Model(graph_def, signature, init_ops=list(spec["init_ops"]), source=spec["source"], format=spec["format"],
                 assets=dict(spec["assets"]))


def open_session(spec: Mapping[str, Any], config_bytes: bytes | None = None, add_defaults: bool = True,
                 feed_weights: bool = False) -> Any:
    """A :class:`~graphopt.security.sandbox.ConfinedWorker` factory: the model :func:`write_model` wrote, opened
    in a :class:`Session`; returns its ``run``. ``config_bytes``: a serialized ``ConfigProto`` (None: TF's default).
    """
    config = None
    if config_bytes is not None:
        from tensorflow.core.protobuf import config_pb2

        config = config_pb2.ConfigProto.FromString(config_bytes)
    session = Session(read_model(spec), config=config, add_defaults=add_defaults, feed_weights=feed_weights)
    return session.run


def run_model_confined(model: Model, feeds: Mapping[str, Any], *, config: Any = None, limits: Any = None,
                       label: str | None = None) -> dict[str, np.ndarray]:
    """:func:`run_model` in a confined child (:mod:`graphopt.security.sandbox`): for graphs from strangers.

    ``limits`` defaults to :func:`~graphopt.security.sandbox.default_limits` for the model's size. Limits hit,
    crashes (an ``Abort`` op) and refused writes raise :class:`~graphopt.errors.ResourceError`.
    """
    from graphopt.security.sandbox import Sandbox, sandbox_for

    label = label or f"the model {model.source}"
    with (Sandbox(limits, label=label) if limits is not None else sandbox_for(model.size_bytes, label=label)) as box:
        spec = write_model(model, box)
        config_bytes = config.SerializeToString() if config is not None else None
        run = "graphopt.runtime.session:_run_spec"
        return box.call(run, spec, {k: np.asarray(v) for k, v in feeds.items()}, config_bytes)


def _run_spec(spec: Mapping[str, Any], feeds: Mapping[str, np.ndarray], config_bytes: bytes | None) -> dict:
    # The child's side of run_model_confined.
    return open_session(spec, config_bytes)(feeds)
