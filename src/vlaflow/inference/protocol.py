"""The policy server's wire codec: msgpack with numpy arrays, byte-compatible with openpi's
`msgpack_numpy`, so robot clients written for openpi talk to vlaflow unchanged.

An array travels as the map `{b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str,
b"shape": shape}` and a numpy scalar as `{b"__npgeneric__": True, b"data": item, b"dtype":
dtype.str}`. There is no pickle anywhere: only booleans, numbers and fixed-size strings decode
(object, structured and complex dtypes are refused both ways), and a decoded map that claims to be
an array must hold exactly as many bytes as its shape and dtype say. Server and client both use
this module; it needs only numpy and msgpack.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

ARRAY_TAG = b"__ndarray__"
SCALAR_TAG = b"__npgeneric__"
ALLOWED_KINDS = "biufSU"  # bool, integers, floats, fixed-size bytes and unicode strings


class DecodeError(ValueError):
    """Bytes that are not a valid msgpack-numpy message."""


def _checked_dtype(name: Any) -> np.dtype:
    if not isinstance(name, str):
        raise DecodeError(f"dtype must be a string such as '<f4', got {type(name).__name__}")
    try:
        dtype = np.dtype(name)
    except TypeError as error:
        raise DecodeError(f"unknown dtype {name!r}") from error
    if dtype.kind not in ALLOWED_KINDS:
        raise DecodeError(f"dtype {name!r} is not allowed (booleans, numbers and strings only)")
    return dtype


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind not in ALLOWED_KINDS:
        raise TypeError(f"dtype {obj.dtype} cannot be sent (booleans, numbers and strings only)")
    if isinstance(obj, np.ndarray):
        return {ARRAY_TAG: True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {SCALAR_TAG: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _decode_array(obj: dict) -> np.ndarray:
    dtype = _checked_dtype(obj.get(b"dtype"))
    shape, data = obj.get(b"shape"), obj.get(b"data")
    if not isinstance(shape, list | tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise DecodeError(f"array shape must be a list of non-negative integers, got {shape!r}")
    if not isinstance(data, bytes):
        raise DecodeError(f"array data must be bytes, got {type(data).__name__}")
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise DecodeError(
            f"array of shape {tuple(shape)} and dtype {dtype.str} needs "
            f"{math.prod(shape) * dtype.itemsize} bytes, got {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _decode_scalar(obj: dict) -> np.generic:
    dtype = _checked_dtype(obj.get(b"dtype"))
    data = obj.get(b"data")
    if isinstance(data, dict | list | tuple) or data is None:
        raise DecodeError(f"scalar data must be a number or a string, got {type(data).__name__}")
    try:
        return dtype.type(data)
    except (TypeError, ValueError, OverflowError) as error:
        raise DecodeError(f"scalar {data!r} is not a valid {dtype.str}") from error


def _decode(obj: dict) -> Any:
    if ARRAY_TAG in obj:
        return _decode_array(obj)
    if SCALAR_TAG in obj:
        return _decode_scalar(obj)
    return obj


def pack(obj: Any) -> bytes:
    """msgpack bytes of `obj` (maps, lists, numbers, strings, bytes, numpy arrays and scalars)."""
    return msgpack.packb(obj, default=_encode)


def unpack(data: bytes) -> Any:
    """The object `data` encodes; DecodeError (a ValueError) says why when it is not valid."""
    try:
        return msgpack.unpackb(data, object_hook=_decode)
    except DecodeError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise DecodeError(f"not valid msgpack: {error}") from error
