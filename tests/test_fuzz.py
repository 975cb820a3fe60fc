"""Fuzzing with a bounded budget: nothing but graphopt's own error type may escape.

Budgets are fixed (max_examples, no deadline) so CI time stays predictable.
"""

from __future__ import annotations

import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphopt.errors import GraphoptError, UsageError
from graphopt.passes import transform_string as transform_spec

ROOT = Path(__file__).resolve().parents[1]  # the child imports tests.test_fuzz from here
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text built from the characters the grammar cares about, so most inputs get deep into the parser.
_alphabet = string.ascii_letters[:6] + "_=,(){}*\" \\\t0123456789.-:"
_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
_values = st.text(alphabet=string.printable, max_size=8)


@FUZZ
@given(st.text(alphabet=_alphabet, max_size=60))
def test_parser_only_raises_usage_error(text):
    try:
        items = transform_spec.parse(text)
    except UsageError as exc:
        assert "position" in exc.message
        return
    # Whatever parses must format back to text that parses to the same thing.
    assert transform_spec.parse(transform_spec.format_items(items)) == items


@FUZZ
@given(st.lists(st.tuples(_names, st.lists(st.tuples(_names, _values), max_size=3)), min_size=1, max_size=4))
def test_format_then_parse_round_trips(steps):
    text = " ".join(transform_spec.format_step(name, args) for name, args in steps)
    parsed = transform_spec.parse(text)
    assert [(p.name, list(p.args)) for p in parsed] == [(n, [(k, v.strip() if _bare(v) else v) for k, v in a])
                                                        for n, a in steps]


def _bare(value: str) -> bool:
    # format_step leaves simple values unquoted; unquoted values are stripped of surrounding space.
    return transform_spec._quote(value) == value


def test_positions_do_not_count_in_equality_but_names_and_args_do():
    assert transform_spec.parse("x(a=1)") == transform_spec.parse("  x(a=1)")
    assert transform_spec.parse("x(a=1)") != transform_spec.parse("x(a=2)")
    assert issubclass(UsageError, GraphoptError)


# --- mutated GraphDefs fed to load, analyze and diff -------------------------------------------------------------
# A corrupted model must come back as a GraphoptError (an InputError from the loader), never as a raw
# TensorFlow/protobuf/networkx exception and never as a process abort. What loads also goes through a few
# native GTT transforms (the ones that aborted on stripped attrs and bad constants). The loop runs in one child process
# (hypothesis inside it) so an abort in native code fails this test instead of killing the test run; the
# child writes each example to a file before trying it, so an abort still names the input that caused it.

GRAPH_EXAMPLES = 200  # ~15 s on 2 busy cores, TF import included

_ODD_OPS = ["NoSuchOp", "", "Const", "Placeholder", "Identity", "Add", "MatMul", "NoOp", "Switch", "Merge",
            "Enter", "NextIteration", "PartitionedCall", "ReadFile", "VarHandleOp", "FusedBatchNorm"]
_ODD_INPUTS = ["ghost", "input:99", "^ghost", "", ":0", "input:-1", "w:1", "^input", "matmul:0:0", "a/b/c",
               "prob", "^prob", "matmul:1"]


def _mutations():
    i = st.integers(0, 63)
    return st.lists(st.one_of(
        st.tuples(st.just("drop"), i),
        st.tuples(st.just("same_name"), i, i),
        st.tuples(st.just("input"), i, st.sampled_from(_ODD_INPUTS)),
        st.tuples(st.just("add_input"), i, st.sampled_from(_ODD_INPUTS)),
        st.tuples(st.just("op"), i, st.sampled_from(_ODD_OPS)),
        st.tuples(st.just("drop_attr"), i, st.integers(0, 7)),
        st.tuples(st.just("dtype"), i, st.sampled_from([0, 1, 3, 7, 20, 101, 1234])),
        st.tuples(st.just("negative_dim"), i),
        st.tuples(st.just("content"), i, st.binary(max_size=12)),
        st.tuples(st.just("rename"), i, st.text(max_size=4)),
    ), max_size=4)


