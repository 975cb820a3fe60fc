"""User errors are never "internal error" (issue 11, item 7), and names from a model reach the terminal escaped.

Each case runs through the CLI and checks the whole error contract (docs/guide/errors.md): its class's exit code, one
``error:`` line saying what and where, a hint, a traceback only with ``--debug``, nothing written, the input
byte-identical. The same cases are in the error corpus (tests/test_errors.py) and, where they fit, the fuzzing.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import models
import pytest
from models import HOSTILE_NAME

from graphopt.errors import ExitCode

INJECTED = "\x1b[31mRED"  # what a hostile name would send the terminal
SHOWN = "\\x1b[31mRED\\x1b[0m[bold]B[/bold]\\x07"  # what graphopt shows instead: escapes, markup as text
SHOWN_BY_RICH = SHOWN.removesuffix("\\x07")  # text printed as a plain string: rich itself drops the bell
IN_PATH = HOSTILE_NAME.replace("/", "")  # a file name cannot hold "/"
SHOWN_IN_PATH = SHOWN.replace("/", "")


def _tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _check_user_error(cli, argv: list, code: ExitCode, says: str, src: Path, out_dir: Path) -> str:
    """Run ``argv`` with and without --debug; check the error contract; return the error line."""
    before = _tree_hash(src)
    line = ""
    for debug in (False, True):
        got, stdout, err = cli(*(["--debug"] if debug else []), *argv)
        assert got == code, f"exit {got}, want {int(code)}:\n{err}"
        lines = [x for x in err.splitlines() if x.startswith("error:")]
        assert len(lines) == 1, err
        line = lines[0]
        assert says in line and line.rstrip().endswith(")"), line
        assert "\nhint: " in err and "internal error" not in err, err
        assert ("Traceback" in err) is debug, err
        assert "\x1b" not in err + stdout and "\x07" not in err + stdout  # nothing raw reaches the terminal
        assert sorted(p.name for p in out_dir.iterdir()) == [], "something was written"
    assert _tree_hash(src) == before, "the input changed"
    return line


@pytest.fixture(scope="module")
def p50(model_path) -> Path:
    return model_path("placeholder_50_dims.pb", models.placeholder_50_dims)


def test_a_50_dimension_placeholder_is_an_input_error(p50, cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _check_user_error(cli, ["optimize", p50, "-o", out / "m.pb"], ExitCode.INPUT,
                      "cannot make random inputs for 'x': its shape (50 dimensions", p50, out)
    code, _, err = cli("optimize", p50, "-o", out / "m.pb")
    assert "--sample FILE.npz" in err and "--no-verify" in err
    # Only verification needs random inputs: optimizing without it works, and so does inspecting.
    code, _, err = cli("optimize", p50, "-o", out / "m.pb", "--no-verify")
    assert code == 0 and (out / "m.pb").is_file(), err
    code, stdout, err = cli("inspect", p50)
    assert code == 0 and "[?,?,?," in stdout.replace(" ", ""), err


def test_a_5000_deep_toml_config_is_a_usage_error_naming_the_file(model_path, cli, tmp_path):
    src = model_path("frozen.pb", models.frozen_graph)
    config = tmp_path / "deep" / "graphopt.toml"
    config.parent.mkdir()
    config.write_text('transforms = "fold_constants"\nx = ' + "[" * 5000 + "]" * 5000 + "\n")
    out = tmp_path / "out"
    out.mkdir()
    line = _check_user_error(cli, ["optimize", src, "-o", out / "m.pb", "--config", config], ExitCode.USAGE,
                             "config file nests arrays or tables too deeply", config, out)
    assert str(config) in line
    tables = tmp_path / "tables.toml"  # nested inline tables recurse the same way
    tables.write_text("x = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n")
    _check_user_error(cli, ["optimize", src, "-o", out / "m.pb", "--config", tables], ExitCode.USAGE,
                      "too deeply", tables, out)


def test_a_signature_dtype_that_disagrees_with_the_graph_is_an_input_error(model_path, cli, tmp_path):
    src = model_path("signature_dtype_mismatch", models.signature_dtype_mismatch_saved_model)
    out = tmp_path / "out"
    out.mkdir()
    says = "signature 'serving_default' declares input 'x' as int32, but the graph's tensor x:0 is float32"
    for argv in (["optimize", src, "-o", out / "sm"], ["optimize", src, "-o", out / "sm", "--no-verify"],
                 ["inspect", src]):
        _check_user_error(cli, argv, ExitCode.INPUT, says, src, out)
    # The graph's own tensors (named, not the signature's keys) give a consistent signature.
    code, _, err = cli("optimize", src, "-o", out / "sm", "--inputs", "x:0", "--outputs", "y:0")
    assert code == 0, err
    from graphopt.loaders import load

    (spec,) = load(out / "sm").signature.inputs.values()
    assert spec.dtype == "float32"


# --- names from a model are escaped in every view ----------------------------------------------------------------


def test_control_characters_in_a_node_name_are_escaped(model_path, cli, tmp_path):
    src = model_path("hostile_node_name.pb", models.hostile_node_name_graph)
    out = tmp_path / "out"
    out.mkdir()
    for argv in (["optimize", src, "-o", out / "m.pb"], ["inspect", src]):
        line = _check_user_error(cli, argv, ExitCode.INPUT, "Node name contains invalid characters", src, out)
        assert "mul" + SHOWN in line and INJECTED not in line


def test_control_characters_in_an_op_name_are_escaped(model_path, cli, tmp_path):
    src = model_path("hostile_op_name.pb", models.hostile_op_name_graph)
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = cli("optimize", src, "-o", out / "m.pb")
    # Refused as an op not on the allowlist, or as one TensorFlow does not know: either names it, escaped.
    assert code in (ExitCode.INPUT, ExitCode.UNSAFE), err
    line = _check_user_error(cli, ["optimize", src, "-o", out / "m.pb"], ExitCode(code), "Mul" + SHOWN, src, out)
    assert INJECTED not in line


def test_control_characters_and_markup_in_signature_keys_are_shown_literally(model_path, cli, tmp_path):
    src = model_path("hostile_signature_keys", models.hostile_signature_keys_saved_model)
    code, stdout, err = cli("inspect", src)
    assert code == 0, err
    assert "\x1b" not in stdout + err and "x" + SHOWN in stdout.replace("\n", "")
    out = tmp_path / "sm"
    code, stdout, err = cli("optimize", src, "-o", out)  # the keys are kept as they are, only shown escaped
    assert code == 0, err
    assert "\x1b" not in stdout + err and "\x07" not in stdout + err and "y" + SHOWN_BY_RICH in stdout
    from graphopt.loaders import load

    assert list(load(out).signature.inputs) == ["x" + HOSTILE_NAME]


def test_control_characters_in_file_paths_are_escaped(model_path, cli, tmp_path):
    src = tmp_path / f"model{IN_PATH}.pb"
    shutil.copy(model_path("frozen.pb", models.frozen_graph), src)
    code, stdout, err = cli("optimize", src, "-o", tmp_path / f"out{IN_PATH}.pb", "--outputs", "prob")
    assert code == 0, err
    assert "\x1b" not in stdout + err and f"loaded {tmp_path}/model{SHOWN_IN_PATH}.pb" in err
    assert f"out{SHOWN_IN_PATH}.pb" in err and (tmp_path / f"out{IN_PATH}.pb").is_file()
    missing = tmp_path / f"gone{IN_PATH}.pb"
    out = tmp_path / "empty_out"
    out.mkdir()
    line = _check_user_error(cli, ["optimize", missing, "-o", out / "m.pb"], ExitCode.INPUT,
                             "model path does not exist", src, out)
    assert f"gone{SHOWN_IN_PATH}.pb" in line


def _hostile_graph_def(suffix: str):
    """A raw GraphDef (analysis and diff read those as they are: TensorFlow never validated these names)."""
    import numpy as np
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        w = tf.constant(np.ones((3, 3), np.float32), name="w")
        tf.identity(tf.matmul(x, w, name="mm"), name="y")
        tf.constant(np.ones(4, np.float32), name="unused")
    graph_def = g.as_graph_def()
    for node in graph_def.node:
        if node.name in ("mm", "unused", "w"):
            node.name += suffix
        node.input[:] = [i + suffix if i in ("mm", "w") else i for i in node.input]
        if node.name.startswith("mm"):
            node.op = "MatMul" + suffix
    fn = graph_def.library.function.add()
    fn.signature.name = "fn" + suffix
    return graph_def


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
def test_every_view_escapes_names_from_the_model(terminal):
    """inspect, diff and the pass report, given names holding escapes and markup, print them literally."""
    from rich.console import Console

    from graphopt.analysis.diff import diff_models
    from graphopt.analysis.stats import analyze
    from graphopt.cli.render import install_escaping, render_diff, render_inspect, render_report
    from graphopt.passes.pipeline import PassRecord, PipelineResult

    a, b = _hostile_graph_def(""), _hostile_graph_def(HOSTILE_NAME)
    stats = analyze(b)
    diff = diff_models(a, b)
    record = PassRecord(name="p", spec="p", origin="test", status="rolled_back", seconds=0.0, nodes_before=1,
                        nodes_after=1, size_before=1, size_after=1, ops_delta={"MatMul" + HOSTILE_NAME: 1},
                        notes=["kept node" + HOSTILE_NAME], error="failed on node" + HOSTILE_NAME,
                        functions={"fn" + HOSTILE_NAME: {"nodes_before": 1, "nodes_after": 0, "ops_delta": {}}})

    class _Model:
        node_count, size_bytes = 1, 1

    result = PipelineResult(model=_Model(), records=[record], seconds=0.0, spec="p")  # type: ignore[arg-type]
    file = io.StringIO()
    console = Console(file=file, width=200, force_terminal=terminal, color_system="standard" if terminal else None)
    render_inspect(console, stats)
    render_diff(console, diff)
    render_report(console, result)
    text = file.getvalue()
    assert INJECTED not in text and "\x07" not in text
    if not terminal:
        assert "\x1b" not in text
    assert text.count("[bold]B[/bold]") >= 6, text  # node, op, function names and the report's texts, literally
    # The CLI's consoles also escape what a view (or a plugin's command) did not: the safety net.
    file = io.StringIO()
    console = Console(file=file, width=200)
    install_escaping([console])
    console.print("raw" + HOSTILE_NAME, markup=False)
    assert file.getvalue() == "raw" + SHOWN_BY_RICH + "\n"
