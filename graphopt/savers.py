"""Write a :class:`~graphopt.model.Model`: a SavedModel TF Serving loads as it is, or a frozen ``.pb``/``.pbtxt``.

The SavedModel is written with ``tf.compat.v1.saved_model.Builder``: the frozen
GraphDef imported into a fresh graph, tag ``serve``, one signature with the
model's original keys, dtypes and shapes (method ``tensorflow/serving/predict``),
the init ops grouped as the main op (TF Serving runs it at load), assets copied.
The graph the Builder sees is the model's skeleton (big constants without their
values: it only needs structure, shapes and signatures); the constants' values
are put back while ``saved_model.pb`` is streamed to disk one node at a time, so
a 100 MB model is never imported, copied or serialised whole (the file is byte
for byte what the Builder writes for the full graph).

Every output goes through :class:`Outputs`, one transaction for all the paths a
run writes (``-o``, ``--serving-dir``, ``--report``):

- **checked first**, before anything is loaded or run: an existing path is
  replaced only with ``force`` and only when it is a previous output of the
  same kind (a SavedModel folder, a serving version, a ``.pb``/``.pbtxt`` file,
  a JSON report) -- never a device, FIFO, socket, symbolic link, a folder that
  holds no model, the current folder or one above it; the nearest existing
  folder must accept new files; no output may lie inside the input or another
  output;
- **reserved**: a lock file beside the destination (``flock``, released by the
  kernel if the process dies) makes a second run writing the same path fail at
  once with an :class:`OutputError`;
- **staged**: each output is written completely to a temporary sibling, with
  the modes the umask gives (files ``0666 & ~umask``, folders ``0777 & ~umask``);
- **committed** together: renamed into place only when every output is staged,
  with a rename that fails if the destination appeared meanwhile; a failed
  commit puts back what it replaced. On any error, ``KeyboardInterrupt`` or
  SIGTERM (the CLI turns it into one) the temporaries, locks and the folders
  created for the outputs are removed: nothing is left behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from graphopt.errors import GraphoptError, OutputError
from graphopt.graph.encoding import length_delimited
from graphopt.model import Model, node_name

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locks, the no-replace commit still guards
    fcntl = None  # type: ignore[assignment]

SaveFormat = Literal["saved_model", "pb", "pbtxt"]
SAVE_FORMATS: tuple[SaveFormat, ...] = get_args(SaveFormat)
# What an output is, for the replace rules: a saved_model / serving_version is a folder, the rest files.
OUTPUT_KINDS = ("saved_model", "pb", "pbtxt", "serving_version", "report")
_FOLDER_KINDS = ("saved_model", "serving_version")
_MAX_REPORT_BYTES = 64 << 20  # a JSON report bigger than this is not one graphopt wrote
LOCK_SUFFIX = ".graphopt-lock"


def format_for(path: str | os.PathLike, given: str | None = None) -> str:
    """``given``, else ``pb``/``pbtxt`` from the extension, else ``saved_model``."""
    if given:
        if given not in SAVE_FORMATS:
            raise OutputError(f"unknown output format '{given}'", hint=f"use one of {', '.join(SAVE_FORMATS)}")
        return given
    suffix = Path(path).suffix.lower()
    return {".pb": "pb", ".pbtxt": "pbtxt"}.get(suffix, "saved_model")


def refuse_input_overlap(model: Model, dest: Path) -> None:
    """:class:`OutputError` if writing ``dest`` (file or folder) would write into or over the model's source."""
    refuse_source_overlap(model.source, dest)


def refuse_source_overlap(src: str | os.PathLike | None, dest: Path) -> None:
    """:class:`OutputError` if writing ``dest`` would write into or over ``src`` (a model's path)."""
    dest = Path(dest).resolve()  # resolved like the source: a symlink must not lead into the input
    src = str(src) if src is not None else ""
    if src and "://" not in src and src != "<memory>":
        source = Path(src).resolve()
        source_dir = source if source.is_dir() else None
        if source == dest or (source_dir is not None and (source_dir == dest or source_dir in dest.parents)):
            raise OutputError("the output would be written inside the input model", where=str(dest),
                              hint="choose an output path outside the model's folder; graphopt never writes to its input")
        if dest in source.parents:
            raise OutputError("the output would replace a folder holding the input model", where=str(dest),
                              hint="choose another output path")


