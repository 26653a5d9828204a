"""Policy evaluation on the tabletop benchmark: task progress, success and language following with
95% confidence intervals, a chart, and rollout videos with the current subtask drawn on them.

Each family of `families` runs `episodes` seeded episodes (seeds ``seed + i``, by default far from the
seeds datasets are generated from) of one split. A checkpoint is run through
`vlaflow.sim.evaluate.CheckpointPolicyFactory` (as for Meta-World): it receives
``{"images": {"observation.images.<camera>": uint8 (H, W, 3)}, "state": float32 (5,), "prompt": str}``
(camera keys as the dataset names them; in verbal-instruction sessions the prompt is the command in force)
and returns an action chunk (T, 5) or ``{"actions": (T, 5), "subtask": str}``; chunks are executed
`steps_per_chunk` actions at a time. Intervals: Wilson score for success rates; percentile bootstrap over
episodes (2000 resamples, fixed seed) for mean progress and language following.
"""

from __future__ import annotations

import json
import math
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vlaflow.data.video import encode_video
from vlaflow.pretrained import read_config
from vlaflow.sim.evaluate import (
    EVAL_SEED,
    CheckpointPolicyFactory,
    ServerPolicyFactory,
    evaluation_output,
    resolve_view,
)
from vlaflow.sim.generate import camera_feature
from vlaflow.sim.tabletop.expert import ExpertPolicy
from vlaflow.sim.tabletop.generate import DEFAULT_CAMERAS, EPISODES_META
from vlaflow.sim.tabletop.rollout import Episode, Policy, rollout_many
from vlaflow.sim.tabletop.scene import check_split_name
from vlaflow.sim.tabletop.skills import check_skills
from vlaflow.sim.tabletop.tasks import FAMILIES, EpisodeSpec
from vlaflow.sim.tabletop.web_eval import evaluate_web, normalized
from vlaflow.sim.tabletop.world import FPS

