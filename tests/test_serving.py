"""Delivery to TF Serving: versioned export, warm-up records, models.config, weights as variables,
and the round trip export -> ``graphopt serve`` (a subprocess) -> Predict over gRPC and REST.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from graphopt.errors import InputError, OutputError, UsageError
from graphopt.model import Model, Signature, TensorSpec

pytestmark = pytest.mark.timeout(300)  # pytest-timeout (test extra): no test may hang on a server

SERVER_START_TIMEOUT = 120.0


# --- models built in code -------------------------------------------------------------------------------


def dense_model(features: int = 8, units: int = 5, seed: int = 0) -> Model:
    """x float32 [None, features] -> softmax(xW + b) "probs" and its argmax "label" (int64)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, features], name="x")
        w = tf.constant(rng.standard_normal((features, units)).astype(np.float32), name="w")
        b = tf.constant(rng.standard_normal((units,)).astype(np.float32), name="b")
        probs = tf.nn.softmax(tf.matmul(x, w) + b, name="probs")
        tf.argmax(probs, axis=1, name="label")
    sig = Signature(inputs={"x": TensorSpec("x:0", "float32", (None, features))},
                    outputs={"probs": TensorSpec("probs:0", "float32", (None, units)),
                             "label": TensorSpec("label:0", "int64", (None,))})
    return Model(g.as_graph_def(), sig)


def image_model(channels: int = 6, seed: int = 1) -> Model:
    """The seed's input contract: uint8 "inputs" [1, None, None, 3] -> "scores" [1, C] and "boxes" [1, -1, 4]."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    g = tf.Graph()
    with g.as_default():
        image = tf.compat.v1.placeholder(tf.uint8, [1, None, None, 3], name="input_image")
        x = tf.image.convert_image_dtype(image, tf.float32)
        k = tf.constant(rng.standard_normal((3, 3, 3, channels)).astype(np.float32), name="kernel")
        y = tf.nn.relu(tf.nn.conv2d(x, k, strides=2, padding="SAME"))
        tf.reduce_mean(y, axis=[1, 2], name="scores")
        tf.reshape(tf.sigmoid(y[..., :4]), (1, -1, 4), name="boxes")
    sig = Signature(inputs={"inputs": TensorSpec("input_image:0", "uint8", (1, None, None, 3))},
                    outputs={"scores": TensorSpec("scores:0", "float32", (1, channels)),
                             "boxes": TensorSpec("boxes:0", "float32", (1, None, 4))})
    return Model(g.as_graph_def(), sig)


def load_saved(export_dir: Path):
    """(session, meta graph) of a SavedModel loaded as TF Serving loads it; caller closes the session."""
    import tensorflow as tf

    sess = tf.compat.v1.Session(graph=tf.Graph())
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(export_dir))
    return sess, meta


def run_saved(export_dir: Path, feeds: dict, key: str = "serving_default") -> dict:
    sess, meta = load_saved(export_dir)
    try:
        sig = meta.signature_def[key]
        keys = list(sig.outputs)
        values = sess.run([sig.outputs[k].name for k in keys], {sig.inputs[k].name: v for k, v in feeds.items()})
        return dict(zip(keys, values))
    finally:
        sess.close()


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


# --- serving round trip ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(base: Path, name: str, tmp: Path):
    """``python -m graphopt serve`` in a subprocess on free loopback ports; always terminated."""
    grpc_port, rest_port = free_port(), free_port()
    log = open(tmp / f"{name}-server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "graphopt", "serve", str(base), "--port", str(grpc_port),
                             "--rest-port", str(rest_port), "--model-name", name, "--host", "127.0.0.1"],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"server exited with {proc.returncode}:\n{log.read()}")
            try:
                with socket.create_connection(("127.0.0.1", rest_port), timeout=1):
                    pass
                with socket.create_connection(("127.0.0.1", grpc_port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("server did not open its ports in time")
                time.sleep(0.3)
        yield {"grpc": f"127.0.0.1:{grpc_port}", "rest": f"127.0.0.1:{rest_port}", "name": name, "proc": proc}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        log.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The dense and the uint8-image model, each exported twice (versions 1, 2) and served in its own process."""
    from graphopt.serving.export import export_versioned

    tmp = tmp_path_factory.mktemp("served")
    models = {"dense": dense_model(), "detector": image_model()}
    for name, model in models.items():
        export_versioned(model, tmp / name, warmup=False)
        export_versioned(model, tmp / name)
    with serve(tmp / "dense", "dense", tmp) as dense, serve(tmp / "detector", "detector", tmp) as det:
        yield {"dense": dense, "detector": det, "models": models, "tmp": tmp}


