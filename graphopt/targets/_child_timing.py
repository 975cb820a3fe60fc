"""The worker process of :mod:`graphopt.targets.timing`: one export, one runtime, timed on command.

Run as ``python -m graphopt.targets._child_timing SPEC.json``. It imports the target's
runtime first (not timed: every server has paid for that), then loads the export as the
server would (timed), answers with its signature, and then obeys one JSON command per
line on stdin: ``first`` (the first request, timed, and its outputs saved), ``run`` (N
calls, each timed, or untimed warm-up), ``quit``. Answers are single lines on stdout
starting with ``GRAPHOPT_TIMING ``; anything else a runtime prints there is ignored.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

PREFIX = "GRAPHOPT_TIMING "


def _answer(data: dict) -> None:
    sys.stdout.write(PREFIX + json.dumps(data) + "\n")
    sys.stdout.flush()


def main(spec_file: str) -> int:
    from graphopt.security.sandbox import confine_worker

    spec = json.loads(Path(spec_file).read_text())
    # First thing, while this process has one thread (a user namespace needs that): before the runtime or the
    # model is loaded.
    fatal = confine_worker(spec.get("confine"))
    if fatal:
        _answer({"error": f"not confined: {fatal}", "trace": ""})
        return 1
    import numpy as np
    import psutil

    from graphopt.bench import peak_rss_bytes
    from graphopt.targets.base import target_for_export

    path = Path(spec["path"])
    try:
        target = target_for_export(path)
        for module in target.runtime_modules:  # the runtime is imported before anything is timed
            importlib.import_module(module)
        proc = psutil.Process()
        base_rss = proc.memory_info().rss
        t0 = time.perf_counter()
        runner = target.open(path)
        load_s = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises a GraphoptError
        _answer({"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                 "trace": traceback.format_exc()})
        return 1
    _answer({"load_s": load_s, "signature": runner.signature.to_dict(), "description": runner.description,
             "target": target.name, "precision": target.precision})
    feeds = None
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "quit":
                break
            if cmd["cmd"] == "first":
                with np.load(cmd["feeds"], allow_pickle=False) as data:
                    feeds = {k: data[k] for k in data.files}
                t0 = time.perf_counter()
                outputs = runner.run(feeds)
                first_s = time.perf_counter() - t0
                rss = proc.memory_info().rss
                np.savez(cmd["out"], **{k: np.asarray(v) for k, v in outputs.items()})  # type: ignore[arg-type]
                _answer({"first_run_s": first_s, "peak_rss_bytes": max(peak_rss_bytes(), rss) - base_rss,
                         "rss_after_bytes": rss - base_rss})
            elif cmd["cmd"] == "run":
                if feeds is None:
                    raise RuntimeError("'run' before 'first': no inputs yet")
                times = []
                for _ in range(int(cmd["n"])):
                    t0 = time.perf_counter()
                    runner.run(feeds)
                    times.append((time.perf_counter() - t0) * 1000)
                _answer({"times_ms": times if cmd.get("timed", True) else []})
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            _answer({"error": f"{type(exc).__name__}: {str(exc).strip()[:300]}", "trace": traceback.format_exc()})
            return 1
    runner.close()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main(sys.argv[1]))
