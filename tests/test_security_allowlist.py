"""The allowlist (graphopt/security/allowed_ops.toml) and the walk that applies it, on graphs TensorFlow builds.

The data file is checked against TensorFlow's op registry; the walk against
graphs holding ops in the main graph, in function bodies reached through
calls, ``If``/``While`` branches and in graphs embedded in string constants;
and the real architectures graphopt is benchmarked on (five Keras
applications, LSTM/GRU, a StringLookup, the demo detector and what
graphopt's own passes emit) must pass it: no false refusal.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from graphopt.errors import ExitCode, UnsafeGraphError
from graphopt.security import allowlist as al
from graphopt.security.scan import LOAD, RUN, Finding, _Walker, ensure_safe, scan
from tests import models

ROOT = Path(__file__).resolve().parents[1]


# --- the data file ---------------------------------------------------------------------------------------------


def test_every_name_is_a_registered_op_in_exactly_one_group_with_a_reason():
    data = tomllib.loads(al.ALLOWED_OPS_FILE.read_text())
    seen: dict[str, str] = {}
    for kind, groups in data.items():
        assert kind in ("allowed", "load_only", "refused")
        for name, group in groups.items():
            assert group["reason"].strip() and group["ops"], f"{kind}.{name} needs a reason and ops"
            for op in group["ops"]:
                assert op not in seen, f"{op} is in {seen[op]} and {kind}.{name}"
                seen[op] = f"{kind}.{name}"
    report = al.audit()
    assert report["unregistered"] == [], "names TensorFlow does not register (typos, or ops gone after an upgrade)"
    assert len(seen) + len(report["unclassified"]) == len(al.registered_ops())


# An allowed name that reads like I/O is a mistake to look at twice.
_IO_LIKE = re.compile(r"File|Dataset|Iterator|Save|Restore|Summary|Print|Debug|PyFunc|Collective|Nccl|Send|Recv|Rpc|"
                      r"Reader|Queue|Abort|Sleep|Session|TPU|Writer|Checkpoint|Remote|Host(?!Const|Cast)")


def test_no_allowed_op_looks_like_io():
    data = tomllib.loads(al.ALLOWED_OPS_FILE.read_text())
    suspicious = [(name, op) for name, group in data["allowed"].items() for op in group["ops"]
                  if _IO_LIKE.search(op) and name != "summary_protos"]  # reviewed: they only serialize a proto
    assert suspicious == []


WHAT_REAL_MODELS_NEED = [
    "Conv2D", "DepthwiseConv2dNative", "FusedBatchNormV3", "Relu6", "MatMul", "BiasAdd", "Softmax",
    "Enter", "Exit", "Merge", "Switch", "NextIteration", "LoopCond", "NonMaxSuppressionV3", "NonMaxSuppressionV4",
    "NonMaxSuppressionV5", "TensorArrayV3", "TensorArrayWriteV3", "TensorArrayGatherV3", "If", "While",
    "StatelessIf", "StatelessWhile", "PartitionedCall", "StatefulPartitionedCall", "XlaLaunch", "_XlaCompile",
    "_XlaRun", "_FusedConv2D", "_FusedMatMul", "_FusedDepthwiseConv2dNative", "_FusedBatchNormEx",
    "_MklFusedConv2D", "_MklFusedMatMul", "Dequantize", "QuantizeV2", "Cast", "HashTableV2", "LookupTableFindV2",
    "LookupTableImportV2", "InitializeTableV2", "Assert", "CheckNumerics", "NoOp", "VarHandleOp", "ReadVariableOp",
    "StringSplit", "StringSplitV2", "Substr", "RegexReplace", "StringToHashBucketFast", "TensorListReserve",
    "TensorListGetItem", "TensorListSetItem", "TensorListStack", "DecodeJpeg", "ParseExampleV2",
]
REFUSED_BY_DEFAULT = [
    "ReadFile", "WriteFile", "SaveV2", "Save", "MergeV2Checkpoints", "MatchingFiles", "MatchingFilesDataset",
    "TextLineDataset", "TFRecordDataset", "CacheDataset", "CacheDatasetV2", "DatasetFromGraph", "IteratorGetNext",
    "MakeIterator", "PrintV2", "Print", "WriteSummary", "CreateSummaryFileWriter", "DebugIdentity",
    "DebugIdentityV2", "DebugIdentityV3", "Abort", "PyFunc", "EagerPyFunc", "PyFuncStateless", "CollectiveReduceV2",
    "RpcCall", "_Send", "_Recv", "XlaCallModule", "ImmutableConst", "DecodeProtoV2",
    # load-only: fine while a loader restores weights, never in a graph that runs
    "Assign", "AssignVariableOp", "RestoreV2", "InitializeTableFromTextFileV2",
]


@pytest.mark.parametrize("op", WHAT_REAL_MODELS_NEED)
def test_real_models_ops_are_allowed(op):
    assert al.allowlist().allowed(op), al.allowlist().reason(op)


@pytest.mark.parametrize("op", REFUSED_BY_DEFAULT)
def test_io_ops_are_refused_with_a_reason(op):
    table = al.allowlist()
    assert not table.allowed(op)
    assert table.reason(op) and table.reason(op) != al.NOT_LISTED  # a specific reason, not just "not listed"


def test_an_op_the_list_does_not_name_is_refused():
    table = al.allowlist()
    unlisted = al.audit()["unclassified"]
    assert "Foo1" in unlisted  # a test op TensorFlow registers: nobody reviewed it, so it may not run
    assert not table.allowed("Foo1") and table.reason("Foo1") == al.NOT_LISTED
    assert not table.allowed("SomeCustomOp") and table.reason("SomeCustomOp") == al.NOT_LISTED


def test_load_only_ops_are_allowed_only_while_loading():
    table = al.allowlist()
    assert table.allowed("AssignVariableOp", loading=True) and not table.allowed("AssignVariableOp")
    # conditional ones need their file input traced to the checkpoint/asset (graphopt.security.scan)
    assert not table.allowed("RestoreV2", loading=True)


# --- the walk --------------------------------------------------------------------------------------------------


def _graph(fn, *specs):
    import tensorflow as tf

    return tf.function(fn, input_signature=list(specs)).get_concrete_function().graph.as_graph_def()


def _file_and_python_graph():
    import tensorflow as tf

    def f(path):
        data = tf.io.read_file(path)
        return tf.py_function(lambda s: len(s.numpy()), [data], tf.int64)

    return _graph(f, tf.TensorSpec([], tf.string))


def test_scan_names_op_node_and_reason():
    found = {f.op: f for f in scan(_file_and_python_graph())}
    assert set(found) == {"ReadFile", "EagerPyFunc"}
    assert found["EagerPyFunc"].reason == "runs arbitrary Python code"
    assert found["ReadFile"].reason == "reads or writes files" and found["ReadFile"].function is None


def test_scan_walks_function_bodies_and_control_flow_branches():
    import tensorflow as tf

    @tf.function
    def inner(path):
        return tf.io.read_file(path)

    def outer(path, flag):
        # a call (PartitionedCall), an If branch and a While body, each hiding one op that is refused
        text = inner(path)
        text = tf.cond(flag, lambda: tf.strings.join([text, tf.io.read_file(path + "2")]), lambda: text)
        _, text = tf.while_loop(lambda i, t: i < 1, lambda i, t: (i + 1, tf.strings.join(
            [t, tf.strings.as_string(tf.raw_ops.Timestamp())])), [0, text])
        return text

    gd = _graph(outer, tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.bool))
    assert not [n for n in gd.node if n.op in ("ReadFile", "Timestamp")]  # all of them inside functions
    found = scan(gd)
    where = {(f.op, f.function) for f in found}
    assert {op for op, _ in where} == {"ReadFile", "Timestamp"}
    assert all(fn for _, fn in where) and len({fn for _, fn in where}) >= 3  # call, branch and body named


def test_scan_reports_calls_to_functions_the_library_lacks():
    import tensorflow as tf

    gd = _graph(lambda x: x * 2.0, tf.TensorSpec([2], tf.float32))
    node = gd.node.add(name="call", op="PartitionedCall")
    node.attr["f"].func.name = "__not_defined"
    (finding,) = scan(gd)
    assert finding.node == "call" and "__not_defined" in finding.reason


def test_a_long_chain_of_calls_is_walked_to_its_end():
    """Thousands of functions each calling the next (a hostile library) are walked without recursion."""
    from tensorflow.core.framework import graph_pb2

    gd = graph_pb2.GraphDef()
    depth = 3000
    for i in range(depth):
        fn = gd.library.function.add()
        fn.signature.name = f"f{i}"
        node = fn.node_def.add(name="next", op=f"f{i + 1}" if i + 1 < depth else "ReadFile")
        if i + 1 == depth:
            node.input.append("path")
    gd.node.add(name="call", op="f0")
    (finding,) = scan(gd)
    assert finding.op == "ReadFile" and finding.function == f"f{depth - 1}"


def _embedded_dataset_graph(secret: Path):
    """A graph whose string constant holds a serialized GraphDef that reads ``secret`` (DatasetFromGraph's input)."""
    import tensorflow as tf

    lines = tf.data.TextLineDataset(str(secret))
    data = tf.raw_ops.DatasetToGraphV2(input_dataset=lines._variant_tensor).numpy()

    g = tf.Graph()
    with g.as_default():
        ds = tf.raw_ops.DatasetFromGraph(graph_def=tf.constant(data, name="hidden"))
        tf.raw_ops.DatasetToSingleElement(dataset=ds, output_types=[tf.string], output_shapes=[[]], name="line")
    return g.as_graph_def()


def test_scan_walks_graphs_embedded_in_string_constants(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("a line\n")
    found = scan(_embedded_dataset_graph(secret))
    outer = {f.op for f in found if f.nested is None}
    inner = [f for f in found if f.nested == "hidden"]
    assert {"DatasetFromGraph", "DatasetToSingleElement"} <= outer
    text_line = [f for f in inner if f.op == "TextLineDataset"]
    assert text_line and text_line[0].function  # inside the embedded graph's own flat_map function
    assert text_line[0].location.startswith("[graph in hidden] ")


def test_a_graph_nested_too_deep_is_refused_itself():
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        tf.constant(1.0, name="leaf")
    data = g.as_graph_def().SerializeToString()
    for level in range(6):
        g = tf.Graph()
        with g.as_default():
            tf.constant(data, name=f"level{level}")
        data = g.as_graph_def().SerializeToString()
    found = scan(tf.compat.v1.GraphDef.FromString(data))
    assert [f.op for f in found] == ["Const"] and "embedded more than" in found[0].reason


def test_restore_and_assign_only_in_their_loader_context():
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        v = v1.get_variable("w", initializer=np.ones(2, np.float32))
        saver = v1.train.Saver([v])
        meta = v1.train.export_meta_graph(graph=g, saver_def=saver.saver_def)
    gd = meta.graph_def
    restore = meta.saver_def.restore_op_name
    # in a graph that runs: both the restore and the assignment are refused
    refused = {f.op for f in scan(gd)}
    assert "RestoreV2" in refused and refused & {"Assign", "AssignVariableOp"}
    # while loading, through the filename tensor the loader feeds: nothing to refuse
    walker = _Walker(gd.library, LOAD)
    walker.closure(gd, [restore], {meta.saver_def.filename_tensor_name.split(":")[0]: "model_checkpoint"})
    assert walker.findings == []
    # the same restore reading a path the graph names itself is refused, even while loading
    walker = _Walker(gd.library, LOAD)
    walker.closure(gd, [restore], {})
    assert [f.op for f in walker.findings] == ["RestoreV2"] and "checkpoint" in walker.findings[0].reason
    walker = _Walker(gd.library, RUN)
    walker.closure(gd, [restore], {meta.saver_def.filename_tensor_name.split(":")[0]: "model_checkpoint"})
    assert "RestoreV2" in {f.op for f in walker.findings}


# --- refusing, and allowing per op ----------------------------------------------------------------------------


def test_ensure_safe_refuses_with_what_where_and_how_to_allow():
    with pytest.raises(UnsafeGraphError) as info:
        ensure_safe(_file_and_python_graph(), action="verify the model", source="model.pb")
    err = info.value
    assert err.code == ExitCode.UNSAFE and err.where == "model.pb"
    assert err.message.startswith("refusing to verify the model: the graph holds 2 op(s) not known to compute only")
    assert "(EagerPyFunc, ReadFile)" in err.message
    assert any(d.startswith("ReadFile: ReadFile reads or writes files") for d in err.details)
    assert "--allow-op EagerPyFunc --allow-op ReadFile" in err.hint and "GRAPHOPT_ALLOW_OPS=EagerPyFunc,ReadFile" in err.hint


def test_allowing_is_per_op_or_all(monkeypatch):
    gd = _file_and_python_graph()
    monkeypatch.delenv(al.ENV_ALLOW_OPS, raising=False)
    with pytest.raises(UnsafeGraphError) as info:
        ensure_safe(gd, allow=["ReadFile"])
    assert "(EagerPyFunc)" in info.value.message and "ReadFile" not in info.value.message
    assert {f.op for f in ensure_safe(gd, allow=["ReadFile", "EagerPyFunc"])} == {"ReadFile", "EagerPyFunc"}
    assert len(ensure_safe(gd, allow=True)) == 2
    monkeypatch.setenv(al.ENV_ALLOW_OPS, "ReadFile")  # the environment adds to what a command allows
    ensure_safe(gd, allow=["EagerPyFunc"])
    monkeypatch.setenv(al.ENV_ALLOW_OPS, "all")
    ensure_safe(gd)
    monkeypatch.setenv(al.ENV_ALLOW_OPS, "ReadFile,EagerPyFunc")
    ensure_safe(gd)


def test_old_load_variable_allows_only_loading(monkeypatch):
    monkeypatch.delenv(al.ENV_ALLOW_OPS, raising=False)
    monkeypatch.setenv(al.ENV_ALLOW_UNSAFE_LOAD, "1")
    assert al.permission(loading=True).all and not al.permission()
    with al.allowing(["WriteFile"]):
        assert al.permission().permits("WriteFile") and not al.permission().permits("ReadFile")
    assert not al.permission().permits("WriteFile")


def test_finding_dict_matches_the_inspect_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "docs" / "schemas" / "inspect.schema.json").read_text())
    item = schema["properties"]["unsafe_ops"]["items"]
    for f in (Finding("n", "ReadFile", "reads or writes files"),
              Finding("n", "TextLineDataset", "r", function="f", nested="hidden")):
        jsonschema.validate(f.to_dict(), item)


