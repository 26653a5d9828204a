"""The shared rollout engine: chunk scheduling with and without simulated inference latency, the hints
real-time chunking reads, and both simulators running through it."""

from __future__ import annotations

import numpy as np
import pytest

from vlaflow.inference import DELAY_KEY, PREV_ACTIONS_KEY
from vlaflow.sim.rollout import Steps, run_episode


class Counter:
    """A 1-d simulator whose observation is the number of steps taken; never succeeds."""

    action_dim = 1

    def __init__(self, max_steps: int) -> None:
        self.max_steps, self.t, self.recorded = max_steps, 0, []

    def reset(self) -> dict:
        self.t = 0
        return {"t": 0}

    def record(self, obs: dict, subtask: str | None) -> None:
        self.recorded.append((obs["t"], subtask))

    def step(self, action: np.ndarray) -> tuple[dict, float, bool]:
        self.t += 1
        return {"t": self.t}, 0.0, False

    def clip(self, action: np.ndarray) -> np.ndarray:
        return action

    def episode(self, steps: Steps) -> Steps:
        return steps


class Numbered:
    """Chunk k holds 100 k + i at index i, with subtask "k"; remembers what it was asked."""

    def __init__(self, horizon: int) -> None:
        self.horizon, self.requests = horizon, []

    def __call__(self, obs: dict) -> dict:
        k = len(self.requests)
        self.requests.append(obs)
        return {"actions": (100 * k + np.arange(self.horizon))[:, None], "subtask": str(k)}


def test_synchronous_chunks_execute_from_their_start():
    sim, policy = Counter(max_steps=10), Numbered(horizon=8)
    steps = run_episode(sim, policy, steps_per_chunk=4)
    np.testing.assert_array_equal(steps.actions[:, 0], [0, 1, 2, 3, 100, 101, 102, 103, 200, 201])
    assert [r["t"] for r in policy.requests] == [0, 4, 8]
    np.testing.assert_array_equal(steps.chunk_starts, [0, 4, 8])
    assert [s for _, s in sim.recorded] == ["0"] * 4 + ["1"] * 4 + ["2"] * 2
    np.testing.assert_array_equal(policy.requests[1][PREV_ACTIONS_KEY][:, 0], [4, 5, 6, 7])
    assert policy.requests[1][DELAY_KEY] == 0


def test_delayed_inference_keeps_the_simulator_running():
    """With delay d the next chunk is asked for at index s of the current one, its d following
    actions run while the policy computes, and the new chunk takes over at its index d."""
    sim, policy = Counter(max_steps=16), Numbered(horizon=8)
    steps = run_episode(sim, policy, steps_per_chunk=4, delay=2)
    expected = [0, 1, 2, 3, 4, 5, 102, 103, 104, 105, 202, 203, 204, 205, 302, 303]
    np.testing.assert_array_equal(steps.actions[:, 0], expected)
    assert [r["t"] for r in policy.requests] == [0, 4, 8, 12]  # one request every s steps
    np.testing.assert_array_equal(steps.chunk_starts, [0, 6, 10, 14])
    np.testing.assert_array_equal(policy.requests[1][PREV_ACTIONS_KEY][:, 0], [4, 5, 6, 7])
    np.testing.assert_array_equal(policy.requests[2][PREV_ACTIONS_KEY][:, 0], [104, 105, 106, 107])
    assert policy.requests[2][DELAY_KEY] == 2
    # the subtask in force changes when the new chunk's actions start, not when it was asked for
    assert [s for _, s in sim.recorded][4:8] == ["0", "0", "1", "1"]


def test_latency_options_are_checked():
    with pytest.raises(ValueError, match=r"delay must be an int in \[0, steps_per_chunk=4\]"):
        run_episode(Counter(5), Numbered(8), steps_per_chunk=4, delay=5)
    with pytest.raises(ValueError, match="too short for steps_per_chunk=4 and delay=3: expected at least 7"):
        run_episode(Counter(20), Numbered(6), steps_per_chunk=4, delay=3)
    with pytest.raises(ValueError, match=r"shape \(1,\) or \(T_chunk, 1\)"):
        run_episode(Counter(5), lambda obs: np.zeros((2, 3)))


class Held:
    """The tabletop expert's first action repeated into a chunk of 6 (its subtask kept)."""

    def __init__(self, expert) -> None:
        self.expert = expert

    def __call__(self, obs: dict) -> dict:
        out = self.expert(obs)
        return {**out, "actions": np.repeat(np.asarray(out["actions"]).reshape(-1, 5)[:1], 6, axis=0)}


def test_both_simulators_run_through_the_engine_with_latency():
    pytest.importorskip("metaworld")
    from vlaflow.sim.metaworld import ExpertPolicy, MetaWorldEnv, rollout
    from vlaflow.sim.tabletop import ExpertPolicy as TabletopExpert
    from vlaflow.sim.tabletop import TabletopEnv
    from vlaflow.sim.tabletop import rollout as tabletop_rollout

    with MetaWorldEnv("reach-v3", seed=0, cameras=(), max_steps=20) as env:
        expert = ExpertPolicy("reach-v3")
        episode = rollout(env, lambda obs: np.tile(expert(obs), (6, 1)), seed=1, steps_per_chunk=3, delay=1)
    np.testing.assert_array_equal(episode.chunk_starts[:3], [0, 4, 7])
    assert episode.length == 20 and len(episode.states) == 20
    env = TabletopEnv(split="train", cameras=("scene",), resolution=32)
    try:
        episode = tabletop_rollout(
            env, Held(TabletopExpert("instruction")), seed=0, steps_per_chunk=3, delay=1
        )
    finally:
        env.close()
    np.testing.assert_array_equal(episode.chunk_starts[:3], [0, 4, 7])
    assert len(episode.subtasks) == episode.length and episode.subtasks[0]
