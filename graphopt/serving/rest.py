"""TF Serving's REST JSON for Predict, both ways: request bodies, responses and tensor values.

Row format: ``{"signature_name": ..., "instances": [...]}`` -> ``{"predictions": [...]}``;
columnar format: ``{"inputs": ...}`` -> ``{"outputs": ...}``. A single input or
output may be given bare instead of in a ``{key: value}`` object. Binary
strings travel as ``{"b64": "..."}``. Values are converted to the signature's
dtype, as TF Serving does.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from graphopt.errors import InputError

DEFAULT_MAX_DEPTH = 64  # a rank-254 tensor needs more, but no served input does; deep bodies are attacks

# A JSON string, escapes included: its brackets are text, not nesting.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_NESTING = np.zeros(256, np.int8)
_NESTING[[ord("["), ord("{")]] = 1
_NESTING[[ord("]"), ord("}")]] = -1


def json_depth(raw: bytes, *, stop_above: int | None = None) -> int:
    """The deepest nesting of arrays and objects in a JSON text, without parsing it.

    Counted in C (regex, ``bytes.translate``, numpy) so a body of 30 MB of ``[``
    is measured in a fraction of a second; :func:`json.loads` would recurse on it
    and raise ``RecursionError``. Malformed text gets some depth, and the parser
    rejects it afterwards. Counting stops early once past ``stop_above``.
    """
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    deepest, level, chunk = 0, 0, 1 << 20
    for start in range(0, len(brackets), chunk):
        levels = np.cumsum(_NESTING[np.frombuffer(brackets[start:start + chunk], np.uint8)], dtype=np.int32) + level
        deepest, level = max(deepest, int(levels.max())), int(levels[-1])
        if stop_above is not None and deepest > stop_above:
            break
    return deepest


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf: no tensor value a client meant
        raise ValueError(f"number {text[:40]} is out of range for a float")
    return value


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON (non-finite numbers are refused)")


def loads(raw: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse a request body: nesting checked before parsing, ``NaN``/``Infinity``/``1e400`` refused.

    Raises :class:`InputError` for every malformed body (never ``RecursionError``).
    """
    depth = json_depth(raw, stop_above=max_depth)
    if depth > max_depth:
        raise InputError(f"JSON nested deeper than {max_depth} levels", hint="raise --max-json-depth if this is real")
    try:
        return json.loads(raw or b"null", parse_float=_finite, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise InputError(f"malformed JSON: {str(exc).splitlines()[0][:200]}") from None


def _encode_value(value: Any) -> Any:
    if isinstance(value, list):
        return [_encode_value(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    return value


def encode(array: Any) -> Any:
    """A numpy array (or scalar) as JSON-ready nested lists; undecodable bytes as ``{"b64": ...}``."""
    if isinstance(array, (bytes, str)):  # np.asarray would make it fixed-width and drop trailing NUL bytes
        return _encode_value(array)
    return _encode_value(np.asarray(array).tolist())


def _decode_strings(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode_strings(v) for v in value]
    if isinstance(value, Mapping) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"], validate=True)  # binascii.Error (a ValueError) on junk
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def decode(value: Any, dtype: str | None) -> np.ndarray:
    """A JSON value as a numpy array of ``dtype`` (a TF dtype name; strings become bytes).

    Raises :class:`InputError` when the value does not fit: ragged lists,
    objects where numbers belong, numbers out of the dtype's range, bad base64.
    """
    try:
        if dtype == "string":
            strings = np.array(_decode_strings(value), dtype=object)
            if not all(isinstance(v, bytes) for v in strings.flat):  # numbers, or ragged lists kept as objects
                raise ValueError("expected strings (or {\"b64\": ...}) in a rectangular nested list")
            return strings
        if dtype is None:
            return np.asarray(value)
        import tensorflow as tf

        numpy_dtype = tf.as_dtype(dtype).as_numpy_dtype
        array = np.asarray(value)
        if array.dtype == object or array.dtype.kind in "USV":  # ragged, objects or text where numbers belong
            raise ValueError(f"expected numbers of dtype {dtype} in a rectangular nested list")
        if array.dtype.kind in "iu" and np.dtype(numpy_dtype).kind in "iu":
            info = np.iinfo(numpy_dtype)
            if array.size and (array.min() < info.min or array.max() > info.max):
                raise ValueError(f"a value is out of range for {dtype}")
        with np.errstate(over="raise", invalid="raise"):
            return array.astype(numpy_dtype)
    except (ValueError, TypeError, OverflowError, FloatingPointError) as exc:
        raise InputError(f"cannot read the value as {dtype or 'a tensor'}: {str(exc).splitlines()[0][:200]}") from None


def predict_body(inputs: Mapping[str, Any], *, signature: str = "serving_default", row: bool = False) -> dict:
    """The JSON body of a REST predict request (columnar ``inputs`` unless ``row``)."""
    body: dict[str, Any] = {"signature_name": signature}
    if row:
        arrays = {k: np.asarray(v) for k, v in inputs.items()}
        n = len(next(iter(arrays.values()))) if arrays else 0
        if len(arrays) == 1:
            body["instances"] = encode(next(iter(arrays.values())))
        else:
            body["instances"] = [{k: encode(a[i]) for k, a in arrays.items()} for i in range(n)]
    else:
        body["inputs"] = {k: encode(v) for k, v in inputs.items()}
    return body


def parse_predict_body(body: Any, input_dtypes: Mapping[str, str]) -> tuple[str, dict[str, np.ndarray], bool]:
    """``(signature_name, feeds, row_format)`` from a request body; ``input_dtypes`` of the signature it names.

    Callers look the signature up first with :func:`signature_name` to know the dtypes.
    """
    if not isinstance(body, Mapping):
        raise InputError("request body must be a JSON object")
    has_rows, has_cols = "instances" in body, "inputs" in body
    if has_rows == has_cols:
        raise InputError('request body must have exactly one of "instances" or "inputs"')
    keys = list(input_dtypes)
    if has_cols:
        value = body["inputs"]
        if isinstance(value, Mapping) and set(value) != {"b64"}:
            unknown = sorted(set(value) - set(keys))
            if unknown:
                raise InputError(f"unknown input {', '.join(unknown)}", hint=f"inputs are: {', '.join(keys)}")
            return signature_name(body), {k: decode(v, input_dtypes[k]) for k, v in value.items()}, False
        if len(keys) != 1:
            raise InputError(f"the signature has {len(keys)} inputs: give them by name",
                             hint=f'"inputs": {{{", ".join(repr(k) for k in keys)}}}')
        return signature_name(body), {keys[0]: decode(value, input_dtypes[keys[0]])}, False
    rows = body["instances"]
    if not isinstance(rows, list) or not rows:
        raise InputError('"instances" must be a non-empty list')
    if all(isinstance(r, Mapping) and set(r) != {"b64"} for r in rows):
        named = sorted({k for r in rows for k in r})
        if sorted(named) != sorted(keys):
            raise InputError(f"instances have inputs {named}, the signature wants {sorted(keys)}")
        return signature_name(body), {k: decode([r[k] for r in rows], input_dtypes[k]) for k in keys}, True
    if len(keys) != 1:
        raise InputError(f"the signature has {len(keys)} inputs: give each instance as an object")
    return signature_name(body), {keys[0]: decode(rows, input_dtypes[keys[0]])}, True


def signature_name(body: Mapping[str, Any]) -> str:
    return str(body.get("signature_name") or "serving_default")


def predict_response(outputs: Mapping[str, Any], *, row: bool) -> dict:
    """TF Serving's response: ``{"predictions": ...}`` for row requests, ``{"outputs": ...}`` for columnar ones."""
    if not row:
        if len(outputs) == 1:
            return {"outputs": encode(next(iter(outputs.values())))}
        return {"outputs": {k: encode(v) for k, v in outputs.items()}}
    if len(outputs) == 1:
        return {"predictions": encode(next(iter(outputs.values())))}
    arrays = {k: np.asarray(v) for k, v in outputs.items()}
    n = min(len(a) if a.ndim else 1 for a in arrays.values())
    return {"predictions": [{k: encode(a[i] if a.ndim else a) for k, a in arrays.items()} for i in range(n)]}


def parse_predict_response(body: Mapping[str, Any], output_keys: list[str] | None = None) -> dict[str, np.ndarray]:
    """Outputs by key from a response body (a bare single output is named by ``output_keys[0]`` or ``"output"``)."""
    def arr(v: Any) -> np.ndarray:
        # object arrays for strings: numpy's fixed-width bytes would drop trailing NUL bytes
        return np.array(_decode_strings(v), dtype=object) if _has_strings(v) else np.asarray(v)

    if "outputs" in body:
        value = body["outputs"]
        if isinstance(value, Mapping) and set(value) != {"b64"}:
            return {k: arr(v) for k, v in value.items()}
        return {(output_keys or ["output"])[0]: arr(value)}
    rows = body.get("predictions")
    if rows is None:
        raise InputError(f"unexpected response: {str(body)[:200]}")
    if rows and all(isinstance(r, Mapping) for r in rows):
        return {k: arr([r[k] for r in rows]) for k in rows[0]}
    return {(output_keys or ["output"])[0]: arr(rows)}


def _has_strings(v: Any) -> bool:
    while isinstance(v, list) and v:
        v = v[0]
    return isinstance(v, (str, Mapping))
