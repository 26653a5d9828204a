"""The π0.5 paper's ablations in miniature on the tabletop benchmark (issue 10, item 7).

Six variants, each scored on the held-in (``train``) and held-out (``ood``) scenes with task progress,
success, language following and subtask accuracy (where the mode reports subtasks):

========== ================================================= ============ ==========================
variant    trained on                                        eval mode    training run
========== ================================================= ============ ==========================
full       every kind (robot, verbal, high_level, web),      hierarchical full
           subtask targets on robot frames
implicit   the same checkpoint                               implicit     full
oracle     the same checkpoint, the plan step is given       oracle       full
no_hl      no ``high_level`` samples, no subtask targets     implicit     no_hl
no_web     no ``web`` samples                                hierarchical no_web
no_verbal  no ``verbal`` samples                             hierarchical no_verbal
========== ================================================= ============ ==========================

`VARIANTS` and `RUNS` hold this table as data. Every training run starts from the demo's recipe
(`vlaflow.demo.TabletopDemoConfig`: ``pi05_tabletop_tiny`` at its CPU learning rate) with the same
steps and batch size (the same training budget), and is trained once per seed: the three variants of
``full`` share its checkpoint. Training goes through the demo's resumable checkpoint helper (a complete
run is reused, an interrupted one resumes from its last checkpoint); an evaluation whose
``results.json`` exists for the same checkpoint and settings is reused. After training, the realised
mixture the trainer wrote into ``metrics.jsonl`` is checked: a run that holds a kind its variant drops
(or lacks one it should hold) stops the study with an error.

It lives here, next to `evaluate` and `generate`, because it is a tabletop experiment through and
through: it reads a ``vlaflow generate tabletop`` directory and every number is a tabletop evaluation;
the one thing it borrows from elsewhere, the demo's training recipe and checkpoint helper, it reuses
rather than copies.

Layout under the output directory::

    runs/<run>/seed<k>/                training run (checkpoints/, metrics.jsonl, loss.png)
    eval/<variant>/seed<k>/<split>/    results.json, results.png, videos/
    web/<run>/seed<k>/<split>/         web_results.json (with ``web_images`` > 0), samples/
    summary.json                       per variant and split: each seed's scores and the pooled ones
    report.md, ablations.png           `ablation_report` and the progress chart

The commands of a study, one per seed (rerun one as often as needed: it continues; the last prints
and writes the report over every seed given)::

    # a 2-core CPU: the demo's data (instruction + items_in_drawer, 60 episodes, verbal sessions and
    # web samples, 112 px) and its training budget; evaluation on those two families and verbal.
    # Estimated (from the tiny step's ~1 s per batch of 16 on one thread, not measured end to end):
    # about an hour of training (four runs) and under an hour of evaluation per seed, idle machine.
    python -c "from vlaflow.sim.tabletop.generate import generate_tabletop as g; g('data/demo', \\
        families=('instruction', 'items_in_drawer'), episodes=60, resolution=112)"  # = demo-tabletop/data
    vlaflow ablate tabletop --dataset data/demo --output ablations --seeds 0 \\
        --steps 1200 --batch-size 16 --eval-episodes 8 --workers 2 --web-images 20
    vlaflow ablate tabletop ... --seeds 0,1      # then 0,1,2: only the new seed trains and evaluates

    # a GPU machine (16 CPU cores for the simulator): every family, more data, steps and episodes
    vlaflow generate tabletop --output data/tabletop --episodes 500 --resolution 112 --workers 16
    vlaflow ablate tabletop --dataset data/tabletop --output ablations --seeds 0,1,2 \\
        --steps 6000 --batch-size 64 --eval-episodes 20 --workers 14 num_workers=4

Intervals are pooled over seeds: every episode of every seed is one observation (success: Wilson score;
progress, language following, subtask accuracy: percentile bootstrap over episodes), so they show the
evaluation noise, not the spread between training seeds; the report lists each seed's progress too.
The evaluation episodes are the same for every variant and seed (paired comparisons).

With ``web_images`` > 0 every training run (not variant: the answers do not depend on the evaluation
mode) also answers the questions of that many held-out web images per split
(`vlaflow.sim.tabletop.web_eval`): what the web data, or its absence, does to captions, VQA and
detection, where task progress cannot tell the runs apart.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlaflow.data.lerobot import validate_dataset
from vlaflow.data.lerobot.meta import SUBTASKS_PATH
from vlaflow.data.mixture import WebSamples
from vlaflow.demo import TabletopDemoConfig, trained_checkpoint
from vlaflow.pretrained import read_config
from vlaflow.sim.evaluate import training_view
from vlaflow.sim.tabletop.evaluate import evaluate_tabletop, summarize
from vlaflow.sim.tabletop.generate import EPISODES_META, TASK_FAMILIES
from vlaflow.sim.tabletop.tasks import FAMILIES
from vlaflow.sim.tabletop.web import WEB_KINDS
from vlaflow.sim.tabletop.web_eval import WEB_EVAL_SEED, evaluate_web, summarize_web
from vlaflow.training.checkpoint import complete_checkpoints
from vlaflow.training.configs import TABLETOP_KINDS, TrainConfig, apply_overrides
from vlaflow.training.trainer import METRICS_FILE

SPLITS = ("train", "ood")
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
CHART_FILE = "ablations.png"
# Settings the harness sets itself: the same budget for every variant, one run per seed.
HARNESS_SETTINGS = ("steps", "batch_size", "seed", "datasets", "save_every")


@dataclass(frozen=True)
class TrainingRun:
    """One training recipe: `pi05_tabletop_tiny` (the demo's) without the kinds in `drop`, with
    `overrides` (``key=value``) on top."""

    drop: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Variant:
    """One row of the study: the checkpoint of training run `run`, evaluated in `mode`; `paper`: the π0.5
    paper's task progress in unseen homes (real robots), or None where it gives no number, with `claim`."""

    run: str
    mode: str
    description: str
    paper: float | None = None
    claim: str = ""


RUNS: dict[str, TrainingRun] = {
    "full": TrainingRun(description="every kind; subtask targets on robot frames"),
    "no_hl": TrainingRun(
        drop=("high_level",),
        overrides=("subtask_targets=false",),
        description="no high-level samples, no subtask targets",
    ),
    "no_web": TrainingRun(drop=("web",), description="no web samples"),
    "no_verbal": TrainingRun(drop=("verbal",), description="no verbal-instruction episodes"),
}

VARIANTS: dict[str, Variant] = {
    "full": Variant("full", "hierarchical", "decodes its subtask, then acts on it", 0.80, "~80%"),
    "implicit": Variant(
        "full", "implicit", "same checkpoint, the prompt conditions the actions", 0.70, "~70%"
    ),
    "oracle": Variant(
        "full", "oracle", "same checkpoint, given the plan step in force", None, "slightly below full"
    ),
    "no_hl": Variant("no_hl", "implicit", "trained without high-level data", 0.55, "~55%"),
    "no_web": Variant(
        "no_web", "hierarchical", "trained without web data", None, "lower, most out of distribution"
    ),
    "no_verbal": Variant(
        "no_verbal", "hierarchical", "trained without verbal instructions", None, "lower ('hurts a lot')"
    ),
}


class MixtureError(ValueError):
    """A training run's realised mixture holds a kind of sample its variant drops, or lacks one it keeps."""


@dataclass(frozen=True)
class _Recipe(TabletopDemoConfig):
    """The demo's training recipe with an ablation's changes (`vlaflow.demo.trained_checkpoint` trains it)."""

    drop: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()

    def train_config(self, dataset: Path) -> TrainConfig:
        config = apply_overrides(super().train_config(dataset), list(self.overrides))
        config.sample_kinds = {k: w for k, w in config.sample_kinds.items() if k not in self.drop}
        return TrainConfig.from_dict(config.to_dict())


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"ablate: {text}", file=sys.stderr, flush=True)


