"""What running out of a sandbox limit looks like: a TensorFlow or OS error turned into a :class:`ResourceError`.

Shared by the parent (:mod:`graphopt.security.sandbox`) and the confined child
(:mod:`graphopt.security._child`, which imports it only after confining itself), so
neither imports the other for it.
"""

from __future__ import annotations

import errno
import re

from graphopt.errors import ResourceError

GiB = 2**30
ENV_MEMORY = "GRAPHOPT_MEMORY_LIMIT"  # bytes, or 8G / 512M / 1.5GiB; 0 = no limit


def format_bytes(n: int | None) -> str:
    if n is None:
        return "unlimited"
    for unit, size in (("GiB", GiB), ("MiB", 2**20), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def tf_error_text(exc: BaseException) -> str:
    """The line of a TensorFlow error that says what happened (not 'Graph execution error', not the traceback)."""
    text = getattr(exc, "message", None) or str(exc)
    oom = re.search(r"OOM when allocating[^\n]*(\n/job[^\n]*)?", text)
    if oom:  # TF wraps the device name onto a line of its own
        return " ".join(oom.group(0).split())[:500]
    skip = ("Graph execution error", "Detected at node", "Node:", "Detected unsupported operations")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith((" ", "\t"))
             and not ln.strip().startswith(skip)]
    return (lines[0] if lines else text.strip().splitlines()[0] if text.strip() else type(exc).__name__)[:500]


def classify_exception(exc: BaseException, *, fs_confined: bool, label: str = "the model's graph",
                       memory_bytes: int | None = None) -> ResourceError | None:
    """A :class:`ResourceError` when ``exc`` means a sandbox limit was hit, else None.

    Memory: ``MemoryError`` and TensorFlow's ``ResourceExhaustedError`` (``OOM when allocating``).
    File system (only where writes are confined): permission refused, read-only file system.
    """
    name = type(exc).__name__
    memory = memory_bytes
    if isinstance(exc, MemoryError) or name == "ResourceExhaustedError":
        return ResourceError(f"{label} ran out of memory" + (f" (limit {format_bytes(memory)} of address space)"
                                                               if memory else ""),
                             details=[tf_error_text(exc)] if name != "MemoryError" else [], limit="memory",
                             hint=f"a model that needs more can have it: {ENV_MEMORY}=16G (or --memory-limit)")
    if fs_confined:
        text = tf_error_text(exc)
        denied = name == "PermissionDeniedError" or "Permission denied" in text or "Read-only file system" in text \
            or (isinstance(exc, OSError) and exc.filename is not None
                and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS))
        if denied:
            return ResourceError(f"{label} was refused access to a file outside its sandbox folder",
                                 details=[text], limit="filesystem",
                                 hint="a model's graph may write only in its own temporary folder (and, where reads "
                                      "are confined too, read only there and in system folders); "
                                      "see docs/guide/confinement.md")
    return None
