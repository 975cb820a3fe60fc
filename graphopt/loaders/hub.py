"""TF Hub models: TF1 Hub-format folders, TF2 Hub folders, and handles resolved through tensorflow_hub's cache.

A TF1 Hub module is a TF1 SavedModel plus ``tfhub_module.pb``; ``hub.Module``
used the meta graph tagged ``[]`` and the signature ``default``, so those are
the defaults here. A TF2 Hub model is a TF2 SavedModel, often without
signatures (its ``__call__`` is served then). A handle (``https://tfhub.dev/...``,
``https://www.kaggle.com/models/...``, ``gs://...``) goes through
``tensorflow_hub.resolve``, which reuses ``$TFHUB_CACHE_DIR/<sha1(handle)>`` when
present and downloads otherwise; offline that fails quickly under a short
socket timeout (``GRAPHOPT_HUB_TIMEOUT`` seconds, default 10) with an error
saying where the cache was looked for.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Sequence
from pathlib import Path

from graphopt.errors import InputError
from graphopt.model import Model

HUB_MODULE_FILE = "tfhub_module.pb"


def cache_location(handle: str) -> Path:
    """Where tensorflow_hub keeps (or would keep) the module for ``handle``."""
    from tensorflow_hub import resolver

    return Path(resolver.tfhub_cache_dir(use_temp=True)) / hashlib.sha1(handle.encode("utf8")).hexdigest()


def resolve(handle: str) -> str:
    """``tensorflow_hub.resolve(handle)`` with a short network timeout and errors that say what to do."""
    try:
        import tensorflow_hub as hub
    except ImportError:
        raise InputError("TF Hub handles need the tensorflow-hub package", where=handle,
                         hint="pip install tensorflow-hub") from None
    cached = cache_location(handle)
    lock = Path(str(cached) + ".lock")
    if lock.exists() and not (cached.is_dir() and any(cached.iterdir())):
        # tensorflow_hub would wait up to ten minutes for whoever holds the lock.
        raise InputError("another download of this module is in progress, or a stale lock was left", where=handle,
                         hint=f"wait for it, or delete {lock}")
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(float(os.environ.get("GRAPHOPT_HUB_TIMEOUT", "10")))
    try:
        return str(hub.resolve(handle))
    except Exception as exc:  # urllib/OS/TF errors from download or extraction
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot resolve TF Hub handle ({reason})", where=handle,
                         hint=f"it is not in the cache ({cached}) and could not be downloaded; on a connected "
                              "machine run graphopt once with the same TFHUB_CACHE_DIR and copy the folder, or "
                              "give the module's local folder") from None
    finally:
        socket.setdefaulttimeout(old)


def load_hub(src: str, *, signature: str | None = None, tags: Sequence[str] | None = None,
             inputs: Sequence[str] | None = None, outputs: Sequence[str] | None = None) -> Model:
    """Load a Hub folder or handle (see module docstring)."""
    from graphopt.loaders.saved_model_tf1 import is_tf1_saved_model, load_saved_model_tf1
    from graphopt.loaders.saved_model_tf2 import load_saved_model_tf2

    is_handle = "://" in src and not os.path.exists(src)
    path = resolve(src) if is_handle else src
    folder = Path(path)
    if not (folder / "saved_model.pb").is_file() and not (folder / "saved_model.pbtxt").is_file():
        raise InputError("the resolved module holds no saved_model.pb", where=f"{src} -> {path}",
                         hint="delete the cached folder and download it again")
    if (folder / HUB_MODULE_FILE).is_file() or is_tf1_saved_model(folder):
        model = load_saved_model_tf1(str(folder), signature=signature, tags=tags, inputs=inputs, outputs=outputs,
                                     fmt="hub_tf1", preferred_tags=[], preferred_signature="default")
    else:
        model = load_saved_model_tf2(str(folder), signature=signature, tags=tags, inputs=inputs, outputs=outputs,
                                     fmt="hub_tf2")
    model.source = src
    if is_handle:
        model.metadata["resolved"] = str(folder)
    return model
