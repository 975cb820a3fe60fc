"""graphopt.analysis.stats on real TensorFlow graphs: the networkx model and the statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from models import tf1_seed_graph

from graphopt.analysis.stats import GraphStats, analyze, constant_info, longest_path_length, to_networkx
from graphopt.graph.names import parse_input

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"


@pytest.fixture(scope="module")
def seed():
    return tf1_seed_graph()


def _function_graph_def():
    """A TF2 graph whose library holds a called function and a functional While's cond/body."""
    import tensorflow as tf

    @tf.function
    def inner(x):
        return tf.nn.relu(x) * 2.0

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def outer(x):
        y = inner(x)
        _, y = tf.while_loop(lambda i, v: i < 2, lambda i, v: (i + 1, v + 1.0), [tf.constant(0), y])
        return y

    return outer.get_concrete_function().graph.as_graph_def()


def test_parse_input_forms():
    assert parse_input("a/b") == ("a/b", 0, False)
    assert parse_input("a/b:2") == ("a/b", 2, False)
    assert parse_input("^a/b") == ("a/b", -1, True)
    assert parse_input("body/add:z:0") == ("body/add", "z:0", False)  # function-body reference


def test_data_and_control_edges_and_ports(seed):
    model, _ = seed
    g = to_networkx(model.graph_def).main
    assert g.number_of_nodes() == len(model.graph_def.node)
    # The loop's constants hang off the loop body by control edges only.
    edge = g.edges["loop/Identity", "loop/add/y"]
    assert edge["control"] is True and edge["data"] == []
    # Output ports are kept: loop/Identity reads output 1 of the Switch (the "true" branch).
    assert g.edges["loop/Switch", "loop/Identity"]["data"] == [(1, 0)]
    assert g.edges["loop/Switch", "loop/Exit"]["data"] == [(0, 0)]
    # A producer feeding two inputs of one consumer keeps both (port, input index) pairs.
    assert g.edges["dense1/Relu", "dense1/CheckNumerics"]["data"] == [(0, 0)]
    assert g.nodes["loop/Merge"]["op"] == "Merge"


def test_tf1_loop_is_cyclic_and_nothing_crashes(seed):
    model, facts = seed
    stats = analyze(model)
    assert stats.cyclic is True and stats.longest_path is None
    # Exactly the training branch and the unused loop counter exit feed no output.
    assert set(stats.unreachable) == set(facts["train"]) | {"loop/Exit"}
    assert stats.control_edges == 3
    json.dumps(stats.to_dict())


def test_statistics_of_the_seed_graph(seed):
    model, _ = seed
    stats = analyze(model)
    gd = model.graph_def
    assert stats.nodes == len(gd.node)
    assert stats.size_bytes == gd.ByteSize()
    assert stats.ops["Identity"] == 4 and stats.ops["CheckNumerics"] == 1 and sum(stats.ops.values()) == stats.nodes
    assert list(stats.ops)[0] == "Const"  # most frequent first
    # w1 [8,16] + w2 [16,4] + 3 float scalars; 5 int32 values (4 scalars + a [2] vector)
    assert stats.parameter_count == 8 * 16 + 16 * 4 + 2
    assert stats.const_bytes_by_dtype == {"float32": (128 + 64 + 2) * 4, "int32": 5 * 4}
    assert stats.const_bytes == sum(stats.const_bytes_by_dtype.values())
    assert [c.name for c in stats.largest_constants[:2]] == ["w1", "w2"]
    assert stats.largest_constants[0].shape == (8, 16) and stats.largest_constants[0].bytes == 512
    assert [t["key"] for t in stats.inputs] == ["x"] and [t["key"] for t in stats.outputs] == ["probs"]
    assert stats.num_functions == 0


def test_constant_sizes_without_decoding():
    import tensorflow as tf

    with tf.Graph().as_default() as g:
        tf.constant(np.zeros((100, 10), np.float16), name="half")  # tensor_content
        tf.constant(7, shape=[4, 4], dtype=tf.int64, name="splat")  # one value broadcast to the shape
        tf.constant(["ab", "cde"], name="words")
        tf.constant("xy", shape=[3], name="splat_str")
    nodes = {n.name: n for n in g.as_graph_def().node}
    half = constant_info(nodes["half"])
    assert (half.dtype, half.elements, half.bytes) == ("float16", 1000, 2000)
    splat = constant_info(nodes["splat"])
    assert (splat.dtype, splat.elements, splat.bytes) == ("int64", 16, 128)
    assert constant_info(nodes["words"]).bytes == 5
    assert constant_info(nodes["splat_str"]).bytes == 6


