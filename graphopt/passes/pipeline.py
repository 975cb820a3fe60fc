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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphopt.errors import GraphoptError, PassError, PluginError, UsageError
from graphopt.graph.checks import check_graph
from graphopt.model import Model
from graphopt.passes import transform_string as transform_spec
from graphopt.passes.base import Pass, PassResult
from graphopt.plugins import BUILTIN_MODULES, Host, default_host
from graphopt.runtime import memory

CONFIG_FILES = ("graphopt.toml", "pyproject.toml")


def read_config_table(path: Path) -> dict[str, Any]:
    """The graphopt table of a TOML file: ``[tool.graphopt]``, or the whole file for ``graphopt.toml``."""
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError("config file not found", where=where, hint="give a TOML file with 'transforms' or "
                         "'pipeline' (or a pyproject.toml with [tool.graphopt])") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config file: {exc}", where=where) from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file is not valid TOML: {exc}", where=where) from None
    tool = data.get("tool")
    if isinstance(tool, dict) and "graphopt" in tool:
        table = tool["graphopt"]
    elif path.name == "pyproject.toml":
        raise UsageError("pyproject.toml has no [tool.graphopt] table", where=where,
                         hint='add [tool.graphopt] with transforms = "..." or pipeline = [...]')
    else:
        table = data
    if not isinstance(table, dict):
        raise UsageError("[tool.graphopt] must be a table", where=where)
    return table


def find_config(start: str | Path = ".") -> Path | None:
    """The config a run in ``start`` uses: ``graphopt.toml``, else a ``pyproject.toml`` with ``[tool.graphopt]``.

    Looks in ``start`` and its parents, nearest first, like pytest and ruff do.
    """
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        if (folder / "graphopt.toml").is_file():
            return folder / "graphopt.toml"
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            try:
                data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
                continue
            if isinstance(data.get("tool"), dict) and "graphopt" in data["tool"]:
                return pyproject
    return None


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


Step = Pass | Repeat


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
    """The final model, one record per pass run, and notes (e.g. a repeat group that hit its bound)."""

    model: Model
    records: list[PassRecord]
    seconds: float
    spec: str
    notes: list[str] = field(default_factory=list)

    @property
    def rolled_back(self) -> list[PassRecord]:
        return [r for r in self.records if r.status == "rolled_back"]

    @property
    def modified(self) -> bool:
        return any(r.status == "applied" for r in self.records)

    @property
    def lossy(self) -> bool:
        return any(r.lossy and r.status == "applied" for r in self.records)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "seconds": self.seconds, "notes": list(self.notes),
                "passes": [r.to_dict() for r in self.records]}