def _mutate(graph_def, mutations):
    g = type(graph_def)()
    g.CopyFrom(graph_def)
    for m in mutations:
        if not g.node:
            break
        node = g.node[m[1] % len(g.node)]
        kind = m[0]
        if kind == "drop":
            del g.node[m[1] % len(g.node)]
        elif kind == "same_name":
            node.name = g.node[m[2] % len(g.node)].name
        elif kind == "input" and node.input:
            node.input[0] = m[2]
        elif kind == "add_input":
            node.input.append(m[2])
        elif kind == "op":
            node.op = m[2]
        elif kind == "drop_attr" and node.attr:
            del node.attr[sorted(node.attr)[m[2] % len(node.attr)]]
        elif kind == "dtype":
            key = next((k for k in ("dtype", "T") if k in node.attr), None)
            if key:
                node.attr[key].type = m[2]
        elif kind == "negative_dim":
            for key in ("shape", "value"):
                if key in node.attr:
                    shape = node.attr[key].shape if key == "shape" else node.attr[key].tensor.tensor_shape
                    shape.dim.add(size=-5)
        elif kind == "content" and "value" in node.attr:
            node.attr["value"].tensor.tensor_content = m[2]
        elif kind == "rename":
            node.name = m[2]
    return g


def graph_fuzz_main(base_path: str, work: str, examples: int) -> None:
    """The fuzz loop (run in a child process by the test below)."""
    from pathlib import Path

    from graphopt.analysis.diff import diff_models
    from graphopt.analysis.stats import analyze
    from graphopt.loaders import load
    from graphopt.loaders.graph_def import read_graph_def
    from graphopt.passes.pipeline import Pipeline
    from graphopt.plugins import Host

    pipeline = Pipeline.parse("fold_constants(ignore_errors=true) fold_old_batch_norms quantize_nodes "
                              "strip_unused_nodes", host=Host.create(plugins=False))
    base = load(base_path)
    base_gd = read_graph_def(base_path)
    data = base_gd.SerializeToString()
    log = Path(work) / "current_example.txt"

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(_mutations(), st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255)), max_size=3),
           st.one_of(st.none(), st.integers(0, len(data))), st.sampled_from(["graph", "graph", "graph", "bytes"]))
    def check(mutations, flips, truncate_at, mode):
        raw = bytearray(_mutate(base_gd, mutations).SerializeToString())
        if mode == "graph":  # most examples stay parseable, so they get past protobuf into TF and graphopt
            flips, truncate_at = [], None
        for pos, xor in flips:
            if raw:
                raw[pos % len(raw)] ^= xor
        if truncate_at is not None:
            raw = raw[:truncate_at]
        log.write_text(repr((mutations, flips, truncate_at, mode)))
        path = Path(work) / "mutated.pb"
        path.write_bytes(bytes(raw))
        try:
            model = load(path)
        except GraphoptError:
            model = None
        if model is not None:
            analyze(model)
            diff_models(base, model)
            try:  # and GTT's native code, where the known aborts were
                pipeline.run(model)
            except GraphoptError:
                pass
        # analysis and diff also take raw GraphDefs: whatever protobuf parses, even if it would not load
        from tensorflow.core.framework import graph_pb2

        try:
            parsed = graph_pb2.GraphDef.FromString(bytes(raw))
        except Exception:  # not protobuf at all: only the loader sees such bytes
            return
        for target in (analyze, lambda g: diff_models(base_gd, g)):
            try:
                target(parsed)
            except GraphoptError:
                pass

    # One confined child for every example's fold_constants, as one optimize run has: a fresh child (and
    # TensorFlow import) per example would make the fuzz loop minutes longer without testing more.
    from graphopt.security.sandbox import shared_sandbox

    with shared_sandbox(start=False):
        check()


