"""Seed 0 of two ablation studies side by side: the same variants, data and evaluation episodes at two
training budgets (say 1,200 and 4,800 steps), with each run's last training losses.

    python docs/results/pi05-ablations/budget.py ablations ablations-4x [--variants full,implicit,oracle]

Reads each study's `summary.json` (written by `vlaflow ablate`) and `runs/<run>/seed0/metrics.jsonl`;
prints the markdown table of docs/results/pi05-ablations.md. The evaluation episodes are the same in
both studies (fixed evaluation seeds), so the rows are paired comparisons.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SEED = "0"


def _pct(stat: dict) -> str:
    value = stat["mean"] if "mean" in stat else stat["rate"]
    low, high = stat["ci95"]
    return f"{100 * value:.1f} [{100 * low:.0f}, {100 * high:.0f}]"


def _last_losses(study: Path, run: str) -> dict:
    rows = [json.loads(line) for line in (study / "runs" / run / f"seed{SEED}" / "metrics.jsonl").open()]
    return next(r for r in reversed(rows) if "loss_flow" in r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", type=Path, nargs="+")
    parser.add_argument("--variants", default="full,implicit,oracle")
    args = parser.parse_args()
    summaries = {s: json.loads((s / "summary.json").read_text()) for s in args.studies}
    print("| steps | variant | mode | split | progress | success | language following | subtask accuracy |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.variants.split(","):
        for split in ("train", "ood"):
            for summary in summaries.values():
                variant = summary["variants"][name]
                seed = variant["splits"][split]["seeds"][SEED]
                success = seed["success"]
                accuracy = seed.get("subtask_accuracy")
                print(
                    f"| {summary['settings']['steps']} | {name} | {variant['mode']} | {split} | "
                    f"{_pct(seed['progress'])} | {success['successes']}/{seed['episodes']} | "
                    f"{_pct(seed['language_following'])} | "
                    f"{_pct(accuracy['normalized']) if accuracy else '—'} |"
                )
    print()
    print("| steps | run | web answers train | web answers ood | last loss | text | FAST | flow |")
    print("|---|---|---|---|---|---|---|---|")
    for study, summary in summaries.items():
        for run, web in summary.get("web", {}).items():
            seeds = {split: web["splits"][split]["seeds"][SEED] for split in ("train", "ood")}
            losses = _last_losses(study, run)
            print(
                f"| {summary['settings']['steps']} | {run} | "
                + " | ".join(f"{s['correct']}/{s['samples']} ({_pct(s)})" for s in seeds.values())
                + f" | {losses['loss']:.2f} | {losses['loss_text']:.2f} | {losses['loss_fast']:.2f} | "
                f"{losses['loss_flow']:.3f} |"
            )


if __name__ == "__main__":
    main()
