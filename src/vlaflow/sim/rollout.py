"""One rollout engine for every simulator: the chunked control loop, the policy-output check, the
episode-ending rule, simulated inference latency and the (parallel) worker pool.

A simulator joins through a small adapter (`Simulator`): reset, step, clip an action, keep its own
per-step record (images, prompts, subtasks, ...) and build its episode type from the engine's
`Steps`. A policy is any callable ``obs -> output`` (optionally with ``reset()``): an in-process
`vlaflow.inference.policy.Policy` behind an observation adapter, a scripted expert, or a policy
server's client (its reply dict, with "actions", is a valid output). `output` is an action (A,), a
chunk (T, A), or a dict ``{"actions": (T, A), "subtask": str}``.

Chunks execute ``steps_per_chunk`` (s) actions at a time. With ``delay=d > 0`` inference takes d control
steps and the simulator does not wait for it (asynchronous execution, as on a real robot): the next
inference starts from the observation at index s of the current chunk, the d actions after it are
executed while the policy computes, and the new chunk is executed from its index d on. From the second
inference on, the policy's observation also carries ``prev_actions`` (the current chunk from index s:
the actions not yet executed at that time, robot units) and ``inference_delay`` (d), which real-time
chunking (`vlaflow.inference.rtc`) uses (a policy server's client forwards them to a server that
does RTC, `vlaflow serve --rtc`); other policies ignore them. ``delay=0`` is synchronous
execution (the simulator waits for every chunk), the behaviour of every evaluation so far.

Episodes stop ``steps_after_success`` steps after the first success or at the simulator's step limit.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from vlaflow.inference import DELAY_KEY, PREV_ACTIONS_KEY

Policy = Callable[[dict[str, Any]], Any]
Job = tuple[Hashable, int]
"""(task or family, seed): everything an episode depends on, besides the run's options."""


def check_rollout_options(steps_per_chunk: int, steps_after_success: int, delay: int = 0) -> None:
    if not isinstance(steps_per_chunk, int) or steps_per_chunk < 1:
        raise ValueError(f"steps_per_chunk must be a positive int, got {steps_per_chunk!r}")
    if not isinstance(steps_after_success, int) or steps_after_success < 0:
        raise ValueError(f"steps_after_success must be a non-negative int, got {steps_after_success!r}")
    if not isinstance(delay, int) or not 0 <= delay <= steps_per_chunk:
        raise ValueError(
            f"delay must be an int in [0, steps_per_chunk={steps_per_chunk}] (control steps an inference "
            f"takes), got {delay!r}"
        )


def parse_output(output: Any, action_dim: int) -> tuple[np.ndarray, str | None]:
    """(chunk (T, action_dim) float32, subtask or None) of a policy output; ValueError on bad shapes."""
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
    if chunk.ndim != 2 or chunk.shape[0] < 1 or chunk.shape[1] != action_dim:
        a = action_dim
        raise ValueError(
            f"policy output must have shape ({a},) or (T_chunk, {a}) with T_chunk >= 1 (one action, or a "
            f"chunk: shape ({a},) or (T, {a})), got {chunk.shape}"
        )
    return chunk, subtask


class Simulator(Protocol):
    """What the engine needs of one simulator, opened for one episode."""

    action_dim: int

    def reset(self) -> dict[str, Any]:
        """Start the episode; the first observation."""

    @property
    def max_steps(self) -> int:
        """The episode's step limit (read after `reset`)."""

    def record(self, obs: dict[str, Any], subtask: str | None) -> None:
        """Keep what the episode record holds about `obs`, the observation before the next action."""

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool]:
        """Execute one action: (observation, reward, success flag)."""

    def clip(self, action: np.ndarray) -> np.ndarray:
        """The action as the simulator executes it."""

    def episode(self, steps: Steps) -> Any:
        """The simulator's episode record."""


@dataclass
class Steps:
    """What the engine records of one episode; row t is action t and what it produced."""

    actions: np.ndarray  # (T, A) float32, as executed (clipped)
    rewards: np.ndarray  # (T,) float32
    successes: np.ndarray  # (T,) bool, the success flag after each action
    chunk_starts: np.ndarray  # (K,) int64, steps whose action was the first executed from a new chunk

    @property
    def length(self) -> int:
        return len(self.actions)


