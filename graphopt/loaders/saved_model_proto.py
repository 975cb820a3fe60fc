"""Reading a SavedModel's ``saved_model.pb``/``.pbtxt`` into its proto: no graph is built, nothing runs.

Its own module because both the loaders and the security checks (which must read a SavedModel
before anything of it is loaded) need it, and the loaders call the security checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from graphopt.errors import InputError


def read_saved_model(path: str | Path) -> Any:
    """The ``SavedModel`` proto of a folder; :class:`InputError` if it cannot be parsed."""
    from tensorflow.core.protobuf import saved_model_pb2

    folder = Path(path)
    proto = saved_model_pb2.SavedModel()
    pb, pbtxt = folder / "saved_model.pb", folder / "saved_model.pbtxt"
    try:
        if pb.is_file():
            data = pb.read_bytes()
            if not data:
                raise ValueError("saved_model.pb is empty")
            proto.ParseFromString(data)
        else:
            from google.protobuf import text_format

            text_format.Parse(pbtxt.read_text(), proto)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InputError(f"saved_model.pb cannot be read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                         where=str(path), hint="the file is corrupt or truncated; export the model again") from None
    if not proto.meta_graphs:
        raise InputError("the SavedModel holds no meta graph", where=str(path), hint="export the model again")
    return proto
