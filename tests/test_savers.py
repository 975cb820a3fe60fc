"""The SavedModel writer: TF Serving conventions, both TF loaders, init ops as main op, atomic writes."""

from __future__ import annotations

import models
import numpy as np
import pytest

from graphopt.errors import OutputError
from graphopt.loaders import load
from graphopt.loaders.saved_model_proto import read_saved_model
from graphopt.runtime.session import random_inputs, run_model
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


def _big_weights_model():
    """x[?, 64] -> relu(x @ W + b) -> y, with W (16 KB) above the size the writer leaves out of the Builder's graph,
    plus a table initialiser (main op) so every part of the MetaGraphDef is there."""
    import tensorflow as tf

    rng = np.random.default_rng(3)

    def build(x):
        w = tf.constant(rng.normal(size=(64, 64)).astype(np.float32), name="w")
        b = tf.constant(rng.normal(size=(64,)).astype(np.float32), name="b")
        tf.raw_ops.HashTableV2(key_dtype=tf.string, value_dtype=tf.int64, shared_name="", name="table")
        return {"y": tf.nn.relu(tf.matmul(x, w) + b, name="y")}

    model = models.graph_model(build, {"x": (tf.float32, [None, 64])})
    with tf.Graph().as_default() as g:  # an init op the writer must group into the main op
        tf.graph_util.import_graph_def(model.graph_def, name="")
        table = g.get_tensor_by_name("table:0")
        tf.raw_ops.InitializeTableV2(table_handle=table, keys=tf.constant(["a"]), values=tf.constant([1], tf.int64),
                                     name="init_table")
        model = model.with_graph(g.as_graph_def()).replace(init_ops=["init_table"])
    return model


def test_big_constants_stream_into_saved_model_and_pb(tmp_path):
    """The SavedModel is written from a skeleton graph and the big constants put back while streaming: the file
    holds every value, parses as one SavedModel, and both TF loaders run it like the model."""
    import tensorflow as tf

    model = _big_weights_model()
    out = save(model, tmp_path / "sm")
    proto = read_saved_model(out)
    meta = proto.meta_graphs[0]
    saved = {n.name: n for n in meta.graph_def.node}
    for node in model.graph_def.node:
        if node.op == "Const":
            assert saved[node.name].attr["value"] == node.attr["value"], node.name
    assert saved["w"].attr["value"].tensor.ByteSize() > 16000
    assert "_output_shapes" in saved["y"].attr  # what the Builder's export adds, kept
    assert list(meta.collection_def["saved_model_main_op"].node_list.value) == ["graphopt_main_op"]
    assert list(meta.meta_info_def.tags) == ["serve"]
    x = np.random.default_rng(0).normal(size=(2, 64)).astype(np.float32)
    want = run_model(model, {"x": x})["y"]
    loaded = tf.saved_model.load(str(out), tags=["serve"])
    np.testing.assert_allclose(loaded.signatures["serving_default"](x=tf.constant(x))["y"].numpy(), want, rtol=1e-6)
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        sig = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(out)).signature_def["serving_default"]
        np.testing.assert_allclose(sess.run(sig.outputs["y"].name, {sig.inputs["x"].name: x}), want, rtol=1e-6)
    # the frozen .pb is streamed node by node too: it parses back to the same GraphDef
    pb = save(model, tmp_path / "m.pb")
    assert type(model.graph_def).FromString(pb.read_bytes()) == model.graph_def
