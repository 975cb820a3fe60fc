"""The built-in default target: TensorFlow Serving, exactly as graphopt has always exported for it.

``BASE/<version>/`` holds ``saved_model.pb`` (weights frozen in, or in ``variables/`` past the
protobuf limit: :mod:`graphopt.serving.large`), warm-up records and the session/platform
config a pre-optimized graph wants (:mod:`graphopt.runtime.config`), written atomically by
:func:`graphopt.serving.export.export_versioned`. The pipeline's result is verified on
TensorFlow itself by :func:`graphopt.optimize` before this target writes anything, so
:meth:`TFServingTarget.export` writes without a second comparison: the runtime is the one
that was verified.

Running an export (:meth:`TFServingTarget.open`) loads it as TF Serving does:
``tf.compat.v1.saved_model.loader.load`` with tag ``serve`` in one session, with the
session config shipped in ``assets.extra/session_config.pbtxt`` (what ``--platform_config_file``
gives TF Serving), else TensorFlow's defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from graphopt.errors import InputError
from graphopt.model import Model, Signature, TensorSpec
from graphopt.targets.base import F32, Feeds, Progress, Runner, Target, TargetExport

if TYPE_CHECKING:  # pragma: no cover
    from graphopt.serving.model_config import ServedModel
    from graphopt.verify.compare import Reference, Tolerance, VerificationReport


def signature_from_proto(sig_def: Any, key: str = "serving_default") -> Signature:
    """A :class:`Signature` from a ``SignatureDef`` proto."""
    import tensorflow as tf

    def specs(side: Any) -> dict[str, TensorSpec]:
        out = {}
        for k, info in side.items():
            shape = None if info.tensor_shape.unknown_rank else tuple(
                None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
            out[k] = TensorSpec(info.name, tf.as_dtype(info.dtype).name, shape)
        return out

    return Signature(specs(sig_def.inputs), specs(sig_def.outputs), key=key, method_name=sig_def.method_name)


def shipped_session_config(version_dir: Path) -> tuple[Any, str]:
    """The session ``ConfigProto`` shipped beside an export and its short description (TF's default if none)."""
    import tensorflow as tf

    from graphopt.bench import describe_config, shipped_config_file

    found = shipped_config_file(version_dir)
    if found is None:
        return tf.compat.v1.ConfigProto(), "full (none shipped)"
    from google.protobuf import text_format

    try:
        config = text_format.Parse(found.read_text(), tf.compat.v1.ConfigProto())
    except (text_format.ParseError, OSError) as exc:
        raise InputError(f"cannot read the shipped session config: {exc}", where=str(found)) from None
    return config, f"{describe_config(config)} (shipped)"


class TFRunner(Runner):
    """A SavedModel in one TF session, loaded as TF Serving loads it (or any model graphopt reads, frozen)."""

    def __init__(self, path: Path, *, signature: str = "serving_default", config: Any = None,
                 config_text: str = "", allow_unsafe: bool | Sequence[str] = False) -> None:
        import tensorflow as tf

        self._tf = tf
        path = Path(path)
        if (path / "saved_model.pb").is_file():
            from tensorflow.python.util import deprecation

            from graphopt.serving.server import check_safe

            check_safe(path, allow=allow_unsafe)
            self.session = tf.compat.v1.Session(graph=tf.Graph(), config=config)
            try:
                with deprecation.silence():  # the v1 loader is the one TF Serving's loading matches
                    meta = tf.compat.v1.saved_model.loader.load(self.session, [tf.saved_model.SERVING], str(path))
            except Exception as exc:  # TF raises RuntimeError, OpError, IOError...: one message for the user
                self.session.close()
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise InputError(f"cannot load SavedModel: {type(exc).__name__}: {first}", where=str(path),
                                 hint="it needs the tag 'serve'") from None
            if signature not in meta.signature_def:
                self.session.close()
                raise InputError(f"no signature '{signature}'", where=str(path),
                                 hint=f"signatures: {', '.join(sorted(meta.signature_def))}")
            sig = signature_from_proto(meta.signature_def[signature], signature)
            method = "saved_model loader (tag serve)"
        else:  # a frozen .pb, a Keras file...: what graphopt's loader makes of it, in one session
            from graphopt.loaders import load
            from graphopt.runtime.session import Session
            from graphopt.security.scan import ensure_safe

            model = load(path, signature=signature)
            ensure_safe(model.graph_def, allow=allow_unsafe, action="run it", source=str(path))
            inner = Session(model, config=config)
            self.session, sig = inner.session, model.signature
            method = "graphopt loader (frozen on load)"
        super().__init__(sig, f"tfserving (TensorFlow {tf.__version__}, {method}, runtime Grappler "
                              f"{config_text or 'full'})")
        self._keys = list(sig.outputs)
        self._fetches = [sig.outputs[k].name for k in self._keys]
        self._names = {k: s.name for k, s in sig.inputs.items()}

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        missing = sorted(set(self._names) - set(feeds))
        if missing:
            raise InputError(f"no value for input {', '.join(missing)}", where=f"signature {self.signature.key}")
        values = self.session.run(self._fetches, feed_dict={self._names[k]: v for k, v in feeds.items()
                                                            if k in self._names})
        return dict(zip(self._keys, values))

    def close(self) -> None:
        self.session.close()


class TFServingTarget(Target):
    """TensorFlow Serving (the default): a SavedModel with warm-up records and the session config it wants."""

    name = "tfserving"
    description = ("TensorFlow Serving: BASE/<version>/saved_model.pb with warm-up records and the session config "
                   "a pre-optimized graph wants; models.config from graphopt serving-config")
    server = "TensorFlow Serving"
    runtime_modules = ("tensorflow",)
    precisions = {"f32": F32}
    transforms = None  # graphopt optimize's own default: preset 'serving'

    @classmethod
    def owns(cls, version_dir: Path) -> bool:
        return (Path(version_dir) / "saved_model.pb").is_file()

    def convert(self, model: Model, out_dir: Path, *, samples: Feeds | None = None) -> list[str]:
        """The SavedModel TF Serving loads, with the session config it wants, into ``out_dir``."""
        from graphopt.runtime.config import recommended_optimizer, write_serving_config
        from graphopt.savers import write_saved_model

        write_saved_model(model, out_dir)
        write_serving_config(Path(out_dir) / "assets.extra", runtime_optimizer=recommended_optimizer(model))
        return sorted(str(p.relative_to(out_dir)) for p in Path(out_dir).rglob("*") if p.is_file())

    def open(self, version_dir: Path, *, settings: Mapping[str, Any] | None = None,
             allow_unsafe: bool | Sequence[str] = False) -> Runner:
        config, text = shipped_session_config(Path(version_dir))
        return TFRunner(Path(version_dir), config=config, config_text=text, allow_unsafe=allow_unsafe)

    def write_version(self, model: Model, directory: Path, *, reference: Reference | None = None,
                      tolerance: Tolerance | None = None, samples: Feeds | None = None, warmup: bool = True,
                      model_name: str = "", on_verified: Callable[[VerificationReport], None] | None = None
                      ) -> TargetExport:
        """The version folder TF Serving loads (:func:`graphopt.serving.export.write_version`), with the session
        config the model wants. No second comparison: the pipeline's result was verified on TensorFlow."""
        from graphopt.runtime.config import recommended_optimizer
        from graphopt.serving.export import write_version

        optimizer = recommended_optimizer(model)
        write_version(model, Path(directory), warmup=warmup, samples=samples, runtime_optimizer=optimizer,
                      model_name=model_name)
        return TargetExport(self.name, self.precision, Path(directory), [Path(directory)], None,
                            {"runtime_optimizer": optimizer})

    def export(self, model: Model, base: str | Path, version: int | None = None, *,
               reference: Reference | None = None, tolerance: Tolerance | None = None,
               samples: Feeds | None = None, warmup: bool = True, force: bool = False, model_name: str = "",
               progress: Progress | None = None,
               on_verified: Callable[[VerificationReport], None] | None = None) -> TargetExport:
        """Today's TF Serving export, unchanged: :func:`~graphopt.serving.export.export_versioned` with the
        runtime optimizer the model wants. Verification happened on TensorFlow before this is called."""
        from graphopt.runtime.config import PLATFORM_CONFIG_FILE, recommended_optimizer
        from graphopt.serving.export import export_versioned

        say = progress or (lambda _line: None)
        optimizer = recommended_optimizer(model)
        path = export_versioned(model, base, version, warmup=warmup, samples=samples, force=force,
                                runtime_optimizer=optimizer, model_name=model_name)
        say(f"exported version {path.name} to {path} (runtime optimizer: {optimizer}; give TF Serving "
            f"--platform_config_file={path / 'assets.extra' / PLATFORM_CONFIG_FILE})")
        return TargetExport(self.name, self.precision, path, [path], None, {"runtime_optimizer": optimizer})

    def server_files(self, models: Sequence[ServedModel], *, settings: Mapping[str, Mapping[str, Any]] | None = None,
                     runtime_optimizer: str = "off", session_config: bool = True) -> dict[str, str]:
        """``models.config``, plus ``session_config.pbtxt`` / ``platform_config.pbtxt`` unless ``session_config`` is off."""
        from graphopt.runtime.config import (
            PLATFORM_CONFIG_FILE,
            SESSION_CONFIG_FILE,
            platform_config_text,
            session_config_text,
        )
        from graphopt.serving.model_config import FILE_NAME, model_config_text

        files = {FILE_NAME: model_config_text(models)}
        if session_config:
            files[SESSION_CONFIG_FILE] = session_config_text(runtime_optimizer=runtime_optimizer)
            files[PLATFORM_CONFIG_FILE] = platform_config_text(runtime_optimizer=runtime_optimizer)
        return files

