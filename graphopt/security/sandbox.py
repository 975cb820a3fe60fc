"""Run a model's graph in a confined child process: the second line of defence (docs/guide/confinement.md).

The allowlist (:mod:`graphopt.security.scan`) decides which ops may run at all; this module limits
what running them can cost or reach. Every execution of a model's graph -- verification, constant
folding (GTT ``fold_constants``, Grappler), ``bench`` -- happens in a fresh child interpreter
(``graphopt/security/_child.py``, started with ``subprocess``, never forked from a process that has
TensorFlow's threads) that before it sees anything of the model

- limits its address space (``RLIMIT_AS``, default ``max(8 GiB, 4 x model size)``), the size of any
  file it writes (``RLIMIT_FSIZE``), and the CPU time of each call (``RLIMIT_CPU``);
- may write only beneath its own temporary folder: Landlock where the kernel has it (with ABI >= 4
  also no TCP bind/connect, with ABI >= 6 no signals to processes outside), else a read-only mount
  namespace; where neither exists writes are not confined and every result says so (a note, and a
  :class:`SandboxWarning`), or, with ``GRAPHOPT_SANDBOX=require``, nothing runs;
- holds no capabilities and cannot gain any (``no_new_privs``), and dies with its parent.

The parent enforces the wall-clock limit (it kills the child's process group) and turns every way the
child can fail into a :class:`~graphopt.errors.ResourceError` (exit code 8) naming what ran out:
memory, CPU time, wall time, file size, a write the sandbox refused, or a crash with its signal
(``SIGABRT`` from an ``Abort`` op, ``SIGSEGV``). The parent itself survives all of them.

The child's answers are unpickled with an allowlist (plain data and numpy arrays only,
:func:`loads_answer`): a child that a graph took over must not get code run in its parent.

API: :func:`run_confined` (one call in a fresh child), :class:`ConfinedWorker` (a persistent child
that serves many calls and restarts itself after a failure) and :class:`Sandbox` (a child plus the
folder it may write, for callers that pass large inputs as files). Limits come from :class:`Limits`;
:func:`default_limits` reads the ``GRAPHOPT_*`` environment variables.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import functools
import io
import json
import os
import pickle
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from graphopt.errors import ExitCode, GraphoptError, ResourceError, UsageError
from graphopt.security import _child
from graphopt.security.limits import ENV_MEMORY, GiB, classify_exception, format_bytes, tf_error_text  # noqa: F401 - part of this module's API

DEFAULT_MEMORY_BYTES = 8 * GiB
MEMORY_FACTOR = 4  # times the model's size, when that is more than the default
DEFAULT_CPU_SECONDS = 1200.0
DEFAULT_WALL_SECONDS = 600.0
# Starting the child is not the model's time: a fresh interpreter importing TensorFlow takes 3-20 s
# (more on a loaded machine). The wall-clock limit of a call starts when the child begins it.
STARTUP_SECONDS = 300.0

ENV_MODE = "GRAPHOPT_SANDBOX"  # on (default) | require | off
ENV_CPU = "GRAPHOPT_CPU_LIMIT"  # seconds of CPU time per call; 0 = no limit
ENV_TIME = "GRAPHOPT_TIME_LIMIT"  # seconds of wall-clock time per call; 0 = no limit
ENV_FS = "GRAPHOPT_SANDBOX_FS"  # auto (default) | landlock | namespace: how writes are confined
MODES = ("on", "require", "off")
FS_METHODS = ("auto", "landlock", "namespace")

_CHILD_SCRIPT = str(Path(_child.__file__).resolve())


class SandboxWarning(UserWarning):
    """A model's graph ran less confined than it should: no write confinement on this system, or sandbox off."""


@dataclass(frozen=True)
class Limits:
    """What one confined call may use. ``None`` means no limit of that kind.

    ``memory_bytes`` is the child's address space (``RLIMIT_AS``): TensorFlow reserves about 2 GB of
    it just by being imported, hence the 8 GiB floor. ``cpu_seconds`` counts all threads, per call;
    ``wall_seconds`` is per call too and enforced by the parent. ``file_bytes`` caps any one file
    the child writes (default: ``memory_bytes``). ``mode`` is ``"on"``, ``"require"`` (refuse to run
    where writes cannot be confined) or ``"off"`` (run in this process, unconfined: for measuring the
    sandbox's cost only). ``fs_method`` picks Landlock or the mount namespace (``"auto"``: Landlock
    first). ``read_paths`` (None: reads unconfined) confines reads too, to these paths, Python's and
    the system's folders.
    """

    memory_bytes: int | None = DEFAULT_MEMORY_BYTES
    cpu_seconds: float | None = DEFAULT_CPU_SECONDS
    wall_seconds: float | None = DEFAULT_WALL_SECONDS
    file_bytes: int | None = None
    mode: str = "on"
    fs_method: str = "auto"
    read_paths: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"sandbox mode must be one of {', '.join(MODES)}, not {self.mode!r}", where=ENV_MODE)
        if self.fs_method not in FS_METHODS:
            raise UsageError(f"sandbox file-system method must be one of {', '.join(FS_METHODS)}, "
                             f"not {self.fs_method!r}", where=ENV_FS)

    def replace(self, **changes: Any) -> "Limits":
        return replace(self, **changes)

    @property
    def confined(self) -> bool:
        return self.mode != "off"

    def describe(self) -> str:
        parts = [f"memory {format_bytes(self.memory_bytes)}" if self.memory_bytes else "memory unlimited",
                 f"CPU {self.cpu_seconds:g} s" if self.cpu_seconds else "CPU unlimited",
                 f"wall {self.wall_seconds:g} s" if self.wall_seconds else "wall unlimited"]
        return ", ".join(parts)


