"""Worker processes: one child per build (isolated: a crash costs one trial), one process per benchmarked candidate.

Both functions here are pure in the sense that they take a JSON-able spec and
return a JSON-able result, so the same code runs in the embedded engine and
inside a Ray task on another node (:mod:`graphopt.tuning.engine`).

A **heat** measures a few candidates side by side on one machine, always
including the anchor (the model as the user exported it): each candidate lives
in its own worker process, loaded and verified, and the parent asks one worker
at a time for ``reps`` timed calls, rotating the order every round, so drifting
background load hits every candidate alike and no two candidates ever run at
the same time. Results are per round, so ratios to the anchor can be taken
round by round (see :mod:`graphopt.tuning.race`).
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

MARK = "GRAPHOPT "
Event = Callable[[str, dict[str, Any]], None]


def _env() -> dict[str, str]:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    # TF's fatal errors ("F0000 ... Check failed") are the informative lines; fall back to the last ones.
    fatal = [ln for ln in lines if ln.startswith(("F0", "Fatal", "Traceback")) or "Error" in ln]
    return " | ".join(fatal[-n:] if fatal else lines[-n:])[:500]


def run_build(spec: Mapping[str, Any], *, timeout: float = 1800) -> dict[str, Any]:
    """Run one ``_child_build`` action in a child process; its result, or a ``failed`` record saying why it died.

    The child runs in a session of its own, so a Ctrl-C at the terminal reaches only this process, which
    kills the child on its way out: an interruption is never recorded as the trial failing.
    """
    work = Path(spec["workdir"])
    (work / "logs").mkdir(parents=True, exist_ok=True)
    name = spec.get("name") or uuid.uuid4().hex[:8]
    spec_file = work / "logs" / f"{name}.spec.json"
    result_file = work / "logs" / f"{name}.result.json"
    log_file = work / "logs" / f"{name}.log"
    spec_file.write_text(json.dumps(spec, default=str))
    result_file.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with log_file.open("w") as log:
        try:
            proc = subprocess.run([sys.executable, "-m", "graphopt.tuning._child_build", str(spec_file),
                                   str(result_file)], stdout=log, stderr=subprocess.STDOUT, env=_env(),
                                  timeout=timeout, start_new_session=True)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            return {"status": "failed", "stage": spec.get("action"), "seconds": time.perf_counter() - t0,
                    "error": {"message": f"timed out after {timeout:.0f} s", "where": f"log {log_file}"}}
    if result_file.is_file():
        result = json.loads(result_file.read_text())
        result.setdefault("seconds", time.perf_counter() - t0)
        result["log"] = str(log_file)
        return result
    how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
    return {"status": "failed", "stage": spec.get("action"), "seconds": time.perf_counter() - t0, "log": str(log_file),
            "error": {"message": f"the worker process died ({how}): {_tail(log_file) or 'no output'}",
                      "where": f"log {log_file}", "hint": "a crash inside TensorFlow; the other trials go on"}}


class BenchWorker:
    """One candidate's process. Lines from its stdout arrive on a queue (a reader thread), so waits can time out."""

    def __init__(self, spec: Mapping[str, Any], workdir: Path, name: str) -> None:
        from graphopt.security.sandbox import worker_confinement

        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        # A candidate is a stranger's model too: the worker confines itself (writes only beneath scratch).
        self.scratch = workdir / "logs" / f"{name}.scratch"
        self.scratch.mkdir(exist_ok=True)
        self.spec_file = workdir / "logs" / f"{name}.bench.json"
        self.spec_file.write_text(json.dumps({**spec, "confine": worker_confinement(self.scratch)}, default=str))
        self.log_file = workdir / "logs" / f"{name}.bench.log"
        self._log = self.log_file.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "graphopt.tuning._child_bench", str(self.spec_file)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     env={**_env(), "TMPDIR": str(self.scratch)}, bufsize=1, start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MARK):
                self.lines.put(line[len(MARK):])
        self.lines.put(None)  # end of output: the process exited

    def answer(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            return {"status": "failed", "error": {"message": f"no answer within {timeout:.0f} s",
                                                  "where": f"log {self.log_file}"}}
        if line is None:
            self.proc.wait()
            code = self.proc.returncode
            how = f"killed by signal {-code}" if code and code < 0 else f"exit status {code}"
            return {"status": "failed", "error": {"message": f"the worker died ({how}): "
                                                             f"{_tail(self.log_file) or 'no output'}",
                                                  "where": f"log {self.log_file}"}}
        return json.loads(line)

    def send(self, command: Mapping[str, Any]) -> bool:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def quit(self) -> None:
        self.send({"quit": True})
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def _member_spec(heat: Mapping[str, Any], member: Mapping[str, Any], mode: str) -> dict[str, Any]:
    return {"target": member["target"], "spec": member["spec"], "runtime": member["runtime"],
            "reference": heat["reference"], "tolerance": heat.get("tolerance"), "detection": heat.get("detection"),
            "plugins": heat.get("plugins"), "allow_unsafe": heat.get("allow_unsafe", False), "mode": mode, "warmup": heat.get("warmup", 3)}


def run_heat(heat: Mapping[str, Any], on_event: Event | None = None) -> dict[str, Any]:
    """Measure ``heat["members"]`` side by side; see the module docstring. Returns per-member, per-round figures."""
    emit = on_event or (lambda _kind, _data: None)
    work = Path(heat["workdir"])
    if not work.is_dir():
        raise FileNotFoundError(f"{work} is not visible on {socket.gethostname()}: the work dir must be on a "
                                "file system every node mounts")
    members = list(heat["members"])
    t0 = time.perf_counter()
    out: dict[str, Any] = {"members": {}, "node": socket.gethostname(), "mode": heat.get("mode", "warm")}
    if heat.get("mode") == "cold":
        out.update(_cold_heat(heat, members, work, emit))
    else:
        out.update(_warm_heat(heat, members, work, emit))
    out["seconds"] = time.perf_counter() - t0
    return out


def _warm_heat(heat: Mapping[str, Any], members: list[Mapping[str, Any]], work: Path, emit: Event) -> dict:
    rounds, reps = int(heat["rounds"]), int(heat["reps"])
    deadline = heat.get("deadline")
    min_rounds = int(heat.get("min_rounds", 2))
    load_timeout = float(heat.get("load_timeout", 900))
    results: dict[str, dict[str, Any]] = {}
    workers: dict[str, BenchWorker] = {}
    tag = uuid.uuid4().hex[:6]
    parallel = max(1, int(heat.get("start_parallel", 2)))
    starting: dict[str, BenchWorker] = {}
    try:
        pending = list(members)
        # A few workers load at a time: all at once would page on a small machine and time out loads.
        while pending or starting:
            while pending and len(starting) < parallel:
                m = pending.pop(0)
                starting[m["id"]] = BenchWorker(_member_spec(heat, m, "warm"), work, f"{m['id']}-{tag}")
            cid, worker = next(iter(starting.items()))
            ready = worker.answer(load_timeout)
            del starting[cid]
            results[cid] = {k: v for k, v in ready.items()}
            if ready.get("status") == "ok":
                workers[cid] = worker
            else:
                worker.kill()
            emit("worker_ready", {"id": cid, "status": ready.get("status")})
        for cid in results:
            if cid in workers:
                results[cid]["times_ms"] = []
        order = [m["id"] for m in members if m["id"] in workers]
        done = 0
        for r in range(rounds):
            if deadline is not None and time.time() > deadline and done >= min_rounds:
                break
            rotated = order[r % len(order):] + order[:r % len(order)] if order else []
            for cid in rotated:
                live = workers.get(cid)
                if live is None:
                    continue
                worker = live
                if not worker.send({"run": reps}):
                    results[cid].update(status="failed", error={"message": "the worker exited mid-benchmark",
                                                                "where": f"log {worker.log_file}"})
                    workers.pop(cid).kill()
                    continue
                answer = worker.answer(float(heat.get("run_timeout", 600)))
                if "times_ms" not in answer:
                    results[cid].update(status="failed", error=answer.get("error"))
                    workers.pop(cid).kill()
                    continue
                results[cid]["times_ms"].append(answer["times_ms"])
            done += 1
            emit("round", {"round": done, "rounds": rounds})
    except BaseException:  # Ctrl-C or an error: no worker outlives the heat
        for worker in [*workers.values(), *starting.values()]:
            worker.kill()
        raise
    for worker in workers.values():
        worker.quit()
    return {"members": results, "rounds": done}


def _cold_heat(heat: Mapping[str, Any], members: list[Mapping[str, Any]], work: Path, emit: Event) -> dict:
    rounds = int(heat["rounds"])
    deadline = heat.get("deadline")
    min_rounds = int(heat.get("min_rounds", 1))
    results: dict[str, dict[str, Any]] = {m["id"]: {"cold_s": []} for m in members}
    live = [m for m in members]
    done = 0
    for r in range(rounds):
        if deadline is not None and time.time() > deadline and done >= min_rounds:
            break
        rotated = live[r % len(live):] + live[:r % len(live)] if live else []
        for m in rotated:
            worker = BenchWorker(_member_spec(heat, m, "cold"), work, f"{m['id']}-cold{r}-{uuid.uuid4().hex[:4]}")
            try:
                answer = worker.answer(float(heat.get("load_timeout", 900)))
            finally:
                worker.kill()
            res = results[m["id"]]
            if answer.get("status") != "ok":
                res.update({k: v for k, v in answer.items() if k != "cold_s"})
                live = [x for x in live if x["id"] != m["id"]]
                continue
            res.setdefault("verification", answer.get("verification"))
            res["status"] = "ok"
            res["cold_s"].append(answer["load_s"] + answer["first_s"])
            res.setdefault("load_s", answer["load_s"])
            res.setdefault("first_s", answer["first_s"])
        done += 1
        emit("round", {"round": done, "rounds": rounds})
    return {"members": results, "rounds": done}
