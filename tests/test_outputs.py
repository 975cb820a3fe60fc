"""Outputs (issue 11, item 5): what ``--force`` may replace, concurrent writers, every output checked first,
SIGTERM as clean as Ctrl-C, and modes that follow the umask. Through the CLI, in process and as real processes.

Tests run as root, where permissions stop nothing: what must be refused is refused by graphopt's own rules
(devices, FIFOs, links, foreign files and folders, the current folder), and "unwritable" is a parent that is a
file or ``/proc``. No test writes a real system path: ``/dev/null`` is only checked (``stat`` before and after)
to be refused before anything is written.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import models
import pytest

from graphopt.errors import ExitCode, OutputError

ROOT = Path(__file__).resolve().parents[1]
FAST = ("--no-verify", "--transforms", "fold_constants")


@pytest.fixture(scope="module")
def frozen(model_path) -> Path:
    return model_path("outputs_frozen.pb", models.frozen_graph)


def _error_line(err: str) -> str:
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    return line


def _hidden(folder: Path) -> list[str]:
    """Temporaries, lock files and moved-aside outputs all start with a dot."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _snapshot(path: Path) -> tuple:
    st = os.lstat(path)
    target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
    content = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
    listing = sorted(p.name for p in path.iterdir()) if stat.S_ISDIR(st.st_mode) else None
    return st.st_ino, st.st_mode, st.st_rdev, target, content, listing


# --- what --force may replace -------------------------------------------------------------------------------------


def test_force_never_replaces_a_device_fifo_or_link(frozen, tmp_path, cli):
    fifo = tmp_path / "model.pb"  # the .pb name must not make a FIFO look like a previous output
    os.mkfifo(fifo)
    to_device = tmp_path / "device_link.pb"
    to_device.symlink_to("/dev/null")
    real = tmp_path / "real.pb"
    real.write_bytes(b"")
    to_file = tmp_path / "file_link.pb"
    to_file.symlink_to(real)
    assert stat.S_ISCHR(os.stat(to_device).st_mode)  # verified to be a character device, never written
    for target, says in ((fifo, "it is a FIFO"), (to_device, "it is a symbolic link"),
                         (to_file, "it is a symbolic link")):
        before = _snapshot(target)
        code, out, err = cli("optimize", frozen, "-o", target, "--force", *FAST)
        assert code == ExitCode.OUTPUT, err
        line = _error_line(err)
        assert "refusing to replace -o" in line and says in line and str(target) in line, line
        assert "previous output of the same kind" in err and "Traceback" not in err and out == ""
        assert _snapshot(target) == before
    assert real.read_bytes() == b"" and _hidden(tmp_path) == []


def test_force_refuses_dev_null_before_writing_anything(frozen, tmp_path, cli):
    dev_null = Path("/dev/null")
    before = os.stat(dev_null)
    assert stat.S_ISCHR(before.st_mode)
    code, out, err = cli("optimize", frozen, "-o", dev_null, "--force", *FAST)
    after = os.stat(dev_null)
    assert code == ExitCode.OUTPUT and "it is a character device" in _error_line(err), err
    assert (after.st_ino, after.st_mode, after.st_rdev) == (before.st_ino, before.st_mode, before.st_rdev)
    assert stat.S_ISCHR(after.st_mode) and out == ""
    assert not any(line.startswith("loaded ") for line in err.splitlines())  # refused before loading


