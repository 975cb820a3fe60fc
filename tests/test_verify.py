"""Numerical verification: identical graphs pass, a perturbed weight fails, samples and vocabularies feed it."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import ExitCode, InputError, VerificationError
from graphopt.model import Model, Signature, TensorSpec
from graphopt.passes.base import Pass, PassResult, function_pass
from graphopt.passes.pipeline import Pipeline
from graphopt.verify.compare import (
    Reference,
    Tolerance,
    compare_output,
    load_samples,
    make_inputs,
    reference_outputs,
    table_vocabulary,
    tolerance_for,
    verify,
    verify_result,
)


def _dense_model() -> Model:
    """x[?, 8] -> relu(x @ W + b) -> y[?, 4], a frozen graph with two weight constants."""
    import tensorflow as tf

    g = tf.Graph()
    rng = np.random.default_rng(1)
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8], name="x")
        w = tf.constant(rng.normal(size=(8, 4)).astype(np.float32), name="w")
        b = tf.constant(rng.normal(size=(4,)).astype(np.float32), name="b")
        tf.identity(tf.nn.relu(tf.matmul(x, w) + b), name="y")
    sig = Signature(inputs={"x": TensorSpec("x:0", "float32", (None, 8))},
                    outputs={"y": TensorSpec("y:0", "float32", (None, 4))})
    return Model(g.as_graph_def(), sig, source="dense")


def _vocab_model() -> Model:
    """words[?] (string) -> lookup in a 4-word table -> ids[?] (int64); unknown words give -1."""
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        words = tf.compat.v1.placeholder(tf.string, [None], name="words")
        table = tf.raw_ops.HashTableV2(key_dtype=tf.string, value_dtype=tf.int64, shared_name="", name="table")
        keys = tf.constant(["alpha", "beta", "gamma", "delta"], name="keys")
        values = tf.constant([10, 20, 30, 40], dtype=tf.int64, name="values")
        init = tf.raw_ops.InitializeTableV2(table_handle=table, keys=keys, values=values, name="init_table")
        ids = tf.raw_ops.LookupTableFindV2(table_handle=table, keys=words,
                                           default_value=tf.constant(-1, tf.int64), name="lookup")
        tf.identity(ids, name="ids")
    sig = Signature(inputs={"words": TensorSpec("words:0", "string", (None,))},
                    outputs={"ids": TensorSpec("ids:0", "int64", (None,))})
    return Model(g.as_graph_def(), sig, init_ops=[init.name], source="vocab")


def _perturb(model: Model, node: str, delta: float) -> Model:
    import tensorflow as tf

    out = model.copy()
    for n in out.graph_def.node:
        if n.name == node:
            arr = tf.make_ndarray(n.attr["value"].tensor) + np.float32(delta)
            n.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(arr))
    return out


@function_pass(name="test_perturb_weight", description="Add 0.05 to every weight of 'w' (a deliberately bad pass).")
def perturb_weight(model):
    return _perturb(model, "w", 0.05)


@pytest.fixture(scope="module")
def dense():
    return _dense_model()


def test_identical_graph_passes(dense):
    report = verify(dense, dense.copy())
    assert report.passed
    assert report.max_abs == 0.0
    assert report.outputs[0].key == "y" and report.outputs[0].shape == [1, 4]
    assert report.check() is report
    d = report.to_dict()
    assert d["passed"] and d["inputs"]["x"] == {"dtype": "float32", "shape": [1, 8]}


def test_perturbed_weight_fails_with_verify_exit_code(dense):
    from graphopt.plugins import Host

    host = Host.create(plugins=False)
    result = Pipeline([perturb_weight()], host=host).run(dense)
    assert result.modified
    with pytest.raises(VerificationError) as info:
        verify_result(dense, result, batch=4)
    err = info.value
    assert err.code == ExitCode.VERIFY
    assert any(line.startswith("y: max abs") for line in err.details)
    # The reported difference is the real one: recompute it from both runs.
    from graphopt.runtime.session import run_model

    x = make_inputs(dense, batch=4)
    a, b = run_model(dense, x)["y"], run_model(result.model, x)["y"]
    report = verify_result(dense, result, batch=4, check=False)
    assert report.outputs[0].max_abs == pytest.approx(float(np.abs(a - b).max()), rel=1e-6)
    assert report.outputs[0].max_rel == pytest.approx(report.outputs[0].max_abs / float(np.abs(a).max()), rel=1e-6)


def test_tiny_change_within_default_tolerance_and_explicit_tolerance(dense):
    small = _perturb(dense, "b", 1e-6)
    assert verify(dense, small).passed
    big = _perturb(dense, "b", 1e-2)
    assert not verify(dense, big).passed
    assert verify(dense, big, tolerance=0.1).passed  # a user's --tolerance wins


def test_lossy_pipeline_carries_its_tolerance(dense):
    from graphopt.plugins import Host

    class NoisyWeights(Pass):
        name = "test_noisy_weights"
        description = "Perturb weights by 1e-3 and declare it."
        lossy = True
        tolerance = 5e-2

        def run(self, model):
            return PassResult(_perturb(model, "w", 1e-3), modified=True)

    host = Host.create(plugins=False)
    host.registry.passes  # registry exists; register the test pass the way plugins do
    from graphopt.plugins import Origin, PassInfo

    host.registry.passes[NoisyWeights.name] = PassInfo(NoisyWeights, Origin("plugin", "test"))
    try:
        result = Pipeline([NoisyWeights()], host=host).run(dense)
        tol = tolerance_for(result, host=host)
        assert tol.rtol == pytest.approx(5e-2) and "test_noisy_weights" in tol.source
        assert not verify(dense, result.model, batch=4).passed  # lossless default rejects it
        assert verify_result(dense, result, batch=4, check=False).passed  # its own tolerance accepts it
    finally:
        host.registry.passes.pop(NoisyWeights.name, None)
    lossless = Pipeline([perturb_weight()], host=host).run(dense)
    assert tolerance_for(lossless, host=host) == Tolerance()


def test_samples_npz(dense, tmp_path):
    path = tmp_path / "samples.npz"
    x = np.random.default_rng(3).normal(size=(5, 8))  # float64, as numpy makes them: cast to float32
    np.savez(path, x=x)
    samples = load_samples(path, dense.signature)
    assert samples["x"].dtype == np.float32 and samples["x"].shape == (5, 8)
    report = verify(dense, dense.copy(), samples=path)
    assert report.passed and report.inputs["x"]["shape"] == [5, 8] and str(path) in report.input_source

    np.savez(tmp_path / "by_name.npz", **{"x:0": x})  # tensor names work too
    assert load_samples(tmp_path / "by_name.npz", dense.signature)["x"].shape == (5, 8)


@pytest.mark.parametrize("content, message", [
    ({"z": np.zeros((1, 8))}, "does not match the signature"),
    ({"x": np.zeros((1, 8), dtype=np.bool_)}, "expected float32"),
    ({"x": np.zeros((1, 7))}, "does not fit"),
    ({"x": np.array(["a"])}, "expected float32"),
])
def test_bad_samples_are_input_errors(dense, tmp_path, content, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **content)
    with pytest.raises(InputError) as info:
        load_samples(path, dense.signature)
    assert message in info.value.render()
    assert info.value.code == ExitCode.INPUT


def test_missing_and_broken_sample_files(dense, tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_samples(tmp_path / "nope.npz", dense.signature)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="npz"):
        load_samples(junk, dense.signature)


def test_string_inputs_hit_the_vocabulary():
    model = _vocab_model()
    assert table_vocabulary(model) == ["alpha", "beta", "gamma", "delta"]
    feeds = make_inputs(model, batch=16)
    assert set(feeds["words"].tolist()) <= {b"alpha", b"beta", b"gamma", b"delta"}
    from graphopt.runtime.session import run_model

    ids = run_model(model, feeds)["ids"]
    assert (ids > 0).all()  # every generated word is in the table: none fell back to the default -1
    report = verify(model, model.copy(), batch=16)
    assert report.passed and "lookup tables" in report.input_source
    assert report.outputs[0].exact


def test_changed_table_value_fails_exact_comparison():
    import tensorflow as tf

    model = _vocab_model()
    changed = model.copy()
    for n in changed.graph_def.node:
        if n.name == "values":
            n.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.array([10, 20, 30, 41], np.int64)))
    report = verify(model, changed, batch=32)
    out = report.outputs[0]
    assert not report.passed and out.exact and out.mismatched > 0 and out.max_abs == 1.0
    with pytest.raises(VerificationError, match="outputs differ"):
        report.check()


def test_compare_output_nan_inf_shape_dtype():
    tol = Tolerance()
    a = np.array([1.0, np.nan, np.inf, 2.0], np.float32)
    assert compare_output("o", a, a.copy(), tol).passed  # NaN where the original has NaN is agreement
    b = np.array([1.0, 0.0, np.inf, 2.0], np.float32)
    d = compare_output("o", a, b, tol)
    assert not d.passed and d.nan_mismatch == 1 and d.inf_mismatch == 0
    c = np.array([1.0, np.nan, -np.inf, 2.0], np.float32)
    assert compare_output("o", a, c, tol).inf_mismatch == 1
    s = compare_output("boxes", np.zeros((1, 5, 4)), np.zeros((1, 4, 4)), tol, detection=True)
    assert not s.passed and "non-max suppression" in s.problem
    t = compare_output("o", np.zeros(3, np.float32), np.zeros(3, np.float16), tol)
    assert not t.passed and "dtype" in t.problem
    zeros = compare_output("o", np.zeros(3, np.float32), np.full(3, 1e-5, np.float32), tol)
    assert zeros.passed and zeros.max_rel > 1  # relative to a zero output is huge; atol keeps it fair


def test_optimized_model_that_cannot_run_is_a_verification_error(dense):
    import tensorflow as tf

    broken = dense.copy()
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8], name="x")
        tf.identity(tf.raw_ops.CheckNumerics(tensor=x / 0.0, message="boom"), name="y")
    broken = broken.with_graph(g.as_graph_def())
    with pytest.raises(VerificationError, match="failed to run"):
        verify(dense, broken)


def test_report_lines_name_every_output(dense):
    report = verify(dense, _perturb(dense, "b", 1.0))
    lines = report.lines()
    assert lines[0].startswith("verification FAILED") and "lossless default" in lines[0]
    assert lines[1].strip().startswith("FAIL y: max abs")


def _nms_model(scores: list[float]) -> Model:
    """x[3] -> scores + 0*x -> NonMaxSuppressionV3 over 3 disjoint boxes (threshold 0.3) -> selected indices."""
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [3], name="x")
        boxes = tf.constant([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5]], tf.float32, name="boxes")
        s = tf.add(tf.constant(scores, tf.float32, name="scores"), x * 0.0, name="live_scores")
        tf.identity(tf.raw_ops.NonMaxSuppressionV3(boxes=boxes, scores=s, max_output_size=3, iou_threshold=0.5,
                                                   score_threshold=0.3), name="selected")
    sig = Signature(inputs={"x": TensorSpec("x:0", "float32", (3,))},
                    outputs={"selected": TensorSpec("selected:0", "int32", (None,))})
    return Model(g.as_graph_def(), sig, source="nms")


def test_detection_outputs_get_a_clear_message():
    base = _nms_model([0.5, 0.50001, 0.9])
    swapped = verify(base, _nms_model([0.50001, 0.5, 0.9]))  # near-tie: the two boxes swap places
    assert swapped.detection and not swapped.passed and swapped.outputs[0].exact
    with pytest.raises(VerificationError) as info:
        swapped.check()
    assert "non-max suppression" in info.value.hint
    fewer = verify(base, _nms_model([0.5, 0.29, 0.9]))  # one box falls under the score threshold
    out = fewer.outputs[0]
    assert not fewer.passed and "non-max suppression" in out.problem and out.optimized_shape == [2]
    with pytest.raises(VerificationError) as info:
        fewer.check()
    assert "NMS threshold" in info.value.hint


def test_nan_outputs_make_the_overall_difference_infinite(dense):
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8], name="x")
        tf.identity(tf.fill([tf.shape(x)[0], 4], np.float32("nan")), name="y")
    nan_model = dense.with_graph(g.as_graph_def())
    report = verify(dense, nan_model)
    assert not report.passed and report.outputs[0].nan_mismatch == 4
    assert report.max_rel == float("inf") and report.max_abs == float("inf")


def test_vocabulary_of_a_mutable_table_import():
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        words = tf.compat.v1.placeholder(tf.string, [None], name="words")
        table = tf.raw_ops.MutableHashTableV2(key_dtype=tf.string, value_dtype=tf.int64, name="table")
        load = tf.raw_ops.LookupTableImportV2(table_handle=table, keys=tf.constant(["red", "green"], name="keys"),
                                              values=tf.constant([1, 2], tf.int64, name="values"), name="import")
        tf.identity(tf.raw_ops.LookupTableFindV2(table_handle=table, keys=words,
                                                 default_value=tf.constant(-1, tf.int64)), name="ids")
    sig = Signature(inputs={"words": TensorSpec("words:0", "string", (None,))},
                    outputs={"ids": TensorSpec("ids:0", "int64", (None,))})
    model = Model(g.as_graph_def(), sig, init_ops=[load.name])
    assert table_vocabulary(model) == ["red", "green"]
    from graphopt.runtime.session import run_model

    assert (run_model(model, make_inputs(model, batch=8))["ids"] > 0).all()


def test_reference_first_then_result_matches_verify(dense):
    """optimize runs the original before its pipeline: reference_outputs + verify_result give verify's report,
    and the original's GraphDef is left exactly as it was (importing would fill its default attrs)."""
    from graphopt.passes.pipeline import PipelineResult

    original = dense.copy()
    for node in original.graph_def.node:  # defaults missing, as a stripped graph has them
        if node.op == "MatMul":
            del node.attr["transpose_a"]
    before = original.graph_def.SerializeToString(deterministic=True)
    ref = reference_outputs(original, batch=3)
    assert isinstance(ref, Reference) and original.graph_def.SerializeToString(deterministic=True) == before
    assert ref.outputs["y"].shape == (3, 4) and ref.feeds["x"].shape == (3, 8)
    changed = _perturb(dense, "b", 1.0)
    report = verify_result(ref, PipelineResult(changed, [], 0.0, "test"), check=False)
    again = verify(dense, changed, batch=3)
    assert not report.passed and report.lines() == again.lines()
    assert verify_result(ref, PipelineResult(dense.copy(), [], 0.0, "test")).passed
