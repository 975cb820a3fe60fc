"""``graphopt tune``: find the fastest (or smallest, or quickest to start) verified variant of one model.

The search, step by step (every step's result is appended to the trial log as it
finishes, so an interrupted search resumes where it stopped):

1. **reference** -- the original runs once on the verification inputs
   (``--sample`` or generated); inputs and outputs are kept.
2. **builds** -- each (pipeline, target, precision) of the search space runs in a
   child process of its own: pipeline, the target's artifact (for TensorFlow a
   ``BASE/1`` SavedModel with warm-up records), then verification of the
   artifact *as served* against the reference. A crash or a failing pass costs
   that trial only. Builds stop being started after half the budget.
3. **race** -- verified candidates are benchmarked in heats (see
   :mod:`graphopt.tuning.workers`): each in its own worker process, side by side
   with the anchor (the model as exported, TensorFlow's default session),
   interleaved round by round. Staged: each build with the runtime setting its
   graph calls for; then the other runtime modes of the best builds; then
   thread settings of the best candidates. After each stage, the pruning rule of
   :mod:`graphopt.tuning.race` drops candidates clearly slower than the best and
   keeps at most half.
4. **final rungs** -- survivors are measured again with more rounds, pruned again,
   until one is left or the rungs run out. Among the finalists the noise cannot
   separate, a lossless one is preferred to a lossy one, then the fastest.
5. **export** -- the winner's artifact, with its server config, to ``OUT/<version>``.

``objective="size"`` ranks verified builds by bytes on disk and races only the
smallest (within 1 %) for latency; ``"cold-start"`` races load + first request,
each measured in a fresh process (round by round with the anchor as well).

The budget is soft: the step running when it expires finishes (a heat stops
after its current round), nothing new starts, and the best so far is exported.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphopt.errors import GraphoptError, InputError, OutputError, UsageError
from graphopt.tuning import race
from graphopt.tuning.log import LOG_NAME, TrialLog, fingerprint
from graphopt.tuning.space import (
    NO_PASSES,
    OBJECTIVES,
    TFSERVING,
    Build,
    Candidate,
    SearchSpace,
    build_space,
    expand,
    is_lossy,
    needs_samples,
)

WORKDIR_NAME = ".graphopt-tune"
REPORT_NAME = "report.json"
PLOT_NAME = "pareto.svg"
WARM_RUNGS = (3, 6, 12)  # rounds per rung (each round: REPS calls per candidate)
COLD_RUNGS = (1, 3, 5)  # fresh processes per candidate per rung
REPS = 5  # calls per turn: loading a worker costs seconds, a call milliseconds, so calls are nearly free
BUILD_SHARE = 0.5  # builds stop being started after this share of the budget: the race needs the rest
SIZE_TIE = 0.01
Event = Callable[[str, dict[str, Any]], None]


class _AnchorFailed(Exception):
    """The anchor's worker could not load, verify or run it in a heat."""


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C during a search: ``result`` holds what finished (also in the trial log)."""

    def __init__(self, result: "TuneResult") -> None:
        super().__init__("interrupted")
        self.result = result


@dataclass
class Trial:
    """One candidate's row of the report: what ran, what came out, and why it is where it is."""

    candidate: Candidate
    stage: str
    status: str  # winner | finalist | pruned | rejected | failed | not run | anchor
    reason: str = ""
    build: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    figure: race.Figure | None = None
    rung: int | None = None
    error: dict[str, Any] | None = None
    load_s: float | None = None
    first_s: float | None = None

    @property
    def max_rel(self) -> float | None:
        v = (self.verification or {}).get("max_rel")
        return float(v) if v is not None else None

    @property
    def disk_bytes(self) -> int | None:
        return (self.build or {}).get("disk_bytes")

    def to_dict(self) -> dict[str, Any]:
        c = self.candidate
        return {**c.to_dict(), "stage": self.stage, "status": self.status, "reason": self.reason,
                "disk_bytes": self.disk_bytes, "graph_bytes": (self.build or {}).get("graph_bytes"),
                "nodes": (self.build or {}).get("nodes"), "lossy": (self.build or {}).get("lossy"),
                "passes": (self.build or {}).get("passes"), "build_seconds": (self.build or {}).get("seconds"),
                "artifact": (self.build or {}).get("artifact"), "verification": self.verification,
                "max_rel": self.max_rel, "rung": self.rung, "figure": self.figure.to_dict() if self.figure else None,
                "error": self.error, "load_s": self.load_s, "first_s": self.first_s}


@dataclass
class TuneResult:
    """Everything one search found; ``to_dict`` is ``report.json``."""

    source: str
    objective: str
    workdir: Path
    trials: list[Trial]
    winner: Trial | None = None
    anchor: Trial | None = None
    exported: Path | None = None
    export_notes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    engine: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    budget_s: float | None = None
    interrupted: bool = False
    reference: dict[str, Any] = field(default_factory=dict)
    plot: Path | None = None

    @property
    def log(self) -> Path:
        return self.workdir / LOG_NAME

    @property
    def report(self) -> Path:
        return self.workdir / REPORT_NAME

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.status] = out.get(t.status, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "objective": self.objective, "workdir": str(self.workdir),
                "log": str(self.log), "plot": str(self.plot) if self.plot else None,
                "winner": self.winner.to_dict() if self.winner else None,
                "anchor": self.anchor.to_dict() if self.anchor else None,
                "exported": str(self.exported) if self.exported else None, "export_notes": self.export_notes,
                "notes": self.notes, "engine": self.engine, "seconds": self.seconds, "budget_s": self.budget_s,
                "interrupted": self.interrupted, "reference": self.reference, "counts": self.counts(),
                "trials": [t.to_dict() for t in self.trials]}


