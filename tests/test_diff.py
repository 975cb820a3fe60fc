"""graphopt.analysis.diff on real graphs: the seed's list, renames, constant edits, functions, JSON schema."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from models import tf1_seed_graph

from graphopt.analysis.diff import diff_models
from graphopt.analysis.stats import analyze
from graphopt.passes.pipeline import Pipeline
from graphopt.runtime.session import run_model

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"


@pytest.fixture(scope="module")
def seed_run():
    model, facts = tf1_seed_graph()
    result = Pipeline.parse("gtt-seed").run(model)
    return model, facts, result.model


def _outputs_agree(a, b):
    x = np.random.default_rng(1).random((3, 8)).astype(np.float32)
    np.testing.assert_allclose(run_model(a, {"x": x})["probs"], run_model(b, {"x": x})["probs"], rtol=1e-6)


def test_seed_list_diff_shows_exactly_the_removed_identities_and_the_stripped_branch(seed_run):
    before, facts, after = seed_run
    d = diff_models(before, after)
    removed = {name for name, _ in d.removed}
    identity_like = {n.name for n in before.graph_def.node if n.op in ("Identity", "CheckNumerics")}
    unreachable = set(analyze(before).unreachable)
    assert set(facts["train"]) <= unreachable
    assert removed == identity_like | unreachable
    assert d.added == []
    assert d.renamed == 0
    # Every change is a consumer rewired past a removed node or a dropped _class attribute.
    for c in d.changed:
        assert c.inputs_before is not None or set(c.attrs) == {"_class"}, c
        if c.attrs:
            assert c.attrs["_class"][1] is None
    rewired = {c.name: c for c in d.changed}
    assert rewired["dense1/MatMul"].inputs_before == ["x", "w1/read"]
    assert rewired["dense1/MatMul"].inputs_after == ["x", "w1"]  # "x:0" spelled "x": the same tensor
    assert d.ops_delta["Identity"] == -4 and d.ops_delta["CheckNumerics"] == -1
    assert d.size_delta == after.size_bytes - before.size_bytes < 0
    _outputs_agree(before, after)


def test_training_branch_is_one_neighbourhood(seed_run):
    before, facts, after = seed_run
    d = diff_models(before, after)
    hoods = [h for h in d.neighbourhoods if set(facts["train"]) & set(h.removed)]
    assert len(hoods) == 1
    assert set(hoods[0].removed) == set(facts["train"])
    assert hoods[0].boundary == ["loop/Exit_1"]  # where the branch hung off the inference graph
    assert sum(h.size for h in d.neighbourhoods) == len(d.removed) + len(d.added) + len(d.changed)


def test_renamed_graph_is_matched_by_structure(seed_run):
    _, _, optimized = seed_run
    renamed = Pipeline.parse("obfuscate_names").run(optimized).model
    d = diff_models(optimized, renamed)
    assert d.removed == [] and d.added == []
    kept = {"x", "probs"}  # obfuscate_names keeps inputs and outputs
    assert d.renamed == len(optimized.graph_def.node) - len(kept)
    assert all(c.inputs_before is None and not c.attrs and c.op_before is None for c in d.changed)
    by_name = diff_models(optimized, renamed, structural=False)
    assert len(by_name.removed) == len(by_name.added) == d.renamed
    _outputs_agree(optimized, renamed)


def test_constant_content_decides_matches_and_changes(seed_run):
    import tensorflow as tf

    before, _, _ = seed_run
    edited = before.copy()
    node = next(n for n in edited.graph_def.node if n.name == "w2")
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.ones((16, 4), np.float32)))
    d = diff_models(before, edited)
    assert [c.name for c in d.changed] == ["w2"] and set(d.changed[0].attrs) == {"value"}
    before_text, after_text = d.changed[0].attrs["value"]
    assert before_text.startswith("float32[16,4] 256 B #") and before_text != after_text

    # A renamed constant with the same content is matched; one with other content is not.
    renamed = before.copy()
    for n in renamed.graph_def.node:
        if n.name == "w1":
            n.name = "weights_one"
        n.input[:] = ["weights_one" if i == "w1" else i for i in n.input]
    d = diff_models(before, renamed)
    assert d.removed == [] and d.added == []
    assert [(c.renamed_from, c.name) for c in d.changed if c.renamed_from] == [("w1", "weights_one")]
    assert {c.name for c in d.changed} == {"weights_one"}  # w1/read's input follows the rename


def test_identical_graphs(seed_run):
    before, _, _ = seed_run
    d = diff_models(before, before.copy())
    assert d.identical and d.unchanged == len(before.graph_def.node) and d.neighbourhoods == []
    assert d.to_dict()["summary"]["identical"] is True


def test_function_library_changes():
    import tensorflow as tf

    def graph(scale):
        @tf.function(input_signature=[tf.TensorSpec([2], tf.float32)])
        def f(x):
            return tf.function(lambda y: y * scale)(x)

        return f.get_concrete_function().graph.as_graph_def()

    a, b = graph(2.0), graph(3.0)
    d = diff_models(a, b)
    (name_a,) = {f.signature.name for f in a.library.function}
    (name_b,) = {f.signature.name for f in b.library.function}
    assert name_a != name_b  # TF numbers traced functions: the same lambda, another name
    # Matched by name up to the trailing number: one function, renamed and changed (2.0 -> 3.0), not -1 +1.
    assert d.functions["removed"] == d.functions["added"] == []
    assert d.functions["renamed"] == [[name_a, name_b]] and d.functions["changed"] == [name_b]
    (change,) = d.function_changes
    assert (change.name, change.renamed_from, change.status) == (name_b, name_a, "changed")
    assert not d.identical
    # The call node's attr f names the functions matched: not reported as an attribute change.
    assert not any("f" in c.attrs for c in d.changed)


def test_renamed_function_with_the_same_body_is_no_difference():
    import tensorflow as tf

    def graph():
        @tf.function(input_signature=[tf.TensorSpec([2], tf.float32)])
        def f(x):
            return tf.function(lambda y: y * 2.0)(x)

        return f.get_concrete_function().graph.as_graph_def()

    a, b = graph(), graph()  # traced twice: new function names, same content
    d = diff_models(a, b)
    assert d.functions["renamed"] and d.identical and not d.function_changes


def test_diff_json_matches_documented_schema(seed_run):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMAS / "diff.schema.json").read_text())
    before, _, after = seed_run
    renamed = Pipeline.parse("obfuscate_names").run(after).model
    for d in (diff_models(before, after), diff_models(after, renamed), diff_models(before, before)):
        data = json.loads(json.dumps(d.to_dict()))
        jsonschema.validate(data, schema)
        assert data["schema_version"] == 1
    data = diff_models(before, after).to_dict()
    data["summary"]["added"] = -1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)


# --- like with like: loader pruning apart, and what one pass changed ------------------------------------------


def _dead_branch_pb(path):
    """A frozen graph whose output ``y`` goes through an Identity, plus a branch no output needs."""
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        w = tf.constant(np.arange(6, dtype=np.float32).reshape(3, 2), name="w")
        tf.nn.relu(tf.matmul(tf.identity(x, name="copy"), w), name="y")
        tf.reduce_sum(tf.square(x, name="dead_square"), name="dead_sum")  # not an output below
    path.write_bytes(g.as_graph_def().SerializeToString())


def test_diff_reports_loader_pruning_apart_from_the_pass(model_path, tmp_path):
    from graphopt.loaders import load
    from graphopt.optimizer import optimize

    src = model_path("dead_branch.pb", _dead_branch_pb)
    out = tmp_path / "out"
    done = optimize(src, out, transforms="strip_debug_ops", outputs=["y"])
    assert done.records[0].nodes_before - done.records[0].nodes_after == 1  # the pass removed the Identity
    a, b = load(src, outputs=["y"]), load(out)
    dead = {"dead_square", "dead_sum", "Const"}  # Const: the Sum's axis
    assert {name for name, _ in b.metadata["load_pruned"]} == dead  # loading the SavedModel dropped them
    d = diff_models(a, b)
    assert [name for name, _ in d.removed] == ["copy"]  # only what the pass removed
    assert {name for name, _ in d.pruned_by_loading["b"]} == dead
    assert d.to_dict()["summary"]["pruned_by_loading"] == {"a": 0, "b": 3}


def test_cli_diff_says_what_loading_pruned(cli, model_path, tmp_path):
    src = model_path("dead_branch.pb", _dead_branch_pb)
    out = tmp_path / "out"
    code, _, err = cli("optimize", src, "-o", out, "--transforms", "strip_debug_ops", "--outputs", "y")
    assert code == 0, err
    code, stdout, _ = cli("diff", src, out, "--outputs", "y")
    assert code == 0
    text = " ".join(stdout.split())  # the rich view wraps at 80 columns
    assert stdout.startswith("-1 removed") and "pruned 3 node(s) its outputs do not need" in text


def test_optimize_diff_shows_what_one_pass_changed(cli, seed_run, model_path, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from graphopt.optimizer import optimize

    before, _, _ = seed_run
    done = optimize(before, None, transforms="strip_debug_ops fold_constants(ignore_errors=true)",
                    diff=["strip_debug_ops"], verify=False)
    ((name, iteration, d),) = done.diffs
    record = done.records[0]
    assert name == "strip_debug_ops" and iteration is None
    assert len(d.removed) == record.nodes_before - record.nodes_after + len(d.added)
    assert {op for _, op in d.removed} <= {"Identity", "CheckNumerics", "Assert", "NoOp", "Const"}
    data = done.to_dict()
    assert data["diffs"][0]["pass"] == "strip_debug_ops"
    jsonschema.validate(data["diffs"][0]["diff"], json.loads((SCHEMAS / "diff.schema.json").read_text()))
    from graphopt.errors import UsageError

    with pytest.raises(UsageError, match="not in the pipeline"):
        optimize(before, None, transforms="strip_debug_ops", diff=["fold_all_batch_norm"], verify=False)
    src = model_path("dead_branch.pb", _dead_branch_pb)
    report = tmp_path / "r.json"
    code, stdout, err = cli("optimize", src, "-o", tmp_path / "o.pb", "--transforms", "strip_debug_ops",
                            "--outputs", "y", "--diff", "all", "--report", report)
    assert code == 0, err
    assert "what strip_debug_ops changed" in stdout and "-1 removed" in stdout
    assert json.loads(report.read_text())["diffs"][0]["diff"]["summary"]["removed"] == 1
