"""Composition fixes: fold_constants converges in repeat groups, flatten_atrous_conv keeps outputs, config errors
name the file and key, --keep-going rollbacks reach CI (--strict fails), and failures still print and report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from models import graph_model

from graphopt.errors import UsageError
from graphopt.passes.pipeline import Pipeline
from graphopt.verify.compare import verify

# --- fold_constants reports "modified" only when the graph changed ------------------------------------------


def _identity_chain_model():
    import tensorflow as tf

    def build(x):
        w = tf.constant(np.arange(12, dtype=np.float32).reshape(4, 3))
        y = tf.matmul(tf.identity(x), w * 2.0)  # w * 2.0 folds once; the Identity goes with strip_debug_ops
        return {"y": tf.nn.relu(y, name="y")}

    return graph_model(build, {"x": (tf.float32, [None, 4])})


def test_fold_constants_with_nothing_to_fold_changes_nothing():
    model = _identity_chain_model()
    once = Pipeline.parse("fold_constants(ignore_errors=true)").run(model)
    assert once.records[0].status == "applied"  # w * 2.0 folded
    again = Pipeline.parse("fold_constants(ignore_errors=true)").run(once.model)
    # GTT re-spells every input of a placeholder "x:0": the same graph, so no change is reported.
    assert again.records[0].status == "unchanged"
    stripped = Pipeline.parse("strip_debug_ops").run(once.model).model  # edits write "x", not "x:0"
    assert Pipeline.parse("fold_constants(ignore_errors=true)").run(stripped).records[0].status == "unchanged"


def test_repeat_group_with_fold_constants_converges_after_one_idle_iteration():
    model = _identity_chain_model()
    result = Pipeline.parse("{ fold_constants(ignore_errors=true) strip_debug_ops }*5").run(model)
    iterations = sorted({r.iteration for r in result.records})
    assert iterations == [1, 2], [(r.name, r.iteration, r.status) for r in result.records]
    assert all(r.status == "unchanged" for r in result.records if r.iteration == 2)
    assert not result.notes
    assert verify(model, result.model).passed


# --- flatten_atrous_conv ---------------------------------------------------------------------------------


def _keras_dilated(layer, size: int):
    import keras

    from graphopt.testing import frozen_keras

    keras.utils.set_random_seed(0)
    x = keras.Input((size, size, 3))
    return frozen_keras(keras.Model(x, layer(x)))


@pytest.mark.parametrize("padding, size, rate, expected", [
    ("valid", 15, 2, b"VALID"),  # GTT's native transform made this SAME: 11x11 became 15x15
    ("same", 15, 2, b"SAME"),
    ("same", 16, (2, 3), b"SAME"),
])
def test_flatten_atrous_conv_keeps_outputs_and_padding(padding, size, rate, expected):
    import keras

    model = _keras_dilated(keras.layers.Conv2D(4, 3, padding=padding, dilation_rate=rate), size)
    ops = {n.op for n in model.graph_def.node}
    assert {"SpaceToBatchND", "BatchToSpaceND"} <= ops  # TF builds dilated convs this way
    # The filter sits behind an Identity (ReadVariableOp): GTT's native version aborted the process here.
    result = Pipeline.parse("flatten_atrous_conv").run(model)
    assert result.records[0].status == "applied" and result.records[0].origin != "native"
    convs = [n for n in result.model.graph_def.node if n.op == "Conv2D"]
    assert len(convs) == 1 and convs[0].attr["padding"].s == expected
    assert list(convs[0].attr["dilations"].list.i)[1:3] == ([rate, rate] if isinstance(rate, int) else list(rate))
    assert not {"SpaceToBatchND", "BatchToSpaceND"} & {n.op for n in result.model.graph_def.node}
    report = verify(model, result.model)
    assert report.passed and report.max_rel < 1e-5, report.lines()


def test_flatten_atrous_conv_writes_explicit_padding_when_paddings_and_crops_are_not_same():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)

    def build(x):
        s2b = tf.space_to_batch_nd(x, [2, 2], [[1, 3], [2, 2]])  # not SAME's paddings, not VALID's
        conv = tf.nn.conv2d(s2b, w, 1, "VALID")
        return {"y": tf.identity(tf.compat.v1.batch_to_space_nd(conv, [2, 2], [[0, 2], [1, 1]]), name="y")}

    model = graph_model(build, {"x": (tf.float32, [1, 10, 10, 2])})
    result = Pipeline.parse("flatten_atrous_conv").run(model)
    (conv,) = [n for n in result.model.graph_def.node if n.op == "Conv2D"]
    assert conv.attr["padding"].s == b"EXPLICIT"
    assert list(conv.attr["explicit_paddings"].list.i) == [0, 0, 1, 1, 1, 1, 0, 0]
    assert verify(model, result.model).passed


def test_flatten_atrous_conv_leaves_dilated_depthwise_convs_and_says_why():
    import keras

    model = _keras_dilated(keras.layers.DepthwiseConv2D(3, padding="same", dilation_rate=2), 15)
    result = Pipeline.parse("flatten_atrous_conv").run(model)
    record = result.records[0]
    assert record.status == "unchanged" and record.counters["skipped"] == 1
    assert any("DepthwiseConv2dNative has no CPU kernel" in n for n in record.notes)


# --- config files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, content, where, message", [
    ("graphopt.toml", 'transform = "fold_constants"', "graphopt.toml, key transform", "unknown key 'transform'"),
    ("graphopt.toml", 'transforms = "fold_constant"', "graphopt.toml, key transforms", "unknown pass"),
    ("graphopt.toml", "pipeline = [{pass = 'fold_constants', foo = 1}]", "key pipeline[0]", "unknown option 'foo'"),
    ("graphopt.toml", "pipeline = ['strip_debug_ops', {repeat = [{pass = 'nope'}]}]", "key pipeline[1].repeat[0]",
     "unknown pass"),
    ("graphopt.toml", "pipeline = [{repeat = [], max_iterations = 0}]", "key pipeline[0]", "max_iterations"),
    ("pyproject.toml", "[tool.graphopt]\npipeline = ['strip_debug_ops', 3]", "key tool.graphopt.pipeline[1]",
     "cannot read pipeline item"),
    ("pyproject.toml", "[tool.graphopt]\npipeline = 'fold_constants'", "key tool.graphopt.pipeline",
     "must be a list"),
])
def test_config_errors_name_the_file_and_the_key(tmp_path, name, content, where, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UsageError, match=message) as info:
        Pipeline.from_config(path)
    assert str(path) in info.value.where and where in info.value.where


def test_unknown_config_key_suggests_the_right_one(tmp_path):
    (tmp_path / "graphopt.toml").write_text('transform = "fold_constants"')
    with pytest.raises(UsageError) as info:
        Pipeline.from_config(tmp_path / "graphopt.toml")
    assert "did you mean 'transforms'" in info.value.hint


def test_optimize_finds_the_config_of_its_folder(cli, model_path, tmp_path, monkeypatch):
    from models import frozen_graph

    src = model_path("frozen_composition.pb", frozen_graph)
    (tmp_path / "graphopt.toml").write_text('transforms = "strip_debug_ops"\n')
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "r.json"
    code, _, err = cli("optimize", src, "-o", tmp_path / "out.pb", "--report", report, "--no-verify")
    assert code == 0, err
    assert "using the pipeline of" in err and str(tmp_path / "graphopt.toml") in err
    assert [p["name"] for p in json.loads(report.read_text())["passes"]] == ["strip_debug_ops"]
    (tmp_path / "graphopt.toml").write_text('transforms = "strip_debug_ops"\nkeep_going = true\n')
    code, _, err = cli("optimize", src, "-o", tmp_path / "out2.pb", "--no-verify")
    assert code == 2 and "graphopt.toml, key keep_going" in err


# --- --keep-going, --strict, and failures that still print and report ----------------------------------------

FAILING = "strip_debug_ops rename_op(old_op_name=MatMul, new_op_name=NoSuchOp) fold_constants(ignore_errors=true)"


@pytest.fixture
def frozen(model_path):
    from models import frozen_graph

    return model_path("frozen_composition.pb", frozen_graph)


def test_keep_going_rollbacks_are_visible_in_stderr_and_the_report(cli, frozen, tmp_path):
    report = tmp_path / "r.json"
    code, out, err = cli("optimize", frozen, "-o", tmp_path / "o.pb", "--transforms", FAILING, "--keep-going",
                         "--report", report)
    assert code == 0, err
    assert "warning: 1 pass(es) failed and were rolled back (--keep-going): rename_op" in err
    data = json.loads(report.read_text())
    assert data["status"] == "ok"
    assert [(r["pass"], r["rollback"]) for r in data["rolled_back"]] == [("rename_op", "keep_going")]
    assert (tmp_path / "o.pb").exists()


def test_strict_makes_keep_going_rollbacks_fail_and_still_reports(cli, frozen, tmp_path):
    report = tmp_path / "r.json"
    code, out, err = cli("optimize", frozen, "-o", tmp_path / "o.pb", "--transforms", FAILING, "--keep-going",
                         "--strict", "--report", report)
    assert code == 4 and "rolled back, and --strict is set" in err
    assert not (tmp_path / "o.pb").exists()  # nothing but the report is written
    data = json.loads(report.read_text())
    assert data["status"] == "failed" and data["error"]["code"] == 4
    assert [p["name"] for p in data["passes"]] == ["strip_debug_ops", "rename_op", "fold_constants"]
    # A step's own ignore_errors=true expects failures: --strict does not count those.
    code, _, err = cli("optimize", frozen, "-o", tmp_path / "o2.pb", "--keep-going", "--strict", "--transforms",
                       "rename_op(old_op_name=MatMul, new_op_name=NoSuchOp, ignore_errors=true)")
    assert code == 0, err


def test_a_failing_pass_still_prints_the_table_so_far_and_writes_a_partial_report(cli, frozen, tmp_path):
    report = tmp_path / "r.json"
    code, out, err = cli("optimize", frozen, "-o", tmp_path / "o.pb", "--transforms", FAILING, "--report", report)
    assert code == 4 and "pass 'rename_op' failed" in err
    assert "strip_debug_ops" in out and "rename_op" in out  # the table printed before the error
    assert not (tmp_path / "o.pb").exists()
    data = json.loads(report.read_text())
    assert data["status"] == "failed" and "rename_op" in data["error"]["message"]
    assert [(p["name"], p["status"]) for p in data["passes"]] == [("strip_debug_ops", "applied"),
                                                                  ("rename_op", "failed")]
