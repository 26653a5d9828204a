"""The metadata of a dataset: the layout's paths and constants, and the meta/ files read and written.

Everything else in the package starts from here: the reader, writer and validator locate data and
video files, tasks, subtasks and episodes through `LeRobotMeta`, whatever the version (v3.0 or v2.1).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlaflow.data.lerobot.stats import aggregate_stats, stats_to_numpy

CODEBASE_VERSION = "v3.0"
LEGACY_VERSIONS = ("v2.1", "v2.0")
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
SUBTASKS_PATH = "meta/subtasks.parquet"  # LeRobot 0.4.4 and later
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
TIMESTAMP_TOLERANCE_S = 1e-4
SUBTASK_INDEX = "subtask_index"
"""The per-frame column of the subtask convention: a row of meta/subtasks.parquet by frame."""
SUBTASK_FEATURE: dict[str, Any] = {"dtype": "int64", "shape": [1], "names": None}


class LeRobotMeta:
    """A dataset's metadata: info.json, tasks by task_index, one dict per episode, stats, and
    `subtasks` by subtask_index (None unless the dataset has a subtask_index feature and
    meta/subtasks.parquet).

    v2.1 metadata is presented like v3.0: episodes get `dataset_from_index` / `dataset_to_index`
    (cumulative lengths in episode order) and `stats` aggregates `episodes_stats.jsonl`.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.info = read_info(self.root)
        self.codebase_version: str = self.info["codebase_version"]
        if self.is_v3:
            self.tasks = read_indexed_strings(self.root / TASKS_PATH, "task", "task_index")
            self.episodes = _read_episodes_v3(self.root)
            self.stats = _read_stats_json(self.root / STATS_PATH)
        else:
            self.tasks = _read_tasks_jsonl(self.root / LEGACY_TASKS_PATH)
            self.episodes = _read_episodes_jsonl(self.root / LEGACY_EPISODES_PATH)
            self.stats = _read_legacy_stats(self.root)
        subtasks = self.root / SUBTASKS_PATH  # read as LeRobot uses it: with a subtask_index feature
        self.subtasks = (
            read_indexed_strings(subtasks, "subtask", SUBTASK_INDEX)
            if SUBTASK_INDEX in self.features and subtasks.is_file()
            else None
        )
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

    @property
    def episode_indices(self) -> list[int]:
        """Every episode's episode_index, in dataset order."""
        return [ep["episode_index"] for ep in self.episodes]

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

    def data_files(self, episodes: Sequence[Mapping] | None = None) -> list[Path]:
        """The data files holding `episodes` (default: all), in row order (v3.0: by chunk then file;
        v2.1: by episode)."""
        episodes = self.episodes if episodes is None else episodes
        if not self.is_v3:
            return [self.data_file(ep) for ep in episodes]
        locations = sorted({(ep["data/chunk_index"], ep["data/file_index"]) for ep in episodes})
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


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}")
    with open(path) as f:
        return json.load(f)


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_info(root: Path) -> dict:
    """meta/info.json, checked enough to read the rest; says whether `root` is missing, not a
    directory, or a directory that is not a dataset."""
    if not root.exists():
        raise FileNotFoundError(f"no such directory: {root}")
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory (a LeRobot dataset is a directory)")
    if not (root / INFO_PATH).is_file():
        found = sorted(p.name + "/" * p.is_dir() for p in root.iterdir())
        shown = ", ".join(found[:10]) + (f", ... ({len(found)} entries)" if len(found) > 10 else "")
        raise FileNotFoundError(
            f"{root} is not a LeRobot dataset: no {INFO_PATH} (found: {shown or 'nothing, it is empty'})"
        )
    info = read_json(root / INFO_PATH)
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


def read_indexed_strings(path: Path, index: str, column: str) -> list[str]:
    """The strings of meta/tasks.parquet or meta/subtasks.parquet by their `column` value (task_index,
    subtask_index): the strings are the pandas index, stored as a column named `index` ("task",
    "subtask"), or "__index_level_0__" when the index had no name."""
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}")
    table = pq.read_table(path)
    text_column = next((c for c in (index, "__index_level_0__") if c in table.column_names), None)
    if column not in table.column_names or text_column is None:
        raise ValueError(f"{path}: expected columns {column!r} and {index!r}, got {table.column_names}")
    return _by_index(table.column(column).to_pylist(), table.column(text_column).to_pylist(), path, column)


def write_indexed_strings(path: Path, strings: Sequence[str], index: str, column: str) -> None:
    """`strings` as pandas writes a frame indexed by them with `column` = 0..n-1 (meta/tasks.parquet:
    index "task", column "task_index"; meta/subtasks.parquet: "subtask", "subtask_index"), so that
    LeRobot's `pd.read_parquet` gets the strings back as the index, row k holding entry k."""
    pandas_meta = {
        "index_columns": [index],
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
                "name": column,
                "field_name": column,
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": index,
                "field_name": index,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    schema = pa.schema([(column, pa.int64()), (index, pa.string())]).with_metadata(
        {b"pandas": json.dumps(pandas_meta).encode()}
    )
    table = pa.Table.from_arrays(
        [pa.array(range(len(strings)), pa.int64()), pa.array(strings)], schema=schema
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _read_tasks_jsonl(path: Path) -> list[str]:
    rows = read_jsonl(path)
    return _by_index([r.get("task_index") for r in rows], [r.get("task") for r in rows], path, "task_index")


def _by_index(indices: list, texts: list, path: Path, column: str) -> list[str]:
    if sorted(indices) != list(range(len(indices))):
        raise ValueError(f"{path}: {column} values must be 0..{len(indices) - 1}, got {sorted(indices)}")
    if not all(isinstance(t, str) for t in texts) or len(set(texts)) != len(texts):
        raise ValueError(f"{path}: the entries must be distinct strings")
    strings = [""] * len(indices)
    for i, text in zip(indices, texts, strict=True):
        strings[i] = text
    return strings


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
    episodes = sorted(read_jsonl(path), key=lambda ep: ep["episode_index"])
    start = 0
    for ep in episodes:
        ep["dataset_from_index"] = start
        start += ep["length"]
        ep["dataset_to_index"] = start
    return episodes


def _read_stats_json(path: Path) -> dict[str, dict[str, np.ndarray]] | None:
    return stats_to_numpy(read_json(path)) if path.is_file() else None


def _read_legacy_stats(root: Path) -> dict[str, dict[str, np.ndarray]] | None:
    path = root / LEGACY_EPISODES_STATS_PATH
    if path.is_file():
        return aggregate_stats([stats_to_numpy(row["stats"]) for row in read_jsonl(path)])
    return _read_stats_json(root / STATS_PATH)  # v2.0 kept dataset-level stats only
