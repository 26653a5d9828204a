"""Rollouts in the tabletop world: one episode (`rollout`), or many in parallel (`rollout_many`).

A policy is any callable ``obs -> output`` (optionally with ``reset()``), where `obs` is what
`TabletopEnv` returns and `output` is an action (5,), an action chunk (T, 5), or a dict
``{"actions": (T, 5), "subtask": str}`` (the subtask the policy says it is doing; the scripted expert
always gives one). Chunks are executed ``steps_per_chunk`` actions at a time. Recording keeps, per frame,
the observation before the action: state, prompt in force, reported subtask, camera images, and with
``annotate=True`` the `<loc>` boxes of the entities that the reported subtask involves.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlaflow.sim.metaworld import check_rollout_options
from vlaflow.sim.tabletop.tasks import FAMILIES, EpisodeSpec, make_subtask, sample_episode
from vlaflow.sim.tabletop.world import ACTION_DIM, ACTION_HIGH, ACTION_LOW, TabletopEnv

Policy = Callable[[dict[str, Any]], Any]


@dataclass
class Episode:
    """One rollout; row t holds the observation before action t and what that action produced."""

    spec: EpisodeSpec
    states: np.ndarray  # (T, 5) float32
    actions: np.ndarray  # (T, 5) float32, as executed (clipped)
    prompts: list[str]  # (T,) instruction in force (changes within verbal-instruction sessions)
    subtasks: list[str]  # (T,) subtask the policy reported ("" if it reports none)
    command_index: np.ndarray  # (T,) int64, the environment's current step of the plan
    progress: np.ndarray  # (T,) float32, rubric progress after each action
    successes: np.ndarray  # (T,) bool
    result: dict[str, Any]  # final `TaskTracker.summary()`
    images: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> (T, R, R, 3) uint8
    boxes: dict[str, list[str]] = field(default_factory=dict)  # camera -> (T,) `<loc>` strings

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def length(self) -> int:
        return len(self.actions)

    @property
    def success(self) -> bool:
        return bool(self.result["success"])


def parse_output(output: Any) -> tuple[np.ndarray, str | None]:
    """(chunk (T, 5) float32, subtask or None) of a policy output; raises ValueError on bad shapes."""
    subtask = None
    if isinstance(output, Mapping):
        if "actions" not in output:
            raise ValueError(f"a policy output dict needs an 'actions' entry, got keys {sorted(output)}")
        subtask = output.get("subtask")
        if subtask is not None and not isinstance(subtask, str):
            raise ValueError(f"policy output 'subtask' must be a str, got {type(subtask).__name__}")
        output = output["actions"]
    chunk = np.asarray(output, dtype=np.float32)
    if chunk.ndim == 1:
        chunk = chunk[None]
    if chunk.ndim != 2 or chunk.shape[0] < 1 or chunk.shape[1] != ACTION_DIM:
        raise ValueError(
            f"policy actions must have shape ({ACTION_DIM},) or (T, {ACTION_DIM}) with T >= 1, "
            f"got {chunk.shape}"
        )
    return chunk, subtask


def _entity_map(spec: EpisodeSpec) -> dict[str, tuple[str, ...]]:
    """Subtask text -> entities to box: the plan's steps, and picking up any object (recoveries)."""
    out = {make_subtask(spec.scene, "pick", o.name).text: (o.name,) for o in spec.scene.objects}
    out.update({s.text: s.entities for s in spec.subtasks})
    return out


def rollout(
    env: TabletopEnv,
    policy: Policy,
    *,
    seed: int | None = None,
    spec: EpisodeSpec | None = None,
    steps_per_chunk: int = 1,
    steps_after_success: int = 0,
    record: bool = True,
    annotate: bool = False,
) -> Episode:
    """Run one episode until `steps_after_success` steps after the first success or the step limit.

    `spec` (or else `seed`) goes to ``env.reset``; a ``reset()`` method on the policy is called first.
    ``record=False`` keeps images out of the episode (the policy still sees them); ``annotate`` adds the
    per-frame boxes of the reported subtask's entities in every camera.
    """
    check_rollout_options(steps_per_chunk, steps_after_success)
    reset = getattr(policy, "reset", None)
    if callable(reset):
        reset()
    # A policy that reads only the simulator state (the expert) needs no images unless they are recorded.
    env.render_images = record or getattr(policy, "uses_images", True)
    obs = env.reset(seed, spec=spec)
    assert env.spec is not None and env.tracker is not None
    entities = _entity_map(env.spec) if annotate else {}
    states, actions, prompts, subtasks, command, progress, successes = [], [], [], [], [], [], []
    frames: dict[str, list[np.ndarray]] = {c: [] for c in env.cameras} if record else {}
    boxes: dict[str, list[str]] = {c: [] for c in env.cameras} if annotate else {}
    info: dict[str, Any] = env.tracker.summary()
    end = env.spec.max_steps  # how many steps the episode runs; set anew at the first success
    while len(actions) < end:
        chunk, subtask = parse_output(policy(obs))
        for action in chunk[:steps_per_chunk]:
            states.append(obs["state"])
            prompts.append(obs["prompt"])
            subtasks.append(subtask or "")
            command.append(env.tracker.current)
            for cam, images in frames.items():
                images.append(obs["images"][cam])
            if annotate:
                for cam, text in env.boxes(entities.get(subtask or "", ())).items():
                    boxes[cam].append(text)
            obs, reward, success, _, info = env.step(action)
            actions.append(np.clip(action, ACTION_LOW, ACTION_HIGH))
            progress.append(reward)
            successes.append(success)
            if success and end == env.spec.max_steps:
                end = min(end, len(actions) + steps_after_success)
            if len(actions) >= end:
                break
    return Episode(
        spec=env.spec,
        states=np.stack(states).astype(np.float32),
        actions=np.stack(actions).astype(np.float32),
        prompts=prompts,
        subtasks=subtasks,
        command_index=np.asarray(command, dtype=np.int64),
        progress=np.asarray(progress, dtype=np.float32),
        successes=np.asarray(successes, dtype=bool),
        result=info,
        images={cam: np.stack(images) for cam, images in frames.items()},
        boxes=boxes,
    )


