"""A model exported for TF Serving: ``BASE/<version>/`` with ``saved_model.pb``, ``variables/``, assets and warm-up.

TF Serving watches ``BASE`` and serves the highest integer subdirectory. A
version must appear complete or not at all, so it is written to a hidden
temporary directory beside the target (TF Serving ignores names that are not
integers) and renamed into place, which is atomic on one file system
(:class:`graphopt.savers.Outputs`: checked, locked against concurrent runs, staged, committed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from graphopt.errors import GraphoptError, OutputError, UsageError
from graphopt.model import Model
from graphopt.savers import Output, Outputs
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


def write_version(model: Model, directory: Path, *, warmup: bool = True,
                  samples: warmup_mod.Sample | Sequence[warmup_mod.Sample] | None = None,
                  max_warmup: int = warmup_mod.MAX_RECORDS, warmup_count: int = 1, model_name: str = "",
                  variables_threshold: int = large.DEFAULT_THRESHOLD, runtime_optimizer: str | None = None) -> None:
    """Write one complete version folder at ``directory`` (which must not exist): no checks, not atomic.

    What :func:`export_versioned` stages beside the version it replaces or creates.
    """
    _write_saved_model(model, directory, variables_threshold)
    if warmup:
        logs = warmup_mod.warmup_logs(model, samples, count=warmup_count, max_records=max_warmup,
                                      model_name=model_name)
        warmup_mod.write_warmup(directory, logs)
    if runtime_optimizer is not None:
        from graphopt.runtime.config import write_serving_config

        write_serving_config(directory / "assets.extra", runtime_optimizer=runtime_optimizer)


def plan_version(outputs: Outputs, base: str | os.PathLike, version: int | None = None, *, flag: str = "--serving-dir",
                 reserve: bool = True) -> Output:
    """Check ``base/<version>`` as an output of ``outputs`` (see :class:`graphopt.savers.Outputs`).

    ``version`` defaults to the next free integer. ``base`` may be missing (it is created with the
    version) but if it exists it must be a folder; an existing version is replaced only with the
    transaction's ``force``, and only when it is a SavedModel folder (or empty).
    """
    if isinstance(version, bool) or (version is not None and (not isinstance(version, int) or version < 0)):
        raise UsageError(f"version must be a non-negative integer, not {version!r}",
                         hint="TF Serving only serves integer version directories")
    base = Path(os.path.abspath(base))
    if os.path.lexists(base) and not base.is_dir():  # a symbolic link to a folder is a usual base
        raise OutputError(f"refusing to write {flag} into something that is not a folder", where=str(base),
                          hint="give the folder TF Serving watches (it holds one folder per version)")
    if version is None:
        version = next_version(base)
    return outputs.add(base / str(version), "serving_version", flag=flag, what=f"version {version}",
                       reserve=reserve)


def export_versioned(model: Model, base: str | Path, version: int | None = None, *, warmup: bool = True,
                     samples: warmup_mod.Sample | Sequence[warmup_mod.Sample] | None = None,
                     max_warmup: int = warmup_mod.MAX_RECORDS, warmup_count: int = 1, force: bool = False,
                     model_name: str = "", variables_threshold: int = large.DEFAULT_THRESHOLD,
                     runtime_optimizer: str | None = None) -> Path:
    """Write ``model`` to ``base/<version>/`` as TF Serving expects it and return that directory.

    ``version`` defaults to the next free integer. An existing version is an
    error unless ``force`` (then it is replaced, if it is a SavedModel folder). With ``warmup`` (default),
    ``assets.extra/tf_serving_warmup_requests`` holds one Predict request per
    sample (at most ``max_warmup``, never more than 1,000) or ``warmup_count``
    generated ones. When the frozen graph is larger than
    ``variables_threshold`` bytes its weights are written as variables
    (see :mod:`graphopt.serving.large`). The version appears complete or not at all.
    """
    with Outputs(force=force, source=model.source) as outputs:
        out = plan_version(outputs, base, version, flag="the serving base")
        outputs.stage(out, lambda directory: write_version(
            model, directory, warmup=warmup, samples=samples, max_warmup=max_warmup, warmup_count=warmup_count,
            model_name=model_name, variables_threshold=variables_threshold, runtime_optimizer=runtime_optimizer))
        outputs.commit()
    return out.path
