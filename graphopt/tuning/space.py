"""What ``graphopt tune`` searches: candidates made of a build (pipeline, target, precision) and runtime settings.

A :class:`Candidate` is one servable variant:

* its **build** -- the pipeline (a preset or transform string; ``""`` runs no
  pass), the target that turns the optimized graph into the runtime's form
  (``tensorflow`` unless a target plugin is installed) and the target's
  precision -- is what produces an artifact, once, in a child process;
* its **runtime settings** (for TensorFlow: the runtime Grappler mode and the
  intra/inter-op thread counts of the shipped session config) are what the
  server is started with; candidates differing only there share one artifact.

The search is staged, cheapest dimension first (see :mod:`graphopt.tuning.search`):
every build with the runtime setting its graph calls for, then the other runtime
modes of the best builds, then thread settings of the best of those. A target is
just another build dimension: :func:`build_space` lists the registry's targets
when the plugin host has any (``registry.targets``), each with its precisions.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from graphopt.errors import UsageError

TFSERVING = "tfserving"  # graphopt.targets.base.DEFAULT_TARGET: TF Serving, built in
NO_PASSES = ""
RUNTIME_MODES = ("off", "remap", "constfold", "full")  # graphopt.runtime.config.RUNTIME_OPTIMIZERS
OBJECTIVES = ("latency", "size", "cold-start")


def _digest(data: Any, n: int = 10) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:n]


@dataclass(frozen=True)
class Build:
    """What produces one artifact: a pipeline run, then the target's conversion at a precision."""

    pipeline: str
    target: str = TFSERVING
    precision: str = "f32"

    @property
    def key(self) -> str:
        return "b" + _digest([self.pipeline, self.target, self.precision])

    @property
    def label(self) -> str:
        name = self.pipeline or "no passes"
        if self.target != TFSERVING or self.precision != "f32":
            name += f" -> {self.target}" + (f" {self.precision}" if self.precision else "")
        return name

    def to_dict(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "target": self.target, "precision": self.precision}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Build":
        return cls(d["pipeline"], d.get("target", TFSERVING), d.get("precision", "f32"))


@dataclass(frozen=True)
class Candidate:
    """One servable variant: a build plus runtime settings. ``baseline`` marks the model as the user exported it."""

    build: Build
    runtime: tuple[tuple[str, Any], ...] = ()
    baseline: bool = False

    @classmethod
    def make(cls, build: Build, runtime: Mapping[str, Any], baseline: bool = False) -> "Candidate":
        return cls(build, tuple(sorted(runtime.items())), baseline)

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.runtime)

    @property
    def id(self) -> str:
        return ("base-" if self.baseline else "c") + _digest([self.build.to_dict(), self.runtime, self.baseline])

    @property
    def label(self) -> str:
        if self.baseline:
            return "as exported"
        return f"{self.build.label} | {runtime_label(self.settings)}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "build": self.build.to_dict(), "build_key": self.build.key,
                "runtime": self.settings, "baseline": self.baseline}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Candidate":
        return cls.make(Build.from_dict(d["build"]), d.get("runtime") or {}, bool(d.get("baseline")))


def runtime_label(settings: Mapping[str, Any]) -> str:
    """``remap, threads 2/1``; TF's defaults (0/0) are left out."""
    parts = []
    if "optimizer" in settings:
        parts.append(str(settings["optimizer"]))
    intra, inter = settings.get("intra_op", 0), settings.get("inter_op", 0)
    if intra or inter:
        parts.append(f"threads {intra}/{inter}")
    extra = {k: v for k, v in settings.items() if k not in ("optimizer", "intra_op", "inter_op")}
    parts.extend(f"{k}={v}" for k, v in sorted(extra.items()))
    return ", ".join(parts) or "defaults"


@dataclass
class SearchSpace:
    """The dimensions searched. ``runtime`` maps a target to its runtime dimensions, searched in order."""

    builds: list[Build]
    runtime: dict[str, list[tuple[str, list[Any]]]] = field(default_factory=dict)
    fixed_runtime: dict[str, Any] | None = None  # every candidate runs with exactly these (fleet: server-wide)
    top_builds: int = 3  # how many of the best builds get their runtime modes searched
    top_threads: int = 2  # how many of the best candidates get their thread settings searched

    def to_dict(self) -> dict[str, Any]:
        return {"builds": [b.to_dict() for b in self.builds], "runtime": self.runtime,
                "fixed_runtime": self.fixed_runtime, "top_builds": self.top_builds, "top_threads": self.top_threads}


