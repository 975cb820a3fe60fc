"""Pipelines: three ways to build the same one, repeat groups, hooks around passes, failure containment."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import Option, Pass, PassResult, function_pass, hookimpl
from graphopt.errors import PassError, PluginError, UsageError
from graphopt.graph.names import node_name
from graphopt.passes.pipeline import Pipeline, Repeat, find_config, read_config_table
from graphopt.plugins import Host
from graphopt.runtime.session import random_inputs, run_model
from tests.models import graph_model

# --- passes and a plugin that registers them, as a third party would ---------------------------------


class DropOneIdentity(Pass):
    """Bypass one Identity per run (so a repeat group needs several iterations)."""

    name = "test_drop_one_identity"
    description = "Bypass one Identity node."
    options = {"keep": Option(list, [], "names to keep")}

    def run(self, model):
        gd = model.graph_def
        protected = model.protected_nodes | set(self.config["keep"])
        victim = next((n for n in gd.node if n.op == "Identity" and n.name not in protected), None)
        if victim is None:
            return PassResult(model, modified=False)
        source = victim.input[0]
        for node in gd.node:
            for i, inp in enumerate(node.input):
                if node_name(inp) == victim.name and not inp.startswith("^"):
                    node.input[i] = source
        gd.node.remove(victim)
        return PassResult(model, modified=True, counters={"removed": 1})


@function_pass(name="test_grow", description="Add a new unused Const every run (never converges).")
def grow(model, *, prefix: str = "grown"):
    import tensorflow as tf

    n = sum(1 for node in model.graph_def.node if node.name.startswith(prefix))
    node = model.graph_def.node.add()
    node.name, node.op = f"{prefix}_{n}", "Const"
    node.attr["dtype"].type = tf.float32.as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(1.0))
    return model.graph_def


@function_pass(name="test_raise", description="Always raises.")
def raise_(model):
    raise RuntimeError("boom")


@function_pass(name="test_dangling", description="Leaves an input pointing at nothing.")
def dangling(model):
    node = next(n for n in model.graph_def.node if n.op == "Relu")
    node.input[0] = "no_such_node"
    return model.graph_def


@function_pass(name="test_duplicate", description="Adds a node whose name exists.")
def duplicate(model):
    node = model.graph_def.node.add()
    node.CopyFrom(next(n for n in model.graph_def.node if n.op == "Relu"))
    return model.graph_def


@function_pass(name="test_unknown_op", description="Turns Relu into an op TF does not have.")
def unknown_op(model):
    next(n for n in model.graph_def.node if n.op == "Relu").op = "NoSuchOp"
    return model.graph_def


@function_pass(name="test_new_placeholder", description="Turns the weights into a Placeholder nobody feeds.")
def new_placeholder(model):
    import tensorflow as tf

    w = next(n for n in model.graph_def.node if n.name == "w")
    w.op = "Placeholder"
    del w.attr["value"]
    w.attr["shape"].shape.CopyFrom(tf.TensorShape([4, 4]).as_proto())
    return model.graph_def


class ExamplePlugin:
    """What a plugin module contains; registered with Host.create(extra=...)."""

    def __init__(self):
        self.events = []

    @hookimpl
    def graphopt_register_passes(self, register):
        for cls in (DropOneIdentity, grow, raise_, dangling, duplicate, unknown_op, new_placeholder):
            register(cls)

    @hookimpl
    def graphopt_register_presets(self, register):
        register("test-cleanup", "{ test_drop_one_identity }*5 remove_nodes(op=CheckNumerics)",
                 "Identities one by one, then CheckNumerics.")

    @hookimpl
    def graphopt_pipeline_start(self, pipeline, model, context):
        self.events.append(("start", pipeline.spec))

    @hookimpl
    def graphopt_pass_finish(self, pass_, before, result, context):
        self.events.append(("finish", pass_.name, result.modified))

    @hookimpl
    def graphopt_pass_failed(self, pass_, model, error, context, rolled_back):
        self.events.append(("failed", pass_.name, rolled_back))

    @hookimpl(wrapper=True)
    def graphopt_run_pass(self, pass_, model, context):
        result = yield
        result.notes.append(f"wrapped {pass_.name}")
        return result


@pytest.fixture
def plugin():
    return ExamplePlugin()


@pytest.fixture
def host(plugin):
    return Host.create(plugins=True, allow=["testplugin"], extra=[("testplugin", plugin)])


@pytest.fixture(scope="module")
def model():
    import tensorflow as tf

    rng = np.random.default_rng(0)

    def build(x):
        w = tf.constant(rng.standard_normal((4, 4)).astype(np.float32), name="w")
        h = tf.identity(tf.identity(tf.matmul(x, w, name="mm"), name="id1"), name="id2")
        h = tf.debugging.check_numerics(tf.nn.relu(h, name="relu"), "bad", name="check")
        return {"y": tf.multiply(h, tf.add(tf.constant(2.0), tf.constant(1.0)), name="y")}

    return graph_model(build, {"x": (tf.float32, (None, 4))})


# --- three ways to the same pipeline ----------------------------------------------------------------

TEXT = ("remove_nodes(op=CheckNumerics) { test_drop_one_identity(keep=y) fold_constants(ignore_errors=true) }*4 "
        "merge_duplicate_nodes")


def test_programmatic_text_and_toml_give_the_same_pipeline_and_result(host, model, tmp_path):
    registry = host.registry
    programmatic = Pipeline([
        "remove_nodes(op=CheckNumerics)",  # GTT-syntax strings and pass objects mix
        Repeat([DropOneIdentity(keep=["y"]), registry.create("fold_constants", {"ignore_errors": True})],
               max_iterations=4),
        registry.passes["merge_duplicate_nodes"].cls(),
    ], host=host)
    text = Pipeline.parse(TEXT, host=host)
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.graphopt]\npipeline = [\n'
        '  "remove_nodes(op=CheckNumerics)",\n'
        '  {repeat = [{pass = "test_drop_one_identity", keep = ["y"]},\n'
        '             {pass = "fold_constants", ignore_errors = true}], max_iterations = 4},\n'
        '  {pass = "merge_duplicate_nodes"},\n]\n')
    from_pyproject = Pipeline.from_config(tmp_path / "pyproject.toml", host=host)
    (tmp_path / "graphopt.toml").write_text(f"transforms = '''{TEXT}'''\n")
    from_toml = Pipeline.from_config(tmp_path / "graphopt.toml", host=host)

    assert programmatic.spec == text.spec == from_pyproject.spec == from_toml.spec
    assert text.spec == TEXT  # canonical text is the text
    results = [p.run(model) for p in (programmatic, text, from_pyproject, from_toml)]
    graphs = [r.model.graph_def for r in results]
    assert all(g == graphs[0] for g in graphs)
    assert [r.name for r in results[0].records] == [r.name for r in results[1].records]
    feeds = random_inputs(model.signature)
    np.testing.assert_allclose(run_model(results[0].model, feeds)["y"], run_model(model, feeds)["y"], rtol=1e-6)
    ops = [n.op for n in results[0].model.graph_def.node]
    assert "Identity" not in ops and "CheckNumerics" not in ops


def test_config_discovery_prefers_graphopt_toml_and_needs_the_tool_table(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert find_config(tmp_path) is None or find_config(tmp_path).parent != tmp_path
    with pytest.raises(UsageError, match=r"no \[tool.graphopt\]"):
        read_config_table(tmp_path / "pyproject.toml")
    (tmp_path / "pyproject.toml").write_text('[tool.graphopt]\ntransforms = "fold_constants"\n')
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    assert find_config(sub) == tmp_path / "pyproject.toml"
    (tmp_path / "a" / "graphopt.toml").write_text('transforms = "fold_constants"\n')
    assert find_config(sub) == tmp_path / "a" / "graphopt.toml"


@pytest.mark.parametrize("content, message", [
    ("transforms = 3", "must be a string"),
    ('transforms = "a"\npipeline = []', "exactly one"),
    ("pipeline = [{repeat = [], max_iterations = 0}]", "max_iterations"),
    ("pipeline = [{nope = 1}]", "cannot read pipeline item"),
    ("pipeline = [{pass = 'fold_constants', foo = 1}]", "unknown option 'foo'"),
    ("transforms = [", "not valid TOML"),
])
def test_bad_config_is_a_usage_error(tmp_path, host, content, message):
    (tmp_path / "graphopt.toml").write_text(content)
    with pytest.raises(UsageError, match=message):
        Pipeline.from_config(tmp_path / "graphopt.toml", host=host)


# --- repeat groups and presets -------------------------------------------------------------------------


def test_repeat_runs_until_nothing_changes(host, model):
    result = Pipeline.parse("{ test_drop_one_identity }*10", host=host).run(model)
    # Two Identities: removed in iterations 1 and 2, iteration 3 changes nothing and ends the group.
    assert [(r.iteration, r.status) for r in result.records] == [(1, "applied"), (2, "applied"), (3, "unchanged")]
    assert not result.notes


def test_repeat_is_bounded(host, model):
    result = Pipeline.parse("{ test_grow }*3", host=host).run(model)
    assert [r.status for r in result.records] == ["applied"] * 3
    assert "after 3 iterations" in result.notes[0]
    assert sum(n.name.startswith("grown") for n in result.model.graph_def.node) == 3


def test_a_plugin_preset_is_usable_by_name_and_listed_with_its_origin(host, model):
    info = host.registry.presets["test-cleanup"]
    assert info.origin.plugin == "testplugin"
    result = Pipeline.parse("test-cleanup", host=host).run(model)
    assert [r.name for r in result.records][-1] == "remove_nodes"
    assert "CheckNumerics" not in [n.op for n in result.model.graph_def.node]


# --- hooks -----------------------------------------------------------------------------------------------


def test_hooks_see_the_pipeline_and_every_pass(host, plugin, model):
    result = Pipeline.parse("test_drop_one_identity fold_constants", host=host).run(model)
    assert plugin.events[0] == ("start", "test_drop_one_identity fold_constants")
    assert ("finish", "test_drop_one_identity", True) in plugin.events
    assert result.records[0].notes == ["wrapped test_drop_one_identity"]  # the run_pass wrapper saw the result


def test_a_plugin_hook_that_raises_is_named(model):
    class Broken:
        @hookimpl
        def graphopt_pass_finish(self, pass_, before, result, context):
            raise ValueError("hook bug")

    host = Host.create(plugins=True, allow=["brokenhook"], extra=[("brokenhook", Broken())])
    with pytest.raises(PluginError) as info:
        Pipeline.parse("fold_constants", host=host).run(model)
    assert "brokenhook" in info.value.message and "hook bug" in info.value.message


# --- failure containment ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, fragment", [
    ("test_raise", "RuntimeError: boom"),
    ("test_dangling", "reads 'no_such_node', which does not exist"),
    ("test_duplicate", "'relu' appears twice"),
    ("test_unknown_op", "cannot import"),
    ("test_new_placeholder", "node 'w' is now a Placeholder no signature input feeds"),
])
def test_a_failing_pass_stops_the_run_naming_the_pass_and_its_plugin(host, plugin, model, bad, fragment):
    original = model.graph_def.SerializeToString()
    with pytest.raises(PassError) as info:
        Pipeline.parse(f"fold_constants {bad} merge_duplicate_nodes", host=host).run(model)
    err = info.value
    assert bad in err.message and fragment in err.message
    assert "testplugin" in err.where  # the plugin it came from
    assert "after fold_constants" in " ".join(err.details)
    assert ("failed", bad, False) in plugin.events
    assert model.graph_def.SerializeToString() == original  # the input is never modified


@pytest.mark.parametrize("bad", ["test_raise", "test_dangling", "test_duplicate", "test_unknown_op",
                                 "test_new_placeholder"])
def test_keep_going_rolls_the_failed_pass_back_and_runs_the_rest(host, model, bad):
    good = Pipeline.parse("remove_nodes(op=CheckNumerics) merge_duplicate_nodes", host=host).run(model)
    result = Pipeline.parse(f"remove_nodes(op=CheckNumerics) {bad} merge_duplicate_nodes", host=host).run(
        model, keep_going=True)
    assert [r.status for r in result.records] == ["applied", "rolled_back", good.records[1].status]
    assert result.records[1].error and bad in result.records[1].error
    assert result.rolled_back == [result.records[1]]
    assert result.model.graph_def == good.model.graph_def
    # Per pass, GTT's ignore_errors does the same without --keep-going.
    per_pass = Pipeline.parse(f"remove_nodes(op=CheckNumerics) {bad}(ignore_errors=true) merge_duplicate_nodes",
                              host=host).run(model)
    assert [r.status for r in per_pass.records] == [r.status for r in result.records]
    assert per_pass.model.graph_def == good.model.graph_def


def test_records_carry_sizes_ops_and_counters(host, model):
    result = Pipeline.parse("test_drop_one_identity", host=host).run(model)
    (rec,) = result.records
    assert rec.origin == "testplugin" and rec.counters == {"removed": 1}
    assert rec.nodes_after == rec.nodes_before - 1 and rec.ops_delta == {"Identity": -1}
    assert rec.size_after < rec.size_before
    assert result.to_dict()["passes"][0]["name"] == "test_drop_one_identity"


# --- the docs' examples are real code --------------------------------------------------------------------------


def _python_blocks(doc: str) -> list[str]:
    from tests.conftest import ROOT

    text = (ROOT / "docs" / "develop" / doc).read_text()
    return [block.split("\n", 1)[1] for block in text.split("```")[1::2] if block.startswith("python\n")]


def test_the_examples_in_docs_run():
    namespace: dict = {}
    for block in _python_blocks("writing-a-pass.md"):  # the last block defines and calls the test
        exec(compile(block, "docs/develop/writing-a-pass.md", "exec"), namespace)
    assert namespace["ZeroTinyWeights"].name == "zero_tiny_weights"


def test_the_plugin_in_the_docs_is_the_real_one_and_under_40_lines():
    from tests.conftest import ROOT

    shown = _python_blocks("writing-a-plugin.md")[0]
    real = (ROOT / "plugins" / "graphopt-snapshots" / "graphopt_snapshots.py").read_text()
    assert shown == real and len(real.splitlines()) < 40


def test_the_wrapper_example_in_the_hook_reference(model):
    import types

    plugin = types.ModuleType("timing_plugin")
    (block,) = [b for b in _python_blocks("hooks.md") if "def graphopt_run_pass" in b]
    exec(compile(block, "docs/develop/hooks.md", "exec"), plugin.__dict__)
    host = Host.create(plugins=True, allow=["timing"], extra=[("timing", plugin)])
    result = Pipeline.parse("fold_constants remove_nodes(op=CheckNumerics)", host=host).run(model)
    assert all("cpu_seconds" in r.counters for r in result.records)


def test_a_plugin_can_wrap_the_whole_pipeline(host, model):
    seen = []

    class Around:
        @hookimpl(wrapper=True)
        def graphopt_run_pipeline(self, pipeline, model, context):
            seen.append(("before", pipeline.spec, model.node_count))
            try:
                final = yield
            except PassError as exc:
                seen.append(("failed", exc.message))
                raise
            seen.append(("after", final.node_count))
            return final

    around = Host.create(plugins=True, allow=["around", "testplugin"],
                         extra=[("around", Around()), ("testplugin", ExamplePlugin())])
    result = Pipeline.parse("test_drop_one_identity", host=around).run(model)
    assert seen == [("before", "test_drop_one_identity", model.node_count), ("after", model.node_count - 1)]
    assert result.model.node_count == model.node_count - 1
    with pytest.raises(PassError):
        Pipeline.parse("test_raise", host=around).run(model)
    assert seen[-1][0] == "failed" and "boom" in seen[-1][1]


def test_a_pass_whose_constructor_breaks_is_named():
    class Fragile(Pass):
        name = "test_fragile"
        description = "Its constructor has a bug."

        def __init__(self, **options):
            super().__init__(**options)
            raise KeyError("oops")

    class Provider:
        @hookimpl
        def graphopt_register_passes(self, register):
            register(Fragile)

    host = Host.create(plugins=True, allow=["fragile"], extra=[("fragile", Provider())])
    with pytest.raises(PluginError) as info:
        Pipeline.parse("test_fragile", host=host)
    assert "test_fragile" in info.value.message and "fragile" in info.value.where


def test_only_passes_that_edit_their_input_get_a_private_copy(model):
    seen = []

    class Watch(Pass):
        """Records which GraphDef object it is given; edits nothing."""

        name, description = "test_watch", "Record the GraphDef it is given."
        edits_input = False

        def run(self, model):
            seen.append((self.name, model.graph_def))
            return PassResult(model, modified=False)

    class WatchEditing(Watch):
        name = "test_watch_editing"
        edits_input = True  # the default: third-party passes may edit in place

    Pipeline([Watch(), WatchEditing(), "strip_debug_ops", Watch()], host=Host.create(plugins=False)).run(model)
    (_, first), (_, editing), (_, last) = seen
    assert first is model.graph_def  # nothing copied for a pass that does not edit its input
    assert editing is not model.graph_def and editing == model.graph_def  # a private copy, same content
    # strip_debug_ops copies what it changes itself: its result is a new graph, the input is untouched.
    assert last is not model.graph_def and last != model.graph_def
    assert any(n.op == "CheckNumerics" for n in model.graph_def.node)
    assert not any(n.op == "CheckNumerics" for n in last.node)
