"""The confined child process of :mod:`graphopt.security.sandbox`: confine itself, then answer calls.

Started as a fresh interpreter (``python .../_child.py FD CONFIG``, never a fork of a process that
has TensorFlow's threads). Before anything of a model arrives it

1. turns core dumps off and sets its resource limits: address space (``RLIMIT_AS``), file size (``RLIMIT_FSIZE``); the CPU-time
   limit (``RLIMIT_CPU``) is set before each call, relative to what the process has used so far;
2. confines writes to its own folder: Landlock (ABI >= 1; with ABI >= 4 also no TCP bind/connect, with
   ABI >= 6 no signals to, nor abstract sockets of, processes outside the sandbox); where Landlock is
   missing, a user + mount namespace in which every mount is read-only except the folder; where both
   are missing it runs unconfined for writes and says so in its report;
3. drops every capability (a root parent must not hand a model root's powers) and sets
   ``no_new_privs``.

Then it reports what it did (``ready``), starts a thread that ends it when its parent process ends,
imports the modules to preload (TensorFlow) and serves calls from its parent on the socket. Only this module and the standard library are imported before
the confinement is in place. Frames are an 8-byte length and a pickle; the parent unpickles the
child's answers with an allowlist (:func:`graphopt.security.sandbox.loads_answer`), since the child
runs a stranger's graph.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import pickle
import resource
import socket
import struct
import sys
import threading
import time
import traceback
from typing import Any

_HEADER = struct.Struct("!Q")

# --- framing (shared with the parent) -------------------------------------------------------------


def send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_HEADER.pack(len(payload)))
    sock.sendall(payload)


def recv_exactly(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("the other side closed the connection")
        got += k
    return buf


def recv_frame(sock: socket.socket, max_bytes: int | None = None) -> bytearray:
    (n,) = _HEADER.unpack(recv_exactly(sock, _HEADER.size))
    if max_bytes is not None and n > max_bytes:
        raise ValueError(f"message of {n} bytes exceeds the {max_bytes} allowed")
    return recv_exactly(sock, n)


# --- Landlock (include/uapi/linux/landlock.h) -------------------------------------------------------

_SYS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}  # create_ruleset, add_rule, restrict_self
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_REMOVE_DIR, FS_REMOVE_FILE, FS_MAKE_CHAR, FS_MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
FS_MAKE_REG, FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK, FS_MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
_WRITE_V1 = (FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_CHAR | FS_MAKE_DIR | FS_MAKE_REG
             | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_BLOCK | FS_MAKE_SYM)
_READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
_PR_SET_NO_NEW_PRIVS, _PR_CAPBSET_DROP = 38, 24


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing or disabled (or not Linux x86-64/arm64)."""
    import platform

    numbers = _SYS.get(platform.machine())
    if numbers is None or not sys.platform.startswith("linux"):
        return 0
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(ctypes.c_long(numbers[0]), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(abi), 0)