def test_functions_are_their_own_subgraphs():
    gd = _function_graph_def()
    gm = to_networkx(gd)
    names = {f.signature.name for f in gd.library.function}
    assert set(gm.functions) == names and len(names) >= 3  # inner, while cond, while body
    inner = next(g for n, g in gm.functions.items() if "inner" in n)
    ops = dict(inner.nodes(data="op"))
    assert ops["x"] == "_Arg"
    assert any(op == "Relu" for op in ops.values())
    rets = [n for n, op in ops.items() if op == "_Retval"]
    assert rets and all(inner.in_degree(r) == 1 for r in rets)
    # Edges inside the body reach from the argument to the return value.
    import networkx as nx

    assert nx.has_path(inner, "x", rets[0])
    stats = analyze(gd)
    assert stats.num_functions == len(names)
    assert set(stats.functions) == names and all(v > 0 for v in stats.functions.values())
    assert stats.cyclic is False and stats.longest_path >= 2


def test_bare_graph_def_infers_inputs_and_outputs_and_longest_path():
    import tensorflow as tf

    with tf.Graph().as_default() as g:
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        y = x
        for i in range(5):
            y = tf.add(y, 1.0, name=f"add{i}")
        tf.identity(y, name="out")
        tf.compat.v1.placeholder(tf.float32, [1], name="unused_in")
    gd = g.as_graph_def()
    stats = analyze(gd)
    assert [t["name"] for t in stats.inputs] == ["x:0", "unused_in:0"]
    assert [t["name"] for t in stats.outputs] == ["out:0"]
    assert stats.longest_path == 6  # x -> add0 .. add4 -> out
    assert stats.unreachable == ["unused_in"]
    assert stats.signature is None


def test_missing_inputs_do_not_crash():
    import tensorflow as tf

    gd = tf.compat.v1.GraphDef()
    n = gd.node.add(name="a", op="Identity")
    n.input.append("ghost:1")
    gm = to_networkx(gd)
    assert gm.main.nodes["ghost"]["op"] == "<missing>"
    stats = analyze(gd)
    assert stats.nodes == 1 and "ghost" not in stats.unreachable


def test_longest_path_length_on_a_cycle():
    import networkx as nx

    assert longest_path_length(nx.DiGraph([(1, 2), (2, 3), (3, 1)])) is None
    assert longest_path_length(nx.DiGraph([(1, 2), (2, 3), (1, 3)])) == 2
    assert longest_path_length(nx.DiGraph()) == 0


def test_json_matches_documented_schema(seed):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMAS / "inspect.schema.json").read_text())
    model, _ = seed
    for data in (analyze(model).to_dict(), analyze(_function_graph_def()).to_dict()):
        jsonschema.validate(json.loads(json.dumps(data)), schema)
    broken = analyze(model).to_dict()
    del broken["ops"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_stats_is_a_dataclass_with_the_issue_keys(seed):
    model, _ = seed
    data = analyze(model).to_dict()
    assert isinstance(analyze(model), GraphStats)
    for key in ("nodes", "ops", "size_bytes", "const_bytes", "inputs", "outputs", "unreachable", "longest_path",
                "num_functions", "parameter_count", "const_bytes_by_dtype"):
        assert key in data


def test_pass_analysis_plugin_records_stats_around_every_pass(seed):
    from graphopt.analysis.stats import PassAnalysis
    from graphopt.passes.pipeline import Pipeline
    from graphopt.plugins import Host

    host = Host.create(plugins=False)
    plugin = PassAnalysis()
    host.pm.register(plugin)
    model, facts = seed
    result = Pipeline.parse("gtt-seed", host=host).run(model)
    entries = plugin.last
    assert [e["pass"] for e in entries] == [r.name for r in result.records]
    for entry, rec in zip(entries, result.records):
        assert entry["before"]["nodes"] == rec.nodes_before and entry["after"]["nodes"] == rec.nodes_after
        assert entry["after"]["size_bytes"] == rec.size_after
    strip = next(e for e in entries if e["pass"] == "strip_unused_nodes")
    assert set(facts["train"]) <= set(strip["before"]["unreachable"]) and strip["after"]["unreachable"] == []
    assert entries[-1]["after"]["cyclic"] is True  # the TF1 loop survives the seed list
