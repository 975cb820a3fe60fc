"""Pipelines: passes in order, groups repeated until nothing changes, hooks around every step.

Three ways to build the same pipeline::

    Pipeline(["fold_constants(ignore_errors=true)", FoldBatchNorms(), Repeat([...], max_iterations=5)])
    Pipeline.parse("fold_constants(ignore_errors=true) fold_all_batch_norms { ... }*5")
    Pipeline.from_config("pyproject.toml")   # [tool.graphopt] transforms = "..." or pipeline = [...]

Running one gives a :class:`PipelineResult`: the final model and one
:class:`PassRecord` per pass run (nodes and size before/after, op-histogram
delta, counters, time, and whether it was applied, changed nothing, was rolled
back or failed). Each pass receives its own copy of the model, so rolling a
failed pass back is keeping the model it was given.
"""

from __future__ import annotations

import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Union

from graphopt import transform_spec
from graphopt.errors import GraphoptError, PassError, UsageError
from graphopt.graph_check import check_graph
from graphopt.model import Model
from graphopt.passes.base import Pass, PassResult
from graphopt.plugins import Host, default_host


class Repeat:
    """Steps run again and again until none changes the graph, at most ``max_iterations`` times."""

    def __init__(self, steps: Iterable[Any], max_iterations: int = transform_spec.DEFAULT_REPEAT) -> None:
        if max_iterations < 1:
            raise UsageError("a repeat group needs max_iterations >= 1", where="Repeat")
        self.steps = list(steps)
        self.max_iterations = max_iterations

    @property
    def spec(self) -> str:
        return "{ " + " ".join(_spec_of(s) for s in self.steps) + " }*" + str(self.max_iterations)


Step = Union[Pass, Repeat]


def _spec_of(step: Step) -> str:
    return step.spec


def op_histogram(graph_def: Any) -> Counter:
    return Counter(node.op for node in graph_def.node)


@dataclass
class PassRecord:
    """What one pass did in one run."""

    name: str
    spec: str
    origin: str
    status: str  # "applied" | "unchanged" | "rolled_back" | "failed"
    seconds: float
    nodes_before: int
    nodes_after: int
    size_before: int
    size_after: int
    ops_delta: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int | float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    iteration: int | None = None
    lossy: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PipelineResult:
    model: Model
    records: list[PassRecord]
    seconds: float
    spec: str

    @property
    def modified(self) -> bool:
        return any(r.status == "applied" for r in self.records)

    @property
    def lossy(self) -> bool:
        return any(r.lossy and r.status == "applied" for r in self.records)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "seconds": self.seconds, "passes": [r.to_dict() for r in self.records]}


@dataclass
class RunContext:
    """Shared by the hooks of one pipeline run. ``state`` is free for plugins to use."""

    host: Host
    keep_going: bool = False
    validate: bool = True
    records: list[PassRecord] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)