def _landlock(write_paths: list[str], read_paths: list[str] | None, abi: int) -> dict[str, Any]:
    """Restrict this process (and its future children) with Landlock: writes only beneath ``write_paths``.

    ``read_paths`` None leaves reading and executing alone; a list confines them too.
    """
    import platform

    create, add_rule, restrict = _SYS[platform.machine()]
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    fs = _WRITE_V1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0) | (FS_IOCTL_DEV if abi >= 5 else 0)
    write_rights = fs
    if read_paths is not None:
        fs |= _READ
    attr = _RulesetAttr(fs, (NET_BIND_TCP | NET_CONNECT_TCP) if abi >= 4 else 0,
                        (SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(ctypes.c_long(create), ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset: " + os.strerror(ctypes.get_errno()))
    dir_only = FS_READ_DIR | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_CHAR | FS_MAKE_DIR | FS_MAKE_REG | \
        FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_BLOCK | FS_MAKE_SYM | FS_REFER
    try:
        rules: list[tuple[str, int]] = [(p, write_rights | (_READ if read_paths is not None else 0))
                                        for p in write_paths]
        rules += [(p, _READ) for p in read_paths or []]
        rules.append(("/dev/null", (FS_WRITE_FILE | FS_TRUNCATE | FS_IOCTL_DEV | FS_READ_FILE) & fs))
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a read root that does not exist on this system
            try:
                if not os.path.isdir(path):
                    rights &= ~dir_only
                rule = _PathBeneath(rights & fs, fd)
                if libc.syscall(ctypes.c_long(add_rule), ctypes.c_int(ruleset), ctypes.c_int(1),
                                ctypes.byref(rule), ctypes.c_uint32(0)) < 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}: " + os.strerror(ctypes.get_errno()))
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(NO_NEW_PRIVS)")
        if libc.syscall(ctypes.c_long(restrict), ctypes.c_int(ruleset), ctypes.c_uint32(0)) < 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self: " + os.strerror(ctypes.get_errno()))
    finally:
        os.close(ruleset)
    return {"landlock_abi": abi, "tcp_blocked": abi >= 4, "signals_scoped": abi >= 6,
            "reads_confined": read_paths is not None}


# --- mount-namespace fallback -------------------------------------------------------------------------

_CLONE_NEWNS, _CLONE_NEWUSER = 0x00020000, 0x10000000
_MS_BIND, _MS_REC, _MS_PRIVATE = 0x1000, 0x4000, 1 << 18
_AT_RECURSIVE, _MOUNT_ATTR_RDONLY = 0x8000, 0x1
_SYS_MOUNT_SETATTR = 442  # same number on x86-64 and arm64


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _namespace(write_paths: list[str]) -> dict[str, Any]:
    """A private mount namespace (in a new user namespace) where every mount is read-only but ``write_paths``."""
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(user, mount): " + os.strerror(ctypes.get_errno()))
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    if libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount(private): " + os.strerror(ctypes.get_errno()))
    for path in write_paths:  # each becomes a mount of its own, so it can stay writable below
        p = path.encode()
        if libc.mount(p, p, None, _MS_BIND | _MS_REC, None) != 0:
            raise OSError(ctypes.get_errno(), f"bind {path}: " + os.strerror(ctypes.get_errno()))
    libc.syscall.restype = ctypes.c_long

    def setattr_(path: str, set_: int, clr: int) -> None:
        attr = _MountAttr(set_, clr, 0, 0)
        if libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(-100), path.encode(),
                        ctypes.c_uint(_AT_RECURSIVE), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))) != 0:
            raise OSError(ctypes.get_errno(), f"mount_setattr {path}: " + os.strerror(ctypes.get_errno()))

    setattr_("/", _MOUNT_ATTR_RDONLY, 0)
    for path in write_paths:
        setattr_(path, 0, _MOUNT_ATTR_RDONLY)
    return {"namespace": True}


# --- capabilities -------------------------------------------------------------------------------------


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> bool:
    """Empty the bounding, effective, permitted and inheritable sets (a no-op for an ordinary user)."""
    libc = _libc()
    for cap in range(64):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == 22:  # EINVAL: past the last
            break
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
    return libc.capset(ctypes.byref(header), data) == 0


# --- confinement ---------------------------------------------------------------------------------------