def dataset_contents(dataset: Path) -> tuple[tuple[str, ...], set[str]]:
    """(the evaluation families a ``vlaflow generate tabletop`` directory trains: its task families, and
    ``verbal`` when it holds verbal-instruction sessions; the kinds of sample it holds)."""
    path = dataset / EPISODES_META
    if not path.is_file():
        raise ValueError(
            f"{dataset}: no {EPISODES_META}; give a directory written by `vlaflow generate tabletop`"
        )
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    tasks = {r["family"] for r in records if r["kind"] == "task"}
    verbal = any(r["kind"] == "verbal_instruction" for r in records)
    kinds = {"robot"} if tasks else set()
    kinds |= {"verbal"} if verbal else set()
    kinds |= {"high_level"} if (dataset / SUBTASKS_PATH).is_file() else set()
    kinds |= {"web"} if WebSamples.available(dataset) else set()
    families = tuple(f for f in TASK_FAMILIES if f in tasks) + (("verbal",) if verbal else ())
    return families, kinds


def realised_kinds(run: Path) -> dict[str, int]:
    """Kind of sample -> samples drawn, over every realised-mixture row of `run`'s metrics.jsonl (the
    trainer writes one per process start: the first row, and the first after each resume)."""
    path = run / METRICS_FILE
    rows = (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )
    mixtures = [row["mixture"] for row in rows if "mixture" in row]
    if not mixtures:
        raise MixtureError(f"{path}: no realised mixture (the trainer writes it on the first row)")
    kinds: dict[str, int] = {}
    for mixture in mixtures:
        for name, entry in mixture.items():
            kind = name.rsplit("/", 1)[-1]
            kinds[kind] = kinds.get(kind, 0) + int(entry["samples"])
    return kinds