class Pipeline:
    """An ordered list of passes and repeat groups."""

    def __init__(self, steps: Iterable[Any] = (), *, host: Host | None = None) -> None:
        self.host = host or default_host()
        self.steps: list[Step] = []
        for step in steps:
            self.steps.extend(self._resolve(step))

    # --- building ----------------------------------------------------------------

    def _resolve(self, step: Any, _seen: tuple[str, ...] = ()) -> list[Step]:
        if isinstance(step, (Pass, Repeat)):
            return [step]
        if isinstance(step, Pipeline):
            return list(step.steps)
        if isinstance(step, type) and issubclass(step, Pass):
            return [step()]
        if isinstance(step, str):
            return self._from_items(transform_spec.parse(step), _seen)
        if isinstance(step, (transform_spec.StepSpec, transform_spec.GroupSpec)):
            return self._from_items([step], _seen)
        raise UsageError(f"cannot use {step!r} as a pipeline step",
                         hint="give a Pass, a Repeat, a Pipeline or a transform string")

    def _from_items(self, items: Iterable[Any], seen: tuple[str, ...]) -> list[Step]:
        out: list[Step] = []
        registry = self.host.registry
        for item in items:
            if isinstance(item, transform_spec.GroupSpec):
                out.append(Repeat(self._from_items(item.steps, seen), item.max_iterations))
                continue
            if item.name in registry.presets and item.name not in registry.passes:
                if item.args:
                    raise UsageError(f"preset '{item.name}' takes no arguments", where="--transforms")
                if item.name in seen:
                    raise UsageError(f"preset '{item.name}' includes itself", where=f"preset {item.name}")
                preset = registry.presets[item.name]
                out.extend(self._from_items(transform_spec.parse(preset.transforms), seen + (item.name,)))
                continue
            out.append(registry.create(item.name, item.options()))
        return out

    @classmethod
    def parse(cls, text: str, *, host: Host | None = None) -> "Pipeline":
        return cls([text], host=host)

    @classmethod
    def from_config(cls, source: str | Path | dict[str, Any], *, host: Host | None = None) -> "Pipeline":
        """From ``graphopt.toml``/``pyproject.toml`` (``[tool.graphopt]`` or top level) or a dict.

        Keys: ``transforms = "gtt string"``, or ``pipeline = [...]`` whose items are
        transform strings, ``{pass = "name", <options>}`` tables, or
        ``{repeat = [...], max_iterations = N}`` tables.
        """
        where = str(source) if not isinstance(source, dict) else "config"
        if isinstance(source, dict):
            table = source
        else:
            try:
                data = tomllib.loads(Path(source).read_text())
            except FileNotFoundError:
                raise UsageError("config file not found", where=where) from None
            except tomllib.TOMLDecodeError as exc:
                raise UsageError(f"config file is not valid TOML: {exc}", where=where) from None
            table = data.get("tool", {}).get("graphopt", data) if "tool" in data else data
        has_t, has_p = "transforms" in table, "pipeline" in table
        if has_t == has_p:
            raise UsageError("config needs exactly one of 'transforms' or 'pipeline'", where=where,
                             hint='e.g. transforms = "strip_unused_nodes fold_constants(ignore_errors=true)"')
        if has_t:
            return cls([str(table["transforms"])], host=host)
        return cls(cls._config_items(table["pipeline"], where), host=host)

    @staticmethod
    def _config_items(items: Any, where: str) -> list[Any]:
        if not isinstance(items, list):
            raise UsageError("'pipeline' must be a list", where=where)
        out: list[Any] = []
        for item in items:
            if isinstance(item, str):
                out.extend(transform_spec.parse(item))
            elif isinstance(item, dict) and "repeat" in item:
                inner = Pipeline._config_items(item["repeat"], where)
                out.append(transform_spec.GroupSpec(tuple(inner), int(item.get("max_iterations",
                                                                                transform_spec.DEFAULT_REPEAT))))
            elif isinstance(item, dict) and "pass" in item:
                args: list[tuple[str, str]] = []
                for key, value in item.items():
                    if key == "pass":
                        continue
                    for v in value if isinstance(value, list) else [value]:
                        args.append((key, str(v).lower() if isinstance(v, bool) else str(v)))
                out.append(transform_spec.StepSpec(str(item["pass"]), tuple(args)))
            else:
                raise UsageError(f"cannot read pipeline item {item!r}", where=where,
                                 hint='use a string, {pass = "name", ...} or {repeat = [...], max_iterations = N}')
        return out

    @property
    def spec(self) -> str:
        return " ".join(_spec_of(s) for s in self.steps)

    def __str__(self) -> str:
        return self.spec

    def __repr__(self) -> str:
        return f"Pipeline({self.spec!r})"

    def passes(self) -> list[Pass]:
        """Every pass, groups flattened."""
        out: list[Pass] = []

        def walk(steps: list[Step]) -> None:
            for s in steps:
                walk(s.steps) if isinstance(s, Repeat) else out.append(s)

        walk(self.steps)
        return out

    # --- running -----------------------------------------------------------------

    def run(self, model: Model, *, keep_going: bool = False, validate: bool = True) -> PipelineResult:
        """Run every step on ``model`` (which is never modified) and return the result.

        On a failing pass: with ``keep_going`` or the pass's ``ignore_errors`` its
        change is rolled back and the run goes on; otherwise a :class:`PassError`
        naming the pass, its origin and the passes before it is raised.
        """
        ctx = RunContext(self.host, keep_going=keep_going, validate=validate)
        hook = self.host.pm.hook
        start = time.perf_counter()
        hook.graphopt_pipeline_start(pipeline=self, model=model, context=ctx)
        final = self._run_steps(self.steps, model, ctx, iteration=None)
        result = PipelineResult(final, ctx.records, time.perf_counter() - start, self.spec)
        hook.graphopt_pipeline_finish(pipeline=self, result=result, context=ctx)
        return result

    def _run_steps(self, steps: list[Step], model: Model, ctx: RunContext, iteration: int | None) -> Model:
        for step in steps:
            if isinstance(step, Repeat):
                for i in range(1, step.max_iterations + 1):
                    n_before = len(ctx.records)
                    model = self._run_steps(step.steps, model, ctx, iteration=i)
                    if not any(r.status == "applied" for r in ctx.records[n_before:]):
                        break
            else:
                model = self._run_pass(step, model, ctx, iteration)
        return model

    def _run_pass(self, pass_: Pass, model: Model, ctx: RunContext, iteration: int | None) -> Model:
        hook = self.host.pm.hook
        origin = str(getattr(pass_, "origin", "") or "python")
        hist_before = op_histogram(model.graph_def)
        record = PassRecord(name=pass_.name, spec=pass_.spec, origin=origin, status="failed", seconds=0.0,
                            nodes_before=len(model.graph_def.node), nodes_after=len(model.graph_def.node),
                            size_before=model.size_bytes, size_after=model.size_bytes, iteration=iteration,
                            lossy=bool(pass_.lossy))
        hook.graphopt_pass_start(pass_=pass_, model=model, context=ctx)
        t0 = time.perf_counter()
        try:
            result = hook.graphopt_run_pass(pass_=pass_, model=model.copy(), context=ctx)
            if not isinstance(result, PassResult):
                raise PassError(f"pass returned {type(result).__name__}, not a PassResult",
                                hint="return PassResult(model, modified, counters)")
            if ctx.validate and result.modified:
                check_graph(result.model, must_keep=model.protected_nodes)
        except Exception as exc:  # contain any failure of a pass: name it, then stop or roll back
            record.seconds = time.perf_counter() - t0
            error = self._pass_error(pass_, origin, exc, ctx)
            rolled_back = ctx.keep_going or pass_.ignore_errors
            record.status = "rolled_back" if rolled_back else "failed"
            record.error = error.message
            ctx.records.append(record)
            hook.graphopt_pass_failed(pass_=pass_, model=model, error=error, context=ctx, rolled_back=rolled_back)
            if not rolled_back:
                raise error from exc
            return model
        record.seconds = time.perf_counter() - t0
        after = result.model
        hist_after = op_histogram(after.graph_def)
        record.status = "applied" if result.modified else "unchanged"
        record.nodes_after = len(after.graph_def.node)
        record.size_after = after.size_bytes
        record.ops_delta = {op: hist_after[op] - hist_before[op] for op in sorted(set(hist_before) | set(hist_after))
                            if hist_after[op] != hist_before[op]}
        record.counters = dict(result.counters)
        record.notes = list(result.notes)
        ctx.records.append(record)
        hook.graphopt_pass_finish(pass_=pass_, before=model, result=result, context=ctx)
        return after if result.modified else model

    @staticmethod
    def _pass_error(pass_: Pass, origin: str, exc: BaseException, ctx: RunContext) -> PassError:
        before = [r.name for r in ctx.records if r.status in ("applied", "unchanged")]
        ran = f"after {', '.join(before[-5:])}" if before else "as the first pass"
        where = f"pass {pass_.name} from {origin}"
        if isinstance(exc, GraphoptError):
            message, hint, details = exc.message, exc.hint, list(exc.details)
            if exc.where:
                where = f"{where}, {exc.where}"
        else:
            message = f"{type(exc).__name__}: {exc}"
            hint, details = None, []
        details.append(f"ran {ran}")
        return PassError(f"pass '{pass_.name}' failed: {message}", where=where,
                         hint=hint or "rerun with --debug for the traceback, or with --keep-going to skip this pass",
                         details=details)