_OVERRIDES: dict[str, Any] = {}


def configure(**overrides: Any) -> None:
    """Set process-wide limits (what the CLI's ``--memory-limit`` etc. do), over the environment's.

    Keys are :class:`Limits` fields; ``None`` means no limit of that kind.
    """
    for key, value in overrides.items():
        if key not in Limits.__dataclass_fields__:
            raise TypeError(f"unknown limit {key!r}")
        _OVERRIDES[key] = value


def reset_configuration() -> None:
    """Forget what :func:`configure` set."""
    _OVERRIDES.clear()


def default_limits(model_bytes: int = 0, **overrides: Any) -> Limits:
    """The limits for running a model of ``model_bytes``: defaults, then ``GRAPHOPT_*`` variables,
    then :func:`configure`, then ``overrides``.

    Memory defaults to ``max(8 GiB, 4 x model_bytes)``.
    """
    memory = max(DEFAULT_MEMORY_BYTES, MEMORY_FACTOR * int(model_bytes))
    values: dict[str, Any] = {"memory_bytes": memory}
    env = os.environ
    if env.get(ENV_MEMORY, "").strip():
        values["memory_bytes"] = parse_bytes(env[ENV_MEMORY], where=ENV_MEMORY)
    if env.get(ENV_CPU, "").strip():
        values["cpu_seconds"] = parse_seconds(env[ENV_CPU], where=ENV_CPU)
    if env.get(ENV_TIME, "").strip():
        values["wall_seconds"] = parse_seconds(env[ENV_TIME], where=ENV_TIME)
    if env.get(ENV_MODE, "").strip():
        mode = env[ENV_MODE].strip().lower()
        values["mode"] = {"1": "on", "true": "on", "0": "off", "false": "off"}.get(mode, mode)
    if env.get(ENV_FS, "").strip():
        values["fs_method"] = env[ENV_FS].strip().lower()
    values.update(_OVERRIDES)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Limits(**values)


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_bytes(text: str | int, *, where: str = "memory limit") -> int | None:
    """``"8G"``, ``"512M"``, ``"1.5GiB"`` or a number of bytes -> bytes; ``0`` / ``"none"`` -> None (no limit)."""
    if isinstance(text, int):
        return text or None
    if text.strip().lower() in ("none", "off", "unlimited"):
        return None
    m = _SIZE.match(text)
    if not m:
        raise UsageError(f"cannot read {text!r} as a size", where=where, hint="give bytes or e.g. 8G, 512M")
    value = float(m.group(1)) * 1024 ** " kmgt".index((m.group(2) or " ").lower())
    return int(value) or None


def parse_seconds(text: str | float, *, where: str = "time limit") -> float | None:
    """Seconds as a number (``"90"``, ``"1.5"``); ``0`` / ``"none"`` -> None (no limit)."""
    if isinstance(text, (int, float)):
        return float(text) or None
    if text.strip().lower() in ("none", "off", "unlimited"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"cannot read {text!r} as seconds", where=where) from None
    if value < 0:
        raise UsageError(f"a time limit cannot be negative ({text})", where=where)
    return value or None


# --- what this system offers -----------------------------------------------------------------------


def landlock_abi() -> int:
    """The running kernel's Landlock ABI version (0: none)."""
    return _child.landlock_abi()


def describe_confinement(report: Mapping[str, Any] | None, limits: Limits) -> str:
    """One line: how a child was confined (from its ``ready`` report)."""
    if not limits.confined or report is None:
        return f"unconfined ({ENV_MODE}=off): the graph ran in graphopt's own process"
    if report.get("fs") == "landlock":
        extras = [x for x, on in (("no TCP", report.get("tcp_blocked")), ("no signals out", report.get(
            "signals_scoped")), ("reads confined", report.get("reads_confined"))) if on]
        fs = f"Landlock ABI {report.get('landlock_abi')} (writes only in its folder{', ' if extras else ''}" \
             f"{', '.join(extras)})"
    elif report.get("fs") == "namespace":
        fs = "a read-only mount namespace (writes only in its folder)"
    else:
        fs = "writes NOT confined (" + "; ".join(report.get("notes", [])) + ")"
    return f"child process, {fs}, {limits.describe()}"


def confinement_notes(report: Mapping[str, Any] | None, limits: Limits, what: str) -> list[str]:
    """Notes for a result's report when ``what`` ran less confined than it should (empty when fully confined)."""
    if not limits.confined:
        return [f"{what} ran unconfined: {ENV_MODE}=off"]
    if report is not None and report.get("fs") == "none":
        return [f"{what} ran with writes NOT confined: {'; '.join(report.get('notes', []))} "
                f"(set {ENV_MODE}=require to refuse instead; see docs/guide/confinement.md)"]
    return []


_WARNED: set[str] = set()


def _warn_once(text: str) -> None:
    if text not in _WARNED:
        _WARNED.add(text)
        warnings.warn(text, SandboxWarning, stacklevel=3)


# --- exceptions: classification in the child, rebuilding in the parent --------------------------------


