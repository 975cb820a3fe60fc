"""Reference outputs on disk and the verification of a candidate against them (used inside worker processes).

The original model runs once (the ``reference`` step); its inputs and outputs
are kept in ``reference.npz`` so every build and every benchmark worker checks
the very runtime it measures -- the artifact as served, with the candidate's own
session settings -- against the same numbers, with graphopt's rule
(:func:`graphopt.verify.compare.compare_output`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

FEED, OUT = "feed__", "out__"


def save_reference(path: Path, feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
    """Write feeds and outputs to ``path`` atomically (a half-written reference must never be read)."""
    arrays = {FEED + k: _plain(v) for k, v in feeds.items()}
    arrays.update({OUT + k: _plain(v) for k, v in outputs.items()})
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as its allow_pickle
    os.replace(tmp, path)


def load_reference(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as data:
        feeds = {k[len(FEED):]: data[k] for k in data.files if k.startswith(FEED)}
        outputs = {k[len(OUT):]: data[k] for k in data.files if k.startswith(OUT)}
    return feeds, outputs


def _plain(value: Any) -> np.ndarray:
    # Strings come back from a session as object arrays; .npz without pickle wants bytes.
    arr = np.asarray(value)
    return arr.astype(bytes) if arr.dtype == object else arr


def tolerance_from(data: Mapping[str, Any] | None) -> Any:
    from graphopt.verify.compare import Tolerance

    if not data:
        return Tolerance()
    return Tolerance(atol=float(data["atol"]), rtol=float(data["rtol"]), source=str(data.get("source", "--tolerance")))


def check_outputs(reference: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], tolerance: Any, *,
                  detection: bool = False) -> dict[str, Any]:
    """Compare every reference output with the candidate's; a summary that fits in a log line."""
    from graphopt.verify.compare import OutputDiff, VerificationReport, compare_output

    diffs = []
    for key, expected in reference.items():
        if key not in outputs:
            diffs.append(OutputDiff(key=key, dtype=str(expected.dtype), shape=list(expected.shape),
                                    optimized_dtype="-", optimized_shape=[], passed=False,
                                    problem="missing from the candidate's outputs"))
            continue
        diffs.append(compare_output(key, expected, _plain(outputs[key]), tolerance, detection=detection))
    report = VerificationReport(diffs, tolerance, {}, "reference.npz", detection=detection)
    return summarize(report)


def summarize(report: Any) -> dict[str, Any]:
    lines = report.lines()
    return {"passed": report.passed, "max_abs": _num(report.max_abs), "max_rel": _num(report.max_rel),
            "tolerance": report.tolerance.to_dict(), "worst": lines[1:4]}


def _num(x: float) -> float | str:
    return x if np.isfinite(x) else "inf"
