"""TF Serving's warm-up file: ``assets.extra/tf_serving_warmup_requests``.

TF Serving replays these requests when it loads a version, before the version
takes traffic, so the first real request does not pay for lazy initialisation
and runtime graph optimisation (Grappler runs when a session first builds an
executor for a feed/fetch set). The file is a TFRecord of serialized
``tensorflow.serving.PredictionLog`` messages; TF Serving reads at most 1,000.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.errors import InputError, OutputError
from graphopt.model import Model

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_RECORDS = 1000

Sample = Mapping[str, Any]


def predict_request(inputs: Sample, *, model_name: str = "", signature: str = "serving_default",
                    version: int | None = None, dtypes: Mapping[str, str] | None = None):
    """A ``PredictRequest`` with ``inputs`` as tensor protos (cast to ``dtypes[key]`` when given)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    for key, value in inputs.items():
        dtype = (dtypes or {}).get(key)
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value, dtype=tf.as_dtype(dtype) if dtype else None))
    return request


def _normalise_samples(model: Model, samples: Sample | Sequence[Sample] | None, count: int) -> list[dict]:
    from graphopt.runtime.session import random_inputs

    if samples is None:
        return [random_inputs(model.signature, seed=i) for i in range(count)]
    batch = [samples] if isinstance(samples, Mapping) else list(samples)
    expected = set(model.signature.inputs)
    for i, sample in enumerate(batch):
        if set(sample) != expected:
            raise InputError(f"warm-up sample {i} has inputs {sorted(sample)}, the signature wants {sorted(expected)}",
                             where=f"signature {model.signature.key}", hint="give one array per signature input")
    return [dict(s) for s in batch]


def warmup_logs(model: Model, samples: Sample | Sequence[Sample] | None = None, *, count: int = 1,
                max_records: int = MAX_RECORDS, model_name: str = "") -> list:
    """``PredictionLog`` records (``predict_log.request``) from ``samples``, or ``count`` generated inputs.

    At most ``max_records`` (never more than TF Serving's 1,000) are kept.
    """
    from tensorflow_serving.apis import prediction_log_pb2

    limit = min(int(max_records), MAX_RECORDS)
    dtypes = {k: s.dtype for k, s in model.signature.inputs.items()}
    logs = []
    for sample in _normalise_samples(model, samples, count)[:limit]:
        request = predict_request(sample, model_name=model_name, signature=model.signature.key, dtypes=dtypes)
        logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_warmup(export_dir: str | Path, logs: Sequence) -> Path:
    """Write records to ``export_dir/assets.extra/tf_serving_warmup_requests``; returns the file's path."""
    import tensorflow as tf

    path = Path(export_dir) / WARMUP_DIR / WARMUP_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tf.io.TFRecordWriter(str(path)) as writer:
            for log in logs[:MAX_RECORDS]:
                writer.write(log.SerializeToString())
    except (OSError, tf.errors.OpError) as exc:
        raise OutputError(f"cannot write warm-up file: {exc}", where=str(path)) from exc
    return path


def read_warmup(path: str | Path) -> list:
    """The ``PredictionLog`` records of a warm-up file (or of the export dir holding one)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = Path(path)
    if path.is_dir():
        path = path / WARMUP_DIR / WARMUP_FILE
    logs = []
    try:
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            logs.append(prediction_log_pb2.PredictionLog.FromString(record))
    except (tf.errors.OpError, Exception) as exc:  # a truncated record or a file that is not TFRecord
        raise InputError(f"cannot read warm-up file: {type(exc).__name__}: {exc}", where=str(path)) from exc
    return logs


def replay(logs: Sequence, predict: Callable[[str, dict[str, np.ndarray]], Any]) -> int:
    """Call ``predict(signature_key, inputs)`` for each Predict record, as TF Serving does at load; returns the count.

    Records of other kinds (classify, regress, multi-inference) are skipped:
    the development server only serves Predict.
    """
    import tensorflow as tf

    done = 0
    for log in logs[:MAX_RECORDS]:
        if log.WhichOneof("log_type") != "predict_log":
            continue
        request = log.predict_log.request
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        predict(request.model_spec.signature_name, inputs)
        done += 1
    return done
