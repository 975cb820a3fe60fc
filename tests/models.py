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


# Shared with the benchmarks and with plugin authors' tests.
from graphopt.testing import frozen_keras, randomize_batch_norms  # noqa: E402,F401


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


# --- loaders / savers (tests/test_loaders.py, test_savers.py, test_cli_optimize.py) ------------------------------

LOOKUP_VOCAB = ["apple", "banana", "cherry", "date"]


def string_lookup_keras_model():
    """A Keras model that maps words through a ``StringLookup`` vocabulary, then an embedding."""
    import keras

    keras.utils.set_random_seed(1)
    words = keras.Input(shape=(3,), dtype="string", name="words")
    ids = keras.layers.StringLookup(vocabulary=LOOKUP_VOCAB, name="lookup")(words)
    x = keras.layers.Embedding(len(LOOKUP_VOCAB) + 1, 4, name="embed")(ids)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(2, name="scores")(x)
    return keras.Model(words, out)


def string_lookup_saved_model(path):
    """Keras 3 ``model.export`` of :func:`string_lookup_keras_model`; expected outputs for known words go
    to ``<path>.expected.npz`` (from the Keras model itself)."""
    import numpy as np

    model = string_lookup_keras_model()
    words = np.array([["apple", "date", "zzz"], ["cherry", "banana", "apple"]], dtype=object)
    expected = np.asarray(model(words.astype(str)))
    model.export(str(path), verbose=False)
    np.savez(str(path) + ".expected.npz", words=words.astype(bytes), expected=expected)


def small_keras_model(two_inputs: bool = False):
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input(shape=(8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(image)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    inputs = [image]
    if two_inputs:
        extra = keras.Input(shape=(2,), name="extra")
        inputs.append(extra)
        x = keras.layers.Concatenate()([x, extra])
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(x)
    if two_inputs:
        embed = keras.layers.Dense(2, name="embedding")(x)
        return keras.Model(inputs, [probs, embed])
    return keras.Model(inputs, probs)


def keras_saved_model(path):
    """A small conv net exported with Keras 3 ``model.export`` (TF2 SavedModel)."""
    small_keras_model().export(str(path), verbose=False)


def keras_file(path):
    """A two-input, two-output Keras model saved to ``path`` (``.keras`` or legacy ``.h5`` by extension)."""
    small_keras_model(two_inputs=True).save(str(path))


def control_flow_saved_model(path):
    """A TF2 SavedModel whose signature runs a functional ``While`` and ``If`` reading variables."""
    import tensorflow as tf

    class Loop(tf.Module):
        def __init__(self):
            self.w = tf.Variable(tf.random.stateless_normal((4, 4), seed=(1, 2)), name="w")
            self.scale = tf.Variable(0.5, name="scale")

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x"),
                                      tf.TensorSpec([], tf.int32, name="steps")])
        def serve(self, x, steps):
            def body(i, v):
                return i + 1, tf.tanh(tf.matmul(v, self.w))

            _, y = tf.while_loop(lambda i, v: i < steps, body, [tf.constant(0), x])
            y = tf.cond(tf.reduce_sum(y) > 0, lambda: y * self.scale, lambda: y - self.scale)
            return {"y": y, "total": tf.reduce_sum(y, axis=1)}

    module = Loop()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def _tf1_graph_with_vocab(vocab_file):
    """A TF1 graph: variables, a text-file vocabulary table, two outputs. Returns (graph, tensors)."""
    import numpy as np
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None, 4], name="x")
        words = v1.placeholder(tf.string, [None], name="words")
        # TextFileInitializer puts a constant path in ASSET_FILEPATHS; the Builder copies that file to
        # assets/ and the loader feeds the copy's path.
        filename = tf.constant(str(vocab_file), name="vocab_path")
        table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(filename, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                          tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), default_value=-1)
        ids = table.lookup(words)
        w = v1.get_variable("w", initializer=np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32))
        b = v1.get_variable("b", initializer=np.linspace(-1, 1, 3).astype(np.float32))
        logits = tf.add(tf.matmul(x, w), b, name="logits")
        scores = tf.nn.softmax(logits, name="scores")
        word_ids = tf.identity(ids, name="word_ids")
    return g, {"x": x, "words": words, "logits": logits, "scores": scores, "word_ids": word_ids}


