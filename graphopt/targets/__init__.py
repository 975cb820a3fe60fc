"""Runtime targets: where graphopt delivers an optimized model, and how it checks the delivery.

- :mod:`~graphopt.targets.base`: the :class:`Target` interface, the shared verify-then-write flow, manifests;
- :mod:`~graphopt.targets.tfserving`: the built-in default, TensorFlow Serving;
- :mod:`~graphopt.targets.timing`: benchmarking exports, each runtime in a worker process of its own.

Plugins add targets through ``graphopt_register_targets`` (docs/develop/writing-a-target.md). Nothing here
imports TensorFlow or a runtime at import time.
"""

from __future__ import annotations

from graphopt.targets.base import (
    DEFAULT_TARGET,
    F32,
    MANIFEST_FILE,
    Manifest,
    Precision,
    Runner,
    Target,
    TargetExport,
    create_target,
    open_export,
    portable_graph_def,
    refuse_tables_and_strings,
    target_of,
    unsupported,
)

__all__ = ["DEFAULT_TARGET", "F32", "MANIFEST_FILE", "Manifest", "Precision", "Runner", "Target", "TargetExport",
           "create_target", "open_export", "portable_graph_def", "refuse_tables_and_strings", "target_of",
           "unsupported"]
