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
import shutil
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vlaflow.data.video import encode_video
from vlaflow.inference import DELAY_KEY, PREV_ACTIONS_KEY, SUBTASK_KEY
from vlaflow.sim import metaworld as mw
from vlaflow.sim.generate import camera_feature, feature_camera

EVAL_SEED = 1_000_000  # demonstrations use seeds from 0: evaluation never replays a training layout
VIDEO_FPS = 40
RTC_HINTS = (PREV_ACTIONS_KEY, DELAY_KEY)


def _hints(obs: dict[str, Any], keys: tuple[str, ...] = (*RTC_HINTS, SUBTASK_KEY)) -> dict[str, Any]:
    """What a simulator observation carries beyond images, state and prompt, of `keys`: the rollout
    engine's hints for real-time chunking when it gives them, the simulator's subtask in force
    where it has one (what oracle mode conditions on)."""
    return {k: obs[k] for k in keys if k in obs}


def _model_input(obs: dict[str, Any]) -> dict[str, Any]:
    """A simulator observation as `Policy` takes it: cameras under the dataset's feature names,
    and its hints (`_hints`)."""
    images = {camera_feature(camera): image for camera, image in obs["images"].items()}
    return {"images": images, "state": obs["state"], "prompt": obs["prompt"], **_hints(obs)}


@dataclass
class CheckpointPolicyFactory:
    """Picklable `task -> policy` for rollout workers: loads the checkpoint once per process and
    feeds it simulator observations under the camera names the training dataset used. `rtc`
    (`vlaflow.inference.rtc.RTCConfig`) turns on real-time chunking; `mode` / `subtask_every` are
    `Policy`'s (hierarchical, implicit or oracle), and the policy's output carries the subtask that
    conditioned each chunk."""

    checkpoint: str
    num_steps: int = 10
    seed: int = 0
    rtc: Any = None
    mode: str = "implicit"
    subtask_every: int = 1

    def __call__(self, task: str) -> Any:
        import torch

        from vlaflow.inference.policy import Policy

        key = (self.checkpoint, self.num_steps, self.seed, self.rtc, self.mode, self.subtask_every)
        if _loaded.get("key") != key:
            torch.set_num_threads(1)  # one rollout worker per core
            _loaded["policy"] = Policy.load(
                self.checkpoint,
                num_steps=self.num_steps,
                seed=self.seed,
                rtc=self.rtc,
                mode=self.mode,
                subtask_every=self.subtask_every,
            )
            _loaded["key"] = key
        return _SimulatorPolicy(_loaded["policy"])