@dataclass
class TuneOptions:
    """How to search (the CLI's flags); the space itself is a :class:`SearchSpace`."""

    tolerance: float | None = None
    sample: str | None = None
    budget_minutes: float | None = None
    objective: str = "latency"
    signature: str | None = None
    tags: list[str] | None = None
    inputs: list[str] | None = None  # for formats without a signature (GraphDefs, checkpoints)
    outputs: list[str] | None = None
    allow_unsafe: bool | list[str] = False
    version: int | None = None
    force: bool = False
    restart: bool = False
    retry_failed: bool = False
    export: bool = True
    max_workers: int | None = None
    warm_rungs: Sequence[int] = WARM_RUNGS
    cold_rungs: Sequence[int] = COLD_RUNGS
    reps: int = REPS
    warmup: int = 3
    build_timeout: float = 1800.0
    keep_artifacts: bool = False
    export_if_slower: bool = False  # export the best verified variant even when the model as exported is faster


def tune(src: str | os.PathLike, out: str | os.PathLike | None = None, *, options: TuneOptions | None = None,
         space: SearchSpace | None = None, workdir: str | os.PathLike | None = None, engine: Any = None,
         host: Any = None, on_event: Event | None = None) -> TuneResult:
    """Search ``space`` (default: :func:`~graphopt.tuning.space.build_space` of ``host``) for ``src``.

    Writes the winner to ``out/<version>`` (a TF Serving base) unless
    ``options.export`` is false or ``out`` is None; the trial log, ``report.json``
    and ``pareto.svg`` go to ``workdir`` (default ``out/.graphopt-tune``, which
    TF Serving ignores: not an integer). ``on_event(kind, data)`` sees progress.
    Raises :class:`TuneInterrupted` on Ctrl-C, with what finished.
    """
    from graphopt.plugins import default_host
    from graphopt.tuning.engine import EmbeddedEngine

    opts = options or TuneOptions()
    host = host or default_host()
    if opts.objective not in OBJECTIVES:
        raise UsageError(f"objective must be one of {', '.join(OBJECTIVES)}, not {opts.objective!r}",
                         where="--objective")
    if opts.budget_minutes is not None and opts.budget_minutes <= 0:
        raise UsageError("the budget must be positive minutes", where="--budget")
    if opts.tolerance is not None and not opts.tolerance >= 0:
        raise UsageError("the tolerance must be >= 0", where="--tolerance")
    if out is None and workdir is None:
        raise UsageError("give an output base or a work dir", where="tune", hint="graphopt tune SRC --out BASE")
    src_text = str(src)
    src_path = Path(src_text)
    if not src_path.exists() and "://" not in src_text:
        raise InputError("the model does not exist", where=src_text)
    if opts.sample is not None and not Path(opts.sample).is_file():
        raise InputError("sample file not found", where=str(opts.sample))
    out_path = Path(out).absolute() if out is not None else None
    if out_path is not None:
        _refuse_overlap(src_path, out_path)
        if opts.version is not None and (out_path / str(opts.version)).exists() and not opts.force:
            raise OutputError(f"version {opts.version} already exists", where=str(out_path / str(opts.version)),
                              hint="leave out --version for the next free one, or pass --force to replace it")
    work = Path(workdir).absolute() if workdir is not None else out_path / WORKDIR_NAME  # type: ignore[operator]
    if space is None:
        space = build_space(host)
    search = _Search(src_text, out_path, work, opts, space, engine or EmbeddedEngine(), host, on_event)
    return search.run()


def _refuse_overlap(src: Path, out: Path) -> None:
    if not src.exists():
        return
    a, b = src.resolve(), out.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise UsageError("the output base overlaps the model being tuned", where=str(out),
                         hint="write the result to another folder; the input is never touched")


def _plugins(host: Any) -> list[str]:
    return sorted(name for name, o in host.pm.origins.items() if o.kind == "plugin")