def confine(config: dict[str, Any]) -> dict[str, Any]:
    """Apply the limits and confinement ``config`` asks for; return what was applied (the ``ready`` report)."""
    libc = _libc()
    report: dict[str, Any] = {"pid": os.getpid(), "kernel": os.uname().release, "fs": "none", "notes": []}
    if os.getppid() != config["parent_pid"]:  # the parent died already
        os._exit(70)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # an abort must not leave a core file anywhere
    for which, key in ((resource.RLIMIT_AS, "memory_bytes"), (resource.RLIMIT_FSIZE, "file_bytes")):
        if config.get(key):
            hard = resource.getrlimit(which)[1]
            value = config[key] if hard == resource.RLIM_INFINITY else min(config[key], hard)
            resource.setrlimit(which, (value, value))
    method = config.get("fs_method", "auto")
    writable = list(config["write_paths"])
    if method in ("auto", "namespace") and not sys.platform.startswith("linux"):
        method = "none"  # neither Landlock nor namespaces outside Linux
        report["notes"].append(f"{sys.platform} has neither Landlock nor Linux namespaces")
    if method in ("auto", "landlock"):
        abi = landlock_abi()
        if abi > 0:
            report.update(_landlock(writable, config.get("read_paths"), abi))
            report["fs"] = "landlock"
        else:
            report["notes"].append(f"Landlock is not available (kernel {os.uname().release})")
    if report["fs"] == "none" and method in ("auto", "namespace"):
        try:
            report.update(_namespace(writable))
            report["fs"] = "namespace"
        except OSError as exc:
            report["notes"].append(f"no user/mount namespace either ({exc.strerror or exc})")
    if report["fs"] == "none" and config.get("require_fs"):
        report["fatal"] = ("writes cannot be confined on this system: " + "; ".join(report["notes"]))
        return report
    linux = sys.platform.startswith("linux")
    report["capabilities_dropped"] = _drop_capabilities() if linux else False
    if linux and report["fs"] != "landlock":  # Landlock set it already; it keeps setuid binaries from granting privileges
        libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    report["memory_bytes"] = resource.getrlimit(resource.RLIMIT_AS)[0]
    return report


# --- serving calls -------------------------------------------------------------------------------------


def _cpu_used() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _set_cpu_budget(seconds: float | None) -> None:
    # Relative to what this process used so far (TensorFlow's import, earlier calls): each call gets its own budget.
    # The soft limit sends SIGXCPU, which kills the process (nothing here handles it).
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    soft = int(_cpu_used() + seconds + 0.999) if seconds else hard
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def resolve(ref: str) -> Any:
    """``"package.module:function"`` -> the function."""
    module, _, name = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


_FS_CONFINED = False
_LABEL = "the model's graph"
_MEMORY: int | None = None
_SOCK: socket.socket | None = None  # set while serving: this process is a confined child
_REPORT: dict[str, Any] | None = None  # its ``ready`` report: how it is confined


def confined_here() -> bool:
    """Whether this process is a confined child serving calls (then a sandbox asked for here runs inline)."""
    return _SOCK is not None


def notify(event: Any) -> None:
    """Send ``event`` (plain data) to the parent while a call runs: progress, or the limits of an inline call."""
    if _SOCK is not None:
        send_frame(_SOCK, pickle.dumps(("event", event), protocol=5))


def call_inline(fn: Any, args: tuple, kwargs: dict[str, Any], *, cpu: float | None, wall: float | None,
                label: str) -> Any:
    """Run a sandbox call in this (already confined) child: ``cpu`` seconds of CPU from now, and the parent
    told to allow ``wall`` seconds for it and to name ``label`` and these limits if it ends the process.

    What a whole ``optimize`` run in one child does for each execution of the model's graph, so that every
    execution keeps its own limits without a second TensorFlow runtime."""
    global _LABEL
    saved_cpu, saved_label = resource.getrlimit(resource.RLIMIT_CPU), _LABEL
    notify(("limits", label, wall, cpu))
    _LABEL = label
    try:
        _set_cpu_budget(cpu)
        return fn(*args, **kwargs)
    finally:
        resource.setrlimit(resource.RLIMIT_CPU, saved_cpu)
        _LABEL = saved_label
        notify(("limits", None, None, None))


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """An exception as plain data the parent can rebuild without unpickling anything of the child's."""
    from graphopt.security.limits import classify_exception

    resource_error = classify_exception(exc, fs_confined=_FS_CONFINED, label=_LABEL, memory_bytes=_MEMORY)
    if resource_error is not None:
        exc = resource_error
    try:
        from graphopt.errors import GraphoptError
    except ImportError:  # pragma: no cover
        GraphoptError = ()  # type: ignore[assignment,misc]  # noqa: N806
    if isinstance(exc, GraphoptError):
        return {"kind": "graphopt", "class": type(exc).__name__,
                "fields": {"message": exc.message, "where": exc.where, "hint": exc.hint, "code": int(exc.code),
                           "details": [str(d) for d in exc.details], "limit": getattr(exc, "limit", "")}}
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return {"kind": "exception", "class": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "message": (getattr(exc, "message", None) or str(exc))[:4000], "traceback": "".join(tb)[-4000:]}


