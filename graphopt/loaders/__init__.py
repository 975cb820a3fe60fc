"""Load any TensorFlow model into a frozen :class:`~graphopt.model.Model`: one entry point, format detected.

``load(src)`` looks at what ``src`` is (see :func:`detect`) and hands it to the
loader of that format, one module each: TF2 SavedModel (``saved_model_tf2``),
TF1 SavedModel (``saved_model_tf1``), TF Hub folders and handles (``hub``),
frozen GraphDefs (``graph_def``), Keras files (``keras_file``) and TF1
checkpoints (``checkpoint``). Every loader freezes variables into constants,
turns lookup tables into in-graph initialisers (``tables``) and returns the
signature it chose. The input is only ever read.

Loading may run a model's own ops (a TF1 main op, a restore op, a TF2 resource's
initializer): each loader checks them against the allowlist first
(:mod:`graphopt.security.scan`); ``allow_ops`` allows more, per op. What is allowed then runs in a
confined child (:func:`load` with the sandbox on), which sends the frozen model back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from graphopt.errors import GraphoptError, InputError
from graphopt.model import Model

FORMATS = ("saved_model", "saved_model_tf1", "hub_tf1", "hub_tf2", "hub_handle", "pb", "pbtxt", "keras", "h5",
           "checkpoint")


def _is_handle(src: str) -> bool:
    return "://" in src and not os.path.exists(src)


def detect(src: str | os.PathLike) -> str:
    """The format of ``src``, one of :data:`FORMATS`; :class:`InputError` if it is none of them."""
    text = str(src)
    if _is_handle(text):
        return "hub_handle"
    path = Path(text)
    if not path.exists():
        meta = Path(text + ".meta")
        if meta.is_file():
            return "checkpoint"
        raise InputError("model path does not exist", where=text,
                         hint="give a SavedModel folder, a .pb/.pbtxt/.keras/.h5 file, a checkpoint prefix or a "
                              "TF Hub handle (https://...)")
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            from graphopt.loaders.saved_model_tf1 import is_tf1_saved_model

            if (path / "tfhub_module.pb").is_file():
                return "hub_tf1"
            return "saved_model_tf1" if is_tf1_saved_model(path) else "saved_model"
        if (path / "keras_metadata.pb").is_file() or (path / "config.json").is_file() and (
                path / "model.weights.h5").is_file():
            raise InputError("this is an unzipped Keras archive, not a SavedModel", where=text,
                             hint="load the .keras file itself")
        raise InputError("folder holds no saved_model.pb", where=text,
                         hint="give the SavedModel folder itself (the one containing saved_model.pb)")
    if path.stat().st_size == 0:
        raise InputError("model file is empty", where=text, hint="the file was probably truncated; export it again")
    suffix = path.suffix.lower()
    if suffix == ".meta":
        return "checkpoint"
    if suffix in (".pb", ".graphdef"):
        return "pb"
    if suffix in (".pbtxt", ".txt"):
        return "pbtxt"
    if suffix == ".keras":
        return "keras"
    if suffix in (".h5", ".hdf5"):
        return "h5"
    if suffix == ".index" and Path(text[: -len(".index")] + ".meta").is_file():
        return "checkpoint"
    raise InputError(f"unknown model format '{suffix or path.name}'", where=text,
                     hint="supported: SavedModel folder, TF Hub folder or handle, .pb, .pbtxt, .keras, .h5, "
                          "checkpoint (.meta or prefix)")


# Formats whose loading runs none of the model's ops (a GraphDef is parsed, nothing more): loaded here.
_PARSED_ONLY = ("pb", "pbtxt")


def load(src: str | os.PathLike, *, signature: str | None = None, tags: Sequence[str] | None = None,
         inputs: Sequence[str] | None = None, outputs: Sequence[str] | None = None,
         allow_ops: bool | Iterable[str] | None = None, confined: bool | None = None) -> Model:
    """Load ``src`` in whatever format it is and return a frozen :class:`Model`.

    ``signature`` picks a signature key (default ``serving_default``, or the only
    one); ``tags`` picks a TF1 meta graph; ``inputs``/``outputs`` name tensors or
    nodes for formats that carry no signature (GraphDefs, checkpoints), and
    override the signature elsewhere. Raises :class:`InputError` naming the path, and
    :class:`~graphopt.errors.UnsafeGraphError` when loading would run ops that are not on
    the allowlist (or read an asset outside the model's folder); ``allow_ops`` (True, or
    op names) allows them, as ``GRAPHOPT_ALLOW_OPS`` does.

    Loading every format but a GraphDef runs some of the model's ops (restore, init and table
    initializer ops that passed the allowlist) or its code (Keras): with the sandbox on (the default,
    ``confined=None``) that happens in a confined child (:mod:`graphopt.security.sandbox`), which sends the
    frozen model back; a process that is itself the confined child of a whole ``optimize`` run loads
    in place. ``confined=False`` loads in this process.
    """
    text = str(src)
    fmt = detect(text)
    kwargs = dict(signature=signature, tags=list(tags) if tags is not None else None,
                  inputs=list(inputs) if inputs else None, outputs=list(outputs) if outputs else None)
    if confined is not False and fmt not in _PARSED_ONLY:
        from graphopt.security import _child, sandbox

        if sandbox.default_limits().confined and not _child.confined_here():
            return _load_confined(text, fmt, kwargs, allow_ops)
    fn: Callable[..., Model]
    try:
        if fmt == "saved_model":
            from graphopt.loaders.saved_model_tf2 import load_saved_model_tf2 as fn
        elif fmt == "saved_model_tf1":
            from graphopt.loaders.saved_model_tf1 import load_saved_model_tf1 as fn
        elif fmt in ("hub_tf1", "hub_handle"):
            from graphopt.loaders.hub import load_hub as fn
        elif fmt in ("pb", "pbtxt"):
            from graphopt.loaders.graph_def import load_graph_def as fn
        elif fmt in ("keras", "h5"):
            from graphopt.loaders.keras_file import load_keras as fn
        else:
            from graphopt.loaders.checkpoint import load_checkpoint as fn
        from graphopt.security.allowlist import allowing

        with allowing(allow_ops):  # the loaders' checks see what the caller allowed
            model = fn(text, **kwargs)
    except GraphoptError:
        raise
    except (AttributeError, NameError, ImportError):  # a bug in graphopt, not a bad model: keep the traceback
        raise
    except Exception as exc:  # TensorFlow's own errors: one paragraph, never a traceback
        from graphopt.security.sandbox import resource_error

        for cause in (exc, exc.__cause__, exc.__context__):  # in a confined child: a limit hit, not bad input
            limited = resource_error(cause) if cause is not None else None
            if limited is not None:
                raise limited from exc
        raise InputError(f"cannot load {fmt} model: {_first_line(exc)}", where=text,
                         hint="check the file is complete and the format is right; rerun with --debug for details"
                         ) from exc
    model.metadata.setdefault("loader", fmt)
    from graphopt.loaders.signatures import check_dtypes

    check_dtypes(model.signature, model.graph_def, text)  # a signature that lies about its dtypes is bad input
    return model


def _load_confined(text: str, fmt: str, kwargs: dict, allow_ops: bool | Iterable[str] | None) -> Model:
    """:func:`load` in a confined child; the frozen model comes back as bytes and plain data."""
    from tensorflow.core.framework import graph_pb2

    from graphopt.savers import disk_bytes
    from graphopt.security.sandbox import graphopt_environment, sandbox_for

    handle = None
    if fmt == "hub_handle":  # fetched here (network, the user's cache); only its loading runs in the child
        from graphopt.loaders.hub import resolve

        handle, text = text, resolve(text)
    allowed = allow_ops if isinstance(allow_ops, bool) or allow_ops is None else sorted(allow_ops)
    with sandbox_for(disk_bytes(text) if os.path.exists(text) else 0, label=f"loading {handle or text}") as box:
        data = box.call(load_for_parent, text, kwargs, allowed, graphopt_environment())
    graph_def = graph_pb2.GraphDef()
    graph_def.ParseFromString(data.pop("graph_def"))  # a bytearray: parsed without another copy
    model = Model(graph_def=graph_def, **data)
    if handle is not None:  # as the Hub loader says it in this process
        model.metadata["resolved"], model.source = text, handle
        model.format = "hub_tf2" if model.format == "saved_model" else model.format
        model.metadata["loader"] = "hub_handle"
    return model


def load_for_parent(text: str, kwargs: dict, allow_ops: bool | list[str] | None, environment: dict) -> dict:
    """The child's side of a confined load: the model as the serialized GraphDef and plain data."""
    import json

    from graphopt.graph.encoding import serialize_graph_def
    from graphopt.security.sandbox import adopt_environment

    adopt_environment(environment)  # GRAPHOPT_ALLOW_OPS & co. as the caller has them now
    model = load(text, allow_ops=allow_ops, confined=False, **kwargs)
    return {"graph_def": serialize_graph_def(model.graph_def), "signature": model.signature,
            "init_ops": list(model.init_ops), "source": str(model.source), "format": str(model.format),
            "assets": {str(k): str(v) for k, v in model.assets.items()},
            # free-form: made plain (JSON) so that the parent reads it with the sandbox's answer allowlist
            "metadata": json.loads(json.dumps(model.metadata, default=str))}


def _first_line(exc: BaseException) -> str:
    """The informative line of an exception: TF's runtime errors start with headers such as
    'Graph execution error:' and 'Detected at node ...'."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if line.endswith(":") or line.startswith(("Detected at node", "Node:", "[[")):
            continue
        return line[:300]
    return (lines[0] if lines else type(exc).__name__)[:300]