def tf1_saved_model(path, tags=("custom", "cpu"), signatures=("scores", "logits")):
    """A TF1 SavedModel with custom ``tags``, non-default signature keys and a vocabulary table from an asset file.

    The vocabulary file is written to a temporary folder that is deleted afterwards, so only
    the SavedModel's own ``assets/`` copy exists.
    """
    import tempfile
    from pathlib import Path

    import tensorflow as tf

    v1 = tf.compat.v1
    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.txt"
        vocab.write_text("\n".join(LOOKUP_VOCAB) + "\n")
        g, t = _tf1_graph_with_vocab(vocab)
        with g.as_default(), v1.Session(graph=g) as sess:
            sess.run([v1.global_variables_initializer(), v1.tables_initializer()])
            info = v1.saved_model.utils.build_tensor_info
            sig_defs = {
                signatures[0]: v1.saved_model.signature_def_utils.predict_signature_def(
                    {"x": t["x"], "words": t["words"]}, {"scores": t["scores"], "word_ids": t["word_ids"]}),
                signatures[1]: v1.saved_model.signature_def_utils.build_signature_def(
                    {"x": info(t["x"])}, {"logits": info(t["logits"])}, "tensorflow/serving/predict"),
            }
            builder = v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(sess, list(tags), signature_def_map=sig_defs,
                                                 main_op=v1.tables_initializer(), strip_default_attrs=True,
                                                 assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS))
            builder.save()


def tf1_hub_module(path):
    """A TF1 Hub-format module folder: TF1 SavedModel with tags ``[]`` (and ``["train"]``), signature ``default``,
    variables, and ``tfhub_module.pb`` (a ``ModuleDef`` with ``format: FORMAT_V3``)."""
    import numpy as np
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        images = v1.placeholder(tf.float32, [None, 6, 6, 2], name="images")
        k = v1.get_variable("module/conv/kernel",
                            initializer=np.random.default_rng(5).standard_normal((3, 3, 2, 4)).astype(np.float32))
        h = tf.nn.relu(tf.nn.conv2d(images, k, 1, "SAME"))
        feats = tf.reduce_mean(h, axis=[1, 2], name="module/features")
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            sig = v1.saved_model.signature_def_utils.predict_signature_def({"images": images}, {"default": feats})
            builder = v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(sess, [], signature_def_map={"default": sig})
            # hub.create_module_spec exports a second, training meta graph; loaders must pick [] by default.
            builder.add_meta_graph(["train"], signature_def_map={"default": sig})
            builder.save()
    try:  # tensorflow_hub >= 0.13 no longer ships module_def_pb2; the proto is one enum field
        from tensorflow_hub import module_def_pb2  # type: ignore[attr-defined]

        data = module_def_pb2.ModuleDef(format=module_def_pb2.ModuleDef.FORMAT_V3).SerializeToString()
    except ImportError:
        data = bytes([0x08, 0x03])  # field 1 (format), varint 3 (FORMAT_V3)
    (path / "tfhub_module.pb").write_bytes(data)


def frozen_graph(path):
    """A frozen GraphDef (``.pb`` binary or ``.pbtxt`` text, by extension): Placeholder in, two sinks out,
    plus an Assert and a NoOp that are not outputs."""
    import numpy as np
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None, 5], name="input")
        w = tf.constant(np.random.default_rng(7).standard_normal((5, 3)).astype(np.float32), name="w")
        y = tf.matmul(x, w, name="matmul")
        tf.nn.sigmoid(y, name="prob")
        tf.reduce_max(y, axis=1, name="peak")
        v1.Assert(tf.reduce_all(tf.math.is_finite(y)), [y], name="check")
        tf.no_op(name="noop")
    tf.io.write_graph(g.as_graph_def(), str(path.parent), path.name, as_text=str(path).endswith(".pbtxt"))


def tf1_checkpoint(path):
    """A TF1 training checkpoint in folder ``path`` (prefix ``path/model.ckpt``): variables, a labels
    placeholder, a loss and a GradientDescent step; no signature_def. The served output is ``probs``."""
    import numpy as np
    import tensorflow as tf

    v1 = tf.compat.v1
    path.mkdir(parents=True)
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None, 4], name="x")
        labels = v1.placeholder(tf.float32, [None, 2], name="labels")
        w = v1.get_variable("dense/w", initializer=np.random.default_rng(11).standard_normal((4, 2)).astype(np.float32))
        b = v1.get_variable("dense/b", initializer=np.array([0.1, -0.2], np.float32))
        logits = tf.add(tf.matmul(x, w), b, name="logits")
        tf.nn.softmax(logits, name="probs")
        loss = tf.reduce_mean(tf.square(logits - labels), name="loss")
        step = v1.train.GradientDescentOptimizer(0.1).minimize(loss, name="train_step")
        saver = v1.train.Saver()
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            rng = np.random.default_rng(0)
            sess.run(step, {x: rng.random((8, 4), np.float32), labels: rng.random((8, 2), np.float32)})
            saver.save(sess, str(path / "model.ckpt"))


