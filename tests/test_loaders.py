"""Every loader round-trips: load -> save -> load gives the same outputs on the same inputs (real TensorFlow)."""

from __future__ import annotations

import hashlib
import shutil
import time

import models
import numpy as np
import pytest

from graphopt.errors import InputError
from graphopt.loaders import detect, load
from graphopt.runtime.session import random_inputs, run_model
from graphopt.savers import save


def _same(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert set(a) == set(b)
    for key in a:
        if a[key].dtype.kind in "OSU":  # strings: exact
            assert a[key].tolist() == b[key].tolist(), key
        else:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=atol, err_msg=key)


def roundtrip(model, tmp_path, feeds=None, fmt="saved_model", **load_kwargs):
    """Save ``model``, load it back, and check both give the same outputs. Returns (reloaded, outputs)."""
    feeds = feeds if feeds is not None else random_inputs(model.signature, batch=2)
    before = run_model(model, feeds)
    out = tmp_path / {"saved_model": "out", "pb": "out.pb", "pbtxt": "out.pbtxt"}[fmt]
    save(model, out, format=fmt)
    again = load(out, **load_kwargs)
    assert set(again.signature.inputs) == set(model.signature.inputs)
    assert set(again.signature.outputs) == set(model.signature.outputs)
    after = run_model(again, feeds)
    _same(before, after)
    return again, before


def _no_variables(model) -> None:
    ops = {n.op for n in model.graph_def.node}
    for fn in model.graph_def.library.function:
        ops |= {n.op for n in fn.node_def}
    assert not ops & {"VariableV2", "VarHandleOp", "ReadVariableOp", "Placeholder_resource"}


