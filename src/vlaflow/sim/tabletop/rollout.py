"""The tabletop side of the shared rollout engine (`vlaflow.sim.rollout`): one episode (`rollout`), or
many in parallel (`rollout_many`).

A policy is any callable ``obs -> output`` (optionally with ``reset()``), where `obs` is what
`TabletopEnv` returns and `output` is an action (5,), an action chunk (T, 5), or a dict
``{"actions": (T, 5), "subtask": str}`` (the subtask the policy says it is doing; the scripted expert
always gives one). Chunks are executed ``steps_per_chunk`` actions at a time. Recording keeps, per frame,
the observation before the action: state, prompt in force, reported subtask, the plan step in force,
camera images, and with ``annotate=True`` the `<loc>` boxes of the entities the reported subtask involves.

``perturb=sigma`` executes every action with a smoothly varying offset of the hand's motion added
(per axis an AR(1) process with stationary standard deviation sigma metres per step, seeded by the
episode) while the episode records the action the policy asked for: demonstrations of a closed-loop
expert then show how to come back from where a learned policy drifts to (DART noise injection), not
only the path a perfect policy never leaves.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlaflow.sim import rollout as engine
from vlaflow.sim.rollout import Steps, run_episode
from vlaflow.sim.tabletop.tasks import FAMILIES, EpisodeSpec, make_subtask, sample_episode
from vlaflow.sim.tabletop.world import ACTION_DIM, ACTION_HIGH, ACTION_LOW, TabletopEnv

Policy = Callable[[dict[str, Any]], Any]
PERTURB_CORRELATION = 0.8
"""Step-to-step correlation of the perturbation: offsets last a few steps, like a policy's drift."""


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
    chunk_starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # first steps of chunks
    plan_subtasks: list[str] = field(default_factory=list)  # (T,) plan step in force (TabletopEnv.subtask)

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


parse_output = functools.partial(engine.parse_output, action_dim=ACTION_DIM)
"""(chunk (T, 5) float32, subtask or None) of a policy output; raises ValueError on bad shapes."""


def _entity_map(spec: EpisodeSpec) -> dict[str, tuple[str, ...]]:
    """Subtask text -> entities to box: the plan's steps, and picking up any object (recoveries)."""
    out = {make_subtask(spec.scene, "pick", o.name).text: (o.name,) for o in spec.scene.objects}
    out.update({s.text: s.entities for s in spec.subtasks})
    return out


class TabletopSimulator:
    """The rollout engine's adapter (`vlaflow.sim.rollout.Simulator`) for one episode of `env`."""

    action_dim = ACTION_DIM

    def __init__(
        self,
        env: TabletopEnv,
        *,
        seed: int | None = None,
        spec: EpisodeSpec | None = None,
        record: bool = True,
        annotate: bool = False,
        render: bool = True,
        perturb: float = 0.0,
    ) -> None:
        if not perturb >= 0:
            raise ValueError(f"perturb must be >= 0 (metres per step), got {perturb!r}")
        self.env, self._seed, self._spec = env, seed, spec
        self._record, self._annotate, self._render = record, annotate, render
        self._perturb, self._offset, self._noise = perturb, np.zeros(3), np.random.default_rng()
        self._entities: dict[str, tuple[str, ...]] = {}
        self._states: list[np.ndarray] = []
        self._prompts: list[str] = []
        self._subtasks: list[str] = []
        self._plan: list[str] = []
        self._command: list[int] = []
        self._frames: dict[str, list[np.ndarray]] = {}
        self._boxes: dict[str, list[str]] = {}
        self._info: dict[str, Any] = {}

    @property
    def max_steps(self) -> int:
        assert self.env.spec is not None
        return self.env.spec.max_steps

    def reset(self) -> dict[str, Any]:
        env = self.env
        env.render_images = self._render
        obs = env.reset(self._seed, spec=self._spec)
        assert env.spec is not None and env.tracker is not None
        self._entities = _entity_map(env.spec) if self._annotate else {}
        self._frames = {c: [] for c in env.cameras} if self._record else {}
        self._boxes = {c: [] for c in env.cameras} if self._annotate else {}
        self._info = env.tracker.summary()
        self._offset = np.zeros(3)
        self._noise = np.random.default_rng([env.spec.seed, FAMILIES.index(env.spec.family), 17])
        return obs

    def record(self, obs: dict[str, Any], subtask: str | None) -> None:
        assert self.env.tracker is not None
        self._states.append(obs["state"])
        self._prompts.append(obs["prompt"])
        self._subtasks.append(subtask or "")
        self._plan.append(obs["subtask"])
        self._command.append(self.env.tracker.current)
        for cam, images in self._frames.items():
            images.append(obs["images"][cam])
        if self._annotate:
            for cam, text in self.env.boxes(self._entities.get(subtask or "", ())).items():
                self._boxes[cam].append(text)

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool]:
        if self._perturb:
            rho = PERTURB_CORRELATION
            kick = self._noise.normal(0.0, self._perturb * np.sqrt(1 - rho**2), 3)
            self._offset = rho * self._offset + kick
            action = np.array(action, dtype=np.float64)
            action[:3] += self._offset
        obs, reward, success, _, self._info = self.env.step(action)
        return obs, reward, success

    def clip(self, action: np.ndarray) -> np.ndarray:
        return np.clip(action, ACTION_LOW, ACTION_HIGH)

    def episode(self, steps: Steps) -> Episode:
        assert self.env.spec is not None
        return Episode(
            spec=self.env.spec,
            states=np.stack(self._states).astype(np.float32),
            actions=steps.actions,
            prompts=self._prompts,
            subtasks=self._subtasks,
            command_index=np.asarray(self._command, dtype=np.int64),
            progress=steps.rewards,
            successes=steps.successes,
            result=self._info,
            images={cam: np.stack(images) for cam, images in self._frames.items()},
            boxes=self._boxes,
            chunk_starts=steps.chunk_starts,
            plan_subtasks=self._plan,
        )


