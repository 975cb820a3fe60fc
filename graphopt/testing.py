"""Helpers for testing passes and plugins on real architectures (used by graphopt's own tests and benchmarks).

``keras.applications.*(weights=None)`` gives real architectures with trivial
batch-norm statistics (mean 0, variance 1, gamma 1, beta 0): folding or
quantizing those proves nothing, so :func:`randomize_batch_norms` gives them
non-trivial values first. :func:`frozen_keras` freezes a Keras model into a
:class:`~graphopt.model.Model` the way a TF2 SavedModel loader would.
"""

from __future__ import annotations

from typing import Any

from graphopt.model import Model, Signature, TensorSpec


def randomize_batch_norms(keras_model: Any, seed: int = 0) -> Any:
    """Random, non-trivial statistics in every BatchNormalization layer (Keras 3 and tf_keras); returns the model."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for layer in keras_model.layers:
        if not type(layer).__name__.startswith("BatchNormalization"):  # tf_keras names it BatchNormalizationV2 too
            continue
        values = []
        for var in layer.weights:
            shape, name = tuple(var.shape), var.name
            if "variance" in name:
                values.append(rng.uniform(0.5, 2.0, shape))
            elif "mean" in name:
                values.append(rng.normal(0.0, 0.5, shape))
            elif "gamma" in name:
                values.append(rng.uniform(0.5, 1.5, shape))
            else:
                values.append(rng.normal(0.0, 0.2, shape))
        layer.set_weights([v.astype("float32") for v in values])
    return keras_model


def frozen_keras(keras_model: Any, *, batch: int = 1, input_name: str = "input") -> Model:
    """A Keras model frozen into a Model with a fixed batch; signature ``input`` -> ``output``."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = tf.TensorSpec([batch, *keras_model.input_shape[1:]], tf.float32, name=input_name)
    fn = tf.function(lambda x: keras_model(x, training=False)).get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(fn)
    inp, out = frozen.inputs[0], frozen.outputs[0]
    sig = Signature(inputs={"input": TensorSpec(inp.name, "float32", tuple(inp.shape))},
                    outputs={"output": TensorSpec(out.name, out.dtype.name, tuple(out.shape))})
    return Model(frozen.graph.as_graph_def(), sig, source=keras_model.name, format="keras")
