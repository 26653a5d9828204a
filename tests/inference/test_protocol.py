"""The msgpack-numpy codec: openpi's byte layout, exact round trips, and nothing but plain data."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlaflow.inference.protocol import (
    ARRAY_TAG,
    MAX_DEPTH,
    MAX_OBJECTS,
    SCALAR_TAG,
    DecodeError,
    check_structure,
    pack,
    unpack,
)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.linspace(-1, 1, 7, dtype=np.float32),
        np.array([[1.5, np.nan], [np.inf, -0.0]], dtype=np.float64),
        np.array([True, False]),
        np.arange(6, dtype=">i4").reshape(3, 2),  # big-endian stays big-endian
        np.arange(12, dtype=np.int64).reshape(3, 4)[:, ::2],  # not contiguous
        np.zeros((0, 3), dtype=np.float16),
        np.array(3.0),  # 0-d
        np.array(["ab", "c"]),
        np.array([b"xy", b"z"]),
    ],
)
def test_arrays_round_trip_exactly(array):
    out = unpack(pack({"x": array}))["x"]
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_scalars_and_plain_values_round_trip():
    message = {
        "f": np.float32(1.25),
        "i": np.int64(-7),
        "b": np.bool_(True),
        "nested": {"list": [1, 2.5, "three", None, b"four"], "text": "héllo"},
    }
    out = unpack(pack(message))
    for key in ("f", "i", "b"):
        assert type(out[key]) is type(message[key]) and out[key] == message[key]
    assert out["nested"] == message["nested"]


def test_layout_is_openpis():
    raw = msgpack.unpackb(pack({"a": np.zeros((2, 3), np.float32), "s": np.int16(5)}))
    assert raw["a"] == {ARRAY_TAG: True, b"data": bytes(24), b"dtype": "<f4", b"shape": [2, 3]}
    assert raw["s"] == {SCALAR_TAG: True, b"data": 5, b"dtype": "<i2"}
    # and a frame built by hand the way openpi's client packs it decodes
    frame = msgpack.packb({"state": {ARRAY_TAG: True, b"data": bytes(8), b"dtype": "<f4", b"shape": (2,)}})
    np.testing.assert_array_equal(unpack(frame)["state"], np.zeros(2, np.float32))


@pytest.mark.parametrize(
    "value", [np.array([object()], dtype=object), np.zeros(2, dtype="i4,f4"), np.zeros(2, dtype=np.complex64)]
)
def test_object_structured_and_complex_arrays_are_refused_when_packing(value):
    with pytest.raises(TypeError, match="cannot be sent"):
        pack({"x": value})


def _array_map(**fields):
    return msgpack.packb({"x": {ARRAY_TAG: True, **{k.encode(): v for k, v in fields.items()}}})


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (_array_map(data=bytes(8), dtype="|O", shape=[1]), "not allowed"),
        (_array_map(data=bytes(8), dtype="V8", shape=[1]), "not allowed"),
        (_array_map(data=bytes(8), dtype="<c8", shape=[1]), "not allowed"),
        (_array_map(data=bytes(8), dtype="no such dtype", shape=[1]), "unknown dtype"),
        (_array_map(data=bytes(8), dtype=5, shape=[1]), "dtype must be a string"),
        (_array_map(data=bytes(7), dtype="<f4", shape=[2]), "needs 8 bytes, got 7"),
        (_array_map(data=bytes(8), dtype="<f4", shape=[-2, -1]), "non-negative"),
        (_array_map(data="text", dtype="<f4", shape=[1]), "data must be bytes"),
        (msgpack.packb({"s": {SCALAR_TAG: True, b"data": 1, b"dtype": "|O"}}), "not allowed"),
        (msgpack.packb({"s": {SCALAR_TAG: True, b"data": [1], b"dtype": "<f4"}}), "number or a string"),
        (pack({"a": np.zeros(100)})[:-3], "not valid msgpack"),
        (b"\xc1", "not valid msgpack"),
        (b"", "not valid msgpack"),
    ],
)
def test_invalid_frames_raise_decode_errors(frame, match):
    with pytest.raises(DecodeError, match=match):
        unpack(frame)


_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=70_000).filter(lambda t: len(t) < 40 or len(t) > 260)  # fixstr, str16
    | st.text(min_size=40, max_size=260)  # str8, str16
    | st.binary(max_size=300)
)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=8), inner, max_size=20),
    max_leaves=60,
)


def _objects(value) -> int:
    if isinstance(value, list):
        return 1 + sum(_objects(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(1 + _objects(v) for v in value.values())
    return 1


@settings(max_examples=150, deadline=None)
@given(_VALUES)
def test_the_structure_check_counts_exactly_the_objects_the_decoder_builds(value):
    """Every msgpack type header is read right: a valid frame passes at its exact object count and
    fails one below it, and decodes to what was packed."""
    frame = msgpack.packb(value)
    check_structure(frame, max_objects=_objects(value))
    with pytest.raises(DecodeError, match="more than"):
        check_structure(frame, max_objects=_objects(value) - 1)
    assert unpack(frame) == value


def test_frames_of_too_many_objects_or_too_deep_are_refused_from_their_headers():
    many = 200_000
    for empty in (b"\x90", b"\x80", b"\xc0"):  # empty arrays, empty maps, nils
        with pytest.raises(DecodeError, match=f"more than {MAX_OBJECTS} objects"):
            unpack(b"\xdd" + many.to_bytes(4, "big") + empty * many)
    with pytest.raises(DecodeError, match=f"nesting deeper than {MAX_DEPTH} levels"):
        unpack(b"\x91" * 100_000 + b"\xc0")
    with pytest.raises(DecodeError, match=f"nesting deeper than {MAX_DEPTH} levels"):
        unpack(b"\x81\xa1a" * (MAX_DEPTH + 1) + b"\xc0")
    nested = None
    for _ in range(MAX_DEPTH):
        nested = [nested]
    assert unpack(pack(nested)) == nested  # as deep as allowed
    image = {"image": np.zeros((480, 640, 3), np.uint8), "state": np.zeros(8), "prompt": "pick"}
    assert unpack(pack(image))["image"].shape == (480, 640, 3)
