"""Calls and shapes that block every pass: inlining (XLA-compiled calls included), grouped convolutions as
native ops, and shape specialization with --input-shape."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter

import numpy as np
import pytest

from graphopt.errors import UsageError
from graphopt.loaders import load
from graphopt.model import Model, Signature, TensorSpec
from graphopt.passes.pipeline import Pipeline
from graphopt.passes.shapes import specialize
from graphopt.verify.compare import verify


def _ops(graph_def) -> Counter:
    out = Counter(n.op for n in graph_def.node)
    for f in graph_def.library.function:
        out.update(n.op for n in f.node_def)
    return out


# --- models --------------------------------------------------------------------------------------------


def grouped_convs_saved_model(path):
    """Two Keras 3 grouped convs (XLA-compiled by Keras): groups=4, and groups == channels (ConvNeXt's kind)."""
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input(shape=(9, 9, 8), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", groups=4, name="grouped")(x)
    h = keras.layers.Conv2D(16, 5, padding="same", groups=8, name="depthwise_like")(h)
    keras.Model(x, keras.layers.GlobalAveragePooling2D()(h)).export(str(path), verbose=False)


def shape_arithmetic_saved_model(path):
    """Dense on a feature map (tensordot: Shape/GatherV2/Prod/Pack at run time) and LayerNorm, batch unknown."""
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input(shape=(4, 4, 3), name="image")
    h = keras.layers.Dense(6, name="pointwise")(x)
    h = keras.layers.LayerNormalization(name="norm")(h)
    h = keras.layers.Dense(5, name="pointwise2")(h)
    keras.Model(x, keras.layers.GlobalAveragePooling2D()(h)).export(str(path), verbose=False)


@pytest.fixture(scope="session")
def grouped_path(model_path):
    return model_path("inline_grouped_convs", grouped_convs_saved_model)


@pytest.fixture(scope="session")
def grouped(grouped_path):
    return load(grouped_path)


@pytest.fixture(scope="session")
def shapes_path(model_path):
    return model_path("shape_arithmetic", shape_arithmetic_saved_model)


@pytest.fixture(scope="session")
def shapes_model(shapes_path):
    return load(shapes_path)


def _calls_graph(*, xla_op: bool) -> Model:
    """A TF1 graph with two calls: ``double`` (its body ends in XlaSharding when ``xla_op``) and ``plus_one``,
    a StatefulPartitionedCall that waits on an Assert."""
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        double = tf.function(lambda y: y * 2.0).get_concrete_function(tf.TensorSpec([None, 4], tf.float32))
        plus_one = tf.function(lambda y: y + 1.0).get_concrete_function(tf.TensorSpec([None, 4], tf.float32))
        double.add_to_graph(g)
        plus_one.add_to_graph(g)
        a = tf.raw_ops.PartitionedCall(args=[x], Tout=[tf.float32], f=double, name="double")[0]
        check = tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(x)), ["x is not finite"])
        with tf.control_dependencies([check]):
            b = tf.raw_ops.StatefulPartitionedCall(args=[a], Tout=[tf.float32], f=plus_one, name="plus_one")[0]
        y = tf.identity(b, name="y")
    gd = g.as_graph_def()
    if xla_op:
        fdef = next(f for f in gd.library.function if f.signature.name == double.function_def.signature.name)
        ret_key = fdef.signature.output_arg[0].name
        node = fdef.node_def.add(name="shard", op="XlaSharding")
        node.input.append(fdef.ret[ret_key])
        node.attr["T"].type = tf.float32.as_datatype_enum
        node.attr["sharding"].s = b""
        fdef.ret[ret_key] = "shard:output:0"
    sig = Signature(inputs={"x": TensorSpec("x:0", "float32", (None, 4))},
                    outputs={"y": TensorSpec(y.name, "float32", (None, 4))})
    return Model(gd, sig)


# --- inlining ------------------------------------------------------------------------------------------


