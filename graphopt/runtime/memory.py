"""Giving freed memory back to the operating system between the big steps of a run.

Freezing a 100 MB model and running passes over it frees hundreds of MB of
protobuf and tensor buffers, but glibc keeps freed blocks in its per-thread
arenas: TensorFlow's threads allocate in arenas the main thread never reuses,
so the process's resident size (and its peak) keeps growing step after step.
:func:`release` collects Python garbage and asks glibc to trim its arenas, so
the next step starts from what is really alive.
"""

from __future__ import annotations

import ctypes
import gc
import sys
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (musl): nothing to trim
        return None


def release() -> None:
    """Collect garbage and return free heap pages to the OS (a no-op beyond ``gc`` off glibc)."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
