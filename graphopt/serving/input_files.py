"""Request inputs read from files: ``.npy``, ``.npz``, images and JSON.

An image (``.png``, ``.jpg``, ``.jpeg``, ``.gif``, ``.bmp``) is decoded with
``tf.io.decode_image`` to ``uint8 [1, h, w, 3]``, the input the seed's
detector takes. JSON holds a (nested) list, or an object of lists by input key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.errors import InputError, UsageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp"}


def read_image(path: str | Path) -> np.ndarray:
    """An image file as ``uint8 [1, h, w, 3]``."""
    import tensorflow as tf

    try:
        image = tf.io.decode_image(Path(path).read_bytes(), channels=3, dtype=tf.uint8, expand_animations=False)
    except (OSError, tf.errors.OpError) as exc:
        raise InputError(f"cannot decode image: {getattr(exc, 'message', exc)}", where=str(path)) from exc
    return image.numpy()[np.newaxis]


def read_input(path: str | Path, key: str | None = None) -> dict[str, Any]:
    """Arrays by input key from one file. ``key`` names the input for single-array files (and picks from ``.npz``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such input file", where=str(path))
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return {_need_key(key, path): np.load(path, allow_pickle=False)}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            if key is None:
                return arrays
            if key in arrays:
                return {key: arrays[key]}
            if len(arrays) == 1:
                return {key: next(iter(arrays.values()))}
            raise InputError(f"no array {key!r} in the archive", where=str(path), hint=f"arrays: {', '.join(arrays)}")
        if suffix in IMAGE_SUFFIXES:
            return {_need_key(key, path): read_image(path)}
        if suffix == ".json":
            value = json.loads(path.read_text())
            if isinstance(value, dict) and key is None:
                return {k: np.asarray(v) for k, v in value.items()}
            if isinstance(value, dict) and key is not None and key in value:
                return {key: np.asarray(value[key])}
            return {_need_key(key, path): np.asarray(value)}
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read input: {exc}", where=str(path)) from exc
    raise InputError(f"unknown input file type {suffix or '(none)'}", where=str(path),
                     hint="use .npy, .npz, .json or an image (.png, .jpg, ...)")


def _need_key(key: str | None, path: Path) -> str:
    if key is None:
        raise UsageError(f"which input is {path.name}?", hint=f"write --input KEY={path}")
    return key


def parse_input_args(specs: list[str]) -> dict[str, Any]:
    """``["image=cat.jpg", "batch.npz"]`` -> arrays by key (``KEY=FILE``, or a ``.npz``/JSON object alone)."""
    inputs: dict[str, Any] = {}
    for spec in specs:
        given, sep, file = spec.partition("=")
        key: str | None = given
        if not sep:
            key, file = None, spec
        elif not key:
            raise UsageError(f"bad --input {spec!r}", hint="write --input KEY=FILE")
        for k, v in read_input(file, key).items():
            if k in inputs:
                raise UsageError(f"input {k!r} given twice")
            inputs[k] = v
    return inputs


def cast_inputs(inputs: dict[str, Any], dtypes: dict[str, str]) -> dict[str, np.ndarray]:
    """Cast to the signature's dtypes (JSON numbers arrive as int64/float64); unknown keys are an error."""
    import tensorflow as tf

    unknown = sorted(set(inputs) - set(dtypes))
    if unknown:
        raise UsageError(f"the signature has no input {', '.join(unknown)}", hint=f"inputs: {', '.join(dtypes)}")
    out = {}
    for k, v in inputs.items():
        dtype = tf.as_dtype(dtypes[k])
        if dtype == tf.string:
            out[k] = np.asarray(v, dtype=object)
        else:
            out[k] = np.asarray(v).astype(dtype.as_numpy_dtype, copy=False)
    return out
