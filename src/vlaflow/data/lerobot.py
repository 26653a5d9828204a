"""LeRobot datasets on local disk: read v3.0 and v2.1, write v3.0, validate — without `lerobot`.

The on-disk layout is LeRobot's (see the project's lerobot-dataset-format spec): parquet files read
with pyarrow, mp4 files decoded with PyAV (`vlaflow.data.video`). The `lerobot` package pins its own
torch, so we read and write the format ourselves and check ourselves against the real layout.
"""

from __future__ import annotations

import bisect
import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlaflow.data.video import VideoDecoderPool, VideoEncoder, default_video_codec, probe_video

CODEBASE_VERSION = "v3.0"
LEGACY_VERSIONS = ("v2.1", "v2.0")
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
EPISODES_PATH = EPISODES_DIR + "/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
LEGACY_EPISODES_PATH = "meta/episodes.jsonl"
LEGACY_TASKS_PATH = "meta/tasks.jsonl"
LEGACY_EPISODES_STATS_PATH = "meta/episodes_stats.jsonl"

DEFAULT_FEATURES: dict[str, dict] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
CAMERA_DTYPES = ("video", "image")
NUMERIC_DTYPES = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
)
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
STAT_NAMES = ("min", "max", "mean", "std", "count")
TIMESTAMP_TOLERANCE_S = 1e-4
_MB = 1024 * 1024


# ----------------------------------------------------------------------------------------------
# Metadata


class LeRobotMeta:
    """A dataset's metadata: info.json, tasks by task_index, one dict per episode, stats.

    v2.1 metadata is presented like v3.0: episodes get `dataset_from_index` / `dataset_to_index`
    (cumulative lengths in episode order) and `stats` aggregates `episodes_stats.jsonl`.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.info = _read_info(self.root)
        self.codebase_version: str = self.info["codebase_version"]
        if self.is_v3:
            self.tasks = _read_tasks_parquet(self.root / TASKS_PATH)
            self.episodes = _read_episodes_v3(self.root)
            self.stats = _read_stats_json(self.root / STATS_PATH)
        else:
            self.tasks = _read_tasks_jsonl(self.root / LEGACY_TASKS_PATH)
            self.episodes = _read_episodes_jsonl(self.root / LEGACY_EPISODES_PATH)
            self.stats = _read_legacy_stats(self.root)
        self._position = {ep["episode_index"]: pos for pos, ep in enumerate(self.episodes)}

    @property
    def is_v3(self) -> bool:
        return self.codebase_version == CODEBASE_VERSION

    @property
    def fps(self) -> int:
        return self.info["fps"]

    @property
    def features(self) -> dict[str, dict]:
        return self.info["features"]

    @property
    def robot_type(self) -> str | None:
        return self.info.get("robot_type")

    @property
    def camera_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] in CAMERA_DTYPES]

    @property
    def video_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] == "video"]

    def position(self, episode_index: int) -> int:
        """Where an episode is in `episodes`, by its episode_index."""
        if episode_index not in self._position:
            raise KeyError(f"no episode {episode_index} in {self.root}")
        return self._position[episode_index]

    def episode(self, episode_index: int) -> dict:
        """The metadata dict of an episode, by its episode_index."""
        return self.episodes[self.position(episode_index)]

    def data_file(self, episode: Mapping) -> Path:
        """The parquet file holding an episode's rows."""
        if self.is_v3:
            return self.root / self.info["data_path"].format(
                chunk_index=episode["data/chunk_index"], file_index=episode["data/file_index"]
            )
        index = episode["episode_index"]
        chunk = index // self.info["chunks_size"]
        return self.root / self.info["data_path"].format(episode_chunk=chunk, episode_index=index)

    def data_files(self) -> list[Path]:
        """Every data file, in row order (v3.0: by chunk then file; v2.1: by episode)."""
        if not self.is_v3:
            return [self.data_file(ep) for ep in self.episodes]
        locations = sorted({(ep["data/chunk_index"], ep["data/file_index"]) for ep in self.episodes})
        return [self.root / self.info["data_path"].format(chunk_index=c, file_index=f) for c, f in locations]

    def video_file(self, episode: Mapping, key: str) -> Path:
        """The mp4 holding camera `key` of an episode."""
        template = self.info.get("video_path")
        if not template:
            raise ValueError(f"{self.root / INFO_PATH}: video feature {key!r} but no video_path")
        if self.is_v3:
            return self.root / template.format(
                video_key=key,
                chunk_index=episode[f"videos/{key}/chunk_index"],
                file_index=episode[f"videos/{key}/file_index"],
            )
        index = episode["episode_index"]
        chunk = index // self.info["chunks_size"]
        return self.root / template.format(episode_chunk=chunk, video_key=key, episode_index=index)

    def video_from_timestamp(self, episode: Mapping, key: str) -> float:
        """Where the episode starts in its video file (v3.0 concatenates episodes; v2.1 does not)."""
        return float(episode[f"videos/{key}/from_timestamp"]) if self.is_v3 else 0.0


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}")
    with open(path) as f:
        return json.load(f)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _read_info(root: Path) -> dict:
    info = _read_json(root / INFO_PATH)
    version = info.get("codebase_version") if isinstance(info, dict) else None
    if version != CODEBASE_VERSION and version not in LEGACY_VERSIONS:
        raise ValueError(
            f"{root / INFO_PATH}: codebase_version {version!r} is not one of "
            f"{(CODEBASE_VERSION, *LEGACY_VERSIONS)}"
        )
    for field, kind in (("fps", int), ("features", dict)):
        if not isinstance(info.get(field), kind):
            raise ValueError(
                f"{root / INFO_PATH}: {field!r} must be {kind.__name__}, got {info.get(field)!r}"
            )
    return info


def _read_tasks_parquet(path: Path) -> list[str]:
    """Tasks by task_index from meta/tasks.parquet, whose task strings are the pandas index (stored
    as a column named "task", or "__index_level_0__" when the index had no name)."""
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}")
    table = pq.read_table(path)
    text_column = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
    if "task_index" not in table.column_names or text_column is None:
        raise ValueError(f"{path}: expected columns 'task_index' and 'task', got {table.column_names}")
    return _tasks_by_index(
        table.column("task_index").to_pylist(), table.column(text_column).to_pylist(), path
    )


