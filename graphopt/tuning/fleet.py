"""``graphopt fleet models.config --out NEW_ROOT``: re-optimize, verify and benchmark every model a TF Serving config serves.

For each model of the ``ModelServerConfig`` (the text file ``graphopt
serving-config`` writes, TF Serving's ``--model_config_file``) and each version
its version policy serves, one **job**:

1. the served version (``base_path/<version>``) is the source;
2. a preset is applied (``--preset``, default ``serving``) or the search of
   ``graphopt tune`` runs (``--tune``), with the runtime settings pinned to the
   one session config the server will use for every model (TF Serving's session
   config is server-wide, so a fleet cannot give each model its own);
3. every candidate is verified against the served version's outputs and
   benchmarked against the served version itself, side by side, interleaved,
   each in its own worker process (see :mod:`graphopt.tuning.search`);
4. the result is exported as the same version number under ``NEW_ROOT/<model>/``.

Jobs run one at a time on this machine, or as Ray tasks each holding a
benchmark node of its own (:mod:`graphopt.tuning.engine`). A job that fails is
recorded and the others go on. The fleet log (``NEW_ROOT/.graphopt-fleet/fleet.jsonl``)
and each job's trial log make a rerun skip what finished and resume what did not.

At the end, ``NEW_ROOT/models.config`` keeps every model's version policy and
labels and points at ``NEW_ROOT/<model>`` -- or, for a model with a failed job,
still at its original base (the report says which), so the new config always
serves every model. The server-wide session/platform config sits beside it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphopt.errors import InputError, OutputError, UsageError
from graphopt.tuning.log import TrialLog

FLEET_DIR = ".graphopt-fleet"
DONE = ("ok", "kept")  # a new version written, or the served one kept (nothing verified beat it)
FLEET_LOG = "fleet.jsonl"
REPORT_NAME = "fleet-report.json"
Event = Callable[[str, dict[str, Any]], None]


class FleetInterrupted(KeyboardInterrupt):
    """Ctrl-C during a fleet run: ``result`` holds the jobs that finished (also in the fleet log)."""

    def __init__(self, result: "FleetResult") -> None:
        super().__init__("interrupted")
        self.result = result


@dataclass
class ServedEntry:
    """One model of the config, with the versions its policy serves (as found on disk)."""

    name: str
    base_path: Path
    versions: list[int]
    platform: str
    problem: str | None = None


@dataclass
class FleetResult:
    config: Path
    out_root: Path
    jobs: list[dict[str, Any]]
    models_config: Path | None = None
    server_files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    engine: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False
    mode: str = "preset"
    runtime: dict[str, Any] = field(default_factory=dict)

    @property
    def report(self) -> Path:
        return self.out_root / FLEET_DIR / REPORT_NAME

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for j in self.jobs:
            out[j["status"]] = out.get(j["status"], 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"config": str(self.config), "out_root": str(self.out_root), "mode": self.mode,
                "runtime": self.runtime, "models_config": str(self.models_config) if self.models_config else None,
                "server_files": [str(p) for p in self.server_files], "notes": self.notes, "engine": self.engine,
                "seconds": self.seconds, "interrupted": self.interrupted, "counts": self.counts(),
                "jobs": self.jobs}


def read_config(path: str | Path) -> tuple[Any, list[ServedEntry]]:
    """The parsed ``ModelServerConfig`` and, per model, the versions its policy serves."""
    from graphopt.serving.export import versions
    from graphopt.serving.model_config import parse_model_config

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read the model config: {exc.strerror or exc}", where=str(path)) from None
    config = parse_model_config(text, where=str(path))
    if not config.HasField("model_config_list"):
        raise InputError("the config has no model_config_list", where=str(path),
                         hint="fleet reads the file graphopt serving-config writes (model_config_list { config {...} })")
    entries = []
    for mc in config.model_config_list.config:
        base = Path(mc.base_path)
        if not base.is_absolute():  # relative to the config file when it is there, else to the working directory
            base = (path.parent / base) if (path.parent / base).exists() else base.absolute()
        found = versions(base)
        policy = mc.model_version_policy.WhichOneof("policy_choice")
        problem = None
        chosen: list[int]
        if mc.model_platform not in ("", "tensorflow"):
            chosen, problem = [], f"platform {mc.model_platform!r}: fleet re-optimizes TensorFlow models only"
        elif not found:
            chosen, problem = [], f"no version folder under {base}"
        elif policy == "all":
            chosen = found
        elif policy == "specific":
            wanted = sorted(set(mc.model_version_policy.specific.versions))
            missing = [v for v in wanted if v not in found]
            chosen = [v for v in wanted if v in found]
            if missing:
                problem = f"version(s) {', '.join(map(str, missing))} named by the policy are not on disk"
        else:  # latest (the default policy): the newest num_versions (1 when unset)
            n = mc.model_version_policy.latest.num_versions or 1
            chosen = found[-n:]
        # Labels name versions the server loads; a labelled version the policy left out is served too.
        for label_version in mc.version_labels.values():
            if label_version in found and label_version not in chosen:
                chosen.append(label_version)
        entries.append(ServedEntry(mc.name, base, sorted(chosen), mc.model_platform or "tensorflow", problem))
    if not entries:
        raise InputError("the config lists no model", where=str(path))
    return config, entries


def run_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """One model version: tune (or apply the preset), verify, benchmark against the served version, export.

    Runs wherever the engine puts it (this process, or a Ray task on a benchmark
    node); everything it needs is in ``job`` and every path is on shared storage.
    """
    from graphopt.plugins import Host, set_default_host
    from graphopt.tuning.engine import EmbeddedEngine
    from graphopt.tuning.search import TuneOptions, tune
    from graphopt.tuning.space import build_space

    t0 = time.time()
    plugins = job.get("plugins")
    host = Host.create() if plugins is None else Host.create(plugins=bool(plugins), allow=list(plugins) or None)
    set_default_host(host)
    opts = TuneOptions(**job["options"])
    space_args = dict(job.get("space") or {})
    if space_args.get("threads") is not None:
        space_args["threads"] = [tuple(p) for p in space_args["threads"]]
    space = build_space(host, fixed_runtime=job["runtime"], **space_args)
    result = tune(job["src"], job["out"], options=opts, space=space, workdir=job["workdir"],
                  engine=EmbeddedEngine(job.get("jobs", 1)), host=host)
    return summarize(job, result, time.time() - t0)


def summarize(job: Mapping[str, Any], result: Any, seconds: float) -> dict[str, Any]:
    """The fleet report's row for one job, from its tune result."""
    win = result.winner
    best = win or next((t for t in result.trials if t.status == "finalist"), None)
    anchor = result.anchor
    served = {"disk_bytes": result.reference.get("disk_bytes"),
              "median": anchor.figure.median if anchor and anchor.figure else None,
              "load_s": anchor.load_s if anchor else None, "first_s": anchor.first_s if anchor else None}
    new = None
    if best is not None:
        f = best.figure
        new = {"label": best.candidate.label, "pipeline": best.candidate.build.pipeline,
               "target": best.candidate.build.target, "precision": best.candidate.build.precision,
               "runtime": best.candidate.settings, "disk_bytes": best.disk_bytes, "median": f.median if f else None,
               "p10": f.p10 if f else None, "p90": f.p90 if f else None, "ratio": f.ratio if f else None,
               "spread": f.spread if f else None, "rounds": f.rounds if f else None, "max_rel": best.max_rel,
               "verification": best.verification, "load_s": best.load_s, "first_s": best.first_s}
    exported = str(result.exported) if result.exported is not None else None
    if exported is not None:
        status, error = "ok", None
    elif best is not None and best.figure is not None:
        # Verified and measured, but not faster than what is served: the served version stays, copied as it is.
        from graphopt.tuning.targets import install

        status, error = "kept", {"message": "; ".join(result.notes) or "the served version was the fastest"}
        exported = str(install(Path(job["src"]), Path(job["out"]), int(job["version"]), force=True))
    else:
        status = "failed"
        failed = [t for t in result.trials if t.status in ("failed", "rejected")]
        error = {"message": "; ".join(result.notes) or (failed[0].reason if failed else "nothing exported")}
    return {"model": job["model"], "version": job["version"], "status": status, "error": error,
            "source": job["src"], "exported": exported,
            "served": served, "new": new, "counts": result.counts(), "notes": result.notes,
            "tune_report": str(result.report), "seconds": seconds, "objective": result.objective,
            "engine_node": os.uname().nodename}