def _fuzz_in_child(main: str, source: Path, tmp_path: Path, examples: int) -> None:
    """Run ``main`` of this module in a child process, so a native abort fails the test instead of killing it."""
    import os
    import subprocess
    import sys

    code = f"import tests.test_fuzz as t; t.{main}({str(source)!r}, {str(tmp_path)!r}, {examples})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    last = (tmp_path / "current_example.txt").read_text() if (tmp_path / "current_example.txt").exists() else "?"
    assert proc.returncode == 0, f"exit {proc.returncode}; last example {last}\n{proc.stderr[-4000:]}"


def test_mutated_graphdefs_raise_only_graphopt_errors(tmp_path, model_path):
    from tests import models

    _fuzz_in_child("graph_fuzz_main", model_path("fuzz_frozen.pb", models.frozen_graph), tmp_path, GRAPH_EXAMPLES)


# --- corrupted SavedModels ---------------------------------------------------------------------------------------
# Function bodies are where TF2 SavedModels break in the field (a truncated copy, a tool that rewrote them);
# tf.saved_model.load instantiates every function, so this is where native code would abort.

SAVED_MODEL_EXAMPLES = 40  # ~0.3 s per load


def _saved_model_mutations():
    i = st.integers(0, 10_000)
    return st.lists(st.one_of(
        st.tuples(st.just("fn_op"), i, i, st.sampled_from(_ODD_OPS + ["ReadVariableOp", "AddV2"])),
        st.tuples(st.just("fn_input"), i, i, st.sampled_from(["ghost", "ghost:output:0", "^ghost", "Const:output:9"])),
        st.tuples(st.just("fn_drop_node"), i, i),
        st.tuples(st.just("fn_drop_attr"), i, i, i),
        st.tuples(st.just("fn_ret"), i),
        st.tuples(st.just("object_child"), i, st.sampled_from([0, 9999])),
        st.tuples(st.just("signature_input"), st.sampled_from(["ghost:0", "", "x:9"])),
        # a signature that lies about its dtypes (int32 over a float graph was exported silently: issue 11)
        st.tuples(st.just("signature_dtype"), st.sampled_from([0, 1, 2, 3, 7, 9, 10, 20, 1234])),
    ), min_size=1, max_size=2)


def _mutate_saved_model(sm, mutations) -> None:
    mg = sm.meta_graphs[0]
    fns = mg.graph_def.library.function
    for m in mutations:
        kind = m[0]
        fn = fns[m[1] % len(fns)] if fns and kind.startswith("fn_") else None
        if fn is not None and fn.node_def and kind != "fn_ret":
            node = fn.node_def[m[2] % len(fn.node_def)]
            if kind == "fn_op":
                node.op = m[3]
            elif kind == "fn_input" and node.input:
                node.input[0] = m[3]
            elif kind == "fn_drop_node":
                fn.node_def.remove(node)
            elif kind == "fn_drop_attr" and node.attr:
                del node.attr[sorted(node.attr)[m[3] % len(node.attr)]]
        elif kind == "fn_ret" and fn is not None:
            for key in list(fn.ret):
                fn.ret[key] = "ghost:output:0"
        elif kind == "object_child":
            nodes = mg.object_graph_def.nodes
            with_children = [n for n in nodes if n.children]
            if with_children:
                with_children[m[1] % len(with_children)].children[0].node_id = m[2]
        elif kind == "signature_dtype":
            for sig in mg.signature_def.values():
                for tensor in (*sig.inputs.values(), *sig.outputs.values()):
                    tensor.dtype = m[1]
        elif kind == "signature_input":
            for sig in mg.signature_def.values():
                for tensor in sig.inputs.values():
                    tensor.name = m[1]


