"""``graphopt optimize`` runs whole in one confined child (graphopt/confined_run.py, issue 11 item 4).

The CLI's own process never imports TensorFlow: loading (with the load-time ops the allowlist let
through), the passes, every execution of the graph and the writing happen in the child, which may
write only beneath its own folder. The parent checks what the child wrote and moves it into place.
These tests show: the parent stays TensorFlow-free and the outputs land where asked; an op the user
allowed at load time is now confined too; a crash outside any execution of the graph (a plugin's pass)
costs the child, not graphopt; what the child hands back is checked (no links into the output) and
read with an allowlist of data classes that run nothing when unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import run_subprocess

from graphopt.errors import ExitCode, ResourceError
from graphopt.security import sandbox

sys.path.insert(0, str(Path(__file__).parent))
from models import graph_model  # noqa: E402
from test_security_loading import init_op_signature  # noqa: E402


@pytest.fixture(scope="module")
def small_pb(tmp_path_factory) -> Path:
    import tensorflow as tf

    model = graph_model(lambda x: {"y": tf.identity(tf.nn.relu(x * 2.0 + 1.0))}, {"x": (tf.float32, [None, 4])})
    path = tmp_path_factory.mktemp("small") / "small.pb"
    path.write_bytes(model.graph_def.SerializeToString())
    return path


def _cli_in_fresh_process(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``graphopt ARGS`` in a new interpreter that prints, last, whether it imported TensorFlow."""
    code = ("import sys\nfrom graphopt.cli.main import main\ncode = main(sys.argv[1:])\n"
            "print('TENSORFLOW_IMPORTED=' + str('tensorflow' in sys.modules))\nsys.exit(code)\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, **(env or {})), timeout=600)


def test_the_cli_process_never_imports_tensorflow_and_the_outputs_land_in_place(small_pb, tmp_path):
    result = _cli_in_fresh_process("optimize", str(small_pb), "-o", "out.pb", "--serving-dir", "base",
                                   "--report", "report.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "TENSORFLOW_IMPORTED=False" in result.stdout
    assert (tmp_path / "out.pb").is_file() and (tmp_path / "base" / "1" / "saved_model.pb").is_file()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "ok" and report["outputs"] == [str(tmp_path / "out.pb"), str(tmp_path / "base" / "1")]
    assert report["target"]["files"][0] == str(tmp_path / "base" / "1")
    assert f"saved pb to {tmp_path / 'out.pb'}" in result.stderr and f"to {tmp_path / 'base' / '1'}" in result.stderr
    assert ".graphopt-run-" not in result.stderr + json.dumps(report)  # the child's paths never reach the user
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "out.pb", "report.json"]  # nothing left behind
    # The same run with the sandbox off is the in-process flow: TensorFlow imported here, the same graph written.
    off = _cli_in_fresh_process("optimize", str(small_pb), "-o", "off.pb", cwd=tmp_path, env={"GRAPHOPT_SANDBOX": "off"})
    assert off.returncode == 0, off.stderr
    assert "TENSORFLOW_IMPORTED=True" in off.stdout
    import tensorflow as tf

    graphs = [tf.compat.v1.GraphDef.FromString((tmp_path / name).read_bytes()) for name in ("off.pb", "out.pb")]
    assert graphs[0] == graphs[1]  # as messages: protobuf's map fields (attrs) serialize in no fixed order


def test_an_allowed_load_time_op_runs_confined(tmp_path, cli, monkeypatch):
    """The user allowed WriteFile at load (``GRAPHOPT_ALLOW_OPS``); the init op that writes outside the model's
    folder now runs in the child, whose writes are confined: refused, and graphopt says so (exit 8)."""
    target = tmp_path / "elsewhere" / "written.txt"
    target.parent.mkdir()
    model = tmp_path / "model"
    init_op_signature(model, target)
    monkeypatch.setenv("GRAPHOPT_ALLOW_OPS", "WriteFile")
    code, _, err = cli("optimize", model, "-o", tmp_path / "out", "--no-verify")
    assert code == ExitCode.RESOURCE, err
    assert "refused access to a file outside its sandbox folder" in " ".join(err.split()), err
    assert not target.exists() and not (tmp_path / "out").exists()
    assert "Traceback" not in err


CRASHING_PLUGIN = """
from graphopt import function_pass, hookimpl
import os


@function_pass(name="crash_now")
def crash_now(model):
    os.abort()  # a (trusted) plugin's bug that kills its process, as a native extension's could


@hookimpl
def graphopt_register_passes(register):
    register(crash_now)
"""


def test_a_crash_outside_any_execution_costs_the_child_not_graphopt(small_pb, tmp_path):
    site = tmp_path / "site"
    info = site / "graphopt_crash-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: graphopt-crash\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[graphopt]\ncrash = graphopt_crash\n")
    (site / "graphopt_crash.py").write_text(CRASHING_PLUGIN)
    out = tmp_path / "out.pb"
    result = run_subprocess("optimize", small_pb, "-o", out, "--transforms", "strip_unused_nodes crash_now",
                            env={"PYTHONPATH": str(site)}, timeout=300)
    text = " ".join(result.stderr.split())
    assert result.returncode == ExitCode.RESOURCE, result.stderr
    assert "the optimize run of" in text and "SIGABRT" in text, result.stderr
    assert not out.exists() and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # the child's folder beside -o is gone too


