"""Target ``openvino``: OVMS's layout and config, names, precisions, refusals, and Predict through graphopt serve.

Real models only: a MobileNetV2 (weights=None, 96x96, batch norms randomized) exported by Keras,
the demo detector (TF1 Hub module) and a StringLookup text model. Every export is verified by
graphopt against TensorFlow; these tests check what that claims, from the files written.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path

import graphopt_openvino
import numpy as np
import pytest

import graphopt
from graphopt.errors import InputError, UsageError
from graphopt.targets.base import MANIFEST_FILE, Manifest, open_export

# OVMS's config.json schema for model entries (openvinotoolkit/model_server src/schema.cpp, MODELS_CONFIG_SCHEMA):
# the parts graphopt writes, with additionalProperties false as OVMS has it.
OVMS_SCHEMA = {
    "type": "object", "required": ["model_config_list"], "additionalProperties": False,
    "properties": {"model_config_list": {"type": "array", "items": {
        "type": "object", "required": ["config"], "additionalProperties": False,
        "properties": {"config": {
            "type": "object", "required": ["name", "base_path"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string"}, "base_path": {"type": "string"},
                "batch_size": {"type": ["integer", "string"], "minimum": 0},
                "model_version_policy": {"type": "object"}, "shape": {"type": ["object", "string"]},
                "nireq": {"type": "integer", "minimum": 0}, "target_device": {"type": "string"},
                "plugin_config": {"type": "object"}, "stateful": {"type": "boolean"},
                "idle_sequence_cleanup": {"type": "boolean"}, "low_latency_transformation": {"type": "boolean"},
                "max_sequence_number": {"type": "integer", "minimum": 0}}}}}}},
}
# OVMS's model_version_policy values (docs/model_version_policy.md).
POLICY_SCHEMA = {"oneOf": [
    {"type": "object", "required": ["latest"], "additionalProperties": False,
     "properties": {"latest": {"type": "object", "required": ["num_versions"],
                               "properties": {"num_versions": {"type": "integer", "minimum": 1}}}}},
    {"type": "object", "required": ["specific"], "additionalProperties": False,
     "properties": {"specific": {"type": "object", "required": ["versions"],
                                 "properties": {"versions": {"type": "array", "items": {"type": "integer"}}}}}},
    {"type": "object", "required": ["all"], "additionalProperties": False, "properties": {"all": {"type": "object"}}}]}


@pytest.fixture
def cli(capsys):
    """The CLI in-process: ``code, out, err = cli("optimize", ...)``."""
    from graphopt.cli.main import main

    def run(*args):
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("openvino")


@pytest.fixture(scope="module")
def mobilenet(work):
    """keras.applications.MobileNetV2(weights=None) at 96x96 with random BN statistics, exported by Keras."""
    import keras

    from graphopt.testing import randomize_batch_norms

    path = work / "mobilenet_v2"
    keras.utils.set_random_seed(0)
    model = randomize_batch_norms(keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3)))
    model.export(str(path), verbose=False)
    keras.backend.clear_session()
    return path


@pytest.fixture(scope="module")
def samples(work, mobilenet):
    key = next(iter(graphopt.load(mobilenet).signature.inputs))
    path = work / "calibration.npz"
    np.savez(path, **{key: np.random.default_rng(0).random((6, 96, 96, 3)).astype(np.float32)})
    return path


@pytest.fixture(scope="module")
def f32(work, mobilenet):
    return graphopt.optimize(mobilenet, serving_dir=work / "mnv2_ov", target="openvino")


@pytest.fixture(scope="module")
def tf_export(work, mobilenet):
    return graphopt.optimize(mobilenet, serving_dir=work / "mnv2_tf")


def _consts(xml: Path) -> set[str]:
    """Element types of the IR's Const layers (how model.bin stores the weights)."""
    root = ET.parse(xml).getroot()
    return {d.get("element_type") for layer in root.iter("layer") if layer.get("type") == "Const"
            for d in layer.iter("data")}