# --- the CLI flags ---------------------------------------------------------------------------------------------


def test_every_command_that_runs_a_model_names_the_flag_the_variable_and_the_old_name(capsys):
    from graphopt.cli.main import main

    for command in ("optimize", "bench", "serve", "inspect", "diff"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--allow-op OP" in text and "GRAPHOPT_ALLOW_OPS" in text and "old name of --allow-op" in text, command


def test_a_misspelt_op_is_a_usage_error(cli, tmp_path):
    frozen = tmp_path / "m.pb"
    models.frozen_graph(frozen)
    code, _, err = cli("inspect", frozen, "--allow-op", "ReadFlie")
    assert code == ExitCode.USAGE and "did you mean ReadFile" in err and "Traceback" not in err


# --- no false refusal on real architectures --------------------------------------------------------------------

KERAS_APPS = {"MobileNetV2": dict(input_shape=(32, 32, 3), alpha=0.35), "ResNet50": dict(input_shape=(32, 32, 3)),
              "EfficientNetB0": dict(input_shape=(32, 32, 3)), "InceptionV3": dict(input_shape=(75, 75, 3)),
              "DenseNet121": dict(input_shape=(32, 32, 3))}


@pytest.mark.parametrize("name", sorted(KERAS_APPS))
def test_benchmark_architectures_pass(name):
    """The benchmark suite's five architectures (benchmarks/suite_models.py), at small inputs: traced (variables,
    ReadVariableOp) and frozen, every op allowed."""
    import keras
    import tensorflow as tf

    from graphopt.testing import frozen_keras

    keras.utils.set_random_seed(0)
    net = getattr(keras.applications, name)(weights=None, **KERAS_APPS[name])
    spec = tf.TensorSpec([1, *net.input_shape[1:]], tf.float32)
    traced = tf.function(lambda x: net(x, training=False)).get_concrete_function(spec).graph.as_graph_def()
    assert scan(traced) == []
    assert scan(frozen_keras(net).graph_def) == []
    keras.backend.clear_session()


@pytest.mark.parametrize("layer", ["LSTM", "GRU"])
def test_recurrent_layers_pass(layer):
    import keras
    import tensorflow as tf

    from graphopt.testing import frozen_keras

    inp = keras.Input((5, 3))
    net = keras.Model(inp, getattr(keras.layers, layer)(4)(inp))
    traced = tf.function(lambda x: net(x)).get_concrete_function(tf.TensorSpec([1, 5, 3])).graph.as_graph_def()
    assert scan(traced) == []  # While, TensorList*, and the library's alternative implementations
    frozen = frozen_keras(net).graph_def
    assert {"Enter", "TensorListReserve"} & {n.op for n in frozen.node}
    assert scan(frozen) == []


def test_string_lookup_and_embedding_pass():
    import tensorflow as tf

    net = models.string_lookup_keras_model()
    traced = tf.function(lambda x: net(x)).get_concrete_function(tf.TensorSpec([1, 3], tf.string))
    gd = traced.graph.as_graph_def()
    assert {"LookupTableFindV2"} <= {n.op for f in gd.library.function for n in f.node_def} | {n.op for n in gd.node}
    assert scan(gd) == []


def test_graphopt_passes_output_passes():
    """What graphopt's own passes emit (offline Grappler's fused ops, fp16/int8 weights, GTT's quantized nodes)."""
    from graphopt.passes.pipeline import Pipeline

    model = models.small_mobilenet()
    ops: set[str] = set()
    for spec in ("grappler_optimize", "weights_to_fp16", "weights_to_int8", "quantize_weights", "fold_constants"):
        result = Pipeline.parse(spec).run(model).model
        assert scan(result.graph_def) == [], spec
        ops |= {n.op for n in result.graph_def.node}
    assert {"_FusedConv2D", "Cast", "Dequantize"} <= ops


def test_demo_detector_passes(model_path):
    """The demo's TF1 Hub detector (while_loop frames, TensorArrayV3, NonMaxSuppressionV3): its load-time ops
    (restore, init) and the frozen graph, as optimize and serve see them."""
    import graphopt
    from graphopt.demo.detector import build_module
    from graphopt.loaders.saved_model_proto import read_saved_model
    from graphopt.security.scan import load_time_findings

    path = model_path("demo_detector_module", build_module)
    for meta in read_saved_model(path).meta_graphs:
        assert load_time_findings(meta) == []
    model = graphopt.load(str(path))
    assert {"Enter", "TensorArrayV3", "NonMaxSuppressionV3"} <= {n.op for n in model.graph_def.node}
    assert scan(model.graph_def) == []
