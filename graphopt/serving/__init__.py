"""Delivering a model to TensorFlow Serving, and checking it end to end without Docker.

- :mod:`~graphopt.serving.export`: ``BASE/<version>/`` SavedModels written atomically, with warm-up records;
- :mod:`~graphopt.serving.large`: weights kept as variables when constants would pass protobuf's 2 GB limit;
- :mod:`~graphopt.serving.warmup`: ``assets.extra/tf_serving_warmup_requests`` written, read and replayed;
- :mod:`~graphopt.serving.model_config`: ``models.config`` (``ModelServerConfig`` text format);
- :mod:`~graphopt.serving.client`: Predict / GetModelMetadata over gRPC and REST;
- :mod:`~graphopt.serving.server`: a local development PredictionService (production is TF Serving);
- :mod:`~graphopt.serving.loadtest`: latency percentiles and throughput against any PredictionService.

Nothing here imports TensorFlow at import time.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "export_versioned": ("graphopt.serving.export", "export_versioned"),
    "next_version": ("graphopt.serving.export", "next_version"),
    "run_load": ("graphopt.serving.loadtest", "run_load"),
    "GrpcClient": ("graphopt.serving.client", "GrpcClient"),
    "RestClient": ("graphopt.serving.client", "RestClient"),
    "DevServer": ("graphopt.serving.server", "DevServer"),
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'graphopt.serving' has no attribute {name!r}")
