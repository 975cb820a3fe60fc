"""The seam between tuning and a runtime target: build an artifact, open it with runtime settings, export it.

Targets are :class:`graphopt.targets.Target` classes registered through the
plugin registry (``registry.targets``): TF Serving (``tfserving``, built in),
OpenVINO, ONNX... Tuning drives every one of them the same way:

* **build** -- :meth:`Target.export` into the trial's own folder (``<artifact>/1``),
  with no comparison: tuning verifies every candidate itself, against one
  reference, with the search's tolerance;
* **open** -- :meth:`Target.open`, i.e. the export loaded exactly as its server
  will load it, with the settings its manifest records;
* **export** -- the measured artifact moved into ``OUT/<version>`` atomically
  (:func:`install`), plus the files the server
  wants beside it.

TF Serving has runtime settings that are not part of the artifact -- the
runtime Grappler mode and thread counts of the session config -- so
:class:`TFServingAdapter` opens the SavedModel with the candidate's own
``ConfigProto`` and writes that config into the exported version.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.errors import OutputError, UsageError
from graphopt.targets.base import write_atomic
from graphopt.tuning.space import TFSERVING, runtime_label

ARTIFACT_VERSION = 1  # artifacts are written as a one-version serving base: <artifact>/1/


class TargetAdapter:
    """A registered target, driven through the :class:`graphopt.targets.Target` interface."""

    def __init__(self, name: str, host: Any = None) -> None:
        self.name = name
        self.host = host

    def instance(self, precision: str | None) -> Any:
        from graphopt.targets.base import create_target

        return create_target(self.name, precision, host=self.host)

    def default_runtime(self, info: Mapping[str, Any]) -> dict[str, Any]:
        return {}  # the target's settings follow from its precision and are recorded in its manifest

    def build(self, model: Any, precision: str, out: Path, *, samples: Mapping[str, np.ndarray] | None) -> dict:
        target = self.instance(precision)
        directory = out / str(ARTIFACT_VERSION)
        if directory.exists():  # a build that died half-way: this trial's own folder, written again
            shutil.rmtree(directory)
        out.mkdir(parents=True, exist_ok=True)
        # No reference here: tuning verifies every candidate itself, against one reference and its own tolerance.
        done = target.write_version(model, directory, reference=None, samples=samples, warmup=True)
        prec = target.precision_info
        return {"spec": {"path": str(done.path), "precision": precision, "signature": model.signature.key},
                "target_settings": dict(done.settings), "precision_lossy": bool(prec.lossy)}

    def open(self, spec: Mapping[str, Any], settings: Mapping[str, Any], *, allow_unsafe: Any = False) -> Any:
        return self.instance(spec.get("precision")).open(Path(spec["path"]))

    def export(self, artifact: Path, settings: Mapping[str, Any], base: Path, version: int, *,
               force: bool = False, model_name: str = "") -> Path:
        from graphopt.targets.base import Manifest

        path = install(artifact, base, version, force=force)
        manifest = Manifest.read(path)
        if manifest is not None:
            target = self.instance(manifest.precision)
            for file_name, text in target.base_files(model_name or base.resolve().name, path, manifest).items():
                write_atomic(base / file_name, text)
        return path

    def server_files(self, name: str, base: Path, path: Path, settings: Mapping[str, Any]) -> dict[str, str]:
        """The model server's config files for the exported model alone (relative name -> text)."""
        from graphopt.serving.model_config import ServedModel
        from graphopt.targets.base import Manifest

        manifest = Manifest.read(path)
        target = self.instance(manifest.precision if manifest else None)
        try:
            return target.server_files([ServedModel(name=name, base_path=str(base))],
                                       settings={name: manifest.settings if manifest else target.settings()})
        except UsageError:  # a target whose server takes no config file
            return {}

    def server_notes(self, settings: Mapping[str, Any], path: Path) -> list[str]:
        from graphopt.targets.base import Manifest

        manifest = Manifest.read(path)
        shown = ", ".join(f"{k}={v}" for k, v in (manifest.settings if manifest else {}).items())
        return [f"{self.name} export at {path}" + (f" (server settings: {shown})" if shown else "")]


