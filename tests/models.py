"""Builders for test models: each writes one model to ``path``. Used with the ``model_path`` fixture.

Every builder uses real TensorFlow; none downloads anything (``weights=None``).
"""

from __future__ import annotations


def tf1_seed_graph(*, loop: bool = True):
    """An in-memory TF1-style frozen Model like the seed's old Hub modules, for analysis/diff tests.

    It carries ``_class`` colocation attributes, ``Identity`` reads of weights, a
    ``CheckNumerics``, a TF1 ``while_loop`` (cyclic: NextIteration -> Merge) and a
    training-only branch (``labels`` -> ``train/*``) no output depends on.
    Returns ``(model, facts)`` where ``facts`` names the nodes of each kind.
    """
    import numpy as np
    import tensorflow as tf

    from graphopt.model import Model, Signature, TensorSpec

    v1 = tf.compat.v1
    cf_v2 = tf.compat.v1.control_flow_v2_enabled()
    v1.disable_control_flow_v2()  # a real TF1 loop (Enter/Merge/Switch/NextIteration), as old modules have
    try:
        g = tf.Graph()
        rng = np.random.default_rng(0)
        with g.as_default():
            x = v1.placeholder(tf.float32, [None, 8], name="x")
            w1 = tf.constant(rng.standard_normal((8, 16)).astype(np.float32), name="w1")
            with v1.colocate_with(w1):
                w1_read = tf.identity(w1, name="w1/read")
            h = tf.nn.relu(tf.matmul(x, w1_read, name="dense1/MatMul"), name="dense1/Relu")
            h = tf.debugging.check_numerics(h, "bad activations", name="dense1/CheckNumerics")
            w2 = tf.constant(rng.standard_normal((16, 4)).astype(np.float32), name="w2")
            with v1.colocate_with(w2):
                w2_read = tf.identity(w2, name="w2/read")
            logits = tf.matmul(h, w2_read, name="dense2/MatMul")
            if loop:
                _, logits = v1.while_loop(lambda i, v: i < 3, lambda i, v: (i + 1, v * 0.5),
                                          [tf.constant(0, name="loop/start"), logits], name="loop")
            probs = tf.nn.softmax(logits, name="probs")
            names_before_train = {op.name for op in g.get_operations()}
            labels = v1.placeholder(tf.float32, [None, 4], name="labels")
            with tf.name_scope("train"):
                loss = tf.reduce_mean(tf.square(logits - labels), name="loss")
                tf.multiply(loss, 0.01, name="scaled_loss")
        train = sorted({op.name for op in g.get_operations()} - names_before_train)
        graph_def = g.as_graph_def()
    finally:
        if cf_v2:
            v1.enable_control_flow_v2()
    sig = Signature(inputs={"x": TensorSpec("x:0", "float32", (None, 8))},
                    outputs={"probs": TensorSpec("probs:0", "float32", (None, 4))})
    facts = {
        "identity_reads": ["w1/read", "w2/read"],
        "check_numerics": ["dense1/CheckNumerics"],
        "train": train,
        "colocated": [n.name for n in graph_def.node if "_class" in n.attr],
    }
    del probs
    return Model(graph_def, sig, source="<tf1_seed_graph>", format="graph_def"), facts


def randomize_batch_norms(keras_model, seed: int = 0):
    """Give every BatchNormalization layer random, non-trivial statistics (``weights=None`` leaves mean 0, var 1).

    Without this, BN is the identity and folding or quantizing it proves nothing.
    """
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    for layer in keras_model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
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


def frozen_keras(keras_model, *, batch: int = 1, input_name: str = "input"):
    """A Keras model frozen into a graphopt Model (fixed batch), signature ``input`` -> ``output``."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from graphopt.model import Model, Signature, TensorSpec

    spec = tf.TensorSpec([batch, *keras_model.input_shape[1:]], tf.float32, name=input_name)
    fn = tf.function(lambda x: keras_model(x, training=False)).get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(fn)
    inp, out = frozen.inputs[0], frozen.outputs[0]
    sig = Signature(inputs={"input": TensorSpec(inp.name, "float32", tuple(inp.shape))},
                    outputs={"output": TensorSpec(out.name, out.dtype.name, tuple(out.shape))})
    return Model(frozen.graph.as_graph_def(), sig, source=keras_model.name, format="keras")


def small_mobilenet(seed: int = 0):
    """MobileNetV2 alpha=0.35 at 96x96 (weights=None, BN statistics randomized), frozen: a fast real architecture."""
    import keras

    keras.utils.set_random_seed(seed)
    km = keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), weights=None)
    return frozen_keras(randomize_batch_norms(km, seed))


def graph_model(build, inputs, *, init_ops=(), library_from=None):
    """A Model from TF1-style graph code: ``build(**placeholders) -> {key: tensor}``.

    ``inputs`` maps a key to ``(dtype, shape)``; placeholders are named after the keys.
    Used by the pass-framework tests (tests/test_native.py, tests/test_pipeline.py).
    """
    import tensorflow as tf

    from graphopt.model import Model, Signature, TensorSpec

    g = tf.Graph()
    with g.as_default():
        phs = {k: tf.compat.v1.placeholder(dt, shape, name=k) for k, (dt, shape) in inputs.items()}
        outs = build(**phs)
    sig = Signature(
        inputs={k: TensorSpec(t.name, t.dtype.name, None if t.shape.rank is None else tuple(t.shape.as_list()))
                for k, t in phs.items()},
        outputs={k: TensorSpec(t.name, t.dtype.name, None if t.shape.rank is None else tuple(t.shape.as_list()))
                 for k, t in outs.items()})
    return Model(g.as_graph_def(), sig, init_ops=list(init_ops))


def tf2_function_model():
    """A frozen TF2 function whose graph keeps a function library (a ``While`` loop's cond/body)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from graphopt.model import Model, Signature, TensorSpec

    w = tf.Variable(tf.random.stateless_normal([4, 4], seed=[1, 2]))

    @tf.function
    def f(x):
        y = tf.identity(tf.matmul(x, w))
        i = tf.constant(0)
        _, y = tf.while_loop(lambda i, v: i < 3, lambda i, v: (i + 1, v * 0.5 + 1.0), [i, y])
        return tf.nn.relu(y)

    frozen = convert_variables_to_constants_v2(f.get_concrete_function(tf.TensorSpec([None, 4], tf.float32, name="x")),
                                               lower_control_flow=False)  # keep While + its functions
    gd = frozen.graph.as_graph_def()
    sig = Signature(inputs={"x": TensorSpec(frozen.inputs[0].name, "float32", (None, 4))},
                    outputs={"y": TensorSpec(frozen.outputs[0].name, "float32", (None, 4))})
    return Model(gd, sig)