def mobilenet_v2_saved_model(path):
    """``keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3))`` with random BN statistics,
    exported as a TF2 SavedModel."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3))
    randomize_batch_norms(model)
    model.export(str(path), verbose=False)


def tables_in_loop_saved_model(path):
    """A TF2 module with an int64->string StaticHashTable and a string->float MutableHashTable, the latter read
    inside a functional While; expected outputs for ``ids`` go to ``<path>.expected.npz``."""
    import numpy as np
    import tensorflow as tf

    class Tables(tf.Module):
        def __init__(self):
            self.names = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant([1, 2, 3], tf.int64), tf.constant(["one", "two", "three"])), default_value="?")
            self.weights = tf.lookup.experimental.MutableHashTable(tf.string, tf.float32, default_value=-1.0)
            self.weights.insert(tf.constant(["one", "three"]), tf.constant([1.5, 3.5]))
            self.scale = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="ids")])
        def serve(self, ids):
            def body(i, acc):
                step = tf.reshape(self.weights.lookup(self.names.lookup(ids)), tf.shape(acc))
                return i + 1, acc + step * self.scale

            _, acc = tf.while_loop(lambda i, a: i < 2, body, [tf.constant(0), tf.zeros_like(ids, tf.float32)])
            return {"name": self.names.lookup(ids), "acc": acc}

    module = Tables()
    ids = np.array([1, 3, 7, 2], np.int64)
    expected = module.serve(tf.constant(ids))
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    np.savez(str(path) + ".expected.npz", ids=ids, name=expected["name"].numpy().astype(bytes),
             acc=expected["acc"].numpy())


def string_lookup_keras_file(path):
    """:func:`string_lookup_keras_model` saved as a ``.keras`` file; expected outputs in ``<path>.expected.npz``."""
    import numpy as np

    model = string_lookup_keras_model()
    words = np.array([["apple", "date", "zzz"], ["cherry", "banana", "apple"]], dtype=object)
    expected = np.asarray(model(words.astype(str)))
    model.save(str(path))
    np.savez(str(path) + ".expected.npz", words=words.astype(bytes), expected=expected)


def unsafe_ops_saved_model(path):
    """A TF2 SavedModel whose signature reads a file (``ReadFile``) and calls Python (``EagerPyFunc``).

    The file it reads, ``<path>.config.txt``, holds "1234" and lives beside (not inside) the model.
    """
    from pathlib import Path

    import tensorflow as tf

    config = Path(str(path) + ".config.txt")
    config.write_text("1234")

    class Untrusted(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x):
            length = tf.cast(tf.strings.length(tf.io.read_file(str(config))), tf.float32)
            doubled = tf.py_function(lambda v: v * 2.0, [x], tf.float32)
            doubled.set_shape([None, 2])
            return {"y": doubled + length}

    module = Untrusted()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def tf1_saved_model_writing_at_load(path):
    """A TF1 SavedModel whose main op (run by the loader) writes ``<path>.written`` with ``WriteFile``."""
    import numpy as np
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None, 2], name="x")
        w = v1.get_variable("w", initializer=np.ones((2, 2), np.float32))
        y = tf.matmul(x, w, name="y")
        main_op = tf.io.write_file(str(path) + ".written", "written while loading", name="write_at_load")
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(path))
            sig = v1.saved_model.signature_def_utils.predict_signature_def({"x": x}, {"y": y})
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig},
                                                 main_op=main_op)
            builder.save()


def tf2_saved_model_writing_at_load(path):
    """A TF2 SavedModel with a lookup table whose initializer (run by ``tf.saved_model.load``) also writes
    ``<path>.written`` with ``WriteFile``."""
    import tensorflow as tf

    target = str(path) + ".written"

    class Table(tf.saved_model.experimental.TrackableResource):
        def _create_resource(self):
            return tf.raw_ops.HashTableV2(key_dtype=tf.string, value_dtype=tf.int64)

        def _initialize(self):
            tf.io.write_file(target, "written while loading")
            return tf.raw_ops.LookupTableImportV2(table_handle=self.resource_handle, keys=tf.constant(["a", "b"]),
                                                  values=tf.constant([1, 2], tf.int64))

    class Lookup(tf.Module):
        def __init__(self):
            self.table = Table()

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="words")])
        def serve(self, words):
            return {"ids": tf.raw_ops.LookupTableFindV2(table_handle=self.table.resource_handle, keys=words,
                                                        default_value=tf.constant(-1, tf.int64))}

    module = Lookup()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def tf1_checkpoint_writing_at_load(path):
    """A TF1 checkpoint (prefix ``path/model.ckpt``) whose table-initializer collection holds a ``WriteFile``
    of ``<path>.written``: the checkpoint loader runs that collection."""
    import numpy as np
    import tensorflow as tf

    v1 = tf.compat.v1
    path.mkdir(parents=True)
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None, 2], name="x")
        w = v1.get_variable("w", initializer=np.ones((2, 2), np.float32))
        tf.matmul(x, w, name="y")
        v1.add_to_collection(v1.GraphKeys.TABLE_INITIALIZERS,
                             tf.io.write_file(str(path) + ".written", "written while loading", name="write_at_load"))
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            v1.train.Saver().save(sess, str(path / "model.ckpt"))


def embedding_saved_model(path):
    """A TF2 SavedModel reading an embedding table (ResourceGather) and one variable from two signatures."""
    import tensorflow as tf

    class Embed(tf.Module):
        def __init__(self):
            self.table = tf.Variable(tf.random.stateless_normal((10, 4), seed=(3, 4)), name="table")
            self.scale = tf.Variable([1.0, 2.0, 3.0, 4.0], name="scale")

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.int32, name="ids")])
        def serve(self, ids):
            rows = tf.gather(self.table, ids) * self.scale
            return {"pooled": tf.reduce_mean(rows, axis=1)}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.int32, name="ids")])
        def norms(self, ids):
            return {"norm": tf.norm(tf.gather(self.table, ids), axis=-1)}

    module = Embed()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve, "norms": module.norms})



# --- hostile inputs (issue 11): user errors that must not be "internal error" --------------------------------------

HOSTILE_NAME = "\x1b[31mRED\x1b[0m[bold]B[/bold]\x07"  # an ANSI colour, rich markup and a bell


def placeholder_50_dims(path):
    """A frozen ``.pb`` whose input has 50 unknown dimensions (random inputs would need 32**49 values)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None] * 50, name="x")
        tf.identity(x * 2.0, name="y")
    path.write_bytes(g.as_graph_def().SerializeToString())


