"""Training losses of an ablation study's runs, term by term: does dropping a kind of data change how
well the actions (flow, FAST) or the text are learned?

Reads ``runs/<run>/seed<k>/metrics.jsonl`` under the study directory and draws one panel per loss term
(``loss_flow``, ``loss_fast``, ``loss_text``): per run, the mean over seeds of a 100-step running
mean. Prints each run's final values (mean of the last 100 steps, per seed).

    python docs/results/pi05-ablations/losses.py STUDY --out docs/results/pi05-ablations/losses.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

TERMS = ("loss_flow", "loss_fast", "loss_text")
WINDOW = 100  # steps


def read(metrics: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    out = {}
    for term in TERMS:
        points = [(r["step"], r[term]) for r in rows if r.get(term) is not None]
        if points:
            steps, values = np.array(points, dtype=float).T
            out[term] = (steps, values)
    return out


def running_mean(steps: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.array([values[(steps > s - WINDOW) & (steps <= s)].mean() for s in steps])


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    fig, axes = plt.subplots(1, len(TERMS), figsize=(4.2 * len(TERMS), 3.4))
    for run_dir in sorted((args.study / "runs").iterdir()):
        seeds = {
            p.name: read(p / "metrics.jsonl")
            for p in sorted(run_dir.iterdir())
            if (p / "metrics.jsonl").is_file()
        }
        finals = []
        for ax, term in zip(axes, TERMS, strict=True):
            curves = [running_mean(*s[term]) for s in seeds.values() if term in s]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            steps = next(s[term][0] for s in seeds.values() if term in s)[:n]
            ax.plot(
                steps, np.mean([c[:n] for c in curves], axis=0), label=f"{run_dir.name} ({len(curves)} seeds)"
            )
            per_seed = [
                s[term][1][s[term][0] > s[term][0][-1] - WINDOW].mean() for s in seeds.values() if term in s
            ]
            finals.append(f"{term} " + " / ".join(f"{v:.3f}" for v in per_seed))
        print(f"{run_dir.name}: " + "; ".join(finals))
    for ax, term in zip(axes, TERMS, strict=True):
        ax.set_title(term, fontsize=9)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{WINDOW}-step running mean, mean over seeds")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"chart {args.out}")


if __name__ == "__main__":
    main()
