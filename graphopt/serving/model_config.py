"""``models.config``: TF Serving's ``--model_config_file``, a text-format ``ModelServerConfig``.

One ``config`` entry per model: name, base path, platform ``tensorflow``, the
version policy (latest, or the specific versions asked for) and version labels.
TF Serving only assigns a label to a version it has loaded, so every labelled
version is added to a specific-versions policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from graphopt.errors import InputError, OutputError, UsageError

FILE_NAME = "models.config"


@dataclass
class ServedModel:
    """One model for TF Serving. ``versions`` empty means "serve the latest"; ``labels`` maps label -> version."""

    name: str
    base_path: str
    versions: list[int] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    platform: str = "tensorflow"


def model_server_config(models: Sequence[ServedModel]):
    """The ``ModelServerConfig`` proto for ``models``."""
    from tensorflow_serving.config import model_server_config_pb2

    if not models:
        raise UsageError("no model to configure", hint="give at least one --model NAME=BASE")
    names = [m.name for m in models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"model {', '.join(dupes)} given more than once", hint="each model name must be unique")
    config = model_server_config_pb2.ModelServerConfig()
    for m in models:
        if not m.name or "/" in m.name:
            raise UsageError(f"bad model name {m.name!r}", hint="a model name is one path segment, e.g. detector")
        entry = config.model_config_list.config.add(name=m.name, base_path=str(m.base_path),
                                                    model_platform=m.platform)
        wanted = sorted(set(m.versions) | set(m.labels.values()))
        if wanted:
            entry.model_version_policy.specific.versions.extend(wanted)
        else:
            entry.model_version_policy.latest.num_versions = 1
        for label, version in sorted(m.labels.items()):
            entry.version_labels[label] = int(version)
    return config


def model_config_text(models: Sequence[ServedModel]) -> str:
    """``models.config`` contents in protobuf text format."""
    from google.protobuf import text_format

    return text_format.MessageToString(model_server_config(models))


def parse_model_config(text: str, *, where: str = FILE_NAME):
    """Parse ``models.config`` text into a ``ModelServerConfig`` (raises :class:`InputError` if malformed)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    try:
        return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as exc:
        raise InputError(f"not a ModelServerConfig: {exc}", where=where) from exc


def write_model_config(directory: str | Path, models: Sequence[ServedModel]) -> Path:
    """Write ``directory/models.config``; returns its path."""
    text = model_config_text(models)
    path = Path(directory) / FILE_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise OutputError(f"cannot write {FILE_NAME}: {exc.strerror}", where=str(path)) from exc
    return path
