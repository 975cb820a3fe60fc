"""graphopt's hooks, grouped by phase. A plugin implements any of them with ``@graphopt.hookimpl``.

Registration hooks receive a ``register`` callback, so a plugin says what it
adds in one call per thing. Run hooks see the pipeline and each pass as they
run; they observe, they may raise to stop the run, and ``graphopt_run_pass``
may be wrapped (``@hookimpl(wrapper=True)``) to change what a pass does.
Built-in passes, presets and commands are registered through these same hooks
(``graphopt/builtin.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from graphopt.model import Model
    from graphopt.passes.base import Pass, PassResult
    from graphopt.pipeline import Pipeline, PipelineResult, RunContext

hookspec = pluggy.HookspecMarker("graphopt")
hookimpl = pluggy.HookimplMarker("graphopt")


# --- registration ------------------------------------------------------------------


@hookspec
def register_passes(register: Callable[[type["Pass"]], None]) -> None:
    """Register pass classes: call ``register(PassClass)`` for each. Names must be unique."""


@hookspec
def register_presets(register: Callable[..., None]) -> None:
    """Register named pipelines: ``register(name, transforms, description, lossy=False)``.

    ``transforms`` is a transform string; presets are usable wherever a pass name is.
    """


@hookspec
def register_commands(register: Callable[..., None]) -> None:
    """Register CLI sub-commands: ``register(name, help, configure, run)``.

    ``configure(parser)`` adds arguments to an ``argparse`` sub-parser;
    ``run(args, ctx) -> int`` does the work and returns an exit code. Only CLI
    code prints; ``ctx.console`` is the stdout console.
    """


# --- pipeline run -------------------------------------------------------------------


@hookspec
def graphopt_pipeline_start(pipeline: "Pipeline", model: "Model", context: "RunContext") -> None:
    """Called once before the first pass runs. Raising stops the run before anything changed."""


@hookspec
def graphopt_pipeline_finish(pipeline: "Pipeline", result: "PipelineResult", context: "RunContext") -> None:
    """Called once after the last pass, with the final model and the per-pass records."""


# --- each pass ----------------------------------------------------------------------


@hookspec
def graphopt_pass_start(pass_: "Pass", model: "Model", context: "RunContext") -> None:
    """Called before each pass with the graph it will receive (do not modify it)."""


@hookspec(firstresult=True)
def graphopt_run_pass(pass_: "Pass", model: "Model", context: "RunContext") -> "PassResult | None":
    """Run one pass and return its result. The default implementation calls ``pass_.run(model)``.

    Wrap it with ``@hookimpl(wrapper=True)`` to time, check or replace what a pass
    does: ``result = yield`` gives the result, or raises the pass's exception.
    """


@hookspec
def graphopt_pass_finish(pass_: "Pass", before: "Model", result: "PassResult", context: "RunContext") -> None:
    """Called after each pass that succeeded and whose graph passed validation."""


@hookspec
def graphopt_pass_failed(pass_: "Pass", model: "Model", error: BaseException, context: "RunContext",
                         rolled_back: bool) -> None:
    """Called when a pass raised or returned an invalid graph.

    ``rolled_back`` is true when the run goes on without the pass's change
    (``ignore_errors`` / ``--keep-going``); otherwise the run stops after this hook.
    """