def fleet(config: str | os.PathLike, out_root: str | os.PathLike, *, tune: bool = False, preset: str | None = None,
          options: Any = None, pipelines: Sequence[str] | None = None, targets: Sequence[str] | None = None,
          precisions: Sequence[str] | None = None, runtime_optimizer: str = "full", restart: bool = False,
          retry: bool = True, engine: Any = None, host: Any = None, on_event: Event | None = None) -> FleetResult:
    """Re-optimize every served model version of ``config`` into ``out_root``; see the module docstring.

    ``tune``: search (``options`` is a :class:`~graphopt.tuning.TuneOptions` for
    each model: budget, tolerance, objective...; ``pipelines``/``targets``/
    ``precisions`` narrow the space), else apply ``preset`` (default
    ``serving``). ``runtime_optimizer``: the server-wide runtime Grappler mode
    every model is verified, measured and served with (TF Serving's default is
    ``full``). Failed jobs run again on a rerun unless ``retry`` is false.
    """
    from graphopt.plugins import default_host
    from graphopt.runtime.config import RUNTIME_OPTIMIZERS
    from graphopt.tuning.engine import EmbeddedEngine
    from graphopt.tuning.search import TuneOptions

    t0 = time.time()
    host = host or default_host()
    emit: Event = on_event or (lambda _k, _d: None)
    if tune and preset:
        raise UsageError("give --tune or --preset, not both", where="graphopt fleet")
    if runtime_optimizer not in RUNTIME_OPTIMIZERS:
        raise UsageError(f"runtime optimizer must be one of {', '.join(RUNTIME_OPTIMIZERS)}", where="--runtime-optimizer")
    config_path = Path(config).absolute()
    parsed, entries = read_config(config_path)
    root = Path(out_root).absolute()
    for e in entries:
        a, b = e.base_path.resolve(), root.resolve()
        if a == b or a in b.parents or b in a.parents:
            raise UsageError(f"the output root overlaps model {e.name}'s base path", where=str(root),
                             hint="write the new repository to another folder; served models are never touched")
    if not tune:
        preset = preset or "serving"
        from graphopt.passes.pipeline import Pipeline

        Pipeline.parse(preset, host=host)  # a typo fails now, not once per model
    work = root / FLEET_DIR
    if restart and work.exists():
        import shutil

        shutil.rmtree(work)
    log = TrialLog(work / FLEET_LOG)
    runtime = {"optimizer": runtime_optimizer, "intra_op": 0, "inter_op": 0}
    base_opts = dict((options or TuneOptions()).__dict__)
    base_opts.update(version=None, force=True, export=True, restart=False)
    if not tune:
        base_opts.update(export_if_slower=True)  # the user chose the preset: exported, and the report says how it ran
    plugins = sorted(name for name, o in host.pm.origins.items() if o.kind == "plugin")
    engine = engine or EmbeddedEngine()
    log.append({"type": "session", "config": str(config_path), "out_root": str(root), "tune": tune, "preset": preset,
                "runtime": runtime, "engine": engine.describe()})
    done: dict[tuple[str, int], dict[str, Any]] = {}
    for rec in log.of_type("job"):
        done[(rec["model"], rec["version"])] = rec
    jobs, skipped = [], []
    for e in entries:
        if e.problem and not e.versions:
            skipped.append({"model": e.name, "version": None, "status": "skipped", "error": {"message": e.problem},
                            "source": str(e.base_path), "served": None, "new": None})
            continue
        for v in e.versions:
            prev = done.get((e.name, v))
            if prev is not None and prev["status"] in DONE and prev.get("exported") and Path(prev["exported"]).is_dir():
                continue
            if prev is not None and prev["status"] == "failed" and not retry:
                continue
            space = ({"pipelines": list(pipelines) if pipelines else None, "targets": list(targets or ["tfserving"]),
                      "precisions": list(precisions) if precisions else None} if tune else
                     {"pipelines": [preset], "targets": ["tfserving"]})
            jobs.append({"model": e.name, "version": v, "src": str(e.base_path / str(v)),
                         "out": str(root / e.name), "workdir": str(work / e.name / str(v)),
                         "options": {**base_opts, "version": v}, "space": space, "runtime": runtime,
                         "plugins": plugins})
        if e.problem:
            skipped.append({"model": e.name, "version": None, "status": "skipped", "error": {"message": e.problem},
                            "source": str(e.base_path), "served": None, "new": None})
    emit("fleet", {"jobs": len(jobs), "done": sum(1 for r in done.values() if r["status"] in DONE),
                   "models": len(entries)})
    interrupted = False
    try:
        for job, res in engine.run(run_job, jobs, bench=True):
            if not isinstance(res, dict) or "model" not in res:  # the job itself raised (engine's guard)
                res = {"model": job["model"], "version": job["version"], "status": "failed",
                       "error": (res or {}).get("error") if isinstance(res, dict) else {"message": str(res)},
                       "source": job["src"], "served": None, "new": None}
            rec = log.append({"type": "job", **res})
            done[(job["model"], job["version"])] = rec
            emit("job_done", rec)
    except KeyboardInterrupt:
        interrupted = True
    rows = [done[(e.name, v)] for e in entries for v in e.versions if (e.name, v) in done] + skipped
    result = FleetResult(config_path, root, [{k: v for k, v in r.items() if k not in ("type", "time")} for r in rows],
                         engine=engine.describe(), seconds=time.time() - t0, interrupted=interrupted,
                         mode="tune" if tune else f"preset {preset}", runtime=runtime)
    if not interrupted:
        _write_config(result, parsed, entries, done, root, runtime)
    _write_report(result)
    if interrupted:
        raise FleetInterrupted(result)
    return result