def current_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` sets it: racy with other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # pragma: no cover - kernels before 4.7 / not Linux
    os.umask(mask)
    return mask


def disk_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of a file, or of every regular file under a folder (links not followed); 0 if missing."""
    path = Path(path)
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    except OSError:  # gone while measured
        return 0


def follow_umask(path: Path) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the modes a plain ``open``/``mkdir`` would.

    Temporary files are created ``0600`` and TensorFlow creates folders ``0755`` whatever the umask, and
    ``shutil.copy2`` copies an asset's own mode: a server running as another user must read what the
    umask allows, no less and no more. Symbolic links are left alone (``chmod`` would follow them).
    """
    mask = current_umask()
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    if path.is_symlink():
        return
    if not path.is_dir():
        os.chmod(path, file_mode)
        return
    os.chmod(path, dir_mode)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                os.chmod(p, dir_mode if name in dirs else file_mode)


def _kind_of_file(st: os.stat_result) -> str | None:
    """What a path is when it is neither a regular file nor a folder (never replaced), else ``None``."""
    for test, what in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(st.st_mode):
            return what
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return "not a regular file"  # pragma: no cover - doors, whiteouts
    return None


def is_saved_model_dir(path: Path) -> bool:
    return (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()


def _is_report(path: Path, size: int) -> bool:
    if size == 0:
        return True
    if size > _MAX_REPORT_BYTES:
        return False
    try:
        return isinstance(json.loads(path.read_bytes()), dict)
    except (OSError, ValueError, RecursionError):
        return False


# A binary GraphDef starts with its first field and that field's first: node (1) -> its name (1);
# library (2) -> a function (1) or gradient (2); versions (4) -> producer (1, a varint).
_GRAPH_DEF_STARTS = {0x0A: (0x0A,), 0x12: (0x0A, 0x12), 0x22: (0x08,)}
_GRAPH_DEF_TEXT_FIELDS = (b"node", b"library", b"versions", b"version")


_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._")


def _skip_varint(data: bytes, i: int) -> int:
    """The index after the varint starting at ``data[i]``."""
    while i < len(data) and data[i] & 0x80:
        i += 1
    return i + 1


def _looks_like_graph_def(path: Path, kind: str) -> bool:
    """Whether ``path`` starts like a GraphDef in ``kind``'s encoding: what ``--format pb -o model`` wrote
    before (no extension) may be replaced; a text, an image or a program may not."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    if kind == "pb":
        if len(head) < 3 or head[0] not in _GRAPH_DEF_STARTS:
            return False
        i = _skip_varint(head, 1)  # the field's length
        if i >= len(head) or head[i] not in _GRAPH_DEF_STARTS[head[0]]:
            return False
        if head[0] != 0x0A:
            return True
        j = _skip_varint(head, i + 1)  # a node's name: its length, then a character a node name starts with
        return j < len(head) and head[i + 1] > 0 and chr(head[j]) in _NAME_START
    text = b"\n".join(line for line in head.lstrip().splitlines() if not line.lstrip().startswith(b"#")).lstrip()
    return text.startswith(_GRAPH_DEF_TEXT_FIELDS)


def not_replaceable(path: Path, st: os.stat_result, kind: str) -> str | None:
    """Why the existing ``path`` (``lstat`` result ``st``) is not a previous output of ``kind``; ``None`` if it is."""
    special = _kind_of_file(st)
    if special:
        return f"it is {special}"
    is_dir = stat.S_ISDIR(st.st_mode)
    if kind in _FOLDER_KINDS:
        if not is_dir:
            return "it is a file, not a SavedModel folder"
        try:
            empty = next(os.scandir(path), None) is None
        except OSError as exc:
            return f"it cannot be listed ({exc.strerror})"
        # A version another runtime target wrote carries graphopt's manifest (graphopt.targets.base.MANIFEST_FILE).
        if not empty and not is_saved_model_dir(path) and not (path / "graphopt-target.json").is_file():
            return "it is a folder that holds no SavedModel"
        return None
    if is_dir:
        return "it is a folder, not a file"
    if kind in ("pb", "pbtxt"):
        if path.suffix.lower() in (".pb", ".pbtxt") or not st.st_size or _looks_like_graph_def(path, kind):
            return None
        return f"it is a file graphopt did not write (not .pb/.pbtxt, and not a {'text ' * (kind == 'pbtxt')}GraphDef)"
    if not _is_report(path, st.st_size):
        return "it is a file that is not a JSON report"
    return None


_REPLACES = ("graphopt replaces (with --force) only a previous output of the same kind: a SavedModel folder, a "
             "serving version, a .pb/.pbtxt file, a JSON report")


class OutputBusy(OutputError):
    """Another process holds the lock on this output (a concurrent graphopt run writing the same path)."""


@dataclass(eq=False)
class Output:
    """One path a run will write; made by :meth:`Outputs.add`, which checked and reserved it."""

    path: Path  # absolute and normalised, as the user named it (symbolic links in its folders kept)
    kind: str  # one of OUTPUT_KINDS
    flag: str = "-o"  # how the user named it, for messages
    replaces: bool = False  # a previous output of the same kind is there and will be replaced (force)
    anchor: Path | None = None  # the nearest existing folder of ``path`` (missing ones are made when staging)
    lock: Path | None = None
    _lock_fd: int | None = None
    staged: Path | None = None  # the complete new content, a temporary sibling of ``path``
    _scratch: Path | None = None  # what to remove when done (the temporary folder around ``staged``, or it)
    _old: Path | None = None  # the previous output, moved aside while committing
    _committed: bool = False

    @property
    def is_dir(self) -> bool:
        return self.kind in _FOLDER_KINDS


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _refuse_current_folder(dest: Path, flag: str) -> None:
    try:
        cwd = _real(Path.cwd())
    except OSError:  # the current folder was removed: nothing to protect
        return
    real = _real(dest)
    if real == cwd or real in cwd.parents:
        what = "the current folder" if real == cwd else "a folder holding the current folder"
        raise OutputError(f"refusing to write {flag} over {what}", where=str(dest),
                          hint="graphopt never replaces the folder it runs in or one above it; "
                               "give a new path, e.g. ./optimized")


def _nearest_existing(path: Path) -> Path:
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    return existing


def _rename_noreplace(src: Path, dst: Path) -> None:
    """``rename(src, dst)`` that fails with ``FileExistsError`` when ``dst`` exists (``renameat2`` NOREPLACE)."""
    libc = _libc()
    if libc is not None:
        if libc.renameat2(-100, os.fsencode(src), -100, os.fsencode(dst), 1) == 0:  # AT_FDCWD, RENAME_NOREPLACE
            return
        err = _get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # the file system lacks the flag: fall back
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    if os.path.isdir(src):
        os.rename(src, dst)  # onto a folder that appeared since: fails unless it is empty
        return
    try:
        os.link(src, dst)  # fails if dst appeared since
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise
        os.rename(src, dst)  # no hard links here (FAT, some FUSE): the lexists check above is all there is
        return
    os.unlink(src)


_LIBC: list[Any] = []


def _libc() -> Any:
    if not _LIBC:
        try:
            import ctypes

            lib = ctypes.CDLL(None, use_errno=True)
            lib.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            _LIBC.append(lib)
        except (OSError, AttributeError):  # musl before 1.2.3, not Linux
            _LIBC.append(None)
    return _LIBC[0]


def _get_errno() -> int:
    import ctypes

    return ctypes.get_errno()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(eq=False)
class Outputs:
    """The outputs of one run: checked and reserved as they are added, staged, then committed together.

    Use it as a context manager; leaving it without :meth:`commit` (an error, an interrupt) removes
    every temporary, lock and folder it created, so a failed run leaves nothing behind::

        with Outputs(force=False, source=model.source) as outputs:
            out = outputs.add("model.pb", "pb")           # OutputError now, before any work
            outputs.stage(out, lambda tmp: write_model(model, tmp, "pb"))
            outputs.commit()
    """

    force: bool = False
    source: str | os.PathLike | None = None  # the input model's path, when known: no output may touch it
    items: list[Output] = field(default_factory=list)
    _made_folders: list[Path] = field(default_factory=list)
    _done: bool = False

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def add(self, path: str | os.PathLike, kind: str, *, flag: str = "-o", what: str = "the output",
            reserve: bool = True) -> Output:
        """Check ``path`` as an output of ``kind`` (and reserve it, unless ``reserve=False``: then
        :meth:`reserve` does, once :meth:`check_source` has run); :class:`OutputError` if it cannot be written."""
        if kind not in OUTPUT_KINDS:
            raise ValueError(f"unknown output kind {kind!r}")
        dest = Path(os.path.abspath(path))
        _refuse_current_folder(dest, flag)
        if self.source is not None:  # said first: it is the reason that matters most
            refuse_source_overlap(self.source, dest)
        try:
            st: os.stat_result | None = os.lstat(dest)
        except (FileNotFoundError, NotADirectoryError):
            st = None  # a parent that is a file is reported below
        except OSError as exc:
            raise OutputError(f"cannot look at {flag}: {exc.strerror}", where=str(dest)) from None
        out = Output(dest, kind, flag)
        if st is not None:
            why = not_replaceable(dest, st, kind)
            if why:
                raise OutputError(f"refusing to replace {flag}: {why}", where=str(dest),
                                  hint=f"{_REPLACES}; choose another path, or remove it yourself")
            if not self.force:
                raise OutputError(f"{what} already exists", where=str(dest), hint="pass --force to replace it")
            out.replaces = True
        anchor = _nearest_existing(dest.parent)
        if not anchor.is_dir():
            raise OutputError("the output path runs through a file, not a folder", where=str(anchor),
                              hint="choose an output path inside a folder")
        out.anchor = anchor
        for other in self.items:
            self._refuse_overlap(other, out)
        self.items.append(out)
        if reserve:
            self._lock(out)
        return out

    def reserve(self) -> None:
        """Lock every output not locked yet. The lock file is also the proof that the nearest existing
        folder accepts new files: checked now, not after the pipeline ran."""
        for out in self.items:
            if out._lock_fd is None:
                self._lock(out)

    @staticmethod
    def _refuse_overlap(a: Output, b: Output) -> None:
        ra, rb = _real(a.path), _real(b.path)
        if ra == rb:
            raise OutputError(f"{a.flag} and {b.flag} name the same path", where=str(b.path),
                              hint="give each output its own path")
        for outer, inner in ((a, b), (b, a)):
            if _real(outer.path) in _real(inner.path).parents:
                raise OutputError(f"{inner.flag} would be written inside {outer.flag}", where=str(inner.path),
                                  hint=f"{outer.flag} is replaced as a whole; write {inner.flag} elsewhere")

    def _lock(self, out: Output) -> None:
        assert out.anchor is not None
        # Every run writing this destination computes the same lock name (its real path's digest), in the
        # nearest folder that exists now, so the lock needs no folder this run would have to create.
        real = _real(out.anchor) / out.path.relative_to(out.anchor)
        digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:12]
        lock = out.anchor / f".{out.path.name[:80]}.{digest}{LOCK_SUFFIX}"
        for _attempt in range(5):
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            except OSError as exc:
                raise OutputError(f"cannot write to the output folder: {exc.strerror or exc}", where=str(out.anchor),
                                  hint="check the path and permissions; nothing was written") from None
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _read_pid(fd)
                    os.close(fd)
                    by = f"another graphopt run (pid {holder})" if holder else "another graphopt run"
                    raise OutputBusy(f"{by} is writing {out.flag} now", where=str(out.path),
                                     hint="wait for it to finish, or write to another path; nothing was written"
                                     ) from None
                except OSError:  # no flock on this file system: the no-replace commit is the guard left
                    pass
            try:
                same = os.fstat(fd).st_ino == os.stat(lock, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder removed the file between our open and our lock: lock the new one
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            out.lock, out._lock_fd = lock, fd
            return
        raise OutputBusy("the output's lock file keeps changing", where=str(lock),  # pragma: no cover
                         hint="another process is writing there; retry")

    def check_source(self, src: str | os.PathLike | None) -> None:
        """:class:`OutputError` if any output lies inside (or over) the model path ``src``: run it before
        :meth:`reserve`, whose lock file would otherwise be created inside the input for a moment."""
        for out in self.items:
            refuse_source_overlap(src, out.path)

    def check_input(self, model: Model) -> None:
        """:meth:`check_source` for a loaded model (its source may differ from the path given)."""
        self.check_source(model.source)

    def stage(self, out: Output, write: Callable[[Path], Any]) -> Path:
        """Write ``out`` completely to a temporary sibling: ``write(path)`` gets a folder path that does not
        exist yet (folder kinds) or an empty file. Returns the staged path."""
        self._make_folders(out.path.parent)
        name = f".{out.path.name[:80]}.{secrets.token_hex(4)}"
        try:
            if out.is_dir:
                out._scratch = out.path.parent / f"{name}.tmp"
                os.mkdir(out._scratch, 0o700)
                out.staged = out._scratch / "model"  # writers (the Builder) want a folder that does not exist yet
            else:
                out._scratch = out.staged = out.path.parent / f"{name}.tmp"
                os.close(os.open(out.staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            raise OutputError(f"cannot write next to {out.flag}: {exc.strerror or exc}", where=str(out.path.parent),
                              hint="check the path and permissions; nothing was written") from None
        try:
            write(out.staged)
            if not out.is_dir:
                with open(out.staged, "rb+") as f:  # on disk before the rename makes it visible
                    os.fsync(f.fileno())
            follow_umask(out.staged)
        except GraphoptError:
            raise
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            what = f"the {out.flag} report" if out.kind == "report" else "the model"
            raise OutputError(f"cannot write {what}: {reason}", where=str(out.path),
                              hint="nothing was written; rerun with --debug for details") from exc
        return out.staged

    def _make_folders(self, folder: Path) -> None:
        missing = []
        while not os.path.lexists(folder) and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        for f in reversed(missing):
            try:
                os.mkdir(f, 0o777)  # the umask applies
            except FileExistsError:
                continue
            except OSError as exc:
                raise OutputError(f"cannot create the output folder: {exc.strerror or exc}", where=str(f),
                                  hint="check the path and permissions; nothing was written") from None
            self._made_folders.append(f)

    def commit(self) -> list[Path]:
        """Move every staged output into place; on any failure put back what was there. Returns the paths."""
        staged = [o for o in self.items if o.staged is not None]
        try:
            for out in staged:
                self._commit_one(out)
        except BaseException as exc:
            for out in reversed(staged):
                self._undo(out)
            if isinstance(exc, FileExistsError) or (isinstance(exc, OSError) and exc.errno == errno.ENOTEMPTY):
                raise OutputError("the output appeared while graphopt was running", where=str(exc.filename),
                                  hint="another process wrote it; nothing was replaced or written") from None
            if isinstance(exc, OSError):
                raise OutputError(f"cannot move the output into place: {exc.strerror or exc}",
                                  where=str(exc.filename or ""), hint="nothing was written") from None
            raise
        for out in staged:
            if out._old is not None:
                _remove(out._old)
                out._old = None
        for folder in {o.path.parent for o in staged}:
            _fsync_dir(folder)
        self._done = True
        return [o.path for o in staged]

    def _commit_one(self, out: Output) -> None:
        assert out.staged is not None
        try:
            st = os.lstat(out.path)
        except FileNotFoundError:
            st = None
        if st is not None:
            why = not_replaceable(out.path, st, out.kind)
            if not out.replaces or why:
                raise FileExistsError(errno.EEXIST, "exists", str(out.path))
            old = out.path.parent / f".{out.path.name[:80]}.{secrets.token_hex(4)}.old"
            os.rename(out.path, old)
            out._old = old
        _rename_noreplace(out.staged, out.path)
        out._committed = True
        if not out.is_dir:
            out._scratch = None  # it was the staged file itself, now in place

    @staticmethod
    def _undo(out: Output) -> None:
        if out._committed:
            _remove(out.path)
            out._committed = False
        if out._old is not None:
            try:
                os.rename(out._old, out.path)
            except OSError:  # pragma: no cover - keep the old output under its hidden name rather than lose it
                return
            out._old = None

    def close(self) -> None:
        """Remove temporaries (and, without a commit, the folders made for the outputs); release the locks."""
        for out in self.items:
            if out._scratch is not None:
                _remove(out._scratch)
                out._scratch = None
        if not self._done:
            for folder in reversed(self._made_folders):
                try:
                    folder.rmdir()
                except OSError:
                    pass
        self._made_folders.clear()
        for out in self.items:
            if out._lock_fd is not None:
                # Unlink while still holding the lock: a run that opened this file meanwhile sees it gone.
                try:
                    if out.lock is not None and os.stat(out.lock, follow_symlinks=False).st_ino == os.fstat(
                            out._lock_fd).st_ino:
                        os.unlink(out.lock)
                except OSError:
                    pass
                os.close(out._lock_fd)
                out._lock_fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def write_model(model: Model, path: str | os.PathLike, fmt: str) -> Path:
    """Write ``model`` to ``path`` in ``fmt`` directly (no checks, not atomic): what :func:`save` stages."""
    if fmt == "saved_model":
        return write_saved_model(model, path)
    return write_graph_def(model, path, text=fmt == "pbtxt")


def _tensor_info(graph: Any, name: str) -> Any:
    import tensorflow as tf

    return tf.compat.v1.saved_model.utils.build_tensor_info(graph.get_tensor_by_name(name))


def write_saved_model(model: Model, directory: str | os.PathLike) -> Path:
    """Write ``model`` as a SavedModel into ``directory``, which must not exist (no atomicity, no checks).

    Reusable by anything that lays out its own folders (e.g. versioned serving layouts).
    """
    import tensorflow as tf
    from tensorflow.core.framework import tensor_shape_pb2

    from graphopt.graph.checks import skeleton
    from graphopt.graph.default_attrs import add_default_attrs

    directory = Path(directory)
    # tf.import_graph_def of the model's own GraphDef used to fill its default attrs in place; callers (the
    # byte count optimize prints) saw that, so it still happens, on the model, before the skeleton is taken.
    add_default_attrs(model.graph_def)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(skeleton(model.graph_def), name="")
        sig = model.signature
        inputs: dict[str, Any] = {}
        outputs: dict[str, Any] = {}
        for specs, infos in ((sig.inputs, inputs), (sig.outputs, outputs)):
            for key, spec in specs.items():
                info = _tensor_info(graph, spec.name)
                if spec.shape is not None and info.tensor_shape.unknown_rank:
                    # Keep the loaded signature's shape where the graph lost it (shape inference
                    # cannot see through some ops, e.g. function calls after a pass rewrote them).
                    info.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
                        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=-1 if d is None else d) for d in spec.shape]))
                infos[key] = info
        signature_def = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs=inputs, outputs=outputs, method_name=sig.method_name)
        main_op = None
        if model.init_ops:
            init = [graph.get_operation_by_name(node_name(n)) for n in model.init_ops]
            main_op = tf.group(*init, name="graphopt_main_op")
        with tf.compat.v1.Session(graph=graph) as sess:
            builder = tf.compat.v1.saved_model.Builder(str(directory))
            builder.add_meta_graph_and_variables(
                sess, [tf.saved_model.SERVING], signature_def_map={sig.key: signature_def},
                main_op=main_op, strip_default_attrs=False, clear_devices=True)
            builder.save()
    del graph, sess, builder
    _put_back_constants(directory / "saved_model.pb", model.graph_def)
    if model.assets:
        assets = directory / "assets"
        assets.mkdir(exist_ok=True)
        for name, src in model.assets.items():
            shutil.copy2(src, assets / name)
    return directory


def _put_back_constants(path: Path, graph_def: Any) -> None:
    """Rewrite the skeleton ``saved_model.pb`` at ``path`` with the constants' values from ``graph_def``.

    Written in pieces, in the order protobuf serialises fields (by number), so only one node is ever
    serialised at a time: SavedModel = schema_version (1), meta_graphs (2); MetaGraphDef = meta_info_def
    (1), graph_def (2), the rest (3..); GraphDef = node (1, repeated), then its other fields.
    """
    from tensorflow.core.framework import graph_pb2, node_def_pb2
    from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

    values = {n.name: n.attr["value"] for n in graph_def.node if n.op == "Const" and "value" in n.attr}
    saved = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    if len(saved.meta_graphs) != 1:  # the Builder wrote exactly one: anything else is not ours to rewrite
        raise OutputError(f"unexpected SavedModel layout ({len(saved.meta_graphs)} meta graphs)", where=str(path))
    meta = saved.meta_graphs[0]

    def full(node: Any) -> Any:
        value = values.get(node.name) if node.op == "Const" else None
        if value is None or value.tensor.ByteSize() == node.attr["value"].tensor.ByteSize():
            return node
        whole = node_def_pb2.NodeDef()
        whole.CopyFrom(node)  # the skeleton's node: small, its big value was left out
        whole.attr["value"].CopyFrom(value)
        return whole

    sizes = [full(node).ByteSize() for node in meta.graph_def.node]
    if sizes == [node.ByteSize() for node in meta.graph_def.node]:
        return  # no constant was big enough to be left out: the Builder's file is already complete
    rest = graph_pb2.GraphDef()
    rest.CopyFrom(meta.graph_def)
    del rest.node[:]
    graph_tail = rest.SerializeToString(deterministic=True)
    graph_size = sum(len(length_delimited(1, n)) + n for n in sizes) + len(graph_tail)
    head = meta_graph_pb2.MetaGraphDef()
    if meta.HasField("meta_info_def"):
        head.meta_info_def.CopyFrom(meta.meta_info_def)
    meta_head = head.SerializeToString(deterministic=True)
    tail = meta_graph_pb2.MetaGraphDef()
    tail.CopyFrom(meta)
    tail.ClearField("meta_info_def")
    tail.ClearField("graph_def")
    meta_tail = tail.SerializeToString(deterministic=True)
    meta_size = len(meta_head) + len(length_delimited(2, graph_size)) + graph_size + len(meta_tail)
    top = saved_model_pb2.SavedModel(saved_model_schema_version=saved.saved_model_schema_version)
    with open(path, "wb") as f:
        f.write(top.SerializeToString(deterministic=True))
        f.write(length_delimited(2, meta_size))
        f.write(meta_head)
        f.write(length_delimited(2, graph_size))
        for node, size in zip(meta.graph_def.node, sizes):
            piece = full(node).SerializeToString(deterministic=True)
            if len(piece) != size:  # never expected: the lengths already written would be wrong
                raise OutputError("node size changed while writing", where=f"{path}, node {node.name}")
            f.write(length_delimited(1, size))
            f.write(piece)
            del piece
        f.write(graph_tail)
        f.write(meta_tail)


def write_graph_def(model: Model, path: str | os.PathLike, *, text: bool = False) -> Path:
    """Write the frozen GraphDef (binary, or text format with ``text=True``)."""
    path = Path(path)
    if text:
        from google.protobuf import text_format

        path.write_text(text_format.MessageToString(model.graph_def))
    else:
        _stream_graph_def(model.graph_def, path)
    return path


def _stream_graph_def(graph_def: Any, path: Path) -> None:
    """``path.write_bytes(graph_def.SerializeToString())`` one node at a time (GraphDef: node = 1, library = 2,
    version = 3, versions = 4, serialised in that order): a whole 100 MB graph serialised at once costs 2.5x."""
    from tensorflow.core.framework import graph_pb2

    with open(path, "wb") as f:
        for node in graph_def.node:
            piece = node.SerializeToString()
            f.write(length_delimited(1, len(piece)))
            f.write(piece)
            del piece
        if graph_def.HasField("library"):
            library = graph_def.library.SerializeToString()
            f.write(length_delimited(2, len(library)))
            f.write(library)
            del library
        tail = graph_pb2.GraphDef(version=graph_def.version)
        if graph_def.HasField("versions"):
            tail.versions.CopyFrom(graph_def.versions)
        f.write(tail.SerializeToString())


def save(model: Model, path: str | os.PathLike, *, format: str | None = None, force: bool = False) -> Path:
    """Write ``model`` to ``path`` atomically as ``saved_model`` (default), ``pb`` or ``pbtxt``.

    The format defaults to the extension (``.pb``/``.pbtxt``) or a SavedModel
    folder. Raises :class:`OutputError` if ``path`` exists (unless ``force``, and
    then only a previous output of the same kind is replaced), lies inside the
    input model, is being written by another run, or cannot be written. Returns the path.
    """
    fmt = format_for(path, format)
    with Outputs(force=force, source=model.source) as outputs:
        out = outputs.add(path, fmt)
        outputs.stage(out, lambda target: write_model(model, target, fmt))
        outputs.commit()
    return out.path
