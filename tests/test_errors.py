"""The error corpus: every way a user can get it wrong, through the real CLI.

Each case checks the whole contract of an error (docs/guide/errors.md): one ``error:``
line saying what and where, a hint, the exit code of its class, no traceback
unless ``--debug`` (and one with it), nothing written, and the input tree
byte-identical afterwards. A few cases also run in a child process, as a user
would, for real exit codes and real plugin discovery.

Tests run as root, where ``chmod`` does not stop writes: the "unwritable output"
cases use a parent that is a regular file and ``/proc`` (which refuses new
files even to root) instead of a read-only folder.
"""

from __future__ import annotations

import hashlib
import os
import random
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import run_subprocess

from graphopt.errors import ExitCode
from tests import models

ROOT = Path(__file__).resolve().parents[1]

# --- inputs, built once per session ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def inputs(model_path, tmp_path_factory) -> dict[str, Path]:
    """Good models and broken copies of them, by name. Nothing here may change during the session."""
    root = tmp_path_factory.mktemp("error_inputs")
    frozen = model_path("errors_frozen.pb", models.frozen_graph)
    tf2 = model_path("errors_tf2", models.keras_saved_model)
    tf1 = model_path("errors_tf1", models.tf1_saved_model)
    data = frozen.read_bytes()
    files = {
        "empty.pb": b"",
        "truncated.pb": data[: len(data) // 3],
        "random.pb": random.Random(7).randbytes(4096),
        "syntax.pbtxt": b'node {\n  name: "x"\n  op: "Placeholder"\n  attr { key: "dtype" value { type: DT_FLOAT } }\n'
                        b'}\nnode {{ name: "y" }\n',
        "a_file": b"not a folder\n",
        "deep.toml": b'transforms = "fold_constants"\nx = ' + b"[" * 5000 + b"]" * 5000 + b"\n",
    }
    out = {"frozen": frozen, "tf2": tf2, "tf1": tf1}
    # Inputs that were "internal error" (issue 11): a 50-dimension placeholder, a signature lying about its
    # dtype, an ANSI escape in a node name.
    out["p50"] = model_path("errors_p50.pb", models.placeholder_50_dims)
    out["dtype_lies"] = model_path("errors_dtype_lies", models.signature_dtype_mismatch_saved_model)
    out["hostile_node.pb"] = model_path("errors_hostile_node.pb", models.hostile_node_name_graph)
    out["abort.pb"] = model_path("errors_abort.pb", models.abort_graph)
    for name, content in files.items():
        (root / name).write_bytes(content)
        out[name] = root / name
    for name, src in (("tf2_novars", tf2), ("tf1_novars", tf1)):
        import shutil

        shutil.copytree(src, root / name)
        for f in (root / name / "variables").iterdir():
            f.unlink()  # the folder stays, empty: what an interrupted copy leaves
        out[name] = root / name
    return out


def tree_hash(path: Path) -> str:
    """One digest over every file's relative path and bytes under ``path`` (or of the file itself)."""
    h = hashlib.sha256()
    paths = sorted(p for p in path.rglob("*")) if path.is_dir() else [path]
    for p in paths:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


# --- plugins used by the corpus: real distributions on sys.path ---------------------------------------------------


def write_distribution(root: Path, dist: str, version: str, entry: str, module: str, source: str | None) -> None:
    """An installed distribution as importlib.metadata sees it: a .dist-info folder (plus its module) on sys.path."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[graphopt]\n{entry} = {module}\n")
    if source is not None:
        (root / f"{module}.py").write_text(textwrap.dedent(source))


CORPUS_PLUGIN = """
    from graphopt import hookimpl, function_pass

    @function_pass(name="explode", description="raises, on purpose [/x] (text rich must not read as markup)")
    def explode(model):
        raise RuntimeError("kaboom inside the plugin [/x]")

    @function_pass(name="dangle")
    def dangle(model):
        node = model.graph_def.node.add(name="dangling", op="Identity", input=["ghost"])
        node.attr["T"].type = 1
        return model

    def _configure(parser):
        pass

    def _run(args, ctx):
        raise ValueError("the plugin command has a bug")

    @hookimpl
    def graphopt_register_passes(register):
        register(explode)
        register(dangle)

    @hookimpl
    def graphopt_register_commands(register):
        register("corpus-boom", "a plugin command that fails", _configure, _run)
"""

HOOK_ONLY_PLUGIN = """
    import os
    from pathlib import Path

    from graphopt import hookimpl

    @hookimpl
    def graphopt_pass_start(pass_, model, context):
        if os.environ.get("GRAPHOPT_TEST_HOOK_RAISE"):
            raise RuntimeError("the observer broke")
        mark = os.environ.get("GRAPHOPT_TEST_HOOK_MARK")
        if mark:
            with open(mark, "a") as f:
                f.write(pass_.name + "\\n")

    @hookimpl
    def graphopt_write_paths():  # optimize runs hooks in a confined child: the mark's folder must be writable
        mark = os.environ.get("GRAPHOPT_TEST_HOOK_MARK")
        return [str(Path(mark).parent)] if mark else []
"""


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """Working plugins: passes that fail in two ways, a failing command, and a hook-only observer."""
    root = tmp_path_factory.mktemp("plugin_site")
    write_distribution(root, "graphopt-error-corpus", "0.3.0", "error_corpus", "graphopt_error_corpus", CORPUS_PLUGIN)
    write_distribution(root, "graphopt-hook-only", "0.1.0", "hook_only", "graphopt_hook_only", HOOK_ONLY_PLUGIN)
    return root


@pytest.fixture(scope="session")
def broken_site(tmp_path_factory) -> Path:
    """A plugin whose module imports something that is not installed."""
    root = tmp_path_factory.mktemp("broken_site")
    write_distribution(root, "graphopt-cannot-import", "1.2.3", "cannot_import", "graphopt_cannot_import",
                       "import graphopt_dependency_that_is_not_installed\n")
    return root


@pytest.fixture
def with_plugins(plugin_site, monkeypatch):
    """Put the corpus plugins on sys.path for in-process CLI calls."""
    import importlib

    monkeypatch.syspath_prepend(str(plugin_site))
    importlib.invalidate_caches()
    return plugin_site


# --- the corpus --------------------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    argv: Callable[[dict[str, Path], Path], list]  # (inputs, free output path) -> arguments
    code: ExitCode
    says: str  # in the error line
    input: str  # the input whose tree must not change
    plugins: bool = False


def _opt(src: str, *extra, out_name: str | None = None):
    return lambda i, out: ["optimize", i[src], "-o", out if out_name is None else out_name, *extra]


CASES = [
    Case("missing-path", lambda i, out: ["optimize", i["a_file"].parent / "no_such_model", "-o", out],
         ExitCode.INPUT, "model path does not exist", "a_file"),
    Case("empty-file", _opt("empty.pb"), ExitCode.INPUT, "model file is empty", "empty.pb"),
    Case("truncated-pb", _opt("truncated.pb"), ExitCode.INPUT, "not a binary GraphDef", "truncated.pb"),
    Case("random-bytes-pb", _opt("random.pb"), ExitCode.INPUT, "not a binary GraphDef", "random.pb"),
    Case("pbtxt-syntax", _opt("syntax.pbtxt"), ExitCode.INPUT, "not a text GraphDef", "syntax.pbtxt"),
    Case("tf2-missing-variables", _opt("tf2_novars"), ExitCode.INPUT, "variables", "tf2_novars"),
    Case("tf1-missing-variables", _opt("tf1_novars", "--tags", "custom,cpu", "--signature", "scores"),
         ExitCode.INPUT, "variables", "tf1_novars"),
    Case("wrong-signature", _opt("tf2", "--signature", "serving_defualt"), ExitCode.INPUT,
         "no signature 'serving_defualt'", "tf2"),
    Case("wrong-tags", _opt("tf1", "--tags", "serve"), ExitCode.INPUT, "no meta graph with tags", "tf1"),
    Case("unknown-input", _opt("frozen", "--inputs", "inputt"), ExitCode.INPUT, "input 'inputt' is not in the graph",
         "frozen"),
    Case("unknown-output", _opt("frozen", "--outputs", "prob,nope"), ExitCode.INPUT,
         "output 'nope' is not in the graph", "frozen"),
    Case("unknown-transform", _opt("frozen", "--transforms", "fold_constant"), ExitCode.USAGE,
         "unknown pass 'fold_constant'", "frozen"),
    Case("missing-argument", _opt("frozen", "--transforms", "remove_nodes"), ExitCode.USAGE,
         "option 'op' is required", "frozen"),
    Case("unknown-argument", _opt("frozen", "--transforms", "fold_constants(ignore_error=true)"), ExitCode.USAGE,
         "unknown option 'ignore_error'", "frozen"),
    Case("bad-argument-value", _opt("frozen", "--transforms", "quantize_weights(minimum_size=big)"), ExitCode.USAGE,
         "expects int", "frozen"),
    Case("unbalanced-quotes", _opt("frozen", "--transforms", 'remove_nodes(op="Identity)'), ExitCode.USAGE,
         "unbalanced quote", "frozen"),
    Case("missing-config-file", lambda i, out: ["optimize", i["frozen"], "-o", out, "--config",
                                                i["a_file"].parent / "no.toml"],
         ExitCode.USAGE, "config file not found", "frozen"),
    Case("missing-sample-file", lambda i, out: ["optimize", i["frozen"], "-o", out, "--sample",
                                                i["a_file"].parent / "no.npz"],
         ExitCode.INPUT, "sample file not found", "frozen"),
    Case("plugin-pass-raises", _opt("frozen", "--transforms", "fold_constants explode"), ExitCode.PASS,
         "kaboom inside the plugin [/x]", "frozen", plugins=True),
    Case("pass-returns-invalid-graph", _opt("frozen", "--transforms", "dangle"), ExitCode.PASS,
         "invalid graph", "frozen", plugins=True),
    Case("plugin-command-bug", lambda i, out: ["corpus-boom"], ExitCode.INTERNAL, "internal error", "frozen",
         plugins=True),
    Case("verification-fails", _opt("frozen", "--transforms", "quantize_weights(minimum_size=1)", "--tolerance",
                                    "1e-9"), ExitCode.VERIFY, "differ", "frozen"),
    Case("output-parent-is-a-file", lambda i, out: ["optimize", i["frozen"], "-o", i["a_file"] / "out.pb"],
         ExitCode.OUTPUT, "a_file", "a_file"),
    Case("output-under-a-file-deeper", lambda i, out: ["optimize", i["frozen"], "-o", i["a_file"] / "x" / "out.pb"],
         ExitCode.OUTPUT, "a_file", "a_file"),
    Case("verification-fails-into-new-folders",  # the folders -o names are not created for a failed run
         lambda i, out: ["optimize", i["frozen"], "-o", out.parent / "new" / "dir" / "out.pb", "--transforms",
                         "quantize_weights(minimum_size=1)", "--tolerance", "1e-9"],
         ExitCode.VERIFY, "differ", "frozen"),
    Case("output-unwritable-proc", lambda i, out: ["optimize", i["frozen"], "-o", "/proc/graphopt_out.pb"],
         ExitCode.OUTPUT, "/proc", "frozen"),
    Case("output-inside-input", lambda i, out: ["optimize", i["tf2"], "-o", i["tf2"] / "optimized"],
         ExitCode.OUTPUT, "inside the input", "tf2"),
    Case("output-replaces-input", lambda i, out: ["optimize", i["frozen"], "-o", i["frozen"], "--force"],
         ExitCode.OUTPUT, "inside the input", "frozen"),
    Case("report-over-input", lambda i, out: ["optimize", i["frozen"], "-o", out, "--report", i["frozen"], "--force"],
         ExitCode.OUTPUT, "inside the input", "frozen"),
    Case("serving-dir-inside-input", lambda i, out: ["optimize", i["tf2"], "--serving-dir", i["tf2"] / "serving"],
         ExitCode.OUTPUT, "inside the input", "tf2"),
    Case("output-is-input-parent", lambda i, out: ["optimize", i["truncated.pb"], "-o", i["truncated.pb"].parent,
                                                   "--force"],  # refused before the model is even read
         ExitCode.OUTPUT, "would replace a folder holding the input model", "truncated.pb"),
    Case("output-dev-null-force", lambda i, out: ["optimize", i["frozen"], "-o", "/dev/null", "--force"],
         ExitCode.OUTPUT, "it is a character device", "frozen"),
    Case("report-parent-is-a-file", lambda i, out: ["optimize", i["frozen"], "-o", out, "--report",
                                                    i["a_file"] / "report.json"],
         ExitCode.OUTPUT, "runs through a file", "a_file"),
    Case("serving-dir-unwritable-proc", lambda i, out: ["optimize", i["frozen"], "-o", out, "--serving-dir",
                                                        "/proc/graphopt_base"],
         ExitCode.OUTPUT, "/proc", "frozen"),
    Case("placeholder-50-dims", _opt("p50"), ExitCode.INPUT, "cannot make random inputs for 'x'", "p50"),
    Case("config-5000-deep", lambda i, out: ["optimize", i["frozen"], "-o", out, "--config", i["deep.toml"]],
         ExitCode.USAGE, "config file nests arrays or tables too deeply", "deep.toml"),
    Case("signature-dtype-disagrees", _opt("dtype_lies"), ExitCode.INPUT,
         "declares input 'x' as int32, but the graph's tensor x:0 is float32", "dtype_lies"),
    Case("escape-sequence-in-node-name", _opt("hostile_node.pb"), ExitCode.INPUT,
         "mul\\x1b[31mRED\\x1b[0m[bold]B[/bold]\\x07", "hostile_node.pb"),
    # Execution is confined (docs/guide/confinement.md): an allowed Abort ends the sandboxed child, not graphopt.
    Case("abort-op-allowed", _opt("abort.pb", "--allow-op", "Abort"), ExitCode.RESOURCE,
         "crashed: its process was killed by SIGABRT", "abort.pb"),
]


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_error_corpus(case: Case, inputs, cli, tmp_path, request):
    if case.plugins:
        request.getfixturevalue("with_plugins")
    out = tmp_path / "result.pb"
    argv = case.argv(inputs, out)
    before = tree_hash(inputs[case.input])
    for debug in (False, True):
        code, stdout, err = cli(*(["--debug"] if debug else []), *argv)
        assert code == case.code, f"{case.id}: exit {code}, stderr:\n{err}"
        (line,) = _error_lines(err)
        assert case.says in line, line
        # where: the error line names a location in parentheses; and every class gives a hint
        assert line.rstrip().endswith(")"), line
        assert "\nhint: " in err, err
        assert ("Traceback" in err) is debug, err
        assert "\x1b" not in stdout + err, err  # names from a model are escaped (no colour on a pipe either)
        if case.code == ExitCode.OUTPUT:  # found before the pipeline runs, not after minutes of work
            assert stdout == "" and not any(line.startswith("loaded ") for line in err.splitlines()), err
        assert list(tmp_path.iterdir()) == [], f"{case.id} left output behind"
        assert not Path("/proc/graphopt_out.pb").exists() and not Path("/proc/graphopt_base").exists()
    assert tree_hash(inputs[case.input]) == before, f"{case.id} changed its input"
    assert not any(p.name.startswith(".") for p in inputs["a_file"].parent.iterdir())  # no temp siblings


def test_every_error_class_has_its_own_exit_code():
    codes = {ExitCode.USAGE, ExitCode.INPUT, ExitCode.PASS, ExitCode.VERIFY, ExitCode.INTERNAL, ExitCode.OUTPUT,
             ExitCode.UNSAFE}
    assert len({int(c) for c in codes}) == len(codes) and ExitCode.OK not in codes
    assert {c.code for c in CASES} >= {ExitCode.USAGE, ExitCode.INPUT, ExitCode.PASS, ExitCode.VERIFY,
                                       ExitCode.INTERNAL, ExitCode.OUTPUT}


# --- the same, as a user runs it: real process, real exit status -------------------------------------------------


@pytest.mark.parametrize("case_id", ["missing-path", "random-bytes-pb", "unbalanced-quotes"])
def test_exit_codes_in_a_child_process(case_id, inputs, tmp_path):
    case = next(c for c in CASES if c.id == case_id)
    before = tree_hash(inputs[case.input])
    proc = run_subprocess(*case.argv(inputs, tmp_path / "result.pb"))
    assert proc.returncode == case.code, proc.stderr
    (line,) = _error_lines(proc.stderr)
    assert case.says in line and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == [] and tree_hash(inputs[case.input]) == before


def test_a_plugin_that_fails_to_import_is_one_warning_and_the_run_goes_on(inputs, plugin_site, broken_site,
                                                                         tmp_path):
    env = {"PYTHONPATH": os.pathsep.join([str(broken_site), str(plugin_site)])}
    out = tmp_path / "out.pb"
    proc = run_subprocess("optimize", inputs["frozen"], "-o", out, "--transforms", "fold_constants", env=env)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    (warning,) = warnings
    assert "cannot_import" in warning and "graphopt-cannot-import 1.2.3" in warning
    assert "graphopt_dependency_that_is_not_installed" in warning and "Traceback" not in proc.stderr
    assert out.exists()
    # The other plugins loaded: their pass is there, and failing the way it should.
    proc = run_subprocess("--debug", "optimize", inputs["frozen"], "-o", tmp_path / "x.pb", "--transforms", "explode",
                          env=env)
    assert proc.returncode == ExitCode.PASS and "kaboom inside the plugin" in proc.stderr
    # --debug: the tracebacks of both the import failure and the failing pass are shown
    assert proc.stderr.count("Traceback") >= 2 and "import graphopt_dependency_that_is_not_installed" in proc.stderr
    assert not (tmp_path / "x.pb").exists()
    # Asking for a pass the broken plugin would have provided: the hint says which plugin failed.
    proc = run_subprocess("optimize", inputs["frozen"], "-o", tmp_path / "y.pb", "--transforms", "cannot_import_pass",
                          env=env)
    assert proc.returncode == ExitCode.USAGE
    assert "graphopt-cannot-import 1.2.3" in _hint(proc.stderr)


def _hint(err: str) -> str:
    return "\n".join(line for line in err.splitlines() if line.startswith("hint:"))


# --- plugins switched off really are off, hooks included ---------------------------------------------------------


def test_hook_only_plugin_runs_only_when_allowed(with_plugins, inputs, cli, tmp_path, monkeypatch):
    mark = tmp_path / "hook_ran.txt"
    monkeypatch.setenv("GRAPHOPT_TEST_HOOK_MARK", str(mark))
    args = ["optimize", inputs["frozen"], "-o", tmp_path / "out", "--format", "pb", "--transforms", "fold_constants",
            "--no-verify", "--force"]
    code, _, err = cli(*args)
    assert code == 0, err
    assert mark.read_text().split() == ["fold_constants"]
    mark.unlink()
    for flags, env in (([ "--no-plugins"], {}), (["--plugins", "error_corpus"], {}),
                       ([], {"GRAPHOPT_NO_PLUGINS": "1"}), ([], {"GRAPHOPT_PLUGINS": "graphopt-error-corpus"})):
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            code, _, err = cli(*flags, *args)
        assert code == 0, (flags, env, err)
        assert not mark.exists(), f"hook ran with {flags} {env}"
    code, _, err = cli("--plugins", "hook_only", *args)
    assert code == 0 and mark.read_text().split() == ["fold_constants"]


# --- native aborts become errors ---------------------------------------------------------------------------------
# Each of these aborted the whole process (F-level CHECK in GTT's C++) before graphopt checked for it; found by
# feeding GTT's binding every native transform on odd graphs in child processes. The checks run in a child
# here too, so a regression fails this test instead of killing the test run.

NATIVE_GUARDS = r'''
import json, sys
import numpy as np
import tensorflow as tf
from graphopt.errors import GraphoptError
from graphopt.model import Model, Signature, TensorSpec
from graphopt.passes.pipeline import Pipeline
from graphopt.plugins import Host
from graphopt.runtime.session import run_model

out_dir = sys.argv[1]
v1 = tf.compat.v1
g = tf.Graph()
with g.as_default():
    x = v1.placeholder(tf.float32, [1, 4, 4, 3], name="x")
    k = tf.constant(np.random.default_rng(0).standard_normal((1, 1, 3, 2)).astype(np.float32), name="k")
    conv = tf.nn.conv2d(x, k, 1, "SAME", name="conv")
    c = lambda value, name: tf.constant(np.full(2, value, np.float32), name=name)  # noqa: E731
    bn = tf.raw_ops.FusedBatchNorm(x=conv, scale=c(1.5, "scale"), offset=c(0.1, "offset"), mean=c(0.2, "mean"),
                                   variance=c(0.9, "var"), epsilon=1e-4, is_training=False, name="bn")[0]
    flat = tf.reshape(bn, [1, 32])
    w = tf.constant(np.random.default_rng(1).standard_normal((32, 3)).astype(np.float32), name="w")
    tf.identity(tf.matmul(flat, w, name="mm"), name="y")
stripped = g.as_graph_def()
for node in stripped.node:  # what strip_default_attrs writes: attrs at their op's default left out
    if node.op == "FusedBatchNorm":
        del node.attr["epsilon"]
    if node.op == "MatMul":
        del node.attr["transpose_a"], node.attr["transpose_b"]
sig = Signature({"x": TensorSpec("x:0", "float32", (1, 4, 4, 3))}, {"y": TensorSpec("y:0", "float32", (1, 3))})
host = Host.create(plugins=False)
feeds = {"x": np.random.default_rng(2).standard_normal((1, 4, 4, 3)).astype(np.float32)}
result = {}
model = Model(stripped, sig)
expected = run_model(model, feeds)["y"]
for spec in ("fold_old_batch_norms", "quantize_nodes"):
    got = Pipeline.parse(spec, host=host).run(model)
    ops = sorted({n.op for n in got.model.graph_def.node})
    diff = float(np.max(np.abs(run_model(got.model, feeds)["y"] - expected)))
    result[spec] = {"ops": ops, "diff": diff, "scale": float(np.max(np.abs(expected)))}

bad = g.as_graph_def()
for node in bad.node:
    if node.name == "k":
        node.attr["value"].tensor.tensor_content = b"\0\0\0"  # TF imports this; GTT's FromProto CHECK aborts
try:
    Pipeline.parse("fold_old_batch_norms", host=host).run(Model(bad, sig))
    result["malformed"] = "no error"
except GraphoptError as exc:
    result["malformed"] = [type(exc).__name__, int(exc.code), exc.message]
rank1 = g.as_graph_def()
for node in rank1.node:
    if node.name == "k":  # a Conv2D filter of rank 1: TF's importer rejects it, GTT's shape CHECK aborts
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.ones(6, np.float32)))
gone = Signature(sig.inputs, {"z": TensorSpec("z:0", "float32", (1, 3))})
for name, (graph, signature) in {"rank1": (rank1, sig), "missing_output": (g.as_graph_def(), gone)}.items():
    try:
        Pipeline.parse("fold_old_batch_norms", host=host).run(Model(graph, signature))
        result[name] = "no error"
    except GraphoptError as exc:
        result[name] = [type(exc).__name__, int(exc.code), exc.message]
path = out_dir + "/malformed.pb"
open(path, "wb").write(bad.SerializeToString())
from graphopt.loaders import load
try:
    load(path, inputs=["x"], outputs=["y"])
    result["malformed_load"] = "no error"
except GraphoptError as exc:
    result["malformed_load"] = [type(exc).__name__, int(exc.code), exc.message]
print(json.dumps(result))
'''


def test_native_transforms_that_aborted_are_now_guarded(tmp_path):
    import json
    import subprocess
    import sys


    proc = subprocess.run([sys.executable, "-c", NATIVE_GUARDS, str(tmp_path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]  # -6 (SIGABRT) if a guard is gone
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # Stripped default attrs (epsilon, transpose_a/b) no longer abort, and the result still computes the same.
    folded = result["fold_old_batch_norms"]
    assert "FusedBatchNorm" not in folded["ops"] and folded["diff"] < 1e-4 * max(1.0, folded["scale"])
    quantized = result["quantize_nodes"]
    assert "QuantizedMatMul" in quantized["ops"] or "QuantizedConv2D" in quantized["ops"]
    assert quantized["diff"] < 0.1 * quantized["scale"]  # eight-bit: close, not equal
    # A constant whose bytes do not match its shape: an error naming it, before native code sees it.
    assert result["malformed"][:2] == ["PassError", ExitCode.PASS] and "'k'" in result["malformed"][2]
    assert result["malformed_load"][:2] == ["InputError", ExitCode.INPUT] and "'k'" in result["malformed_load"][2]
    assert result["rank1"][:2] == ["PassError", ExitCode.PASS] and "cannot import" in result["rank1"][2]
    assert result["missing_output"][:2] == ["PassError", ExitCode.PASS] and "'z'" in result["missing_output"][2]


# --- untrusted models: listed by inspect, refused before anything runs them ------------------------------------


@pytest.fixture(scope="session")
def unsafe_model(model_path) -> Path:
    return model_path("unsafe_ops_tf2", models.unsafe_ops_saved_model)


def _ops_of(path: Path) -> list[str]:
    import tensorflow as tf

    return sorted(n.op for n in tf.compat.v1.GraphDef.FromString(path.read_bytes()).node)


def test_inspect_lists_ops_that_reach_outside(unsafe_model, cli):
    import json

    code, out, _ = cli("inspect", unsafe_model, "--json")
    assert code == 0
    found = {u["op"]: u for u in json.loads(out)["unsafe_ops"]}
    assert set(found) == {"ReadFile", "EagerPyFunc"}
    assert found["EagerPyFunc"]["reason"] == "runs arbitrary Python code" and found["ReadFile"]["function"] is None
    code, out, _ = cli("inspect", unsafe_model)
    text = " ".join(out.split())  # rich wraps long node names at the terminal's width
    assert code == 0 and "2 ops not known to compute only" in text and "EagerPyFunc runs arbitrary Python code" in text


def test_verify_bench_and_serve_refuse_unsafe_ops_unless_allowed(unsafe_model, cli, tmp_path):
    before = tree_hash(unsafe_model)
    code, _, err = cli("optimize", unsafe_model, "-o", tmp_path / "out")
    assert code == ExitCode.UNSAFE and "refusing to run the original model for verification" in err
    assert "EagerPyFunc" in err and "ReadFile" in err and "--allow-op EagerPyFunc --allow-op ReadFile" in err
    code, _, err = cli("optimize", unsafe_model, "-o", tmp_path / "out", "--allow-unsafe-ops", "ReadFile")  # old name
    assert code == ExitCode.UNSAFE and "(EagerPyFunc)" in err  # only what was not allowed is named
    assert not (tmp_path / "out").exists()
    code, _, err = cli("bench", unsafe_model, "--runs", "1", "--warmup", "0", "--no-cold")
    assert code == ExitCode.UNSAFE and "refusing to run it for benchmarking" in err
    # Optimizing runs the graph too (constant folding, Grappler): refused as well, unless allowed per op.
    code, _, err = cli("optimize", unsafe_model, "--serving-dir", tmp_path / "base", "--no-verify")
    assert code == ExitCode.UNSAFE and "refusing to run the pipeline on it" in err
    code, _, err = cli("optimize", unsafe_model, "--serving-dir", tmp_path / "base", "--no-verify",
                       "--transforms", "fold_constants", "--allow-op", "ReadFile", "--allow-op", "EagerPyFunc")
    assert code == 0, err  # allowed to optimize; the export then is what serve refuses
    code, _, err = cli("serve", tmp_path / "base", "--port", "0", "--rest-port", "0")
    assert code == ExitCode.UNSAFE and "refusing to serve it" in err
    assert tree_hash(unsafe_model) == before


def test_constant_folding_does_not_execute_file_reads(unsafe_model, cli, tmp_path):
    # GTT's fold_constants evaluates what it folds: before the guard it read <model>.config.txt on this
    # machine and baked its length (4.0) into the optimized graph.
    out = tmp_path / "folded.pb"
    code, _, err = cli("optimize", unsafe_model, "-o", out, "--no-verify", "--transforms",
                       "fold_constants(ignore_errors=true)", "--allow-op", "ReadFile", "--allow-op", "EagerPyFunc")
    assert code == 0, err
    ops = _ops_of(out)
    assert "ReadFile" in ops and "StringLength" in ops


def test_a_hook_that_raises_names_its_distribution(with_plugins, inputs, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_TEST_HOOK_RAISE", "1")
    out = tmp_path / "out.pb"
    code, _, err = cli("optimize", inputs["frozen"], "-o", out, "--transforms", "fold_constants")
    assert code == ExitCode.PASS and not out.exists()
    (line,) = _error_lines(err)
    assert "the observer broke" in line and "graphopt-hook-only 0.1.0" in line and "Traceback" not in err
    code, _, err = cli("--plugins", "error_corpus", "optimize", inputs["frozen"], "-o", out, "--transforms",
                       "fold_constants")
    assert code == 0 and out.exists()  # left out by the allowlist, the broken observer is not called


@pytest.mark.parametrize("builder", [models.tf1_saved_model_writing_at_load, models.tf2_saved_model_writing_at_load,
                                     models.tf1_checkpoint_writing_at_load],
                         ids=["tf1-main-op", "tf2-resource-initializer", "checkpoint-table-initializer"])
def test_loading_a_model_does_not_run_unsafe_init_ops(builder, model_path, inputs, cli, monkeypatch):
    folder = model_path(builder.__name__, builder)
    path = folder / "model.ckpt" if "checkpoint" in builder.__name__ else folder
    written = Path(str(folder) + ".written")
    before = tree_hash(folder)
    code, _, err = cli("inspect", path)
    assert code == ExitCode.UNSAFE and not written.exists()
    (line,) = _error_lines(err)
    assert "refusing to load" in line and "WriteFile" in line and "--allow-op WriteFile" in err
    out = folder.parent / f"{folder.name}.out"
    code, _, err = cli("optimize", path, "-o", out, "--no-verify")
    assert code == ExitCode.UNSAFE and not written.exists() and not out.exists()
    assert tree_hash(folder) == before
    # A vocabulary table read from the model's own assets is what main ops normally do: still loads.
    code, _, err = cli("inspect", inputs["tf1"], "--tags", "custom,cpu", "--signature", "scores")
    assert code == 0, err
    # Allowed explicitly (here by the old variable, still honoured for loading), the load runs the main op: in
    # the confined child that loads, so its write outside that child's folder is refused and named (exit 8) ...
    monkeypatch.setenv("GRAPHOPT_ALLOW_UNSAFE_LOAD", "1")
    args = ["inspect", path, *(["--outputs", "y"] if "checkpoint" in builder.__name__ else [])]
    code, _, err = cli(*args)
    assert code == ExitCode.RESOURCE, err
    assert "refused access to a file outside its sandbox folder" in " ".join(err.split()) and not written.exists()
    # ... and with the sandbox off, in graphopt's own process, it writes: what the allowlist's refusal prevented.
    monkeypatch.setenv("GRAPHOPT_SANDBOX", "off")
    code, _, err = cli(*args)
    assert code == 0, err
    assert written.read_text() == "written while loading"
    written.unlink()


def test_plugin_text_is_shown_literally_not_as_markup(with_plugins, cli):
    # "[/x]" in a message or description made rich raise MarkupError: a raw traceback instead of the error.
    code, out, err = cli("passes")
    assert code == 0, err
    assert "[/x]" in out
    code, out, err = cli("passes", "explode")
    assert code == 0 and "[/x]" in out