def test_force_never_replaces_the_current_folder_or_one_above_it(frozen, tmp_path, cli, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    previous = work / "previous_output"
    code, _, err = cli("optimize", frozen, "-o", previous, *FAST)
    assert code == 0, err
    monkeypatch.chdir(previous)  # even a previous output is not replaced while it is the current folder
    for target, says in ((".", "over the current folder"), (previous, "over the current folder"),
                         ("..", "over a folder holding the current folder"),
                         (tmp_path, "over a folder holding the current folder")):
        code, out, err = cli("optimize", frozen, "-o", target, "--force", *FAST)
        assert code == ExitCode.OUTPUT, err
        assert says in _error_line(err) and "./optimized" in err
    assert (work / "notes.txt").read_text() == "mine" and (previous / "saved_model.pb").is_file()
    assert _hidden(work) == [] and _hidden(previous) == []


def test_force_replaces_only_a_previous_output_of_the_same_kind(frozen, tmp_path, cli):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    text = tmp_path / "thesis.txt"
    text.write_text("years of work")
    not_json = tmp_path / "notes.json"
    not_json.write_text("not json at all")
    model_file = tmp_path / "model.pb"
    model_file.write_bytes(b"old")
    sm = tmp_path / "sm"
    (sm / "variables").mkdir(parents=True)
    (sm / "saved_model.pb").write_bytes(b"old")
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = [
        (["-o", foreign], "it is a folder that holds no SavedModel"),
        (["-o", text, "--format", "pb"], "not .pb/.pbtxt"),
        (["-o", model_file, "--format", "saved_model"], "it is a file, not a SavedModel folder"),
        (["-o", tmp_path / "new.pb", "--report", not_json], "it is a file that is not a JSON report"),
        (["-o", tmp_path / "new.pb", "--report", foreign], "it is a folder, not a file"),
    ]
    before = {p: _snapshot(p) for p in (foreign, text, not_json, model_file, sm)}
    for args, says in refused:
        code, out, err = cli("optimize", frozen, *args, "--force", *FAST)
        assert code == ExitCode.OUTPUT and says in _error_line(err), (args, err)
        assert not (tmp_path / "new.pb").exists()
    assert {p: _snapshot(p) for p in before} == before
    # Previous outputs of the same kind (and an empty folder) are replaced.
    report = tmp_path / "report.json"
    report.write_text("{}")
    for args in (["-o", model_file, "--report", report], ["-o", sm], ["-o", empty]):
        code, _, err = cli("optimize", frozen, *args, "--force", *FAST)
        assert code == 0, (args, err)
    assert model_file.read_bytes() != b"old" and json.loads(report.read_text())["outputs"] == [str(model_file)]
    assert (sm / "saved_model.pb").read_bytes() != b"old"
    assert (empty / "saved_model.pb").is_file()
    assert _hidden(tmp_path) == []
    # Without --force nothing is replaced, whatever it is.
    code, _, err = cli("optimize", frozen, "-o", model_file, *FAST)
    assert code == ExitCode.OUTPUT and "already exists" in _error_line(err) and "--force" in err


def test_serving_dir_replaces_only_a_saved_model_version(frozen, tmp_path, cli):
    base = tmp_path / "base"
    (base / "1").mkdir(parents=True)
    (base / "1" / "readme.txt").write_text("not a model")
    code, _, err = cli("optimize", frozen, "--serving-dir", base, "--version", "1", "--force", *FAST)
    assert code == ExitCode.OUTPUT and "refusing to replace --serving-dir" in _error_line(err), err
    assert (base / "1" / "readme.txt").read_text() == "not a model"
    code, _, err = cli("optimize", frozen, "--serving-dir", base, *FAST)  # the next free version: 2
    assert code == 0 and (base / "2" / "saved_model.pb").is_file(), err
    stamp = (base / "2" / "saved_model.pb").stat().st_ino
    code, _, err = cli("optimize", frozen, "--serving-dir", base, "--version", "2", "--force", *FAST)
    assert code == 0 and (base / "2" / "saved_model.pb").stat().st_ino != stamp, err
    a_file = tmp_path / "base_file"
    a_file.write_text("x")
    code, _, err = cli("optimize", frozen, "--serving-dir", a_file, "--force", *FAST)
    assert code == ExitCode.OUTPUT and "not a folder" in _error_line(err)
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"] and a_file.read_text() == "x"


# --- every output checked before anything runs; none written when one fails --------------------------------------


def test_every_output_is_checked_before_loading(frozen, tmp_path, cli):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out = tmp_path / "out.pb"
    cases = [
        (["--report", a_file / "report.json"], "runs through a file"),
        (["--serving-dir", "/proc/graphopt_base"], "/proc"),
        (["--serving-dir", a_file / "base"], "runs through a file"),
        (["--report", out], "-o and --report name the same path"),
    ]
    for extra, says in cases:
        code, stdout, err = cli("optimize", frozen, "-o", out, *extra)
        assert code == ExitCode.OUTPUT and says in _error_line(err), (extra, err)
        assert stdout == "" and not any(line.startswith("loaded ") for line in err.splitlines()), err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"], extra
    assert not Path("/proc/graphopt_base").exists()
    sm = tmp_path / "sm"
    code, _, err = cli("optimize", frozen, "-o", sm, "--report", sm / "report.json", *FAST)
    assert code == ExitCode.OUTPUT and "--report would be written inside -o" in _error_line(err)


def test_outputs_into_new_folders_are_made_only_for_what_is_written(frozen, tmp_path, cli):
    new = tmp_path / "new"
    args = ["-o", new / "m.pb", "--report", new / "reports" / "r.json", "--serving-dir", new / "serving"]
    code, _, err = cli("optimize", frozen, "-o", new / "m.pb", "--serving-dir", new / "serving", "--transforms",
                       "quantize_weights(minimum_size=1)", "--tolerance", "1e-9")
    assert code == ExitCode.VERIFY and not new.exists(), err
    # With --report, a failed run writes the report (it says why) and nothing else: only its folders are made.
    code, _, err = cli("optimize", frozen, *args, "--transforms", "quantize_weights(minimum_size=1)",
                       "--tolerance", "1e-9")
    assert code == ExitCode.VERIFY, err
    assert sorted(str(p.relative_to(new)) for p in new.rglob("*")) == ["reports", "reports/r.json"]
    assert json.loads((new / "reports" / "r.json").read_text())["outputs"] == []
    code, _, err = cli("optimize", frozen, *args, "--force")
    assert code == 0, err
    report = json.loads((new / "reports" / "r.json").read_text())
    assert report["outputs"] == [str(new / "m.pb"), str(new / "serving" / "1")]
    assert (new / "serving" / "1" / "saved_model.pb").is_file()
    assert "wrote the report to" in err
    for folder in (new, new / "reports", new / "serving"):
        assert _hidden(folder) == []


# --- plugins that make the save phase observable ------------------------------------------------------------------

SAVE_PROBE = """
    import os
    import time
    from pathlib import Path

    import graphopt.savers as savers
    import graphopt.serving.export as export
    from graphopt import hookimpl

    _write_model = savers.write_model
    _write_version = export.write_version


    def write_model(model, path, fmt):
        result = _write_model(model, path, fmt)
        mark = os.environ.get("GRAPHOPT_TEST_SAVE_MARK")
        if mark:  # the staged output is complete: say where it is, then wait (for a signal, or the release file)
            Path(mark).write_text(str(path))
            release = os.environ.get("GRAPHOPT_TEST_SAVE_RELEASE", "")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (release and os.path.exists(release)):
                time.sleep(0.02)
        return result


    def write_version(*args, **kwargs):
        if os.environ.get("GRAPHOPT_TEST_FAIL_VERSION"):
            raise OSError(28, "No space left on device")
        return _write_version(*args, **kwargs)


    savers.write_model = write_model
    export.write_version = write_version


    @hookimpl
    def graphopt_write_paths():  # optimize runs plugins in a confined child: the mark's folder must be writable
        mark = os.environ.get("GRAPHOPT_TEST_SAVE_MARK")
        return [str(Path(mark).parent)] if mark else []
"""


@pytest.fixture(scope="module")
def probe_site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("save_probe_site")
    info = root / "graphopt_save_probe-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: graphopt-save-probe\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[graphopt]\nsave_probe = graphopt_save_probe\n")
    (root / "graphopt_save_probe.py").write_text(textwrap.dedent(SAVE_PROBE))
    return root