def test_what_the_child_wrote_is_checked_before_it_is_moved(tmp_path):
    from graphopt.confined_run import _take

    secret = tmp_path / "secret.txt"
    secret.write_text("the user's")
    for kind in ("symlink", "hardlink"):
        made = tmp_path / f"child-{kind}" / "model"
        (made / "variables").mkdir(parents=True)
        (made / "saved_model.pb").write_bytes(b"x")
        if kind == "symlink":
            (made / "variables" / "variables.index").symlink_to(secret)
        else:
            os.link(secret, made / "variables" / "variables.index")
        dest = tmp_path / f"dest-{kind}"
        with pytest.raises(ResourceError, match="other than plain files and folders") as info:
            _take(made, dest)
        assert info.value.limit == "filesystem" and not dest.exists()
        os.unlink(made / "variables" / "variables.index")
    plain = tmp_path / "child-plain" / "model"
    plain.mkdir(parents=True)
    (plain / "saved_model.pb").write_bytes(b"x")
    _take(plain, tmp_path / "dest-plain")
    assert (tmp_path / "dest-plain" / "saved_model.pb").read_bytes() == b"x"


def test_result_classes_a_child_may_send_run_nothing_when_unpickled():
    """The answer allowlist names graphopt's result data classes: unpickling one must only set its fields."""
    import importlib

    graphopt_classes = [(m, n) for m, n in sandbox._ANSWER_GLOBALS if m.startswith("graphopt.")]
    assert graphopt_classes
    for module, name in graphopt_classes:
        cls = getattr(importlib.import_module(module), name)
        assert dataclasses.is_dataclass(cls), name
        for method in ("__reduce__", "__reduce_ex__", "__setstate__", "__post_init__", "__getstate__"):
            assert method not in vars(cls), f"{name} defines {method}"
        assert "__new__" not in vars(cls)


def test_a_hub_handle_is_found_in_the_users_cache_from_the_child(model_path, tmp_path):
    """The child's temporary folder is its own: tensorflow_hub's default cache would be looked for there. The run
    passes the cache folder this process sees (and lets the child write it, to cache what it downloads)."""
    import hashlib
    import shutil

    from tests import models

    handle = "https://tfhub.dev/graphopt-tests/cached-module/1"
    cache = tmp_path / "cache"
    shutil.copytree(model_path("hub_tf1", models.tf1_hub_module), cache / hashlib.sha1(handle.encode()).hexdigest())
    out = tmp_path / "out"
    result = run_subprocess("optimize", handle, "-o", out, "--no-verify",
                            env={"TFHUB_CACHE_DIR": str(cache), "GRAPHOPT_HUB_TIMEOUT": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (out / "saved_model.pb").is_file()