def thread_settings(cores: int | None = None) -> list[tuple[int, int]]:
    """(intra_op, inter_op) pairs worth trying: TF's default (0/0 = all cores), all cores with one inter-op
    thread, and half of them (batch-1 serving rarely has parallel branches to feed more inter-op threads)."""
    cores = cores or os.cpu_count() or 1
    pairs = [(0, 0), (cores, 1), (max(1, cores // 2), 1)]
    return list(dict.fromkeys(pairs))


def plugin_pipelines(host: Any, base: str) -> list[str]:
    """``base`` followed by each pass a third-party plugin registered that needs no option: plugin passes are searched."""
    out = []
    for name, info in sorted(host.registry.passes.items()):
        if info.origin.kind != "plugin":
            continue
        options = getattr(info.cls, "options", {}) or {}
        if any(getattr(o, "required", False) for o in options.values()):
            continue  # a pass that needs options cannot be guessed into a pipeline
        out.append(f"{base} {name}".strip())
    return out


def registry_targets(host: Any) -> dict[str, Any]:
    """The targets the plugin host registered, by name (TF Serving's is built in)."""
    return dict(getattr(host.registry, "targets", None) or {})


def target_precisions(info: Any) -> dict[str, Any]:
    """A registered target's precisions: name -> :class:`graphopt.targets.Precision`."""
    cls = getattr(info, "cls", info)
    return dict(getattr(cls, "precisions", None) or {"f32": None})


def is_lossy(build: Build, host: Any) -> bool:
    """Whether a build changes outputs on purpose: a lossy pass in its pipeline or a lossy target precision."""
    from graphopt.passes.pipeline import Pipeline

    if build.pipeline and any(getattr(p, "lossy", False) for p in Pipeline.parse(build.pipeline, host=host).passes()):
        return True
    info = registry_targets(host).get(build.target)
    prec = target_precisions(info).get(build.precision) if info is not None else None
    return bool(getattr(prec, "lossy", False))


def needs_samples(build: Build, host: Any) -> bool:
    """Whether the build's precision is calibrated on the user's data (int8 post-training quantization)."""
    info = registry_targets(host).get(build.target)
    prec = target_precisions(info).get(build.precision) if info is not None else None
    return bool(getattr(prec, "needs_samples", False))


def build_space(host: Any, *, pipelines: Sequence[str] | None = None, targets: Sequence[str] | None = None,
                precisions: Sequence[str] | None = None, runtime_modes: Sequence[str] | None = None,
                threads: Sequence[tuple[int, int]] | None = None, fixed_runtime: Mapping[str, Any] | None = None,
                include_plugins: bool = True) -> SearchSpace:
    """The default search space from what the plugin host knows, narrowed by the arguments.

    ``pipelines``: presets / transform strings. By default TF Serving gets every
    registered preset (plugin presets included), no passes at all, and the
    default preset followed by each option-free plugin pass; any other target
    gets its own default pipeline (``Target.transforms``: e.g. OpenVINO's has no
    TensorFlow-only fused kernels) and no passes. ``targets``: target names
    (default: every registered target). ``precisions``: keep only these target
    precisions. ``runtime_modes`` / ``threads``: TF Serving's runtime
    dimensions. ``fixed_runtime`` pins the runtime settings (a fleet shares one
    session config across a server's models).
    """
    from graphopt.passes.pipeline import Pipeline

    registry = host.registry
    known = registry_targets(host)
    given = list(pipelines) if pipelines is not None else None
    for spec in given or []:  # a typo fails here, before anything runs
        if spec:
            Pipeline.parse(spec, host=host)
    names = list(targets) if targets is not None else [TFSERVING, *sorted(t for t in known if t != TFSERVING)]
    for name in names:
        if name != TFSERVING and name not in known:
            raise UsageError(f"unknown target '{name}'", where="--targets",
                             hint=f"targets: {', '.join([TFSERVING, *sorted(t for t in known if t != TFSERVING)])}")
    builds: list[Build] = []
    for target in names:
        if given is not None:
            specs = given
        elif target == TFSERVING:
            from graphopt.optimizer import default_spec

            specs = [*registry.presets, NO_PASSES]
            if include_plugins:
                specs += plugin_pipelines(host, default_spec(host))
        else:
            cls = getattr(known[target], "cls", None)
            specs = [getattr(cls, "transforms", None) or "", NO_PASSES]
        precs = ["f32"] if target not in known else list(target_precisions(known[target]))
        if precisions is not None:
            precs = [p for p in precs if p in precisions]
        for pipeline in dict.fromkeys(specs):
            for precision in precs:
                builds.append(Build(pipeline, target, precision))
    if not builds:
        raise UsageError("the search space is empty", where="graphopt tune",
                         hint="check --pipelines, --targets and --precisions")
    modes = list(runtime_modes) if runtime_modes is not None else list(RUNTIME_MODES)
    bad = [m for m in modes if m not in RUNTIME_MODES]
    if bad:
        raise UsageError(f"unknown runtime mode {', '.join(bad)}", where="--runtime-modes",
                         hint=f"modes: {', '.join(RUNTIME_MODES)}")
    pairs = list(threads) if threads is not None else thread_settings()
    runtime: dict[str, list[tuple[str, list[Any]]]] = {TFSERVING: [("optimizer", modes),
                                                                  ("threads", [list(p) for p in pairs])]}
    return SearchSpace(list(dict.fromkeys(builds)), runtime, dict(fixed_runtime) if fixed_runtime else None)


def expand(candidate: Candidate, dimension: str, values: Iterable[Any]) -> list[Candidate]:
    """``candidate`` with one runtime dimension set to each of ``values`` (itself excluded)."""
    out = []
    for value in values:
        settings = candidate.settings
        if dimension == "threads":
            settings["intra_op"], settings["inter_op"] = int(value[0]), int(value[1])
        else:
            settings[dimension] = value
        c = Candidate.make(candidate.build, settings)
        if c != candidate:
            out.append(c)
    return out