def _same_as_tf(path, model, feeds) -> None:
    """The frozen model answers as TensorFlow's own load of the SavedModel does."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(path)).signatures[model.signature.key]
    _same({k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in feeds.items()}).items()},
          run_model(model, feeds))


def test_tf2_saved_model_keras_export(model_path, tmp_path):
    path = model_path("keras_export", models.keras_saved_model)
    assert detect(path) == "saved_model"
    model = load(path)
    # Frozen from the protos and the checkpoint, without tf.saved_model.load (the weights exist once).
    assert model.metadata["freeze"] == "direct"
    _same_as_tf(path, model, random_inputs(model.signature, batch=2))
    # Readers read the frozen weights themselves: no Identity chains (runtime Grappler would fold them at the
    # first request, copying every weight) and no colocation with variables that are gone.
    consts = {n.name for n in model.graph_def.node if n.op == "Const"}
    assert not [n.name for n in model.graph_def.node if n.op == "Identity" and n.input[0] in consts]
    assert not [n.name for n in model.graph_def.node if "_class" in n.attr and
                any(s.decode().removeprefix("loc:@") in consts for s in n.attr["_class"].list.s)]
    assert model.signature.key == "serving_default"
    assert list(model.signature.inputs) == ["image"]
    spec = model.signature.inputs["image"]
    assert (spec.dtype, spec.shape) == ("float32", (None, 8, 8, 3))
    _no_variables(model)
    again, _ = roundtrip(model, tmp_path)
    assert again.format == "saved_model_tf1"  # graphopt writes TF1-style SavedModels TF Serving loads directly
    assert again.signature.outputs["output_0"].shape == (None, 3)


def test_tf2_string_lookup_answers_after_freeze_and_export(model_path, tmp_path):
    path = model_path("string_lookup", models.string_lookup_saved_model)
    data = np.load(str(path) + ".expected.npz", allow_pickle=True)
    feeds = {"words": data["words"].astype(object)}
    model = load(path)
    assert model.metadata["freeze"].startswith("tf.saved_model.load (")  # a table: not a variable
    assert len(model.init_ops) == 1
    ops = {n.name: n.op for n in model.graph_def.node}
    assert ops[model.init_ops[0]] == "InitializeTableV2"
    assert "HashTableV2" in ops.values()
    assert not [n for n in model.graph_def.node if n.op == "Placeholder" and n.attr["dtype"].type == 20]
    frozen = run_model(model, feeds)
    np.testing.assert_allclose(frozen["output_0"], data["expected"], rtol=1e-5, atol=1e-6)
    again, _ = roundtrip(model, tmp_path, feeds)
    np.testing.assert_allclose(run_model(again, feeds)["output_0"], data["expected"], rtol=1e-5, atol=1e-6)
    # Known and unknown words land on different rows: the table really answers, it is not all-OOV.
    assert not np.allclose(frozen["output_0"][0], frozen["output_0"][1])


def test_tf2_functional_control_flow_survives_freeze(model_path, tmp_path):
    import tensorflow as tf

    path = model_path("control_flow", models.control_flow_saved_model)
    model = load(path)
    assert model.metadata["freeze"] == "direct"  # TF's converter rewrote the handles passed into the bodies
    ops = {n.op for n in model.graph_def.node}
    assert ops & {"While", "StatelessWhile"} and ops & {"If", "StatelessIf"}
    assert model.graph_def.library.function  # bodies kept, frozen
    _no_variables(model)
    feeds = {"x": np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4), "steps": np.array(3, np.int32)}
    original = tf.saved_model.load(str(path)).signatures["serving_default"](
        x=tf.constant(feeds["x"]), steps=tf.constant(feeds["steps"]))
    _same({k: v.numpy() for k, v in original.items()}, run_model(model, feeds))
    roundtrip(model, tmp_path, feeds)


def test_tf2_embedding_lookup_and_shared_variable_freeze_directly(model_path, tmp_path):
    path = model_path("embedding", models.embedding_saved_model)
    model = load(path)
    assert model.metadata["freeze"] == "direct"
    _no_variables(model)
    ops = {n.op for n in model.graph_def.node}
    assert "GatherV2" in ops and "ResourceGather" not in ops
    feeds = {"ids": np.array([[0, 3, 9], [9, 1, 1]], np.int32)}
    _same_as_tf(path, model, feeds)
    # Other signatures of the same model freeze the same way.
    second = load(path, signature="norms")
    assert second.metadata["freeze"] == "direct"
    _same_as_tf(path, second, feeds)


def test_tf2_checkpoint_that_does_not_match_falls_back_to_tf(model_path, tmp_path):
    # A variables/ folder from another model: the direct path must not guess, tf.saved_model.load decides.
    path = tmp_path / "mixed"
    shutil.copytree(model_path("keras_export", models.keras_saved_model), path)
    shutil.rmtree(path / "variables")
    shutil.copytree(model_path("embedding", models.embedding_saved_model) / "variables", path / "variables")
    with pytest.raises(InputError) as err:
        load(path)
    assert err.value.where == str(path)


def test_tf1_saved_model_custom_tags_and_signature(model_path, tmp_path):
    path = model_path("tf1_custom", models.tf1_saved_model)
    assert detect(path) == "saved_model_tf1"
    with pytest.raises(InputError) as err:
        load(path)  # two signatures, neither serving_default
    assert "logits" in err.value.hint and "scores" in err.value.hint
    with pytest.raises(InputError) as err:
        load(path, signature="nope")
    assert "available signatures: logits, scores" in err.value.hint
    with pytest.raises(InputError) as err:
        load(path, signature="scores", tags=["serve"])
    assert "cpu" in err.value.hint
    model = load(path, signature="scores")  # one meta graph: tags auto-detected
    assert model.metadata["tags"] == ["cpu", "custom"]
    assert set(model.signature.inputs) == {"x", "words"}
    assert model.signature.inputs["words"].dtype == "string"
    # The text-file table became Consts: no asset path, no file initialiser left.
    assert not any(n.op.startswith("InitializeTableFromTextFile") for n in model.graph_def.node)
    assert str(path) not in str(model.graph_def)
    feeds = {"x": np.ones((3, 4), np.float32), "words": np.array([b"banana", b"nope", b"date"], dtype=object)}
    out = run_model(model, feeds)
    assert out["word_ids"].tolist() == [1, -1, 3]
    again, _ = roundtrip(model, tmp_path, feeds)
    assert again.signature.key == "scores"
    logits = load(path, signature="logits", tags=["custom", "cpu"])
    assert list(logits.signature.outputs) == ["logits"] and logits.init_ops == []


def test_tf1_hub_module_folder(model_path, tmp_path):
    path = model_path("hub_tf1", models.tf1_hub_module)
    assert detect(path) == "hub_tf1"
    model = load(path)
    assert model.format == "hub_tf1" and model.signature.key == "default"
    assert model.metadata["tags"] == []  # hub.Module's meta graph, not the ["train"] one
    assert list(model.signature.outputs) == ["default"]
    _no_variables(model)
    roundtrip(model, tmp_path)


def test_hub_handle_offline_and_uncached_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GRAPHOPT_HUB_TIMEOUT", "5")
    handle = "https://tfhub.dev/graphopt-tests/does-not-exist/1"
    start = time.monotonic()
    with pytest.raises(InputError) as err:
        load(handle)
    assert time.monotonic() - start < 60
    assert "cannot resolve TF Hub handle" in err.value.message
    assert hashlib.sha1(handle.encode()).hexdigest() in err.value.hint
    assert not (tmp_path / "cache" / (hashlib.sha1(handle.encode()).hexdigest() + ".lock")).exists()


def test_hub_handle_from_cache_loads_without_network(model_path, tmp_path, monkeypatch):
    module = model_path("hub_tf1", models.tf1_hub_module)
    handle = "https://tfhub.dev/graphopt-tests/cached-module/1"
    cache = tmp_path / "cache"
    # tensorflow_hub's compressed resolver keeps a handle at $TFHUB_CACHE_DIR/<sha1(handle)>.
    shutil.copytree(module, cache / hashlib.sha1(handle.encode("utf8")).hexdigest())
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
    monkeypatch.setenv("GRAPHOPT_HUB_TIMEOUT", "1")
    model = load(handle)
    assert model.source == handle and model.metadata["resolved"].startswith(str(cache))
    _same(run_model(model, random_inputs(model.signature)), run_model(load(module), random_inputs(model.signature)))


def test_tf2_hub_folder_without_signatures_uses_call(tmp_path):
    import tensorflow as tf

    class Embed(tf.Module):
        def __init__(self):
            self.w = tf.Variable(tf.random.stateless_normal((3, 2), seed=(4, 2)))

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def __call__(self, x):
            return tf.matmul(x, self.w)

    folder = tmp_path / "hub2"
    tf.saved_model.save(Embed(), str(folder), signatures={})
    model = load(folder)
    assert model.metadata["function"] == "__call__"
    assert list(model.signature.outputs) == ["output_0"]
    roundtrip(model, tmp_path)


def test_tf2_folder_without_signatures_or_call_is_a_clear_error(tmp_path):
    import tensorflow as tf

    module = tf.Module()
    module.v = tf.Variable(1.0)
    tf.saved_model.save(module, str(tmp_path / "bare"), signatures={})
    with pytest.raises(InputError) as err:
        load(tmp_path / "bare")
    assert "no signatures and no __call__" in err.value.message


@pytest.mark.parametrize("name", ["frozen.pb", "frozen.pbtxt"])
def test_frozen_graph_inferred_inputs_and_outputs(model_path, tmp_path, name):
    path = model_path(name, models.frozen_graph)
    model = load(path)
    assert list(model.signature.inputs) == ["input"]
    assert sorted(model.signature.outputs) == ["peak", "prob"]  # not the Assert, the NoOp or the Consts
    assert model.signature.inputs["input"].shape == (None, 5)
    roundtrip(model, tmp_path, fmt="pb" if name.endswith(".pb") else "pbtxt")
    given = load(path, inputs=["input:0"], outputs=["prob"])
    assert list(given.signature.outputs) == ["prob"]
    with pytest.raises(InputError) as err:
        load(path, outputs=["porb"])
    assert "prob" in err.value.hint


@pytest.mark.parametrize("name", ["model.keras", "model.h5"])
def test_keras_files(model_path, tmp_path, name):
    import keras

    path = model_path(name, models.keras_file)
    model = load(path)
    original = keras.models.load_model(str(path), compile=False)
    assert list(model.signature.inputs) == ["image", "extra"]
    assert sorted(model.signature.outputs) == sorted(original.output_names)
    feeds = random_inputs(model.signature, batch=2)
    expected = original([feeds["image"], feeds["extra"]], training=False)
    got = run_model(model, feeds)
    for key, value in zip(original.output_names, expected):
        np.testing.assert_allclose(got[key], np.asarray(value), rtol=1e-5, atol=1e-6)
    roundtrip(model, tmp_path, feeds)


def test_tf1_checkpoint_infers_served_output(model_path, tmp_path):
    folder = model_path("ckpt", models.tf1_checkpoint)
    prefix = folder / "model.ckpt"
    assert detect(prefix) == "checkpoint" and detect(str(prefix) + ".meta") == "checkpoint"
    model = load(prefix)
    assert model.metadata["inferred_outputs"] == ["probs"]  # not loss, train_step or save/
    assert list(model.signature.inputs) == ["x"]  # labels only feeds training
    _no_variables(model)
    roundtrip(model, tmp_path)
    explicit = load(str(prefix) + ".meta", inputs=["x"], outputs=["logits"])
    assert list(explicit.signature.outputs) == ["logits"]


def _file(name: str, data: bytes):
    def make(folder):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path.parent if name.endswith("saved_model.pb") else path
    return make


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (_file("empty.pb", b""), "empty"),
    (_file("bad.pb", b"\xff\x00garbage\x13"), "not a binary GraphDef"),
    (_file("bad.pbtxt", b"node { nam: 1 }"), "not a text GraphDef"),
    (_file("m.onnx", b"x"), "unknown model format"),
    (_file("sm/saved_model.pb", b"\x01\x02"), "saved_model.pb cannot be read"),
    (_file("bad.keras", b"PK-not-a-zip"), "Keras cannot load"),
    (_file("ckpt.meta", b"\x01\x02"), "not a MetaGraphDef"),
])
def test_load_errors_name_the_path(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(InputError) as err:
        load(path)
    assert message in err.value.message
    assert str(path) in err.value.where and err.value.hint


def test_tf2_tables_of_other_dtypes_read_inside_a_while_loop(model_path, tmp_path):
    path = model_path("tables_in_loop", models.tables_in_loop_saved_model)
    data = np.load(str(path) + ".expected.npz")
    model = load(path)
    assert len(model.init_ops) == 2  # the mutable table too, re-created from its exported contents
    feeds = {"ids": data["ids"]}
    out = run_model(model, feeds)
    assert out["name"].tolist() == data["name"].tolist() == [b"one", b"three", b"?", b"two"]
    np.testing.assert_allclose(out["acc"], data["acc"])
    roundtrip(model, tmp_path, feeds)


def test_keras_file_with_string_lookup(model_path, tmp_path):
    path = model_path("lookup.keras", models.string_lookup_keras_file)
    data = np.load(str(path) + ".expected.npz", allow_pickle=True)
    feeds = {"words": data["words"].astype(object)}
    model = load(path)
    assert len(model.init_ops) == 1 and list(model.signature.outputs) == ["scores"]
    np.testing.assert_allclose(run_model(model, feeds)["scores"], data["expected"], rtol=1e-5, atol=1e-6)
    roundtrip(model, tmp_path, feeds)
