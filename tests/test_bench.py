"""``graphopt bench``: every figure present and sane on two tiny models (no timing assertions beyond > 0)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from graphopt.bench import RATIO_FIELDS, bench
from graphopt.errors import ExitCode
from graphopt.model import Model, Signature, TensorSpec


def _mlp(seed: int, hidden: int) -> Model:
    import tensorflow as tf

    g = tf.Graph()
    rng = np.random.default_rng(seed)
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 16], name="x")
        h = tf.nn.relu(tf.matmul(x, tf.constant(rng.normal(size=(16, hidden)).astype(np.float32), name="w1")))
        tf.identity(tf.matmul(h, tf.constant(rng.normal(size=(hidden, 4)).astype(np.float32), name="w2")), name="y")
    sig = Signature(inputs={"x": TensorSpec("x:0", "float32", (None, 16))},
                    outputs={"y": TensorSpec("y:0", "float32", (None, 4))})
    return Model(g.as_graph_def(), sig, source=f"mlp{hidden}")


def _saved_model(model: Model, path) -> None:
    """A TF1 SavedModel of a frozen graph, as TF Serving loads it."""
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        tf.graph_util.import_graph_def(model.graph_def, name="")
        with tf.compat.v1.Session(graph=g) as sess:
            tf.compat.v1.saved_model.simple_save(sess, str(path), {"x": g.get_tensor_by_name("x:0")},
                                                 {"y": g.get_tensor_by_name("y:0")})


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    small, big = _mlp(0, 8), _mlp(1, 64)
    pb = root / "small.pb"
    pb.write_bytes(small.graph_def.SerializeToString())
    _saved_model(big, root / "big")
    return pb, root / "big", small, big


def test_bench_two_models_all_fields(two_models):
    pb, sm, small, big = two_models
    report = bench([str(pb), str(sm)], runs=3, warmup=1, grappler=["full", "off"])
    a, b = report.models
    assert (a.label, b.label) == ("small.pb", "big")
    assert (a.format, b.format) == ("pb", "saved_model_tf1")
    assert a.disk_bytes == pb.stat().st_size
    assert b.disk_bytes > (sm / "saved_model.pb").stat().st_size - 1
    assert a.nodes == len(small.graph_def.node) and b.nodes == len(big.graph_def.node)
    assert a.const_bytes == (16 * 8 + 8 * 4) * 4 and b.const_bytes == (16 * 64 + 64 * 4) * 4
    for res in (a, b):
        assert res.cold.load_s > 0 and res.cold.first_run_s > 0 and res.cold.total_s > 0
        assert res.cold.peak_rss_bytes > 0
        assert res.warm.median_ms > 0 and res.warm.p90_ms >= res.warm.median_ms and res.warm.runs == 3
    assert a.cold.method == "import_graph_def" and b.cold.method.startswith("saved_model loader")
    assert (a.grappler, b.grappler) == ("full", "off")
    assert all(a.ratios[k] == 1.0 for k in RATIO_FIELDS)
    assert b.ratios["const_bytes"] == pytest.approx(b.const_bytes / a.const_bytes)
    assert set(b.ratios) == set(RATIO_FIELDS) and all(v is not None and v > 0 for v in b.ratios.values())
    d = json.loads(json.dumps(report.to_dict()))
    assert d["inputs"] == {"x": {"dtype": "float32", "shape": [1, 16]}} and d["machine"]["cores"] >= 1


def test_bench_in_memory_model_without_cold_start():
    report = bench([_mlp(0, 8)], runs=2, warmup=0, cold=False)
    (res,) = report.models
    assert res.label == "mlp8 #1" and res.format == "graph_def" and res.cold is None
    assert res.warm.median_ms > 0 and res.ratios["cold_s"] is None


def test_bench_cli_json_and_table(cli, two_models):
    pb, sm, _, _ = two_models
    code, out, _ = cli("bench", pb, sm, "--json", "--runs", "2", "--warmup", "0", "--no-cold")
    assert code == 0
    data = json.loads(out)
    assert [m["label"] for m in data["models"]] == ["small.pb", "big"]
    code, out, _ = cli("bench", pb, sm, "--runs", "2", "--warmup", "0", "--no-cold", "--label", "a", "--label", "b")
    assert code == 0 and "warm median ms" in out and "nodes" in out


def test_bench_cli_usage_errors(cli, two_models):
    pb, sm, _, _ = two_models
    code, _, err = cli("bench", pb, sm, "--grappler", "on,off,on")
    assert code == ExitCode.USAGE and "--grappler" in err
    code, _, err = cli("bench")
    assert code == ExitCode.USAGE
    code, _, err = cli("bench", "/nonexistent/model.pb")
    assert code == ExitCode.INPUT


def test_shipped_session_config_is_used(two_models, tmp_path):
    import shutil

    from graphopt.bench import runtime_config

    _, sm, _, _ = two_models
    copy = tmp_path / "shipped"
    shutil.copytree(sm, copy)
    assert runtime_config("shipped", copy)[1] == "full (none shipped)"
    (copy / "session_config.pbtxt").write_text("graph_options { rewrite_options { disable_meta_optimizer: true } }\n")
    config, desc = runtime_config("shipped", copy)
    assert desc == "off (shipped)" and config.graph_options.rewrite_options.disable_meta_optimizer
    assert runtime_config("constfold")[0].graph_options.rewrite_options.optimizers == ["constfold"]
    report = bench([str(copy)], runs=1, warmup=0, cold=False, grappler="shipped")
    assert report.models[0].grappler == "off (shipped)"


def test_bench_against_a_served_model(cli, tmp_path):
    """Two versions of one model served by ``graphopt serve``, load-tested side by side over gRPC."""
    from serving_support import serve

    from graphopt.serving.export import export_versioned

    model = _mlp(0, 8)
    export_versioned(model, tmp_path / "mlp", warmup=False)
    export_versioned(model, tmp_path / "mlp", warmup=False)
    with serve(tmp_path / "mlp", "mlp", tmp_path) as srv:
        code, out, err = cli("bench", "--server", srv["grpc"], "--model", "mlp", "--model", "mlp:2",
                             "--requests", "8", "--concurrency", "2", "--json")
        assert code == 0, err
        rows = json.loads(out)
        assert [r["model"] for r in rows] == ["mlp", "mlp:2"]
        for r in rows:
            assert r["ok"] == 8 and r["errors"] == 0 and r["throughput_rps"] > 0
            assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        code, out, err = cli("bench", "--server", srv["grpc"], "--model", "mlp", "--requests", "4")
        assert code == 0 and "p99 ms" in out
        code, _, err = cli("bench", "--server", srv["grpc"], "--model", "nope", "--requests", "2")
        assert code == ExitCode.INPUT


def test_suite_targets_and_docs_from_a_real_bench(two_models):
    """benchmarks/targets.py and report.py on a real (tiny) bench: misses are flagged and explained."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import report as suite_report
    import targets as suite_targets

    pb, sm, _, _ = two_models
    rep = bench([str(pb), str(pb), str(sm)], labels=["original", "serving", "gtt-seed"], runs=2, warmup=0,
                cold=False)
    by = {m.label: m.to_dict() for m in rep.models}
    verify_ok = {"passed": True, "max_rel": 0.0, "max_abs": 0.0}
    result = {"model": "MobileNetV2", "variants": {
        "original": {"bench": by["original"], "verify": verify_ok, "seconds": 0.1, "notes": []},
        "serving": {"bench": by["serving"], "verify": verify_ok, "seconds": 0.1, "notes": []},
        "gtt-seed": {"bench": by["gtt-seed"], "verify": verify_ok, "seconds": 0.1, "notes": []},
        "grappler-offline": {"skipped": "not registered"}}}
    checks = suite_targets.evaluate(result)
    by_target = {c["target"]: c for c in checks}
    assert by_target["serving size <= gtt-seed"]["met"] is True  # the small model is smaller than the big one
    assert by_target["serving nodes <= grappler-offline"]["met"] is None
    assert by_target["fp16 size <= 0.51x and rel diff <= 0.001"]["met"] is None
    assert "serving warm latency <= 0.95x" in by_target
    data = {"command": "python benchmarks/run.py --quick", "machine": rep.machine, "runs": 2, "warmup": 0,
            "cold_repeats": 1, "missing_presets": ["serving-fp16"], "models": [result], "targets": checks,
            "memory": None}
    text = suite_report.render(data, "benchmarks/results/x.json")
    assert "| original |" in text and "not measured: not registered" in text and "`serving-fp16`" in text
    assert "python benchmarks/run.py --quick" in text


@pytest.mark.slow
def test_benchmark_suite_end_to_end(tmp_path):
    """``python benchmarks/run.py`` on the TF1 graph: builds, optimizes, verifies, benches, writes JSON and docs."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    docs = tmp_path / "benchmarks.md"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "run.py"), "--models", "tf1", "--variants",
                           "original", "gtt-seed", "serving", "--runs", "2", "--warmup", "0", "--no-memory",
                           "--cache", str(tmp_path / "cache"), "--results", str(tmp_path / "results"),
                           "--docs", str(docs)], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "results" / "latest.json").read_text())
    (model,) = data["models"]
    assert set(model["variants"]) >= {"original", "gtt-seed", "serving"}
    assert model["variants"]["serving"]["verify"]["passed"]
    assert any(t["target"] == "serving nodes <= gtt-seed" and t["met"] is not None for t in data["targets"])
    text = docs.read_text()
    assert "### TF1 graph" in text and "## Targets" in text