class _Search:
    def __init__(self, src: str, out: Path | None, work: Path, opts: TuneOptions, space: SearchSpace, engine: Any,
                 host: Any, on_event: Event | None) -> None:
        self.src, self.out, self.work, self.opts = src, out, work, opts
        self.space = dataclasses.replace(space, builds=list(space.builds))  # the caller's space is not changed
        self.engine, self.host = engine, host
        self.emit: Event = on_event or (lambda _k, _d: None)
        self.t0 = time.time()
        self.deadline = self.t0 + opts.budget_minutes * 60 if opts.budget_minutes else None
        self.mode = "cold" if opts.objective == "cold-start" else "warm"
        self.rungs = list(opts.cold_rungs if self.mode == "cold" else opts.warm_rungs)
        self.tolerance = ({"atol": opts.tolerance, "rtol": opts.tolerance, "source": "--tolerance"}
                          if opts.tolerance is not None else {"atol": 1e-4, "rtol": 1e-4, "source": "lossless default"})
        self.plugins = _plugins(host)
        self.notes: list[str] = []
        self.builds: dict[str, dict[str, Any]] = {}  # build key -> latest build record
        self.candidates: dict[str, Candidate] = {}
        self.stage_of: dict[str, str] = {}
        self.measures: dict[tuple[str, int], dict[str, Any]] = {}
        self.pruned: dict[str, tuple[int, str]] = {}
        self.not_run: dict[str, str] = {}
        self.pool: list[str] = []
        self.anchor: Candidate | None = None
        self.anchor_spec: dict[str, Any] | None = None
        self.reference: dict[str, Any] = {}
        self.exported: Path | None = None
        self.export_notes: list[str] = []
        self.unexported: str | None = None
        self.cleaned: set[str] = set()  # builds whose artifact a finished search removed
        self.budget_stopped = False  # the final rungs were cut short by the budget  # fastest verified, but not faster than the model as exported

    # --- bookkeeping -------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        src = Path(self.src)
        return {"source": str(src.absolute()) if src.exists() else self.src, "fingerprint": fingerprint(self.src),
                "sample": str(Path(self.opts.sample).absolute()) if self.opts.sample else None,
                "sample_fingerprint": fingerprint(self.opts.sample), "signature": self.opts.signature,
                "inputs": self.opts.inputs, "outputs": self.opts.outputs,
                "tags": self.opts.tags}

    def _open_log(self) -> None:
        log_path = self.work / LOG_NAME
        identity = self._identity()
        if self.opts.restart and self.work.exists():
            shutil.rmtree(self.work)
        self.log = TrialLog(log_path)
        previous = self.log.of_type("session")
        if previous and previous[0].get("identity") != identity:
            raise UsageError("the trial log in the work dir was written for another model or other inputs",
                             where=str(log_path), hint="pass --restart to discard it, or give another --out/--workdir")
        if previous:
            self.notes.append(f"resumed from {log_path} ({len(self.log.records)} records)")
        self.log.append({"type": "session", "identity": identity, "objective": self.opts.objective,
                         "tolerance": self.tolerance, "budget_minutes": self.opts.budget_minutes,
                         "space": self.space.to_dict(), "engine": self.engine.describe()})
        for rec in self.log.of_type("build"):
            self.builds[rec["key"]] = rec
        for rec in self.log.of_type("measure"):
            self.measures[(rec["id"], rec["rung"])] = rec
        self.cleaned = {k for rec in self.log.of_type("cleanup") for k in rec.get("keys", [])}

    def _time_left(self) -> bool:
        return self.deadline is None or time.time() < self.deadline

    def _base_spec(self) -> dict[str, Any]:
        return {"workdir": str(self.work), "src": self.src, "signature": self.opts.signature, "tags": self.opts.tags,
                "inputs": self.opts.inputs, "outputs": self.opts.outputs,
                "reference": str(self.work / "reference.npz"), "plugins": self.plugins,
                "detection": self.reference.get("detection", False), "allow_unsafe": self.opts.allow_unsafe}

    # --- steps -------------------------------------------------------------------

    def run(self) -> TuneResult:
        self.work.mkdir(parents=True, exist_ok=True)
        self._open_log()
        try:
            self._set_anchor()
            todo = self._plan_builds()
            self._reference(todo)
            self._build_all(todo)
            self._race()
            winner = self._pick()
            if winner is not None and self.opts.export and self.out is not None:
                self._export(winner)
            result = self._result(winner)
            self.log.append({"type": "done", "winner": winner.id if winner else None,
                             "exported": str(self.exported) if self.exported else None})
            self._cleanup(winner)
        except KeyboardInterrupt:
            result = self._result(None, interrupted=True)
            self._write_report(result)
            raise TuneInterrupted(result) from None
        self._write_report(result)
        return result

    def _set_anchor(self) -> None:
        """The yardstick: the SavedModel as the user exported it, served with TensorFlow's defaults; for other
        formats (TF Serving cannot load them) the frozen model with no pass, served the same way."""
        from graphopt.loaders import detect

        runtime = {"optimizer": "full", "intra_op": 0, "inter_op": 0}
        try:
            servable = detect(self.src) in ("saved_model", "saved_model_tf1") and Path(self.src).is_dir()
        except GraphoptError:
            servable = False
        self.anchor = Candidate.make(Build(NO_PASSES), runtime, baseline=servable)
        if not servable and Build(NO_PASSES) not in self.space.builds:
            self.space.builds.insert(0, Build(NO_PASSES))

    def _reference(self, todo: list[dict[str, Any]]) -> None:
        """Run the original once (with the first build, in the same child, when there is one to run)."""
        rec = self.log.last("reference")
        if rec is not None and rec.get("status") == "ok" and (self.work / "reference.npz").is_file():
            self.reference = rec
        else:
            self.emit("phase", {"name": "reference", "total": 1})
            first = todo[0] if todo and todo[0]["action"] == "build" else None
            spec = {**(first or self._base_spec()), "action": "reference_build" if first else "reference",
                    "name": "reference", "sample": self.opts.sample, "allow_unsafe": self.opts.allow_unsafe}
            result = _run_local(spec, self.opts.build_timeout)
            ref = result.get("reference") or result
            self.log.append({"type": "reference", **{k: v for k, v in ref.items() if k != "type"}})
            if ref.get("status") != "ok":
                err = ref.get("error") or {}
                raise InputError(f"the model cannot be run for reference outputs: {err.get('message')}",
                                 where=self.src, hint=err.get("hint") or "see graphopt optimize on it for details")
            self.reference = ref
            if first is not None and "build" in result:
                todo.pop(0)
                self._record_build(first, result["build"])
        self.anchor_spec = self.reference.get("baseline_spec")
        assert self.anchor is not None
        if self.anchor.baseline and self.anchor_spec is None:  # not loadable as TF Serving loads it after all
            self.anchor = Candidate.make(Build(NO_PASSES), self.anchor.settings)
            if Build(NO_PASSES) not in self.space.builds:
                self.space.builds.insert(0, Build(NO_PASSES))
                todo[:0] = [self._build_spec(Build(NO_PASSES))]

    def _ordered_builds(self) -> list[Build]:
        """Likely winners first, so a short budget still covers them."""
        from graphopt.optimizer import default_spec

        presets = self.host.registry.presets
        default = default_spec(self.host)

        targets = {name: getattr(getattr(info, "cls", None), "transforms", None)
                   for name, info in (getattr(self.host.registry, "targets", None) or {}).items()}

        def rank(b: Build) -> tuple:
            info = presets.get(b.pipeline)
            lossy = bool(info.lossy) if info else any(w in b.pipeline for w in ("fp16", "int8"))
            anchor_first = not (self.anchor is not None and b == self.anchor.build and not self.anchor.baseline)
            if b.target == TFSERVING and b.pipeline == default:
                group = 0  # what graphopt optimize would do
            elif b.target != TFSERVING and b.pipeline == (targets.get(b.target) or ""):
                group = 1  # each other runtime, the way its target converts by default
            elif b.pipeline == NO_PASSES:
                group = 5
            else:
                group = 2 + ({"builtin": 0, "plugin": 1, "native": 2}.get(info.origin.kind, 1) if info else 1)
            return (anchor_first, lossy, group, b.precision != "f32")

        return sorted(self.space.builds, key=rank)

    def _build_spec(self, b: Build) -> dict[str, Any]:
        return {**self._base_spec(), "action": "build", "name": b.key, "build": b.to_dict(),
                "out": str(self.work / "artifacts" / b.key), "tolerance": self.tolerance,
                "runtime": self.space.fixed_runtime, "sample": self.opts.sample}

    def _plan_builds(self) -> list[dict[str, Any]]:
        """What is left to build (or verify again), likely winners first; skipped builds get their reason."""
        todo: list[dict[str, Any]] = []
        for b in self._ordered_builds():
            if self.anchor is None or b != self.anchor.build or self.anchor.baseline:
                skip = self._skip_reason(b)
                if skip:
                    self.not_run[b.key] = skip
                    continue
            rec = self.builds.get(b.key)
            if rec is not None and self._reusable(rec):
                continue
            if rec is not None and rec.get("status") in ("ok", "rejected") and rec.get("artifact") \
                    and Path(rec["artifact"]).is_dir():
                todo.append(self._verify_spec(b, rec))  # another tolerance: verify again, do not rebuild
                continue
            todo.append(self._build_spec(b))
        return todo

    def _record_build(self, spec: Mapping[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        b = Build.from_dict(spec["build"])
        if spec["action"] == "verify":
            old = self.builds[b.key]
            result = {**{k: v for k, v in old.items() if k not in ("type", "time", "verification", "status",
                                                                     "tolerance", "error")}, **result}
        rec = self.log.append({"type": "build", "key": b.key, "build": b.to_dict(), "tolerance": self.tolerance,
                               **result})
        self.builds[b.key] = rec
        self.emit("build_done", {"key": b.key, "label": b.label, "status": rec.get("status"),
                                 "seconds": rec.get("seconds"), "error": rec.get("error")})
        return rec

    def _build_all(self, todo: list[dict[str, Any]]) -> None:
        total = len(self.space.builds) - len(self.not_run)
        self.emit("phase", {"name": "builds", "total": total, "done": total - len(todo)})
        if not todo:
            return
        stop_at = self.t0 + (self.deadline - self.t0) * BUILD_SHARE if self.deadline else None
        finished: set[str] = set()
        detection = self.reference.get("detection", False)  # known only now that the original ran
        todo = [{**spec, "detection": detection} for spec in todo]
        for spec, result in self.engine.builds(todo):
            finished.add(spec["name"])
            self._record_build(spec, result)
            if stop_at is not None and time.time() > stop_at and self._verified_builds():
                break  # the rest of the budget belongs to the race
        left = [s for s in todo if s["name"] not in finished]
        for spec in left:
            self.not_run[Build.from_dict(spec["build"]).key] = "not built: the budget ran out (rerun to resume)"
        if left:
            self.notes.append(f"{len(left)} build(s) not run within the budget")

    def _skip_reason(self, b: Build) -> str | None:
        """Builds not worth running for this search (said in the report, never silently left out)."""
        try:
            lossy = is_lossy(b, self.host)
        except GraphoptError as exc:
            return f"not built: {exc.message}"
        if lossy and self.opts.tolerance is None:
            return ("not built: lossy, and the search is lossless (the default); --tolerance X includes lossy "
                    "variants whose error stays within X")
        if needs_samples(b, self.host) and not self.opts.sample:
            return f"not built: precision {b.precision} is calibrated on your data; give --sample FILE.npz"
        return None

    def _reusable(self, rec: Mapping[str, Any]) -> bool:
        status = rec.get("status")
        if status == "failed":
            return not self.opts.retry_failed
        if rec.get("tolerance") != self.tolerance:
            return False
        # A finished search keeps only the winner's artifact; the others' records still stand.
        return bool(rec.get("artifact")) and (Path(rec["artifact"]).is_dir() or rec["key"] in self.cleaned)

    def _verify_spec(self, b: Build, rec: Mapping[str, Any]) -> dict[str, Any]:
        return {**self._base_spec(), "action": "verify", "name": b.key + "-verify", "build": b.to_dict(),
                "target": b.target, "spec": rec["spec"], "runtime": rec.get("runtime"), "tolerance": self.tolerance}

    def _verified_builds(self) -> list[str]:
        return [k for k, r in self.builds.items() if r.get("status") == "ok"]

    # --- the race ------------------------------------------------------------------

    def _target(self, name: str) -> Any:
        from graphopt.tuning.targets import adapter

        return adapter(name, self.host)

    def _stage0(self) -> list[Candidate]:
        out = []
        for b in self._ordered_builds():
            rec = self.builds.get(b.key)
            if rec is None or rec.get("status") not in ("ok", "rejected") or b.key in self.not_run:
                continue  # not built, failed, or left out of this search (e.g. lossy, now without --tolerance)
            settings = self.space.fixed_runtime or rec.get("runtime") or self._target(b.target).default_runtime(rec)
            c = Candidate.make(b, settings)
            self._register(c, "pipelines")
            if rec.get("status") == "ok":
                out.append(c)
        return out

    def _register(self, c: Candidate, stage: str) -> None:
        self.candidates.setdefault(c.id, c)
        self.stage_of.setdefault(c.id, stage)

    def _race(self) -> None:
        assert self.anchor is not None
        failed = self.log.last("anchor_failed")
        if failed is not None and self.anchor.baseline:
            self._replace_anchor(failed.get("reason", ""), log=False)
        try:
            self._race_once()
        except _AnchorFailed as exc:
            if not self.anchor.baseline:
                raise InputError(f"the anchor ({self.anchor.label}) could not be benchmarked: {exc}", where=self.src,
                                 hint="tune measures every candidate against it; see the worker logs in the work dir"
                                 ) from None
            self._replace_anchor(str(exc))
            self._race_once()

    def _replace_anchor(self, reason: str, *, log: bool = True) -> None:
        """The model as exported cannot be opened the way TF Serving opens it: measure against it frozen instead."""
        full = {"optimizer": "full", "intra_op": 0, "inter_op": 0}
        frozen = self.builds.get(Build(NO_PASSES).key) or {}
        if frozen.get("status") != "ok":  # not built yet (it is built last): it is the yardstick now
            for spec, result in self.engine.builds([{**self._build_spec(Build(NO_PASSES)), "runtime": full,
                                                     "detection": self.reference.get("detection", False)}]):
                frozen = self._record_build(spec, result)
        if frozen.get("status") == "ok":
            self.anchor = Candidate.make(Build(NO_PASSES), full)
        else:
            verified = self._stage0()
            if not verified:
                raise InputError(f"the model as exported could not be benchmarked ({reason}) and no candidate can "
                                 "stand in for it", where=self.src)
            self.anchor = verified[0]
        if log:
            self.log.append({"type": "anchor_failed", "reason": reason})
        self.notes.append(f"the model as exported could not be benchmarked ({reason[:200]}); ratios are to "
                          f"{self.anchor.label} instead")
        self.pool, self.pruned = [], {}

    def _race_once(self) -> None:
        assert self.anchor is not None
        if self.anchor.baseline:
            self._register(self.anchor, "anchor")
        stage0 = self._stage0()
        if not stage0:
            self.notes.append("no candidate passed verification: nothing to benchmark")
            return
        if not self.anchor.baseline:
            rec = self.builds.get(self.anchor.build.key) or {}
            if rec.get("status") != "ok":  # the frozen model's build failed: the first verified build anchors
                self.anchor = stage0[0]
                self.notes.append(f"anchor: {self.anchor.label} (the model with no pass could not be built)")
        self._register(self.anchor, "anchor")
        if self.opts.objective == "size":
            stage0 = self._size_class(stage0)
        self._stage("pipelines", stage0)
        if self.space.fixed_runtime is None:
            dims_done = 0
            while self.pool and self._time_left():
                expansions = self._expansions(dims_done)
                if expansions is None:
                    break
                dims_done += 1
                if expansions:
                    self._stage(expansions[0], expansions[1])
        self._final_rungs()

    def _size_class(self, stage0: list[Candidate]) -> list[Candidate]:
        sizes = {c.id: self.builds[c.build.key].get("disk_bytes") or math.inf for c in stage0}
        smallest = min(sizes.values())
        keep = [c for c in stage0 if sizes[c.id] <= smallest * (1 + SIZE_TIE)]
        for c in stage0:
            if c not in keep:
                self.pruned[c.id] = (0, f"larger on disk: {sizes[c.id] / 1e6:.2f} MB vs the smallest "
                                        f"{smallest / 1e6:.2f} MB (objective: size)")
        return keep

    def _expansions(self, index: int) -> tuple[str, list[Candidate]] | None:
        """Stage ``index + 1``: the next runtime dimension of each target, around the best candidates so far."""
        ranked = [self.candidates[c] for c in self.pool]
        new: list[Candidate] = []
        name = None
        any_dim = False
        for target, dims in self.space.runtime.items():
            if index >= len(dims):
                continue
            any_dim = True
            dim, values = dims[index]
            name = name or dim
            mine = [c for c in ranked if c.build.target == target]
            if index == 0:  # runtime modes: the best builds
                seeds, seen = [], set()
                for c in mine:
                    if c.build.key not in seen:
                        seen.add(c.build.key)
                        seeds.append(c)
                seeds = seeds[:self.space.top_builds]
            else:
                seeds = mine[:self.space.top_threads]
            for seed in seeds:
                for c in expand(seed, dim, values):
                    if c.id not in self.candidates:
                        self._register(c, dim)
                        new.append(c)
        if not any_dim:
            return None
        return (name or f"runtime {index}", new)

    def _stage(self, name: str, new: list[Candidate]) -> None:
        self.emit("stage", {"name": name, "candidates": len(new)})
        everyone = list(dict.fromkeys(self.pool + [c.id for c in new]))
        if len(everyone) == 1 and not any(self._figure(c, 0) for c in everyone):
            self.pool = everyone  # nothing to prune among one: the final rung measures it against the anchor
            return
        self._measure([self.candidates[c] for c in everyone], 0, name)  # those measured already are skipped
        figures = {cid: f for cid in everyone if (f := self._figure(cid, 0)) is not None}
        survivors, pruned = race.prune(figures, noise_floor=race.floor_for(self.rungs[0], self.rungs[-1]))
        for cid, reason in pruned.items():
            self.pruned[cid] = (0, reason)
            self.emit("pruned", {"id": cid, "label": self.candidates[cid].label, "reason": reason})
        self.pool = survivors

    def _final_rungs(self) -> None:
        last = len(self.rungs) - 1
        for rung in range(1, len(self.rungs)):
            if not self.pool or (len(self.pool) == 1 and any(self._figure(self.pool[0], r) for r in range(1, rung))):
                break
            if len(self.pool) == 1 and rung < last and self._figure(self.pool[0], rung) is None:
                continue  # one left: nothing to prune, so it is measured once, with the most rounds
            if not self._time_left() and any(self._latest(c)[1] is not None for c in self.pool):
                # Soft budget: with nothing measured yet, one rung still runs, so there is a verified answer.
                self.notes.append(f"budget: stopped before rung {rung} ({len(self.pool)} candidate(s) left)")
                self.budget_stopped = True
                break
            self._measure([self.candidates[c] for c in self.pool], rung, "final")
            figures = {cid: f for cid in self.pool if (f := self._figure(cid, rung)) is not None}
            if not figures:
                break
            survivors, pruned = race.prune(figures, cap=rung < last,
                                           noise_floor=race.floor_for(self.rungs[rung], self.rungs[-1]))
            for cid, reason in pruned.items():
                self.pruned[cid] = (rung, reason)
                self.emit("pruned", {"id": cid, "label": self.candidates[cid].label, "reason": reason})
            self.pool = survivors + [c for c in self.pool if c not in figures and c not in pruned]

    def _figure(self, cid: str, rung: int) -> race.Figure | None:
        rec = self.measures.get((cid, rung))
        if rec is None or rec.get("status") != "ok" or not rec.get("figure"):
            return None
        if self.anchor is not None and rec.get("anchor") != self.anchor.id:
            return None  # a ratio to another anchor (the model as exported, before it failed) does not compare
        return race.Figure(**rec["figure"])

    def _latest(self, cid: str) -> tuple[int | None, race.Figure | None]:
        for rung in range(len(self.rungs) - 1, -1, -1):
            f = self._figure(cid, rung)
            if f is not None:
                return rung, f
        return None, None

    def _member(self, c: Candidate) -> dict[str, Any]:
        if c.baseline:
            spec = self.anchor_spec
        else:
            spec = self.builds[c.build.key]["spec"]
        return {"id": c.id, "target": c.build.target, "spec": spec, "runtime": c.settings}

    def _max_workers(self) -> int:
        if self.opts.max_workers:
            return max(2, int(self.opts.max_workers))
        import psutil

        biggest = max([r.get("disk_bytes") or 0 for r in self.builds.values()] + [0])
        per_worker = 400e6 + 3 * biggest  # TF runtime + the graph, its constants and the session's copies
        fit = int(psutil.virtual_memory().available * 0.5 // per_worker)
        return max(2, min(8, fit))

    def _measure(self, cands: list[Candidate], rung: int, stage: str) -> None:
        assert self.anchor is not None
        todo = [c for c in cands if c.id != self.anchor.id and ((c.id, rung) not in self.measures or
                self.measures[(c.id, rung)].get("anchor") != self.anchor.id)]
        if not todo:
            return
        if not self._time_left() and any(k[1] == 0 for k in self.measures):
            for c in todo:
                self.not_run[c.id] = f"not benchmarked at rung {rung}: the budget ran out (rerun to resume)"
            return
        size = self._max_workers() - 1
        groups = [todo[i:i + size] for i in range(0, len(todo), size)]
        common = {"workdir": str(self.work), "reference": str(self.work / "reference.npz"),
                  "tolerance": self.tolerance, "detection": self.reference.get("detection", False),
                  "plugins": self.plugins, "allow_unsafe": self.opts.allow_unsafe, "mode": self.mode,
                  "rounds": self.rungs[rung], "reps": self.opts.reps, "warmup": self.opts.warmup,
                  "deadline": self.deadline, "min_rounds": 2 if self.mode == "warm" else 1}
        heats = [{**common, "members": [self._member(self.anchor)] + [self._member(c) for c in g]} for g in groups]
        self.emit("heats", {"stage": stage, "rung": rung, "heats": len(heats), "candidates": len(todo),
                            "rounds": self.rungs[rung]})
        measured_any = any(k[1] == 0 for k in self.measures)
        for i, (heat, result) in enumerate(self.engine.heats(heats, self.emit)):
            self._record_heat(heat, result, rung, stage)
            self.emit("heat_done", {"index": i + 1, "heats": len(heats), "node": result.get("node"),
                                    "seconds": result.get("seconds")})
            measured_any = True
            if not self._time_left() and measured_any and i + 1 < len(heats):
                for h in heats[i + 1:]:
                    for m in h["members"][1:]:
                        self.not_run[m["id"]] = f"not benchmarked at rung {rung}: the budget ran out"
                break

    def _record_heat(self, heat: Mapping[str, Any], result: Mapping[str, Any], rung: int, stage: str) -> None:
        assert self.anchor is not None
        if result.get("status") == "failed" and "members" not in result:  # the whole task died
            for m in heat["members"][1:]:
                self._log_measure(m["id"], rung, stage, {"status": "failed", "error": result.get("error")}, None)
            return
        members = result["members"]
        anchor_res = members.get(self.anchor.id, {})
        if anchor_res.get("status") != "ok":
            err = anchor_res.get("error") or anchor_res.get("verification") or {}
            raise _AnchorFailed(str(err.get("message") if isinstance(err, dict) and "message" in err else err))
        self._log_measure(self.anchor.id, rung, "anchor", anchor_res,
                          race.figure(anchor_res, anchor_res, self.mode), heat=result)
        for m in heat["members"][1:]:
            res = members.get(m["id"], {"status": "failed", "error": {"message": "no result"}})
            fig = race.figure(res, anchor_res, self.mode) if res.get("status") == "ok" else None
            if res.get("status") == "ok" and fig is None:
                res = {**res, "status": "failed", "error": {"message": "no timed round finished"}}
            self._log_measure(m["id"], rung, stage, res, fig, heat=result)

    def _log_measure(self, cid: str, rung: int, stage: str, res: Mapping[str, Any], fig: race.Figure | None,
                     heat: Mapping[str, Any] | None = None) -> None:
        assert self.anchor is not None
        c = self.candidates[cid]
        rec = self.log.append({"type": "measure", "id": cid, "candidate": c.to_dict(), "rung": rung, "stage": stage,
                               "anchor": self.anchor.id, "status": res.get("status"),
                               "figure": fig.to_dict() if fig else None, "verification": res.get("verification"),
                               "error": res.get("error"), "load_s": res.get("load_s"), "first_s": res.get("first_s"),
                               "node": (heat or {}).get("node"), "mode": self.mode, "tolerance": self.tolerance})
        self.measures[(cid, rung)] = rec

    # --- the answer ---------------------------------------------------------------

    def _pick(self) -> Candidate | None:
        figures = {}
        for cid in self.pool:
            _, f = self._latest(cid)
            if f is not None and not self.candidates[cid].baseline:
                figures[cid] = f
        if not figures:
            return None
        ties = race.tied(figures)

        def lossless(cid: str) -> bool:
            rec = self.builds.get(self.candidates[cid].build.key) or {}
            return not rec.get("lossy")

        # Among what the noise cannot separate: lossless before lossy, then the fastest.
        best = min(ties, key=lambda cid: (not lossless(cid), figures[cid].ratio))
        if self.opts.objective != "size" and race.slower_than_anchor(figures[best]):
            if self.opts.export_if_slower:
                self.notes.append(f"{self.candidates[best].label} runs at {figures[best].ratio:.3f}x the model as "
                                  "exported (slower); exported as asked")
                return self.candidates[best]
            self.notes.append(f"the best verified variant ({self.candidates[best].label}) is "
                              f"{figures[best].ratio:.3f}x the model as exported: nothing beat it, nothing exported")
            self.unexported = best
            return None
        return self.candidates[best]

    def _export(self, winner: Candidate) -> None:
        from graphopt.serving.export import next_version

        assert self.out is not None
        rec = self.log.last("export", id=winner.id)
        if rec is not None and Path(rec["path"]).is_dir():
            self.exported = Path(rec["path"])
            self.export_notes = list(rec.get("notes") or [])
            return
        version = self.opts.version if self.opts.version is not None else next_version(self.out)
        target = self._target(winner.build.target)
        artifact = Path(self.builds[winner.build.key]["artifact"])
        path = target.export(artifact, winner.settings, self.out, version, force=self.opts.force)
        self.exported = path
        self.export_notes = target.server_notes(winner.settings, path)
        files = target.server_files(self.out.name, self.out, path, winner.settings)
        if files:
            from graphopt.targets.base import write_atomic

            written = [write_atomic(self.work / "server" / name, text) for name, text in files.items()]
            self.export_notes.append("server config for this model alone: " + ", ".join(str(p) for p in written))
        self.log.append({"type": "export", "id": winner.id, "path": str(path), "version": version,
                         "notes": self.export_notes})
        self.emit("export", {"path": str(path), "label": winner.label})

    def _cleanup(self, winner: Candidate | None) -> None:
        """Artifacts are kept until the search is done (a rerun reuses them), then only the winner's."""
        if self.opts.keep_artifacts or self.exported is None:
            return
        keep = winner.build.key if winner else None
        root = self.work / "artifacts"
        if root.is_dir():
            gone = [child for child in root.iterdir() if child.name != keep]
            if gone:
                self.log.append({"type": "cleanup", "keys": [c.name for c in gone]})
            for child in gone:
                shutil.rmtree(child, ignore_errors=True)

    def _trial(self, c: Candidate, winner: Candidate | None) -> Trial:
        build = None if c.baseline else self.builds.get(c.build.key)
        stage = self.stage_of.get(c.id, "")
        rung, fig = self._latest(c.id)
        meas = self.measures.get((c.id, rung)) if rung is not None else None
        if meas is None:
            meas = next((self.measures[k] for k in sorted(self.measures, reverse=True) if k[0] == c.id), None)
        verification = (meas or {}).get("verification") or (build or {}).get("verification")
        t = Trial(c, stage, "not run", build=build, verification=verification, figure=fig, rung=rung,
                  load_s=(meas or {}).get("load_s"), first_s=(meas or {}).get("first_s"))
        if c.baseline or (self.anchor is not None and c.id == self.anchor.id and winner is not None
                          and c.id != winner.id):
            t.status, t.reason = "anchor", "the yardstick: every heat measures it, ratios are to it"
            return t
        if build is not None and build.get("status") == "failed":
            t.status, t.error = "failed", build.get("error")
            t.reason = f"{build.get('stage', 'build')} failed: {(build.get('error') or {}).get('message', '?')}"
            return t
        if verification and not verification.get("passed"):
            t.status = "rejected"
            hint = "" if self.opts.tolerance is not None else "; --tolerance X accepts lossy variants"
            t.reason = (f"verification failed: max rel diff {verification.get('max_rel')} beyond tolerance "
                        f"({self.tolerance['source']} {self.tolerance['rtol']:g}){hint}")
            return t
        if meas is not None and meas.get("status") == "failed":
            t.status, t.error = "failed", meas.get("error")
            t.reason = f"benchmark failed: {(meas.get('error') or {}).get('message', '?')}"
            return t
        if winner is not None and c.id == winner.id:
            t.status, t.reason = "winner", "fastest verified candidate" if self.opts.objective != "size" else \
                "smallest verified candidate, fastest of its size"
            return t
        if c.id in self.pruned:
            rung_p, reason = self.pruned[c.id]
            t.status, t.reason = "pruned", f"rung {rung_p}: {reason}"
            return t
        if c.id == self.unexported:
            t.status, t.reason = "finalist", "fastest verified candidate, but not faster than the model as exported"
            return t
        if c.id in self.pool and fig is not None:
            t.status = "finalist"
            t.reason = (f"still in the race when the budget ran out (last measured at rung {rung}); the winner "
                        "measured faster" if self.budget_stopped else
                        "survived every rung; the winner was preferred (faster, or lossless within noise)")
            return t
        t.reason = self.not_run.get(c.id) or self.not_run.get(c.build.key) or "not reached"
        return t

    def _result(self, winner: Candidate | None, interrupted: bool = False) -> TuneResult:
        trials: list[Trial] = []
        seen: set[str] = set()
        for c in self.candidates.values():
            trials.append(self._trial(c, winner))
            if not c.baseline:  # the anchor shares Build("") with the no-passes build, which is a trial of its own
                seen.add(c.build.key)
        for b in self.space.builds:  # builds that produced no candidate: failed, rejected, or never run
            if b.key in seen:
                continue
            rec = self.builds.get(b.key)
            c = Candidate.make(b, (rec or {}).get("runtime") or {})
            self.stage_of.setdefault(c.id, "pipelines")
            trials.append(self._trial(c, winner))
        order = {"winner": 0, "anchor": 1, "finalist": 2, "pruned": 3, "rejected": 4, "failed": 5, "not run": 6}
        trials.sort(key=lambda t: (order.get(t.status, 9), t.figure.ratio if t.figure else math.inf))
        anchor = next((t for t in trials if self.anchor is not None and t.candidate.id == self.anchor.id), None)
        win = next((t for t in trials if t.status == "winner"), None)
        engine = self.engine.describe()
        return TuneResult(self.src, self.opts.objective, self.work, trials, win, anchor, self.exported,
                          self.export_notes, list(self.notes), engine, time.time() - self.t0,
                          self.opts.budget_minutes * 60 if self.opts.budget_minutes else None, interrupted,
                          {k: self.reference.get(k) for k in ("format", "input_source", "inputs", "disk_bytes",
                                                              "nodes", "signature")})

    def _write_report(self, result: TuneResult) -> None:
        import json

        from graphopt.tuning.plot import pareto_svg

        try:
            plot = self.work / PLOT_NAME
            plot.write_text(pareto_svg(result))
            result.plot = plot
            tmp = self.work / (REPORT_NAME + ".partial")
            tmp.write_text(json.dumps(result.to_dict(), indent=2, default=str))
            os.replace(tmp, self.work / REPORT_NAME)
        except OSError as exc:
            raise OutputError(f"cannot write the tune report: {exc.strerror or exc}", where=str(self.work)) from None


def _run_local(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    from graphopt.tuning.workers import run_build

    return run_build(spec, timeout=timeout)


def load_report(workdir: str | os.PathLike) -> dict[str, Any]:
    """``report.json`` of a finished (or interrupted) search."""
    import json

    path = Path(workdir) / REPORT_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("no tune report here", where=str(path)) from None


__all__ = ["TuneOptions", "TuneResult", "Trial", "TuneInterrupted", "tune", "load_report", "GraphoptError"]