BOOTSTRAP_SAMPLES = 2000
HEADING_TOWARDS = 0.7
"""A first chunk whose direction has at least this cosine with the target's heads for it (within ~45°)."""
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate (well behaved at 0 and 1 successes, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(
    values: Sequence[float], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of `values` (resampling episodes)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return 0.0, 1.0
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def subtask_accuracy(episode: Episode, *, predicts: bool = False) -> dict[str, Any] | None:
    """How often the subtask the policy reported at the start of a chunk was the plan step in force
    for that state: {"exact", "normalized" (`web_eval.normalized` on both), "chunks"}. None when the
    policy reported no subtask at all, unless it `predicts` them (hierarchical or oracle mode: an
    empty decoded subtask is a wrong one)."""
    starts = [int(i) for i in episode.chunk_starts]
    if not starts or not (predicts or any(episode.subtasks[i] for i in starts)):
        return None
    pairs = [(episode.subtasks[i], episode.plan_subtasks[i]) for i in starts]
    return {
        "exact": float(np.mean([said == plan for said, plan in pairs])),
        "normalized": float(np.mean([normalized(said) == normalized(plan) for said, plan in pairs])),
        "chunks": len(pairs),
    }


def score(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Progress, success and language following (means / rate with 95% intervals) of episode records,
    and subtask accuracy (mean over the episodes that report subtasks) where any does."""
    progress = [r["progress"] for r in records]
    follow = [r["language_following"] for r in records]
    wins = sum(r["success"] for r in records)
    accuracy = [r["subtask_accuracy"] for r in records if r.get("subtask_accuracy")]
    if accuracy:
        extra = {
            "subtask_accuracy": {
                key: {
                    "mean": float(np.mean([a[key] for a in accuracy])),
                    "ci95": bootstrap_interval([a[key] for a in accuracy]),
                }
                for key in ("exact", "normalized")
            }
            | {"episodes": len(accuracy), "chunks": sum(a["chunks"] for a in accuracy)}
        }
    else:
        extra = {}
    aimed = [r for r in records if r.get("wrong_target") is not None]
    if aimed:
        wrong = sum(r["wrong_target"] for r in aimed)
        extra["wrong_target"] = {
            "rate": wrong / len(aimed),
            "wrong": wrong,
            "episodes": len(aimed),
            "ci95": wilson_interval(wrong, len(aimed)),
        }
    headings = [r["first_heading"] for r in records if r.get("first_heading") is not None]
    if headings:
        extra["first_heading"] = {
            "mean": float(np.mean(headings)),
            "ci95": bootstrap_interval(headings),
            "towards": float(np.mean([h >= HEADING_TOWARDS for h in headings])),
            "episodes": len(headings),
        }
    return {
        "episodes": len(records),
        "progress": {
            "mean": float(np.mean(progress)) if records else 0.0,
            "ci95": bootstrap_interval(progress),
        },
        "success": {
            "rate": wins / len(records) if records else 0.0,
            "successes": wins,
            "ci95": wilson_interval(wins, len(records)),
        },
        "language_following": {
            "mean": float(np.mean(follow)) if records else 0.0,
            "ci95": bootstrap_interval(follow),
        },
        "mean_length": float(np.mean([r["length"] for r in records])) if records else 0.0,
        **extra,
    }


def summarize(records: Sequence[dict[str, Any]], families: Sequence[str]) -> dict[str, Any]:
    """Per-family and overall (pooled over all episodes) scores, and the single commands by kind."""
    out = {
        "families": {f: score([r for r in records if r["family"] == f]) for f in families},
        "overall": score(records),
    }
    commands = sorted({r["command"] for r in records if r.get("command")})
    if commands:
        out["commands"] = {c: score([r for r in records if r.get("command") == c]) for c in commands}
    return out


def training_skills(policy: Any) -> str:
    """The skills mode (`vlaflow.sim.tabletop.skills`) of a checkpoint's tabletop training data, read
    from the datasets its training config names where they can still be found; "physical" otherwise
    (the expert, factories, servers, data that is gone)."""
    if not isinstance(policy, str) or policy == "expert" or not (Path(policy) / "config.json").is_file():
        return "physical"
    for source in read_config(policy).get("metadata", {}).get("train_config", {}).get("datasets", []):
        meta = Path(source.get("path", "")) / EPISODES_META
        if meta.is_file():
            with open(meta) as f:
                first = f.readline()
            if first.strip():
                return json.loads(first).get("skills", "physical")
    return "physical"


def command_kind(spec: EpisodeSpec) -> str | None:
    """What a single command asks ("pick up", "open the drawer", "close the box", ...); None for the
    other families."""
    if spec.family != "instruction":
        return None
    sub = spec.subtasks[0]
    return "pick up" if sub.kind == "pick" else f"{sub.kind} the {sub.target}"


def first_heading(episode: Episode, steps: int) -> float | None:
    """When the plan starts with picking an object: the cosine between the hand's first `steps` moves
    (in the table plane) and the direction from where the hand started to that object; None otherwise
    or when the hand did not move. It says whether the first decision headed for the target."""
    first = episode.spec.subtasks[0]
    if first.kind != "pick" or episode.length == 0:
        return None
    move = episode.actions[:steps, :2].sum(axis=0).astype(float)
    obj = episode.spec.scene.object(first.target)
    goal = np.array([obj.x, obj.y]) - episode.states[0, :2]
    norm = float(np.linalg.norm(move) * np.linalg.norm(goal))
    return float(move @ goal / norm) if norm > 1e-9 else None


def _record(episode: Episode, predicts_subtasks: bool, chunk: int) -> dict[str, Any]:
    spec, result = episode.spec, episode.result
    first = result.get("first_moved")
    return {
        "family": spec.family,
        "seed": spec.seed,
        "prompt": spec.prompt,
        "subtasks": [s.text for s in spec.subtasks],
        "targets": [spec.scene.label(t) for t in spec.targets],
        "acted_on": [spec.scene.label(o) for o in result["acted_on"]],
        "command": command_kind(spec),
        "first_moved": spec.scene.label(first) if first else None,
        "wrong_target": (first is not None and first not in spec.targets) if spec.targets else None,
        "first_heading": first_heading(episode, chunk),
        "completed": [bool(c) for c in result["completed"]],
        "progress": float(result["progress"]),
        "success": bool(result["success"]),
        "language_following": float(result["language_following"]),
        "length": episode.length,
        "subtask_accuracy": subtask_accuracy(episode, predicts=predicts_subtasks),
    }


def video_frames(episode: Episode, cameras: Sequence[str]) -> np.ndarray:
    """(T, H + banner, W * cameras, 3) frames: the cameras side by side over a banner with the prompt in
    force, the subtask the policy reported (if any), progress and step. Long prompts and subtasks
    wrap onto more lines (the banner is as tall as the episode's longest needs), never cut."""
    from PIL import Image, ImageDraw, ImageFont

    images = np.concatenate([episode.images[c] for c in cameras], axis=2)
    t, h, w, _ = images.shape
    font = ImageFont.load_default()
    chars, line = max(10, w // 6), 14
    texts = [
        [
            (textwrap.wrap(f"prompt: {episode.prompts[i]}", chars), (235, 235, 235)),
            (textwrap.wrap(f"subtask: {episode.subtasks[i] or '-'}", chars), (255, 220, 80)),
            ([f"step {i}  progress {episode.progress[i - 1] if i else 0.0:.2f}"], (160, 200, 255)),
        ]
        for i in range(t)
    ]
    banner = 2 + line * max(sum(len(lines) for lines, _ in frame) for frame in texts)
    out = np.empty((t, h + banner, w, 3), dtype=np.uint8)
    for i in range(t):
        canvas = Image.new("RGB", (w, h + banner), (20, 20, 24))
        canvas.paste(Image.fromarray(images[i]), (0, 0))
        draw = ImageDraw.Draw(canvas)
        y = h + 2
        for lines, colour in texts[i]:
            for text in lines:
                draw.text((4, y), text, fill=colour, font=font)
                y += line
        out[i] = np.asarray(canvas)
    return out


def plot_results(results: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*results["families"], "overall"]
    rows = [*results["families"].values(), results["overall"]]
    metrics = (
        ("progress", "mean", "task progress"),
        ("success", "rate", "success"),
        ("language_following", "mean", "language following"),
    )
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(names) + 2), 3.8))
    width = 0.26
    for k, (key, stat, label) in enumerate(metrics):
        values = np.array([100 * r[key][stat] for r in rows])
        lo = np.array([100 * r[key]["ci95"][0] for r in rows])
        hi = np.array([100 * r[key]["ci95"][1] for r in rows])
        x = np.arange(len(names)) + (k - 1) * width
        ax.bar(x, values, width, label=label)
        yerr = np.maximum(
            0.0, [values - lo, hi - values]
        )  # a bootstrap bound can sit a rounding off the mean
        ax.errorbar(x, values, yerr=yerr, fmt="none", ecolor="black", capsize=2, lw=0.8)
    ax.set_xticks(np.arange(len(names)), [n.replace("_", "\n") for n in names], fontsize=7)
    ax.set_ylim(0, 105)
    ax.set_ylabel("% (95% CI)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate_tabletop(
    output: str | Path,
    *,
    policy: str | Callable[[str], Policy],
    split: str = "ood",
    episodes: int = 20,
    families: Sequence[str] = FAMILIES,
    seed: int = EVAL_SEED,
    workers: int | None = None,
    resolution: int | None = None,
    videos: int = 2,
    steps_per_chunk: int = 5,
    cameras: Sequence[str] | None = None,
    num_steps: int = 10,
    mode: str = "implicit",
    subtask_every: int = 1,
    web_images: int = 0,
    skills: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `policy` on `episodes` episodes per family of `split`; write ``results.json``,
    ``results.png`` and ``videos/`` (the first `videos` episodes of each family) under `output`.

    A checkpoint runs in `mode` (`Policy`'s: implicit, hierarchical decoding of the subtask every
    `subtask_every` chunks, or oracle, given the plan step in force); whenever the policy reports
    subtasks, the results hold their accuracy against the plan step in force. `web_images` > 0 also
    asks the checkpoint the questions of that many held-out web images of the split
    (`vlaflow.sim.tabletop.web_eval`, under ``web/``; results["web"]).

    `policy` is "expert" (the scripted expert, one action per step), a checkpoint directory, or a
    picklable `family -> policy` factory whose policies get the environment's observations (a
    policy server's, `ServerPolicyFactory`, runs in the server's mode: `mode` must be that or
    implicit, the default). A
    checkpoint is rendered at its training resolution with its training cameras unless `resolution`
    / `cameras` say otherwise (otherwise: 224 px, the default cameras), and with the skills of its
    training data unless `skills` says otherwise (`training_skills`).
    """
    check_split_name(split)
    skills = check_skills(skills or training_skills(policy))
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"families must be a non-empty subset of {FAMILIES}, got {list(families)}")
    if not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, got {episodes!r}")
    output = Path(output)
    expert = policy == "expert"
    served = isinstance(policy, ServerPolicyFactory)
    if served:
        server = policy.metadata()
        served_mode = server.get("mode", "implicit")
        if mode not in ("implicit", served_mode):
            raise ValueError(f"mode={mode!r}: the server runs mode {served_mode!r} (vlaflow serve --mode)")
        mode, subtask_every, num_steps = (
            served_mode,
            server.get("subtask_every") or 1,
            server["model"]["num_steps"],
        )
    model = served or (isinstance(policy, str) and not expert)  # a model that runs in `mode`
    if expert:
        factory: Callable[[str], Policy] = ExpertPolicy
    elif isinstance(policy, str):
        if not (Path(policy) / "config.json").is_file():
            raise FileNotFoundError(f"checkpoint {policy!r}: not a vlaflow model directory (no config.json)")
        factory = CheckpointPolicyFactory(policy, num_steps=num_steps, mode=mode, subtask_every=subtask_every)
    elif callable(policy):
        factory = policy
    else:
        raise TypeError(
            f"policy must be 'expert', a checkpoint directory or a policy factory, got {policy!r}"
        )
    resolution, cameras, _ = resolve_view(policy, resolution, cameras, (224, DEFAULT_CAMERAS))
    chunk = 1 if expert else steps_per_chunk
    jobs = [(f, seed + i) for f in families for i in range(episodes)]
    recorded = {(f, seed + i) for f in families for i in range(min(videos, episodes))}
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    with evaluation_output(output):
        bar = tqdm(total=len(jobs), disable=not progress, desc=f"evaluation ({split})", unit="ep")
        for episode in rollout_many(
            jobs,
            factory,
            split=split,
            workers=workers,
            env_kwargs={"cameras": tuple(cameras), "resolution": resolution, "skills": skills},
            steps_per_chunk=chunk,
            record=recorded,
        ):
            records.append(_record(episode, predicts_subtasks=model and mode != "implicit", chunk=chunk))
            if episode.images:
                name = (
                    f"{episode.family}_seed{episode.seed}_{'success' if episode.success else 'failure'}.mp4"
                )
                encode_video(output / "videos" / name, video_frames(episode, cameras), FPS)
            bar.set_postfix(success=f"{np.mean([r['success'] for r in records]):.0%}", refresh=False)
            bar.update(1)
        bar.close()
    results = summarize(records, families)
    results["settings"] = {
        "policy": policy if isinstance(policy, str) else policy.uri if served else repr(policy),
        "split": split,
        "skills": skills,
        "episodes_per_family": episodes,
        "seed": seed,
        "steps_per_chunk": chunk,
        "resolution": resolution,
        "cameras": [camera_feature(c) for c in cameras],
        "denoising_steps": num_steps if model else None,
        "mode": mode if model else None,
        "subtask_every": subtask_every if model and mode == "hierarchical" else None,
        "intervals": "success: Wilson score 95%; progress, language following: percentile bootstrap 95% "
        f"over episodes ({BOOTSTRAP_SAMPLES} resamples)",
        "seconds": time.perf_counter() - start,
    }
    if web_images > 0 and isinstance(policy, str) and not expert:
        web = evaluate_web(
            policy, output / "web", split=split, images=web_images, resolution=resolution, progress=progress
        )
        results["web"] = {k: web[k] for k in ("kinds", "overall", "settings")}
    results["episodes"] = records
    (output / "results.json").write_text(json.dumps(results, indent=2))
    name = "scripted expert" if expert else (policy if isinstance(policy, str) else type(policy).__name__)
    overall = results["overall"]
    plot_results(
        results,
        output / "results.png",
        f"tabletop ({split}), policy: {name} — progress {100 * overall['progress']['mean']:.0f}%, "
        f"success {100 * overall['success']['rate']:.0f}%",
    )
    return results
