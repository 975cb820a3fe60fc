"""``graphopt optimize``: the seed's GTT list end to end, formats, reports, and every error path."""

from __future__ import annotations

import json

import models
import numpy as np
import pytest
from support import run_subprocess

from graphopt.loaders import load
from graphopt.runtime.session import random_inputs, run_model


def _same_outputs(a, b, atol=1e-4):
    feeds = random_inputs(a.signature, batch=2, seed=3)
    out_a, out_b = run_model(a, feeds), run_model(b, feeds)
    assert set(out_a) == set(out_b)
    for key in out_a:
        np.testing.assert_allclose(out_a[key], out_b[key], rtol=1e-4, atol=atol, err_msg=key)


def test_gtt_seed_on_mobilenet_v2_keeps_outputs(model_path, tmp_path, cli):
    src = model_path("mobilenet_v2_96", models.mobilenet_v2_saved_model)
    out, report = tmp_path / "opt", tmp_path / "report.json"
    code, stdout, err = cli("optimize", src, "-o", out, "--transforms", "gtt-seed", "--report", report)
    assert code == 0, err
    for name in ("remove_attribute", "remove_nodes", "strip_unused_nodes", "fold_constants", "fold_batch_norms",
                 "fold_old_batch_norms", "merge_duplicate_nodes"):
        assert name in stdout
    assert "verification passed" in stdout
    data = json.loads(report.read_text())
    assert [p["name"] for p in data["passes"]][0] == "remove_attribute" and len(data["passes"]) == 7
    assert data["passes"][-1]["nodes_after"] < data["passes"][0]["nodes_before"]
    original, optimized = load(src), load(out)
    assert optimized.node_count < original.node_count
    assert list(optimized.signature.inputs) == list(original.signature.inputs)
    _same_outputs(original, optimized)


def test_default_transforms_and_format_from_extension(model_path, tmp_path, cli):
    src = model_path("frozen.pbtxt", models.frozen_graph)
    out = tmp_path / "model.pb"
    code, stdout, err = cli("optimize", src, "-o", out, "--outputs", "prob")
    assert code == 0, err
    assert "merge_duplicate_nodes" in stdout  # in both defaults: preset serving, else gtt-seed
    optimized = load(out, inputs=["input"], outputs=["prob"])
    assert out.is_file() and optimized.format == "pb"
    _same_outputs(load(src, outputs=["prob"]), optimized)


def test_signature_and_tags_flags(model_path, tmp_path, cli):
    src = model_path("tf1_custom", models.tf1_saved_model)
    out = tmp_path / "sm"
    code, _, err = cli("optimize", src, "-o", out, "--signature", "logits", "--tags", "cpu,custom",
                       "--transforms", "strip_unused_nodes fold_constants(ignore_errors=true)")
    assert code == 0, err
    optimized = load(out)
    assert optimized.signature.key == "logits" and list(optimized.signature.outputs) == ["logits"]
    _same_outputs(load(src, signature="logits"), optimized)


def test_keep_going_rolls_back_a_failing_pass(model_path, tmp_path, cli):
    src = model_path("keras_export", models.keras_saved_model)
    report = tmp_path / "report.json"
    code, stdout, err = cli("optimize", src, "-o", tmp_path / "sm", "--keep-going", "--report", report,
                            "--transforms", "rename_op(old_op_name=Relu, new_op_name=NoSuchOp) strip_unused_nodes")
    assert code == 0, err
    assert "rolled back" in stdout
    statuses = {p["name"]: p["status"] for p in json.loads(report.read_text())["passes"]}
    assert statuses["rename_op"] == "rolled_back" and statuses["strip_unused_nodes"] in ("applied", "unchanged")
    assert (tmp_path / "sm" / "saved_model.pb").is_file()
    code, _, err = cli("optimize", src, "-o", tmp_path / "sm2", "--transforms", "rename_op(old_op_name=Relu, new_op_name=NoSuchOp)")
    assert code == 4 and "Traceback" not in err and not (tmp_path / "sm2").exists()