class TFServingAdapter(TargetAdapter):
    """TF Serving: a SavedModel opened as TF Serving opens it, with the candidate's session config."""

    def __init__(self, host: Any = None) -> None:
        super().__init__(TFSERVING, host)

    def default_runtime(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """The settings a build is first measured with: the runtime mode graphopt recommends for its graph."""
        return {"optimizer": info.get("recommended_optimizer") or "full", "intra_op": 0, "inter_op": 0}

    def build(self, model: Any, precision: str, out: Path, *, samples: Mapping[str, np.ndarray] | None) -> dict:
        """``out/1`` as ``graphopt optimize --serving-dir`` writes it (the tfserving target's export)."""
        from graphopt.runtime.config import recommended_optimizer
        from graphopt.serving.export import export_versioned

        if precision != "f32":
            raise UsageError(f"the tfserving target has no precision {precision!r}",
                             hint="weight precision comes from the pipeline (serving-fp16, serving-int8)")
        optimizer = recommended_optimizer(model)
        path = export_versioned(model, out, ARTIFACT_VERSION, warmup=True, samples=samples, force=True,
                                runtime_optimizer=optimizer)
        return {"spec": saved_model_spec(path, model.signature), "recommended_optimizer": optimizer,
                "precision_lossy": False}

    def open(self, spec: Mapping[str, Any], settings: Mapping[str, Any], *, allow_unsafe: Any = False) -> Any:
        from graphopt.targets.tfserving import TFRunner

        return TFRunner(Path(spec["path"]), signature=spec.get("signature") or "serving_default",
                        config=session_config(settings), config_text=runtime_label(settings),
                        allow_unsafe=allow_unsafe)

    def export(self, artifact: Path, settings: Mapping[str, Any], base: Path, version: int, *,
               force: bool = False, model_name: str = "") -> Path:
        """The measured SavedModel with the candidate's session/platform config, moved in atomically."""
        from graphopt.runtime.config import write_serving_config

        # The artifact is the search's own copy: its shipped config becomes the candidate's before it is copied.
        write_serving_config(artifact / "assets.extra", runtime_optimizer=settings.get("optimizer", "full"),
                             intra_op=int(settings.get("intra_op", 0)), inter_op=int(settings.get("inter_op", 0)))
        return install(artifact, base, version, force=force)

    def server_files(self, name: str, base: Path, path: Path, settings: Mapping[str, Any]) -> dict[str, str]:
        """``models.config`` for the model, and the session/platform config it was measured with."""
        from graphopt.runtime.config import (
            PLATFORM_CONFIG_FILE,
            SESSION_CONFIG_FILE,
            platform_config_text,
            session_config_text,
        )
        from graphopt.serving.model_config import FILE_NAME, ServedModel, model_config_text

        options = {"runtime_optimizer": settings.get("optimizer", "full"), "intra_op": int(settings.get("intra_op", 0)),
                   "inter_op": int(settings.get("inter_op", 0))}
        return {FILE_NAME: model_config_text([ServedModel(name=name, base_path=str(base))]),
                SESSION_CONFIG_FILE: session_config_text(**options), PLATFORM_CONFIG_FILE: platform_config_text(**options)}

    def server_notes(self, settings: Mapping[str, Any], path: Path) -> list[str]:
        from graphopt.runtime.config import PLATFORM_CONFIG_FILE

        return [f"serve with --platform_config_file={path / 'assets.extra' / PLATFORM_CONFIG_FILE} "
                f"(runtime Grappler {settings.get('optimizer', 'full')}, threads {settings.get('intra_op', 0)}/"
                f"{settings.get('inter_op', 0)}; 0 = TensorFlow's choice)"]


def install(artifact: Path, base: Path, version: int, *, force: bool = False) -> Path:
    """Copy a measured artifact to ``base/<version>`` so that it appears whole or not at all.

    The copy is made under a hidden name in ``base`` (servers only read integer names) and renamed into
    place, which is atomic on one file system; an existing version is swapped out only with ``force``.
    """
    target = base / str(version)
    if target.exists() and not force:
        raise OutputError(f"version {version} already exists", where=str(target),
                          hint="leave out --version for the next free one, or pass --force to replace it")
    stage = base / f".{version}.partial-{uuid.uuid4().hex[:8]}"
    try:
        base.mkdir(parents=True, exist_ok=True)
        shutil.copytree(artifact, stage)
        if target.exists():
            old = base / f".{version}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(stage, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(stage, target)
    except OSError as exc:
        raise OutputError(f"cannot write version {version}: {exc}", where=str(target)) from exc
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return target


def saved_model_spec(path: Path | str, signature: Any) -> dict[str, Any]:
    """What a worker needs to open a SavedModel as TF Serving does."""
    return {"path": str(path), "signature": signature.key}


def session_config(settings: Mapping[str, Any]) -> Any:
    """The ``ConfigProto`` of a candidate's TF Serving runtime settings (``full`` = TensorFlow's default)."""
    from graphopt.runtime.config import session_config as make

    return make(settings.get("optimizer", "full"), intra_op=int(settings.get("intra_op", 0)),
                inter_op=int(settings.get("inter_op", 0)))


def adapter(name: str, host: Any = None) -> TargetAdapter:
    """The adapter for a target name: TF Serving's own, any other through the plugin registry."""
    if name == TFSERVING:
        return TFServingAdapter(host)
    return TargetAdapter(name, host)
