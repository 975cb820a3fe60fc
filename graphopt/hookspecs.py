"""graphopt's hooks, grouped by phase. A plugin implements any of them with ``@graphopt.hookimpl``.

Every hook is named ``graphopt_*``. Registration hooks receive a ``register``
callback, so a plugin says what it adds in one call per thing. Run hooks see the
pipeline and each pass as they run; they observe, they may raise to stop the
run, and ``graphopt_run_pass`` / ``graphopt_run_pipeline`` may be wrapped
(``@hookimpl(wrapper=True)``) to change what a pass or a run does. Plugins are
found through the ``graphopt`` entry-point group. These docstrings are the
reference: docs/develop/hooks.md's hook sections are generated from them
(``python docs/develop/hooks_reference.py``, checked by tests/test_docs.py).
Built-in passes, presets, targets and commands are registered through these same
hooks (``graphopt/builtin.py``, ``graphopt/passes/gtt.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from graphopt.model import Model
    from graphopt.passes.base import Pass, PassResult
    from graphopt.passes.pipeline import Pipeline, PipelineResult, RunContext
    from graphopt.targets.base import Target

hookspec = pluggy.HookspecMarker("graphopt")
hookimpl = pluggy.HookimplMarker("graphopt")


# --- registration ------------------------------------------------------------------
# Every registration hook receives a ``register`` callback: a plugin says what it adds in one call per
# thing. They run once per host (each CLI call, each ``Host.create()``), each plugin on its own: a hook
# that raises, or a name already taken, drops that whole plugin (recorded in ``graphopt plugins``) and
# the others load as if it were not installed.


@hookspec
def graphopt_register_passes(register: Callable[[type[Pass]], None]) -> None:
    """Register pass classes: call ``register(PassClass)`` once for each.

    Runs first, before anything is parsed. ``PassClass`` is a :class:`~graphopt.Pass` subclass
    or a ``@function_pass`` function (docs/develop/writing-a-pass.md). Names must be unique across native,
    built-in and plugin passes and presets.
    """


@hookspec
def graphopt_register_presets(register: Callable[..., None]) -> None:
    """Register named pipelines: ``register(name, transforms, description="", lossy=False)``.

    Runs after every plugin's ``graphopt_register_passes``. ``transforms`` is a transform string
    (its syntax is checked here, its pass names when it is used). Presets are usable wherever a
    pass name is, may name other presets and take no arguments. ``lossy=True`` marks a preset
    whose outputs differ on purpose (fp16, int8).
    """


@hookspec
def graphopt_register_targets(register: Callable[[type[Target]], None]) -> None:
    """Register runtime targets: call ``register(TargetClass)`` once for each.

    A target turns an optimized model into a runtime's form, runs it for verification and
    benchmarks, writes the runtime server's model repository and serves it in ``graphopt serve``
    (docs/develop/writing-a-target.md). Names must be unique across targets.
    """


@hookspec
def graphopt_register_commands(register: Callable[..., None]) -> None:
    """Register CLI sub-commands: ``register(name, help, configure, run)``.

    Runs when ``graphopt`` starts, before its arguments are parsed. ``configure(parser)`` adds
    arguments to an argparse sub-parser; ``run(args, ctx) -> int`` does the work and returns an
    exit code. Only command code prints: ``ctx.console`` is the stdout console, ``ctx.err``
    stderr, ``ctx.host`` the plugin host; raise ``graphopt.errors.*`` for failures. Keep module
    imports light: ``--help`` must stay instant.
    """


@hookspec
def graphopt_write_paths() -> "list[str] | None":
    """Folders (or files) the plugin's hooks and passes write to while a model is optimized.

    ``graphopt optimize`` runs the whole run -- loading, passes, hooks, verification -- in one confined
    child process that may write only beneath its own folder (docs/guide/confinement.md). A plugin
    that writes elsewhere during a run (snapshots, logs, caches) returns those paths here; each
    is made writable for the child, with everything beneath it. Called once per run, in graphopt's
    own process; return ``None`` or ``[]`` when nothing is needed (e.g. an option is unset).
    """


# Deprecated aliases (the names before 0.2), honoured until 1.0: each is called exactly like the
# hook it names, right after it, and what it registers lands in the same tables.
DEPRECATED_ALIASES = {
    "register_passes": "graphopt_register_passes",
    "register_presets": "graphopt_register_presets",
    "register_commands": "graphopt_register_commands",
}


@hookspec(warn_on_impl=DeprecationWarning("register_passes is deprecated: use graphopt_register_passes"))
def register_passes(register: Callable[[type[Pass]], None]) -> None:
    """Deprecated alias of ``graphopt_register_passes`` (until 1.0)."""


@hookspec(warn_on_impl=DeprecationWarning("register_presets is deprecated: use graphopt_register_presets"))
def register_presets(register: Callable[..., None]) -> None:
    """Deprecated alias of ``graphopt_register_presets`` (until 1.0)."""


@hookspec(warn_on_impl=DeprecationWarning("register_commands is deprecated: use graphopt_register_commands"))
def register_commands(register: Callable[..., None]) -> None:
    """Deprecated alias of ``graphopt_register_commands`` (until 1.0)."""


# --- pipeline run -------------------------------------------------------------------


@hookspec
def graphopt_pipeline_start(pipeline: "Pipeline", model: "Model", context: "RunContext") -> None:
    """Called once per ``Pipeline.run``, before the first pass, with the input model.

    May read; must not modify ``model`` (it is the caller's). ``context.state`` is
    a dict this run's hooks share (e.g. a folder name, a timer). Raising stops
    the run before any pass ran: the error becomes a ``PluginError`` naming the plugin.
    """


@hookspec(firstresult=True)
def graphopt_run_pipeline(pipeline: "Pipeline", model: "Model", context: "RunContext") -> "Model | None":
    """Run every step of ``pipeline`` on ``model`` and return the final model.

    Called once per ``Pipeline.run``, between ``graphopt_pipeline_start`` and
    ``graphopt_pipeline_finish``. The default implementation (``graphopt.builtin``,
    ``trylast``) is ``pipeline.run_steps(model, context)``. Wrap it with
    ``@hookimpl(wrapper=True)`` to surround the whole run (a profiler, a
    timeout, a temporary directory): ``final = yield`` gives the final model, or
    raises the ``PassError`` that stopped the run; the wrapper returns the model to use.
    """


@hookspec
def graphopt_pipeline_finish(pipeline: "Pipeline", result: "PipelineResult", context: "RunContext") -> None:
    """Called once after the last pass succeeded or was rolled back, before ``run`` returns.

    ``result.model`` is the final model, ``result.records`` one ``PassRecord`` per
    pass run, ``result.notes`` remarks such as a repeat group that hit its bound.
    May add to ``result.notes``; should not replace the model (use a pass for that).
    Not called when a pass failure stopped the run (see ``graphopt_pass_failed``).
    """


# --- each pass ----------------------------------------------------------------------


@hookspec
def graphopt_pass_start(pass_: "Pass", model: "Model", context: "RunContext") -> None:
    """Called before each pass (each iteration of a repeat group too) with the model it receives.

    Observe only: the model is shared with the previous pass's result. Raising
    stops the run (``PluginError`` naming the plugin).
    """


@hookspec(firstresult=True)
def graphopt_run_pass(pass_: "Pass", model: "Model", context: "RunContext") -> "PassResult | None":
    """Run one pass on ``model`` (a private copy) and return its ``PassResult``.

    The default implementation (``graphopt.builtin``, ``trylast``) calls
    ``pass_.run(model)``. Wrap it with ``@hookimpl(wrapper=True)`` to time,
    check or replace what a pass does: ``result = yield`` gives the result (or
    raises the pass's exception, which the wrapper may catch or re-raise); the
    wrapper returns the result to use, and may add counters or notes to it. A
    non-wrapper implementation returning a ``PassResult`` replaces the pass.
    Whatever comes out is validated like any pass's output; an exception
    counts as the pass failing.
    """


@hookspec
def graphopt_pass_finish(pass_: "Pass", before: "Model", result: "PassResult", context: "RunContext") -> None:
    """Called after each pass that succeeded and whose graph passed validation.

    ``before`` is the model the pass received, ``result.model`` the model after it
    (``result.modified`` says whether it changed), ``context.records[-1]`` the
    record with timing, sizes and op deltas. Observe only; raising stops the run.
    """


@hookspec
def graphopt_pass_failed(pass_: "Pass", model: "Model", error: BaseException, context: "RunContext",
                         rolled_back: bool) -> None:
    """Called when a pass raised or returned a graph that failed validation.

    ``model`` is the model the pass was given (what the run continues with if it
    goes on), ``error`` the ``PassError`` naming the pass and its origin.
    ``rolled_back`` is true when the run goes on without the pass's change
    (``ignore_errors`` / ``--keep-going``); otherwise the ``PassError`` is raised
    right after this hook and nothing is written. Observe only.
    """

