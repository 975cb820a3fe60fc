"""Benchmark exports of any target side by side: each runtime in a worker process of its own, alternating.

``graphopt bench SRC OUT_TF OUT_OV OUT_ONNX`` comes here when a source is a target's export
(``BASE`` or ``BASE/<version>``); a SavedModel folder (the model *as exported*) is measured
through the ``tfserving`` target, loaded as TF Serving loads it with TensorFlow's default
session config (or the one shipped beside it).

Why one process per runtime: TensorFlow's intra-op threads keep spinning for a while after
each call, so a runtime called right after TF in the same process is slowed by them
(measured: OpenVINO f32 on ResNet50 1.0x of TF instead of 0.54x), and on a machine with few cores they do
so from another process too: after each round the parent waits until the worker's CPU time stops growing
before it times the next one. Each source gets a worker
(:mod:`graphopt.targets._child_timing`); the workers stay loaded and idle while another is
timed, and the rounds alternate between them, the starting worker rotating each round, so
slow phases of a shared machine hit every runtime alike.

Measured per source:

* **size**: the model's files on disk (the version folder without ``assets.extra/`` and the manifest);
* **cold start**: in a fresh worker, after the runtime was imported (every server has paid for
  that), the load as the server loads it and the first request, separately; ``cold_repeats``
  more fresh workers per source (median);
* **peak memory**: the worker's peak RSS after the first request above its RSS after the import;
* **warm latency**: ``rounds`` x ``runs`` timed calls after ``warmup`` untimed ones; median, p10, p90,
  the median over rounds of the ratio to the first source's median in the same round, and the ratio of
  the best calls (what each runtime does when nothing else disturbs it: on a shared machine the runtimes
  that synchronise their threads per layer, OpenVINO's and onnxruntime's, lose far more to other load than
  TensorFlow does);
* **error**: the first request's outputs against the first source's on the same inputs
  (``max|a-b| / max|a|``, worst output).

Core code: returns a :class:`TargetBenchReport`; the CLI renders it.
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.errors import InputError, UsageError
from graphopt.targets.base import MANIFEST_FILE, signature_from_dict, target_of, version_dir_of

PREFIX = "GRAPHOPT_TIMING "


@dataclass
class TargetBench:
    """Everything measured for one source."""

    label: str
    source: str
    target: str
    precision: str
    runtime: str
    disk_bytes: int
    load_s: float = 0.0
    first_run_s: float = 0.0
    peak_rss_bytes: int = 0
    cold_repeats: int = 1
    median_ms: float | None = None
    p90_ms: float | None = None
    p10_ms: float | None = None
    min_ms: float | None = None
    min_ratio: float | None = None  # best call / the first source's best call: the speed without interference
    round_ratio: float | None = None  # median over rounds of (this median / the first source's median)
    max_rel: float | None = None  # worst output's max|a-b|/max|a| against the first source
    ratios: dict[str, float | None] = field(default_factory=dict)

    @property
    def cold_s(self) -> float:
        return self.load_s + self.first_run_s

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "cold_s": self.cold_s}


@dataclass
class TargetBenchReport:
    results: list[TargetBench]
    runs: int
    rounds: int
    warmup: int
    inputs: dict[str, dict[str, Any]]
    input_source: str
    machine: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "runs": self.runs, "rounds": self.rounds, "warmup": self.warmup,
                "inputs": self.inputs, "input_source": self.input_source, "notes": list(self.notes),
                "models": [r.to_dict() for r in self.results]}


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is a target's export (``BASE`` with versions, or a version folder graphopt wrote)."""
    from graphopt.serving.export import versions

    path = Path(path)
    return path.is_dir() and (bool(versions(path)) or (path / MANIFEST_FILE).is_file())


def model_bytes(version_dir: Path) -> int:
    """Bytes of the model's own files: warm-up records, shipped configs and the manifest are left out."""
    if version_dir.is_file():
        return version_dir.stat().st_size
    total = 0
    for p in version_dir.rglob("*"):
        if p.is_file() and p.name != MANIFEST_FILE and "assets.extra" not in p.relative_to(version_dir).parts:
            total += p.stat().st_size
    return total