def _release() -> None:
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def serve(sock: socket.socket, preload: list[str]) -> None:
    """Answer ``("call", ref, args, kwargs, cpu_seconds, keep, label)`` and ``("kept", args, cpu_seconds)`` until EOF.

    While a call runs, it may send ``("event", ...)`` frames (:func:`notify`) before its answer."""
    global _LABEL, _SOCK
    _SOCK = sock
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the call that needs it will say so
            pass
    kept: Any = None
    result: Any = None
    while True:
        try:
            request = pickle.loads(recv_frame(sock))
        except EOFError:
            return
        kind = request[0]
        if kind == "exit":
            return
        try:
            if kind == "call":
                _, ref, args, kwargs, cpu, keep, label = request
                _LABEL = label or _LABEL  # what this call's errors name (a shared child serves several)
                fn = resolve(ref)
                send_frame(sock, pickle.dumps(("started",)))
                _set_cpu_budget(cpu)
                result = fn(*args, **kwargs)
                if keep:
                    kept, result = result, None
            else:  # "kept": call what a previous call kept (a worker's run function)
                _, args, cpu = request
                if kept is None:
                    raise RuntimeError("nothing kept to call")
                send_frame(sock, pickle.dumps(("started",)))
                _set_cpu_budget(cpu)
                result = kept(*args)
            _set_cpu_budget(None)
            answer = pickle.dumps(("ok", result), protocol=5)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent as data
            _set_cpu_budget(None)
            answer = pickle.dumps(("error", describe_exception(exc)), protocol=5)
        send_frame(sock, answer)
        del answer
        request = result = None
        if kind == "call":  # a shared child idles between calls: give back what the call freed (not per request)
            _release()


def main(argv: list[str]) -> int:
    """Confine this process, then serve calls (run as a script: ``python _child.py FD CONFIG``)."""
    fd, config = int(argv[1]), json.loads(argv[2])
    sock = socket.socket(fileno=fd)
    report = confine(config)
    sys.path[:] = config["sys_path"]
    send_frame(sock, pickle.dumps(("ready", report)))
    if report.get("fatal"):
        return 71
    # From here on, the importable module (graphopt.security._child), not this __main__ copy: the sandbox's
    # helpers read the state below from it.
    from graphopt.security import _child as module

    return module.serve_confined(sock, config, report)


def _watch_parent(parent_pid: int) -> None:
    # Not PR_SET_PDEATHSIG: Linux sends that when the *thread* that started the child ends, and a server starts
    # workers from request threads. The parent process ending reparents this one: then it ends too.
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(70)


def serve_confined(sock: socket.socket, config: dict[str, Any], report: dict[str, Any]) -> int:
    global _FS_CONFINED, _LABEL, _MEMORY, _REPORT
    _FS_CONFINED = report["fs"] != "none"
    _REPORT = dict(report)
    _LABEL, _MEMORY = config.get("label") or _LABEL, config.get("memory_bytes")
    threading.Thread(target=_watch_parent, args=(config["parent_pid"],), name="graphopt-watch-parent",
                     daemon=True).start()
    serve(sock, list(config.get("preload", [])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