def resource_error(exc: BaseException) -> ResourceError | None:
    """:func:`classify_exception` for this process: in a confined child, with its label, memory limit and whether
    its writes are confined; elsewhere only memory exhaustion counts."""
    return classify_exception(exc, fs_confined=_child._FS_CONFINED, label=_child._LABEL, memory_bytes=_child._MEMORY)


@dataclass
class ChildError(GraphoptError):
    """The function a confined child ran raised something that is not a :class:`GraphoptError`.

    ``exc_type`` is the exception's qualified class name (``tensorflow.python.framework.errors_impl.
    InvalidArgumentError``), ``message`` its text; the child's traceback is in ``details``.
    """

    code: ExitCode = ExitCode.INTERNAL
    exc_type: str = ""


def _rebuild(info: Mapping[str, Any], label: str) -> GraphoptError:
    if info.get("kind") == "graphopt":
        from graphopt import errors

        cls = getattr(errors, str(info.get("class")), None)
        if not (isinstance(cls, type) and issubclass(cls, GraphoptError)):
            cls = GraphoptError
        fields = dict(info.get("fields", {}))
        limit = fields.pop("limit", "")
        try:
            code = ExitCode(int(fields.pop("code", ExitCode.INTERNAL)))
        except ValueError:
            code = ExitCode.INTERNAL
        kwargs = {k: fields.get(k) for k in ("message", "where", "hint")}
        err = cls(**{k: str(v) if v is not None else None for k, v in kwargs.items()},  # type: ignore[arg-type]
                  details=[str(d) for d in fields.get("details") or []])
        err.code = code
        if isinstance(err, ResourceError):
            err.limit = str(limit)
        return err
    exc_type = str(info.get("class", "Exception"))
    message = str(info.get("message", ""))
    tb = [ln for ln in str(info.get("traceback", "")).splitlines() if ln.strip()][-6:]
    return ChildError(f"{label} failed: {exc_type.rsplit('.', 1)[-1]}: {message.strip()[:500]}",
                      where="sandboxed child", details=tb, exc_type=exc_type)


# --- the parent's side of the channel ------------------------------------------------------------------