def test_grpc_and_rest_predict_equal_in_process_inference(served):
    from graphopt.runtime.session import run_model
    from graphopt.serving.client import GrpcClient, RestClient

    model, ends = served["models"]["dense"], served["dense"]
    x = np.random.default_rng(7).random((3, 8)).astype(np.float32)
    want = run_model(model, {"x": x})
    with GrpcClient(ends["grpc"], timeout=30) as grpc_client:
        got = grpc_client.predict("dense", {"x": x})
        assert got["probs"].dtype == np.float32 and got["label"].dtype == np.int64
        np.testing.assert_array_equal(got["probs"], want["probs"])
        np.testing.assert_array_equal(got["label"], want["label"])
        assert grpc_client.predict("dense", {"x": x}, version=2)["probs"].shape == (3, 5)
        with pytest.raises(InputError, match="NOT_FOUND"):
            grpc_client.predict("dense", {"x": x}, version=1)  # like TF Serving: only the latest is loaded
        with pytest.raises(InputError, match="INVALID_ARGUMENT"):
            grpc_client.predict("dense", {"x": x.astype(np.float64)})
        with pytest.raises(InputError, match="NOT_FOUND"):
            grpc_client.predict("nope", {"x": x})
    rest_client = RestClient(ends["rest"], timeout=30)
    for row in (False, True):
        got = rest_client.predict("dense", {"x": x}, row=row, version=2)
        np.testing.assert_allclose(got["probs"], want["probs"], rtol=1e-6)
        np.testing.assert_array_equal(got["label"], want["label"])
    with pytest.raises(InputError, match="HTTP 400"):
        rest_client.predict("dense", {"y": x})