def check_run(name: str, run: Path, checkpoint: Path, expected: TrainConfig) -> dict[str, Any]:
    """Fail loudly unless run `name` really trained on the kinds of `expected` and no other (realised
    mixture in metrics.jsonl, and the checkpoint's own training config, subtask targets included)."""
    kinds = realised_kinds(run)
    dropped = sorted(set(RUNS[name].drop) & set(kinds))
    if dropped:
        raise MixtureError(f"run {name!r} ({run}) trained on {dropped}, which it must not hold: {kinds}")
    missing = sorted(set(expected.sample_kinds) - set(kinds))
    if missing:
        raise MixtureError(f"run {name!r} ({run}) lacks {missing}: its realised mixture is {kinds}")
    saved = read_config(checkpoint)["metadata"]["train_config"]
    if sorted(saved["sample_kinds"]) != sorted(expected.sample_kinds) or (
        saved["subtask_targets"] != expected.subtask_targets
    ):
        raise MixtureError(
            f"run {name!r}: checkpoint {checkpoint} was trained with sample_kinds "
            f"{sorted(saved['sample_kinds'])}, subtask_targets {saved['subtask_targets']}; the variant "
            f"needs {sorted(expected.sample_kinds)}, {expected.subtask_targets}"
        )
    return {"kinds": kinds, "subtask_targets": saved["subtask_targets"]}


def _same_recipe(run: Path, expected: TrainConfig) -> None:
    """An existing run must have been started with the settings asked for now (all but its length)."""
    done = complete_checkpoints(run)
    if not done:
        return
    saved = read_config(done[-1][1])["metadata"]["train_config"]
    wanted = json.loads(json.dumps(expected.to_dict()))  # as saved: tuples as lists
    differ = sorted(k for k in wanted if k not in ("steps", "save_every") and saved.get(k) != wanted[k])
    if differ:
        raise ValueError(
            f"{run} was trained with other settings ({', '.join(f'{k}={saved.get(k)!r}' for k in differ)}; "
            f"asked: {', '.join(f'{k}={wanted[k]!r}' for k in differ)}): use a new --output"
        )
    if done[-1][0] > expected.steps:
        raise ValueError(
            f"{run} is trained to step {done[-1][0]}, past --steps {expected.steps}: use a new --output"
        )


def _current(results_path: Path, wanted: dict[str, Any]) -> bool:
    """Whether an evaluation's results.json exists and was made with the settings in `wanted`."""
    if not results_path.is_file():
        return False
    results = json.loads(results_path.read_text())
    settings = dict(results["settings"], families=sorted(results["families"]))
    return all(settings.get(k) == v for k, v in wanted.items())


