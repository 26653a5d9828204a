"""Builders of LeRobot datasets laid out by hand the way LeRobot itself writes them (v2.1 and v3.0),
independently of `vlaflow.data.lerobot`'s writer, plus frames that carry a readable frame counter.

The layouts follow LeRobot's code: HF-datasets parquet types (one-element features as scalars,
vectors as fixed-size lists, images as struct<bytes, path> with PNG bytes), mp4s encoded like
`encode_video_frames` (PyAV, yuv420p, g=2, no explicit pts), v3.0 episodes concatenated in one
video file with `from_timestamp` = duration of the episodes before, `meta/tasks.parquet` written
from a pandas frame indexed by task (unnamed index: column `__index_level_0__`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

BITS = 16  # a 4x4 grid of black/white blocks: survives lossy codecs untouched


def counter_frames(values: Sequence[int], size: int) -> np.ndarray:
    """uint8 [T, size, size, 3] frames whose 4x4 block grid spells `values` in binary."""
    block = size // 4
    bits = (np.asarray(values)[:, None] >> np.arange(BITS)) & 1  # [T, 16]
    grid = bits.reshape(-1, 4, 4).astype(np.uint8) * 255
    frames = grid.repeat(block, axis=1).repeat(block, axis=2)
    return np.repeat(frames[..., None], 3, axis=-1)


def read_counter(frame: np.ndarray) -> int:
    """The value `counter_frames` drew into a (decoded, possibly lossy) frame."""
    size = frame.shape[0]
    block = size // 4
    means = frame.mean(axis=-1).reshape(4, block, 4, block).mean(axis=(1, 3))
    bits = (means > 127).reshape(-1).astype(np.int64)
    return int((bits << np.arange(BITS)).sum())


def encode_like_lerobot(path: Path, frames: np.ndarray, fps: int, codec: str) -> None:
    """mp4 the way LeRobot's `encode_video_frames` makes it (frames without explicit pts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, fps, options={"g": "2", "crf": "30"})
        stream.pix_fmt, stream.width, stream.height = "yuv420p", frames.shape[2], frames.shape[1]
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def png_bytes(image: np.ndarray) -> bytes:
    encoder = av.CodecContext.create("png", "w")
    encoder.width, encoder.height, encoder.pix_fmt = image.shape[1], image.shape[0], "rgb24"
    packets = encoder.encode(av.VideoFrame.from_ndarray(image, format="rgb24")) + encoder.encode(None)
    return b"".join(bytes(p) for p in packets)


def episode_arrays(episode_index: int, length: int, start: int, task_index: int, fps: int) -> dict:
    """Per-frame columns of one episode: distinct, checkable values."""
    k = np.arange(length)
    return {
        "observation.state": (np.stack([k, k * 2, k * 3], 1) + 1000 * episode_index).astype(np.float32),
        "action": (np.stack([k, -k], 1) + 100 * episode_index).astype(np.float32) + 0.5,
        "timestamp": (k / fps).astype(np.float32),
        "frame_index": k.astype(np.int64),
        "episode_index": np.full(length, episode_index, np.int64),
        "index": (start + k).astype(np.int64),
        "task_index": np.full(length, task_index, np.int64),
    }


def hf_table(columns: dict, images: dict[str, list[bytes]] | None = None) -> pa.Table:
    """A table typed as HF `datasets` stores LeRobot features (Value / Sequence(length) / Image)."""
    arrays = {}
    for name, values in columns.items():
        if values.ndim == 1:
            arrays[name] = pa.array(values)
        else:
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    for name, blobs in (images or {}).items():
        arrays[name] = pa.StructArray.from_arrays(
            [pa.array(blobs, pa.binary()), pa.array([f"frame_{i:06d}.png" for i in range(len(blobs))])],
            names=["bytes", "path"],
        )
    return pa.table(arrays)


def simple_stats(values: np.ndarray) -> dict:
    x = values.reshape(len(values), -1).astype(np.float64) if values.ndim > 1 else values[:, None]
    return {
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "count": [len(x)],
    }


def image_stats(frames: np.ndarray) -> dict:
    x = frames.astype(np.float64) / 255.0
    stat = {
        "min": x.min((0, 1, 2)),
        "max": x.max((0, 1, 2)),
        "mean": x.mean((0, 1, 2)),
        "std": x.std((0, 1, 2)),
    }
    out = {k: v.reshape(3, 1, 1).tolist() for k, v in stat.items()}
    out["count"] = [len(frames)]
    return out


NUMERIC_FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [3], "names": {"motors": ["x", "y", "z"]}},
    "action": {"dtype": "float32", "shape": [2], "names": {"motors": ["a", "b"]}},
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
TASKS = ["pick the cube", "open the drawer"]


