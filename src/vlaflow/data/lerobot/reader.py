"""`LeRobotDataset`: the frames of a local dataset as numpy dicts, for training and inspection.

Numeric and string columns are read into memory once (all episodes, or the selected ones); camera
frames are decoded on access, from mp4 files (`vlaflow.data.video`) or PNGs embedded in the parquet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa

from vlaflow.data.lerobot.arrow import ImageColumn, read_data_file
from vlaflow.data.lerobot.meta import (
    CAMERA_DTYPES,
    DEFAULT_FEATURES,
    INFO_PATH,
    SUBTASK_INDEX,
    SUBTASKS_PATH,
    TIMESTAMP_TOLERANCE_S,
    LeRobotMeta,
)
from vlaflow.data.video import VideoDecoderPool


class LeRobotDataset:
    """Map-style dataset over the frames of a local LeRobot dataset (v3.0 or v2.1).

    `dataset[i]` is a dict of numpy values: every non-camera feature with the feature's dtype and
    shape (strings as `str`), the selected cameras as uint8 [H, W, 3], and `task`; with LeRobot's
    subtask convention (a `subtask_index` feature and meta/subtasks.parquet) also `subtask`, the text
    of the frame's `subtask_index`. With `action_horizon=H`, `action_key` holds the H actions from
    frame i on, (H, A), the steps past the episode's end repeating its last action and flagged in
    `<action_key>_is_pad` (H,) bool.

    `episodes` restricts the dataset to those episode indices (e.g. held-out validation episodes),
    in dataset order: `len`, indexing, `column`, `episode_ends` and action chunks see only their
    frames; `episodes` (the attribute) lists the episode indices the dataset holds.
    `action_key` and `state_key` must name features of the dataset (pass None for a dataset without
    them); `image_keys` selects the cameras to decode (default: all, [] for none).

    Numeric columns are read into memory once; video frames are decoded on access with one open
    container per file per worker process.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        episodes: Sequence[int] | None = None,
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
        self._episodes = self._select(episodes)  # metadata of the episodes held, in dataset order
        self.episodes = [ep["episode_index"] for ep in self._episodes]
        self._position = {e: p for p, e in enumerate(self.episodes)}

        value_keys = [k for k, ft in features.items() if ft["dtype"] not in CAMERA_DTYPES]
        embedded_keys = [k for k in self.camera_keys if features[k]["dtype"] == "image"]
        parts: dict[str, list[np.ndarray]] = {k: [] for k in value_keys}
        self._images = {k: ImageColumn(k) for k in embedded_keys}
        selected = None if episodes is None else self.episodes
        held_in = _episodes_by_file(self._episodes, self.meta.data_file)
        for path in self.meta.data_files(self._episodes):
            where = f"episode{'s' if len(held_in[path]) > 1 else ''} {_shown(held_in[path])}"
            if not path.is_file():
                raise FileNotFoundError(f"{self.root}: {where}: missing data file {path}")
            try:
                columns = read_data_file(path, features, value_keys + embedded_keys, selected)
            except (pa.ArrowException, OSError) as error:
                raise ValueError(f"{self.root}: {where}: unreadable data file {path}: {error}") from error
            for key, column in columns.items():
                if key in self._images:
                    self._images[key].extend(column, f"{path} column {key!r}")
                else:
                    parts[key].append(column)
        self._columns = {k: np.concatenate(v) for k, v in parts.items()}
        for column in self._columns.values():
            column.flags.writeable = False
        self._episode_pos, self._starts, self._ends = self._index_episodes()
        self._subtasks = self._check_subtasks()
        meta = self.meta
        self._video_sources = {  # per episode: (mp4 file, start of the episode in it)
            key: [(meta.video_file(ep, key), meta.video_from_timestamp(ep, key)) for ep in self._episodes]
            for key in self.camera_keys
            if key not in self._images
        }
        for key, sources in self._video_sources.items():  # before any training starts
            for (path, _), episode in zip(sources, self.episodes, strict=True):
                if not path.is_file() or path.stat().st_size == 0:
                    state = "missing" if not path.is_file() else "empty"
                    raise FileNotFoundError(
                        f"{self.root}: episode {episode}: {state} video file {path} ({key})"
                    )
        self._decoders = VideoDecoderPool()

    def _select(self, episodes: Sequence[int] | None) -> list[dict]:
        if episodes is None:
            return list(self.meta.episodes)
        wanted = sorted({int(e) for e in episodes})
        if not wanted:
            raise ValueError(f"episodes=[] selects nothing of {self.root}")
        known = [ep["episode_index"] for ep in self.meta.episodes]
        unknown = sorted(set(wanted) - set(known))
        if unknown:
            raise ValueError(
                f"episodes {unknown} are not in {self.root}, which has {len(known)} episodes "
                f"(episode_index {min(known)}..{max(known)})"
            )
        return [self.meta.episode(e) for e in wanted]

    def _check_subtasks(self) -> list[str] | None:
        """The subtask texts by subtask_index, if the dataset follows the subtask convention, checked
        to cover every frame's subtask_index."""
        subtasks = self.meta.subtasks
        if subtasks is not None:
            values = self._columns[SUBTASK_INDEX][:, 0]
            bad = np.flatnonzero((values < 0) | (values >= len(subtasks)))
            if len(bad):
                raise ValueError(
                    f"{self.root}: frame {bad[0]} has subtask_index {values[bad[0]]}, not a row of "
                    f"{SUBTASKS_PATH} ({len(subtasks)} subtasks)"
                )
        return subtasks

    def _index_episodes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row -> episode position, and each episode's [start, end) rows, checked against the
        metadata lengths."""
        row_episodes = self._columns["episode_index"][:, 0]
        known = np.array(self.episodes, dtype=np.int64)
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
        for p, ep in enumerate(self._episodes):
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
        return len(self._episodes)

    @property
    def fps(self) -> int:
        return self.meta.fps

    def column(self, key: str) -> np.ndarray:
        """A copy of a whole non-camera column over the dataset's frames, [N, *shape] (e.g. for
        normalization statistics)."""
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
        if episode_index not in self._position:
            raise KeyError(
                f"no episode {episode_index} in this dataset of {self.root} (episodes: {self.episodes})"
            )
        p = self._position[episode_index]
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
        if self._subtasks is not None:
            item["subtask"] = self._subtasks[int(self._columns[SUBTASK_INDEX][i, 0])]
        for key, column in self._images.items():
            item[key] = column[i]
        for key, sources in self._video_sources.items():
            path, from_timestamp = sources[pos]
            ts = from_timestamp + float(self._columns["timestamp"][i, 0])
            try:
                item[key] = self._decoders.get(path).frames_at([ts], self.tolerance_s)[0]
            except (av.error.FFmpegError, OSError, ValueError) as error:
                raise ValueError(
                    f"{self.root}: episode {self.episodes[pos]}: cannot decode {key} at {ts:.3f} s "
                    f"from {path}: {error}"
                ) from error
        return item

    def __repr__(self) -> str:
        return (
            f"LeRobotDataset({str(self.root)!r}, {self.meta.codebase_version}, {len(self)} frames, "
            f"{self.num_episodes} episodes, {self.fps} fps, cameras={self.camera_keys})"
        )


def _episodes_by_file(
    episodes: Sequence[Mapping], data_file: Callable[[Mapping], Path]
) -> dict[Path, list[int]]:
    """Data file -> the indices of the `episodes` it holds."""
    held: dict[Path, list[int]] = {}
    for episode in episodes:
        held.setdefault(data_file(episode), []).append(episode["episode_index"])
    return held


def _shown(indices: Sequence[int], at_most: int = 8) -> str:
    listed = ", ".join(map(str, indices[:at_most]))
    return listed + (f" ... ({len(indices)} in all)" if len(indices) > at_most else "")
