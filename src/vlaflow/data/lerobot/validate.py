"""`validate_dataset`: a strict check of a dataset on disk against the format, listing every problem.

The writer runs it before a dataset is moved into place; users run it on datasets from elsewhere.
What LeRobot itself writes passes: a feature LeRobot's `add_features` tool added has no entry in
meta/stats.json, which is reported as a `LeRobotFormatWarning` (Python's `warnings`), not a problem.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlaflow.data.lerobot.arrow import leaf_type, read_data_file
from vlaflow.data.lerobot.meta import (
    CAMERA_DTYPES,
    CODEBASE_VERSION,
    DEFAULT_FEATURES,
    LEGACY_EPISODES_STATS_PATH,
    NUMERIC_DTYPES,
    STATS_PATH,
    SUBTASK_INDEX,
    SUBTASKS_PATH,
    TASKS_PATH,
    TIMESTAMP_TOLERANCE_S,
    LeRobotMeta,
    read_info,
    read_jsonl,
)
from vlaflow.data.lerobot.stats import STAT_NAMES
from vlaflow.data.video import probe_video


class LeRobotFormatWarning(UserWarning):
    """Something a dataset lacks that LeRobot itself may leave out (e.g. stats of an added feature)."""


def validate_dataset(root: str | Path) -> None:
    """Strict self-check of a dataset on disk; raises ValueError listing every problem found, and
    warns (`LeRobotFormatWarning`) of what is missing but allowed, such as stats of a feature."""
    problems, notes = _dataset_problems(Path(root))
    if problems:
        raise ValueError(f"invalid LeRobot dataset at {root}:\n" + "\n".join(f"  - {p}" for p in problems))
    for note in notes:
        warnings.warn(f"{root}: {note}", LeRobotFormatWarning, stacklevel=2)


def _dataset_problems(root: Path) -> tuple[list[str], list[str]]:
    """(problems, warnings)."""
    try:
        info = read_info(root)
    except (OSError, ValueError) as e:
        return [str(e)], []
    problems = _info_problems(info)
    if problems:
        return problems, []
    try:
        meta = LeRobotMeta(root)
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as e:
        return [f"cannot read the metadata: {e}"], []
    problems += _episode_problems(meta) + _row_order_problems(meta)
    if problems:
        return problems, []  # the data checks below rely on consistent episode metadata
    stats_problems, notes = _stats_problems(meta)
    return problems + _data_problems(meta) + _video_problems(meta) + stats_problems, notes


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
        if not isinstance(ft, dict):  # "names" is optional: LeRobot's add_features needs only these two
            problems.append(f"{where}: must be a dict with dtype and shape")
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
    subtask = info["features"].get(SUBTASK_INDEX)
    if subtask is not None and (
        not str(subtask.get("dtype")).startswith(("int", "uint")) or subtask.get("shape") != [1]
    ):
        problems.append(
            f"info.json: feature {SUBTASK_INDEX!r} (a row of {SUBTASKS_PATH}) must be an int, shape [1]"
        )
    return problems


def _row_order_problems(meta: LeRobotMeta) -> list[str]:
    """LeRobot looks tasks and subtasks up by row (`.iloc[index]`), so the rows of tasks.parquet and
    subtasks.parquet must be in index order for it to read what we read."""
    files = [(TASKS_PATH, "task_index")] if meta.is_v3 else []
    if meta.subtasks is not None:
        files.append((SUBTASKS_PATH, SUBTASK_INDEX))
    problems = []
    for relative, column in files:
        values = pq.read_table(meta.root / relative, columns=[column]).column(column).to_pylist()
        if values != list(range(len(values))):
            problems.append(
                f"{relative}: rows must be in {column} order 0..{len(values) - 1} (LeRobot reads entry k "
                f"from row k), got {values[:10]}"
            )
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
    if np.dtype(leaf_type(t).to_pandas_dtype()) != np.dtype(feature["dtype"]):
        return f"stored as {leaf_type(t)}, info.json says {feature['dtype']}"
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
            parts.append(read_data_file(path, features, keys))
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
    if meta.subtasks is not None:
        subtask_index = columns[SUBTASK_INDEX][:, 0]
        if subtask_index.min() < 0 or subtask_index.max() >= len(meta.subtasks):
            problems.append(
                f"column {SUBTASK_INDEX!r}: values outside 0..{len(meta.subtasks) - 1} "
                f"(the rows of {SUBTASKS_PATH})"
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


def _stats_problems(meta: LeRobotMeta) -> tuple[list[str], list[str]]:
    """(problems, warnings): a feature without stats is a warning, as LeRobot's add_features leaves
    the features it adds; stats that are there must be complete and shaped right."""
    if meta.stats is None:
        source = STATS_PATH if meta.is_v3 else LEGACY_EPISODES_STATS_PATH
        return [f"missing {source} (normalization statistics)"], []
    problems, notes = [], []
    if not meta.is_v3 and (meta.root / LEGACY_EPISODES_STATS_PATH).is_file():
        lines = len(read_jsonl(meta.root / LEGACY_EPISODES_STATS_PATH))
        if lines != len(meta.episodes):
            problems.append(
                f"{LEGACY_EPISODES_STATS_PATH} has {lines} lines for {len(meta.episodes)} episodes"
            )
    for key, ft in meta.features.items():
        if ft["dtype"] == "string":
            continue
        stats = meta.stats.get(key)
        if stats is None:
            notes.append(f"stats: no entry for feature {key!r}")
            continue
        missing = [s for s in STAT_NAMES if s not in stats]
        if missing:
            problems.append(f"stats[{key!r}]: missing {missing}")
        shape = (3, 1, 1) if ft["dtype"] in CAMERA_DTYPES else tuple(ft["shape"])
        for name, value in stats.items():
            want = (1,) if name == "count" else shape
            if value.shape != want:
                problems.append(f"stats[{key!r}][{name!r}]: shape {value.shape}, expected {want}")
    return problems, notes