class _SimulatorPolicy:
    """A loaded `Policy` as the rollout engine calls it: simulator observations in, {"actions",
    "subtask"} out; `reset` (called at each episode's start) forgets the decoded subtask."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def __call__(self, obs: dict[str, Any]) -> dict[str, Any]:
        return self.policy.act(_model_input(obs))

    def reset(self) -> None:
        self.policy.reset()


_loaded: dict[str, Any] = {}


@dataclass
class ServerPolicyFactory:
    """Picklable `task -> policy` that asks a running `vlaflow serve` (openpi's protocol) for every
    chunk, over one connection per process. The server samples with its own seed (0, as in-process
    evaluation): on a freshly started server and with one rollout worker, server-backed and
    in-process evaluation of the same checkpoint and seeds draw the same noise in the same order.
    The server's settings rule: requests carry the rollout engine's real-time chunking hints when
    the server does RTC (`vlaflow serve --rtc`), and the simulator's subtask when it runs in oracle
    mode; each episode starts with a reset of the connection's session (its decoded subtask)."""

    uri: str
    token: str | None = None

    def metadata(self) -> dict[str, Any]:
        """The server's metadata frame (over a connection of its own, closed again)."""
        with _connect(self.uri, self.token) as client:
            return client.get_server_metadata()

    def view(self) -> TrainingView:
        """The served checkpoint's training view, from the server's metadata (a server that does not
        say how training rendered: the model's input size)."""
        metadata = self.metadata()
        cameras = tuple(
            feature_camera(k) for k, v in metadata["observation"].items() if v["dtype"] == "uint8"
        )
        sizes = list(metadata.get("image_sizes", {}).values())
        resolution = sizes[0][0] if sizes else metadata["model"]["image_size"]
        return TrainingView(resolution, cameras, tuple(metadata.get("tasks", ())))

    def __call__(self, task: str) -> _ServerPolicy:
        metadata = self.metadata()
        spec = metadata["observation"]
        state_key = next((k for k, v in spec.items() if v["dtype"] == "float32"), None)
        if state_key is None:
            raise ValueError(f"server {self.uri}: its metadata names no float32 state entry ({spec})")
        hints = (
            *(RTC_HINTS if metadata.get("rtc") else ()),
            *((SUBTASK_KEY,) if metadata.get("mode") == "oracle" else ()),
        )
        return _ServerPolicy(self.uri, self.token, state_key, hints)


class _ServerPolicy:
    """One simulator task's view of the shared connection: observation -> the server's reply."""

    def __init__(self, uri: str, token: str | None, state_key: str, hints: tuple[str, ...] = ()) -> None:
        self._key, self._state_key, self._hints = (uri, token), state_key, hints

    def __call__(self, obs: dict[str, Any]) -> dict[str, Any]:
        request = {camera_feature(camera): image for camera, image in obs["images"].items()}
        hints = _hints(obs, self._hints)
        if PREV_ACTIONS_KEY in hints and not len(hints[PREV_ACTIONS_KEY]):  # no action left to join
            hints.pop(PREV_ACTIONS_KEY), hints.pop(DELAY_KEY, None)
        request.update({self._state_key: obs["state"], "prompt": obs["prompt"], **hints})
        return _server_client(*self._key).infer(request)

    def reset(self) -> None:
        _server_client(*self._key).reset()

    def close(self) -> None:
        client = _clients.pop(self._key, None)
        if client is not None:
            client.close()


_clients: dict[tuple[str, str | None], Any] = {}


def _connect(uri: str, token: str | None) -> Any:
    from vlaflow.client import PolicyClient

    if not uri.startswith(("ws://", "wss://")):
        raise ValueError(f"server must be a ws:// or wss:// address such as ws://127.0.0.1:8000, got {uri!r}")
    return PolicyClient(uri, None, token=token, wait_s=5.0)


def _server_client(uri: str, token: str | None) -> Any:
    """The process's connection to `uri`, shared by the policies of every task."""
    if (uri, token) not in _clients:
        _clients[uri, token] = _connect(uri, token)
    return _clients[uri, token]


@dataclass(frozen=True)
class TrainingView:
    """How a checkpoint's training data was rendered, so evaluation can render the same way."""

    resolution: int
    cameras: tuple[str, ...]
    prompts: tuple[str, ...]  # empty when the checkpoint predates recording them


def training_view(checkpoint: str | Path) -> TrainingView:
    """Resolution and cameras of the training dataset (older checkpoints, which did not record the
    image size: the model's input size) and its task prompts."""
    from vlaflow.inference.policy import checkpoint_stats
    from vlaflow.pretrained import read_config

    stats = checkpoint_stats(checkpoint)
    sizes = [stats.image_sizes[key] for key in stats.cameras.values() if key in stats.image_sizes]
    resolution = sizes[0][0] if sizes else int(read_config(checkpoint)["model"]["vision"]["image_size"])
    cameras = tuple(feature_camera(key) for key in stats.cameras.values())
    return TrainingView(resolution=resolution, cameras=cameras, prompts=stats.tasks)


def resolve_view(
    policy: Any, resolution: int | None, cameras: Sequence[str] | None, defaults: tuple[int, Sequence[str]]
) -> tuple[int, tuple[str, ...], TrainingView | None]:
    """Resolution and cameras to render: as given, else the checkpoint's training view (a server's:
    its cameras and input size), else the benchmark's defaults (the scripted expert, a policy factory)."""
    view = training_view(policy) if isinstance(policy, str) and policy != "expert" else None
    if isinstance(policy, ServerPolicyFactory):
        view = policy.view()
    resolution = resolution or (view.resolution if view else defaults[0])
    cameras = tuple(cameras or (view.cameras if view else defaults[1]))
    return resolution, cameras, view


@contextmanager
def evaluation_output(output: Path) -> Iterator[Path]:
    """`output` with its videos/ folder; removed again if the evaluation fails and it was new, so
    an error never leaves an empty or half-written results folder behind."""
    existed = output.exists()
    (output / "videos").mkdir(parents=True, exist_ok=True)
    try:
        yield output
    except BaseException:
        if not existed:
            shutil.rmtree(output, ignore_errors=True)
        raise


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
    for row, task in enumerate(order):  # episode counts on the bars: n successes of N episodes
        r = results["tasks"][task]
        ax.text(rates[row] + 1, row, f"{r['successes']}/{r['episodes']}", va="center", fontsize=6)
    ax.set_yticks(range(len(order)), [t.removesuffix("-v3") for t in order], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 108)
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
    policy: str | ServerPolicyFactory,
    tasks: Sequence[str],
    episodes_per_task: int,
    steps_per_chunk: int = 5,
    workers: int | None = None,
    seed: int = EVAL_SEED,
    resolution: int | None = None,
    cameras: Sequence[str] | None = None,
    videos_per_task: int = 2,
    num_steps: int = 10,
    max_steps: int = mw.DEFAULT_MAX_STEPS,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `policy` ("expert", a checkpoint directory, or a policy server) and write results,
    chart and videos.

    A checkpoint is rendered at its training resolution with its training cameras unless
    `resolution` / `cameras` say otherwise (the expert: 224 px, corner2); tasks whose prompt the
    checkpoint never trained on are warned about and listed in the results."""
    output = Path(output)
    expert = policy == "expert"
    served = isinstance(policy, ServerPolicyFactory)
    if not expert and not served and not (Path(policy) / "config.json").is_file():
        raise FileNotFoundError(f"--checkpoint {policy}: not a vlaflow model directory (no config.json)")
    resolution, cameras, view = resolve_view(policy, resolution, cameras, (224, ("corner2",)))
    untrained = [t for t in tasks if view and view.prompts and mw.TASK_DESCRIPTIONS[t] not in view.prompts]
    if untrained:
        warnings.warn(
            f"the checkpoint never trained on {untrained} (its prompts: {list(view.prompts)})", stacklevel=2
        )
    factory = mw.ExpertPolicy if expert else policy if served else CheckpointPolicyFactory(policy, num_steps)
    jobs = mw.episode_jobs(tasks, episodes_per_task, seed=seed)
    recorded = {(t, seed + i) for t in tasks for i in range(min(videos_per_task, episodes_per_task))}
    # The expert reads the simulator state: render only the episodes that become videos.
    rendered = () if expert and not recorded else cameras
    successes: dict[str, list[bool]] = defaultdict(list)
    lengths: dict[str, list[int]] = defaultdict(list)
    start = time.perf_counter()
    with evaluation_output(output):
        bar = tqdm(total=len(jobs), disable=not progress, desc="evaluation", unit="ep")
        for episode in mw.rollout_many(
            jobs,
            factory,
            workers=workers,
            env_kwargs={"cameras": rendered, "resolution": resolution, "max_steps": max_steps},
            steps_per_chunk=1 if expert else steps_per_chunk,
            record=recorded,
        ):
            successes[episode.task].append(episode.success)
            lengths[episode.task].append(episode.length)
            if episode.images:
                name = f"{episode.task}_seed{episode.seed}_{'success' if episode.success else 'failure'}.mp4"
                encode_video(output / "videos" / name, episode.images[cameras[0]], VIDEO_FPS)
            rate = np.mean([s for v in successes.values() for s in v])
            bar.set_postfix(success=f"{rate:.0%}", refresh=False)
            bar.update(1)
        bar.close()
    results = summarize({t: successes[t] for t in tasks}, dict(lengths))
    results["settings"] = {
        "policy": policy.uri if served else policy,
        "episodes_per_task": episodes_per_task,
        "steps_per_chunk": 1 if expert else steps_per_chunk,
        "max_steps": max_steps,
        "seed": seed,
        "resolution": resolution,
        "cameras": list(cameras),
        "untrained_tasks": untrained,
        "denoising_steps": None
        if expert
        else policy.metadata()["model"]["num_steps"]
        if served
        else num_steps,
        "seconds": time.perf_counter() - start,
    }
    (output / "results.json").write_text(json.dumps(results, indent=2))
    name = results["settings"]["policy"]
    plot_success(
        results, output / "success.png", f"Meta-World, policy: {'scripted expert' if expert else name}"
    )
    return results