def test_inline_turns_xla_grouped_conv_calls_into_native_ops(grouped):
    before = _ops(grouped.graph_def)
    assert before["StatefulPartitionedCall"] == 2 and len(grouped.graph_def.library.function) == 2
    assert all(f.attr["_XlaMustCompile"].b for f in grouped.graph_def.library.function)
    result = Pipeline.parse("inline_functions").run(grouped)
    counters = result.records[0].counters
    after = _ops(result.model.graph_def)
    assert counters["inlined"] == 2 and counters["kept"] == 0
    assert counters["grouped_to_depthwise"] == 1 and counters["grouped_split"] == 1
    assert after["StatefulPartitionedCall"] == 0 and not result.model.graph_def.library.function
    assert after["DepthwiseConv2dNative"] == 1 and after["Split"] == 1 and after["ConcatV2"] == 1
    assert after["Conv2D"] == 4  # the 4 groups of the first conv, each a plain Conv2D
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 8)).astype(np.float32)
    report = verify(grouped, result.model, samples={"image": x})
    assert report.passed and report.max_rel < 1e-5


def test_serving_preset_leaves_no_xla_call(grouped):
    result = Pipeline.parse("serving").run(grouped)
    assert result.records[0].name == "inline_functions"
    assert _ops(result.model.graph_def)["StatefulPartitionedCall"] == 0
    assert verify(grouped, result.model).passed


def test_calls_are_inlined_in_order_and_xla_only_bodies_kept_with_the_reason():
    model = _calls_graph(xla_op=True)
    result = Pipeline.parse("inline_functions").run(model)
    record = result.records[0]
    assert record.counters["inlined"] == 1 and record.counters["kept"] == 1
    assert any("kept call double" in n and "XlaSharding" in n and "compiled by XLA" in n for n in record.notes)
    nodes = {n.name: n for n in result.model.graph_def.node}
    assert nodes["double"].op == "PartitionedCall"
    # The inlined call keeps its name as an IdentityN of its returns; its body runs after the Assert it
    # waited on, through a gate NoOp holding the call's control inputs.
    assert nodes["plus_one"].op == "IdentityN"
    gate = next(n for n in nodes.values() if n.name.startswith("plus_one/input_control_node"))
    assert any(i.startswith("^") and "assert" in i.lower() for i in gate.input)
    body = [n for name, n in nodes.items() if name.startswith("plus_one/") and n is not gate]
    assert body and all(any(node_in.lstrip("^").startswith("plus_one/") or node_in == "double"
                            for node_in in n.input) for n in body)
    from graphopt.passes.inline import InlineFunctions

    plus_one = next(n for n in model.graph_def.node if n.name == "plus_one").attr["f"].func.name
    kept = Pipeline([InlineFunctions(keep=[plus_one])]).run(model).records[0]
    assert kept.counters["inlined"] == 0 and any("kept by keep=" in n for n in kept.notes)


def test_inlined_calls_compute_what_the_calls_did():
    model = _calls_graph(xla_op=False)
    result = Pipeline.parse("inline_functions").run(model)
    assert result.records[0].counters["inlined"] == 2
    assert not any(n.op.endswith("PartitionedCall") for n in result.model.graph_def.node)
    assert verify(model, result.model).passed


