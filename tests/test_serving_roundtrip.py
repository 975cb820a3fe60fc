"""The round trip export -> ``graphopt serve`` (a subprocess) -> Predict over gRPC and REST, the seed's client
and the demo detector."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from serving_support import dense_model, image_model, serve

from graphopt.errors import InputError, OutputError
from graphopt.model import Model, Signature, TensorSpec

pytestmark = pytest.mark.timeout(300)  # pytest-timeout (test extra): no test may hang on a server


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
