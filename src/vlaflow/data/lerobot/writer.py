"""`LeRobotDatasetWriter`: writes LeRobot v3.0 datasets (ours and the simulators' demonstrations).

Files are written as LeRobot lays them out (size-capped data and video files, chunked, with the
metadata and statistics LeRobot computes), into a partial directory that is validated and renamed
into place only when complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlaflow.data.lerobot.arrow import arrow_type, encode_png, numpy_to_arrow, read_data_file
from vlaflow.data.lerobot.meta import (
    CAMERA_DTYPES,
    CODEBASE_VERSION,
    DATA_PATH,
    DEFAULT_FEATURES,
    EPISODES_PATH,
    INFO_PATH,
    NUMERIC_DTYPES,
    STATS_PATH,
    SUBTASK_FEATURE,
    SUBTASK_INDEX,
    SUBTASKS_PATH,
    TASKS_PATH,
    VIDEO_PATH,
    write_indexed_strings,
)
from vlaflow.data.lerobot.stats import column_stats, histogram_stats, image_histogram, jsonable_stats
from vlaflow.data.lerobot.validate import validate_dataset
from vlaflow.data.video import VideoEncoder, default_video_codec, probe_video

_MB = 1024 * 1024


def _next_file(chunk_index: int, file_index: int, chunks_size: int) -> tuple[int, int]:
    return (chunk_index + 1, 0) if file_index + 1 >= chunks_size else (chunk_index, file_index + 1)


def _over_cap(filled_bytes: float, filled_units: int, incoming_bytes: float, cap_bytes: float) -> bool:
    """Whether adding `incoming_bytes` to a non-empty file would pass its size cap."""
    return filled_units > 0 and filled_bytes + incoming_bytes > cap_bytes


def _normalize_features(features: Mapping[str, Mapping], subtasks: bool) -> dict[str, dict]:
    out = {}
    for name, ft in features.items():
        where = f"feature {name!r}"
        if name in DEFAULT_FEATURES:
            raise ValueError(f"{where} is written by the writer itself; leave it out of `features`")
        if name == SUBTASK_INDEX:
            raise ValueError(
                f"{where} is written by the writer itself: make it with subtasks=True and pass "
                "add_episode(..., subtasks=[one str per frame])"
            )
        if subtasks and name == "subtask":
            raise ValueError(f"{where} would hide the subtask texts, which the reader returns as 'subtask'")
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


def _episode_values(where: str, feature: Mapping, value: Any, length: int) -> np.ndarray:
    """`value` checked against the feature ([T, *shape], castable dtype) and cast to its dtype."""
    dtype, shape = feature["dtype"], tuple(feature["shape"])
    if dtype == "string":
        texts = list(value)
        if len(texts) != length or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{where}: expected {length} str values (one per frame)")
        return np.array(texts, dtype=object)
    arr = np.asarray(value)
    if shape == (1,) and arr.shape == (length,):
        arr = arr[:, None]
    if arr.shape != (length, *shape):
        raise ValueError(f"{where}: expected shape {(length, *shape)}, got {arr.shape}")
    target = np.uint8 if dtype in CAMERA_DTYPES else np.dtype(dtype)
    if dtype in CAMERA_DTYPES and arr.dtype != np.uint8:
        raise ValueError(f"{where}: camera frames must be uint8 RGB, got {arr.dtype}")
    if not np.can_cast(arr.dtype, target, casting="same_kind"):
        raise ValueError(f"{where}: cannot store {arr.dtype} values as {dtype}")
    return arr.astype(target, copy=False)


class LeRobotDatasetWriter:
    """Writes a LeRobot v3.0 dataset, one episode at a time.

    Everything goes to a hidden sibling directory (``.<name>.partial-*``) that `finalize` validates
    and renames to `root`, so an interrupted run never leaves something that looks complete at
    `root`. Use as a context manager: a clean exit finalizes, an exception discards the partial
    directory (as does a failure while an episode's files are written).

    `features` maps names to ``{"dtype", "shape"[, "names"]}``: numeric dtypes ("float32", "int64",
    "bool", ...), "string" (one str per frame, e.g. a free-text annotation), "video" (uint8 [H, W, 3],
    encoded to mp4) or "image" (uint8 [H, W, 3], PNG in the parquet). The standard columns
    (timestamp, frame_index, episode_index, index, task_index) are added by the writer.

    With `subtasks=True` every episode also gets one subtask text per frame
    (``add_episode(frames, task, subtasks=[...])``), written in LeRobot's subtask convention: a
    per-frame int64 `subtask_index` column and meta/subtasks.parquet listing the texts by index,
    which LeRobot's reader (and ours) turn back into ``item["subtask"]``.
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
        subtasks: bool = False,
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
        self.features = {**_normalize_features(features, subtasks), **DEFAULT_FEATURES}
        self._user_keys = [k for k in self.features if k not in DEFAULT_FEATURES]
        if subtasks:
            self.features[SUBTASK_INDEX] = dict(SUBTASK_FEATURE)
        self._video_keys = [k for k, ft in self.features.items() if ft["dtype"] == "video"]
        self._row_keys = [k for k, ft in self.features.items() if ft["dtype"] != "video"]
        self._schema = pa.schema([(k, arrow_type(self.features[k])) for k in self._row_keys])

        self.root.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.root.name}.partial-", dir=self.root.parent))
        self._closed = False
        self._tasks: dict[str, int] = {}  # text -> index; insertion order is index order
        self._subtasks: dict[str, int] | None = {} if subtasks else None
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

    def add_episode(
        self, frames: Mapping[str, Any], task: str, *, subtasks: Sequence[str] | None = None
    ) -> int:
        """Append one episode; `frames` maps every feature to its values with a leading time axis T,
        `subtasks` (writers made with subtasks=True) gives the subtask text of each of the T frames.
        Returns the new episode_index."""
        if self._closed:
            raise RuntimeError("the writer is finalized or aborted")
        if not isinstance(task, str) or not task:
            raise ValueError(f"task must be a non-empty str, got {task!r}")
        if self._subtasks is None and subtasks is not None:
            raise ValueError("subtasks=[...] needs a writer made with subtasks=True")
        if self._subtasks is not None and subtasks is None:
            raise ValueError("this writer was made with subtasks=True: pass subtasks=[one str per frame]")
        missing = [k for k in self._user_keys if k not in frames]
        extra = [k for k in frames if k not in self._user_keys]
        if missing or extra:
            raise ValueError(f"frames do not match the features: missing {missing}, unexpected {extra}")
        lengths = {k: len(v) for k, v in frames.items()}
        length = next(iter(lengths.values()), 0)
        if length == 0 or any(n != length for n in lengths.values()):
            raise ValueError(f"every feature needs the same number T >= 1 of frames, got {lengths}")

        values = {
            k: _episode_values(f"frames[{k!r}]", self.features[k], frames[k], length) for k in self._user_keys
        }
        if self._subtasks is not None:
            texts = _episode_values("subtasks", {"dtype": "string", "shape": [1]}, subtasks, length)
            indices = [self._subtasks.setdefault(t, len(self._subtasks)) for t in texts]
            values[SUBTASK_INDEX] = np.array(indices, np.int64)[:, None]
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
                [pa.array([encode_png(im) for im in values[k]], pa.binary()), pa.nulls(length, pa.string())],
                names=["bytes", "path"],
            )
            if self.features[k]["dtype"] == "image"
            else numpy_to_arrow(values[k], self.features[k])
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
                hist, count = image_histogram(values[key])
                self._image_hist[key] += hist
                self._image_samples[key] += count
                stats[key] = histogram_stats(hist, count)
            elif ft["dtype"] != "string":
                stats[key] = column_stats(values[key])
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
        write_indexed_strings(self._tmp / TASKS_PATH, list(self._tasks), "task", "task_index")
        if self._subtasks is not None:
            write_indexed_strings(self._tmp / SUBTASKS_PATH, list(self._subtasks), "subtask", SUBTASK_INDEX)
        self._write_episodes()
        self._write_json(STATS_PATH, jsonable_stats(self._dataset_stats()))
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
            read_data_file(self._tmp / DATA_PATH.format(chunk_index=c, file_index=f), self.features, numeric)
            for c, f in files
        ]
        stats = {k: column_stats(np.concatenate([p[k] for p in parts])) for k in numeric}
        for key, hist in self._image_hist.items():
            stats[key] = histogram_stats(hist, self._image_samples[key])
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
