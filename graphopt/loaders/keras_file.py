"""Keras model files: ``.keras`` (Keras 3) and legacy ``.h5``.

The model is loaded with ``compile=False``, wrapped in a ``tf.function`` whose
input signature comes from ``model.inputs`` and frozen like a TF2 SavedModel
signature. Input keys are the input layers' names; output keys are
``model.output_names``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from graphopt.errors import InputError
from graphopt.graph.names import node_name
from graphopt.model import DEFAULT_SIGNATURE, Model


def _input_name(tensor: Any, i: int) -> str:
    name = getattr(tensor, "name", None) or f"input_{i}"
    return node_name(name)


def load_keras(path: str, *, signature: str | None = None, tags: Sequence[str] | None = None,
               inputs: Sequence[str] | None = None, outputs: Sequence[str] | None = None) -> Model:
    """Load a ``.keras``/``.h5`` file and freeze its inference function (see module docstring)."""
    import keras
    import tensorflow as tf

    from graphopt.loaders.saved_model_tf2 import freeze_function, restrict

    try:
        # safe_mode: a Lambda layer's pickled Python code is refused (Keras's own check; docs/guide/security.md).
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError/OSError/zipfile errors alike
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"Keras cannot load the file: {text[:300]}", where=path,
                         hint="custom layers need their module importable; a corrupt file must be saved again"
                         ) from None
    model_inputs = list(model.inputs or [])
    if not model_inputs:
        raise InputError("the Keras model has no defined inputs (a subclassed model never called?)", where=path,
                         hint="save a functional or Sequential model, or export a SavedModel with model.export")
    names = [_input_name(t, i) for i, t in enumerate(model_inputs)]
    specs = [tf.TensorSpec(shape=tuple(t.shape), dtype=tf.as_dtype(t.dtype), name=n)
             for t, n in zip(model_inputs, names)]
    output_names = list(getattr(model, "output_names", None) or [])

    @tf.function(input_signature=specs)
    def serve(*args):
        result = model(list(args) if len(args) > 1 else args[0], training=False)
        flat = tf.nest.flatten(result)
        keys = output_names if len(output_names) == len(flat) else [f"output_{i}" for i in range(len(flat))]
        return dict(zip(keys, flat))

    fn = serve.get_concrete_function()
    frozen = freeze_function(fn, key=signature or DEFAULT_SIGNATURE, source=path,
                             fmt="keras" if path.lower().endswith(".keras") else "h5", input_names=names)
    frozen.metadata["keras_model"] = model.name
    return restrict(frozen, inputs, outputs)
