"""Policy evaluation in simulation: success rates, a per-task chart, rollout videos.

Meta-World: each task is run for N seeded episodes (seeds `seed + i`, by default far from the
seeds demonstrations are generated with); success is the environment's success flag at any step
within the episode limit (500 steps); the policy's action chunks are executed `steps_per_chunk`
actions at a time. `results.json` holds per-task success with episode counts, the Easy / Medium /
Hard / Very-hard group averages of the literature (Seo et al. 2022) and the overall average over
tasks; `success.png` charts them; `videos/` holds the first rollouts of every task.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vlaflow.data.video import encode_video
from vlaflow.sim import metaworld as mw
from vlaflow.sim.generate import camera_feature

EVAL_SEED = 1_000_000  # demonstrations use seeds from 0: evaluation never replays a training layout
VIDEO_FPS = 40


@dataclass
class CheckpointPolicyFactory:
    """Picklable `task -> policy` for rollout workers: loads the checkpoint once per process and
    feeds it Meta-World observations under the camera names the training dataset used."""

    checkpoint: str
    num_steps: int = 10
    seed: int = 0

    def __call__(self, task: str) -> Any:
        import torch

        from vlaflow.inference.policy import Policy

        if _loaded.get("key") != (self.checkpoint, self.num_steps, self.seed):
            torch.set_num_threads(1)  # one rollout worker per core
            _loaded["policy"] = Policy.load(self.checkpoint, num_steps=self.num_steps, seed=self.seed)
            _loaded["key"] = (self.checkpoint, self.num_steps, self.seed)
        policy = _loaded["policy"]

        def act(obs: dict[str, Any]) -> np.ndarray:
            images = {camera_feature(camera): image for camera, image in obs["images"].items()}
            return policy({"images": images, "state": obs["state"], "prompt": obs["prompt"]})

        return act


_loaded: dict[str, Any] = {}


def summarize(successes: dict[str, list[bool]], lengths: dict[str, list[int]]) -> dict[str, Any]:
    """Per-task rates, difficulty-group averages (mean over the group's tasks) and the overall mean."""
    per_task = {
        task: {
            "success_rate": float(np.mean(s)),
            "successes": int(np.sum(s)),
            "episodes": len(s),
            "difficulty": mw.DIFFICULTY[task],
            "mean_length": float(np.mean(lengths[task])),
        }
        for task, s in successes.items()
    }
    groups = {}
    for level in mw.DIFFICULTY_LEVELS:
        members = [t for t in per_task if per_task[t]["difficulty"] == level]
        if members:
            groups[level] = {
                "success_rate": float(np.mean([per_task[t]["success_rate"] for t in members])),
                "tasks": len(members),
                "episodes": sum(per_task[t]["episodes"] for t in members),
            }
    overall = {
        "success_rate": float(np.mean([r["success_rate"] for r in per_task.values()])),
        "tasks": len(per_task),
        "episodes": sum(r["episodes"] for r in per_task.values()),
    }
    return {"tasks": per_task, "groups": groups, "overall": overall}


def plot_success(results: dict[str, Any], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"easy": "tab:green", "medium": "tab:blue", "hard": "tab:orange", "very_hard": "tab:red"}
    order = sorted(results["tasks"], key=lambda t: (mw.DIFFICULTY_LEVELS.index(mw.DIFFICULTY[t]), t))
    rates = [100 * results["tasks"][t]["success_rate"] for t in order]
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(order) + 1.6))
    ax.barh(range(len(order)), rates, color=[colors[mw.DIFFICULTY[t]] for t in order])
    ax.set_yticks(range(len(order)), [t.removesuffix("-v3") for t in order], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("success rate (%)")
    groups = ", ".join(f"{g} {100 * r['success_rate']:.0f}%" for g, r in results["groups"].items())
    ax.set_title(f"{title}\noverall {100 * results['overall']['success_rate']:.1f}% ({groups})", fontsize=9)
    present = [g for g in colors if g in results["groups"]]
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[g]) for g in present]
    ax.legend(handles, present, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # clear of the bars
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def evaluate_metaworld(
    output: str | Path,
    *,
    policy: str,
    tasks: Sequence[str],
    episodes_per_task: int,
    steps_per_chunk: int = 5,
    workers: int | None = None,
    seed: int = EVAL_SEED,
    resolution: int = 224,
    videos_per_task: int = 2,
    num_steps: int = 10,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `policy` ("expert" or a checkpoint directory) and write results, chart and videos."""
    output = Path(output)
    (output / "videos").mkdir(parents=True, exist_ok=True)
    expert = policy == "expert"
    if not expert and not (Path(policy) / "config.json").is_file():
        raise FileNotFoundError(f"--checkpoint {policy}: not a vlaflow model directory (no config.json)")
    factory = mw.ExpertPolicy if expert else CheckpointPolicyFactory(policy, num_steps=num_steps)
    jobs = mw.episode_jobs(tasks, episodes_per_task, seed=seed)
    recorded = {(t, seed + i) for t in tasks for i in range(min(videos_per_task, episodes_per_task))}
    # The expert reads the simulator state: render only the episodes that become videos.
    cameras = () if expert and not recorded else ("corner2",)
    successes: dict[str, list[bool]] = defaultdict(list)
    lengths: dict[str, list[int]] = defaultdict(list)
    start = time.perf_counter()
    bar = tqdm(total=len(jobs), disable=not progress, desc="evaluation", unit="ep")
    for episode in mw.rollout_many(
        jobs,
        factory,
        workers=workers,
        env_kwargs={"cameras": cameras, "resolution": resolution},
        steps_per_chunk=1 if expert else steps_per_chunk,
        record=recorded,
    ):
        successes[episode.task].append(episode.success)
        lengths[episode.task].append(episode.length)
        if episode.images:
            name = f"{episode.task}_seed{episode.seed}_{'success' if episode.success else 'failure'}.mp4"
            encode_video(output / "videos" / name, episode.images["corner2"], VIDEO_FPS)
        bar.set_postfix(success=f"{np.mean([s for v in successes.values() for s in v]):.0%}", refresh=False)
        bar.update(1)
    bar.close()
    results = summarize({t: successes[t] for t in tasks}, dict(lengths))
    results["settings"] = {
        "policy": policy,
        "episodes_per_task": episodes_per_task,
        "steps_per_chunk": 1 if expert else steps_per_chunk,
        "max_steps": mw.DEFAULT_MAX_STEPS,
        "seed": seed,
        "resolution": resolution,
        "denoising_steps": None if expert else num_steps,
        "seconds": time.perf_counter() - start,
    }
    (output / "results.json").write_text(json.dumps(results, indent=2))
    plot_success(
        results, output / "success.png", f"Meta-World, policy: {'scripted expert' if expert else policy}"
    )
    return results
