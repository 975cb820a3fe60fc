"""Function bodies are first-class: exact FunctionDef <-> GraphDef round trips, passes inside If/While branches,
unused functions pruned, and ops counted per function and in total by inspect, the pass report and diff."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from models import control_flow_saved_model, tf2_function_model

from graphopt.analysis.diff import diff_models
from graphopt.analysis.stats import analyze
from graphopt.errors import PassError
from graphopt.graph.functions import apply_to_functions, body_model, function_to_graph, graph_to_function, library_index
from graphopt.loaders import load
from graphopt.passes.base import PassResult, function_pass
from graphopt.passes.pipeline import Pipeline
from graphopt.verify.compare import verify

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"


# --- models --------------------------------------------------------------------------------------------


def lstm_saved_model(path):
    """A Keras 3 LSTM exported with model.export: its loop is a While whose cond and body are functions."""
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input(shape=(5, 3), name="seq")
    h = keras.layers.LSTM(4, name="lstm")(x)
    keras.Model(x, keras.layers.Dense(2, name="out")(h)).export(str(path), verbose=False)


def asserts_saved_model(path):
    """tf.debugging asserts on the main path, inside both branches of a tf.cond and inside a while loop."""
    import tensorflow as tf

    class Checked(tf.Module):
        def __init__(self):
            self.w = tf.Variable(tf.random.stateless_normal((4, 4), seed=(1, 2)))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            tf.debugging.assert_all_finite(x, "x must be finite")

            def positive():
                tf.debugging.assert_non_negative(tf.reduce_sum(tf.abs(x)), message="non-negative")
                with tf.control_dependencies([tf.debugging.assert_rank(x, 2)]):
                    return tf.identity(tf.matmul(x, self.w))

            def negative():
                tf.debugging.assert_less(tf.reduce_sum(x), 1e9)
                return tf.identity(x * 2.0)

            y = tf.cond(tf.reduce_sum(x) > 0, positive, negative)

            def body(i, v):
                tf.debugging.assert_less(i, 100)
                return i + 1, tf.identity(tf.tanh(v))

            _, y = tf.while_loop(lambda i, v: i < 3, body, [tf.constant(0), y])
            return {"y": y}

    module = Checked()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def grouped_conv_saved_model(path):
    """Keras 3 grouped conv: Keras compiles it with XLA, so it loads as a call of an _XlaMustCompile function."""
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input(shape=(8, 8, 8), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", groups=4, name="gconv")(x)
    keras.Model(x, keras.layers.GlobalAveragePooling2D()(h)).export(str(path), verbose=False)


@pytest.fixture(scope="session")
def lstm(model_path):
    return load(model_path("fn_lstm", lstm_saved_model))


@pytest.fixture(scope="session")
def asserts(model_path):
    return load(model_path("fn_asserts", asserts_saved_model))


@pytest.fixture(scope="session")
def control_flow(model_path):
    return load(model_path("fn_control_flow", control_flow_saved_model))


@pytest.fixture(scope="session")
def grouped(model_path):
    return load(model_path("fn_grouped_conv", grouped_conv_saved_model))


@pytest.fixture(scope="session")
def detector(model_path):
    from graphopt.demo.detector import build_module

    return load(model_path("demo_detector_module", build_module))


def _ops_in_functions(model) -> Counter:
    out: Counter = Counter()
    for f in model.graph_def.library.function:
        out.update(n.op for n in f.node_def)
    return out


# --- FunctionDef <-> GraphDef ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lstm", "asserts", "control_flow", "grouped"])
def test_round_trip_is_exact_and_spells_tensors_as_tensorflow_does(request, name):
    import tensorflow as tf
    from tensorflow.python.framework import function_def_to_graph

    model = request.getfixturevalue(name)
    library = library_index(model.graph_def)
    assert library, "the model keeps functions in its library"
    with tf.Graph().as_default():
        # TensorFlow's own converter looks functions up in the default graph: register the library there.
        tf.graph_util.import_graph_def(model.graph_def, name="")
        for fname, fdef in library.items():
            fg = function_to_graph(fdef, library, versions=model.graph_def.versions)
            back = graph_to_function(fg, fdef, library)
            assert back == fdef, f"{fname} changed on the round trip"
            theirs, _ = function_def_to_graph.function_def_to_graph_def(fdef)
            ours = {n.name: [i if i.startswith("^") or ":" in i else f"{i}:0" for i in n.input]
                    for n in fg.graph_def.node}
            assert ours == {n.name: list(n.input) for n in theirs.node}, fname
            # Arguments are Placeholders of the argument's dtype; the function's returns are flat tensors.
            args = {a.name: a.type for a in fdef.signature.input_arg}
            assert {n.name: n.attr["dtype"].type for n in fg.graph_def.node if n.op == "Placeholder"
                    and n.name in args} == args
            assert set(fg.outputs) == {a.name for a in fdef.signature.output_arg}


def test_a_body_model_imports_with_the_functions_it_calls(asserts):
    import tensorflow as tf

    library = library_index(asserts.graph_def)
    name = next(n for n, f in library.items() if any(node.op == "If" for node in f.node_def))
    fg = function_to_graph(library[name], library, versions=asserts.graph_def.versions)
    body = body_model(fg, asserts)
    assert body.metadata["function"] == name and set(body.signature.inputs) == set(fg.args)
    assert body.protected_nodes >= set(fg.args)
    assert {f.signature.name for f in body.graph_def.library.function}  # the If's branches came along
    with tf.Graph().as_default():
        tf.graph_util.import_graph_def(body.graph_def, name="")


# --- passes inside bodies ------------------------------------------------------------------------------


def test_strip_debug_ops_reaches_inside_if_and_while(asserts):
    before = _ops_in_functions(asserts)
    assert before["Assert"] == 3  # one in a cond branch guard each, one in the loop body
    result = Pipeline.parse("strip_debug_ops").run(asserts)
    record = result.records[0]
    after = _ops_in_functions(result.model)
    assert after["Assert"] == 0 and not any(n.op == "CheckNumerics" for n in result.model.graph_def.node)
    assert record.total["ops_delta"]["Assert"] == -3 and record.counters["removed_Assert"] == 3
    assert any(c["ops_delta"].get("Assert") == -1 for c in record.functions.values())
    # Control returns of removed asserts are gone from the FunctionDefs too (else TF would reject them).
    for f in result.model.graph_def.library.function:
        names = {n.name for n in f.node_def}
        assert set(f.control_ret.values()) <= names and set(f.signature.control_output) <= names
    for x in (np.ones((2, 4), np.float32), -np.ones((2, 4), np.float32)):  # both branches
        assert verify(asserts, result.model, samples={"x": x}).passed


def test_fold_all_batch_norms_reaches_inside_a_cond_branch():
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from graphopt.model import Model, Signature, TensorSpec

    rng = np.random.default_rng(0)
    w = tf.constant(rng.normal(size=(3, 3, 3, 4)).astype(np.float32))
    gamma, beta, mean = (tf.constant(rng.normal(size=4).astype(np.float32)) for _ in range(3))
    var = tf.constant(rng.uniform(0.5, 2.0, size=4).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 6, 6, 3], tf.float32, name="x")])
    def f(x):
        def conv_bn():
            y = tf.nn.conv2d(x, w, 1, "SAME")
            return tf.compat.v1.nn.fused_batch_norm(y, gamma, beta, mean, var, is_training=False)[0]

        return tf.cond(tf.reduce_sum(x) > 0, conv_bn, lambda: tf.nn.conv2d(x, w, 1, "SAME"))

    frozen = convert_variables_to_constants_v2(f.get_concrete_function(), lower_control_flow=False)
    model = Model(frozen.graph.as_graph_def(), Signature(
        inputs={"x": TensorSpec(frozen.inputs[0].name, "float32", (None, 6, 6, 3))},
        outputs={"y": TensorSpec(frozen.outputs[0].name, "float32", (None, 6, 6, 4))}))
    assert _ops_in_functions(model)["FusedBatchNormV3"] == 1
    result = Pipeline.parse("fold_all_batch_norms").run(model)
    assert _ops_in_functions(result.model)["FusedBatchNormV3"] == 0
    assert result.records[0].counters["folded"] == 1
    x = rng.uniform(0.1, 1.0, size=(2, 6, 6, 3)).astype(np.float32)
    for feed in (x, -x):
        assert verify(model, result.model, samples={"x": feed}).passed


def test_only_passes_that_declare_it_run_on_bodies(asserts):
    seen: list[str | None] = []

    def record(model):
        seen.append(model.metadata.get("function"))
        return PassResult(model, modified=False)

    graph_only = function_pass(name="test_graph_only")(record)
    everywhere = function_pass(name="test_everywhere", applies_to_functions=True)(record)
    Pipeline([graph_only()]).run(asserts)
    assert seen == [None]
    seen.clear()
    Pipeline([everywhere()]).run(asserts)
    assert seen[0] is None and sorted(seen[1:]) == sorted(library_index(asserts.graph_def))


def test_a_failure_inside_a_body_names_the_function(asserts):
    def fail_in_bodies(model):
        if model.metadata.get("function"):
            raise ValueError("cannot handle this body")
        return model

    cls = function_pass(name="test_fails_in_bodies", applies_to_functions=True)(fail_in_bodies)
    with pytest.raises(PassError) as info:
        Pipeline([cls()]).run(asserts)
    assert "in function " in info.value.where and "cannot handle this body" in info.value.message
    # With --keep-going the whole pass (main graph and bodies) is rolled back as one.
    result = Pipeline([cls()]).run(asserts, keep_going=True)
    assert result.records[0].status == "rolled_back" and result.model.graph_def == asserts.graph_def


def test_apply_to_functions_leaves_the_graph_alone_when_nothing_changes(lstm):
    graph_def, done = apply_to_functions(lambda body: PassResult(body, modified=False), lstm)
    assert graph_def is lstm.graph_def and not done.changed


# --- pruning -------------------------------------------------------------------------------------------


def test_functions_nothing_calls_are_pruned_after_a_pass():
    model = tf2_function_model()
    extra = model.graph_def.library.function.add()
    extra.CopyFrom(model.graph_def.library.function[0])
    extra.signature.name = "nobody_calls_me"
    result = Pipeline.parse("strip_debug_ops").run(model)
    record = result.records[0]
    assert record.status == "applied" and record.functions_pruned == ["nobody_calls_me"]
    assert record.functions["nobody_calls_me"]["nodes_after"] == 0
    names = {f.signature.name for f in result.model.graph_def.library.function}
    assert "nobody_calls_me" not in names and len(names) == len(model.graph_def.library.function) - 1


def test_inlining_prunes_the_functions_it_inlined(grouped):
    assert any(n.op == "StatefulPartitionedCall" for n in grouped.graph_def.node)
    result = Pipeline.parse("inline_functions").run(grouped)
    assert not result.model.graph_def.library.function
    assert result.records[0].counters["functions_pruned"] == len(grouped.graph_def.library.function)
    assert verify(grouped, result.model).passed


# --- counting per function and in total -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lstm", "asserts"])
def test_inspect_counts_ops_per_function_and_in_total(request, name):
    model = request.getfixturevalue(name)
    stats = analyze(model)
    bodies = {f.signature.name: Counter(n.op for n in f.node_def) for f in model.graph_def.library.function}
    assert stats.function_ops == {k: dict(v) for k, v in bodies.items()} and stats.function_ops
    total = Counter(n.op for n in model.graph_def.node)
    for ops in bodies.values():
        total.update(ops)
    assert stats.total_ops == dict(total) and stats.total_nodes == sum(total.values())
    assert stats.total_nodes > stats.nodes


def test_inspect_json_with_functions_matches_the_schema(lstm, cli, model_path):
    jsonschema = pytest.importorskip("jsonschema")
    code, out, _ = cli("inspect", model_path("fn_lstm", lstm_saved_model), "--json")
    assert code == 0
    data = json.loads(out)
    jsonschema.validate(data, json.loads((SCHEMAS / "inspect.schema.json").read_text()))
    assert data["total"]["nodes"] == analyze(lstm).total_nodes and data["function_ops"]
    code, out, _ = cli("inspect", model_path("fn_lstm", lstm_saved_model))
    assert "ops in total (main graph and functions)" in out


def test_the_tf1_detector_has_no_functions_and_totals_are_its_graph(detector):
    stats = analyze(detector)
    assert stats.function_ops == {} and stats.total_nodes == stats.nodes and stats.total_ops == stats.ops
    result = Pipeline.parse("strip_debug_ops").run(detector)
    record = result.records[0]
    assert record.status == "applied" and record.functions == {}
    assert record.total["nodes_before"] == record.nodes_before and record.total["nodes_after"] == record.nodes_after


def test_pass_report_shows_function_changes_and_totals(asserts):
    from rich.console import Console

    from graphopt.cli.render import render_report

    result = Pipeline.parse("strip_debug_ops").run(asserts)
    console = Console(width=160, record=True, color_system=None)
    render_report(console, result)
    text = console.export_text()
    assert f"in {len(result.records[0].functions)} function(s)" in text
    total = result.records[0].total
    assert f"with function bodies {total['nodes_before']} → {total['nodes_after']} nodes" in text


def test_diff_counts_ops_per_function_and_in_total(asserts):
    jsonschema = pytest.importorskip("jsonschema")
    after = Pipeline.parse("strip_debug_ops").run(asserts).model
    d = diff_models(asserts, after)
    assert d.total_ops_delta["Assert"] == -3
    changed = {c.name: c for c in d.function_changes}
    assert changed and all(c.status == "changed" for c in changed.values())
    assert sum(c.ops_delta.get("Assert", 0) for c in changed.values()) == -3
    assert d.a.total_nodes - d.b.total_nodes == -d.to_dict()["summary"]["total_nodes_delta"]
    jsonschema.validate(json.loads(json.dumps(d.to_dict())), json.loads((SCHEMAS / "diff.schema.json").read_text()))