def saved_model_fuzz_main(src: str, work: str, examples: int) -> None:
    """The SavedModel fuzz loop (run in a child process by the test below)."""
    import shutil
    from pathlib import Path

    from tensorflow.core.protobuf import saved_model_pb2

    from graphopt.loaders import load

    base = (Path(src) / "saved_model.pb").read_bytes()
    target = Path(work) / "model"
    log = Path(work) / "current_example.txt"

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(_saved_model_mutations())
    def check(mutations):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(src, target)
        sm = saved_model_pb2.SavedModel.FromString(base)
        _mutate_saved_model(sm, mutations)
        (target / "saved_model.pb").write_bytes(sm.SerializeToString())
        log.write_text(repr(mutations))
        try:
            load(target, confined=False)  # the loader itself, here: a native abort must fail the test
        except GraphoptError:
            pass

    check()


def test_corrupted_saved_models_raise_only_graphopt_errors(tmp_path, model_path):
    from tests import models

    _fuzz_in_child("saved_model_fuzz_main", model_path("fuzz_tf2", models.keras_saved_model), tmp_path,
                   SAVED_MODEL_EXAMPLES)


# --- issue 11: config files, names shown on a terminal, random inputs, output paths --------------------------------
# In process and cheap: these exercise pure-Python code, with TensorFlow only for dtype names.

SMALL = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def _toml_texts():
    """TOML-ish text: deep nesting of arrays and inline tables (tomllib recurses per level), broken syntax, and
    pipeline tables with odd values."""
    depth = st.integers(0, 6000)
    nested = st.tuples(depth, st.sampled_from(["[", "{a = "])).map(
        lambda t: "x = " + t[1] * t[0] + "1" + ("]" if t[1] == "[" else "}") * t[0] + "\n")
    repeats = st.integers(0, 400).map(lambda n: "pipeline = [" + "{repeat = [" * n + '"fold_constants"' + "]}" * n
                                      + "]\n")
    junk = st.text(alphabet='[]{}=" ,.\nabcpassrepeatmax_iterations0123456789-', max_size=80)
    lines = st.lists(st.one_of(nested, repeats, junk, st.just('transforms = "fold_constants"\n')), max_size=3)
    return lines.map("".join)


@SMALL
@given(_toml_texts())
def test_config_files_raise_only_usage_errors(text):
    import tempfile

    from graphopt.passes.pipeline import Pipeline
    from graphopt.plugins import Host

    host = _fuzz_host(Host)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "graphopt.toml"
        path.write_text(text)
        try:
            Pipeline.from_config(path, host=host)
        except UsageError as exc:
            assert exc.where  # names the file (or the option) it is about
        except GraphoptError as exc:  # e.g. a pass's own option check: still graphopt's, never a raw error
            assert exc.code != 1, exc


_HOSTS: list = []


def _fuzz_host(host_cls):
    if not _HOSTS:
        _HOSTS.append(host_cls.create(plugins=False))
    return _HOSTS[0]


