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
    names_a = {f.signature.name for f in a.library.function}
    names_b = {f.signature.name for f in b.library.function}
    assert set(d.functions["removed"]) == names_a - names_b
    assert set(d.functions["added"]) == names_b - names_a
    assert not d.identical


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
