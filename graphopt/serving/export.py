"""A model exported for TF Serving: ``BASE/<version>/`` with ``saved_model.pb``, ``variables/``, assets and warm-up.

TF Serving watches ``BASE`` and serves the highest integer subdirectory. A
version must appear complete or not at all, so it is written to a hidden
temporary directory beside the target (TF Serving ignores names that are not
integers) and renamed into place, which is atomic on one file system.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from graphopt.errors import GraphoptError, OutputError, UsageError
from graphopt.model import Model
from graphopt.serving import large
from graphopt.serving import warmup as warmup_mod


def versions(base: str | Path) -> list[int]:
    """The integer version directories under ``base``, sorted (none if ``base`` does not exist)."""
    base = Path(base)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(base: str | Path) -> int:
    """One more than the highest version under ``base``; 1 for a new base."""
    found = versions(base)
    return found[-1] + 1 if found else 1


def _write_saved_model(model: Model, export_dir: Path, variables_threshold: int) -> None:
    if large.needs_variables(model, variables_threshold):
        large.write_with_variables(model, export_dir)
        return
    from graphopt.savers import write_saved_model

    try:
        write_saved_model(model, export_dir)
    except GraphoptError:
        raise
    except Exception as exc:  # the writer lets TensorFlow's own errors through: one message for the user
        first_line = (str(exc).splitlines() or [""])[0]
        raise OutputError(f"cannot write SavedModel: {type(exc).__name__}: {first_line}",
                          where=str(export_dir)) from exc


def export_versioned(model: Model, base: str | Path, version: int | None = None, *, warmup: bool = True,
                     samples: warmup_mod.Sample | Sequence[warmup_mod.Sample] | None = None,
                     max_warmup: int = warmup_mod.MAX_RECORDS, warmup_count: int = 1, force: bool = False,
                     model_name: str = "", variables_threshold: int = large.DEFAULT_THRESHOLD,
                     runtime_optimizer: str | None = None) -> Path:
    """Write ``model`` to ``base/<version>/`` as TF Serving expects it and return that directory.

    ``version`` defaults to the next free integer. An existing version is an
    error unless ``force`` (then it is replaced). With ``warmup`` (default),
    ``assets.extra/tf_serving_warmup_requests`` holds one Predict request per
    sample (at most ``max_warmup``, never more than 1,000) or ``warmup_count``
    generated ones. When the frozen graph is larger than
    ``variables_threshold`` bytes its weights are written as variables
    (see :mod:`graphopt.serving.large`).
    """
    base = Path(base)
    if version is None:
        version = next_version(base)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise UsageError(f"version must be a non-negative integer, not {version!r}",
                         hint="TF Serving only serves integer version directories")
    target = base / str(version)
    if target.exists() and not force:
        raise OutputError(f"version {version} already exists", where=str(target),
                          hint="leave out --version for the next free one, or pass --force to replace it")
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {base}: {exc.strerror}", where=str(base)) from exc
    tmp = base / f".{version}.partial-{uuid.uuid4().hex[:8]}"
    try:
        _write_saved_model(model, tmp, variables_threshold)
        if warmup:
            logs = warmup_mod.warmup_logs(model, samples, count=warmup_count, max_records=max_warmup,
                                          model_name=model_name)
            warmup_mod.write_warmup(tmp, logs)
        if runtime_optimizer is not None:
            from graphopt.runtime.config import write_serving_config

            write_serving_config(tmp / "assets.extra", runtime_optimizer=runtime_optimizer)
        if target.exists():
            old = base / f".{version}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except OSError as exc:
        raise OutputError(f"cannot write version {version}: {exc}", where=str(target)) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
