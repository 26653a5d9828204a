"""The main job, `vlaflow demo`: demonstrations -> a tiny pi0.5 trained from scratch -> success rate.

It runs the whole pipeline a user runs at scale, on a CPU and with no downloads: the scripted
Meta-World experts write a LeRobot v3.0 dataset, `train` fits a tiny pi0.5 (one camera, prompt
with the discretized state, flow-matching action expert) and the evaluation harness rolls the
checkpoint out in fresh seeded environments. The defaults are sized for a 2-core machine (see
`DemoConfig`); everything lands under one directory and a rerun continues where the last stopped:
a complete dataset is reused, training resumes from its last checkpoint, evaluation is redone.

`vlaflow demo tabletop` (`run_tabletop_demo`) does the same for hierarchical pi0.5 on the tabletop
benchmark, in its `assisted` skills mode (forgiving grasps, learnable in CPU-minutes): the scripted
expert writes task episodes, verbal-instruction sessions, subtask and box annotations and web samples;
one run co-trains on all of them (`pi05_tabletop_tiny`); the checkpoint is evaluated in hierarchical
mode (it decodes its subtask, then acts on it) on held-in and held-out scenes, with videos that show
the predicted subtask under the frames.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlaflow.data.lerobot import validate_dataset
from vlaflow.data.pipeline import SourceConfig
from vlaflow.sim.evaluate import evaluate_metaworld
from vlaflow.sim.generate import generate_metaworld
from vlaflow.sim.tabletop.evaluate import evaluate_tabletop
from vlaflow.sim.tabletop.generate import generate_tabletop
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


@dataclass(frozen=True)
class TabletopDemoConfig:
    """Sized for the 20-minute budget on an idle 2-core machine (docs/results/tabletop-demo.md):
    two task families (single commands, and the two-step "put the item in the container" whose
    subtask the model must read off the scene) in the assisted skills mode, every other kind of
    sample the generator writes, twenty evaluation episodes per family on each split."""

    families: tuple[str, ...] = ("instruction", "item_in_container")
    skills: str = "assisted"
    episodes: int = 200
    resolution: int = 112
    steps: int = 1_100
    batch_size: int = 32
    peak_lr: float = 2e-3
    eval_episodes: int = 20
    subtask_every: int = 2
    steps_per_chunk: int = 5
    web_images: int = 20
    workers: int | None = None
    seed: int = 0

    def train_config(self, dataset: Path) -> TrainConfig:
        """`pi05_tabletop_tiny` (FAST + flow + subtask and web text, chunks of 10) at a high
        learning rate, without augmentation."""
        config = apply_overrides(
            named_config("pi05_tabletop_tiny"),
            [
                f"steps={self.steps}",
                f"save_every={max(1, self.steps // 4)}",
                f"batch_size={self.batch_size}",
                f"optim.peak_lr={self.peak_lr}",
                f"optim.end_lr={self.peak_lr / 20}",
                "augment=false",
                f"seed={self.seed}",
            ],
        )
        config.datasets = [SourceConfig(str(dataset))]
        return config


def _tabletop_dataset(output: Path, config: TabletopDemoConfig, progress: bool) -> None:
    # Written next to its final place and renamed when whole (web samples come last).
    if output.exists():
        validate_dataset(output)
        return
    partial = output.with_name(output.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    generate_tabletop(
        partial,
        episodes=config.episodes,
        families=config.families,
        resolution=config.resolution,
        workers=config.workers,
        seed=config.seed,
        progress=progress,
        skills=config.skills,
    )
    partial.rename(output)


def run_tabletop_demo(
    output: str | Path, config: TabletopDemoConfig = TabletopDemoConfig(), *, progress: bool = True
) -> dict[str, Any]:
    """Generate, co-train and evaluate (hierarchical mode, both splits) under `output`; returns (and
    writes `demo.json`) the results."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    seconds = {}
    start = time.perf_counter()
    _tabletop_dataset(output / "data", config, progress)
    seconds["generate"] = time.perf_counter() - start
    checkpoint = trained_checkpoint(output / "run", config, output / "data", progress)
    seconds["train"] = time.perf_counter() - start - seconds["generate"]
    splits = {}
    for split in ("train", "ood"):
        results = evaluate_tabletop(
            output / "eval" / split,
            policy=str(checkpoint),
            split=split,
            episodes=config.eval_episodes,
            families=config.families,
            workers=config.workers,
            videos=1,
            steps_per_chunk=config.steps_per_chunk,
            mode="hierarchical",
            subtask_every=config.subtask_every,
            web_images=config.web_images,
            skills=config.skills,
            progress=progress,
        )
        splits[split] = {
            "overall": results["overall"],
            "families": results["families"],
            "web": results.get("web", {}).get("overall"),
        }
        seconds[f"evaluate_{split}"] = results["settings"]["seconds"]
    seconds["total"] = time.perf_counter() - start
    summary = {
        "splits": splits,
        "seconds": seconds,
        "checkpoint": str(checkpoint),
        "config": asdict(config),
    }
    (output / "demo.json").write_text(json.dumps(summary, indent=2))
    return summary


def trained_checkpoint(
    output: Path, config: DemoConfig | TabletopDemoConfig, dataset: Path, progress: bool
) -> Path:
    """The last checkpoint of `config.train_config(dataset)` trained to `config.steps` under
    `output`: reused when complete, resumed when interrupted, trained otherwise."""
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
    checkpoint = trained_checkpoint(output / "run", config, output / "data", progress)
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


def _percent(value: float, interval: tuple[float, float] | list[float]) -> str:
    return f"{100 * value:.1f}% [{100 * interval[0]:.0f}, {100 * interval[1]:.0f}]"


def tabletop_report(summary: dict[str, Any]) -> str:
    """Per split: progress, success and subtask accuracy with their 95% intervals, web answers, and
    the minutes each stage took."""
    lines = []
    for split, result in summary["splits"].items():
        o = result["overall"]
        success = o["success"]
        line = (
            f"{split:>5}: progress {_percent(o['progress']['mean'], o['progress']['ci95'])}  "
            f"success {_percent(success['rate'], success['ci95'])} ({success['successes']}/{o['episodes']})"
        )
        if "subtask_accuracy" in o:
            accuracy = o["subtask_accuracy"]["normalized"]
            line += f"  subtask accuracy {_percent(accuracy['mean'], accuracy['ci95'])}"
        if result["web"]:
            web = result["web"]
            line += f"  web answers {_percent(web['rate'], web['ci95'])} ({web['correct']}/{web['samples']})"
        lines.append(line)
    minutes = {k: f"{v / 60:.1f}" for k, v in summary["seconds"].items()}
    lines.append(
        f"{minutes['total']} min (generate {minutes['generate']}, train {minutes['train']}, evaluate "
        f"{minutes['evaluate_train']} + {minutes['evaluate_ood']} without the web questions)"
    )
    return "\n".join(lines)
