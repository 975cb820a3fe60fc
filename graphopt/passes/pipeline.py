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

import dataclasses
import difflib
import time
import tomllib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from graphopt.errors import GraphoptError, PassError, PluginError, ResourceError, UsageError
from graphopt.graph.checks import check_graph
from graphopt.graph.edit import prune_functions
from graphopt.graph.functions import apply_to_functions, function_histograms
from graphopt.model import Model
from graphopt.passes import transform_string as transform_spec
from graphopt.passes.base import Pass, PassResult
from graphopt.plugins import BUILTIN_MODULES, Host, default_host
from graphopt.runtime import memory
from graphopt.security.sandbox import with_shared_sandbox

CONFIG_FILES = ("graphopt.toml", "pyproject.toml")


CONFIG_KEYS = ("transforms", "pipeline")


def read_config_table(path: Path) -> dict[str, Any]:
    """The graphopt table of a TOML file: ``[tool.graphopt]``, or the whole file for ``graphopt.toml``."""
    return _read_config(path)[0]


def _at_key(exc: UsageError, where: str, key: str) -> UsageError:
    """``exc`` located at ``key`` of config file ``where`` (once: the innermost key wins)."""
    if not getattr(exc, "config_key", None):
        exc.config_key = key  # type: ignore[attr-defined]
        inner = exc.where if exc.where and exc.where != "--transforms" else ""  # the text is the config's here
        exc.where = f"{where}, key {key}" + (f" ({inner})" if inner else "")
    return exc


def _read_config(path: Path) -> tuple[dict[str, Any], str]:
    """The graphopt table of a TOML file and the key prefix that locates it (``"tool.graphopt."`` or ``""``)."""
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
    except RecursionError:  # tomllib recurses per nesting level: thousands of [[[ exhaust the stack
        raise UsageError("config file nests arrays or tables too deeply to read", where=where,
                         hint="a graphopt config needs a few levels at most; check the file is the one you meant"
                         ) from None
    tool = data.get("tool")
    prefix = ""
    if isinstance(tool, dict) and "graphopt" in tool:
        table, prefix = tool["graphopt"], "tool.graphopt."
    elif path.name == "pyproject.toml":
        raise UsageError("pyproject.toml has no [tool.graphopt] table", where=where,
                         hint='add [tool.graphopt] with transforms = "..." or pipeline = [...]')
    else:
        table = data
    if not isinstance(table, dict):
        raise UsageError("[tool.graphopt] must be a table", where=f"{where}, key tool.graphopt")
    return table, prefix


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
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
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
PassStatus = Literal["applied", "unchanged", "rolled_back", "failed"]


def _spec_of(step: Step) -> str:
    return step.spec


def op_histogram(graph_def: Any) -> Counter:
    return Counter(node.op for node in graph_def.node)


def _delta(before: Counter, after: Counter) -> dict[str, int]:
    return {op: after[op] - before[op] for op in sorted(set(before) | set(after)) if after[op] != before[op]}


