"""Chart and table of the size x precision study (size_study.sh): held-out loss against CPU-minutes.

    python docs/results/tabletop-training/size_report.py RUNS_DIR [--sizes FILE] --out DIR [--name NAME]

Reads the step costs (`--sizes`, default `sizes.json` next to this script; the file the study's
runs were planned from) and the `metrics.jsonl` of every run of that file's variants under RUNS_DIR;
the x axis is steps x the run's measured CPU seconds per step (data + step, one thread), so every
curve ends at the same budget. Writes `NAME.png` and `NAME.json` (default `size_study`) and prints the
markdown table of the results page.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).parent
TERMS = ("val_loss", "val_loss_text", "val_loss_fast", "val_loss_flow")
TITLES = {
    "val_loss": "held-out loss (sum of the terms)",
    "val_loss_text": "text CE (subtasks, boxes, answers)",
    "val_loss_fast": "FAST CE (nats/token)",
    "val_loss_flow": "flow loss (per element)",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", type=Path)
    parser.add_argument("--sizes", type=Path, default=HERE / "sizes.json")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--name", default="size_study")
    args = parser.parse_args()
    costs = {r["variant"]: r for r in json.loads(args.sizes.read_text())}
    study = {}
    for name in costs:
        path = args.runs / name / "metrics.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        cost = costs[name]["data_s"] + costs[name]["step_s"]
        study[name] = {
            "parameters": costs[name]["parameters"],
            "precision": costs[name]["precision"],
            "cpu_s_per_step": cost,
            "steps": rows[-1]["step"],
            "validation": [
                {"step": r["step"], "cpu_min": r["step"] * cost / 60, **{t: r[t] for t in TERMS}}
                for r in rows
                if "val_loss" in r
            ],
        }
    fig, axes = plt.subplots(1, len(TERMS), figsize=(15, 3.6))
    for i, (name, run) in enumerate(study.items()):
        label = f"{name} ({run['parameters'] / 1e6:.1f} M, {run['cpu_s_per_step']:.2f} CPU-s/step)"
        for ax, term in zip(axes, TERMS, strict=True):
            points = [(v["cpu_min"], v[term]) for v in run["validation"]]
            ax.plot(*zip(*points, strict=True), "o-", color=f"C{i}", label=label, markersize=3)
    for ax, term in zip(axes, TERMS, strict=True):
        ax.set_title(TITLES[term], fontsize=9)
        ax.set_xlabel("CPU-minutes of training (one thread)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / f"{args.name}.png", dpi=120)
    (args.out / f"{args.name}.json").write_text(json.dumps(study, indent=1))
    print("| model | parameters | precision | CPU-s/step | steps | " + " | ".join(TERMS) + " |")
    print("|---|---|---|---|---|" + "---|" * len(TERMS))
    for name, run in study.items():
        last = run["validation"][-1]
        print(
            f"| {name} | {run['parameters'] / 1e6:.2f} M | {run['precision']} | "
            f"{run['cpu_s_per_step']:.2f} | {run['steps']} | "
            + " | ".join(f"{last[t]:.3f}" for t in TERMS)
            + " |"
        )


if __name__ == "__main__":
    main()
