"""graphopt-snapshots writes one graph and one summary per pass, and the graph a failing pass was given."""

from __future__ import annotations

import json

import graphopt_snapshots
import pytest

from graphopt import function_pass
from graphopt.errors import PassError
from graphopt.passes.pipeline import Pipeline
from graphopt.plugins import Host


def _model():
    import tensorflow as tf

    from graphopt.model import Model, Signature, TensorSpec

    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        tf.identity(tf.nn.relu(tf.identity(x * tf.add(1.0, 2.0))), name="y")
    return Model(g.as_graph_def(), Signature({"x": TensorSpec("x:0", "float32", (None, 2))},
                                             {"y": TensorSpec("y:0", "float32", (None, 2))}))


@function_pass(name="snap_test_fail", description="raises")
def failing(model):
    raise RuntimeError("nope")


def _host():
    class Extra:
        @staticmethod
        @graphopt_snapshots.hookimpl
        def graphopt_register_passes(register):
            register(failing)

    return Host.create(plugins=True, allow=["snapshots", "snap-extra"],
                       extra=[("snapshots", graphopt_snapshots), ("snap-extra", Extra)])


def test_one_graph_and_summary_per_pass(tmp_path, monkeypatch):
    import tensorflow as tf

    monkeypatch.setenv("GRAPHOPT_SNAPSHOT_DIR", str(tmp_path))
    model = _model()
    result = Pipeline.parse("fold_constants remove_nodes(op=Identity)", host=_host()).run(model)
    (run,) = tmp_path.iterdir()
    names = sorted(p.name for p in run.iterdir())
    assert names == ["001-fold_constants.json", "001-fold_constants.pb",
                     "002-remove_nodes.json", "002-remove_nodes.pb"]
    last = tf.compat.v1.GraphDef.FromString((run / "002-remove_nodes.pb").read_bytes())
    assert last == result.model.graph_def
    summary = json.loads((run / "002-remove_nodes.json").read_text())
    assert summary["status"] == "applied" and summary["ops_delta"] == {"Identity": -1}
    assert summary["nodes_before"] - summary["nodes_after"] == 1


def test_a_failed_pass_leaves_its_input_and_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_SNAPSHOT_DIR", str(tmp_path))
    model = _model()
    with pytest.raises(PassError):
        Pipeline.parse("snap_test_fail", host=_host()).run(model)
    (run,) = tmp_path.iterdir()
    summary = json.loads((run / "001-snap_test_fail.json").read_text())
    assert summary["status"] == "failed" and "nope" in summary["error"] and summary["rolled_back"] is False
    assert (run / "001-snap_test_fail.pb").read_bytes() == model.graph_def.SerializeToString()


def test_nothing_is_written_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("GRAPHOPT_SNAPSHOT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    Pipeline.parse("fold_constants", host=_host()).run(_model())
    assert not any(tmp_path.iterdir())
