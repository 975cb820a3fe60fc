"""Execution is confined (issue 11 item 4): every run of a model's graph happens in a sandboxed child.

Hostile graphs built here -- an ``Abort`` op, a ``While`` whose condition is always true, a
``Fill`` of 10 GB, a ``WriteFile`` to a path outside the child's folder -- each end in a
:class:`ResourceError` (exit code 8) naming what ran out, through the Python API and through the
CLI, and this process carries on. Limits are small so each case ends in seconds (most of a case's
time is the child importing TensorFlow).
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from support import run_subprocess

from graphopt.errors import ExitCode, ResourceError, UsageError
from graphopt.runtime.session import write_model
from graphopt.security import sandbox
from graphopt.security.sandbox import ConfinedWorker, Limits, Sandbox, run_confined

sys.path.insert(0, str(Path(__file__).parent))
from models import graph_model  # noqa: E402

GiB = 2**30
# TensorFlow maps ~2 GB of address space just by being imported: 4 GiB leaves room to run, not for 10 GB.
SMALL = Limits(memory_bytes=4 * GiB, cpu_seconds=60, wall_seconds=60)
LANDLOCK = sandbox.landlock_abi() > 0


def _hostile(kind: str, target: Path | None = None):
    """A model whose graph, run on any input, does what ``kind`` says."""
    import tensorflow as tf

    def build(x):
        if kind == "abort":
            stop = tf.raw_ops.Abort(error_msg="stop here")
            with tf.control_dependencies([stop]):
                return {"y": tf.identity(x * 2.0)}
        if kind == "loop":  # the condition is always true
            count = tf.while_loop(lambda v: tf.constant(True), lambda v: v + 1.0, [tf.reduce_sum(x)])
            return {"y": tf.identity(x * count)}
        if kind == "fill":  # 50000 x 50000 float32: 10 GB
            big = tf.fill(tf.cast(tf.stack([50000, 50000]) + tf.cast(tf.reduce_sum(x) * 0, tf.int32), tf.int64), 1.0)
            return {"y": tf.identity(x * tf.reduce_sum(big))}
        if kind == "write":
            done = tf.io.write_file(str(target), "written by a model")
            with tf.control_dependencies([done]):
                return {"y": tf.identity(x * 2.0)}
        return {"y": tf.identity(x * 2.0)}

    return graph_model(build, {"x": (tf.float32, [None, 4])})


# kind -> (op to allow, limits, what ResourceError.limit is, words the message must hold)
CASES = {
    "abort": ("Abort", {}, "crash", ["crashed", "SIGABRT"]),
    "loop": ("all", {"wall_seconds": 5}, "time", ["did not finish within 5 s", "wall-clock"]),
    "loop-cpu": ("all", {"cpu_seconds": 3, "wall_seconds": 120}, "cpu", ["more than 3 s of CPU time"]),
    "fill": ("all", {}, "memory", ["ran out of memory", "4 GiB"]),
    "write": ("WriteFile", {}, "filesystem", ["refused access to a file outside its sandbox folder"]),
}


@pytest.fixture(autouse=True)
def _forget_limits():
    """The CLI's --memory-limit & co. and sandbox.configure() are process-wide: no test may leak them.

    These tests set limits of their own and count children: they run outside the session's shared
    child (tests/conftest.py), as a process that never entered one would.
    """
    token = sandbox._SHARED.set(None)
    yield
    sandbox._SHARED.reset(token)
    sandbox.reset_configuration()


@pytest.fixture
def outside(tmp_path):
    """A path in the test's own folder, outside any child's folder: a model must not create it."""
    return tmp_path / "elsewhere" / "written.txt"


def _model_for(case: str, outside: Path):
    kind = case.split("-")[0]
    if kind == "write":
        outside.parent.mkdir(exist_ok=True)
    return _hostile(kind, outside)


# --- the sandbox itself (no TensorFlow in the child: fast) -------------------------------------------


def test_default_limits_scale_with_the_model_and_follow_the_environment(monkeypatch):
    for var in (sandbox.ENV_MEMORY, sandbox.ENV_CPU, sandbox.ENV_TIME, sandbox.ENV_MODE):
        monkeypatch.delenv(var, raising=False)
    assert sandbox.default_limits().memory_bytes == 8 * GiB
    assert sandbox.default_limits(5 * GiB).memory_bytes == 20 * GiB  # 4 x the model beyond 2 GiB of model
    monkeypatch.setenv(sandbox.ENV_MEMORY, "1.5G")
    monkeypatch.setenv(sandbox.ENV_TIME, "0")
    limits = sandbox.default_limits(5 * GiB)
    assert limits.memory_bytes == int(1.5 * GiB) and limits.wall_seconds is None
    assert sandbox.parse_bytes("512M") == 512 * 2**20 and sandbox.parse_bytes("none") is None
    with pytest.raises(UsageError):
        sandbox.parse_bytes("lots")
    monkeypatch.setenv(sandbox.ENV_MODE, "sometimes")
    with pytest.raises(UsageError, match="sandbox mode"):
        sandbox.default_limits()


def test_a_childs_answer_is_read_with_an_allowlist():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.array([b"x", b"yz"], dtype=object)}
    back = sandbox.loads_answer(pickle.dumps(("ok", arrays), protocol=5))[1]
    np.testing.assert_array_equal(back["a"], arrays["a"])
    assert back["s"].tolist() == [b"x", b"yz"]

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    with pytest.raises(pickle.UnpicklingError, match="may not name"):
        sandbox.loads_answer(pickle.dumps(Evil()))
    # a child answering with anything else is refused, and this process goes on
    with pytest.raises(ResourceError, match="refuses to read"):
        run_confined("decimal:Decimal", "1.5", limits=SMALL, preload=())


@pytest.mark.parametrize("method", ["landlock", "namespace"])
def test_the_child_writes_only_in_its_own_folder(method, outside):
    if method == "landlock" and not LANDLOCK:
        pytest.skip("this kernel has no Landlock")
    outside.parent.mkdir()
    with Sandbox(SMALL.replace(fs_method=method), preload=()) as box:
        with pytest.raises(ResourceError, match="refused") as info:
            box.call("pathlib:Path.write_text", outside, "x")
        assert info.value.limit == "filesystem" and info.value.code == ExitCode.RESOURCE
        box.call("pathlib:Path.write_text", box.path / "inside.txt", "x")  # a fresh child: the last one was ended
        assert box.read_file("inside.txt") == b"x"
        assert box.report["fs"] == method and box.notes() == []
        assert ("Landlock ABI" if method == "landlock" else "mount namespace") in box.describe()
    assert not outside.exists() and not box.path.exists()


def test_crashes_and_exits_are_named_by_signal():
    with pytest.raises(ResourceError, match=r"killed by SIGSEGV \(segmentation fault\)") as info:
        run_confined("ctypes:string_at", 0, limits=SMALL, preload=())  # reads address 0
    assert info.value.limit == "crash"
    with pytest.raises(ResourceError, match="exit code 0.*without an answer"):
        run_confined("os:_exit", 0, limits=SMALL, preload=())
    with pytest.raises(ResourceError, match="ran out of memory") as info:
        run_confined("numpy:ones", (2**31,), limits=SMALL, preload=())  # 16 GB of float64
    assert info.value.limit == "memory"


def test_sandbox_off_runs_here_and_says_so(monkeypatch):
    monkeypatch.setenv(sandbox.ENV_MODE, "off")
    limits = sandbox.default_limits()
    assert run_confined("os:getpid", limits=limits) == os.getpid()
    assert "unconfined" in sandbox.confinement_notes(None, limits, "verification")[0]


# --- hostile graphs through the Python API -------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_graph_in_verification_is_a_resource_error(case, outside, monkeypatch):
    from graphopt.verify.compare import reference_outputs

    op, limits, limit, words = CASES[case]
    model = _model_for(case, outside)
    sandbox.configure(**{**SMALL.__dict__, **limits})
    try:
        with pytest.raises(ResourceError) as info:
            reference_outputs(model, allow_unsafe=True if op == "all" else [op])
    finally:
        sandbox.reset_configuration()
    error = info.value
    assert error.code == ExitCode.RESOURCE == 8 and error.limit == limit
    assert all(w in error.render() for w in words), error.render()
    assert "original model" in error.render()
    assert not outside.exists()


def test_a_worker_restarts_after_each_hostile_request(tmp_path):
    # One model, four behaviours picked by the input's first value: what `serve` meets.
    import tensorflow as tf

    def build(x, mode):
        branches = {1: lambda: tf.raw_ops.Abort(error_msg="stop"),
                    2: lambda: tf.while_loop(lambda v: tf.constant(True), lambda v: v + 1.0, [0.0]),
                    3: lambda: tf.reduce_sum(tf.fill(tf.stack([mode * 20000, 50000]), 1.0))}
        y = x * 2.0
        for value, branch in branches.items():
            def hostile(branch=branch):
                out = branch()
                with tf.control_dependencies([out] if isinstance(out, tf.Operation) else []):
                    return tf.identity(y) * (1.0 if isinstance(out, tf.Operation) else tf.cast(out, tf.float32))
            y = tf.cond(tf.equal(mode, value), hostile, lambda y=y: tf.identity(y))
        return {"y": y}

    model = graph_model(build, {"x": (tf.float32, [None, 4]), "mode": (tf.int32, [])})
    x = np.ones((2, 4), np.float32)
    spec = write_model(model, tmp_path)
    with ConfinedWorker("graphopt.runtime.session:open_session", spec, limits=SMALL, label="the model") as worker:
        np.testing.assert_array_equal(worker.run({"x": x, "mode": np.int32(0)})["y"], x * 2)
        first = worker.pid
        with pytest.raises(ResourceError, match="SIGABRT"):
            worker.run({"x": x, "mode": np.int32(1)})
        with pytest.raises(ResourceError, match="within 3 s") as info:
            worker.run({"x": x, "mode": np.int32(2)}, timeout=3)
        assert info.value.limit == "time"
        with pytest.raises(ResourceError, match="out of memory"):
            worker.run({"x": x, "mode": np.int32(3)})
        np.testing.assert_array_equal(worker.run({"x": x, "mode": np.int32(0)})["y"], x * 2)
        assert worker.restarts == 3 and worker.pid != first
        with pytest.raises(sandbox.ChildError, match="InvalidArgument|Cannot feed"):
            worker.run({"x": np.ones((2, 5), np.float32), "mode": np.int32(0)})  # a bad request: same child
        assert worker.restarts == 3


# --- hostile graphs through the CLI --------------------------------------------------------------------


def _limit_flags(limits: dict) -> list[str]:
    merged = {**SMALL.__dict__, **limits}
    return ["--memory-limit", str(merged["memory_bytes"]), "--cpu-limit", str(merged["cpu_seconds"]),
            "--time-limit", str(merged["wall_seconds"])]


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_graph_through_the_cli_exits_8(case, cli, tmp_path, outside):
    op, limits, limit, words = CASES[case]
    src = tmp_path / f"{case}.pb"
    src.write_bytes(_model_for(case, outside).graph_def.SerializeToString())
    out = tmp_path / "out.pb"
    code, _, err = cli(*_limit_flags(limits), "optimize", src, "-o", out, "--allow-op", op)
    assert code == ExitCode.RESOURCE, err
    assert all(w in " ".join(err.split()) for w in words), err
    assert "Traceback" not in err and not out.exists() and not outside.exists()


def test_an_abort_op_does_not_kill_the_graphopt_process(tmp_path):
    src = tmp_path / "abort.pb"
    src.write_bytes(_hostile("abort").graph_def.SerializeToString())
    proc = run_subprocess("optimize", src, "-o", tmp_path / "out.pb", "--allow-op", "Abort", timeout=600)
    assert proc.returncode == 8, proc.stderr  # not -6 (SIGABRT) nor 0 with nothing written
    assert "SIGABRT" in proc.stderr and "Abort_op intentional failure" in proc.stderr


def test_one_run_shares_one_child_and_replaces_it_after_a_failure():
    with sandbox.shared_sandbox(SMALL, start=False, preload=()) as shared:
        with sandbox.sandbox_for(label="first", memory_bytes=SMALL.memory_bytes) as box:
            assert box is shared
            pid = box.call("os:getpid")
            (box.path / "left.txt").write_text("x")
        assert not (shared.path / "left.txt").exists()  # each use leaves an empty folder
        with sandbox.sandbox_for(label="second", memory_bytes=SMALL.memory_bytes, wall_seconds=2) as box:
            assert box is shared and box.call("os:getpid") == pid  # the same child: one TensorFlow import per run
            with pytest.raises(ResourceError, match="second did not finish within 2 s"):
                box.call("time:sleep", 30)
        with sandbox.sandbox_for(label="third", memory_bytes=SMALL.memory_bytes) as box:
            assert box.call("os:getpid") != pid and shared.starts == 2  # a fresh child after the failure
        with sandbox.sandbox_for(label="other", env={"X": "1"}, memory_bytes=SMALL.memory_bytes) as box:
            assert box is not shared  # another environment (Grappler's oneDNN setting): a child of its own
    assert not shared.alive


def test_reads_can_be_confined_too(tmp_path):
    # Opt-in (Limits.read_paths): the child reads only Python's and the system's folders, its own, and those given.
    import tensorflow as tf

    from graphopt.runtime.session import run_model_confined

    if not LANDLOCK:
        pytest.skip("read confinement needs Landlock")
    secret, shared = tmp_path / "secret.txt", tmp_path / "shared"
    secret.write_text("not the model's")
    shared.mkdir()
    (shared / "vocab.txt").write_text("the model's")
    model = graph_model(lambda x: {"y": tf.identity(x * 2.0), "a": tf.io.read_file(str(shared / "vocab.txt")),
                                   "b": tf.io.read_file(str(secret))}, {"x": (tf.float32, [None])})
    x = np.ones(2, np.float32)
    assert run_model_confined(model, {"x": x}, limits=SMALL)["b"] == b"not the model's"  # default: reads are free
    with pytest.raises(ResourceError, match="refused access to a file outside") as info:
        run_model_confined(model, {"x": x}, limits=SMALL.replace(read_paths=(str(shared),)))
    assert "secret.txt" in " ".join(info.value.details)
    only_allowed = graph_model(lambda x: {"a": tf.io.read_file(str(shared / "vocab.txt"))}, {"x": (tf.float32, [None])})
    assert run_model_confined(only_allowed, {"x": x}, limits=SMALL.replace(read_paths=(str(shared),)))["a"] == \
        b"the model's"


def test_timing_and_heat_workers_confine_themselves(tmp_path):
    """bench --target's and tune's worker processes (which must own their process to be timed) apply the
    sandbox's limits to themselves before they open a model: writes only beneath their scratch folder."""
    import json
    import subprocess

    if not LANDLOCK:
        pytest.skip("this check uses Landlock")
    scratch, elsewhere = tmp_path / "scratch", tmp_path / "elsewhere"
    scratch.mkdir()
    elsewhere.mkdir()
    config = sandbox.worker_confinement(scratch)
    assert config is not None and config["write_paths"] == [str(scratch)] and config["memory_bytes"]
    worker = (
        "import json, resource, sys\n"
        "from graphopt.security.sandbox import confine_worker\n"
        "config = json.loads(sys.argv[1])\n"
        "assert confine_worker(config) is None\n"
        "open(sys.argv[2] + '/ok.txt', 'w').write('inside')\n"
        "try:\n"
        "    open(sys.argv[3] + '/no.txt', 'w').write('outside')\n"
        "except PermissionError:\n"
        "    print('refused')\n"
        "print(resource.getrlimit(resource.RLIMIT_AS)[0])\n")
    out = subprocess.run([sys.executable, "-c", worker, json.dumps(config), str(scratch), str(elsewhere)],
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out == ["refused", str(config["memory_bytes"])]
    assert (scratch / "ok.txt").read_text() == "inside" and not (elsewhere / "no.txt").exists()
    sandbox.configure(mode="off")
    assert sandbox.worker_confinement(scratch) is None  # GRAPHOPT_SANDBOX=off: workers run as before
