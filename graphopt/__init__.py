"""graphopt: a plugin-based graph transform framework for TensorFlow models headed for TensorFlow Serving.

The public API, importable without loading TensorFlow::

    import graphopt
    result = graphopt.optimize("path/to/saved_model", "out/")   # load, preset 'serving', verify, save
    model = graphopt.load("path/to/saved_model")                 # or step by step: any format, frozen
    run = graphopt.Pipeline.parse("serving").run(model)
    graphopt.save(run.model, "out/", format="saved_model")

Write passes with :class:`Pass` or :func:`function_pass`, plugins with :data:`hookimpl`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from graphopt.errors import ExitCode, GraphoptError  # noqa: E402
from graphopt.hookspecs import hookimpl  # noqa: E402
from graphopt.model import Model, Signature, TensorSpec  # noqa: E402
from graphopt.passes.base import Option, Pass, PassResult, function_pass  # noqa: E402

# Names resolved on first use: these modules pull in TensorFlow or the plugin host.
_LAZY = {
    "load": ("graphopt.loaders", "load"),
    "optimize": ("graphopt.optimizer", "optimize"),
    "OptimizeResult": ("graphopt.optimizer", "OptimizeResult"),
    "save": ("graphopt.savers", "save"),
    "Pipeline": ("graphopt.passes.pipeline", "Pipeline"),
    "Repeat": ("graphopt.passes.pipeline", "Repeat"),
    "PipelineResult": ("graphopt.passes.pipeline", "PipelineResult"),
    "Host": ("graphopt.plugins", "Host"),
}

__all__ = ["ExitCode", "GraphoptError", "Model", "Option", "Pass", "PassResult", "Signature", "TensorSpec",
           "function_pass", "hookimpl", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'graphopt' has no attribute {name!r}")