def test_grouped_conv_rewrite_keeps_the_model_servable_without_onednn(tmp_path):
    """Left grouped, Grappler's remapper fuses the conv with its bias into _FusedConv2D, whose CPU kernel
    refuses groups (without oneDNN); after rewrite_grouped_convs the same graph runs."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 6, 6, 8], name="x")
        w = tf.constant(rng.normal(size=(3, 3, 2, 8)).astype(np.float32))  # 4 groups of 2 channels
        conv = tf.raw_ops.Conv2D(input=x, filter=w, strides=[1, 1, 1, 1], padding="SAME")
        y = tf.nn.relu(tf.nn.bias_add(conv, rng.normal(size=8).astype(np.float32)), name="y")
    sig = Signature(inputs={"x": TensorSpec("x:0", "float32", (None, 6, 6, 8))},
                    outputs={"y": TensorSpec(y.name, "float32", (None, 6, 6, 8))})
    grouped = Model(g.as_graph_def(), sig)
    rewritten = Pipeline.parse("rewrite_grouped_convs").run(grouped).model
    assert _ops(rewritten.graph_def)["Split"] == 1 and _ops(rewritten.graph_def)["Conv2D"] == 4
    assert verify(grouped, rewritten).passed
    feed = rng.normal(size=(1, 6, 6, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", feed)
    for name, model in (("grouped", grouped), ("rewritten", rewritten)):
        (tmp_path / f"{name}.pb").write_bytes(model.graph_def.SerializeToString())
    script = textwrap.dedent(f"""
        import json, os, numpy as np, tensorflow as tf
        out = {{}}
        x = np.load({str(tmp_path / 'x.npy')!r})
        for name in ("grouped", "rewritten"):
            gd = tf.compat.v1.GraphDef.FromString(open(os.path.join({str(tmp_path)!r}, name + ".pb"), "rb").read())
            with tf.Graph().as_default() as g:
                tf.graph_util.import_graph_def(gd, name="")
                with tf.compat.v1.Session(graph=g) as s:  # TensorFlow's default config: Grappler's remapper on
                    try:
                        out[name] = s.run("y:0", {{"x:0": x}}).tolist()
                    except Exception as e:
                        out[name] = str(e)
        print(json.dumps(out))
    """)
    env = {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(out["grouped"], str) and "grouped convolutions" in out["grouped"]
    reference = verify(grouped, grouped, samples={"x": feed})  # in-process (oneDNN): the grouped conv runs
    assert reference.passed
    from graphopt.runtime.session import run_model

    np.testing.assert_allclose(np.array(out["rewritten"]), run_model(grouped, {"x": feed})["y"], rtol=1e-5, atol=1e-5)


# --- shape specialization ---------------------------------------------------------------------------------


def test_unknown_batch_keeps_shape_arithmetic_and_specialization_folds_it(shapes_model):
    arithmetic = ("Shape", "GatherV2", "Prod")
    assert all(_ops(shapes_model.graph_def)[op] for op in arithmetic)
    plain = Pipeline.parse("serving").run(shapes_model).model
    assert any(_ops(plain.graph_def)[op] for op in arithmetic)  # what the issue measured: left unfolded
    specialized = specialize(shapes_model, {"image": (1, 4, 4, 3)})
    assert specialized.signature.inputs["image"].shape == (1, 4, 4, 3)
    assert specialized.metadata["specialized_shapes"] == {"image": [1, 4, 4, 3]}
    folded = Pipeline.parse("serving").run(specialized).model
    assert not any(_ops(folded.graph_def)[op] for op in arithmetic)
    assert folded.node_count < plain.node_count
    x = np.random.default_rng(0).normal(size=(1, 4, 4, 3)).astype(np.float32)
    assert verify(shapes_model, folded, samples={"image": x}).passed


def test_specialize_shapes_pass_materializes_shapes(shapes_model):
    result = Pipeline.parse('specialize_shapes(shape="image=1,4,4,3") fold_constants(ignore_errors=true)').run(
        shapes_model)
    record = result.records[0]
    assert record.counters["inputs_specialized"] == 1 and record.counters["shapes_materialized"] > 0
    assert not _ops(result.model.graph_def)["Shape"]
    x = np.random.default_rng(1).normal(size=(1, 4, 4, 3)).astype(np.float32)
    assert verify(shapes_model, result.model, samples={"image": x}).passed


@pytest.mark.parametrize("shape, message", [
    (["nope=1,4,4,3"], "no input 'nope'"),
    (["image=1,4,4"], "rank 4"),
    (["image=1,5,4,3"], "dimension 1 cannot become 5"),
    (["image=1,-4,4,3"], "positive sizes"),
])
def test_bad_input_shapes_are_usage_errors(shapes_model, shape, message):
    from graphopt.passes.shapes import parse_shapes

    with pytest.raises(UsageError, match=message):
        specialize(shapes_model, parse_shapes(shape, shapes_model.signature))


def test_cli_input_shape_from_the_sample_is_stated_in_the_exported_signature(cli, shapes_path, tmp_path):
    from graphopt.loaders.saved_model_proto import read_saved_model

    sample = tmp_path / "sample.npz"
    np.savez(sample, image=np.random.default_rng(2).normal(size=(2, 4, 4, 3)).astype(np.float32))
    out = tmp_path / "out"
    code, stdout, err = cli("optimize", shapes_path, "-o", out, "--sample", sample, "--input-shape", "sample")
    assert code == 0, err
    (meta,) = read_saved_model(out).meta_graphs
    dims = [d.size for d in meta.signature_def["serving_default"].inputs["image"].tensor_shape.dim]
    assert dims == [2, 4, 4, 3]
    graph = meta.graph_def
    assert not any(n.op in ("Shape", "GatherV2", "Prod") for n in graph.node)
    code, _, err = cli("optimize", shapes_path, "-o", tmp_path / "o2", "--input-shape", "image=1,4,4")
    assert code == 2 and "rank 4" in err
