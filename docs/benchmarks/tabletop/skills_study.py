"""How much precision each skill demands, physical against assisted: the scripted expert made sloppy.

A learned policy is an imprecise expert: it arrives a little beside or above where it should and
shakes on the way. This script measures the success of single commands (`instruction`, train split)
when the scripted expert's actions carry Gaussian noise (per step, on the hand's motion) and when
its grasp is aimed off the mark (closing `--offsets` metres too high), in both skill modes, by
command kind, with Wilson intervals.

    python docs/benchmarks/tabletop/skills_study.py --episodes 60 --output skills_study.json

Runs on one CPU core, no rendering (the expert reads the simulator state).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from vlaflow.sim.tabletop.evaluate import command_kind
from vlaflow.sim.tabletop.expert import ExpertPolicy
from vlaflow.sim.tabletop.rollout import rollout
from vlaflow.sim.tabletop.world import TabletopEnv


class NoisyExpert(ExpertPolicy):
    """The scripted expert with N(0, noise) metres added to each step's motion and its grasps closed
    `high` metres above where it means to."""

    def __init__(self, noise: float, high: float, seed: int) -> None:
        super().__init__()
        self.noise, self.high, self.rng = noise, high, np.random.default_rng(seed)

    def _move(self, goal, yaw=None, **kwargs):
        goal = np.asarray(goal, dtype=float)
        if kwargs.get("tol", 0.004) <= 0.004 and goal[2] < 0.1:  # the final approach of a grasp
            goal = goal + np.array([0.0, 0.0, self.high])
        for action in super()._move(goal, yaw, **kwargs):
            action[:3] += self.rng.normal(0.0, self.noise, 3)
            yield action


def run(skills: str, noise: float, high: float, episodes: int) -> dict[str, list[bool]]:
    by_kind: dict[str, list[bool]] = {}
    with TabletopEnv("instruction", cameras=(), skills=skills) as env:
        for seed in range(1_000_000, 1_000_000 + episodes):
            episode = rollout(env, NoisyExpert(noise, high, seed), seed=seed, record=False)
            by_kind.setdefault(command_kind(episode.spec), []).append(episode.success)
    return by_kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--noise", default="0,0.004,0.008", help="action noise levels (metres per step)")
    parser.add_argument("--offsets", default="0.02,0.035", help="grasps closed this much too high (metres)")
    parser.add_argument("--output", type=Path, default=Path("skills_study.json"))
    args = parser.parse_args()
    settings = [(float(n), 0.0) for n in args.noise.split(",")]
    settings += [(0.0, float(h)) for h in args.offsets.split(",")]
    rows = []
    for noise, high in settings:
        for skills in ("physical", "assisted"):
            by_kind = run(skills, noise, high, args.episodes)
            every = [s for v in by_kind.values() for s in v]
            row = {"skills": skills, "noise": noise, "closed_too_high": high}
            for kind, wins in {**by_kind, "all": every}.items():
                ci = binomtest(sum(wins), len(wins)).proportion_ci(method="wilson")
                row[kind] = {"successes": sum(wins), "episodes": len(wins), "ci95": [ci.low, ci.high]}
            rows.append(row)
            cells = "  ".join(
                f"{k} {v['successes']}/{v['episodes']}" for k, v in row.items() if isinstance(v, dict)
            )
            print(f"{skills:>9} noise {noise:.3f} high {high:.3f}: {cells}", flush=True)
    args.output.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