def build_v21(root: Path, lengths: Sequence[int], fps: int = 10, size: int = 32) -> Path:
    """v2.1: one parquet and one mp4 per episode, jsonl metadata, per-episode stats."""
    key = "observation.images.top"
    features = {
        key: {
            "dtype": "video",
            "shape": [size, size, 3],
            "names": ["height", "width", "channel"],
            "info": {"video.fps": fps, "video.codec": "h264", "video.pix_fmt": "yuv420p", "has_audio": False},
        },
        **NUMERIC_FEATURES,
    }
    (root / "meta").mkdir(parents=True)
    start = 0
    episodes, episodes_stats = [], []
    for e, length in enumerate(lengths):
        columns = episode_arrays(e, length, start, e % 2, fps)
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(hf_table(columns), path)
        frames = counter_frames(100 * e + np.arange(length), size)
        encode_like_lerobot(root / f"videos/chunk-000/{key}/episode_{e:06d}.mp4", frames, fps, "libx264")
        episodes.append({"episode_index": e, "tasks": [TASKS[e % 2]], "length": length})
        stats = {name: simple_stats(values) for name, values in columns.items()}
        stats[key] = image_stats(frames)
        episodes_stats.append({"episode_index": e, "stats": stats})
        start += length
    info = {
        "codebase_version": "v2.1",
        "robot_type": "koch",
        "total_episodes": len(lengths),
        "total_frames": start,
        "total_tasks": len(TASKS),
        "total_videos": len(lengths),
        "total_chunks": 1,
        "chunks_size": 1000,
        "fps": fps,
        "splits": {"train": f"0:{len(lengths)}"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": features,
    }
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    for name, rows in (
        ("episodes", episodes),
        ("tasks", [{"task_index": i, "task": t} for i, t in enumerate(TASKS)]),
        ("episodes_stats", episodes_stats),
    ):
        (root / f"meta/{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def build_v30(root: Path, files: Sequence[Sequence[int]], camera: str, fps: int = 10, size: int = 32) -> Path:
    """v3.0 by hand: `files[f]` lists the episode lengths stored together in data file f and, for
    `camera="video"`, concatenated in AV1 video file f (LeRobot's default codec); `camera="image"`
    embeds PNGs in the parquet instead."""
    key = "observation.images.front"
    features = {
        **NUMERIC_FEATURES,
        key: {"dtype": camera, "shape": [size, size, 3], "names": ["height", "width", "channels"]},
    }
    root.mkdir(parents=True)
    episodes, all_columns, all_frames = [], [], []
    e = start = 0
    for file_index, lengths in enumerate(files):
        file_columns, file_frames, video_time = [], [], 0.0
        for length in lengths:
            columns = episode_arrays(e, length, start, e % 2, fps)
            frames = counter_frames(100 * e + np.arange(length), size)
            row = {
                "episode_index": e,
                "tasks": [TASKS[e % 2]],
                "length": length,
                "data/chunk_index": 0,
                "data/file_index": file_index,
                "dataset_from_index": start,
                "dataset_to_index": start + length,
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
            }
            if camera == "video":
                row |= {
                    f"videos/{key}/chunk_index": 0,
                    f"videos/{key}/file_index": file_index,
                    f"videos/{key}/from_timestamp": video_time,
                    f"videos/{key}/to_timestamp": video_time + length / fps,
                }
                video_time += length / fps
            for name, values in columns.items():
                for stat, value in simple_stats(values).items():
                    row[f"stats/{name}/{stat}"] = value
            episodes.append(row)
            file_columns.append(columns)
            file_frames.append(frames)
            e, start = e + 1, start + length
        columns = {n: np.concatenate([c[n] for c in file_columns]) for n in file_columns[0]}
        frames = np.concatenate(file_frames)
        images = {key: [png_bytes(f) for f in frames]} if camera == "image" else None
        data_path = root / f"data/chunk-000/file-{file_index:03d}.parquet"
        data_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(hf_table(columns, images), data_path)
        if camera == "video":
            video_path = root / f"videos/{key}/chunk-000/file-{file_index:03d}.mp4"
            encode_like_lerobot(video_path, frames, fps, "libsvtav1")
        all_columns.append(columns)
        all_frames.append(frames)

    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(episodes), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(
        pa.table({"task_index": pa.array(range(len(TASKS)), pa.int64()), "__index_level_0__": TASKS}),
        root / "meta/tasks.parquet",
    )
    stats = {name: simple_stats(np.concatenate([c[name] for c in all_columns])) for name in all_columns[0]}
    stats[key] = image_stats(np.concatenate(all_frames))
    (root / "meta/stats.json").write_text(json.dumps(stats, indent=4))
    info = {
        "codebase_version": "v3.0",
        "robot_type": "so100",
        "total_episodes": e,
        "total_frames": start,
        "total_tasks": len(TASKS),
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500,
        "fps": fps,
        "splits": {"train": f"0:{e}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
        if camera == "video"
        else None,
        "features": features,
    }
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    return root


@pytest.fixture
def v21_dataset(tmp_path: Path) -> Path:
    return build_v21(tmp_path / "v21", lengths=[7, 12, 5])


@pytest.fixture
def v30_video_dataset(tmp_path: Path) -> Path:
    return build_v30(tmp_path / "v30_video", files=[[6, 9], [8]], camera="video")


@pytest.fixture
def v30_image_dataset(tmp_path: Path) -> Path:
    return build_v30(tmp_path / "v30_image", files=[[5, 4]], camera="image")


@pytest.fixture
def counter() -> tuple[Callable, Callable]:
    """(counter_frames, read_counter)."""
    return counter_frames, read_counter