class _Worker:
    """One worker process, loaded with one export."""

    def __init__(self, path: Path, tmp: Path, index: int, timeout: float) -> None:
        from graphopt.security.sandbox import worker_confinement

        spec = tmp / f"spec{index}-{id(self)}.json"
        # The export is a stranger's model in another runtime: the worker confines itself before opening it,
        # writing only beneath tmp (where its outputs go).
        spec.write_text(json.dumps({"path": str(path), "confine": worker_confinement(tmp, model_bytes(path))}))
        self.path, self.timeout = path, timeout
        self.log = open(tmp / f"worker{index}-{id(self)}.log", "w+")  # noqa: SIM115 - closed in close()
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(tmp))
        self.proc = subprocess.Popen([sys.executable, "-m", "graphopt.targets._child_timing", str(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env)
        # A thread reads the answers, so every wait for one has a deadline (a hung runtime must not hang bench).
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        threading.Thread(target=self._pump, name="graphopt-bench-worker", daemon=True).start()
        self.hello = self._read()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _read(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                self.close()
                raise InputError(f"benchmark worker did not answer within {self.timeout:.0f} s",
                                 where=str(self.path)) from None
            if line is None:
                break
            if line.startswith(PREFIX):  # a runtime may print its own lines: only ours count
                data = json.loads(line[len(PREFIX):])
                if "error" in data:
                    self.close()
                    raise InputError(f"benchmark worker failed: {data['error']}", where=str(self.path),
                                     hint="rerun with --debug; the export may not run on these inputs")
                return data
        self.log.seek(0)
        tail = (self.log.read().strip().splitlines() or ["(no output)"])[-1][:300]
        code = self.proc.wait(timeout=30)
        self.close()
        raise InputError(f"benchmark worker exited ({code}): {tail}", where=str(self.path))

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def settle(self, *, limit: float = 3.0) -> None:
        """Wait until this worker stops using CPU: runtimes keep their threads spinning for a while after a call
        (TensorFlow's, onnxruntime's), which would slow whichever worker is timed next on a small machine."""
        import psutil

        try:
            proc = psutil.Process(self.proc.pid)
            deadline, quiet, last = time.monotonic() + limit, 0, sum(proc.cpu_times()[:2])
            while time.monotonic() < deadline and quiet < 2:
                time.sleep(0.02)
                now = sum(proc.cpu_times()[:2])
                quiet = quiet + 1 if now - last < 0.002 else 0
                last = now
        except psutil.Error:  # it exited: nothing left spinning
            return

    def close(self) -> None:
        if self.log.closed:
            return
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.log.close()


def _max_rel(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float | None:
    from graphopt.verify.compare import Tolerance, compare_output

    worst = None
    for key, want in a.items():
        if key not in b:
            continue
        diff = compare_output(key, want, b[key], Tolerance())
        value = float("inf") if diff.problem or diff.nan_mismatch or diff.inf_mismatch else diff.max_rel
        worst = value if worst is None else max(worst, value)
    return worst


def bench_exports(sources: Sequence[str | Path], *, labels: Sequence[str] | None = None, runs: int = 10,
                  rounds: int = 3, warmup: int = 3, cold_repeats: int = 1,
                  samples: str | Path | Mapping[str, Any] | None = None, batch: int = 1, dynamic: int = 32,
                  seed: int = 0, timeout: float = 900) -> TargetBenchReport:
    """Measure each source (an export or a SavedModel folder), each in its own worker; ratios to the first."""
    from graphopt.bench import machine_info
    from graphopt.runtime.session import random_inputs
    from graphopt.verify.compare import load_samples

    if not sources:
        raise UsageError("give at least one model to benchmark")
    if runs < 1 or rounds < 1 or warmup < 0 or cold_repeats < 1:
        raise UsageError("--runs, --rounds and --cold-repeats must be >= 1 and --warmup >= 0")
    if labels is not None and len(labels) != len(sources):
        raise UsageError("one label per model")
    dirs = []
    for src in sources:
        vdir = version_dir_of(src)
        if not vdir.exists():
            raise InputError("no such model or export", where=str(src))
        if target_of(vdir) is None:
            raise InputError("not a model export any target reads", where=str(src),
                             hint="give BASE (or BASE/<version>) written by graphopt optimize, or a SavedModel")
        dirs.append(vdir)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="graphopt-bench-targets-") as tmpdir:
        tmp = Path(tmpdir)
        workers: list[_Worker] = []
        try:
            for i, vdir in enumerate(dirs):  # loaded one after the other: each load has the machine to itself
                workers.append(_Worker(vdir, tmp, i, timeout))
            first_sig = signature_from_dict(workers[0].hello["signature"])
            if samples is None:
                feeds = random_inputs(first_sig, batch=batch, dynamic=dynamic, seed=seed)
                source = f"random (seed {seed}, batch {batch}, unknown dims {dynamic})"
            elif isinstance(samples, (str, Path)):
                feeds, source = load_samples(samples, first_sig), f"samples from {samples}"
            else:
                feeds, source = {k: np.asarray(v) for k, v in samples.items()}, "given samples"
            feeds_file = tmp / "feeds.npz"
            np.savez(feeds_file, **feeds)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
            results, outputs = [], []
            for i, (w, vdir) in enumerate(zip(workers, dirs)):
                first = w.ask(cmd="first", feeds=str(feeds_file), out=str(tmp / f"out{i}.npz"))
                with np.load(tmp / f"out{i}.npz", allow_pickle=False) as data:
                    outputs.append({k: data[k] for k in data.files})
                hello = w.hello
                results.append(TargetBench(
                    label=labels[i] if labels else _label(sources[i], i), source=str(vdir), target=hello["target"],
                    precision=hello["precision"], runtime=hello["description"], disk_bytes=model_bytes(vdir),
                    load_s=hello["load_s"], first_run_s=first["first_run_s"], peak_rss_bytes=first["peak_rss_bytes"]))
                if set(signature_from_dict(hello["signature"]).inputs) != set(feeds):
                    notes.append(f"{results[-1].label}: signature inputs differ from the first model's")
            for w in workers:
                w.ask(cmd="run", n=warmup, timed=False)
                w.settle()
            times: list[list[list[float]]] = [[] for _ in workers]  # per worker, per round
            n = len(workers)
            for r in range(rounds):
                for j in range(n):
                    i = (r + j) % n
                    times[i].append(workers[i].ask(cmd="run", n=runs)["times_ms"])
                    workers[i].settle()  # the next worker is timed on a machine this one no longer uses
        finally:
            for w in workers:
                w.close()
        if cold_repeats > 1:  # more fresh processes, round-robin, each closed at once
            extra: list[list[tuple[float, float, int]]] = [[] for _ in dirs]
            for rep in range(cold_repeats - 1):
                for i, vdir in enumerate(dirs):
                    w = _Worker(vdir, tmp, 100 + rep * len(dirs) + i, timeout)
                    try:
                        first = w.ask(cmd="first", feeds=str(feeds_file), out=str(tmp / "cold.npz"))
                    finally:
                        w.close()
                    extra[i].append((w.hello["load_s"], first["first_run_s"], first["peak_rss_bytes"]))
            for res, more in zip(results, extra):
                samples_ = [(res.load_s, res.first_run_s, res.peak_rss_bytes), *more]
                res.load_s = statistics.median(s[0] for s in samples_)
                res.first_run_s = statistics.median(s[1] for s in samples_)
                res.peak_rss_bytes = int(statistics.median(s[2] for s in samples_))
                res.cold_repeats = len(samples_)
    base_rounds = [statistics.median(t) for t in times[0]]
    for res, per_round, out in zip(results, times, outputs):
        flat = np.array([t for rnd in per_round for t in rnd])
        res.median_ms, res.p90_ms, res.p10_ms, res.min_ms = (
            float(np.median(flat)), float(np.percentile(flat, 90)), float(np.percentile(flat, 10)), float(flat.min()))
        res.round_ratio = float(statistics.median(statistics.median(t) / b for t, b in zip(per_round, base_rounds)))
        res.max_rel = _max_rel(outputs[0], out)
    _ratios(results)
    for res in results:
        res.min_ratio = res.min_ms / results[0].min_ms if res.min_ms and results[0].min_ms else None
    inputs = {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in feeds.items()}
    return TargetBenchReport(results, runs, rounds, warmup, inputs, source, machine_info(), notes)


RATIO_FIELDS = ("disk_bytes", "load_s", "first_run_s", "cold_s", "peak_rss_bytes", "median_ms", "p90_ms")


def _ratios(results: list[TargetBench]) -> None:
    base = results[0]
    for res in results:
        for name in RATIO_FIELDS:
            a, b = getattr(base, name), getattr(res, name)
            res.ratios[name] = (b / a) if a and b is not None else None


def _label(source: str | Path, index: int) -> str:
    path = Path(source)
    name = path.name if not path.name.isdigit() else f"{path.parent.name}/{path.name}"
    return name or f"model{index}"
