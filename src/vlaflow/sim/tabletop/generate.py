"""Tabletop demonstration datasets (LeRobot v3.0) with everything π0.5's recipe trains on.

One dataset directory holds three kinds of data (see docs/benchmarks/tabletop.md for every column):

* task episodes: the scripted expert solving tasks (`TASK_FAMILIES` by default: the long-horizon
  families and single commands), the prompt as the episode's task, per-frame subtasks in LeRobot's
  convention (`subtask_index` + meta/subtasks.parquet, read back as ``item["subtask"]``) with their
  step in the episode's plan, and `<loc>` boxes of the subtask's entities in every camera
  (``annotation.kind = "task"``);
* verbal-instruction episodes: sessions of commands issued one at a time, each command one episode whose
  task is the command (``annotation.kind = "verbal_instruction"``); a session's commands are consecutive
  episodes and continue each other's final state. They share the robot, cameras and normalization with
  the task episodes, so they live in the same dataset and the kind column selects them;
* web samples: ``web/samples.jsonl`` + ``web/images/`` (`vlaflow.sim.tabletop.web`).

``meta/tabletop_episodes.jsonl`` records, per dataset episode, its kind, family, split, seed, layout,
prompt, plan and named objects. Only successful expert episodes are kept, in a deterministic order: the
same call always writes the same dataset.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vlaflow.data.lerobot import LeRobotDatasetWriter
from vlaflow.sim.generate import camera_feature
from vlaflow.sim.tabletop.expert import ExpertPolicy
from vlaflow.sim.tabletop.rollout import Episode, rollout_many
from vlaflow.sim.tabletop.scene import check_split_name
from vlaflow.sim.tabletop.skills import check_skills
from vlaflow.sim.tabletop.tasks import FAMILIES
from vlaflow.sim.tabletop.web import generate_web_samples
from vlaflow.sim.tabletop.world import ACTION_NAMES, FPS, STATE_NAMES

ROBOT_TYPE = "tabletop_gripper"
DEFAULT_CAMERAS = ("scene", "wrist")
EPISODES_META = "meta/tabletop_episodes.jsonl"
TASK_FAMILIES = tuple(f for f in FAMILIES if f != "verbal")
"""Families of task episodes; verbal-instruction sessions are made separately (one episode per command)."""
SETTLE_STEPS = 5
"""Frames kept after the first success (the release and the gripper moving off)."""


def boxes_feature(camera: str) -> str:
    return f"annotation.boxes.{camera}"


def tabletop_features(cameras: Sequence[str], resolution: int) -> dict[str, dict]:
    features: dict[str, dict] = {
        "observation.state": {"dtype": "float32", "shape": [len(STATE_NAMES)], "names": STATE_NAMES},
        "action": {"dtype": "float32", "shape": [len(ACTION_NAMES)], "names": ACTION_NAMES},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.success": {"dtype": "bool", "shape": [1], "names": None},
        "annotation.kind": {"dtype": "string"},
        "annotation.plan_step": {"dtype": "int64", "shape": [1], "names": None},
    }
    for camera in cameras:
        features[camera_feature(camera)] = {
            "dtype": "video",
            "shape": [resolution, resolution, 3],
            "names": ["height", "width", "channels"],
        }
        features[boxes_feature(camera)] = {"dtype": "string"}
    return features


@dataclass
class TabletopGenerationSummary:
    output: Path
    task_episodes: int
    verbal_sessions: int
    verbal_episodes: int
    frames: int
    attempts: int
    web_samples: int
    seconds: float

    @property
    def episodes(self) -> int:
        return self.task_episodes + self.verbal_episodes

    @property
    def expert_success_rate(self) -> float:
        return (self.task_episodes + self.verbal_sessions) / max(1, self.attempts)


def _segment(
    episode: Episode, start: int, stop: int, kind: str, cameras: Sequence[str]
) -> tuple[dict[str, Any], list[str]]:
    """(frames, subtask texts) of frames start..stop-1 of an episode."""
    plan = {s.text: i for i, s in enumerate(episode.spec.subtasks)}
    subtasks = episode.subtasks[start:stop]
    frames: dict[str, Any] = {
        "observation.state": episode.states[start:stop],
        "action": episode.actions[start:stop],
        "next.reward": episode.progress[start:stop, None],
        "next.success": episode.successes[start:stop, None],
        "annotation.kind": [kind] * (stop - start),
        "annotation.plan_step": np.array([plan.get(s, -1) for s in subtasks], dtype=np.int64)[:, None],
    }
    for camera in cameras:
        frames[camera_feature(camera)] = episode.images[camera][start:stop]
        frames[boxes_feature(camera)] = episode.boxes[camera][start:stop]
    return frames, subtasks


def _episode_record(episode: Episode, kind: str, prompt: str, **extra: Any) -> dict[str, Any]:
    spec = episode.spec
    return {
        "kind": kind,
        "family": spec.family,
        "split": spec.split,
        "seed": spec.seed,
        "layout": spec.scene.layout,
        "prompt": prompt,
        "subtasks": [s.text for s in spec.subtasks],
        "targets": [spec.scene.label(t) for t in spec.targets],
        **extra,
    }


class _ExpertEpisodes:
    """Successful expert episodes, `needed[family]` per family, yielded in a deterministic order as they
    are made (a failed seed is replaced by the family's next unused one); counts the attempts."""

    def __init__(self, needed: dict[str, int], seed: int, split: str, bar: Any, **kwargs: Any) -> None:
        self.needed, self.seed, self.split, self.bar, self.kwargs = needed, seed, split, bar, kwargs
        self.attempts = 0

    def __iter__(self) -> Iterator[Episode]:
        kept = dict.fromkeys(self.needed, 0)
        next_seed = dict.fromkeys(self.needed, self.seed)
        while any(kept[f] < n for f, n in self.needed.items()):
            missing = {f: n - kept[f] for f, n in self.needed.items() if kept[f] < n}
            for f in missing:
                if next_seed[f] - self.seed > 10 * self.needed[f] + 10:
                    raise RuntimeError(
                        f"the scripted expert keeps failing on {f}: gave up after "
                        f"{next_seed[f] - self.seed} seeds"
                    )
            # Round-robin over families; a failure is made up for in the next round.
            per_family = {f: [(f, next_seed[f] + i) for i in range(n)] for f, n in missing.items()}
            jobs = [job for group in itertools.zip_longest(*per_family.values()) for job in group if job]
            for f, group in per_family.items():
                next_seed[f] += len(group)
            for episode in rollout_many(jobs, ExpertPolicy, split=self.split, **self.kwargs):
                self.attempts += 1
                if episode.success and kept[episode.family] < self.needed[episode.family]:
                    kept[episode.family] += 1
                    self.bar.update(1)
                    yield episode


def generate_tabletop(
    output: str | Path,
    *,
    episodes: int,
    split: str = "train",
    seed: int = 0,
    resolution: int = 224,
    workers: int | None = None,
    progress: bool = True,
    families: Sequence[str] = TASK_FAMILIES,
    verbal_sessions: int | None = None,
    web_images: int | None = None,
    cameras: Sequence[str] = DEFAULT_CAMERAS,
    skills: str = "physical",
    perturb: float = 0.0,
) -> TabletopGenerationSummary:
    """Write a dataset of `episodes` successful task episodes (spread evenly over `families`, seeds from
    `seed`), `verbal_sessions` verbal-instruction sessions (default: episodes // 5, at least 1) and the web
    samples of `web_images` rendered scenes (default: `episodes`; 0 for none) to the new directory `output`.
    `skills` is the difficulty of the low-level skills (`vlaflow.sim.tabletop.skills`); `perturb` (metres
    per step) makes the executed motion drift while the expert's corrections are recorded
    (`vlaflow.sim.tabletop.rollout`); both are recorded with every episode.
    """
    check_split_name(split)
    check_skills(skills)
    if not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, got {episodes!r}")
    unknown = [f for f in families if f not in FAMILIES or f == "verbal"]
    if unknown or not families:
        raise ValueError(f"families must be a non-empty subset of {TASK_FAMILIES}, got {list(families)}")
    verbal_sessions = max(1, episodes // 5) if verbal_sessions is None else verbal_sessions
    web_images = episodes if web_images is None else web_images
    if verbal_sessions < 0 or web_images < 0:
        raise ValueError(f"verbal_sessions and web_images must be >= 0, got {verbal_sessions}, {web_images}")
    output = Path(output)
    if output.exists():
        raise FileExistsError(f"{output} already exists: choose a new output directory")
    start = time.perf_counter()
    needed = {f: episodes // len(families) + (i < episodes % len(families)) for i, f in enumerate(families)}
    needed = {f: n for f, n in needed.items() if n > 0}
    kwargs = {
        "workers": workers,
        "env_kwargs": {"cameras": tuple(cameras), "resolution": resolution, "skills": skills},
        "steps_after_success": SETTLE_STEPS,
        "annotate": True,
        "perturb": perturb,
    }
    bar = tqdm(total=episodes + verbal_sessions, disable=not progress, desc="demonstrations", unit="ep")
    tasks = _ExpertEpisodes(needed, seed, split, bar, **kwargs)
    sessions = _ExpertEpisodes(
        {"verbal": verbal_sessions} if verbal_sessions else {}, seed, split, bar, **kwargs
    )
    records: list[dict[str, Any]] = []
    how = {"skills": skills, "perturb": perturb}
    frames = task_episodes = verbal_episodes = 0
    with LeRobotDatasetWriter(
        output, fps=FPS, features=tabletop_features(cameras, resolution), robot_type=ROBOT_TYPE, subtasks=True
    ) as writer:
        for episode in tasks:
            segment, subtasks = _segment(episode, 0, episode.length, "task", cameras)
            writer.add_episode(segment, task=episode.spec.prompt, subtasks=subtasks)
            records.append(_episode_record(episode, "task", episode.spec.prompt, **how))
            frames += episode.length
            task_episodes += 1
        for number, session in enumerate(sessions):
            n = len(session.spec.subtasks)
            command = np.minimum(session.command_index, n - 1)
            for k in range(n):
                rows = np.flatnonzero(command == k)
                if len(rows) == 0:
                    continue
                prompt = session.spec.subtasks[k].text
                segment, subtasks = _segment(
                    session, int(rows[0]), int(rows[-1]) + 1, "verbal_instruction", cameras
                )
                writer.add_episode(segment, task=prompt, subtasks=subtasks)
                records.append(
                    _episode_record(session, "verbal_instruction", prompt, session=number, command=k, **how)
                )
                frames += len(rows)
                verbal_episodes += 1
    bar.close()
    with open(output / EPISODES_META, "w") as f:
        for index, record in enumerate(records):
            f.write(json.dumps({"episode_index": index, **record}) + "\n")
    web = 0
    if web_images:
        web = generate_web_samples(
            output / "web",
            images=web_images,
            split=split,
            seed=seed,
            resolution=resolution,
            progress=progress,
        )
    return TabletopGenerationSummary(
        output,
        task_episodes,
        verbal_sessions,
        verbal_episodes,
        frames,
        tasks.attempts + sessions.attempts,
        web,
        time.perf_counter() - start,
    )
