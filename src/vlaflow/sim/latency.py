"""Chunking under inference latency on Meta-World: synchronous chunking, naive asynchronous chunking
and real-time chunking (RTC), compared on success and on the action jerk at chunk boundaries.

    python -m vlaflow.sim.latency --checkpoint RUN/checkpoints/step_N --tasks door-close-v3 \\
        --episodes-per-task 4 --delays 2,4 --output latency/

Latency is simulated in control steps by the rollout engine (`vlaflow.sim.rollout`): with delay d the
environment keeps executing the current chunk while the next is computed from the observation at
index s of the chunk (s = --steps-per-chunk), and the new chunk takes over at its index d.
Synchronous chunking waits for every chunk instead (the simulator is paused, as a robot that stops
would be: its episodes are those of delay 0 and take d idle steps per chunk longer in real time).
Naive asynchronous chunking switches to the new chunk as it is; RTC guides it toward the actions of
the current one (`vlaflow.inference.rtc`).

Jerk at a boundary k (the first step executed from a new chunk) is the norm of the third difference
a[k+1] - 3 a[k] + 3 a[k-1] - a[k-2] of the executed actions, and the jump is |a[k] - a[k-1]|; both
are averaged over every boundary of every episode and compared with the same quantities at steps
inside chunks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlaflow.sim import metaworld as mw
from vlaflow.sim.evaluate import EVAL_SEED, CheckpointPolicyFactory, resolve_view


def boundary_smoothness(actions: np.ndarray, chunk_starts: np.ndarray) -> dict[str, list[float]]:
    """Per-step jump |a[k] - a[k-1]| and jerk |third difference| at chunk boundaries and inside chunks
    (steps where the whole third-difference window exists)."""
    boundaries = set(int(k) for k in chunk_starts[1:])
    out: dict[str, list[float]] = {
        "boundary_jump": [],
        "boundary_jerk": [],
        "inner_jump": [],
        "inner_jerk": [],
    }
    for k in range(2, len(actions) - 1):
        jump = float(np.linalg.norm(actions[k] - actions[k - 1]))
        jerk = float(np.linalg.norm(actions[k + 1] - 3 * actions[k] + 3 * actions[k - 1] - actions[k - 2]))
        where = "boundary" if k in boundaries else "inner"
        out[f"{where}_jump"].append(jump)
        out[f"{where}_jerk"].append(jerk)
    return out


def run_condition(
    checkpoint: str,
    *,
    tasks: Sequence[str],
    episodes_per_task: int,
    steps_per_chunk: int,
    delay: int,
    rtc: bool,
    beta: float,
    num_steps: int,
    seed: int,
    workers: int,
) -> dict[str, Any]:
    """Success and boundary smoothness of one (delay, RTC or not) condition."""
    from vlaflow.inference.rtc import RTCConfig
    from vlaflow.sim.tabletop.evaluate import wilson_interval

    resolution, cameras, _ = resolve_view(checkpoint, None, None, (224, ("corner2",)))
    factory = CheckpointPolicyFactory(checkpoint, num_steps, rtc=RTCConfig(beta) if rtc else None)
    jobs = mw.episode_jobs(tasks, episodes_per_task, seed=seed)
    start = time.perf_counter()
    episodes = list(
        mw.rollout_many(
            jobs,
            factory,
            workers=workers,
            env_kwargs={"cameras": cameras, "resolution": resolution},
            steps_per_chunk=steps_per_chunk,
            delay=delay,
            record=False,
            ordered=True,
        )
    )
    smooth: dict[str, list[float]] = {}
    for episode in episodes:
        for key, values in boundary_smoothness(episode.actions, episode.chunk_starts).items():
            smooth.setdefault(key, []).extend(values)
    wins = sum(e.success for e in episodes)
    return {
        "delay": delay,
        "rtc": rtc,
        "episodes": len(episodes),
        "successes": wins,
        "success_rate": wins / len(episodes),
        "ci95": wilson_interval(wins, len(episodes)),
        "per_episode": [
            {"task": e.task, "seed": e.seed, "success": e.success, "length": e.length} for e in episodes
        ],
        **{key: float(np.mean(values)) if values else float("nan") for key, values in smooth.items()},
        "seconds": time.perf_counter() - start,
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [_label(r) for r in results]
    x = np.arange(len(results))
    fig, (ax1, *axes) = plt.subplots(1, 3, figsize=(14, 3.6))
    rates = np.array([100 * r["success_rate"] for r in results])
    lo = np.array([100 * r["ci95"][0] for r in results])
    hi = np.array([100 * r["ci95"][1] for r in results])
    ax1.bar(x, rates, color=[_colour(r) for r in results])
    ax1.errorbar(x, rates, yerr=[rates - lo, hi - rates], fmt="none", ecolor="black", capsize=3, lw=0.8)
    for i, r in enumerate(results):
        ax1.text(i, hi[i] + 2, f"{r['successes']}/{r['episodes']}", ha="center", fontsize=7)
    ax1.set_ylim(0, 115)
    ax1.set_ylabel("success (%), 95% Wilson")
    width = 0.4
    for ax, metric, name in zip(
        axes, ("jump", "jerk"), ("|a[k] - a[k-1]|", "|third difference|"), strict=True
    ):
        ax.bar(x - width / 2, [r[f"boundary_{metric}"] for r in results], width, label="at chunk boundaries")
        ax.bar(x + width / 2, [r[f"inner_{metric}"] for r in results], width, label="inside chunks")
        ax.set_ylabel(f"mean {name} of actions")
        ax.legend(fontsize=7)
    for ax in (ax1, *axes):
        ax.set_xticks(x, labels, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _label(result: dict[str, Any]) -> str:
    if result["delay"] == 0:
        return "sync"
    return f"{'RTC' if result['rtc'] else 'naive'}\nd={result['delay']}"


def _colour(result: dict[str, Any]) -> str:
    return "tab:gray" if result["delay"] == 0 else "tab:green" if result["rtc"] else "tab:orange"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a trained Meta-World checkpoint")
    parser.add_argument("--tasks", default="button-press-topdown-v3,door-close-v3,plate-slide-side-v3")
    parser.add_argument("--episodes-per-task", type=int, default=4)
    parser.add_argument("--steps-per-chunk", type=int, default=5, help="execution horizon s")
    parser.add_argument("--delays", default="2,4", help="inference delays d in control steps")
    parser.add_argument("--beta", type=float, default=10.0, help="RTC's guidance weight clip")
    parser.add_argument("--num-steps", type=int, default=10, help="Euler steps per chunk")
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help="episode seeds start here")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    tasks = mw.resolve_tasks(args.tasks)
    conditions = [(0, False)] + [(int(d), rtc) for d in args.delays.split(",") for rtc in (False, True)]
    args.output.mkdir(parents=True, exist_ok=True)
    results = []
    for delay, rtc in conditions:
        result = run_condition(
            args.checkpoint,
            tasks=tasks,
            episodes_per_task=args.episodes_per_task,
            steps_per_chunk=args.steps_per_chunk,
            delay=delay,
            rtc=rtc,
            beta=args.beta,
            num_steps=args.num_steps,
            seed=args.seed,
            workers=args.workers,
        )
        results.append(result)
        print(
            f"{_label(result).replace(chr(10), ' '):>10}: success {result['successes']}/{result['episodes']} "
            f"jerk at boundaries {result['boundary_jerk']:.3f} (inside {result['inner_jerk']:.3f}), "
            f"jump {result['boundary_jump']:.3f} (inside {result['inner_jump']:.3f}); "
            f"{result['seconds']:.0f} s",
            flush=True,
        )
        settings = {**vars(args), "output": str(args.output), "tasks": tasks}
        (args.output / "results.json").write_text(
            json.dumps({"settings": settings, "results": results}, indent=2)
        )
    plot(results, args.output / "latency.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