@dataclass
class RunContext:
    """Shared by the hooks of one pipeline run. ``state`` is free for plugins to use."""

    host: Host
    keep_going: bool = False
    validate: bool = True
    records: list[PassRecord] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Pipeline:
    """An ordered list of passes and repeat groups."""

    def __init__(self, steps: Iterable[Any] = (), *, host: Host | None = None) -> None:
        self.host = host or default_host()
        self.steps: list[Step] = []
        for step in steps:
            self.steps.extend(self._resolve(step))

    # --- building ----------------------------------------------------------------

    def _resolve(self, step: Any, _seen: tuple[str, ...] = ()) -> list[Step]:
        if isinstance(step, Pass):
            return [self._with_origin(step)]
        if isinstance(step, Repeat):
            return [Repeat([s for inner in step.steps for s in self._resolve(inner)], step.max_iterations)]
        if isinstance(step, Pipeline):
            return list(step.steps)
        if isinstance(step, type) and issubclass(step, Pass):
            return [self._with_origin(step())]
        if isinstance(step, str):
            return self._from_items(transform_spec.parse(step), _seen, text=step)
        if isinstance(step, (transform_spec.StepSpec, transform_spec.GroupSpec)):
            return self._from_items([step], _seen)
        raise UsageError(f"cannot use {step!r} as a pipeline step",
                         hint="give a Pass, a Repeat, a Pipeline or a transform string")

    def _with_origin(self, pass_: Pass) -> Pass:
        # A pass object built in code gets the origin of the class registered under its name,
        # so records and errors name the plugin it came from, as for passes named in text.
        if pass_.origin is None:
            info = self.host.registry.passes.get(pass_.name)
            pass_.origin = info.origin if info is not None and info.cls is type(pass_) else "python"
        return pass_

    def _from_items(self, items: Iterable[Any], seen: tuple[str, ...], text: str | None = None) -> list[Step]:
        out: list[Step] = []
        registry = self.host.registry
        for item in items:
            if isinstance(item, transform_spec.GroupSpec):
                out.append(Repeat(self._from_items(item.steps, seen, text), item.max_iterations))
                continue
            try:
                if item.name in registry.presets and item.name not in registry.passes:
                    if item.args:
                        raise UsageError(f"preset '{item.name}' takes no arguments",
                                         hint=f"it stands for: {registry.presets[item.name].transforms}")
                    if item.name in seen:
                        raise UsageError(f"preset '{item.name}' includes itself",
                                         hint=" -> ".join(seen + (item.name,)))
                    preset = registry.presets[item.name]
                    try:
                        out.extend(self._from_items(transform_spec.parse(preset.transforms), seen + (item.name,)))
                    except UsageError as exc:
                        exc.where = f"preset {item.name} from {preset.origin}" + (f", {exc.where}" if exc.where else "")
                        raise
                    continue
                out.append(registry.create(item.name, item.options()))
            except UsageError as exc:
                if text is not None and not exc.details:  # point at the step in the text it came from
                    exc.details = transform_spec.pointer(text, item.position)
                raise
        return out

    @classmethod
    def parse(cls, text: str, *, host: Host | None = None) -> "Pipeline":
        """A pipeline from a transform string (GTT syntax, plus presets and ``{ ... }*N`` groups)."""
        return cls([text], host=host)

    @classmethod
    def from_config(cls, source: str | Path | dict[str, Any], *, host: Host | None = None) -> "Pipeline":
        """From ``graphopt.toml``/``pyproject.toml`` (``[tool.graphopt]`` or top level) or a dict.

        Keys: ``transforms = "gtt string"``, or ``pipeline = [...]`` whose items are
        transform strings, ``{pass = "name", <options>}`` tables, or
        ``{repeat = [...], max_iterations = N}`` tables. Other keys are left to the caller.
        """
        where = str(source) if not isinstance(source, dict) else "config"
        table = source if isinstance(source, dict) else read_config_table(Path(source))
        has_t, has_p = "transforms" in table, "pipeline" in table
        if has_t == has_p:
            raise UsageError("config needs exactly one of 'transforms' or 'pipeline'", where=where,
                             hint='e.g. transforms = "strip_unused_nodes fold_constants(ignore_errors=true)"')
        if has_t:
            if not isinstance(table["transforms"], str):
                raise UsageError("'transforms' must be a string", where=where)
            return cls([table["transforms"]], host=host)
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
                n = item.get("max_iterations", transform_spec.DEFAULT_REPEAT)
                if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= transform_spec.MAX_REPEAT:
                    raise UsageError(f"max_iterations must be an integer from 1 to {transform_spec.MAX_REPEAT}, "
                                     f"got {n!r}", where=where)
                unknown = sorted(set(item) - {"repeat", "max_iterations"})
                if unknown:
                    raise UsageError(f"unknown key {unknown[0]!r} in a repeat table", where=where,
                                     hint="a repeat table has 'repeat' and 'max_iterations'")
                out.append(transform_spec.GroupSpec(tuple(inner), n))
            elif isinstance(item, dict) and "pass" in item:
                if not isinstance(item["pass"], str):
                    raise UsageError(f"'pass' must be a pass name, got {item['pass']!r}", where=where)
                args: list[tuple[str, str]] = []
                for key, value in item.items():
                    if key == "pass":
                        continue
                    for v in value if isinstance(value, list) else [value]:
                        if isinstance(v, (dict, list)):
                            raise UsageError(f"option '{key}' of {item['pass']} must be a value or a list of values",
                                             where=where)
                        args.append((key, str(v).lower() if isinstance(v, bool) else str(v)))
                out.append(transform_spec.StepSpec(item["pass"], tuple(args)))
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
        start = time.perf_counter()
        self._notify("graphopt_pipeline_start", pipeline=self, model=model, context=ctx)
        try:
            final = self.host.pm.hook.graphopt_run_pipeline(pipeline=self, model=model, context=ctx)
        except GraphoptError:
            raise
        except Exception as exc:  # only a plugin's wrapper can get here: passes' errors are PassErrors
            raise PluginError(f"a graphopt_run_pipeline wrapper raised {type(exc).__name__}: {exc}",
                              where="plugins", hint="run with --no-plugins to find which") from exc
        if not isinstance(final, Model):
            raise PluginError(f"graphopt_run_pipeline returned {type(final).__name__}, not a Model", where="plugins")
        result = PipelineResult(final, ctx.records, time.perf_counter() - start, self.spec, notes=ctx.notes)
        self._notify("graphopt_pipeline_finish", pipeline=self, result=result, context=ctx)
        return result

    def _notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call an observer hook; a plugin that raises becomes a PluginError naming it."""
        caller = getattr(self.host.pm.hook, hook_name)
        impls = caller.get_hookimpls()
        if any(i.wrapper or i.hookwrapper for i in impls):  # wrappers need pluggy's own calling loop
            try:
                caller(**kwargs)
            except GraphoptError:
                raise
            except Exception as exc:
                raise PluginError(f"hook {hook_name} raised {type(exc).__name__}: {exc}", where="plugins") from exc
            return
        for impl in reversed(impls):  # pluggy's order: last registered first
            try:
                impl.function(*[kwargs[a] for a in impl.argnames])
            except GraphoptError:
                raise
            except Exception as exc:
                origin = self.host.pm.origin_of(impl.plugin_name)
                raise PluginError(f"{hook_name} of plugin '{impl.plugin_name}' raised {type(exc).__name__}: {exc}",
                                  where=f"plugin {origin}",
                                  hint=f"run with --no-plugins, or --plugins without {impl.plugin_name}") from exc

    def run_steps(self, model: Model, context: RunContext) -> Model:
        """Run the steps without the pipeline hooks around them (the default ``graphopt_run_pipeline``)."""
        return self._run_steps(self.steps, model, context, iteration=None)

    def _run_steps(self, steps: list[Step], model: Model, ctx: RunContext, iteration: int | None) -> Model:
        for step in steps:
            if isinstance(step, Repeat):
                for i in range(1, step.max_iterations + 1):
                    n_before = len(ctx.records)
                    model = self._run_steps(step.steps, model, ctx, iteration=i)
                    if not any(r.status == "applied" for r in ctx.records[n_before:]):
                        break
                else:
                    ctx.notes.append(f"{step.spec}: still changing the graph after {step.max_iterations} "
                                     "iterations; stopped at the bound")
            else:
                model = self._run_pass(step, model, ctx, iteration)
                # The previous pass's graph (and any copy a pass made) is garbage now; glibc keeps such
                # pages in TF's thread arenas unless asked, so hand them back before the next pass.
                memory.release()
        return model

    def _run_pass(self, pass_: Pass, model: Model, ctx: RunContext, iteration: int | None) -> Model:
        hook = self.host.pm.hook
        origin = str(pass_.origin or "python")
        hist_before = op_histogram(model.graph_def)
        record = PassRecord(name=pass_.name, spec=pass_.spec, origin=origin, status="failed", seconds=0.0,
                            nodes_before=len(model.graph_def.node), nodes_after=len(model.graph_def.node),
                            size_before=model.size_bytes, size_after=model.size_bytes, iteration=iteration,
                            lossy=bool(pass_.lossy))
        self._notify("graphopt_pass_start", pass_=pass_, model=model, context=ctx)
        t0 = time.perf_counter()
        try:
            # A pass that may edit its input gets its own copy, so rolling back is keeping `model`; the
            # others (native transforms, passes that copy what they change) skip it: 100 MB on ResNet50.
            private = pass_.edits_input or self._has_run_pass_wrappers()
            given = model.copy() if private else model
            result = hook.graphopt_run_pass(pass_=pass_, model=given, context=ctx)
            if not isinstance(result, PassResult):
                raise PassError(f"pass returned {type(result).__name__}, not a PassResult",
                                hint="return PassResult(model, modified, counters)")
            if ctx.validate and result.modified:
                check_graph(result.model, must_keep=model.protected_nodes, before=model)
        except Exception as exc:  # contain any failure of a pass: name it, then stop or roll back
            record.seconds = time.perf_counter() - t0
            error = self._pass_error(pass_, origin, exc, ctx)
            rolled_back = ctx.keep_going or pass_.ignore_errors
            record.status = "rolled_back" if rolled_back else "failed"
            record.error = error.message
            ctx.records.append(record)
            self._notify("graphopt_pass_failed", pass_=pass_, model=model, error=error, context=ctx,
                         rolled_back=rolled_back)
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
        self._notify("graphopt_pass_finish", pass_=pass_, before=model, result=result, context=ctx)
        return after if result.modified else model

    def _has_run_pass_wrappers(self) -> bool:
        # A plugin wrapping graphopt_run_pass may edit the model it is given; then every pass gets a copy.
        return any(i.plugin_name not in BUILTIN_MODULES for i in self.host.pm.hook.graphopt_run_pass.get_hookimpls())

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
