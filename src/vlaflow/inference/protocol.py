"""The policy server's wire codec: msgpack with numpy arrays, byte-compatible with openpi's
`msgpack_numpy`, so robot clients written for openpi talk to vlaflow unchanged.

An array travels as the map `{b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str,
b"shape": shape}` and a numpy scalar as `{b"__npgeneric__": True, b"data": item, b"dtype":
dtype.str}`. There is no pickle anywhere: only booleans, numbers and fixed-size strings decode
(object, structured and complex dtypes are refused both ways), and a decoded map that claims to be
an array must hold exactly as many bytes as its shape and dtype say. Server and client both use
this module; it needs only numpy and msgpack.

Before anything is decoded, `unpack` walks the frame's type headers (payloads are skipped, not read)
and refuses frames with more than `MAX_OBJECTS` maps, arrays and values or nested deeper than
`MAX_DEPTH`: a 16 MiB frame of millions of empty containers is refused in milliseconds instead of
being built in memory for seconds while the server waits on it.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

ARRAY_TAG = b"__ndarray__"
SCALAR_TAG = b"__npgeneric__"
ALLOWED_KINDS = "biufSU"  # bool, integers, floats, fixed-size bytes and unicode strings
MAX_OBJECTS = 10_000
"""Maps, arrays and values a frame may hold (a request holds tens; arrays travel as one bin each)."""
MAX_DEPTH = 64
"""Levels of nested maps and arrays a frame may hold (a request nests a few)."""

# msgpack type bytes whose payload has a fixed size: byte -> bytes after the type byte.
_FIXED = {0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
_FIXED |= {0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}  # fixext: a type byte and 1-16 bytes
# str / bin / ext with a length field: byte -> (bytes of the length, extra bytes before the payload).
_SIZED = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0)}
_SIZED |= {0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1)}
# array / map with a count field: byte -> (bytes of the count, items per entry).
_CONTAINERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


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


def check_structure(data: bytes, max_objects: int = MAX_OBJECTS, max_depth: int = MAX_DEPTH) -> None:
    """DecodeError if the msgpack `data` holds more than `max_objects` objects or nests deeper than
    `max_depth`, found from the type headers alone. Malformed bytes are left to the decoder."""
    pos, objects, left = 0, 0, [1]  # left: items still to read in each open container
    while left:
        if left[-1] == 0:
            left.pop()
            continue
        left[-1] -= 1
        if pos >= len(data):
            return
        byte, pos, objects = data[pos], pos + 1, objects + 1
        if objects > max_objects:
            raise DecodeError(f"more than {max_objects} objects (maps, arrays and values) in one frame")
        items = 0
        if 0x80 <= byte <= 0x8F:
            items = 2 * (byte & 0x0F)
        elif 0x90 <= byte <= 0x9F:
            items = byte & 0x0F
        elif 0xA0 <= byte <= 0xBF:
            pos += byte & 0x1F
        elif byte in _FIXED:
            pos += _FIXED[byte]
        elif byte in _SIZED:
            width, extra = _SIZED[byte]
            pos += width + extra + int.from_bytes(data[pos : pos + width], "big")
        elif byte in _CONTAINERS:
            width, per_entry = _CONTAINERS[byte]
            items = per_entry * int.from_bytes(data[pos : pos + width], "big")
            pos += width
        if items:
            if len(left) > max_depth:
                raise DecodeError(f"nesting deeper than {max_depth} levels of maps and arrays")
            left.append(items)


def pack(obj: Any) -> bytes:
    """msgpack bytes of `obj` (maps, lists, numbers, strings, bytes, numpy arrays and scalars)."""
    return msgpack.packb(obj, default=_encode)


def unpack(data: bytes) -> Any:
    """The object `data` encodes; DecodeError (a ValueError) says why when it is not valid."""
    check_structure(data)
    try:
        return msgpack.unpackb(data, object_hook=_decode)
    except DecodeError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise DecodeError(f"not valid msgpack: {error or type(error).__name__}") from error