def _layer_types(xml: Path) -> set[str]:
    return {layer.get("type") for layer in ET.parse(xml).getroot().iter("layer")}


def _nothing_under(base: Path) -> None:
    assert not base.exists() or not any(base.iterdir()), sorted(p.name for p in base.iterdir())


# --- layout, names, f32 -----------------------------------------------------------------------------------


def test_f32_export_is_ovms_layout_named_by_signature_keys_and_lossless(f32, mobilenet):
    import openvino as ov

    version = f32.target.path
    assert version == version.parent / "1"
    assert sorted(p.name for p in version.iterdir()) == ["assets.extra", MANIFEST_FILE, "model.bin", "model.xml"]
    root = ET.parse(version / "model.xml").getroot()
    assert root.tag == "net" and int(root.get("version")) >= 10
    consts = _consts(version / "model.xml")
    assert "f32" in consts and "f16" not in consts  # compress_to_fp16=False: weights exactly as verified
    sig = f32.model.signature
    ir = ov.Core().read_model(str(version / "model.xml"))
    assert [p.get_names() for p in ir.inputs] == [{k} for k in sig.inputs]
    assert {name for p in ir.outputs for name in p.get_names()} == set(sig.outputs)
    manifest = Manifest.read(version)
    assert manifest.target == "openvino" and manifest.precision == "f32"
    assert manifest.settings == {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    assert "float32 weights" in manifest.notes[0]
    report = f32.target.verification
    assert report.passed and report.tolerance.source == "lossless default" and report.max_rel <= 1e-5
    # The export runs as the server will, and agrees with TensorFlow on other inputs too.
    from graphopt.runtime.session import random_inputs
    from graphopt.targets.tfserving import TFRunner

    feeds = random_inputs(sig, batch=2, seed=5)
    with open_export(version.parent) as runner, TFRunner(mobilenet) as tf_runner:
        assert "INFERENCE_PRECISION_HINT=f32" in runner.description
        got, want = runner.run(feeds), tf_runner.run(feeds)
    for key in sig.outputs:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5 * np.abs(want[key]).max())


def test_the_default_pipeline_stops_before_grappler_and_its_fused_kernels_are_refused(mobilenet, work):
    pipeline = [r.name for r in graphopt.optimize(mobilenet, serving_dir=work / "steps", target="openvino",
                                                  verify=False).records]
    assert "fold_all_batch_norms" in pipeline and "grappler_optimize" not in pipeline
    base = work / "fused"
    with pytest.raises(InputError, match="target 'openvino' cannot convert op _Fused") as info:
        graphopt.optimize(mobilenet, serving_dir=base, target="openvino", transforms="serving")
    assert "grappler_optimize" in info.value.hint
    _nothing_under(base)


# --- precisions --------------------------------------------------------------------------------------------


def test_bf16_export_is_lossy_within_its_declared_tolerance(mobilenet, work):
    if "BF16" not in graphopt_openvino.cpu_capabilities():
        pytest.skip("this CPU has no bf16 (the error path is tested below)")
    result = graphopt.optimize(mobilenet, serving_dir=work / "bf16", target="openvino", precision="bf16")
    report = result.target.verification
    assert "precision bf16" in report.tolerance.source and report.tolerance.rtol == pytest.approx(5e-2)
    assert 1e-6 < report.max_rel <= 5e-2  # computed in bf16 (f32 agrees to ~1e-7), within what bf16 declares
    version = result.target.path
    assert Manifest.read(version).settings["INFERENCE_PRECISION_HINT"] == "bf16"
    assert "f16" in _consts(version / "model.xml")  # weights stored as float16, as the manifest says
    f32_size = (work / "mnv2_ov" / "1" / "model.bin").stat().st_size
    assert (version / "model.bin").stat().st_size < 0.6 * f32_size


