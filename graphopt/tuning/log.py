"""The append-only trial log (JSON Lines): what finished is kept, a rerun resumes from it.

Every record is one line, written and fsync'ed as soon as its step finished, so
an interrupted search (Ctrl-C, a killed machine) loses at most the step that was
running. A torn last line is ignored on reading. The first record of a search
says what was searched (source fingerprint, inputs, tolerance); a rerun whose
question differs refuses to reuse the log unless told to start over.

Record types: ``session`` (one per run), ``reference``, ``build`` (a build and
its verification), ``measure`` (one candidate's figures in one rung),
``export``, ``done``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from graphopt.errors import OutputError

LOG_NAME = "trials.jsonl"


class TrialLog:
    """One JSONL file; :meth:`append` is durable before it returns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._drop_torn_tail()
        self.records: list[dict[str, Any]] = list(self._read())

    def _drop_torn_tail(self) -> None:
        """Cut a last line a kill left unfinished, so the next record starts on a line of its own."""
        try:
            with self.path.open("rb+") as f:
                data = f.read()
                if data and not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise OutputError(f"cannot repair the trial log: {exc.strerror or exc}", where=str(self.path)) from None

    def _read(self) -> Iterator[dict[str, Any]]:
        if not self.path.is_file():
            return
        with self.path.open("r", encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a kill mid-write: what came before is intact
                    continue
                if isinstance(record, dict) and "type" in record:
                    yield record

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        record = {"time": round(time.time(), 3), **record}
        line = json.dumps(record, default=_json_default, allow_nan=True)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise OutputError(f"cannot write the trial log: {exc.strerror or exc}", where=str(self.path)) from None
        self.records.append(record)
        return record

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("type") == kind]

    def last(self, kind: str, **match: Any) -> dict[str, Any] | None:
        for record in reversed(self.records):
            if record.get("type") == kind and all(record.get(k) == v for k, v in match.items()):
                return record
        return None


def _json_default(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, Path):
        return str(value)
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    return str(value)


def fingerprint(path: str | Path | None) -> str | None:
    """A cheap identity of a file or folder: names, sizes and modification times of every file in it.

    Changing the model (or the sample file) makes an old trial log answer a different question.
    """
    if path is None:
        return None
    p = Path(path)
    h = hashlib.sha1()
    if p.is_file():
        st = p.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    elif p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    else:  # a TF Hub handle or a path that is not local: its text is all there is
        h.update(str(path).encode())
    return h.hexdigest()[:16]