def run_ablations(
    output: str | Path,
    *,
    dataset: str | Path,
    seeds: Sequence[int] = (0,),
    steps: int = 1_200,
    batch_size: int = 16,
    eval_episodes: int = 10,
    families: Sequence[str] | None = None,
    workers: int | None = None,
    extra_overrides: Sequence[str] = (),
    variants: Sequence[str] | None = None,
    videos: int = 1,
    web_images: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train every distinct run of `variants` (default: all of `VARIANTS`) once per seed on `dataset`,
    evaluate each (variant, split, seed) on `eval_episodes` episodes per family of `families` (default:
    those the dataset trains), and write ``summary.json``, ``report.md`` and ``ablations.png`` under
    `output`; returns the summary. Resumable: rerun to continue. `extra_overrides` (``key=value``) change
    every run's training config alike (e.g. the model size); steps, batch size and seed are the
    harness's own options. `web_images` > 0: every run and seed also answers the questions of that many
    held-out web images per split."""
    output, dataset = Path(output), Path(dataset).resolve()
    names = tuple(variants) if variants is not None else tuple(VARIANTS)
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise ValueError(f"variants must be some of {list(VARIANTS)}, got {list(names)}")
    seeds = tuple(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise ValueError("give at least one seed")
    if web_images < 0:
        raise ValueError(f"web_images must be >= 0, got {web_images}")
    for item in extra_overrides:
        if item.partition("=")[0].split(".")[0] in HARNESS_SETTINGS:
            raise ValueError(f"override {item!r}: set by the harness (--steps, --batch-size, --seeds)")
    validate_dataset(dataset)
    trained_families, held = dataset_contents(dataset)
    families = tuple(families) if families else trained_families
    wrong = [f for f in families if f not in FAMILIES]
    if wrong or not families:
        raise ValueError(f"families must be some of {list(FAMILIES)}, got {list(families)}")
    runs = tuple(dict.fromkeys(VARIANTS[v].run for v in names))
    recipes = {
        (run, seed): _Recipe(
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            drop=RUNS[run].drop,
            overrides=(*extra_overrides, *RUNS[run].overrides),
        )
        for run in runs
        for seed in seeds
    }
    configs = {
        key: recipe.train_config(dataset) for key, recipe in recipes.items()
    }  # bad overrides fail here
    for (run, _), config in configs.items():
        lacking = sorted(set(config.sample_kinds) & set(TABLETOP_KINDS) - held)
        if lacking:
            raise ValueError(f"{dataset} holds no {lacking} samples, which run {run!r} trains on")
    for (run, seed), config in configs.items():  # an existing run started otherwise: refuse before training
        _same_recipe(output / "runs" / run / f"seed{seed}", config)
    output.mkdir(parents=True, exist_ok=True)
    eval_defaults = TabletopDemoConfig()
    trained: dict[str, dict[str, Any]] = {run: {} for run in runs}
    start = time.perf_counter()
    for seed in seeds:
        for i, run in enumerate(runs):
            directory = output / "runs" / run / f"seed{seed}"
            config = configs[run, seed]
            done = complete_checkpoints(directory)
            if done and done[-1][0] >= steps:
                _say(progress, f"seed {seed}, run {run}: trained ({done[-1][1].name})")
            else:
                resume = f", resuming from step {done[-1][0]}" if done else ""
                _say(
                    progress, f"seed {seed}, run {run} ({i + 1}/{len(runs)}): training {steps} steps{resume}"
                )
            checkpoint = trained_checkpoint(directory, recipes[run, seed], dataset, progress)
            trained[run][str(seed)] = {
                "checkpoint": str(checkpoint),
                **check_run(run, directory, checkpoint, config),
            }
            for name in names:
                variant = VARIANTS[name]
                if variant.run != run:
                    continue
                for split in SPLITS:
                    where = output / "eval" / name / f"seed{seed}" / split
                    wanted = {
                        "policy": str(checkpoint),
                        "split": split,
                        "mode": variant.mode,
                        "episodes_per_family": eval_episodes,
                        "families": sorted(families),
                        "steps_per_chunk": eval_defaults.steps_per_chunk,
                    }
                    if _current(where / "results.json", wanted):
                        continue
                    if where.exists():  # made with other settings or another checkpoint
                        shutil.rmtree(where)
                    _say(progress, f"seed {seed}, {name}: evaluating {split} ({variant.mode})")
                    evaluate_tabletop(
                        where,
                        policy=str(checkpoint),
                        split=split,
                        episodes=eval_episodes,
                        families=families,
                        workers=workers,
                        videos=videos,
                        steps_per_chunk=eval_defaults.steps_per_chunk,
                        mode=variant.mode,
                        subtask_every=eval_defaults.subtask_every,
                        progress=progress,
                    )
            if web_images:
                _answer_web(output / "web" / run / f"seed{seed}", checkpoint, web_images, progress)
    summary = collect(output, names, seeds, families)
    if web_images:
        summary["web"] = collect_web(output, runs, seeds)
    summary["settings"] = {
        "dataset": str(dataset),
        "seeds": list(seeds),
        "steps": steps,
        "batch_size": batch_size,
        "eval_episodes_per_family": eval_episodes,
        "families": list(families),
        "extra_overrides": list(extra_overrides),
        "subtask_every": eval_defaults.subtask_every,
        "steps_per_chunk": eval_defaults.steps_per_chunk,
        "web_images": web_images,
        "seconds": time.perf_counter() - start,
    }
    summary["runs"] = trained
    plot_ablations(summary, output / CHART_FILE)
    summary["chart"] = str(output / CHART_FILE)
    (output / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    (output / REPORT_FILE).write_text(ablation_report(summary) + "\n")
    return summary


def _answer_web(directory: Path, checkpoint: Path, images: int, progress: bool) -> None:
    """Held-out web questions of both splits answered by `checkpoint` under ``directory/<split>``, at the
    checkpoint's training resolution; an answer set made for the same checkpoint and settings is reused."""
    for split in SPLITS:
        where = directory / split
        wanted = {"checkpoint": str(checkpoint), "split": split, "images": images, "seed": WEB_EVAL_SEED}
        done = where / "web_results.json"
        if done.is_file() and json.loads(done.read_text())["settings"] == wanted:
            continue
        if where.exists():
            shutil.rmtree(where)
        _say(progress, f"{directory.parent.name}, {directory.name}: web questions ({split})")
        resolution = training_view(checkpoint).resolution
        evaluate_web(checkpoint, where, split=split, images=images, resolution=resolution, progress=progress)


def collect_web(output: Path, runs: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Per training run and split: each seed's overall web-answer score and every answer pooled, by kind."""
    return {
        run: {
            "trained_on": RUNS[run].description,
            "splits": _pool_seeds(output / "web" / run, seeds, "web_results.json", "samples", summarize_web),
        }
        for run in runs
    }


def _pool_seeds(
    folder: Path,
    seeds: Sequence[int],
    filename: str,
    records_key: str,
    pool: Callable[[list[dict[str, Any]]], dict[str, Any]],
) -> dict[str, Any]:
    """Per split: the ``overall`` scores of ``folder/seed<k>/<split>/<filename>`` for each seed, and `pool`
    over the records (``records_key``) of every seed together."""
    splits = {}
    for split in SPLITS:
        per_seed, records = {}, []
        for seed in seeds:
            results = json.loads((folder / f"seed{seed}" / split / filename).read_text())
            per_seed[str(seed)] = results["overall"]
            records += results[records_key]
        splits[split] = {"seeds": per_seed, "pooled": pool(records)}
    return splits


def collect(
    output: Path, names: Sequence[str], seeds: Sequence[int], families: Sequence[str]
) -> dict[str, Any]:
    """Per variant and split: each seed's overall scores and the scores of all their episodes pooled."""
    variants = {}
    for name in names:
        splits = _pool_seeds(
            output / "eval" / name, seeds, "results.json", "episodes", lambda r: summarize(r, families)
        )
        v = VARIANTS[name]
        variants[name] = {
            "run": v.run,
            "mode": v.mode,
            "description": v.description,
            "trained_on": RUNS[v.run].description,
            "paper_progress": v.paper,
            "paper": v.claim,
            "splits": splits,
        }
    return {"variants": variants}


def _percent(stat: dict[str, Any], key: str = "mean") -> str:
    low, high = stat["ci95"]
    return f"{100 * stat[key]:.1f} [{100 * low:.0f}, {100 * high:.0f}]"


def ablation_report(summary: dict[str, Any]) -> str:
    """Markdown: a table per split (rows: variants; task progress, success, language following and
    subtask accuracy in % with 95% intervals pooled over seeds, episodes) next to the paper's numbers."""
    s = summary["settings"]
    seeds = ", ".join(str(x) for x in s["seeds"])
    lines = [
        "# π0.5 ablations in miniature (tabletop)",
        "",
        f"Each training run: `pi05_tabletop_tiny`, {s['steps']} steps of batch {s['batch_size']}; "
        f"seeds {seeds}; {s['eval_episodes_per_family']} episode(s) per family, split and seed "
        f"(families: {', '.join(s['families'])}); hierarchical decoding every {s['subtask_every']} chunks."
        + (f" Overrides: `{' '.join(s['extra_overrides'])}`." if s["extra_overrides"] else ""),
        "",
        "All numbers in %, with 95% intervals pooled over seeds (success: Wilson; the rest: bootstrap over "
        "episodes); subtask accuracy: normalized match against the plan step in force, where the mode "
        "reports subtasks. The paper's column is the π0.5 paper's task progress of real mobile "
        "manipulators in unseen homes: shown for the direction of each effect, not comparable in scale.",
    ]
    for split in SPLITS:
        title = "held-out scenes (`ood`)" if split == "ood" else "training scenes (`train`)"
        paper = split == "ood"  # the paper's numbers are for unseen homes
        lines += [
            "",
            f"## {title}",
            "",
            "| variant | trained on | mode | progress | progress per seed | success | language following "
            "| subtask accuracy | episodes |" + (" paper (real robot, unseen homes) |" if paper else ""),
            "|---|---|---|---|---|---|---|---|---|" + ("---|" if paper else ""),
        ]
        for name, v in summary["variants"].items():
            result = v["splits"][split]
            o = result["pooled"]["overall"]
            per_seed = " / ".join(f"{100 * r['progress']['mean']:.0f}" for r in result["seeds"].values())
            success = f"{_percent(o['success'], 'rate')} ({o['success']['successes']}/{o['episodes']})"
            accuracy = _percent(o["subtask_accuracy"]["normalized"]) if "subtask_accuracy" in o else "—"
            lines.append(
                f"| {name} | {v['trained_on']} | {v['mode']} | {_percent(o['progress'])} | {per_seed} | "
                f"{success} | {_percent(o['language_following'])} | {accuracy} | {o['episodes']} |"
                + (f" {v['paper'] or '—'} |" if paper else "")
            )
    if summary.get("web"):
        lines += _web_table(summary["web"], summary["settings"].get("web_images"))
    if summary.get("chart"):
        lines += ["", f"![task progress per variant]({Path(summary['chart']).name})"]
    return "\n".join(lines)


def _web_table(web: dict[str, Any], images: int | None) -> list[str]:
    """Markdown lines: per training run and split, the share of held-out web questions answered right,
    by kind and overall, pooled over seeds with Wilson intervals."""
    kinds = [
        k
        for k in WEB_KINDS
        if any(k in s["pooled"]["kinds"] for r in web.values() for s in r["splits"].values())
    ]

    def cell(block: dict[str, Any] | None) -> str:
        if not block:
            return "—"
        return f"{_percent(block, 'rate')} ({block['correct']}/{block['samples']})"

    lines = [
        "",
        "## held-out web questions",
        "",
        f"Every training run answers the questions of {images} held-out web images per split and seed "
        "(right: the normalized answer equals the target; detection: every box matched with IoU >= 0.5), "
        "in %, Wilson 95% intervals pooled over seeds.",
        "",
        "| run | trained on | split | " + " | ".join(kinds) + " | all |",
        "|---|---|---|" + "---|" * (len(kinds) + 1),
    ]
    for run, result in web.items():
        for split, scores in result["splits"].items():
            pooled = scores["pooled"]
            cells = " | ".join(cell(pooled["kinds"].get(k)) for k in kinds)
            lines.append(
                f"| {run} | {result['trained_on']} | {split} | {cells} | {cell(pooled['overall'])} |"
            )
    return lines


def plot_ablations(summary: dict[str, Any], path: Path) -> None:
    """Bar chart: pooled task progress per variant with 95% error bars, train and ood side by side, and
    the paper's numbers (real robot, unseen homes) as markers where it gives one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["variants"])
    x = np.arange(len(names))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 3.8))
    for k, split in enumerate(SPLITS):
        stats = [summary["variants"][n]["splits"][split]["pooled"]["overall"]["progress"] for n in names]
        values = np.array([100 * p["mean"] for p in stats])
        low = np.array([100 * p["ci95"][0] for p in stats])
        high = np.array([100 * p["ci95"][1] for p in stats])
        at = x + (k - 0.5) * width
        ax.bar(at, values, width, label=f"{split} scenes")
        ax.errorbar(
            at,
            values,
            yerr=np.maximum(0.0, [values - low, high - values]),
            fmt="none",
            ecolor="black",
            capsize=2,
        )
    paper = [
        (i, 100 * summary["variants"][n]["paper_progress"])
        for i, n in enumerate(names)
        if summary["variants"][n]["paper_progress"] is not None
    ]
    if paper:
        ax.scatter(
            [x[i] + 0.5 * width for i, _ in paper],
            [p for _, p in paper],
            marker="D",
            color="black",
            zorder=3,
            label="paper (real robot, unseen homes)",
        )
    ax.set_xticks(x, [n.replace("_", " ") for n in names], fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("task progress, % (95% CI)")
    seeds = summary["settings"]["seeds"]
    ax.set_title(
        f"tabletop ablations: {summary['settings']['steps']} steps per run, seeds {seeds}", fontsize=9
    )
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