def test_a_precision_the_cpu_lacks_is_an_error_not_a_fallback(mobilenet, work, monkeypatch, cli):
    monkeypatch.setattr(graphopt_openvino, "cpu_capabilities", lambda: ["FP32", "INT8", "EXPORT_IMPORT"])
    base = work / "no_bf16"
    with pytest.raises(UsageError, match="cannot run OpenVINO in bf16") as info:
        graphopt.optimize(mobilenet, serving_dir=base, target="openvino", precision="bf16")
    assert "AVX512_BF16 or AMX" in info.value.hint
    _nothing_under(base)
    code, _, err = cli("optimize", mobilenet, "--serving-dir", base, "--target", "openvino", "--precision", "bf16")
    assert code == 2 and "cannot run OpenVINO in bf16" in err
    _nothing_under(base)


def test_int8_is_nncf_quantization_calibrated_on_the_sample(mobilenet, samples, work):
    base = work / "int8"
    with pytest.raises(UsageError, match="calibrated on your data"):
        graphopt.optimize(mobilenet, serving_dir=base, target="openvino", precision="int8")
    _nothing_under(base)
    result = graphopt.optimize(mobilenet, serving_dir=base, target="openvino", precision="int8", sample=samples)
    version = result.target.path
    assert "FakeQuantize" in _layer_types(version / "model.xml")  # NNCF's int8 quantization in the IR
    report = result.target.verification
    assert report.passed and "precision int8" in report.tolerance.source and report.max_rel > 1e-6
    assert report.input_source.startswith("samples from")
    assert "nncf.quantize" in Manifest.read(version).notes[0]


# --- server config -----------------------------------------------------------------------------------------


def test_serving_config_writes_ovms_config_json_with_each_exports_plugin_config(f32, work, cli):
    import jsonschema

    out = work / "ovms_config"
    code, stdout, err = cli("serving-config", "--target", "openvino", "--model", f"mnv2={f32.target.path.parent}",
                            "--model", "remote=/models/remote", "--version", "remote=2,3", "-o", out)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    jsonschema.validate(config, OVMS_SCHEMA)
    entries = {e["config"]["name"]: e["config"] for e in config["model_config_list"]}
    for entry in entries.values():
        jsonschema.validate(entry["model_version_policy"], POLICY_SCHEMA)
        assert entry["target_device"] == "CPU"
    assert entries["mnv2"]["plugin_config"] == {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    assert entries["mnv2"]["base_path"] == str(f32.target.path.parent)
    assert entries["remote"]["model_version_policy"] == {"specific": {"versions": [2, 3]}}
    # f32 is pinned even for a base not on this machine: the CPU plugin's own default would be bf16 here
    assert entries["remote"]["plugin_config"]["INFERENCE_PRECISION_HINT"] == "f32"
    code, _, err = cli("serving-config", "--target", "openvino", "--model", f"mnv2={f32.target.path.parent}",
                       "--precision", "bf16", "-o", out)
    assert code == 2 and "verified in f32, not bf16" in err
    code, _, err = cli("serving-config", "--target", "openvino", "--model", "m=/models/m", "--label", "m:stable=1",
                       "-o", out)
    assert code == 2 and "no version labels" in err


# --- what OpenVINO cannot take, and the demo detector --------------------------------------------------------


def test_text_model_with_a_lookup_table_is_refused_naming_op_and_target(work):
    import keras

    words = keras.Input(shape=(3,), dtype="string", name="words")
    ids = keras.layers.StringLookup(vocabulary=["apple", "banana", "cherry"])(words)
    out = keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Embedding(4, 4)(ids)))
    src = work / "text_model"
    keras.Model(words, out).export(str(src), verbose=False)
    base = work / "text_ov"
    with pytest.raises(InputError, match="target 'openvino' cannot convert op .*LookupTableFindV2") as info:
        graphopt.optimize(src, serving_dir=base, target="openvino")
    assert "lookup tables" in info.value.message and "--target tfserving" in info.value.hint
    _nothing_under(base)