def _tf1_builder_model(path, *, input_dtype=None, input_key="x", output_key="y"):
    """A TF1 SavedModel ``y = 2x`` (x float32 [?, 3]) whose signature may lie about the input's dtype."""
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        y = tf.identity(x * 2.0, name="y")
        with v1.Session(graph=g) as sess:
            builder = v1.saved_model.Builder(str(path))
            x_info = v1.saved_model.utils.build_tensor_info(x)
            if input_dtype is not None:
                x_info.dtype = input_dtype.as_datatype_enum
            sig = v1.saved_model.signature_def_utils.build_signature_def(
                {input_key: x_info}, {output_key: v1.saved_model.utils.build_tensor_info(y)},
                "tensorflow/serving/predict")
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig})
            builder.save()


def signature_dtype_mismatch_saved_model(path):
    """A TF1 SavedModel whose signature declares its float32 input as int32."""
    import tensorflow as tf

    _tf1_builder_model(path, input_dtype=tf.int32)


def hostile_signature_keys_saved_model(path):
    """A TF1 SavedModel whose signature keys hold an ANSI escape, rich markup and a bell."""
    _tf1_builder_model(path, input_key="x" + HOSTILE_NAME, output_key="y" + HOSTILE_NAME)


def hostile_node_name_graph(path):
    """A frozen ``.pb`` with an ANSI escape and markup in a node name (and so in the loader's error)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        tf.identity(x * 2.0, name="y")
    graph_def = g.as_graph_def()
    renamed = "mul" + HOSTILE_NAME
    for node in graph_def.node:
        node.name = renamed if node.name == "mul" else node.name
        node.input[:] = [renamed if i == "mul" else i for i in node.input]
    path.write_bytes(graph_def.SerializeToString())


def hostile_op_name_graph(path):
    """A frozen ``.pb`` whose multiplication's op type holds an ANSI escape and markup."""
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        tf.identity(x * 2.0, name="y")
    graph_def = g.as_graph_def()
    for node in graph_def.node:
        if node.name == "mul":
            node.op = "Mul" + HOSTILE_NAME
    path.write_bytes(graph_def.SerializeToString())


def abort_graph(path):
    """A frozen ``.pb`` whose output waits on an ``Abort`` op: running it ends the process with SIGABRT."""
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        stop = tf.raw_ops.Abort(error_msg="stop here")
        with tf.control_dependencies([stop]):
            tf.identity(x * 2.0, name="y")
    path.write_bytes(g.as_graph_def().SerializeToString())