@FUZZ
@given(st.text(max_size=60))
def test_printable_leaves_no_control_character(text):
    import unicodedata

    from graphopt.cli.render import printable

    for keep_lines in (False, True):
        shown = printable(text, newlines=keep_lines)
        for ch in shown:
            allowed = keep_lines and ch in "\n\t"
            assert allowed or unicodedata.category(ch) not in ("Cc", "Zl", "Zp"), (text, shown)
            assert ch not in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069", (text, shown)
    if all(unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp") for c in text):
        assert printable(text) == text  # ordinary names are shown as they are


@SMALL
@given(st.lists(st.sampled_from([None, None, 0, 1, 2, 3, 7, 100_000]), max_size=60),
       st.sampled_from(["float32", "int32", "bool", "string", "uint8"]))
def test_random_inputs_of_any_shape_raise_only_input_errors(shape, dtype):
    import math

    from hypothesis import assume

    from graphopt.errors import InputError
    from graphopt.model import Signature, TensorSpec
    from graphopt.runtime.session import MAX_RANDOM_VALUES, random_inputs

    filled = [(1 if i == 0 else 32) if d is None else d for i, d in enumerate(shape)] or [1]
    values = math.prod(max(d, 1) for d in filled)  # a zero dimension does not make the others small
    assume(values <= 100_000 or values > MAX_RANDOM_VALUES)  # never allocate the big ones that are allowed
    sig = Signature({"x": TensorSpec("x:0", dtype, tuple(shape))}, {"y": TensorSpec("y:0", "float32", None)})
    try:
        arrays = random_inputs(sig, batch=1, dynamic=32)
    except InputError as exc:
        assert values > MAX_RANDOM_VALUES and exc.where == "input x" and "--sample" in exc.hint
        return
    assert values <= MAX_RANDOM_VALUES and arrays["x"].size == math.prod(filled)


_EXISTING = ["nothing", "binary graphdef", "text graphdef", "notes", "newlines", "empty file", "json report",
             "json list", "empty dir", "dir with a file", "saved model dir", "fifo", "link to an empty file",
             "link to a model dir", "dangling link"]
_CONTENT = {"binary graphdef": b"\x0a\x03\x0a\x01x", "text graphdef": b"# a comment\nnode {\n}\n",
            "notes": b"years of work", "newlines": b"\n\n\n", "empty file": b"", "json report": b'{"passes": []}',
            "json list": b"[1, 2]"}


def _make_existing(path: Path, what: str) -> None:
    import os

    if what in _CONTENT:
        path.write_bytes(_CONTENT[what])
    elif what == "empty dir":
        path.mkdir()
    elif what == "dir with a file":
        path.mkdir()
        (path / "notes.txt").write_text("mine")
    elif what == "saved model dir":
        path.mkdir()
        (path / "saved_model.pb").write_bytes(b"")
    elif what == "fifo":
        os.mkfifo(path)
    elif what.startswith("link") or what == "dangling link":
        target = path.parent / f"target_of_{path.name}"
        if what == "link to an empty file":
            target.write_bytes(b"")
        elif what == "link to a model dir":
            target.mkdir()
            (target / "saved_model.pb").write_bytes(b"")
        path.symlink_to(target)


def _expected_refusal(what: str, name: str, kind: str, force: bool) -> bool:
    """The replace rules of docs/guide/cli.md, written out independently of graphopt.savers."""
    if what == "nothing":
        return False
    is_file = what in _CONTENT
    graph_def = {"pb": "binary graphdef", "pbtxt": "text graphdef"}
    replaceable = {
        "saved_model": what in ("empty dir", "saved model dir"),
        "serving_version": what in ("empty dir", "saved model dir"),
        "report": what in ("json report", "empty file"),
    }
    for fmt in ("pb", "pbtxt"):
        replaceable[fmt] = is_file and (name.lower().endswith((".pb", ".pbtxt")) or what in ("empty file",
                                                                                             graph_def[fmt]))
    return not (replaceable[kind] and force)


@SMALL
@given(st.sampled_from(_EXISTING), st.sampled_from(["out", "out.pb", "OUT.PBTXT", "r.json", "m.txt"]),
       st.sampled_from(["saved_model", "pb", "pbtxt", "serving_version", "report"]), st.booleans())
def test_outputs_replace_only_a_previous_output_of_their_kind(what, name, kind, force):
    import os
    import tempfile

    from graphopt.errors import OutputError
    from graphopt.savers import Outputs

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        _make_existing(path, what)

        def snapshot():
            return sorted((str(p.relative_to(folder)), os.lstat(p).st_mode, os.lstat(p).st_ino)
                          for p in Path(folder).rglob("*"))

        before = snapshot()
        refused = False
        try:
            with Outputs(force=force) as outputs:
                out = outputs.add(path, kind)
                assert out.replaces == (what != "nothing")
                assert out.lock is not None and out.lock.exists()
        except OutputError as exc:
            refused = True
            assert exc.where and exc.hint
        assert refused == _expected_refusal(what, name, kind, force), (what, name, kind, force)
        assert snapshot() == before  # checking and reserving touch nothing (the lock is gone again)