@pytest.fixture(scope="module")
def detector(work):
    """The demo's TF1 Hub detector wrapped and saved as the seed did (uint8 image in, boxes/classes/scores out)."""
    demo = pytest.importorskip("graphopt.demo.workflow")
    from graphopt.demo.detector import build_module

    module = build_module(work / "det_module", alpha=0.35, image_size=96)
    graph, sess, inputs, outputs = demo.wrap_module(module)
    try:
        frozen = demo.freeze_in_place(sess, graph)
    finally:
        sess.close()
    demo.save_as_is(frozen, inputs, outputs, work / "detector" / "1")
    image = demo.sample_image((1, 120, 160, 3))
    np.savez(work / "image.npz", inputs=image)
    return {"src": work / "detector" / "1", "image": image, "sample": work / "image.npz",
            "reference": demo.predict(work / "detector" / "1", image)}


def test_demo_detector_converts_and_answers_like_tensorflow(detector, work):
    result = graphopt.optimize(detector["src"], serving_dir=work / "det_ov", target="openvino",
                               sample=detector["sample"])
    assert result.target.verification.passed and result.target.verification.detection
    with open_export(result.target.path) as runner:
        got = runner.run({"inputs": detector["image"]})
    for key, want in detector["reference"].items():
        np.testing.assert_allclose(got[key], want, rtol=1e-5, atol=1e-5, err_msg=key)


# --- graphopt serve: a TF Serving PredictRequest, unchanged -----------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _serve(base: Path, name: str, log_path: Path):
    grpc_port, rest_port = _free_port(), _free_port()
    log = open(log_path, "w+")
    proc = subprocess.Popen([sys.executable, "-m", "graphopt", "serve", str(base), "--port", str(grpc_port),
                             "--rest-port", str(rest_port), "--model-name", name, "--host", "127.0.0.1"],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    try:
        deadline = time.monotonic() + 180
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
                    raise AssertionError("server did not open its ports in time") from None
                time.sleep(0.3)
        while True:  # the ports open before serve prints what it loaded: wait for that line too
            log.seek(0)
            text = log.read()
            if "serving model" in text or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        yield {"grpc": f"127.0.0.1:{grpc_port}", "rest": f"127.0.0.1:{rest_port}", "log": text}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)
        log.close()


def _predict(endpoint: str, name: str, key: str, image: np.ndarray) -> dict[str, np.ndarray]:
    """The seed's client: PredictRequest, model_spec, make_tensor_proto, PredictionService.Predict."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = "serving_default"
    request.inputs[key].CopyFrom(tf.make_tensor_proto(image))
    with grpc.insecure_channel(endpoint) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 60.0)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def test_predict_request_through_graphopt_serve_answers_like_the_tf_export(f32, tf_export, work):
    from graphopt.serving.client import GrpcClient, RestClient

    key = next(iter(f32.model.signature.inputs))
    image = np.random.default_rng(11).random((1, 96, 96, 3)).astype(np.float32)
    with _serve(f32.target.path.parent, "mnv2", work / "ov.log") as ov_end, \
            _serve(tf_export.target.path.parent, "mnv2", work / "tf.log") as tf_end:
        assert "warm-up requests replayed: 1" in ov_end["log"]
        got, want = _predict(ov_end["grpc"], "mnv2", key, image), _predict(tf_end["grpc"], "mnv2", key, image)
        assert set(got) == set(want) == set(f32.model.signature.outputs)
        for k in want:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5 * np.abs(want[k]).max())
        with GrpcClient(ov_end["grpc"]) as client:
            meta = client.metadata("mnv2")
        sig = meta["signatures"]["serving_default"]
        assert set(sig["inputs"]) == {key} and sig["inputs"][key]["dtype"] == "DT_FLOAT"
        rest = RestClient(ov_end["rest"]).predict("mnv2", {key: image}, output_keys=list(want))
        for k in want:
            np.testing.assert_allclose(rest[k], got[k], rtol=1e-6)