def _graphopt(*args, env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "graphopt", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **env))


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before the save: {proc.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, "the save phase was never reached"
        time.sleep(0.05)


@pytest.mark.parametrize("sig, code, out_name", [(signal.SIGTERM, 143, "model.pb"),
                                                (signal.SIGTERM, 143, "saved_model_dir"),
                                                (signal.SIGINT, 130, "model.pb")],
                         ids=["SIGTERM-pb", "SIGTERM-saved-model", "SIGINT-pb"])
def test_a_signal_mid_save_leaves_nothing_behind(frozen, probe_site, tmp_path, sig, code, out_name):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    mark = tmp_path / "saving"
    args = ["optimize", frozen, "-o", out_dir / "new" / out_name, "--report", out_dir / "report.json", *FAST]
    proc = _graphopt(*args, env={"PYTHONPATH": str(probe_site), "GRAPHOPT_TEST_SAVE_MARK": str(mark)})
    _wait_for(mark, proc)
    staged = Path(mark.read_text())
    assert staged.exists() and staged.name != out_name  # a temporary, complete, not yet in place
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert ("terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted") in err and "Traceback" not in err
    assert not staged.exists()
    assert sorted(p.name for p in out_dir.iterdir()) == []  # no output, no report, no lock, no new/ folder


def test_concurrent_writers_exactly_one_wins(frozen, probe_site, tmp_path):
    out = tmp_path / "same.pb"
    mark, release = tmp_path / "saving", tmp_path / "release"
    env = {"PYTHONPATH": str(probe_site)}
    first = _graphopt("optimize", frozen, "-o", out, *FAST,
                      env=dict(env, GRAPHOPT_TEST_SAVE_MARK=str(mark), GRAPHOPT_TEST_SAVE_RELEASE=str(release)))
    _wait_for(mark, first)  # the first run holds the output and is in its save phase
    second = _graphopt("optimize", frozen, "-o", out, *FAST, env=env)
    _, err2 = second.communicate(timeout=300)
    release.write_text("go")
    _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert second.returncode == ExitCode.OUTPUT, err2
    line = _error_line(err2)
    assert f"another graphopt run (pid {first.pid}) is writing -o now" in line and "Traceback" not in err2
    assert out.is_file() and _hidden(tmp_path) == []


def test_concurrent_writers_started_together(frozen, tmp_path):
    out = tmp_path / "same.pb"
    procs = [_graphopt("optimize", frozen, "-o", out, *FAST, env={}) for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, ExitCode.OUTPUT], results
    loser = next(err for code, err in results if code)
    line = _error_line(loser)
    # Whichever got there first: the other finds it locked, or (if the first finished) already there.
    assert "is writing -o now" in line or "already exists" in line, line
    assert out.is_file() and _hidden(tmp_path) == []


def test_a_failing_output_means_none_is_written(frozen, probe_site, tmp_path):
    """The serving export fails while staging (disk full): -o and --report, staged first, are not committed."""
    out, report, base = tmp_path / "m.pb", tmp_path / "r.json", tmp_path / "base"
    proc = _graphopt("optimize", frozen, "-o", out, "--report", report, "--serving-dir", base, *FAST,
                     env={"PYTHONPATH": str(probe_site), "GRAPHOPT_TEST_FAIL_VERSION": "1"})
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == ExitCode.OUTPUT, err
    assert "No space left on device" in _error_line(err) and "nothing was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_path_that_appears_meanwhile_is_not_replaced(tmp_path):
    import tensorflow as tf

    from graphopt.savers import Outputs

    model = models.graph_model(_double, {"x": (tf.float32, [None, 2])})
    for name, kind in (("m.pb", "pb"), ("sm", "saved_model")):
        dest = tmp_path / name
        with pytest.raises(OutputError) as err, Outputs() as outputs:
            out = outputs.add(dest, kind)
            # another program (not graphopt: it takes no lock) writes the same path while we run
            dest.mkdir() if kind == "saved_model" else dest.write_text("theirs")
            if kind == "saved_model":
                (dest / "theirs.txt").write_text("theirs")
            outputs.stage(out, lambda target, kind=kind: _write(model, target, kind))
            outputs.commit()
        assert "appeared while graphopt was running" in err.value.message
        assert (dest / "theirs.txt" if kind == "saved_model" else dest).read_text() == "theirs"
    assert _hidden(tmp_path) == []


def _double(x):
    import tensorflow as tf

    return {"y": tf.multiply(x, 2.0, name="y")}


def _write(model, target, kind):
    from graphopt.savers import write_model

    write_model(model, target, kind)


def test_lock_is_released_by_the_kernel_when_a_run_dies(tmp_path):
    """A run killed with SIGKILL leaves its lock file, but not its lock: the next run proceeds."""
    from graphopt.savers import Outputs

    code = ("import sys, time; from graphopt.savers import Outputs; o = Outputs(); o.add(sys.argv[1], 'pb'); "
            "print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "m.pb")], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(OutputError, match=f"pid {proc.pid}"), Outputs() as outputs:
        outputs.add(tmp_path / "m.pb", "pb")
    proc.kill()
    proc.wait()
    with Outputs() as outputs:
        outputs.add(tmp_path / "m.pb", "pb")  # the stale file is taken over
    assert _hidden(tmp_path) == []


# --- modes follow the umask ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_follow_the_umask(frozen, tmp_path, cli, umask):
    new = tmp_path / "new"
    old = os.umask(umask)
    try:
        code, _, err = cli("optimize", frozen, "-o", new / "m.pb", "--report", new / "r.json",
                           "--serving-dir", new / "base", *FAST)
        assert code == 0, err
        code, _, err = cli("optimize", frozen, "-o", new / "sm", *FAST)
        assert code == 0, err
    finally:
        os.umask(old)
    seen = {"file": 0, "dir": 0}
    for path in [new, *new.rglob("*")]:
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        kind = "dir" if path.is_dir() else "file"
        want = (0o777 if kind == "dir" else 0o666) & ~umask
        assert mode == want, f"{path.relative_to(tmp_path)}: {oct(mode)}, want {oct(want)} (umask {oct(umask)})"
        seen[kind] += 1
    # the .pb (a temporary first), the report, saved_model.pb, variables/ (made by TF 0755), warm-up records
    assert seen["file"] >= 5 and seen["dir"] >= 6, seen
    assert (new / "base" / "1" / "variables").is_dir() and (new / "sm" / "variables").is_dir()