def _write_config(result: FleetResult, parsed: Any, entries: Sequence[ServedEntry],
                  done: Mapping[tuple[str, int], Mapping[str, Any]], root: Path, runtime: Mapping[str, Any]) -> None:
    """``models.config`` pointing at the new versions (failed models keep their old base), and the session config."""
    from google.protobuf import text_format

    from graphopt.runtime.config import write_serving_config
    from graphopt.serving.model_config import FILE_NAME
    from graphopt.targets.base import write_atomic

    new = type(parsed)()
    new.CopyFrom(parsed)
    by_name = {e.name: e for e in entries}
    for mc in new.model_config_list.config:
        e = by_name[mc.name]
        ok = bool(e.versions) and all((done.get((e.name, v)) or {}).get("status") in DONE for v in e.versions)
        if ok:
            mc.base_path = str(root / e.name)
        else:
            mc.base_path = str(e.base_path)
            result.notes.append(f"{e.name}: still served from {e.base_path} (not every served version was re-optimized)")
    try:
        result.models_config = write_atomic(root / FILE_NAME, text_format.MessageToString(new))
        files = write_serving_config(root, runtime_optimizer=runtime["optimizer"])
    except OSError as exc:
        raise OutputError(f"cannot write the new model config: {exc}", where=str(root)) from None
    result.server_files = [result.models_config, *files.values()]


def _write_report(result: FleetResult) -> None:
    path = result.report
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(result.to_dict(), indent=2, default=str))
    os.replace(tmp, path)