def _function_deltas(fns_before: dict[str, Counter], fns_after: dict[str, Counter], main_before: Counter,
                     main_after: Counter) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per changed function ``{nodes_before, nodes_after, ops_delta}`` (a new function has 0 nodes
    before, a removed one 0 after), and the same over the main graph and every function together."""
    functions: dict[str, dict[str, Any]] = {}
    for name in sorted(set(fns_before) | set(fns_after)):
        before, after = fns_before.get(name, Counter()), fns_after.get(name, Counter())
        if before != after or (name in fns_before) != (name in fns_after):
            functions[name] = {"nodes_before": sum(before.values()), "nodes_after": sum(after.values()),
                               "ops_delta": _delta(before, after)}
    total_before, total_after = Counter(main_before), Counter(main_after)
    for hist in fns_before.values():
        total_before.update(hist)
    for hist in fns_after.values():
        total_after.update(hist)
    total = {"nodes_before": sum(total_before.values()), "nodes_after": sum(total_after.values()),
             "ops_delta": _delta(total_before, total_after)}
    return functions, total


@dataclass
class PassRecord:
    """What one pass did in one run."""

    name: str
    spec: str
    origin: str
    status: PassStatus
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
    # Function bodies: per changed function {nodes_before, nodes_after, ops_delta}; functions the pipeline
    # pruned after the pass because nothing calls them any more; nodes and op delta over main graph + functions.
    functions: dict[str, dict[str, Any]] = field(default_factory=dict)
    functions_pruned: list[str] = field(default_factory=list)
    total: dict[str, Any] = field(default_factory=dict)
    # Why a rolled-back pass was rolled back: "ignore_errors" (the step asked for it) or "keep_going".
    rollback: str | None = None
    # With explain=True: per rule and candidate site, fired or why not (graphopt.rewrite.Explanation dicts).
    explanations: list[dict[str, Any]] = field(default_factory=list)

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
    def unexpected_rollbacks(self) -> list[PassRecord]:
        """Passes ``--keep-going`` rolled back (not the ones whose step says ``ignore_errors=true``)."""
        return [r for r in self.rolled_back if r.rollback != "ignore_errors"]

    @property
    def modified(self) -> bool:
        return any(r.status == "applied" for r in self.records)

    @property
    def lossy(self) -> bool:
        return any(r.lossy and r.status == "applied" for r in self.records)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "seconds": self.seconds, "notes": list(self.notes),
                "rolled_back": [{"pass": r.name, "iteration": r.iteration, "rollback": r.rollback, "error": r.error}
                                for r in self.rolled_back],
                "passes": [r.to_dict() for r in self.records]}


@dataclass
class RunContext:
    """Shared by the hooks of one pipeline run. ``state`` is free for plugins to use."""

    host: Host
    keep_going: bool = False
    validate: bool = True
    explain: bool = False
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

        Keys (docs/guide/config.md): ``transforms = "gtt string"``, or ``pipeline = [...]`` whose items are
        transform strings, ``{pass = "name", <options>}`` tables, or ``{repeat = [...], max_iterations = N}``
        tables. Any other key is an error. Every error names the file and the key (``pipeline[2].repeat[0]``).
        """
        if isinstance(source, dict):
            where, table, prefix = "config", source, ""
        else:
            where = str(source)
            table, prefix = _read_config(Path(source))
        unknown = sorted(set(table) - set(CONFIG_KEYS))
        if unknown:
            close = difflib.get_close_matches(unknown[0], CONFIG_KEYS, n=1, cutoff=0.6)
            raise UsageError(f"unknown key '{unknown[0]}'", where=f"{where}, key {prefix}{unknown[0]}",
                             hint=(f"did you mean '{close[0]}'? " if close else "")
                             + "the keys are 'transforms' and 'pipeline' (docs/guide/config.md)")
        has_t, has_p = "transforms" in table, "pipeline" in table
        if has_t == has_p:
            raise UsageError("config needs exactly one of 'transforms' or 'pipeline'",
                             where=where + (f", table {prefix[:-1]}" if prefix else ""),
                             hint='e.g. transforms = "strip_unused_nodes fold_constants(ignore_errors=true)"')
        if has_t:
            key = f"{prefix}transforms"
            if not isinstance(table["transforms"], str):
                raise UsageError("'transforms' must be a string", where=f"{where}, key {key}",
                                 hint='a transform string: transforms = "fold_constants(ignore_errors=true)"')
            try:
                return cls([table["transforms"]], host=host)
            except UsageError as exc:
                raise _at_key(exc, where, key) from None
        pipeline = cls([], host=host)
        pipeline.steps = pipeline._config_steps(table["pipeline"], where, f"{prefix}pipeline")
        return pipeline

    def _config_steps(self, items: Any, where: str, key: str) -> list[Step]:
        """The steps of a ``pipeline`` (or ``repeat``) list; errors name ``where`` and the item's key."""
        if not isinstance(items, list):
            raise UsageError(f"'{key.rpartition('.')[2]}' must be a list", where=f"{where}, key {key}",
                             hint='e.g. pipeline = ["strip_debug_ops", {pass = "fold_constants"}]')
        out: list[Step] = []
        for i, item in enumerate(items):
            at = f"{key}[{i}]"
            try:
                if isinstance(item, str):
                    out.extend(self._from_items(transform_spec.parse(item), (), text=item))
                elif isinstance(item, dict) and "repeat" in item:
                    unknown = sorted(set(item) - {"repeat", "max_iterations"})
                    if unknown:
                        raise UsageError(f"unknown key {unknown[0]!r} in a repeat table",
                                         hint="a repeat table has 'repeat' and 'max_iterations'")
                    n = item.get("max_iterations", transform_spec.DEFAULT_REPEAT)
                    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= transform_spec.MAX_REPEAT:
                        raise UsageError(f"max_iterations must be an integer from 1 to {transform_spec.MAX_REPEAT}, "
                                         f"got {n!r}")
                    out.append(Repeat(self._config_steps(item["repeat"], where, f"{at}.repeat"), n))
                elif isinstance(item, dict) and "pass" in item:
                    if not isinstance(item["pass"], str):
                        raise UsageError(f"'pass' must be a pass name, got {item['pass']!r}")
                    args: list[tuple[str, str]] = []
                    for name, value in item.items():
                        if name == "pass":
                            continue
                        for v in value if isinstance(value, list) else [value]:
                            if isinstance(v, (dict, list)):
                                raise UsageError(f"option '{name}' of {item['pass']} must be a value or a list of "
                                                 "values")
                            args.append((name, str(v).lower() if isinstance(v, bool) else str(v)))
                    out.extend(self._from_items([transform_spec.StepSpec(item["pass"], tuple(args))], ()))
                else:
                    raise UsageError(f"cannot read pipeline item {item!r}",
                                     hint='use a string, {pass = "name", ...} or {repeat = [...], max_iterations = N}')
            except UsageError as exc:
                raise _at_key(exc, where, at) from None
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

    @with_shared_sandbox(start=False)  # passes that execute the graph (fold_constants, Grappler) share one child
    def run(self, model: Model, *, keep_going: bool = False, validate: bool = True,
            explain: bool = False, allow_ops: bool | Iterable[str] | None = None) -> PipelineResult:
        """Run every step on ``model`` (which is never modified) and return the result.

        ``explain`` keeps, in each pass record, the pass's explanations (see ``Pass.explains``).

        Passes such as ``fold_constants`` and Grappler execute the graph: ``model`` is first checked
        against the allowlist (:func:`graphopt.security.scan.check_model`; ``allow_ops`` allows more,
        per op) and :class:`~graphopt.errors.UnsafeGraphError` raised before any pass runs.

        On a failing pass: with ``keep_going`` or the pass's ``ignore_errors`` its
        change is rolled back and the run goes on; otherwise a :class:`PassError`
        naming the pass, its origin and the passes before it is raised.
        """
        from graphopt.security.scan import check_model

        check_model(model, allow=allow_ops, action="run the pipeline on it",
                    why="passes such as fold_constants and Grappler execute the graph")
        ctx = RunContext(self.host, keep_going=keep_going, validate=validate, explain=explain)
        start = time.perf_counter()
        self._notify("graphopt_pipeline_start", pipeline=self, model=model, context=ctx)
        try:
            final = self.host.pm.hook.graphopt_run_pipeline(pipeline=self, model=model, context=ctx)
        except GraphoptError as exc:
            # The records so far go with the error: the CLI prints their table, optimize() a partial report.
            if getattr(exc, "partial", None) is None:
                exc.partial = PipelineResult(model, list(ctx.records), time.perf_counter() - start,  # type: ignore
                                             self.spec, notes=ctx.notes)
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
        fn_hist_before = function_histograms(model.graph_def)
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
            if pass_.applies_to_functions and result.model.graph_def.library.function:
                result = self._run_in_functions(pass_, result, ctx)
        except Exception as exc:  # contain any failure of a pass: name it, then stop or roll back
            record.seconds = time.perf_counter() - t0
            error = self._pass_error(pass_, origin, exc, ctx)
            rolled_back = ctx.keep_going or pass_.ignore_errors
            record.status = "rolled_back" if rolled_back else "failed"
            # A step's own ignore_errors=true expects failures; --keep-going rolls back ones nobody expected.
            record.rollback = ("ignore_errors" if pass_.ignore_errors else "keep_going") if rolled_back else None
            record.error = error.message
            ctx.records.append(record)
            self._notify("graphopt_pass_failed", pass_=pass_, model=model, error=error, context=ctx,
                         rolled_back=rolled_back)
            if not rolled_back:
                raise error from exc
            return model
        after = result.model
        if result.modified and after.graph_def.library.function:
            # Calls a pass inlined or dropped leave their functions behind; TF would load them for nothing.
            if after.graph_def is model.graph_def:
                after = after.copy()
            record.functions_pruned = prune_functions(after.graph_def)
            result = dataclasses.replace(result, model=after)  # hooks see the model the run goes on with
        record.seconds = time.perf_counter() - t0
        hist_after = op_histogram(after.graph_def)
        record.status = "applied" if result.modified else "unchanged"
        record.nodes_after = len(after.graph_def.node)
        record.size_after = after.size_bytes
        record.ops_delta = {op: hist_after[op] - hist_before[op] for op in sorted(set(hist_before) | set(hist_after))
                            if hist_after[op] != hist_before[op]}
        record.functions, record.total = _function_deltas(fn_hist_before, function_histograms(after.graph_def),
                                                          hist_before, hist_after)
        record.counters = dict(result.counters)
        record.notes = list(result.notes)
        if ctx.explain:
            record.explanations = [e.to_dict() if hasattr(e, "to_dict") else dict(e) for e in result.explanations]
        ctx.records.append(record)
        self._notify("graphopt_pass_finish", pass_=pass_, before=model, result=result, context=ctx)
        return after if result.modified else model

    @staticmethod
    def _run_in_functions(pass_: Pass, result: PassResult, ctx: RunContext) -> PassResult:
        """The pass again on every function body (``Pass.applies_to_functions``), merged into one result."""
        def check(after: Model, before: Model) -> None:
            check_graph(after, must_keep=before.protected_nodes, before=before)

        graph_def, done = apply_to_functions(pass_.run, result.model, check=check if ctx.validate else None)
        counters = Counter(result.counters)
        counters.update(done.counters)
        notes = list(result.notes) + done.notes
        if done.skipped:
            first, why = next(iter(sorted(done.skipped.items())))
            notes.append(f"{len(done.skipped)} function(s) left out, they cannot be converted ({first}: {why})")
        changes: dict[str, Any] = {"counters": dict(counters), "notes": notes}
        if hasattr(result, "explanations"):
            changes["explanations"] = list(result.explanations) + done.explanations
        if done.changed:
            changes["model"] = result.model.with_graph(graph_def)
            changes["modified"] = True
        return dataclasses.replace(result, **changes)

    def _has_run_pass_wrappers(self) -> bool:
        # A plugin wrapping graphopt_run_pass may edit the model it is given; then every pass gets a copy.
        return any(i.plugin_name not in BUILTIN_MODULES for i in self.host.pm.hook.graphopt_run_pass.get_hookimpls())

    @staticmethod
    def _pass_error(pass_: Pass, origin: str, exc: BaseException, ctx: RunContext) -> GraphoptError:
        before = [r.name for r in ctx.records if r.status in ("applied", "unchanged")]
        ran = f"after {', '.join(before[-5:])}" if before else "as the first pass"
        where = f"pass {pass_.name} from {origin}"
        function = getattr(exc, "function", None)
        if function:  # raised inside a function body (Pass.applies_to_functions)
            where = f"{where}, in function {function}"
        if isinstance(exc, GraphoptError):
            message, hint, details = exc.message, exc.hint, list(exc.details)
            if exc.where:
                where = f"{where}, {exc.where}"
        else:
            message = f"{type(exc).__name__}: {exc}"
            hint, details = None, []
        details.append(f"ran {ran}")
        hint = hint or "rerun with --debug for the traceback, or with --keep-going to skip this pass"
        if isinstance(exc, ResourceError):  # a sandbox limit the pass's native code hit keeps its class (exit 8)
            return ResourceError(f"pass '{pass_.name}' failed: {message}", where=where, hint=hint, details=details,
                                 limit=exc.limit)
        return PassError(f"pass '{pass_.name}' failed: {message}", where=where, hint=hint, details=details)
