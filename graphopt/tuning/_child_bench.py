"""Benchmark worker: one candidate in a process of its own. ``python -m graphopt.tuning._child_bench SPEC.json``.

TensorFlow is imported first (not timed: every server has paid it), then the
artifact is opened with the candidate's runtime settings (timed: load), run once
on the reference inputs (timed: first request, where runtime Grappler runs) and
its outputs checked against the reference -- so what is timed is exactly what
was verified. In ``cold`` mode the process then exits; in ``warm`` mode it warms
up and answers the parent's commands on stdin, one JSON line each:

* ``{"run": N}`` -> ``GRAPHOPT {"times_ms": [...]}`` (N timed calls, back to back);
* ``{"quit": true}`` -> exit.

The parent sends a command to one worker at a time, so the workers of a heat
never run at once. Every answer is one stdout line starting with ``GRAPHOPT ``.
"""

import json
import os
import sys
import time

MARK = "GRAPHOPT "


def _say(obj) -> None:
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(spec_file: str) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(spec_file) as f:
        spec = json.load(f)
    from graphopt.security.sandbox import confine_worker

    fatal = confine_worker(spec.get("confine"))  # before the runtime or the candidate is loaded
    if fatal:
        _say({"status": "failed", "error": {"message": f"not confined: {fatal}", "where": "worker"}})
        return 0
    import psutil
    import tensorflow  # noqa: F401  (imported before timing starts)

    from graphopt.bench import peak_rss_bytes
    from graphopt.tuning.checks import check_outputs, load_reference, tolerance_from
    from graphopt.tuning.targets import adapter

    base_rss = psutil.Process().memory_info().rss
    try:
        if spec.get("plugins") is not None:
            from graphopt.plugins import Host, set_default_host

            set_default_host(Host.create(plugins=bool(spec["plugins"]), allow=list(spec["plugins"]) or None))
        feeds, expected = load_reference(spec["reference"])
        target = adapter(spec["target"])
        t0 = time.perf_counter()
        runner = target.open(spec["spec"], spec["runtime"], allow_unsafe=spec.get("allow_unsafe", False))
        t1 = time.perf_counter()
        got = runner.run(feeds)
        t2 = time.perf_counter()
    except Exception as exc:
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]
        _say({"status": "failed", "error": {"message": f"{type(exc).__name__}: {text}", "where": "open/run"}})
        return 0
    verification = check_outputs(expected, got, tolerance_from(spec.get("tolerance")),
                                 detection=bool(spec.get("detection")))
    ready = {"status": "ok" if verification["passed"] else "rejected", "load_s": t1 - t0, "first_s": t2 - t1,
             "verification": verification,
             "peak_rss_bytes": max(peak_rss_bytes(), psutil.Process().memory_info().rss) - base_rss}
    if spec.get("mode") == "cold" or not verification["passed"]:
        _say(ready)
        runner.close()
        return 0
    for _ in range(int(spec.get("warmup", 3))):
        runner.run(feeds)
    _say(ready)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        command = json.loads(line)
        if command.get("quit"):
            break
        times = []
        for _ in range(int(command.get("run", 1))):
            t = time.perf_counter()
            runner.run(feeds)
            times.append((time.perf_counter() - t) * 1000.0)
        _say({"times_ms": times})
    runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