def _read_tasks_jsonl(path: Path) -> list[str]:
    rows = _read_jsonl(path)
    return _tasks_by_index([r.get("task_index") for r in rows], [r.get("task") for r in rows], path)


def _tasks_by_index(indices: list, texts: list, path: Path) -> list[str]:
    if sorted(indices) != list(range(len(indices))):
        raise ValueError(f"{path}: task_index values must be 0..{len(indices) - 1}, got {sorted(indices)}")
    if not all(isinstance(t, str) for t in texts) or len(set(texts)) != len(texts):
        raise ValueError(f"{path}: tasks must be distinct strings")
    tasks = [""] * len(indices)
    for i, text in zip(indices, texts, strict=True):
        tasks[i] = text
    return tasks


def _read_episodes_v3(root: Path) -> list[dict]:
    files = sorted((root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no episode metadata under {root / EPISODES_DIR}")
    episodes = []
    for path in files:
        # Per-episode stats are skipped: they can be large and the reader does not need them.
        columns = [c for c in pq.read_schema(path).names if not c.startswith("stats/")]
        episodes += pq.read_table(path, columns=columns).to_pylist()
    return sorted(episodes, key=lambda ep: ep["episode_index"])


def _read_episodes_jsonl(path: Path) -> list[dict]:
    episodes = sorted(_read_jsonl(path), key=lambda ep: ep["episode_index"])
    start = 0
    for ep in episodes:
        ep["dataset_from_index"] = start
        start += ep["length"]
        ep["dataset_to_index"] = start
    return episodes


def _stats_to_numpy(stats: Mapping) -> dict[str, dict[str, np.ndarray]]:
    return {key: {name: np.asarray(value) for name, value in ft.items()} for key, ft in stats.items()}


def _read_stats_json(path: Path) -> dict[str, dict[str, np.ndarray]] | None:
    return _stats_to_numpy(_read_json(path)) if path.is_file() else None


def _read_legacy_stats(root: Path) -> dict[str, dict[str, np.ndarray]] | None:
    path = root / LEGACY_EPISODES_STATS_PATH
    if path.is_file():
        return aggregate_stats([_stats_to_numpy(row["stats"]) for row in _read_jsonl(path)])
    return _read_stats_json(root / STATS_PATH)  # v2.0 kept dataset-level stats only


# ----------------------------------------------------------------------------------------------
# Parquet columns <-> numpy


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _leaf_type(t: pa.DataType) -> pa.DataType:
    while True:
        if isinstance(t, pa.ExtensionType):
            t = t.storage_type
        elif _is_list(t):
            t = t.value_type
        else:
            return t


def _column_to_numpy(column: pa.ChunkedArray | pa.Array, feature: Mapping, where: str) -> np.ndarray:
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


def _arrow_type(feature: Mapping) -> pa.DataType:
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


def _numpy_to_arrow(values: np.ndarray | list, feature: Mapping) -> pa.Array:
    t = _arrow_type(feature)
    if feature["dtype"] == "string":
        return pa.array(list(values), t)
    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    if not _is_list(t):
        return flat
    for size in reversed(feature["shape"]):
        flat = pa.FixedSizeListArray.from_arrays(flat, size)
    return flat


def _decode_image(data: bytes, where: str) -> np.ndarray:
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


def _encode_png(image: np.ndarray) -> bytes:
    height, width, _ = image.shape
    encoder = av.CodecContext.create("png", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "rgb24"
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    return b"".join(bytes(p) for p in encoder.encode(frame) + encoder.encode(None))


class _ImageColumn:
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
        return _decode_image(self._chunks[k][i - self._starts[k]].as_py(), f"{self.key} row {i}")


def _read_data_file(path: Path, features: Mapping[str, Mapping], keys: Sequence[str]) -> dict[str, Any]:
    """Columns `keys` of one data file: numpy arrays, or raw arrow columns for image features."""
    if not path.is_file():
        raise FileNotFoundError(f"missing data file {path}")
    missing = [k for k in keys if k not in pq.read_schema(path).names]
    if missing:
        raise ValueError(f"{path}: missing feature columns {missing}")
    table = pq.read_table(path, columns=list(keys))
    return {
        k: table.column(k)
        if features[k]["dtype"] == "image"
        else _column_to_numpy(table.column(k), features[k], f"{path} column {k!r}")
        for k in keys
    }


# ----------------------------------------------------------------------------------------------
# Reading


class LeRobotDataset:
    """Map-style dataset over every frame of a local LeRobot dataset (v3.0 or v2.1).

    `dataset[i]` is a dict of numpy values: every non-camera feature with the feature's dtype and
    shape (strings as `str`), the selected cameras as uint8 [H, W, 3], and `task`. With
    `action_horizon=H`, `action_key` holds the H actions from frame i on, (H, A), the steps past the
    episode's end repeating its last action and flagged in `<action_key>_is_pad` (H,) bool.

    `action_key` and `state_key` must name features of the dataset (pass None for a dataset without
    them); `image_keys` selects the cameras to decode (default: all, [] for none).

    Numeric columns are read into memory once; video frames are decoded on access with one open
    container per file per worker process.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        action_horizon: int | None = None,
        action_key: str | None = "action",
        state_key: str | None = "observation.state",
        image_keys: Sequence[str] | None = None,
        tolerance_s: float = TIMESTAMP_TOLERANCE_S,
    ) -> None:
        self.root = Path(root)
        self.meta = LeRobotMeta(self.root)
        features = self.meta.features
        for arg, key in (("action_key", action_key), ("state_key", state_key)):
            if key is not None and key not in features:
                raise ValueError(
                    f"{arg}={key!r} is not a feature of {self.root}; features: {sorted(features)}"
                )
        missing_defaults = [k for k in DEFAULT_FEATURES if k not in features]
        if missing_defaults:
            raise ValueError(
                f"{self.root / INFO_PATH}: features lack the standard columns {missing_defaults}"
            )
        if action_horizon is not None and (action_key is None or action_horizon < 1):
            raise ValueError(f"action_horizon={action_horizon} needs an action_key and must be >= 1")
        self.action_horizon = action_horizon
        self.action_key = action_key
        self.state_key = state_key
        self.tolerance_s = tolerance_s
        self.camera_keys = list(self.meta.camera_keys if image_keys is None else image_keys)
        unknown = [k for k in self.camera_keys if k not in self.meta.camera_keys]
        if unknown:
            raise ValueError(f"image_keys {unknown} are not cameras of {self.root}: {self.meta.camera_keys}")

        value_keys = [k for k, ft in features.items() if ft["dtype"] not in CAMERA_DTYPES]
        embedded_keys = [k for k in self.camera_keys if features[k]["dtype"] == "image"]
        parts: dict[str, list[np.ndarray]] = {k: [] for k in value_keys}
        self._images = {k: _ImageColumn(k) for k in embedded_keys}
        for path in self.meta.data_files():
            for key, column in _read_data_file(path, features, value_keys + embedded_keys).items():
                if key in self._images:
                    self._images[key].extend(column, f"{path} column {key!r}")
                else:
                    parts[key].append(column)
        self._columns = {k: np.concatenate(v) for k, v in parts.items()}
        for column in self._columns.values():
            column.flags.writeable = False
        self._episode_pos, self._starts, self._ends = self._index_episodes()
        meta = self.meta
        self._video_sources = {  # per episode: (mp4 file, start of the episode in it)
            key: [(meta.video_file(ep, key), meta.video_from_timestamp(ep, key)) for ep in meta.episodes]
            for key in self.camera_keys
            if key not in self._images
        }
        self._decoders = VideoDecoderPool()

    def _index_episodes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row -> episode position, and each episode's [start, end) rows, checked against the
        metadata lengths."""
        row_episodes = self._columns["episode_index"][:, 0]
        known = np.array([ep["episode_index"] for ep in self.meta.episodes], dtype=np.int64)
        pos = np.searchsorted(known, row_episodes).clip(0, max(len(known) - 1, 0))
        if len(known) == 0 or not np.array_equal(known[pos], row_episodes):
            raise ValueError(f"{self.root}: data rows belong to episodes missing from the episode metadata")
        boundaries = np.flatnonzero(np.diff(pos)) + 1
        run_starts = np.concatenate([[0], boundaries])
        run_ends = np.concatenate([boundaries, [len(pos)]])
        if len(np.unique(pos[run_starts])) != len(run_starts):
            raise ValueError(f"{self.root}: the rows of an episode are not contiguous in the data files")
        starts = np.zeros(len(known), np.int64)
        ends = np.zeros(len(known), np.int64)
        starts[pos[run_starts]], ends[pos[run_starts]] = run_starts, run_ends
        for p, ep in enumerate(self.meta.episodes):
            if ends[p] - starts[p] != ep["length"]:
                raise ValueError(
                    f"{self.root}: episode {ep['episode_index']} has length {ep['length']} in the metadata "
                    f"but {ends[p] - starts[p]} rows in the data files"
                )
        return pos, starts, ends

    def __len__(self) -> int:
        return len(self._episode_pos)

    @property
    def num_episodes(self) -> int:
        return len(self.meta.episodes)

    @property
    def fps(self) -> int:
        return self.meta.fps

    def column(self, key: str) -> np.ndarray:
        """A copy of a whole non-camera column, [N, *shape] (e.g. for normalization statistics)."""
        if key not in self._columns:
            raise KeyError(f"{key!r} is not a non-camera feature; columns: {sorted(self._columns)}")
        return self._columns[key].copy()

    def episode_ends(self) -> np.ndarray:
        """(N,) for every frame, the dataset index one past its episode's last frame."""
        return self._ends[self._episode_pos].copy()

    def episode_of(self, i: int) -> int:
        """episode_index of frame i."""
        return int(self._columns["episode_index"][i, 0])

    def episode_range(self, episode_index: int) -> range:
        """The dataset indices of an episode's frames."""
        p = self.meta.position(episode_index)
        return range(int(self._starts[p]), int(self._ends[p]))

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} frames")
        i = int(i) % n
        item: dict[str, Any] = {
            key: column[i] if column.dtype == object else column[i].copy()
            for key, column in self._columns.items()
        }
        pos = self._episode_pos[i]
        if self.action_horizon is not None:
            steps = i + np.arange(self.action_horizon)
            end = self._ends[pos]
            item[self.action_key] = self._columns[self.action_key][np.minimum(steps, end - 1)]
            item[f"{self.action_key}_is_pad"] = steps >= end
        item["task"] = self.meta.tasks[int(self._columns["task_index"][i, 0])]
        for key, column in self._images.items():
            item[key] = column[i]
        for key, sources in self._video_sources.items():
            path, from_timestamp = sources[pos]
            ts = from_timestamp + float(self._columns["timestamp"][i, 0])
            item[key] = self._decoders.get(path).frames_at([ts], self.tolerance_s)[0]
        return item

    def __repr__(self) -> str:
        return (
            f"LeRobotDataset({str(self.root)!r}, {self.meta.codebase_version}, {len(self)} frames, "
            f"{self.num_episodes} episodes, {self.fps} fps, cameras={self.camera_keys})"
        )


# ----------------------------------------------------------------------------------------------
# Statistics


def feature_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """min, max, mean, std, count and quantiles over the first (frame) axis, in float64."""
    x = np.asarray(values, dtype=np.float64)
    stats = {
        "min": x.min(axis=0),
        "max": x.max(axis=0),
        "mean": x.mean(axis=0),
        "std": x.std(axis=0),
        "count": np.array([len(x)]),
    }
    for name, q in zip(QUANTILES, np.quantile(x, list(QUANTILES.values()), axis=0), strict=True):
        stats[name] = q
    return stats


def _image_histogram(frames: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-channel counts of the 256 uint8 values over a subsample of frames [T, H, W, C]: LeRobot's
    sample sizes (up to ~T^0.75 frames, at least 100) and downscaling of frames of 300 px or more."""
    t, h, w, c = frames.shape
    count = t if t < 100 else max(100, min(int(t**0.75), 10_000))
    picked = frames[np.round(np.linspace(0, t - 1, count)).astype(int)]
    step = max(1, max(h, w) // 150) if max(h, w) >= 300 else 1
    picked = picked[:, ::step, ::step]
    hist = np.stack([np.bincount(picked[..., ch].ravel(), minlength=256) for ch in range(c)])
    return hist.astype(np.int64), count


def _histogram_stats(hist: np.ndarray, count: int) -> dict[str, np.ndarray]:
    """Image stats shaped (C, 1, 1) in [0, 1] from per-channel value counts; quantiles interpolate
    linearly between order statistics exactly as `np.quantile` would on the sampled pixels."""
    values = np.arange(hist.shape[1], dtype=np.float64)
    n = hist.sum(axis=1, keepdims=True).astype(np.float64)
    mean = (hist * values).sum(axis=1, keepdims=True) / n
    std = np.sqrt((hist * (values - mean) ** 2).sum(axis=1, keepdims=True) / n)
    cumulative = np.cumsum(hist, axis=1)

    def order_statistic(rank: np.ndarray) -> np.ndarray:
        return np.array(
            [np.searchsorted(cum, r, side="right") for cum, r in zip(cumulative, rank, strict=True)]
        )

    stats = {
        "min": np.array([np.flatnonzero(h)[0] for h in hist], np.float64),
        "max": np.array([np.flatnonzero(h)[-1] for h in hist], np.float64),
        "mean": mean[:, 0],
        "std": std[:, 0],
    }
    for name, q in QUANTILES.items():
        position = q * (n[:, 0] - 1)
        low, high = order_statistic(np.floor(position)), order_statistic(np.ceil(position))
        stats[name] = low + (position - np.floor(position)) * (high - low)
    out = {name: (value / 255.0).reshape(-1, 1, 1) for name, value in stats.items()}
    out["count"] = np.array([count])
    return out


def aggregate_stats(stats_list: Sequence[Mapping[str, Mapping[str, np.ndarray]]]) -> dict:
    """Combine per-episode stats: exact min, max, mean, std and count (parallel variance); each
    quantile is the count-weighted mean of the episodes' quantiles, an approximation."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in dict.fromkeys(k for stats in stats_list for k in stats):
        parts = [stats[key] for stats in stats_list if key in stats]
        counts = np.array([float(np.asarray(p["count"]).reshape(-1)[0]) for p in parts])
        weights = counts / counts.sum()
        means = np.stack([np.asarray(p["mean"], np.float64) for p in parts])
        mean = np.tensordot(weights, means, axes=1)
        second = np.stack([np.asarray(p["std"], np.float64) ** 2 for p in parts]) + (means - mean) ** 2
        out[key] = {
            "min": np.min(np.stack([p["min"] for p in parts]), axis=0),
            "max": np.max(np.stack([p["max"] for p in parts]), axis=0),
            "mean": mean,
            "std": np.sqrt(np.tensordot(weights, second, axes=1)),
            "count": np.array([int(counts.sum())]),
        }
        for name in QUANTILES:
            if all(name in p for p in parts):
                out[key][name] = np.tensordot(weights, np.stack([p[name] for p in parts]), axes=1)
    return out


def _jsonable_stats(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
    return {key: {name: np.asarray(v).tolist() for name, v in ft.items()} for key, ft in stats.items()}


# ----------------------------------------------------------------------------------------------
# Writing


def _next_file(chunk_index: int, file_index: int, chunks_size: int) -> tuple[int, int]:
    return (chunk_index + 1, 0) if file_index + 1 >= chunks_size else (chunk_index, file_index + 1)


def _over_cap(filled_bytes: float, filled_units: int, incoming_bytes: float, cap_bytes: float) -> bool:
    """Whether adding `incoming_bytes` to a non-empty file would pass its size cap."""
    return filled_units > 0 and filled_bytes + incoming_bytes > cap_bytes


def _normalize_features(features: Mapping[str, Mapping]) -> dict[str, dict]:
    out = {}
    for name, ft in features.items():
        where = f"feature {name!r}"
        if name in DEFAULT_FEATURES:
            raise ValueError(f"{where} is written by the writer itself; leave it out of `features`")
        if "/" in name:
            raise ValueError(f"{where}: names must not contain '/' (used in episode metadata columns)")
        dtype = ft.get("dtype")
        if dtype not in (*NUMERIC_DTYPES, "string", *CAMERA_DTYPES):
            raise ValueError(
                f"{where}: dtype {dtype!r} is not one of {(*NUMERIC_DTYPES, 'string', *CAMERA_DTYPES)}"
            )
        shape = ft.get("shape", [1] if dtype == "string" else None)
        if (
            not isinstance(shape, (list, tuple))
            or not shape
            or not all(isinstance(d, int) and d > 0 for d in shape)
        ):
            raise ValueError(f"{where}: shape must be a non-empty list of positive ints, got {shape!r}")
        if dtype == "string" and list(shape) != [1]:
            raise ValueError(f"{where}: a string feature holds one string per frame, shape [1], got {shape}")
        if dtype in CAMERA_DTYPES and (len(shape) != 3 or shape[2] != 3):
            raise ValueError(f"{where}: camera features are [height, width, 3], got {shape}")
        default_names = ["height", "width", "channels"] if dtype in CAMERA_DTYPES else None
        out[name] = {"dtype": dtype, "shape": list(shape), "names": ft.get("names", default_names)}
    return out


def _episode_values(name: str, feature: Mapping, value: Any, length: int) -> np.ndarray:
    """`value` checked against the feature ([T, *shape], castable dtype) and cast to its dtype."""
    dtype, shape = feature["dtype"], tuple(feature["shape"])
    if dtype == "string":
        texts = list(value)
        if len(texts) != length or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"frames[{name!r}]: expected {length} str values (one per frame)")
        return np.array(texts, dtype=object)
    arr = np.asarray(value)
    if shape == (1,) and arr.shape == (length,):
        arr = arr[:, None]
    if arr.shape != (length, *shape):
        raise ValueError(f"frames[{name!r}]: expected shape {(length, *shape)}, got {arr.shape}")
    target = np.uint8 if dtype in CAMERA_DTYPES else np.dtype(dtype)
    if dtype in CAMERA_DTYPES and arr.dtype != np.uint8:
        raise ValueError(f"frames[{name!r}]: camera frames must be uint8 RGB, got {arr.dtype}")
    if not np.can_cast(arr.dtype, target, casting="same_kind"):
        raise ValueError(f"frames[{name!r}]: cannot store {arr.dtype} values as {dtype}")
    return arr.astype(target, copy=False)


class LeRobotDatasetWriter:
    """Writes a LeRobot v3.0 dataset, one episode at a time.

    Everything goes to a hidden sibling directory (``.<name>.partial-*``) that `finalize` validates
    and renames to `root`, so an interrupted run never leaves something that looks complete at
    `root`. Use as a context manager: a clean exit finalizes, an exception discards the partial
    directory (as does a failure while an episode's files are written).

    `features` maps names to ``{"dtype", "shape"[, "names"]}``: numeric dtypes ("float32", "int64",
    "bool", ...), "string" (one str per frame, e.g. a subtask annotation), "video" (uint8 [H, W, 3],
    encoded to mp4) or "image" (uint8 [H, W, 3], PNG in the parquet). The standard columns
    (timestamp, frame_index, episode_index, index, task_index) are added by the writer.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        fps: int,
        features: Mapping[str, Mapping],
        robot_type: str | None = None,
        video_codec: str | None = None,
        chunks_size: int = 1000,
        data_files_size_in_mb: float = 100,
        video_files_size_in_mb: float = 200,
    ) -> None:
        if not isinstance(fps, int) or fps <= 0:
            raise ValueError(f"fps must be a positive int, got {fps!r}")
        if chunks_size < 1 or data_files_size_in_mb <= 0 or video_files_size_in_mb <= 0:
            raise ValueError("chunks_size and the file size caps must be positive")
        self.root = Path(root)
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            raise FileExistsError(f"{self.root} already exists and is not an empty directory")
        self.fps = fps
        self.robot_type = robot_type
        self.video_codec = video_codec or default_video_codec()
        self.chunks_size = chunks_size
        self.data_files_size_in_mb = data_files_size_in_mb
        self.video_files_size_in_mb = video_files_size_in_mb
        self.features = {**_normalize_features(features), **DEFAULT_FEATURES}
        self._user_keys = [k for k in self.features if k not in DEFAULT_FEATURES]
        self._video_keys = [k for k, ft in self.features.items() if ft["dtype"] == "video"]
        self._row_keys = [k for k, ft in self.features.items() if ft["dtype"] != "video"]
        self._schema = pa.schema([(k, _arrow_type(self.features[k])) for k in self._row_keys])

        self.root.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.root.name}.partial-", dir=self.root.parent))
        self._closed = False
        self._tasks: dict[str, int] = {}
        self._episodes: list[dict] = []
        self._total_frames = 0
        self._data_writer: pq.ParquetWriter | None = None
        self._data_location = (0, 0)
        self._data_bytes = self._data_rows = 0
        self._encoders: dict[str, VideoEncoder] = {}
        self._video_locations = dict.fromkeys(self._video_keys, (0, 0))
        camera_keys = [k for k, ft in self.features.items() if ft["dtype"] in CAMERA_DTYPES]
        self._image_hist = {k: np.zeros((3, 256), np.int64) for k in camera_keys}  # for stats.json
        self._image_samples = dict.fromkeys(camera_keys, 0)

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    def add_episode(self, frames: Mapping[str, Any], task: str) -> int:
        """Append one episode; `frames` maps every feature to its values with a leading time axis T.
        Returns the new episode_index."""
        if self._closed:
            raise RuntimeError("the writer is finalized or aborted")
        if not isinstance(task, str) or not task:
            raise ValueError(f"task must be a non-empty str, got {task!r}")
        missing = [k for k in self._user_keys if k not in frames]
        extra = [k for k in frames if k not in self._user_keys]
        if missing or extra:
            raise ValueError(f"frames do not match the features: missing {missing}, unexpected {extra}")
        lengths = {k: len(v) for k, v in frames.items()}
        length = next(iter(lengths.values()), 0)
        if length == 0 or any(n != length for n in lengths.values()):
            raise ValueError(f"every feature needs the same number T >= 1 of frames, got {lengths}")

        values = {k: _episode_values(k, self.features[k], frames[k], length) for k in self._user_keys}
        episode_index = len(self._episodes)
        task_index = self._tasks.setdefault(task, len(self._tasks))
        frame_index = np.arange(length, dtype=np.int64)[:, None]
        values["timestamp"] = (frame_index / self.fps).astype(np.float32)
        values["frame_index"] = frame_index
        values["episode_index"] = np.full((length, 1), episode_index, np.int64)
        values["index"] = frame_index + self._total_frames
        values["task_index"] = np.full((length, 1), task_index, np.int64)

        row: dict[str, Any] = {"episode_index": episode_index, "tasks": [task], "length": length}
        try:
            row.update(self._write_rows(values, length))
            for key in self._video_keys:
                row.update(self._write_video(key, values[key]))
        except BaseException:
            self.abort()  # part of the episode is on disk with no metadata: nothing can be kept
            raise
        for key, stats in self._episode_stats(values).items():
            row.update({f"stats/{key}/{name}": np.asarray(v).tolist() for name, v in stats.items()})
        self._episodes.append(row)
        self._total_frames += length
        return episode_index

    def _write_rows(self, values: Mapping[str, np.ndarray], length: int) -> dict[str, int]:
        columns = [
            pa.StructArray.from_arrays(
                [pa.array([_encode_png(im) for im in values[k]], pa.binary()), pa.nulls(length, pa.string())],
                names=["bytes", "path"],
            )
            if self.features[k]["dtype"] == "image"
            else _numpy_to_arrow(values[k], self.features[k])
            for k in self._row_keys
        ]
        table = pa.Table.from_arrays(columns, schema=self._schema)
        cap = self.data_files_size_in_mb * _MB
        if self._data_writer is not None and _over_cap(self._data_bytes, self._data_rows, table.nbytes, cap):
            self._data_writer.close()
            self._data_writer = None
            self._data_location = _next_file(*self._data_location, self.chunks_size)
        chunk_index, file_index = self._data_location
        if self._data_writer is None:
            path = self._tmp / DATA_PATH.format(chunk_index=chunk_index, file_index=file_index)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(path, self._schema, compression="snappy")
            self._data_bytes = self._data_rows = 0
        self._data_writer.write_table(table)
        self._data_bytes += table.nbytes
        self._data_rows += length
        return {
            "data/chunk_index": chunk_index,
            "data/file_index": file_index,
            "dataset_from_index": self._total_frames,
            "dataset_to_index": self._total_frames + length,
        }

    def _write_video(self, key: str, frames: np.ndarray) -> dict[str, Any]:
        encoder = self._encoders.get(key)
        if encoder is not None:
            per_frame = encoder.bytes_written / max(encoder.frames_written, 1)
            cap = self.video_files_size_in_mb * _MB
            if _over_cap(encoder.bytes_written, encoder.frames_written, per_frame * len(frames), cap):
                encoder.close()
                encoder = None
                self._video_locations[key] = _next_file(*self._video_locations[key], self.chunks_size)
        chunk_index, file_index = self._video_locations[key]
        if encoder is None:
            height, width, _ = self.features[key]["shape"]
            path = self._tmp / VIDEO_PATH.format(
                video_key=key, chunk_index=chunk_index, file_index=file_index
            )
            encoder = VideoEncoder(path, fps=self.fps, width=width, height=height, codec=self.video_codec)
            self._encoders[key] = encoder
        from_timestamp = encoder.frames_written / self.fps
        encoder.write(frames)
        return {
            f"videos/{key}/chunk_index": chunk_index,
            f"videos/{key}/file_index": file_index,
            f"videos/{key}/from_timestamp": from_timestamp,
            f"videos/{key}/to_timestamp": encoder.frames_written / self.fps,
        }

    def _episode_stats(self, values: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        stats = {}
        for key, ft in self.features.items():
            if ft["dtype"] in CAMERA_DTYPES:
                hist, count = _image_histogram(values[key])
                self._image_hist[key] += hist
                self._image_samples[key] += count
                stats[key] = _histogram_stats(hist, count)
            elif ft["dtype"] != "string":
                stats[key] = feature_stats(values[key])
        return stats

    def _close_files(self) -> None:
        if self._data_writer is not None:
            self._data_writer.close()
            self._data_writer = None
        for encoder in self._encoders.values():
            encoder.close()
        self._encoders.clear()

    def abort(self) -> None:
        """Close the open files and delete everything written so far."""
        self._closed = True
        try:
            self._close_files()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def finalize(self) -> Path:
        """Close the files, write the metadata, validate, and move the dataset to `root`.

        If validation fails the partial directory is kept for inspection and ValueError is raised."""
        if self._closed:
            raise RuntimeError("the writer is finalized or aborted")
        if not self._episodes:
            self.abort()
            raise ValueError(f"no episodes were added; nothing written to {self.root}")
        self._closed = True
        self._close_files()
        self._write_tasks()
        self._write_episodes()
        self._write_json(STATS_PATH, _jsonable_stats(self._dataset_stats()))
        self._write_json(INFO_PATH, self._info())  # last: its presence marks a complete dataset
        validate_dataset(self._tmp)
        if self.root.exists():
            self.root.rmdir()  # empty, checked at construction; fails loudly if filled since
        self._tmp.rename(self.root)
        return self.root

    def _write_json(self, relative: str, data: Any) -> None:
        path = self._tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            json.dump(data, f, indent=4, ensure_ascii=False)

    def _write_tasks(self) -> None:
        """meta/tasks.parquet as pandas writes a frame indexed by task: so that LeRobot's
        `pd.read_parquet` gets the task strings back as the index."""
        pandas_meta = {
            "index_columns": ["task"],
            "column_indexes": [
                {
                    "name": None,
                    "field_name": None,
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": {"encoding": "UTF-8"},
                }
            ],
            "columns": [
                {
                    "name": "task_index",
                    "field_name": "task_index",
                    "pandas_type": "int64",
                    "numpy_type": "int64",
                    "metadata": None,
                },
                {
                    "name": "task",
                    "field_name": "task",
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": None,
                },
            ],
            "attributes": {},
            "creator": {"library": "pyarrow", "version": pa.__version__},
            "pandas_version": "2.2.3",
        }
        schema = pa.schema([("task_index", pa.int64()), ("task", pa.string())]).with_metadata(
            {b"pandas": json.dumps(pandas_meta).encode()}
        )
        tasks = sorted(self._tasks, key=self._tasks.__getitem__)
        table = pa.Table.from_arrays(
            [pa.array(range(len(tasks)), pa.int64()), pa.array(tasks)], schema=schema
        )
        (self._tmp / TASKS_PATH).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, self._tmp / TASKS_PATH)

    def _write_episodes(self) -> None:
        """meta/episodes parquet files, split like data files by the data size cap."""
        row_bytes = pa.Table.from_pylist(self._episodes).nbytes / len(self._episodes)
        per_file = max(1, int(self.data_files_size_in_mb * _MB // max(row_bytes, 1)))
        location = (0, 0)
        for start in range(0, len(self._episodes), per_file):
            chunk_index, file_index = location
            rows = [
                {**ep, "meta/episodes/chunk_index": chunk_index, "meta/episodes/file_index": file_index}
                for ep in self._episodes[start : start + per_file]
            ]
            path = self._tmp / EPISODES_PATH.format(chunk_index=chunk_index, file_index=file_index)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), path)
            location = _next_file(chunk_index, file_index, self.chunks_size)

    def _dataset_stats(self) -> dict[str, dict[str, np.ndarray]]:
        """Exact stats of every numeric column (read back from the data files) and image stats from
        the pixel histograms of the sampled frames of all episodes."""
        numeric = [k for k, ft in self.features.items() if ft["dtype"] in NUMERIC_DTYPES]
        files = sorted({(ep["data/chunk_index"], ep["data/file_index"]) for ep in self._episodes})
        parts = [
            _read_data_file(self._tmp / DATA_PATH.format(chunk_index=c, file_index=f), self.features, numeric)
            for c, f in files
        ]
        stats = {k: feature_stats(np.concatenate([p[k] for p in parts])) for k in numeric}
        for key, hist in self._image_hist.items():
            stats[key] = _histogram_stats(hist, self._image_samples[key])
        return stats

    def _info(self) -> dict:
        features = {k: dict(ft) for k, ft in self.features.items()}
        for key in self._video_keys:
            probe = probe_video(self._tmp / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0))
            features[key]["info"] = {
                "video.height": probe["height"],
                "video.width": probe["width"],
                "video.codec": probe["codec"],
                "video.pix_fmt": probe["pix_fmt"],
                "video.is_depth_map": False,
                "video.fps": self.fps,
                "video.channels": 3,
                "has_audio": probe["has_audio"],
            }
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self._episodes),
            "total_frames": self._total_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_files_size_in_mb,
            "video_files_size_in_mb": self.video_files_size_in_mb,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self._episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self._video_keys else None,
            "features": features,
        }

    def __enter__(self) -> LeRobotDatasetWriter:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is None:
            self.finalize()
        elif not self._closed:
            self.abort()


# ----------------------------------------------------------------------------------------------
# Validation


def validate_dataset(root: str | Path) -> None:
    """Strict self-check of a dataset on disk; raises ValueError listing every problem found."""
    problems = _dataset_problems(Path(root))
    if problems:
        raise ValueError(f"invalid LeRobot dataset at {root}:\n" + "\n".join(f"  - {p}" for p in problems))


def _dataset_problems(root: Path) -> list[str]:
    try:
        info = _read_info(root)
    except (OSError, ValueError) as e:
        return [str(e)]
    problems = _info_problems(info)
    if problems:
        return problems
    try:
        meta = LeRobotMeta(root)
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as e:
        return [f"cannot read the metadata: {e}"]
    problems += _episode_problems(meta)
    if problems:
        return problems  # the data checks below rely on consistent episode metadata
    return problems + _data_problems(meta) + _video_problems(meta) + _stats_problems(meta)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _info_problems(info: dict) -> list[str]:
    v3 = info["codebase_version"] == CODEBASE_VERSION
    checks: dict[str, tuple[Any, str]] = {
        "fps": (lambda x: _is_int(x) and x > 0, "a positive int"),
        "total_episodes": (lambda x: _is_int(x) and x >= 0, "an int >= 0"),
        "total_frames": (lambda x: _is_int(x) and x >= 0, "an int >= 0"),
        "total_tasks": (lambda x: _is_int(x) and x >= 0, "an int >= 0"),
        "chunks_size": (lambda x: _is_int(x) and x > 0, "a positive int"),
        "data_path": (lambda x: isinstance(x, str), "a str"),
        "video_path": (lambda x: x is None or isinstance(x, str), "a str or null"),
        "robot_type": (lambda x: x is None or isinstance(x, str), "a str or null"),
        "splits": (lambda x: isinstance(x, dict), "a dict"),
        "features": (lambda x: isinstance(x, dict), "a dict"),
    }
    if v3:
        for field in ("data_files_size_in_mb", "video_files_size_in_mb"):
            checks[field] = (
                lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0,
                "> 0",
            )
    else:
        checks["total_chunks"] = (lambda x: _is_int(x) and x >= 0, "an int >= 0")
        checks["total_videos"] = (lambda x: _is_int(x) and x >= 0, "an int >= 0")
    problems = [
        f"info.json: {field!r} must be {expected}, got {info.get(field, '<missing>')!r}"
        for field, (ok, expected) in checks.items()
        if field not in info or not ok(info[field])
    ]
    if problems:
        return problems
    for name, ft in info["features"].items():
        where = f"info.json feature {name!r}"
        if not isinstance(ft, dict) or "names" not in ft:
            problems.append(f"{where}: must be a dict with dtype, shape and names")
            continue
        dtype, shape = ft.get("dtype"), ft.get("shape")
        if dtype not in (*NUMERIC_DTYPES, "string", *CAMERA_DTYPES):
            problems.append(f"{where}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not shape or not all(_is_int(d) and d > 0 for d in shape):
            problems.append(f"{where}: shape must be a list of positive ints, got {shape!r}")
        elif dtype in CAMERA_DTYPES and len(shape) != 3:
            problems.append(f"{where}: camera shape must be [height, width, channels], got {shape}")
        if dtype == "video" and info["video_path"] is None:
            problems.append(f"{where}: video feature but video_path is null")
    for name, expected in DEFAULT_FEATURES.items():
        ft = info["features"].get(name)
        if not isinstance(ft, dict) or ft.get("dtype") != expected["dtype"] or ft.get("shape") != [1]:
            problems.append(f"info.json: standard feature {name!r} must be {expected['dtype']} shape [1]")
    return problems


def _episode_problems(meta: LeRobotMeta) -> list[str]:
    info, episodes = meta.info, meta.episodes
    problems = []
    if len(episodes) != info["total_episodes"]:
        problems.append(
            f"info.json total_episodes={info['total_episodes']} but {len(episodes)} episodes listed"
        )
    indices = [ep.get("episode_index") for ep in episodes]
    if indices != list(range(len(episodes))):
        problems.append(f"episode_index values are not 0..{len(episodes) - 1}")
    if len(meta.tasks) != info["total_tasks"]:
        problems.append(f"info.json total_tasks={info['total_tasks']} but {len(meta.tasks)} tasks listed")
    required = ["episode_index", "tasks", "length", "dataset_from_index", "dataset_to_index"]
    if meta.is_v3:
        required += ["data/chunk_index", "data/file_index"]
        for key in meta.video_keys:
            required += [
                f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
            ]
    expected_start = 0
    for ep in episodes:
        where = f"episode {ep.get('episode_index')}"
        missing = [c for c in required if ep.get(c) is None]
        if missing:
            problems.append(f"{where}: missing metadata {missing}")
            continue
        if not _is_int(ep["length"]) or ep["length"] < 1:
            problems.append(f"{where}: length must be a positive int, got {ep['length']!r}")
            continue
        if (ep["dataset_from_index"], ep["dataset_to_index"]) != (
            expected_start,
            expected_start + ep["length"],
        ):
            problems.append(
                f"{where}: dataset_from/to_index ({ep['dataset_from_index']}, {ep['dataset_to_index']}) "
                f"should be ({expected_start}, {expected_start + ep['length']}) (contiguous episodes)"
            )
        expected_start += ep["length"]
        unknown = [t for t in ep["tasks"] if t not in meta.tasks]
        if unknown:
            problems.append(f"{where}: tasks {unknown} are not in the task list")
    if expected_start != info["total_frames"]:
        problems.append(
            f"info.json total_frames={info['total_frames']} but episode lengths sum to {expected_start}"
        )
    return problems


def _column_type_problem(schema: pa.Schema, key: str, feature: Mapping) -> str | None:
    """What is wrong with how a feature's column is stored, if anything."""
    if key not in schema.names:
        return "missing"
    t = schema.field(key).type
    if feature["dtype"] == "image":
        if pa.types.is_binary(t) or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0):
            return None
        return f"image column must be struct<bytes, path>, got {t}"
    if feature["dtype"] == "string":
        return None  # checked when read
    if np.dtype(_leaf_type(t).to_pandas_dtype()) != np.dtype(feature["dtype"]):
        return f"stored as {_leaf_type(t)}, info.json says {feature['dtype']}"
    return None


def _data_problems(meta: LeRobotMeta) -> list[str]:
    features = meta.features
    keys = [k for k, ft in features.items() if ft["dtype"] not in CAMERA_DTYPES]
    image_keys = [k for k, ft in features.items() if ft["dtype"] == "image"]
    problems: list[str] = []
    files = meta.data_files()
    parts = []
    for path in files:
        try:
            schema = pq.read_schema(path)
            parts.append(_read_data_file(path, features, keys))
        except (OSError, ValueError, pa.ArrowException) as e:
            problems.append(str(e))
            continue
        for key in keys + image_keys:
            problem = _column_type_problem(schema, key, features[key])
            if problem:
                problems.append(f"{path} column {key!r}: {problem}")
    if problems:
        return problems

    columns = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    n = len(columns["index"])
    if n != meta.info["total_frames"]:
        return [f"data files hold {n} rows, info.json total_frames={meta.info['total_frames']}"]
    lengths = np.array([ep["length"] for ep in meta.episodes])
    starts = np.array([ep["dataset_from_index"] for ep in meta.episodes])
    rows = np.arange(n)
    expected = {
        "index": rows,
        "episode_index": np.repeat([ep["episode_index"] for ep in meta.episodes], lengths),
        "frame_index": rows - np.repeat(starts, lengths),
    }
    for key, want in expected.items():
        bad = np.flatnonzero(columns[key][:, 0] != want)
        if len(bad):
            problems.append(
                f"column {key!r}: row {bad[0]} is {columns[key][bad[0], 0]}, expected {want[bad[0]]}"
            )
    drift = np.abs(columns["timestamp"][:, 0].astype(np.float64) - expected["frame_index"] / meta.fps)
    bad = np.flatnonzero(drift > TIMESTAMP_TOLERANCE_S)
    if len(bad):
        problems.append(
            f"column 'timestamp': row {bad[0]} is {columns['timestamp'][bad[0], 0]}, expected "
            f"frame_index / fps = {expected['frame_index'][bad[0]] / meta.fps} (+-{TIMESTAMP_TOLERANCE_S})"
        )
    task_index = columns["task_index"][:, 0]
    if task_index.min() < 0 or task_index.max() >= len(meta.tasks):
        problems.append(f"column 'task_index': values outside 0..{len(meta.tasks) - 1}")
    else:
        for ep, start, length in zip(meta.episodes, starts, lengths, strict=True):
            used = {meta.tasks[t] for t in np.unique(task_index[start : start + length])}
            if not used <= set(ep["tasks"]):
                problems.append(
                    f"episode {ep['episode_index']}: rows use tasks {sorted(used - set(ep['tasks']))} "
                    f"not in its metadata tasks {ep['tasks']}"
                )
    if meta.is_v3:
        file_of_row = np.repeat(np.arange(len(files)), [len(p["index"]) for p in parts])
        for ep, start, length in zip(meta.episodes, starts, lengths, strict=True):
            claimed = files.index(meta.data_file(ep))
            if np.any(file_of_row[start : start + length] != claimed):
                problems.append(f"episode {ep['episode_index']}: rows are not all in {files[claimed]}")
    return problems


def _video_problems(meta: LeRobotMeta) -> list[str]:
    problems = []
    fps = meta.fps
    if not meta.is_v3 and meta.info["total_videos"] != len(meta.episodes) * len(meta.video_keys):
        problems.append(
            f"info.json total_videos={meta.info['total_videos']} but there are "
            f"{len(meta.episodes)} episodes x {len(meta.video_keys)} cameras"
        )
    for key in meta.video_keys:
        by_file: dict[Path, list[dict]] = {}
        for ep in meta.episodes:
            by_file.setdefault(meta.video_file(ep, key), []).append(ep)
        height, width, _ = meta.features[key]["shape"]
        for path, episodes in by_file.items():
            if not path.is_file():
                problems.append(f"video {key!r}: missing file {path}")
                continue
            try:
                probe = probe_video(path)
            except (OSError, ValueError) as e:
                problems.append(f"video {key!r}: cannot read {path}: {e}")
                continue
            if (probe["height"], probe["width"]) != (height, width):
                problems.append(
                    f"video {key!r}: {path} is {probe['height']}x{probe['width']}, "
                    f"info.json says {height}x{width}"
                )
            previous_end = 0.0
            for ep in sorted(episodes, key=lambda e: meta.video_from_timestamp(e, key)):
                start = meta.video_from_timestamp(ep, key)
                end = float(ep[f"videos/{key}/to_timestamp"]) if meta.is_v3 else ep["length"] / fps
                where = f"video {key!r} episode {ep['episode_index']}"
                if start < previous_end - TIMESTAMP_TOLERANCE_S:
                    problems.append(
                        f"{where}: from_timestamp {start} overlaps the previous episode in {path}"
                    )
                if end - start < (ep["length"] - 1) / fps - TIMESTAMP_TOLERANCE_S:
                    problems.append(
                        f"{where}: [from_timestamp, to_timestamp) = [{start}, {end}) is shorter than its "
                        f"{ep['length']} frames at {fps} fps"
                    )
                needed = round(start * fps) + ep["length"]
                if probe["frames"] < needed:
                    problems.append(f"{where}: {path} has {probe['frames']} frames, needs {needed}")
                previous_end = end
    return problems


def _stats_problems(meta: LeRobotMeta) -> list[str]:
    if meta.stats is None:
        source = STATS_PATH if meta.is_v3 else LEGACY_EPISODES_STATS_PATH
        return [f"missing {source} (normalization statistics)"]
    problems = []
    if not meta.is_v3 and (meta.root / LEGACY_EPISODES_STATS_PATH).is_file():
        lines = len(_read_jsonl(meta.root / LEGACY_EPISODES_STATS_PATH))
        if lines != len(meta.episodes):
            problems.append(
                f"{LEGACY_EPISODES_STATS_PATH} has {lines} lines for {len(meta.episodes)} episodes"
            )
    for key, ft in meta.features.items():
        if ft["dtype"] == "string":
            continue
        stats = meta.stats.get(key)
        if stats is None:
            problems.append(f"stats: no entry for feature {key!r}")
            continue
        missing = [s for s in STAT_NAMES if s not in stats]
        if missing:
            problems.append(f"stats[{key!r}]: missing {missing}")
        shape = (3, 1, 1) if ft["dtype"] in CAMERA_DTYPES else tuple(ft["shape"])
        for name, value in stats.items():
            want = (1,) if name == "count" else shape
            if value.shape != want:
                problems.append(f"stats[{key!r}][{name!r}]: shape {value.shape}, expected {want}")
    return problems