# Globals an answer may name: numpy's array and scalar reconstruction, and plain containers.
_ANSWER_GLOBALS = {
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"), ("builtins", "bytearray"),
    ("builtins", "slice"), ("collections", "OrderedDict"),
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
}
# graphopt's result data classes, which a whole optimize run in a child (graphopt.confined_run) sends back: plain
# dataclasses whose unpickling sets fields and runs nothing of theirs (no __reduce__, __setstate__ or
# __post_init__: tests/test_confined_run.py checks), and pathlib's paths.
_ANSWER_GLOBALS |= {
    ("graphopt.passes.pipeline", "PassRecord"), ("graphopt.passes.pipeline", "PipelineResult"),
    ("graphopt.verify.compare", "VerificationReport"), ("graphopt.verify.compare", "OutputDiff"),
    ("graphopt.verify.compare", "Tolerance"), ("graphopt.model", "Signature"), ("graphopt.model", "TensorSpec"),
    ("graphopt.analysis.diff", "GraphDiff"), ("graphopt.analysis.diff", "NodeChange"),
    ("graphopt.analysis.diff", "Neighbourhood"), ("graphopt.analysis.diff", "GraphSide"),
    ("graphopt.analysis.diff", "FunctionChange"), ("graphopt.targets.base", "TargetExport"),
    ("graphopt.confined_run", "ModelSummary"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
    ("pathlib._local", "PosixPath"),
}


class _AnswerUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ANSWER_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a sandboxed child's answer may not name {module}.{name}")


def loads_answer(data: bytes | bytearray | memoryview) -> Any:
    """Unpickle what a child sent: plain data (dicts, lists, str, bytes, numbers) and numpy arrays only.

    Anything else, or a malformed pickle, raises :class:`pickle.UnpicklingError`.
    """
    try:
        return _AnswerUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError:
        raise
    except Exception as exc:  # allowed callables given bad arguments, truncated data...: not an answer either
        raise pickle.UnpicklingError(f"not a well-formed answer ({type(exc).__name__}: {exc})"[:300]) from None


def function_ref(fn: str | Callable[..., Any]) -> str:
    """``"module:qualname"`` for a module-level function or class a child can import (``ValueError`` if none)."""
    if isinstance(fn, str):
        return fn if ":" in fn else "{}:{}".format(*fn.rsplit(".", 1))
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        raise ValueError(f"{fn!r} cannot be run in a child: give a module-level function of an importable module")
    return f"{module}:{qualname}"


def graphopt_environment() -> dict[str, str]:
    """This process's ``GRAPHOPT_*`` variables: what a call to a long-lived child must carry, since the child's
    own environment was fixed when it started (a test, or ``serve``, may have changed them since)."""
    return {k: v for k, v in os.environ.items() if k.startswith("GRAPHOPT_")}


def adopt_environment(environment: Mapping[str, str]) -> None:
    """In a child: make this process's ``GRAPHOPT_*`` variables exactly ``environment`` (see above)."""
    for key in [k for k in os.environ if k.startswith("GRAPHOPT_")]:
        del os.environ[key]
    os.environ.update({k: v for k, v in environment.items() if k.startswith("GRAPHOPT_")})


_SIGNAL_WORDS = {"SIGSEGV": "segmentation fault", "SIGABRT": "abort", "SIGBUS": "bus error",
                 "SIGILL": "illegal instruction", "SIGFPE": "arithmetic exception", "SIGKILL": "killed",
                 "SIGTRAP": "trap", "SIGSYS": "bad system call"}
_FATAL_LINE = re.compile(r"^(F\d{4} |terminate called|\s*what\(\):|Fatal Python error|.*Check failed|.*Abort_op)")
_MEMORY_TEXT = ("bad_alloc", "Cannot allocate memory", "out of memory", "Out of memory", "OOM",
                "Resource temporarily unavailable")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


class Sandbox:
    """One confined child process and the folder it may write (:attr:`path`).

    Write large inputs into :attr:`path` (:meth:`open_input`) and give the child their paths; read
    what it wrote with :meth:`read_file`. :meth:`call` runs a module-level function in the child and
    returns its (plain-data or numpy) result. The child starts on the first call (or :meth:`start`)
    and serves calls until :meth:`close`; after a failure that ended it, the next call starts a new one.
    Not thread-safe: one call at a time.
    """

    def __init__(self, limits: Limits | None = None, *, label: str = "the model's graph",
                 preload: Iterable[str] = ("tensorflow",), env: Mapping[str, str] | None = None,
                 folder: str | os.PathLike | None = None, write_paths: Iterable[str | os.PathLike] = ()) -> None:
        """``env`` adds environment variables for the child (e.g. ``TF_ENABLE_ONEDNN_OPTS``, read at TF's import).
        ``folder`` is where the child's own folder is made (default: the system's temporary folder): beside an
        output, what the child writes there can be moved into place without a copy. ``write_paths`` (existing
        folders) are writable for the child too: what plugins running in a whole-run child asked for.

        In a process that is itself a confined child (a whole ``optimize`` run), a sandbox runs its calls
        inline (:attr:`inline`): the process is confined already, and each call still gets its CPU and
        wall-clock limits and its label (:func:`graphopt.security._child.call_inline`)."""
        self.limits = limits or default_limits()
        self.label = label
        self.env = dict(env or {})
        self.preload = list(preload)
        self.write_paths = [os.path.abspath(p) for p in write_paths]
        self.inline = _child.confined_here() and self.limits.confined
        self.report: dict[str, Any] | None = dict(_child._REPORT or {}) if self.inline else None
        self._root = Path(tempfile.mkdtemp(prefix=".graphopt-run-" if folder else "graphopt-sandbox-", dir=folder))
        self.path = self._root / "work"
        self.path.mkdir(mode=0o700)
        self._log = self._root / "child.log"
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._kept: Any = None  # what an unconfined keep=True call kept
        self._rusage: Any = None
        self.starts = 0

    # -- life cycle --

    @property
    def alive(self) -> bool:
        return self.inline or (self._proc is not None and self._proc.returncode is None)

    def start(self) -> None:
        """Start the child (if not running) and wait until it has confined itself."""
        if self.alive or not self.limits.confined:
            return
        parent, child = socket.socketpair()
        lim = self.limits
        config = {"parent_pid": os.getpid(), "memory_bytes": lim.memory_bytes,
                  "file_bytes": lim.file_bytes or lim.memory_bytes, "write_paths": [str(self.path), *self.write_paths],
                  "read_paths": None if lim.read_paths is None else _read_roots(lim.read_paths, self.path),
                  "fs_method": lim.fs_method, "require_fs": lim.mode == "require", "preload": self.preload,
                  "sys_path": [p for p in sys.path if p], "label": self.label}
        # TMPDIR, KERAS_HOME: anything TF or Keras writes (or reads as the user's config) is in the child's folder.
        env = dict(os.environ, TMPDIR=str(self.path), TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
                   PYTHONDONTWRITEBYTECODE="1", KERAS_HOME=str(self.path), **self.env)
        with open(self._log, "ab") as log:
            try:
                self._proc = subprocess.Popen(
                    [sys.executable, _CHILD_SCRIPT, str(child.fileno()), json.dumps(config)],
                    pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                    cwd=self.path, start_new_session=True)
            finally:
                child.close()
        self._sock = parent
        self._rusage = None
        self.starts += 1
        kind, report = self._receive(time.monotonic() + STARTUP_SECONDS, phase="start")
        self.report = report
        if report.get("fatal"):
            self._reap()
            raise ResourceError(f"not running {self.label}: {report['fatal']}", limit="filesystem",
                                hint=f"{ENV_MODE}=require refuses to run where writes cannot be confined; "
                                     "see docs/guide/confinement.md")
        for note in confinement_notes(report, self.limits, self.label):
            _warn_once(note)

    def close(self) -> None:
        """Stop the child and delete its folder."""
        self.kill()
        shutil.rmtree(self._root, onerror=_force_remove)

    def kill(self) -> None:
        """End the child now (its whole process group), if it runs (an inline sandbox has none)."""
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
        if self._proc is not None and self._proc.returncode is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - a forgotten sandbox must not leave a process behind
        try:
            if self._proc is not None and self._proc.returncode is None:
                os.killpg(self._proc.pid, signal.SIGKILL)
        except Exception:
            pass

    def notes(self, what: str | None = None) -> list[str]:
        """What a result's report should say when this sandbox confined less than it should (else nothing)."""
        return confinement_notes(self.report, self.limits, what or self.label)

    def describe(self) -> str:
        return describe_confinement(self.report, self.limits)

    # -- files --

    def open_input(self, name: str) -> Any:
        """A new file ``name`` in :attr:`path`, open for writing in binary (never follows or replaces a link)."""
        fd = os.open(self._name(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "wb")

    def read_file(self, name: str, *, max_bytes: int | None = None) -> bytes:
        """The bytes of a regular file the child wrote in :attr:`path` (no links followed, no hard links)."""
        path = self._name(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise ResourceError(f"{self.label} left no readable {name} in its folder ({exc.strerror})",
                                limit="crash") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            limit = max_bytes or self.limits.file_bytes or self.limits.memory_bytes
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or (limit and st.st_size > limit):
                raise ResourceError(f"{self.label} left something other than a plain file as {name}",
                                    limit="filesystem")
            return f.read()

    def clear(self) -> None:
        """Delete everything in :attr:`path` (between the uses of a shared sandbox)."""
        for entry in os.scandir(self.path):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, onerror=_force_remove)
            else:
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass

    def _name(self, name: str) -> str:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"not a plain file name: {name!r}")
        return str(self.path / name)

    # -- calls --

    def call(self, fn: str | Callable[..., Any], *args: Any, kwargs: Mapping[str, Any] | None = None,
             timeout: float | None = None, keep: bool = False,
             on_event: Callable[[Any], None] | None = None) -> Any:
        """Run ``fn(*args, **kwargs)`` in the child; its result, or its error re-raised here.

        ``fn`` is a module-level function (or ``"package.module:function"``). Arguments are pickled;
        the result must be plain data or numpy arrays. ``timeout`` (default: the wall-clock limit)
        counts from when the child starts the call. ``keep`` keeps the result in the child instead
        of sending it (for :meth:`call_kept`). Limits hit, crashes and refused writes raise
        :class:`ResourceError`; the child is then gone and the next call starts a new one.
        ``on_event`` receives what the function sends while it runs (:func:`graphopt.security._child.notify`:
        progress); an exception it raises ends the call (and the child).
        """
        ref = function_ref(fn)
        if self.inline:
            wall = timeout if timeout is not None else self.limits.wall_seconds
            result = _child.call_inline(_child.resolve(ref), args, dict(kwargs or {}), cpu=self.limits.cpu_seconds,
                                        wall=wall, label=self.label)
        elif not self.limits.confined:
            result = _child.resolve(ref)(*args, **dict(kwargs or {}))
        else:
            return self._request(("call", ref, args, dict(kwargs or {}), self.limits.cpu_seconds, keep, self.label),
                                 timeout, on_event)
        if keep:
            self._kept = result
            return None
        return result

    def call_kept(self, *args: Any, timeout: float | None = None) -> Any:
        """Call what the last ``call(..., keep=True)`` returned in the child, with ``args``."""
        if self.inline:
            wall = timeout if timeout is not None else self.limits.wall_seconds
            return _child.call_inline(self._kept, args, {}, cpu=self.limits.cpu_seconds, wall=wall, label=self.label)
        if not self.limits.confined:
            return self._kept(*args)
        if not self.alive:
            raise ResourceError(f"{self.label} is not running", limit="crash")
        return self._request(("kept", args, self.limits.cpu_seconds), timeout)

    def _request(self, request: tuple, timeout: float | None,
                 on_event: Callable[[Any], None] | None = None) -> Any:
        self.start()
        assert self._sock is not None
        label, limits = self.label, self.limits
        try:
            payload = pickle.dumps(request, protocol=5)
            self._sock.settimeout(STARTUP_SECONDS)
            _child.send_frame(self._sock, payload)
            del payload
            kind, value = self._receive(time.monotonic() + STARTUP_SECONDS, phase="start")  # imports done
            if kind == "started":
                wall = timeout if timeout is not None else self.limits.wall_seconds
                outer = time.monotonic() + wall if wall else None
                deadline, current = outer, wall
                while True:
                    kind, value = self._receive(deadline, phase="call", wall=current)
                    if kind != "event":
                        break
                    if isinstance(value, tuple) and len(value) == 4 and value[0] == "limits":
                        # The child runs an execution of the model's graph inline (a whole optimize run in one
                        # child): that execution's limits and label hold until it says it is done, so an error
                        # names them.
                        inner_label, inner_wall, inner_cpu = value[1], value[2], value[3]
                        if inner_label is None:  # that execution is done: the call's own label and limits again
                            self.label, self.limits, current, deadline = label, limits, wall, outer
                        else:
                            self.label = str(inner_label)
                            current = float(inner_wall) if inner_wall else None
                            self.limits = limits.replace(wall_seconds=current,
                                                         cpu_seconds=float(inner_cpu) if inner_cpu else None)
                            inner = time.monotonic() + current if current else None
                            deadline = min((d for d in (outer, inner) if d is not None), default=None)
                    elif on_event is not None:
                        on_event(value)
        except BaseException:
            self.kill()  # never leave a child running a call nobody waits for (Ctrl-C included)
            raise
        finally:
            self.label, self.limits = label, limits
        if kind == "error":
            raise _rebuild(value, self.label)
        return value

    def _receive(self, deadline: float | None, *, phase: str, wall: float | None = None) -> tuple[str, Any]:
        sock = self._sock
        assert sock is not None
        max_bytes = max(self.limits.memory_bytes or 0, self.limits.file_bytes or 0) or None
        try:
            header = self._recv_exactly(sock, _child._HEADER.size, deadline)
            (n,) = _child._HEADER.unpack(header)
            if max_bytes is not None and n > max_bytes:
                raise ResourceError(f"{self.label} answered with {format_bytes(n)}, more than its memory limit",
                                    limit="memory")
            message = loads_answer(self._recv_exactly(sock, n, deadline))
        except TimeoutError:
            self.kill()
            if phase == "start":
                raise ResourceError(f"the sandbox for {self.label} did not start within {STARTUP_SECONDS:g} s",
                                    limit="time", hint="the machine may be overloaded") from None
            raise ResourceError(f"{self.label} did not finish within {wall:g} s (wall-clock limit)", limit="time",
                                hint=f"a graph that loops forever never finishes; a slow model can have more "
                                     f"time: {ENV_TIME}=SECONDS (or --time-limit)") from None
        except ResourceError:
            self.kill()
            raise
        except (EOFError, OSError, pickle.UnpicklingError, ValueError) as exc:
            raise self._death(exc) from None
        if not (isinstance(message, tuple) and message and isinstance(message[0], str)):
            self.kill()
            raise ResourceError(f"{self.label} answered with something that is not an answer", limit="crash")
        return message[0], (message[1] if len(message) > 1 else None)

    @staticmethod
    def _recv_exactly(sock: socket.socket, n: int, deadline: float | None) -> bytearray:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
            else:
                sock.settimeout(None)
            k = sock.recv_into(view[got:], n - got)  # raises TimeoutError (socket.timeout) at the deadline
            if k == 0:
                raise EOFError
            got += k
        return buf

    def _reap(self, wait: float | None = None) -> tuple[int | None, Any]:
        """Wait for the child (at most ``wait`` seconds; None: until it ends): exit code and resource usage."""
        proc = self._proc
        if proc is None:
            return 0, None
        if proc.returncode is not None:
            return proc.returncode, self._rusage
        end = None if wait is None else time.monotonic() + wait
        while True:
            try:
                pid, status, rusage = os.wait4(proc.pid, 0 if end is None else os.WNOHANG)
            except ChildProcessError:
                return proc.wait(), None
            if pid:
                break
            if time.monotonic() >= end:  # type: ignore[operator]
                return None, None
            time.sleep(0.02)
        proc.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        self._rusage = rusage
        return proc.returncode, rusage

    def _death(self, cause: BaseException) -> ResourceError:
        """The child stopped answering: wait for it, and say what killed it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        proc = self._proc
        code, rusage = self._reap(10.0)  # it closed its end: it is exiting or dead
        if code is None and proc is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            code, rusage = self._reap()
        log = self._log_tail()
        fatal = [ln for ln in log if _FATAL_LINE.match(ln)][-3:]
        cpu = (rusage.ru_utime + rusage.ru_stime) if rusage is not None else None
        lim = self.limits
        if isinstance(cause, pickle.UnpicklingError):
            return ResourceError(f"{self.label} sent an answer graphopt refuses to read: {cause}", limit="crash")
        if code is not None and code < 0:
            sig = signal.Signals(-code).name if -code in signal.Signals.__members__.values() else f"signal {-code}"
            if sig == "SIGXCPU" or (lim.cpu_seconds and cpu is not None and cpu >= lim.cpu_seconds):
                return ResourceError(f"{self.label} used more than {lim.cpu_seconds:g} s of CPU time (CPU limit)",
                                     limit="cpu", hint=f"a graph that loops forever never finishes; a slow model "
                                                       f"can have more: {ENV_CPU}=SECONDS (or --cpu-limit)")
            if sig == "SIGXFSZ":
                return ResourceError(f"{self.label} wrote a file larger than "
                                     f"{format_bytes(lim.file_bytes or lim.memory_bytes)} (file-size limit)",
                                     limit="file size")
            if sig in ("SIGABRT", "SIGSEGV", "SIGBUS") and any(t in " ".join(fatal or log[-5:]) for t in _MEMORY_TEXT):
                return ResourceError(f"{self.label} ran out of memory (limit {format_bytes(lim.memory_bytes)} of "
                                     f"address space) and its process was killed by {sig}",
                                     details=fatal, limit="memory",
                                     hint=f"a model that needs more can have it: {ENV_MEMORY}=16G (or --memory-limit)")
            what = f"{sig} ({_SIGNAL_WORDS[sig]})" if sig in _SIGNAL_WORDS else sig
            hint = ("an Abort op in the graph ends its process on purpose; " if sig == "SIGABRT" else "") + \
                "graphopt itself is unaffected; rerun with --debug for the child's log"
            if sig == "SIGKILL":
                hint = "the kernel's out-of-memory killer may have ended it: the machine ran short of memory"
            return ResourceError(f"{self.label} crashed: its process was killed by {what}", details=fatal,
                                 limit="crash", hint=hint)
        return ResourceError(f"{self.label} ended its process (exit code {code}) without an answer",
                             details=fatal or log[-3:], limit="crash",
                             hint="an Abort op with exit_without_error=true ends the process this way; "
                                  "graphopt itself is unaffected")

    def _log_tail(self, limit: int = 65536) -> list[str]:
        try:
            with open(self._log, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - limit))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        return [_ANSI.sub("", ln)[:300] for ln in text.splitlines() if ln.strip()]

    def log(self) -> str:
        """The child's stdout and stderr so far (TensorFlow's logs, anything the graph printed)."""
        return "\n".join(self._log_tail(1 << 20))


def _read_roots(extra: Iterable[str], work: Path) -> list[str]:
    """Where a child that confines reads may still read: Python, the system, ``extra``, its folder."""
    import site
    import sysconfig

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages(),
             *(sysconfig.get_paths().values()), "/usr", "/lib", "/lib64", "/etc", "/proc", "/sys", "/dev",
             "/bin", "/sbin", "/opt", str(Path(__file__).resolve().parents[2]),  # graphopt itself (editable installs)
             *extra, *(p for p in sys.path if p and os.path.isdir(p))}
    return sorted(str(Path(p).resolve()) for p in roots if p and os.path.exists(p))


def _force_remove(func: Callable[..., Any], path: str, _exc: Any) -> None:
    # A child may leave folders without write permission: make them writable and retry once.
    try:
        os.chmod(os.path.dirname(path), 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


_SHARED: contextvars.ContextVar[Sandbox | None] = contextvars.ContextVar("graphopt_shared_sandbox", default=None)


_PRESTARTED: list[Sandbox] = []


def prestart() -> None:
    """Start a sandboxed child now, for the next :func:`shared_sandbox` to adopt.

    The child imports TensorFlow while this process does something else (the CLI calls this before it
    imports TensorFlow itself, for commands that will run a model's graph): the two imports overlap.
    A child nobody adopts is stopped when this process exits.
    """
    limits = default_limits()
    if any(b.limits == limits and b.alive for b in _PRESTARTED) or not limits.confined:
        return
    _close_prestarted()  # one with other limits (an earlier run's flags) would never be adopted
    box = Sandbox(limits)
    try:
        box.start()
    except GraphoptError:
        box.close()
        return  # the shared sandbox will start (and report) its own
    _PRESTARTED.append(box)
    atexit.register(_close_prestarted)


def _close_prestarted() -> None:
    while _PRESTARTED:
        _PRESTARTED.pop().close()


def worker_confinement(scratch: str | os.PathLike, model_bytes: int = 0) -> dict[str, Any] | None:
    """What a worker process of graphopt's own applies to itself before it opens a model (``None`` when the
    sandbox is off): the address-space and file-size limits and the write confinement of a sandboxed child,
    writes allowed only beneath ``scratch``. For workers that must own their process to be timed fairly
    (``bench --target``, ``tune``'s heats): they call :func:`graphopt.security._child.confine` with it
    first thing, then load the runtime and the model. The parent keeps its own deadlines."""
    lim = default_limits(model_bytes)
    if not lim.confined:
        return None
    return {"parent_pid": os.getpid(), "memory_bytes": lim.memory_bytes, "file_bytes": lim.file_bytes or lim.memory_bytes,
            "write_paths": [str(scratch)], "read_paths": None, "fs_method": lim.fs_method,
            "require_fs": lim.mode == "require"}


def confine_worker(config: Mapping[str, Any] | None) -> str | None:
    """The worker's side of :func:`worker_confinement`: confine this process; an error text if it must not go on."""
    if not config:
        return None
    report = _child.confine(dict(config))
    return report.get("fatal")


@contextlib.contextmanager
def shared_sandbox(limits: Limits | None = None, *, start: bool = True,
                   preload: Iterable[str] = ("tensorflow",)) -> Iterator[Sandbox]:
    """Within the block, :func:`sandbox_for` lends this one sandbox (its child) instead of starting new ones.

    One run of ``graphopt optimize`` executes its model's graph several times (the original's reference
    run, constant folding, Grappler, the optimized model's run): one child serves them all, so TensorFlow
    is imported once rather than four times. Every call still gets its own CPU and wall-clock limits, and
    a child a call ended is replaced for the next. The calls all run graphs of the same model.
    ``start`` starts the child at once (a child :func:`prestart` started is adopted instead).
    """
    limits = limits or default_limits()
    preload = list(preload)
    adopted = [b for b in _PRESTARTED if b.limits == limits and b.alive and b.preload == preload]
    if adopted:
        _PRESTARTED.remove(adopted[0])
        box = adopted[0]
    else:
        box = Sandbox(limits, label="the model's graph", preload=preload)
        if start:  # its TensorFlow import overlaps with what the caller does first (loading the model)
            box.start()
    token = _SHARED.set(box)
    try:
        yield box
    finally:
        _SHARED.reset(token)
        box.close()


def with_shared_sandbox(fn: Callable[..., Any] | None = None, *, start: bool = True) -> Any:
    """Decorate a function so its calls run inside :func:`shared_sandbox` (unless one is active already).

    ``@with_shared_sandbox(start=False)`` starts the child only when a call first needs it.
    """
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if _SHARED.get() is not None:
                return fn(*args, **kwargs)
            with shared_sandbox(start=start):
                return fn(*args, **kwargs)
        return wrapper
    return decorate(fn) if fn is not None else decorate


@contextlib.contextmanager
def sandbox_for(model_bytes: int = 0, *, label: str, env: Mapping[str, str] | None = None,
                **limit_overrides: Any) -> Iterator[Sandbox]:
    """A sandbox to run a graph of ``model_bytes`` in: the shared one (:func:`shared_sandbox`) when it fits,
    else a fresh one closed at the end of the block. ``label`` names the graph in errors; ``limit_overrides``
    (e.g. ``wall_seconds``) go to :func:`default_limits`. Its folder is emptied at the end of the block."""
    limits = default_limits(model_bytes, **limit_overrides)
    box = _SHARED.get()
    if box is None or not _fits(box, limits, dict(env or {})):
        with Sandbox(limits, label=label, env=env) as fresh:
            yield fresh
        return
    saved = box.label, box.limits
    box.label = label
    box.limits = box.limits.replace(cpu_seconds=limits.cpu_seconds, wall_seconds=limits.wall_seconds,
                                    file_bytes=limits.file_bytes)
    try:
        yield box
    finally:
        box.label, box.limits = saved
        box.clear()


def _fits(box: Sandbox, limits: Limits, env: dict[str, str]) -> bool:
    have, need = box.limits, limits
    memory_ok = have.memory_bytes == need.memory_bytes or (
        have.memory_bytes is not None and need.memory_bytes is not None and have.memory_bytes >= need.memory_bytes)
    return (box.env == env and have.mode == need.mode and have.fs_method == need.fs_method
            and have.read_paths == need.read_paths and memory_ok)


def run_confined(fn: str | Callable[..., Any], *args: Any, limits: Limits | None = None,
                 kwargs: Mapping[str, Any] | None = None, label: str = "the model's graph",
                 preload: Iterable[str] = ("tensorflow",), timeout: float | None = None) -> Any:
    """Run ``fn(*args, **kwargs)`` once in a fresh confined child and return its result.

    ``fn`` is a module-level function of an importable module (or ``"package.module:function"``);
    arguments are pickled, the result must be plain data or numpy arrays. Raises
    :class:`ResourceError` when a limit is hit or the child crashes (the message names which, and
    ``label``), the :class:`GraphoptError` ``fn`` raised, or :class:`ChildError` for any other exception.
    """
    with Sandbox(limits, label=label, preload=preload) as box:
        return box.call(fn, *args, kwargs=kwargs, timeout=timeout)


class ConfinedWorker:
    """A persistent confined child serving ``run(feeds) -> outputs`` calls: what ``serve`` runs models in.

    ``factory(*factory_args)`` runs once in the child and returns a callable
    ``run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]`` (for example: load the model, open a
    session, return its ``run``). ``factory`` must be a module-level function of an importable module
    (or ``"package.module:function"``); its arguments are pickled.

    :meth:`run` sends the feeds, waits at most ``timeout`` seconds (default: ``limits.wall_seconds``)
    and returns the outputs. Memory and file-size limits hold for the child's life, the CPU-time
    limit for each call. When a call hits a limit, crashes the child (an ``Abort`` op, a segfault) or
    makes it write outside its folder, :meth:`run` raises :class:`ResourceError` (exit code 8, its
    ``limit`` says which), and the next call starts a fresh child (``restarts`` counts them). Errors
    the factory or ``run`` raise come back as the same :class:`GraphoptError` class, others as
    :class:`ChildError` (with ``exc_type``); the child keeps running after those.

    One call at a time (calls from several threads wait for each other); run several workers for
    concurrency. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, factory: str | Callable[..., Any], *factory_args: Any, limits: Limits | None = None,
                 label: str = "the model", preload: Iterable[str] = ("tensorflow",),
                 start_timeout: float | None = None) -> None:
        self.factory = function_ref(factory)
        self.factory_args = factory_args
        self.limits = limits or default_limits()
        self.label = label
        self.preload = list(preload)
        self.start_timeout = start_timeout
        self.restarts = 0
        self._box: Sandbox | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The child's process id (None when none runs)."""
        box = self._box
        return box._proc.pid if box is not None and box.alive and box._proc is not None else None

    @property
    def confinement(self) -> str:
        """How the current (or last) child is confined, in one line."""
        box = self._box
        return describe_confinement(box.report if box else None, self.limits)

    def notes(self) -> list[str]:
        box = self._box
        return confinement_notes(box.report if box else None, self.limits, self.label)

    def start(self) -> None:
        """Start the child and run the factory now (otherwise the first :meth:`run` does)."""
        with self._lock:
            self._ensure()

    def _ensure(self) -> Sandbox:
        if self._closed:
            raise RuntimeError("the worker is closed")
        box = self._box
        if box is not None and (box.alive or not self.limits.confined):
            return box
        if box is not None:
            box.close()
            self.restarts += 1
        self._box = box = Sandbox(self.limits, label=self.label, preload=self.preload)
        try:
            box.call(self.factory, *self.factory_args, keep=True, timeout=self.start_timeout)
        except BaseException:
            self._box = None
            box.close()
            raise
        return box

    def run(self, feeds: Mapping[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """``run(feeds)`` in the child: its outputs, or :class:`ResourceError` (and a fresh child next time)."""
        with self._lock:
            box = self._ensure()
            try:
                return box.call_kept(dict(feeds), timeout=timeout)
            except ResourceError:
                box.kill()  # gone already, or a refused write left it in an unknown state
                raise

    def close(self) -> None:
        """Stop the child; :meth:`run` afterwards raises."""
        with self._lock:
            self._closed = True
            if self._box is not None:
                self._box.close()
                self._box = None

    def __enter__(self) -> "ConfinedWorker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