def rollout(
    env: TabletopEnv,
    policy: Policy,
    *,
    seed: int | None = None,
    spec: EpisodeSpec | None = None,
    steps_per_chunk: int = 1,
    steps_after_success: int = 0,
    delay: int = 0,
    record: bool = True,
    annotate: bool = False,
    perturb: float = 0.0,
) -> Episode:
    """Run one episode until `steps_after_success` steps after the first success or the step limit
    (``delay``: simulated inference latency, see `vlaflow.sim.rollout`; ``perturb``: see the module
    docstring).

    `spec` (or else `seed`) goes to ``env.reset``; a ``reset()`` method on the policy is called first.
    ``record=False`` keeps images out of the episode (the policy still sees them); ``annotate`` adds the
    per-frame boxes of the reported subtask's entities in every camera.
    """
    sim = _simulator(env, policy, seed=seed, spec=spec, record=record, annotate=annotate, perturb=perturb)
    run = run_episode(
        sim, policy, steps_per_chunk=steps_per_chunk, steps_after_success=steps_after_success, delay=delay
    )
    return sim.episode(run)


def _simulator(env: TabletopEnv, policy: Policy, *, record: bool, **kwargs: Any) -> TabletopSimulator:
    # A policy that reads only the simulator state (the expert) needs no images unless they are recorded.
    render = record or getattr(policy, "uses_images", True)
    return TabletopSimulator(env, record=record, render=render, **kwargs)


class TabletopSimulators:
    """A rollout worker's one environment of `split`; job (family, seed) is `sample_episode`'s episode."""

    def __init__(
        self, split: str, env_kwargs: Mapping[str, Any], annotate: bool, perturb: float = 0.0
    ) -> None:
        self._split, self._annotate, self._perturb = split, annotate, perturb
        self._env = TabletopEnv(split=split, **env_kwargs)

    def open(self, job: tuple[str, int], policy: Policy, record: bool) -> TabletopSimulator:
        family, seed = job
        spec = sample_episode(seed, family=family, split=self._split)
        return _simulator(
            self._env, policy, spec=spec, record=record, annotate=self._annotate, perturb=self._perturb
        )

    def close(self) -> None:
        self._env.close()


def rollout_many(
    jobs: Iterable[tuple[str, int]],
    policy_factory: Callable[[str], Policy],
    *,
    split: str = "train",
    workers: int | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    steps_per_chunk: int = 1,
    steps_after_success: int = 0,
    delay: int = 0,
    record: bool | Collection[tuple[str, int]] = True,
    annotate: bool = False,
    perturb: float = 0.0,
) -> Iterator[Episode]:
    """Run (family, seed) jobs of `split` and yield their episodes in job order (deterministic datasets).
    ``record`` is a bool or the set of jobs whose frames to keep (e.g. the few an evaluation turns into
    videos).

    `policy_factory` maps a family to a policy (``ExpertPolicy``, or
    `vlaflow.sim.evaluate.CheckpointPolicyFactory`); it is called once per family and process.
    ``workers > 1`` uses a "spawn" process pool (see `vlaflow.sim.rollout.rollout_many`), so the factory
    must be picklable and the calling script needs an ``if __name__ == "__main__":`` guard;
    ``workers <= 1`` runs here; None uses every CPU. `env_kwargs` go to `TabletopEnv` (cameras,
    resolution). An episode depends only on its (family, seed, split), not on which worker ran it.
    ``perturb``: executed actions drift by that much (module docstring); episodes record the policy's.
    """
    jobs = list(jobs)
    for family, seed in jobs:
        if family not in FAMILIES or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"a job is (family in {FAMILIES}, seed >= 0), got {(family, seed)!r}")
    return engine.rollout_many(
        jobs,
        functools.partial(TabletopSimulators, split, dict(env_kwargs or {}), annotate, perturb),
        policy_factory,
        workers=workers,
        record=record,
        ordered=True,
        steps_per_chunk=steps_per_chunk,
        steps_after_success=steps_after_success,
        delay=delay,
    )