def _error_cases(tmp_path, model_path):
    keras_sm = model_path("keras_export", models.keras_saved_model)
    existing = tmp_path / "exists"
    existing.mkdir()
    empty = tmp_path / "empty.pb"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.pb"
    corrupt.write_bytes(b"\xff\xfe not a graph")
    tf1 = model_path("tf1_custom", models.tf1_saved_model)
    pb = model_path("frozen.pb", models.frozen_graph)
    return {
        "missing": ([tmp_path / "nope", "-o", tmp_path / "o1"], 3, tmp_path / "o1"),
        "empty": ([empty, "-o", tmp_path / "o2"], 3, tmp_path / "o2"),
        "corrupt": ([corrupt, "-o", tmp_path / "o3"], 3, tmp_path / "o3"),
        "unknown_format": ([tmp_path / "exists", "-o", tmp_path / "o4"], 3, tmp_path / "o4"),
        "wrong_tags": ([tf1, "-o", tmp_path / "o5", "--tags", "serve", "--signature", "scores"], 3, tmp_path / "o5"),
        "wrong_signature": ([tf1, "-o", tmp_path / "o6", "--signature", "nope"], 3, tmp_path / "o6"),
        "no_such_output": ([pb, "-o", tmp_path / "o7.pb", "--outputs", "porb"], 3, tmp_path / "o7.pb"),
        "output_exists": ([keras_sm, "-o", existing, "--transforms", "strip_unused_nodes"], 6, None),
        "inside_input": ([keras_sm, "-o", keras_sm / "opt", "--transforms", "strip_unused_nodes"], 6,
                         keras_sm / "opt"),
        "bad_transform": ([keras_sm, "-o", tmp_path / "o8", "--transforms", "fold_constnts"], 2, tmp_path / "o8"),
        "hub_offline": (["https://tfhub.dev/graphopt-tests/missing/1", "-o", tmp_path / "o9"], 3, tmp_path / "o9"),
    }


CASES = ["missing", "empty", "corrupt", "unknown_format", "wrong_tags", "wrong_signature", "no_such_output",
         "output_exists", "inside_input", "bad_transform", "hub_offline"]


@pytest.mark.parametrize("case", CASES)
def test_error_paths_exit_nonzero_with_one_paragraph(case, tmp_path, model_path, cli, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub_cache"))
    monkeypatch.setenv("GRAPHOPT_HUB_TIMEOUT", "5")
    args, code_expected, output = _error_cases(tmp_path, model_path)[case]
    code, out, err = cli("optimize", *args)
    assert code == code_expected, err
    assert "Traceback" not in err and "Traceback" not in out
    assert err.startswith("error:")
    paragraph = err.strip().split("\n\n")
    assert len(paragraph) == 1 and len(err.strip().splitlines()) <= 8, err
    if output is not None:
        assert not output.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_string_lookup_model_still_answers_after_optimize(model_path, tmp_path, cli):
    import tensorflow as tf

    src = model_path("string_lookup", models.string_lookup_saved_model)
    data = np.load(str(src) + ".expected.npz", allow_pickle=True)
    out = tmp_path / "opt"
    code, _, err = cli("optimize", src, "-o", out, "--transforms", "gtt-seed")
    assert code == 0, err
    served = tf.saved_model.load(str(out), tags=["serve"]).signatures["serving_default"]
    got = served(words=tf.constant(data["words"].astype(object)))["output_0"].numpy()
    np.testing.assert_allclose(got, data["expected"], rtol=1e-5, atol=1e-6)


def test_config_file_gives_the_pipeline(model_path, tmp_path, cli):
    src = model_path("frozen.pb", models.frozen_graph)
    config = tmp_path / "graphopt.toml"
    config.write_text('transforms = "strip_unused_nodes fold_constants(ignore_errors=true)"\n')
    code, stdout, err = cli("optimize", src, "-o", tmp_path / "out.pbtxt", "--config", config, "--outputs",
                            "prob,peak")
    assert code == 0, err
    assert "strip_unused_nodes" in stdout and "fold_constants" in stdout and "merge_duplicate_nodes" not in stdout
    assert (tmp_path / "out.pbtxt").read_text().startswith("node {")
    code, _, err = cli("optimize", src, "-o", tmp_path / "o2", "--config", config, "--transforms", "fold_constants")
    assert code == 2 and "not both" in err


def test_subprocess_error_is_one_paragraph(tmp_path):
    proc = run_subprocess("optimize", tmp_path / "missing.pb", "-o", tmp_path / "out", timeout=120)
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr and "model path does not exist" in proc.stderr
    assert not (tmp_path / "out").exists()
