"""Tables and charts of the equal-budget study from its run and evaluation folders.

    python docs/results/fast-and-insulation/report.py --root . --out docs/results/fast-and-insulation

Reads `calib.json` (`python -m vlaflow.bench.train --dataset ... --json calib.json`),
`runs/s{seed}/{run}/metrics.jsonl`, `eval/s{seed}/{run}_{step}/results.json` and `latency.json`
(latency.py) under --root, plus, with `--merge study.json`, the evaluations and training figures of
an earlier report for the seeds --root does not hold (runs measured on another machine); writes
`study.json`, `budget.png` (success against the share of the training budget spent), `final.png`
(success at the full budget, seeds pooled) and `losses.png`, and prints the markdown tables of the results
page.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from vlaflow.sim.tabletop.evaluate import wilson_interval

# run -> (label, steps, the budget share at its start, the budget share it spends)
RUNS = {
    "flow": ("π0.5 flow only", 900, 0.0, 1.0),
    "fast": ("π0-FAST", 531, 0.0, 1.0),
    "ki": ("π0.5 FAST + flow + insulation, one stage", 504, 0.0, 1.0),
    "stage1": ("two-stage recipe: stage 1 (FAST pre-training)", 266, 0.0, 0.5),
    "stage2": ("two-stage recipe: stage 2 (+ expert, insulation)", 252, 0.5, 0.5),
}
VARIANTS = {  # variant -> the runs that make its curve
    "π0.5 flow only": ("flow",),
    "π0-FAST": ("fast",),
    "one-stage insulation": ("ki",),
    "two-stage recipe": ("stage1", "stage2"),
}
FINAL = {
    "π0.5 flow only": "flow",
    "π0-FAST": "fast",
    "one-stage insulation": "ki",
    "two-stage recipe": "stage2",
}


def budget_share(run: str, step: int) -> float:
    _, steps, start, share = RUNS[run]
    return start + share * step / steps


def evaluations(root: Path) -> list[dict]:
    rows = []
    for results in sorted(root.glob("eval/s*/*_*/results.json")):
        seed = int(results.parent.parent.name[1:])
        run, step = results.parent.name.rsplit("_", 1)
        overall = json.loads(results.read_text())
        tasks = overall["tasks"]
        successes = sum(t["successes"] for t in tasks.values())
        episodes = sum(t["episodes"] for t in tasks.values())
        rows.append(
            {
                "seed": seed,
                "run": run,
                "step": int(step),
                "budget": budget_share(run, int(step)),
                "successes": successes,
                "episodes": episodes,
                "per_task": {
                    name.removesuffix("-v3"): f"{t['successes']}/{t['episodes']}" for name, t in tasks.items()
                },
            }
        )
    return rows


def metrics(root: Path, seed: int, run: str) -> list[dict]:
    path = root / f"runs/s{seed}/{run}/metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def plot_budget(rows: list[dict], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (variant, runs) in enumerate(VARIANTS.items()):
        for seed, marker in ((0, "o-"), (1, "s--")):
            points = sorted((r["budget"], r) for r in rows if r["run"] in runs and r["seed"] == seed)
            if not points:
                continue
            x = [b for b, _ in points]
            y = [100 * r["successes"] / r["episodes"] for _, r in points]
            bounds = [wilson_interval(r["successes"], r["episodes"]) for _, r in points]
            lo = [y_ - 100 * b[0] for y_, b in zip(y, bounds, strict=True)]
            hi = [100 * b[1] - y_ for y_, b in zip(y, bounds, strict=True)]
            ax.errorbar(
                [v + 0.006 * (i - 1.5) for v in x],
                y,
                yerr=[lo, hi],
                fmt=marker,
                color=f"C{i}",
                capsize=3,
                label=f"{variant} (seed {seed})",
            )
    ax.set_xlabel("share of the training budget spent (equal CPU cost; 1.0 = 900 flow-only steps)")
    ax.set_ylabel("success (%), 30 episodes, 95% Wilson")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_final(finals: dict[str, tuple[int, int]], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = list(finals)
    rates = [100 * s / n for s, n in finals.values()]
    intervals = [wilson_interval(s, n) for s, n in finals.values()]
    err = [
        [r - 100 * lo for r, (lo, _) in zip(rates, intervals, strict=True)],
        [100 * hi - r for r, (_, hi) in zip(rates, intervals, strict=True)],
    ]
    bars = ax.bar(names, rates, yerr=err, capsize=4, color=[f"C{i}" for i in range(len(names))])
    for bar, (s, n) in zip(bars, finals.values(), strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, 2, f"{s}/{n}", ha="center", color="white", fontsize=9)
    ax.set_ylabel("success (%) at the full budget, 95% Wilson")
    ax.set_ylim(0, 100)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_losses(root: Path, seed: int, out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (variant, runs) in enumerate(VARIANTS.items()):
        for run in runs:
            rows = metrics(root, seed, run)
            for ax, key in zip(axes, ("loss_fast", "loss_flow"), strict=True):
                points = [(budget_share(run, r["step"]), r[key]) for r in rows if key in r]
                if points:
                    x, y = zip(*points, strict=True)
                    ax.plot(
                        x, y, color=f"C{i}", label=variant if run == runs[-1] or key == "loss_fast" else None
                    )
    for ax, title in zip(axes, ("FAST cross-entropy (nats/token)", "flow loss (per element)"), strict=True):
        ax.set_title(f"{title}, seed {seed}", fontsize=9)
        ax.set_xlabel("share of the training budget")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        ax.legend(unique.values(), unique.keys(), fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--merge", type=Path, help="an earlier study.json: its seeds that --root lacks")
    args = parser.parse_args()
    rows = evaluations(args.root)
    earlier = json.loads(args.merge.read_text()) if args.merge else {"evaluations": [], "training": {}}
    seeds = {r["seed"] for r in rows}
    rows += [r for r in earlier["evaluations"] if r["seed"] not in seeds]
    calib = earlier.get("calibration", {}) | {
        name: json.loads(path.read_text())
        for name in ("calib.json", "calib_padded.json")
        if (path := args.root / name).exists()
    }
    latency_path = args.root / "latency.json"
    latency = json.loads(latency_path.read_text()) if latency_path.exists() else None
    finals = {}
    for variant, run in FINAL.items():
        last = [r for r in rows if r["run"] == run and r["step"] == RUNS[run][1]]
        finals[variant] = (sum(r["successes"] for r in last), sum(r["episodes"] for r in last))
    train = {
        f"s{seed}/{run}": {
            "steps": RUNS[run][1],
            "samples_per_s_median_wall": sorted(r["samples_per_s"] for r in m)[len(m) // 2],
        }
        for seed in (0, 1)
        for run in RUNS
        if (m := metrics(args.root, seed, run))
    }
    train |= {
        key: value for key, value in earlier["training"].items() if int(key.split("/")[0][1:]) not in seeds
    }
    study = {
        "calibration": calib,
        "evaluations": rows,
        "finals": finals,
        "training": train,
        "latency": latency,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study.json").write_text(json.dumps(study, indent=1, ensure_ascii=False))
    plot_budget(rows, args.out / "budget.png")
    plot_final(finals, args.out / "final.png")
    plot_losses(args.root, min(seeds, default=0), args.out / "losses.png")
    print("| variant | seed | run | step | budget | success (n/N) [95% Wilson] | per task |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (list(RUNS).index(r["run"]), r["seed"], r["step"])):
        lo, hi = wilson_interval(r["successes"], r["episodes"])
        tasks = ", ".join(f"{k} {v}" for k, v in r["per_task"].items())
        print(
            f"| {RUNS[r['run']][0]} | {r['seed']} | {r['run']} | {r['step']} | {r['budget']:.2f} | "
            f"{100 * r['successes'] / r['episodes']:.1f}% ({r['successes']}/{r['episodes']}) "
            f"[{100 * lo:.0f}, {100 * hi:.0f}] | {tasks} |"
        )
    print()
    for variant, (s, n) in finals.items():
        if n:
            lo, hi = wilson_interval(s, n)
            print(f"final {variant}: {100 * s / n:.1f}% ({s}/{n}) [{100 * lo:.0f}, {100 * hi:.0f}]")


if __name__ == "__main__":
    main()
