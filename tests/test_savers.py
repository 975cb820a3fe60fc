"""The SavedModel writer: TF Serving conventions, both TF loaders, init ops as main op, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest

import models
from graphopt.errors import OutputError
from graphopt.loaders import load
from graphopt.loaders.saved_model_tf1 import read_saved_model
from graphopt.runtime import random_inputs, run_model
from graphopt.savers import save, write_saved_model


@pytest.fixture(scope="module")
def lookup_model(model_path):
    path = model_path("string_lookup", models.string_lookup_saved_model)
    data = np.load(str(path) + ".expected.npz", allow_pickle=True)
    return load(path), data["words"].astype(object), data["expected"]


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_saved_model_follows_serving_conventions(lookup_model, tmp_path):
    model, _, _ = lookup_model
    out = save(model, tmp_path / "sm")
    proto = read_saved_model(out)
    assert len(proto.meta_graphs) == 1
    meta = proto.meta_graphs[0]
    assert list(meta.meta_info_def.tags) == ["serve"]
    sig = meta.signature_def["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    assert list(sig.inputs) == ["words"] and list(sig.outputs) == ["output_0"]
    assert sig.inputs["words"].dtype == 7  # DT_STRING
    assert [d.size for d in sig.inputs["words"].tensor_shape.dim] == [-1, 3]
    assert [d.size for d in sig.outputs["output_0"].tensor_shape.dim] == [-1, 2]
    assert "saved_model_main_op" in meta.collection_def  # TF Serving runs it at load: the table initialiser
    assert _leftovers(tmp_path) == []


def test_tf2_loader_signature_matches_run_model(lookup_model, tmp_path):
    import tensorflow as tf

    model, words, expected = lookup_model
    out = save(model, tmp_path / "sm")
    loaded = tf.saved_model.load(str(out), tags=["serve"])
    got = loaded.signatures["serving_default"](words=tf.constant(words))["output_0"].numpy()
    np.testing.assert_allclose(got, run_model(model, {"words": words})["output_0"], rtol=1e-6)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_tf1_session_loader_runs_main_op(lookup_model, tmp_path):
    import tensorflow as tf

    model, words, expected = lookup_model
    out = save(model, tmp_path / "sm")
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(out))
        sig = meta.signature_def["serving_default"]
        got = sess.run(sig.outputs["output_0"].name, {sig.inputs["words"].name: words})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_keeps_original_signature_key(model_path, tmp_path):
    import tensorflow as tf

    model = load(model_path("tf1_custom", models.tf1_saved_model), signature="scores")
    out = save(model, tmp_path / "sm")
    loaded = tf.saved_model.load(str(out), tags=["serve"])
    assert list(loaded.signatures) == ["scores"]
    feeds = random_inputs(model.signature, batch=3, vocabulary={"words": models.LOOKUP_VOCAB})
    got = loaded.signatures["scores"](**{k: tf.constant(v) for k, v in feeds.items()})
    want = run_model(model, feeds)
    for key in want:
        np.testing.assert_allclose(got[key].numpy(), want[key], rtol=1e-6)


@pytest.mark.parametrize("fmt, name", [("pb", "m.pb"), ("pbtxt", "m.pbtxt")])
def test_graph_def_formats(lookup_model, tmp_path, fmt, name):
    model, words, expected = lookup_model
    out = save(model, tmp_path / name)
    assert out.is_file()
    again = load(out, inputs=["words"], outputs=["Identity"])
    assert again.init_ops == model.init_ops  # table init ops found again in the GraphDef
    np.testing.assert_allclose(run_model(again, {"words": words})["Identity"], expected, rtol=1e-5, atol=1e-6)


def test_existing_output_needs_force(lookup_model, tmp_path):
    model, _, _ = lookup_model
    out = tmp_path / "sm"
    save(model, out)
    stamp = (out / "saved_model.pb").stat().st_mtime_ns
    with pytest.raises(OutputError) as err:
        save(model, out)
    assert "--force" in err.value.hint
    assert (out / "saved_model.pb").stat().st_mtime_ns == stamp
    (out / "stale.txt").write_text("old")
    save(model, out, force=True)
    assert not (out / "stale.txt").exists() and (out / "saved_model.pb").is_file()
    assert _leftovers(tmp_path) == []


def test_refuses_to_write_inside_the_input(model_path, tmp_path):
    import shutil

    src = tmp_path / "input"
    shutil.copytree(model_path("keras_export", models.keras_saved_model), src)
    model = load(src)
    before = sorted(p.name for p in src.rglob("*"))
    for dest in (src / "optimized", src):
        with pytest.raises(OutputError):
            save(model, dest, force=True)
    with pytest.raises(OutputError):
        save(model, tmp_path, force=True)  # would replace the folder holding the input
    assert sorted(p.name for p in src.rglob("*")) == before


def test_failed_write_leaves_nothing(lookup_model, tmp_path):
    from graphopt.model import Signature, TensorSpec

    model, _, _ = lookup_model
    broken = model.replace(signature=Signature(inputs=model.signature.inputs,
                                               outputs={"y": TensorSpec("no_such_node:0", "float32")}))
    with pytest.raises(OutputError) as err:
        save(broken, tmp_path / "sm")
    assert "nothing was written" in err.value.hint
    assert list(tmp_path.iterdir()) == []
    # A failed --force rewrite keeps the old output.
    save(model, tmp_path / "sm")
    with pytest.raises(OutputError):
        save(broken, tmp_path / "sm", force=True)
    assert (tmp_path / "sm" / "saved_model.pb").is_file() and _leftovers(tmp_path) == []


def test_write_saved_model_is_reusable(lookup_model, tmp_path):
    model, words, expected = lookup_model
    out = write_saved_model(model, tmp_path / "base" / "1")
    again = load(out)
    np.testing.assert_allclose(run_model(again, {"words": words})["output_0"], expected, rtol=1e-5, atol=1e-6)
