"""``graphopt explain`` and ``optimize --explain``: per candidate site, fired or why not, from the matcher itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.models import graph_model

RNG = np.random.default_rng(7)
IO = ("--inputs", "x", "--outputs", "y,z,p")


def _const(*shape):
    import tensorflow as tf

    return tf.constant(RNG.normal(0, 0.5, shape).astype(np.float32))


def _bn(h, c, name):
    import tensorflow as tf

    params = dict(scale=tf.constant(RNG.uniform(0.5, 1.5, c).astype(np.float32)),
                  offset=tf.constant(RNG.normal(0, 0.3, c).astype(np.float32)),
                  mean=tf.constant(RNG.normal(0, 0.5, c).astype(np.float32)),
                  variance=tf.constant(RNG.uniform(0.5, 2.0, c).astype(np.float32)))
    return tf.raw_ops.FusedBatchNormV3(x=h, **params, epsilon=1e-3, is_training=False, name=name)[0]


def build(x):
    """bn1 folds; bn3's conv also feeds a branch; pad1 folds; pad2 pads with ones."""
    import tensorflow as tf

    y = _bn(tf.nn.conv2d(x, _const(3, 3, 3, 4), 1, "SAME", name="conv1"), 4, "bn1")
    conv3 = tf.nn.conv2d(x, _const(3, 3, 3, 4), 1, "SAME", name="conv3")
    z = _bn(conv3, 4, "bn3") + tf.nn.relu(conv3, name="branch/relu")
    p = tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], name="pad1"), _const(3, 3, 3, 2), 1, "VALID",
                     name="conv_p1")
    p = p + tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=1.0, name="pad2"),
                         _const(3, 3, 3, 2), 1, "VALID", name="conv_p2")
    return {"y": tf.identity(y, name="y"), "z": tf.identity(z, name="z"), "p": tf.identity(p, name="p")}


@pytest.fixture(scope="module")
def model():
    return graph_model(build, {"x": ("float32", [1, 8, 8, 3])})


@pytest.fixture(scope="module")
def pb(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("explain") / "model.pb"
    path.write_bytes(model.graph_def.SerializeToString())
    return path


def test_batch_norm_sites_say_why(cli, pb):
    code, out, err = cli("explain", pb, "fold_all_batch_norms", *IO)
    assert code == 0, err
    assert "FusedBatchNormV3 'bn1' folded" in out
    assert "FusedBatchNormV3 'bn3' not folded: its Conv2D 'conv3' also feeds 'branch/relu'" in out
    assert "FusedBatchNormV3 'bn3' converted to Mul and AddV2" in out  # the fallback rule fired there


def test_pad_sites_and_one_node(cli, pb):
    code, out, err = cli("explain", pb, "fold_pad_into_conv", *IO)
    assert code == 0, err
    assert "Pad 'pad1' folded (into Conv2D 'conv_p1' as SAME padding)" in out
    assert "PadV2 'pad2' kept: non-zero constant_values" in out
    code, out, err = cli("explain", pb, "fold_pad_into_conv", "--node", "pad2", *IO)
    assert code == 0, err
    assert "pad2" in out and "pad1" not in out


def test_json_and_options_and_a_node_that_is_no_site(cli, pb):
    code, out, err = cli("explain", pb, "fold_all_batch_norms(convert_unfoldable=false)", "--json", *IO)
    assert code == 0, err
    data = json.loads(out)
    assert data["pass"] == "fold_all_batch_norms" and data["fired"] == 1
    by_site = {(e["rule"], e["node"]): e for e in data["explanations"]}
    bn3 = by_site[("fold_batch_norm", "bn3")]
    assert not bn3["fired"] and bn3["reason"] == "its Conv2D 'conv3' also feeds 'branch/relu'"
    assert bn3["op"] == "FusedBatchNormV3" and bn3["function"] is None
    assert ("convert_batch_norm", "bn3") not in by_site  # convert_unfoldable=false: that rule is not in the pass
    code, out, err = cli("explain", pb, "fold_pad_into_conv", "--node", "branch/relu", *IO)
    assert code == 0, err
    assert "Relu 'branch/relu' is no candidate site of fold_pad_into_conv" in out


def test_usage_errors(cli, pb):
    code, out, err = cli("explain", pb, "fold_constants", *IO)
    assert code == 2 and "does not say why it did not fire" in err and "fold_pad_into_conv" in err
    code, out, err = cli("explain", pb, "fold_pad_into_conv strip_debug_ops", *IO)
    assert code == 2 and "explain takes one pass" in err
    code, out, err = cli("explain", pb, "fold_pad_into_conv", "--node", "pad_1", *IO)
    assert code == 2 and "no node 'pad_1'" in err and "pad1" in err
    assert "Traceback" not in err


def test_optimize_explain_adds_them_to_the_table_and_the_report(cli, pb, tmp_path):
    report = tmp_path / "report.json"
    code, out, err = cli("optimize", pb, "-o", tmp_path / "out.pb", "--transforms",
                         "fold_pad_into_conv fold_all_batch_norms", "--explain", "--report", report, *IO)
    assert code == 0, err
    assert "fold_pad_into_conv: 1 fired, 1 not" in out
    assert "PadV2 'pad2' kept: non-zero constant_values" in out
    assert "FusedBatchNormV3 'bn3' not folded: its Conv2D 'conv3' also feeds 'branch/relu'" in out
    records = {r["name"]: r for r in json.loads(report.read_text())["passes"]}
    texts = [e["text"] for e in records["fold_all_batch_norms"]["explanations"]]
    assert "FusedBatchNormV3 'bn1' folded (into Conv2D 'conv1')" in texts
    assert {e["rule"] for e in records["fold_pad_into_conv"]["explanations"]} == {"fold_pad_into_conv"}
    # Without --explain the records carry none (the report stays the size it was).
    code, out, err = cli("optimize", pb, "-o", tmp_path / "out2.pb", "--transforms", "fold_pad_into_conv",
                         "--report", tmp_path / "r2.json", *IO)
    assert code == 0, err
    assert "fired" not in out
    assert json.loads((tmp_path / "r2.json").read_text())["passes"][0]["explanations"] == []