class _RolloutWorker:
    """Runs (family, seed) jobs of one split with one environment and a policy per family."""

    def __init__(
        self,
        policy_factory: Callable[[str], Policy],
        split: str,
        env_kwargs: Mapping[str, Any],
        rollout_kwargs: Mapping[str, Any],
    ) -> None:
        self._split = split
        self._env = TabletopEnv(split=split, **env_kwargs)
        self._factory = policy_factory
        self._policies: dict[str, Policy] = {}
        self._rollout_kwargs = dict(rollout_kwargs)

    def run(self, job: tuple[str, int]) -> Episode:
        family, seed = job
        if family not in self._policies:
            self._policies[family] = self._factory(family)
        kwargs = dict(self._rollout_kwargs)
        if not isinstance(kwargs["record"], bool):
            kwargs["record"] = job in kwargs["record"]
        spec = sample_episode(seed, family=family, split=self._split)
        return rollout(self._env, self._policies[family], spec=spec, **kwargs)

    def close(self) -> None:
        self._env.close()


_worker: _RolloutWorker | None = None


def _run_in_worker(args: tuple[Any, ...], job: tuple[str, int]) -> Episode:
    """Pool task: the process's worker is built on its first job and kept for the next ones."""
    global _worker
    if _worker is None:
        _worker = _RolloutWorker(*args)
    return _worker.run(job)


def rollout_many(
    jobs: Iterable[tuple[str, int]],
    policy_factory: Callable[[str], Policy],
    *,
    split: str = "train",
    workers: int | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    steps_per_chunk: int = 1,
    steps_after_success: int = 0,
    record: bool | Collection[tuple[str, int]] = True,
    annotate: bool = False,
) -> Iterator[Episode]:
    """Run (family, seed) jobs of `split` and yield their episodes in job order (deterministic datasets).
    ``record`` is a bool or the set of jobs whose frames to keep (e.g. the few an evaluation turns into
    videos).

    `policy_factory` maps a family to a policy (``ExpertPolicy``, or
    `vlaflow.sim.evaluate.CheckpointPolicyFactory`); it is called once per family and process.
    ``workers > 1`` uses a "spawn" process pool (MuJoCo GL contexts are not fork-safe), so the factory
    must be picklable and the calling script needs an ``if __name__ == "__main__":`` guard;
    ``workers <= 1`` runs here; None uses every CPU. `env_kwargs` go to `TabletopEnv` (cameras,
    resolution). An episode depends only on its (family, seed, split), not on which worker ran it.
    """
    jobs = list(jobs)
    for family, seed in jobs:
        if family not in FAMILIES or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"a job is (family in {FAMILIES}, seed >= 0), got {(family, seed)!r}")
    check_rollout_options(steps_per_chunk, steps_after_success)
    workers = max(1, min((os.cpu_count() or 1) if workers is None else workers, len(jobs)))
    rollout_kwargs = {
        "steps_per_chunk": steps_per_chunk,
        "steps_after_success": steps_after_success,
        "record": record if isinstance(record, bool) else frozenset(record),
        "annotate": annotate,
    }
    return _run_jobs(jobs, workers, (policy_factory, split, dict(env_kwargs or {}), rollout_kwargs))


def _run_jobs(jobs: list[tuple[str, int]], workers: int, args: tuple[Any, ...]) -> Iterator[Episode]:
    if workers == 1:
        worker = _RolloutWorker(*args)
        try:
            yield from map(worker.run, jobs)
        finally:
            worker.close()
        return
    # At most 2 jobs per worker in flight: finished episodes (with their frames) never pile up in memory
    # while the caller is busy writing them.
    task = functools.partial(_run_in_worker, args)
    with mp.get_context("spawn").Pool(workers) as pool:
        pending: deque[Any] = deque(pool.apply_async(task, (job,)) for job in jobs[: 2 * workers])
        for job in jobs[2 * workers :]:
            yield pending.popleft().get()
            pending.append(pool.apply_async(task, (job,)))
        while pending:
            yield pending.popleft().get()
