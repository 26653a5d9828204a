"""Demonstration datasets from scripted experts, written as LeRobot v3.0.

Meta-World follows the public `lerobot/metaworld_mt50` protocol: the scripted expert of each
task, successful episodes only (an episode ends at its first success), 80 fps, `observation.state`
= hand xyz + gripper (4), `action` (4), `next.reward`, `next.success`,
`observation.environment_state` (the 39-d simulator observation), the `corner2` camera as
`observation.image` (its name there) and any other camera as `observation.images.<camera>`, and
the task's prompt as the episode's task. Episodes are written in a deterministic order (tasks in
order, seeds ascending), so the same command always produces the same dataset.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vlaflow.data.lerobot import LeRobotDatasetWriter
from vlaflow.sim import metaworld as mw

METAWORLD_FPS = 80
MAIN_CAMERA = "corner2"
AXES = ["x", "y", "z", "gripper"]


def camera_feature(camera: str) -> str:
    """Dataset key of a Meta-World camera."""
    return "observation.image" if camera == MAIN_CAMERA else f"observation.images.{camera}"


def feature_camera(key: str) -> str:
    """The simulator camera of a dataset key (inverse of `camera_feature`)."""
    return MAIN_CAMERA if key == "observation.image" else key.removeprefix("observation.images.")


@dataclass
class GenerationSummary:
    output: Path
    episodes: int
    frames: int
    attempts: int
    seconds: float

    @property
    def expert_success_rate(self) -> float:
        return self.episodes / self.attempts


def metaworld_features(cameras: Sequence[str], resolution: int) -> dict[str, dict]:
    features = {
        "observation.state": {"dtype": "float32", "shape": [4], "names": AXES},
        "action": {"dtype": "float32", "shape": [4], "names": AXES},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.success": {"dtype": "bool", "shape": [1], "names": None},
        "observation.environment_state": {"dtype": "float32", "shape": [39], "names": None},
    }
    for camera in cameras:
        features[camera_feature(camera)] = {
            "dtype": "video",
            "shape": [resolution, resolution, 3],
            "names": ["height", "width", "channels"],
        }
    return features


def generate_metaworld(
    output: str | Path,
    *,
    tasks: Sequence[str],
    episodes_per_task: int,
    cameras: Sequence[str] = (MAIN_CAMERA,),
    resolution: int = 224,
    workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> GenerationSummary:
    """Write `episodes_per_task` successful expert episodes of every task to a new dataset.

    Episode i of a task uses seed `seed + i`; a failed episode is replaced by the next seed.
    """
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    output = Path(output)
    if output.exists():
        raise FileExistsError(f"{output} already exists: choose a new --output")
    start = time.perf_counter()
    needed = dict.fromkeys(tasks, episodes_per_task)
    next_seed = dict.fromkeys(tasks, seed)
    attempts = frames = 0
    bar = tqdm(total=len(tasks) * episodes_per_task, disable=not progress, desc="demonstrations", unit="ep")
    env_kwargs = {"cameras": tuple(cameras), "resolution": resolution}
    with LeRobotDatasetWriter(
        output, fps=METAWORLD_FPS, features=metaworld_features(cameras, resolution), robot_type="metaworld"
    ) as writer:
        while needed:
            # Ask for a few more episodes than needed: the expert fails ~1% of the time.
            jobs = [(task, next_seed[task] + i) for task, n in needed.items() for i in range(n + 1 + n // 20)]
            for task, _ in jobs:
                next_seed[task] += 1
            for episode in mw.rollout_many(
                jobs, mw.ExpertPolicy, workers=workers, env_kwargs=env_kwargs, ordered=True
            ):
                attempts += 1
                if not episode.success or needed.get(episode.task, 0) == 0:
                    continue
                writer.add_episode(_frames(episode, cameras), task=episode.prompt)
                frames += episode.length
                needed[episode.task] -= 1
                bar.update(1)
            needed = {task: n for task, n in needed.items() if n > 0}
            for task in needed:
                tried = next_seed[task] - seed
                if tried > 10 * episodes_per_task:
                    raise RuntimeError(
                        f"the scripted expert keeps failing on {task}: gave up after {tried} seeds"
                    )
    bar.close()
    return GenerationSummary(
        output, len(tasks) * episodes_per_task, frames, attempts, time.perf_counter() - start
    )


def _frames(episode: mw.Episode, cameras: Sequence[str]) -> dict[str, np.ndarray]:
    frames = {
        "observation.state": episode.states.astype(np.float32),
        "action": episode.actions.astype(np.float32),
        "next.reward": episode.rewards[:, None].astype(np.float32),
        "next.success": episode.successes[:, None],
        "observation.environment_state": episode.raw.astype(np.float32),
    }
    for camera in cameras:
        frames[camera_feature(camera)] = episode.images[camera]
    return frames
