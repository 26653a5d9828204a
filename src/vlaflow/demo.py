"""The main job, `vlaflow demo`: demonstrations -> a tiny pi0.5 trained from scratch -> success rate.

It runs the whole pipeline a user runs at scale, on a CPU and with no downloads: the scripted
Meta-World experts write a LeRobot v3.0 dataset, `train` fits a tiny pi0.5 (one camera, prompt
with the discretized state, flow-matching action expert) and the evaluation harness rolls the
checkpoint out in fresh seeded environments. The defaults are sized for a 2-core machine (see
`DemoConfig`); everything lands under one directory and a rerun continues where the last stopped:
a complete dataset is reused, training resumes from its last checkpoint, evaluation is redone.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlaflow.data.lerobot import validate_dataset
from vlaflow.data.pipeline import SourceConfig
from vlaflow.sim.evaluate import evaluate_metaworld
from vlaflow.sim.generate import generate_metaworld
from vlaflow.training.checkpoint import complete_checkpoints
from vlaflow.training.configs import TrainConfig, apply_overrides, named_config
from vlaflow.training.trainer import train

# Easy Meta-World tasks whose objects are visible from `corner2` and move over a small range.
DEMO_TASKS = ("button-press-topdown-v3", "door-close-v3", "plate-slide-side-v3")


@dataclass(frozen=True)
class DemoConfig:
    tasks: tuple[str, ...] = DEMO_TASKS
    episodes_per_task: int = 20
    resolution: int = 112
    steps: int = 1_500
    batch_size: int = 32
    peak_lr: float = 2e-3
    action_horizon: int = 10
    steps_per_chunk: int = 5
    eval_episodes_per_task: int = 10
    workers: int | None = None
    seed: int = 0

    def train_config(self, dataset: Path) -> TrainConfig:
        """The tiny pi0.5 recipe: one camera, short chunks, a high learning rate, no augmentation
        (with 20 demonstrations per task, augmentation slows learning more than it regularizes)."""
        model = {"image_keys": ["base_0_rgb"], "action_horizon": self.action_horizon, "max_token_len": 40}
        config = apply_overrides(
            named_config("pi05_tiny"),
            [
                f"steps={self.steps}",
                f"save_every={max(1, self.steps // 3)}",
                f"batch_size={self.batch_size}",
                f"optim.peak_lr={self.peak_lr}",
                f"optim.end_lr={self.peak_lr / 20}",
                "augment=false",
                f"seed={self.seed}",
                f"model_overrides={json.dumps(model)}",
            ],
        )
        config.datasets = [SourceConfig(str(dataset))]
        return config


def _dataset(output: Path, config: DemoConfig, progress: bool) -> None:
    # The writer renames a dataset into place only once it is complete, so one that exists is reused.
    if output.exists():
        validate_dataset(output)
        return
    generate_metaworld(
        output,
        tasks=config.tasks,
        episodes_per_task=config.episodes_per_task,
        resolution=config.resolution,
        workers=config.workers,
        seed=config.seed,
        progress=progress,
    )


def _checkpoint(output: Path, config: DemoConfig, dataset: Path, progress: bool) -> Path:
    done = complete_checkpoints(output)
    if done and done[-1][0] >= config.steps:
        return done[-1][1]
    run = config.train_config(dataset)
    return train(run, output, resume=bool(done), steps=config.steps, progress=progress).checkpoint


def run_demo(
    output: str | Path, config: DemoConfig = DemoConfig(), *, progress: bool = True
) -> dict[str, Any]:
    """Generate, train and evaluate under `output`; returns (and writes `demo.json`) the results."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    seconds = {}
    start = time.perf_counter()
    _dataset(output / "data", config, progress)
    seconds["generate"] = time.perf_counter() - start
    checkpoint = _checkpoint(output / "run", config, output / "data", progress)
    seconds["train"] = time.perf_counter() - start - seconds["generate"]
    results = evaluate_metaworld(
        output / "eval",
        policy=str(checkpoint),
        tasks=config.tasks,
        episodes_per_task=config.eval_episodes_per_task,
        steps_per_chunk=config.steps_per_chunk,
        workers=config.workers,
        resolution=config.resolution,
        videos_per_task=1,
        progress=progress,
    )
    seconds["evaluate"] = results["settings"]["seconds"]
    seconds["total"] = time.perf_counter() - start
    summary = {
        "success_rate": results["overall"]["success_rate"],
        "tasks": {task: r["success_rate"] for task, r in results["tasks"].items()},
        "episodes": results["overall"]["episodes"],
        "seconds": seconds,
        "checkpoint": str(checkpoint),
        "config": asdict(config),
    }
    (output / "demo.json").write_text(json.dumps(summary, indent=2))
    return summary