def run_episode(
    sim: Simulator,
    policy: Policy,
    *,
    steps_per_chunk: int = 1,
    steps_after_success: int = 0,
    delay: int = 0,
) -> Steps:
    """Run one episode of `sim` with `policy` (see the module docstring for chunking and `delay`).
    A ``reset()`` method on the policy (e.g. to drop queued actions) is called first."""
    check_rollout_options(steps_per_chunk, steps_after_success, delay)
    reset = getattr(policy, "reset", None)
    if callable(reset):
        reset()
    obs = sim.reset()
    end = sim.max_steps  # how many steps the episode runs; set anew at the first success
    actions: list[np.ndarray] = []
    rewards: list[float] = []
    successes: list[bool] = []
    starts: list[int] = []

    def execute(action: np.ndarray, subtask: str | None) -> bool:
        """One control step; True when the episode is over."""
        nonlocal obs, end
        sim.record(obs, subtask)
        obs, reward, success = sim.step(action)
        actions.append(sim.clip(action))
        rewards.append(reward)
        successes.append(success)
        if success and end == sim.max_steps:
            end = min(end, len(actions) + steps_after_success)
        return len(actions) >= end

    chunk, subtask = parse_output(policy(obs), sim.action_dim)
    start = 0  # index of the current chunk's first action to execute
    while True:
        starts.append(len(actions))
        launch = min(steps_per_chunk, len(chunk))  # where the next inference starts
        for action in chunk[start:launch]:
            if execute(action, subtask):
                return _steps(actions, rewards, successes, starts)
        if delay and len(chunk) < launch + delay:
            raise ValueError(
                f"policy chunk of {len(chunk)} actions is too short for steps_per_chunk={steps_per_chunk} "
                f"and delay={delay}: expected at least {launch + delay}"
            )
        request = {**obs, PREV_ACTIONS_KEY: chunk[launch:], DELAY_KEY: delay}
        next_chunk, next_subtask = parse_output(policy(request), sim.action_dim)
        for action in chunk[launch : launch + delay]:  # executed while the policy computes
            if execute(action, subtask):
                return _steps(actions, rewards, successes, starts)
        if delay and len(next_chunk) <= delay:
            raise ValueError(f"policy chunk of {len(next_chunk)} actions: expected more than delay={delay}")
        chunk, subtask, start = next_chunk, next_subtask, delay


def _steps(actions: list, rewards: list, successes: list, starts: list) -> Steps:
    return Steps(
        actions=np.stack(actions).astype(np.float32),
        rewards=np.asarray(rewards, dtype=np.float32),
        successes=np.asarray(successes, dtype=bool),
        chunk_starts=np.asarray(starts, dtype=np.int64),
    )


class Simulators(Protocol):
    """A process's simulators: opens (and may cache) the simulator of each job."""

    def open(self, job: Job, policy: Policy, record: bool) -> Simulator: ...

    def close(self) -> None: ...


class _Worker:
    """Runs jobs with one `Simulators` and one policy per task (or family), built on first use."""

    def __init__(
        self,
        make_simulators: Callable[[], Simulators],
        policy_factory: Callable[[Any], Policy],
        record: bool | frozenset[Job],
        options: Mapping[str, Any],
    ) -> None:
        self._sims = make_simulators()
        self._factory = policy_factory
        self._policies: dict[Any, Policy] = {}
        self._record, self._options = record, dict(options)

    def run(self, job: Job) -> Any:
        key = job[0]
        if key not in self._policies:
            self._policies[key] = self._factory(key)
        policy = self._policies[key]
        record = self._record if isinstance(self._record, bool) else job in self._record
        sim = self._sims.open(job, policy, record)
        return sim.episode(run_episode(sim, policy, **self._options))

    def close(self) -> None:
        """Close the simulators and every policy that holds a resource (e.g. a server connection)."""
        self._sims.close()
        for policy in self._policies.values():
            close = getattr(policy, "close", None)
            if callable(close):
                close()


_worker: _Worker | None = None


def _run_in_worker(args: tuple[Any, ...], job: Job) -> Any:
    """Pool task: the process's worker is built on its first job and kept for the next ones."""
    global _worker
    if _worker is None:
        _worker = _Worker(*args)
    return _worker.run(job)


def rollout_many(
    jobs: Iterable[Job],
    make_simulators: Callable[[], Simulators],
    policy_factory: Callable[[Any], Policy],
    *,
    workers: int | None = None,
    record: bool | Collection[Job] = True,
    ordered: bool = True,
    steps_per_chunk: int = 1,
    steps_after_success: int = 0,
    delay: int = 0,
) -> Iterator[Any]:
    """Run jobs and yield their episodes, in job order (``ordered``: deterministic datasets) or as
    they complete. ``record`` is a bool or the set of jobs whose frames to keep.

    ``workers > 1`` uses a "spawn" process pool (MuJoCo GL contexts are not fork-safe), so
    `make_simulators` and `policy_factory` (key -> policy, called once per key and process) must be
    picklable and the calling script needs an ``if __name__ == "__main__":`` guard; ``workers <= 1``
    runs here; None uses every CPU. An episode depends only on its job, not on which worker ran it.
    """
    jobs = list(jobs)
    check_rollout_options(steps_per_chunk, steps_after_success, delay)
    workers = max(1, min((os.cpu_count() or 1) if workers is None else workers, len(jobs)))
    options = {"steps_per_chunk": steps_per_chunk, "steps_after_success": steps_after_success, "delay": delay}
    args = (
        make_simulators,
        policy_factory,
        record if isinstance(record, bool) else frozenset(record),
        options,
    )
    return _run_jobs(jobs, workers, args, ordered)


def _run_jobs(jobs: list[Job], workers: int, args: tuple[Any, ...], ordered: bool) -> Iterator[Any]:
    if workers == 1:
        worker = _Worker(*args)
        try:
            yield from map(worker.run, jobs)
        finally:
            worker.close()
        return
    task = functools.partial(_run_in_worker, args)
    with mp.get_context("spawn").Pool(workers) as pool:
        if not ordered:
            yield from pool.imap_unordered(task, jobs, chunksize=1)
            return
        # At most 2 jobs per worker in flight: finished episodes (with their frames) never pile up in
        # memory while the caller is busy writing them.
        pending: deque[Any] = deque(pool.apply_async(task, (job,)) for job in jobs[: 2 * workers])
        for job in jobs[2 * workers :]:
            yield pending.popleft().get()
            pending.append(pool.apply_async(task, (job,)))
        while pending:
            yield pending.popleft().get()