def test_metadata_over_grpc_and_rest(served):
    from graphopt.serving.client import GrpcClient, RestClient

    ends = served["detector"]
    with GrpcClient(ends["grpc"]) as client:
        meta = client.metadata("detector")
    assert meta["version"] == 2
    sig = meta["signatures"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"]["inputs"] == {"dtype": "DT_UINT8", "shape": [1, -1, -1, 3], "name": "input_image:0"}
    assert set(sig["outputs"]) == {"scores", "boxes"}
    assert RestClient(ends["rest"]).metadata("detector", version=2) == meta


def test_seed_client_code_against_served_uint8_model(served):
    """The seed's own client, verbatim in shape: PredictRequest, model_spec.name, make_tensor_proto(uint8), Predict."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from graphopt.runtime.session import run_model

    image = np.random.default_rng(0).integers(0, 256, (1, 37, 45, 3), dtype=np.uint8)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "detector"
    request.model_spec.signature_name = "serving_default"
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(image, dtype=tf.uint8))
    with grpc.insecure_channel(served["detector"]["grpc"]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, 30.0)
    want = run_model(served["models"]["detector"], {"inputs": image})
    assert response.model_spec.version.value == 2
    for key in ("scores", "boxes"):
        np.testing.assert_array_equal(tf.make_ndarray(response.outputs[key]), want[key])


def test_predict_command_with_npy_json_and_image_inputs(served, cli, tmp_path):
    import tensorflow as tf

    from graphopt.runtime.session import run_model

    x = np.random.default_rng(1).random((2, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "x.json").write_text(json.dumps(x.tolist()))
    want = run_model(served["models"]["dense"], {"x": x})
    for flag, target in (("--server", served["dense"]["grpc"]), ("--rest", served["dense"]["rest"])):
        for file in ("x.npy", "x.json"):
            code, out, err = cli("predict", flag, target, "--model", "dense", "--input", f"x={tmp_path / file}",
                                 "--json")
            assert code == 0, err
            outputs = json.loads(out)["outputs"]
            assert outputs["probs"]["dtype"] == "float32" and outputs["label"]["dtype"] == "int64"
            np.testing.assert_allclose(outputs["probs"]["value"], want["probs"], rtol=1e-6)
            assert outputs["label"]["value"] == want["label"].tolist()

    image = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    (tmp_path / "img.png").write_bytes(tf.io.encode_png(image).numpy())
    want = run_model(served["models"]["detector"], {"inputs": image[None]})
    code, out, err = cli("predict", "--server", served["detector"]["grpc"], "--model", "detector",
                         "--input", f"inputs={tmp_path / 'img.png'}", "--json")
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(json.loads(out)["outputs"]["scores"]["value"], np.float32), want["scores"])
    code, out, err = cli("predict", "--server", served["detector"]["grpc"], "--model", "detector", "--input",
                         f"inputs={tmp_path / 'img.png'}")
    assert code == 0 and "scores" in out and "[1, 6]" in out  # the table lists each output with its shape
    code, out, err = cli("predict", "--rest", served["detector"]["rest"], "--model", "detector", "--metadata")
    assert code == 0 and "inputs" in out and "DT_UINT8" in out
    code, out, err = cli("predict", "--server", served["dense"]["grpc"], "--model", "missing", "--metadata")
    assert code == 3 and "NOT_FOUND" in err


def test_run_load_reports_percentiles_and_throughput(served):
    from graphopt.serving.loadtest import run_load

    x = {"x": np.ones((1, 8), np.float32)}
    for rest in (False, True):
        target = served["dense"]["rest" if rest else "grpc"]
        stats = run_load(target, "dense", inputs=x, concurrency=2, requests=20, rest=rest)
        assert stats["ok"] == 20 and stats["errors"] == 0, stats["first_error"]
        lat = stats["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert stats["throughput_rps"] > 0 and stats["transport"] == ("rest" if rest else "grpc")
    with pytest.raises(InputError, match="warm-up request failed"):
        run_load(served["dense"]["grpc"], "nope", inputs=x, requests=1)


def test_server_replays_warmup_file_on_load(tmp_path):
    """A warm-up record the model cannot run fails the load, so the records really are replayed."""
    from tensorflow_serving.apis import prediction_log_pb2

    from graphopt.serving.export import export_versioned
    from graphopt.serving.server import DevServer
    from graphopt.serving.warmup import predict_request, write_warmup

    base = tmp_path / "m"
    out = export_versioned(dense_model(), base, samples=[{"x": np.ones((2, 8), np.float32)}] * 3)
    server = DevServer(base, port=0, rest_port=None).start()
    try:
        assert server.warmup_replayed == 3
    finally:
        server.stop()
    bad = predict_request({"x": np.ones((2, 3), np.float32)}, signature="serving_default")
    write_warmup(out, [prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=bad))])
    with pytest.raises(InputError, match="warm-up request failed"):
        DevServer(base, port=0, rest_port=None).start()
    server = DevServer(base, port=0, rest_port=None, warmup=False).start()
    server.stop()


def string_model() -> Model:
    """words string [None] -> "upper" string [None] and "length" int32 [None]: the REST string/b64 codec path."""
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        words = tf.compat.v1.placeholder(tf.string, [None], name="words")
        tf.strings.upper(words, name="upper")
        tf.strings.length(words, name="length")
    return Model(g.as_graph_def(), Signature(inputs={"words": TensorSpec("words:0", "string", (None,))},
                                             outputs={"upper": TensorSpec("upper:0", "string", (None,)),
                                                      "length": TensorSpec("length:0", "int32", (None,))}))


def test_string_tensors_over_grpc_and_rest_b64(tmp_path):
    import base64
    import urllib.request

    from graphopt.serving.client import GrpcClient, RestClient
    from graphopt.serving.export import export_versioned
    from graphopt.serving.server import DevServer

    export_versioned(string_model(), tmp_path / "words", samples=[{"words": np.array([b"warm"], object)}])
    words = np.array([b"hello", "é".encode(), b"\xff\x00"], dtype=object)
    with DevServer(tmp_path / "words", port=0, rest_port=0) as server:
        assert server.warmup_replayed == 1
        with GrpcClient(f"127.0.0.1:{server.grpc_port}") as client:
            got = client.predict("words", {"words": words})
        assert got["upper"].tolist() == [b"HELLO", "é".encode(), b"\xff\x00"]
        assert got["length"].tolist() == [5, 2, 2]
        got = RestClient(f"127.0.0.1:{server.rest_port}").predict("words", {"words": words}, row=True)
        assert got["upper"].tolist() == [b"HELLO", "é".encode(), b"\xff\x00"]
        assert got["length"].tolist() == [5, 2, 2]
        # a hand-written REST body, as TF Serving documents it: bytes in {"b64": ...}
        body = {"inputs": {"words": [{"b64": base64.b64encode(b"\xfe").decode()}, "ab"]}}
        req = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}/v1/models/words:predict",
                                     data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            out = json.loads(resp.read())["outputs"]
        assert out["length"] == [1, 2] and out["upper"] == [{"b64": base64.b64encode(b"\xfe").decode()}, "AB"]


def test_serve_command_errors(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = cli("serve", tmp_path / "empty", "--port", "0", "--rest-port", "0")
    assert code == 3 and "no version to serve" in err
    from graphopt.serving.export import export_versioned

    export_versioned(dense_model(), tmp_path / "m", warmup=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, err = cli("serve", tmp_path / "m", "--port", "0", "--rest-port", busy.getsockname()[1])
    assert code == 6 and "REST port" in err


def test_server_refuses_unsafe_ops_but_not_its_own_saver(tmp_path, cli):
    import tensorflow as tf

    from graphopt.errors import UnsafeGraphError
    from graphopt.serving.export import export_versioned
    from graphopt.serving.server import DevServer, check_safe

    # the variables layout has SaveV2/RestoreV2 in its saver: that is the format, not the model
    assert check_safe(export_versioned(dense_model(), tmp_path / "vars", variables_threshold=0)) == []
    g = tf.Graph()
    with g.as_default():
        path = tf.compat.v1.placeholder(tf.string, [], name="path")
        tf.io.read_file(path, name="contents")
    model = Model(g.as_graph_def(), Signature(inputs={"path": TensorSpec("path:0", "string", ())},
                                              outputs={"contents": TensorSpec("contents:0", "string", ())}))
    export_versioned(model, tmp_path / "reader", warmup=False)
    with pytest.raises(UnsafeGraphError, match="ReadFile"):
        DevServer(tmp_path / "reader", port=0, rest_port=None).start()
    code, _, err = cli("serve", tmp_path / "reader", "--port", "0", "--rest-port", "-1")
    assert code == 7 and "--allow-op ReadFile" in err
    server = DevServer(tmp_path / "reader", port=0, rest_port=None, allow_unsafe=["ReadFile"]).start()
    server.stop()


# --- the demo detector (graphopt/demo): the seed's model, exported and called with the seed's client -------


@pytest.fixture(scope="module")
def demo_base(tmp_path_factory):
    """BASE/1: the seed's as-is SavedModel of the demo detector; BASE/2: graphopt's export of it (with warm-up)."""
    demo = pytest.importorskip("graphopt.demo.workflow")
    import graphopt
    from graphopt.demo.detector import build_module
    from graphopt.serving.export import export_versioned

    tmp = tmp_path_factory.mktemp("demo")
    module = build_module(tmp / "module", alpha=0.35, image_size=96)
    graph, sess, inputs, outputs = demo.wrap_module(module)
    try:
        frozen = demo.freeze_in_place(sess, graph)
    finally:
        sess.close()
    base = tmp / "detector"
    demo.save_as_is(frozen, inputs, outputs, base / "1")
    model = graphopt.load(str(base / "1"))
    image = demo.sample_image((1, 120, 160, 3))
    exported = export_versioned(model, base, samples=[{"inputs": image}])
    assert exported.name == "2"
    return {"base": base, "image": image, "reference": demo.predict(base / "1", image), "tmp": tmp}


def test_seed_client_code_against_demo_detector(demo_base):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from graphopt.serving.warmup import read_warmup

    assert len(read_warmup(demo_base["base"] / "2")) == 1
    image = demo_base["image"]
    with serve(demo_base["base"], "ssd_mobilenet_v2", demo_base["tmp"]) as ends:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "ssd_mobilenet_v2"
        request.model_spec.signature_name = "serving_default"
        request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(image, dtype=tf.uint8))
        with grpc.insecure_channel(ends["grpc"]) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(request, 60.0)
    assert response.model_spec.version.value == 2
    reference = demo_base["reference"]
    assert set(response.outputs) == set(reference) == {"detection_boxes", "detection_classes", "detection_scores"}
    for key, want in reference.items():
        got = tf.make_ndarray(response.outputs[key])
        assert got.shape == want.shape and got.shape[0] == 1
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_export_failure_leaves_nothing_behind(tmp_path):
    """A graph TensorFlow cannot import fails as an OutputError and leaves no version or temporary directory."""
    from graphopt.serving.export import export_versioned

    model = dense_model()
    broken = model.copy()
    broken.graph_def.node[-1].input.append("does_not_exist:0")
    base = tmp_path / "m"
    export_versioned(model, base, warmup=False)
    with pytest.raises(OutputError, match="cannot write SavedModel"):
        export_versioned(broken, base)
    assert sorted(p.name for p in base.iterdir()) == ["1"]


def test_demo_detector_through_the_variables_layout(demo_base, tmp_path):
    """The real detector (while_loop NMS, constants inside loop frames) survives weights-as-variables."""
    import graphopt
    from graphopt.demo.workflow import predict
    from graphopt.serving.export import export_versioned

    model = graphopt.load(str(demo_base["base"] / "2"))
    out = export_versioned(model, tmp_path / "det", variables_threshold=0, warmup=False)
    as_is = demo_base["base"] / "1" / "saved_model.pb"
    assert (out / "saved_model.pb").stat().st_size < as_is.stat().st_size / 5  # the weights left the graph
    got = predict(out, demo_base["image"])
    for key, want in demo_base["reference"].items():
        np.testing.assert_allclose(got[key], want, rtol=1e-5, atol=1e-6)
