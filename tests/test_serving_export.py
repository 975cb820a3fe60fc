"""Delivery to TF Serving, on disk: versioned export, warm-up records, models.config, weights as variables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from serving_support import dense_model, image_model, load_saved, run_saved

from graphopt.errors import InputError, OutputError, UsageError
from graphopt.model import Model, Signature, TensorSpec

pytestmark = pytest.mark.timeout(300)  # pytest-timeout (test extra): no test may hang on a server


# --- export ------------------------------------------------------------------------------------------------


def test_export_versions_signature_and_atomic_layout(tmp_path):
    from graphopt.runtime.session import run_model
    from graphopt.serving.export import export_versioned, versions

    model = dense_model()
    base = tmp_path / "dense"
    first = export_versioned(model, base)
    second = export_versioned(model, base)
    assert (first.name, second.name) == ("1", "2")
    assert export_versioned(model, base, 7).name == "7"
    assert versions(base) == [1, 2, 7]
    assert export_versioned(model, base).name == "8"
    # only version directories: no temporary left behind
    assert sorted(p.name for p in base.iterdir()) == ["1", "2", "7", "8"]
    for name in ("saved_model.pb", "variables", "assets.extra/tf_serving_warmup_requests"):
        assert (second / name).exists(), name

    sess, meta = load_saved(second)
    sess.close()
    sd = meta.signature_def["serving_default"]
    assert sd.method_name == "tensorflow/serving/predict"
    assert set(sd.inputs) == {"x"} and set(sd.outputs) == {"probs", "label"}
    assert [d.size for d in sd.inputs["x"].tensor_shape.dim] == [-1, 8]
    assert sd.inputs["x"].dtype == 1 and sd.outputs["label"].dtype == 9  # DT_FLOAT, DT_INT64

    x = np.random.default_rng(3).random((4, 8)).astype(np.float32)
    got, want = run_saved(second, {"x": x}), run_model(model, {"x": x})
    np.testing.assert_allclose(got["probs"], want["probs"], rtol=1e-6)
    np.testing.assert_array_equal(got["label"], want["label"])


def test_export_refuses_existing_version_unless_forced(tmp_path):
    from graphopt.serving.export import export_versioned

    base = tmp_path / "m"
    export_versioned(dense_model(seed=0), base, 1, warmup=False)
    with pytest.raises(OutputError, match="already exists"):
        export_versioned(dense_model(seed=0), base, 1)
    with pytest.raises(UsageError):
        export_versioned(dense_model(seed=0), base, -1)
    # force replaces the version with the new model (different weights, different outputs)
    replaced = export_versioned(dense_model(seed=5), base, 1, force=True)
    assert sorted(p.name for p in base.iterdir()) == ["1"]
    x = np.ones((1, 8), np.float32)
    from graphopt.runtime.session import run_model

    want = run_model(dense_model(seed=5), {"x": x})["probs"]
    np.testing.assert_allclose(run_saved(replaced, {"x": x})["probs"], want, rtol=1e-6)


def test_export_keeps_assets(tmp_path):
    from graphopt.serving.export import export_versioned

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a\nb\nc\n")
    model = dense_model().replace(assets={"vocab.txt": str(vocab)})
    out = export_versioned(model, tmp_path / "base", warmup=False)
    assert (out / "assets" / "vocab.txt").read_text() == "a\nb\nc\n"
    assert not (out / "assets.extra").exists()


# --- warm-up ----------------------------------------------------------------------------------------------


def test_warmup_file_is_tfrecord_of_prediction_logs(tmp_path):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from graphopt.serving.export import export_versioned

    model = image_model()
    samples = [{"inputs": np.full((1, 10 + i, 12, 3), i, np.uint8)} for i in range(3)]
    out = export_versioned(model, tmp_path / "img", samples=samples)
    path = out / "assets.extra" / "tf_serving_warmup_requests"
    records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    assert len(records) == 3
    for i, raw in enumerate(records):
        log = prediction_log_pb2.PredictionLog.FromString(raw)
        assert log.WhichOneof("log_type") == "predict_log"
        req = log.predict_log.request
        assert req.model_spec.signature_name == "serving_default"
        np.testing.assert_array_equal(tf.make_ndarray(req.inputs["inputs"]), samples[i]["inputs"])
        assert req.inputs["inputs"].dtype == tf.uint8.as_datatype_enum


def test_warmup_generated_inputs_capped_at_1000_and_checked(tmp_path):
    from graphopt.serving.warmup import read_warmup, warmup_logs, write_warmup

    model = dense_model()
    generated = warmup_logs(model, count=2)
    assert len(generated) == 2
    assert [d.size for d in generated[0].predict_log.request.inputs["x"].tensor_shape.dim] == [1, 8]
    many = [{"x": np.full((1, 8), i, np.float32)} for i in range(1005)]
    path = write_warmup(tmp_path, warmup_logs(model, many))
    assert len(read_warmup(path)) == 1000
    assert len(warmup_logs(model, many, max_records=10)) == 10
    with pytest.raises(InputError, match="signature wants"):
        warmup_logs(model, [{"y": np.zeros((1, 8), np.float32)}])


# --- models.config ----------------------------------------------------------------------------------------


def test_models_config_parses_as_model_server_config(tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from graphopt.serving.model_config import ServedModel, write_model_config

    path = write_model_config(tmp_path, [
        ServedModel("detector", "/models/detector", labels={"stable": 2, "canary": 3}),
        ServedModel("dense", "/models/dense"),
        ServedModel("old", "/models/old", versions=[1, 4]),
    ])
    config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    by_name = {c.name: c for c in config.model_config_list.config}
    assert set(by_name) == {"detector", "dense", "old"}
    det = by_name["detector"]
    assert det.base_path == "/models/detector" and det.model_platform == "tensorflow"
    assert list(det.model_version_policy.specific.versions) == [2, 3]
    assert dict(det.version_labels) == {"stable": 2, "canary": 3}
    assert by_name["dense"].model_version_policy.latest.num_versions == 1
    assert list(by_name["old"].model_version_policy.specific.versions) == [1, 4]
    with pytest.raises(UsageError, match="more than once"):
        write_model_config(tmp_path, [ServedModel("a", "/a"), ServedModel("a", "/b")])


def test_serving_config_command_writes_all_files(cli, tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from graphopt.runtime.config import parse_platform_config

    code, out, err = cli("serving-config", "--model", "detector=/models/detector", "--model", "dense=/models/dense",
                         "--version", "dense=1,2", "--label", "detector:stable=4", "-o", tmp_path, "--json")
    assert code == 0, err
    files = json.loads(out)["files"]
    config = text_format.Parse(Path(files["models"]).read_text(), model_server_config_pb2.ModelServerConfig())
    by_name = {c.name: c for c in config.model_config_list.config}
    assert dict(by_name["detector"].version_labels) == {"stable": 4}
    assert list(by_name["dense"].model_version_policy.specific.versions) == [1, 2]
    _, session = parse_platform_config(Path(files["platform"]).read_text())
    assert session.graph_options.rewrite_options.disable_meta_optimizer
    code, _, err = cli("serving-config", "--model", "a=/a", "--label", "b:x=1", "-o", tmp_path)
    assert code == 2 and "unknown model" in err


# --- weights as variables (the 2 GB limit) ---------------------------------------------------------------


def test_large_constants_become_variables_forced_by_threshold(tmp_path):
    """The mechanism the 2 GB case uses, forced on a small graph with ``variables_threshold=0``."""
    from tensorflow.core.protobuf import saved_model_pb2

    from graphopt.runtime.session import run_model
    from graphopt.serving.export import export_versioned
    from graphopt.serving.large import graph_bytes

    model = dense_model(features=64, units=32)
    out = export_versioned(model, tmp_path / "big", variables_threshold=0)
    sm = saved_model_pb2.SavedModel.FromString((out / "saved_model.pb").read_bytes())
    nodes = {n.name: n for n in sm.meta_graphs[0].graph_def.node}
    assert nodes["w"].op == "VariableV2"  # 8 KB of weights
    assert nodes["b"].op == "Const"  # 128 bytes: small constants stay for Grappler and the kernels
    assert not any(n.op == "Const" and n.attr["value"].tensor.ByteSize() >= 1024 for n in nodes.values())
    assert (out / "variables" / "variables.index").is_file()
    assert sm.ByteSize() < graph_bytes(model.graph_def)  # the 64x32 weights left the graph
    x = np.random.default_rng(0).random((3, 64)).astype(np.float32)
    got, want = run_saved(out, {"x": x}), run_model(model, {"x": x})
    np.testing.assert_allclose(got["probs"], want["probs"], rtol=1e-6)
    # below the threshold nothing changes: weights stay constants, variables/ is empty
    small = export_versioned(model, tmp_path / "small")
    sm = saved_model_pb2.SavedModel.FromString((small / "saved_model.pb").read_bytes())
    assert {n.name: n.op for n in sm.meta_graphs[0].graph_def.node}["w"] == "Const"


def test_variables_path_keeps_table_init_ops(tmp_path):
    """A lookup table whose keys and values became variables is still initialised at load (main op after restore)."""
    import tensorflow as tf

    from graphopt.runtime.session import run_model
    from graphopt.serving.export import export_versioned

    g = tf.Graph()
    with g.as_default():
        keys = tf.constant([f"word{i}".encode() for i in range(300)], name="vocab_keys")
        values = tf.constant(np.arange(300, dtype=np.int64) * 7, name="vocab_values")
        table = tf.compat.v1.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value=-1)
        words = tf.compat.v1.placeholder(tf.string, [None], name="words")
        tf.identity(table.lookup(words), name="ids")
        init = table.initializer.name
    model = Model(g.as_graph_def(), Signature(inputs={"words": TensorSpec("words:0", "string", (None,))},
                                              outputs={"ids": TensorSpec("ids:0", "int64", (None,))}),
                  init_ops=[init])
    out = export_versioned(model, tmp_path / "vocab", variables_threshold=0)
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel.FromString((out / "saved_model.pb").read_bytes())
    ops = {n.name: n.op for n in sm.meta_graphs[0].graph_def.node}
    assert ops["vocab_keys"] == "VariableV2" and ops["vocab_values"] == "VariableV2"
    feeds = {"words": np.array([b"word3", b"nope", b"word299"], dtype=object)}
    got = run_saved(out, feeds)
    np.testing.assert_array_equal(got["ids"], run_model(model, feeds)["ids"])
    np.testing.assert_array_equal(got["ids"], [21, -1, 2093])


@pytest.mark.slow
def test_graph_past_2gb_exports_with_variables_and_serves(tmp_path):
    """A synthetic frozen graph of 2.16 GB of constants: written, loaded and run through the variables path.

    Takes about 2 minutes and 12 GB of memory at peak (the weights are copied
    between numpy, protobuf and TensorFlow): run with ``-m slow``.
    """
    import tensorflow as tf
    from tensorflow.core.framework import graph_pb2

    from graphopt.serving.export import export_versioned
    from graphopt.serving.large import PROTOBUF_LIMIT, graph_bytes

    n = 180_000_000  # float32: 720 MB per constant, three of them: just past 2**31 bytes
    gd = graph_pb2.GraphDef()
    with tf.Graph().as_default() as g:
        tf.compat.v1.placeholder(tf.float32, [None], name="x")
    gd.CopyFrom(g.as_graph_def())
    for i in range(3):
        node = gd.node.add(name=f"c{i}", op="Const")
        node.attr["dtype"].type = tf.float32.as_datatype_enum
        t = node.attr["value"].tensor
        t.dtype = tf.float32.as_datatype_enum
        t.tensor_shape.dim.add(size=n)
        t.tensor_content = np.full(n, i + 1, np.float32).tobytes()
    # out = x + c0[0] + c1[-1] + c2[n // 2]: every weight is read, so every one must be restored
    with tf.Graph().as_default() as g2:
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        cs = [tf.compat.v1.placeholder(tf.float32, [n], name=f"c{i}") for i in range(3)]
        tf.identity(x + cs[0][0] + cs[1][-1] + cs[2][n // 2], name="out")
    for node in g2.as_graph_def().node:
        if node.name not in {"x", "c0", "c1", "c2"}:
            gd.node.add().CopyFrom(node)
    assert graph_bytes(gd) > PROTOBUF_LIMIT
    model = Model(gd, Signature(inputs={"x": TensorSpec("x:0", "float32", (None,))},
                                outputs={"out": TensorSpec("out:0", "float32", (None,))}))
    out = export_versioned(model, tmp_path / "huge", warmup=True)
    assert (out / "saved_model.pb").stat().st_size < 10_000_000
    assert sum(f.stat().st_size for f in (out / "variables").iterdir()) > 3 * n * 4
    got = run_saved(out, {"x": np.array([0.5, 1.5], np.float32)})
    np.testing.assert_allclose(got["out"], [6.5, 7.5])  # 0.5 + 1 + 2 + 3
