"""Target ``onnx``: Triton's layout and config.pbtxt, names, tf2onnx on graphopt's graphs, refusals.

Real models: a MobileNetV2 (weights=None, 96x96, batch norms randomized) exported by Keras, the
demo detector (TF1 Hub module, a while-loop NMS) and a StringLookup text model.
"""

from __future__ import annotations

import graphopt_onnx
import numpy as np
import pytest

import graphopt
from graphopt.errors import InputError
from graphopt.targets.base import MANIFEST_FILE, Manifest, open_export


@pytest.fixture
def cli(capsys):
    from graphopt.cli.main import main

    def run(*args):
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def mobilenet(work):
    import keras

    from graphopt.testing import randomize_batch_norms

    path = work / "mobilenet_v2"
    keras.utils.set_random_seed(0)
    model = randomize_batch_norms(keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3)))
    model.export(str(path), verbose=False)
    keras.backend.clear_session()
    return path


@pytest.fixture(scope="module")
def exported(work, mobilenet):
    return graphopt.optimize(mobilenet, serving_dir=work / "mnv2", target="onnx")


def _nothing_under(base):
    assert not base.exists() or not any(base.iterdir()), sorted(p.name for p in base.iterdir())


def test_export_is_triton_layout_with_config_pbtxt_and_keys_as_names(exported):
    import onnx

    version = exported.target.path
    base = version.parent
    assert sorted(p.name for p in version.iterdir()) == ["assets.extra", MANIFEST_FILE, "model.onnx"]
    assert exported.target.files == [version, base / "config.pbtxt"]
    proto = onnx.load(str(version / "model.onnx"))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version == graphopt_onnx.OPSET
    sig = exported.model.signature
    assert [i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}] \
        == list(sig.inputs)
    assert [o.name for o in proto.graph.output] == list(sig.outputs)
    config = graphopt_onnx.parse_model_config((base / "config.pbtxt").read_text())
    assert config.name == base.name and config.backend == "onnxruntime" and config.max_batch_size == 0
    assert config.version_policy.latest.num_versions == 1
    (inp,) = config.input
    assert inp.name == next(iter(sig.inputs)) and list(inp.dims) == [-1, 96, 96, 3]
    assert graphopt_onnx.model_config_class().DESCRIPTOR.fields_by_name["input"].number == 5
    assert config.DESCRIPTOR.file.enum_types_by_name["DataType"].values_by_number[inp.data_type].name == "TYPE_FP32"
    assert [o.name for o in config.output] == list(sig.outputs) and list(config.output[0].dims) == [-1, 1000]
    report = exported.target.verification
    assert report.passed and report.max_rel <= 1e-5 and "onnxruntime" in report.notes[-1]
    assert Manifest.read(version).settings == {"graph_optimization_level": "ORT_ENABLE_ALL",
                                               "intra_op_num_threads": 0}


def test_runs_batches_the_tf_signature_allows(exported, mobilenet):
    from graphopt.runtime.session import random_inputs
    from graphopt.targets.tfserving import TFRunner

    feeds = random_inputs(exported.model.signature, batch=3, seed=4)
    with open_export(exported.target.path) as runner, TFRunner(mobilenet) as tf_runner:
        got, want = runner.run(feeds), tf_runner.run(feeds)
    for key, value in want.items():
        assert got[key].shape == value.shape == (3, 1000)
        np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-5 * np.abs(value).max())


def test_graphs_grappler_optimized_convert_once_its_hint_attributes_are_stripped(mobilenet, work):
    """Preset serving (grappler_optimize: fused kernels, ``_input_shapes`` hints) is what tf2onnx used to fail on."""
    result = graphopt.optimize(mobilenet, serving_dir=work / "from_serving", target="onnx", transforms="serving")
    assert "grappler_optimize" in [r.name for r in result.records]
    assert any("_input_shapes" in n.attr for n in result.model.graph_def.node)  # the graph TF Serving would get
    assert result.target.verification.passed and result.target.verification.max_rel <= 1e-5


def test_text_model_with_a_lookup_table_is_refused_naming_op_and_target(work):
    import keras

    words = keras.Input(shape=(3,), dtype="string", name="words")
    ids = keras.layers.StringLookup(vocabulary=["apple", "banana", "cherry"])(words)
    out = keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Embedding(4, 4)(ids)))
    src = work / "text_model"
    keras.Model(words, out).export(str(src), verbose=False)
    base = work / "text_onnx"
    with pytest.raises(InputError, match="target 'onnx' cannot convert op .*LookupTableFindV2"):
        graphopt.optimize(src, serving_dir=base, target="onnx")
    _nothing_under(base)


def test_demo_detector_converts_and_answers_like_tensorflow(work):
    demo = pytest.importorskip("graphopt.demo.workflow")
    from graphopt.demo.detector import build_module

    module = build_module(work / "det_module", alpha=0.35, image_size=96)
    graph, sess, inputs, outputs = demo.wrap_module(module)
    try:
        frozen = demo.freeze_in_place(sess, graph)
    finally:
        sess.close()
    src = work / "detector" / "1"
    demo.save_as_is(frozen, inputs, outputs, src)
    image = demo.sample_image((1, 120, 160, 3))
    np.savez(work / "image.npz", inputs=image)
    result = graphopt.optimize(src, serving_dir=work / "det_onnx", target="onnx", sample=work / "image.npz")
    assert result.target.verification.passed
    with open_export(result.target.path) as runner:
        got = runner.run({"inputs": image})
    for key, want in demo.predict(src, image).items():
        np.testing.assert_allclose(got[key], want, rtol=1e-5, atol=1e-5, err_msg=key)
    config = graphopt_onnx.parse_model_config((work / "det_onnx" / "config.pbtxt").read_text())
    assert [list(i.dims) for i in config.input] == [[1, -1, -1, 3]]


def test_serving_config_writes_a_config_pbtxt_per_model(exported, work, cli):
    out = work / "triton"
    base = exported.target.path.parent
    code, _, err = cli("serving-config", "--target", "onnx", "--model", f"mnv2={base}", "--version", "mnv2=1",
                       "-o", out)
    assert code == 0, err
    config = graphopt_onnx.parse_model_config((out / "mnv2" / "config.pbtxt").read_text())
    assert config.name == "mnv2" and list(config.version_policy.specific.versions) == [1]
    code, _, err = cli("serving-config", "--target", "onnx", "--model", "m=/not/here", "-o", out)
    assert code == 3 and "no model.onnx" in err
