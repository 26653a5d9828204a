"""Parquet columns <-> numpy, in the types LeRobot (HF `datasets`) stores features with: one-element
features as scalars, vectors as (fixed-size) lists, images as struct<bytes, path> holding PNG or JPEG.

Kept apart from the reader and writer, which share it, and from the validator, which checks stored
types with it.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def leaf_type(t: pa.DataType) -> pa.DataType:
    while True:
        if isinstance(t, pa.ExtensionType):
            t = t.storage_type
        elif _is_list(t):
            t = t.value_type
        else:
            return t


def column_to_numpy(column: pa.ChunkedArray | pa.Array, feature: Mapping, where: str) -> np.ndarray:
    """[N, *shape] array of the feature's dtype (object array of str for "string") from a scalar,
    list, fixed-size-list or nested-list column; raises ValueError naming `where` on a mismatch."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n, shape = len(arr), tuple(feature["shape"])
    if feature["dtype"] == "string":
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            raise ValueError(f"{where}: expected a string column, got {arr.type}")
        if arr.null_count:
            raise ValueError(f"{where}: {arr.null_count} missing values")
        return np.array(arr.to_pylist(), dtype=object)
    level = 0
    while True:
        if arr.null_count:
            raise ValueError(f"{where}: {arr.null_count} missing values")
        if isinstance(arr.type, pa.ExtensionType):
            arr = arr.storage
            continue
        if not _is_list(arr.type):
            break
        if level >= len(shape):
            raise ValueError(
                f"{where}: expected shape {list(shape)} per row, found deeper nesting ({arr.type})"
            )
        if pa.types.is_fixed_size_list(arr.type):
            sizes_ok = arr.type.list_size == shape[level]
        else:
            sizes_ok = len(arr) == 0 or pc.all(pc.equal(arr.value_lengths(), shape[level])).as_py()
        if not sizes_ok:
            raise ValueError(f"{where}: expected shape {list(shape)} per row, dimension {level} differs")
        arr, level = arr.flatten(), level + 1
    if level != len(shape) and not (level == 0 and shape == (1,)):
        raise ValueError(f"{where}: expected shape {list(shape)} per row, got {level}-level nesting")
    values = arr.to_numpy(zero_copy_only=False)
    return values.reshape(n, *shape).astype(np.dtype(feature["dtype"]), copy=False)


def arrow_type(feature: Mapping) -> pa.DataType:
    dtype = feature["dtype"]
    if dtype == "string":
        return pa.string()
    if dtype == "image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    t = pa.from_numpy_dtype(np.dtype(dtype))
    shape = tuple(feature["shape"])
    if shape == (1,):
        return t  # LeRobot (HF datasets `Value`) stores one-element features as scalars
    for size in reversed(shape):
        t = pa.list_(t, size)
    return t


def numpy_to_arrow(values: np.ndarray | list, feature: Mapping) -> pa.Array:
    t = arrow_type(feature)
    if feature["dtype"] == "string":
        return pa.array(list(values), t)
    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    if not _is_list(t):
        return flat
    for size in reversed(feature["shape"]):
        flat = pa.FixedSizeListArray.from_arrays(flat, size)
    return flat


def decode_image(data: bytes, where: str) -> np.ndarray:
    """uint8 RGB [H, W, 3] from PNG or JPEG bytes (the `image` feature's embedded file)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        codec = "png"
    elif data[:2] == b"\xff\xd8":
        codec = "mjpeg"
    else:
        raise ValueError(f"{where}: image bytes are neither PNG nor JPEG")
    frames = av.CodecContext.create(codec, "r").decode(av.Packet(data))
    if not frames:
        raise ValueError(f"{where}: could not decode the {codec} image")
    return frames[0].to_ndarray(format="rgb24").copy()  # own the pixels, not a view into FFmpeg memory


def encode_png(image: np.ndarray) -> bytes:
    height, width, _ = image.shape
    encoder = av.CodecContext.create("png", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "rgb24"
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    return b"".join(bytes(p) for p in encoder.encode(frame) + encoder.encode(None))


class ImageColumn:
    """Embedded image files of an `image` feature across data files, decoded on access."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._chunks: list[pa.Array] = []
        self._starts = [0]

    def extend(self, column: pa.ChunkedArray, where: str) -> None:
        for chunk in column.chunks:
            data = chunk.field("bytes") if pa.types.is_struct(chunk.type) else chunk
            if not (pa.types.is_binary(data.type) or pa.types.is_large_binary(data.type)):
                raise ValueError(f"{where}: expected struct<bytes, path> or binary, got {column.type}")
            if data.null_count:
                raise ValueError(f"{where}: {data.null_count} rows have no embedded image bytes")
            self._chunks.append(data)
            self._starts.append(self._starts[-1] + len(data))

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, i: int) -> np.ndarray:
        k = bisect.bisect_right(self._starts, i) - 1
        return decode_image(self._chunks[k][i - self._starts[k]].as_py(), f"{self.key} row {i}")


def read_data_file(
    path: Path, features: Mapping[str, Mapping], keys: Sequence[str], episodes: Sequence[int] | None = None
) -> dict[str, Any]:
    """Columns `keys` of one data file, only the rows of `episodes` if given: numpy arrays, or raw
    arrow columns for image features."""
    if not path.is_file():
        raise FileNotFoundError(f"missing data file {path}")
    needed = list(keys) if episodes is None else list(dict.fromkeys([*keys, "episode_index"]))
    missing = [k for k in needed if k not in pq.read_schema(path).names]
    if missing:
        raise ValueError(f"{path}: missing feature columns {missing}")
    table = pq.read_table(path, columns=needed)
    if episodes is not None:
        where = f"{path} column 'episode_index'"
        rows = column_to_numpy(table.column("episode_index"), features["episode_index"], where)[:, 0]
        table = table.filter(pa.array(np.isin(rows, np.asarray(episodes, dtype=np.int64))))
    return {
        k: table.column(k)
        if features[k]["dtype"] == "image"
        else column_to_numpy(table.column(k), features[k], f"{path} column {k!r}")
        for k in keys
    }
