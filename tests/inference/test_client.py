"""The robot side: the policy client, the action-chunk broker and the rate-limited loop."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from serve_helpers import observation, stub_server

from vlaflow.bench.serve import TINY_ACTION_DIM, TINY_HORIZON
from vlaflow.client import ActionChunkBroker, PolicyClient, PolicyServerError, run_loop


def test_client_infers_reports_errors_and_presents_its_token():
    server, model = stub_server(token="t0k")
    with server.in_background() as port, PolicyClient("127.0.0.1", port, token="t0k") as client:
        assert client.get_server_metadata() == server.metadata
        reply = client.infer(observation())
        assert reply["actions"].shape == (TINY_HORIZON, TINY_ACTION_DIM)
        with pytest.raises(PolicyServerError, match=r"observation\.state: contains NaN") as bad:
            client.infer({**observation(), "observation.state": np.full(8, np.nan)})
        assert bad.value.field == "observation.state" and "finite" in bad.value.expected
        assert client.infer(observation())["actions"].shape == (TINY_HORIZON, TINY_ACTION_DIM)
    assert model.batches == [1, 1]


def test_client_gives_up_waiting_for_an_absent_server():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        PolicyClient("127.0.0.1", port, wait_s=0.2)


class CountingPolicy:
    """Chunks whose k-th action is `calls * 100 + k`."""

    def __init__(self, horizon: int):
        self.horizon, self.calls, self.resets = horizon, 0, 0

    def infer(self, obs):
        self.calls += 1
        actions = self.calls * 100 + np.arange(self.horizon, dtype=np.float32)[:, None] * np.ones((1, 2))
        return {"actions": actions, "server_timing": {"infer_ms": 1.0}}

    def reset(self):
        self.resets += 1


def test_broker_serves_one_action_per_step_and_replans_every_k_steps():
    inner = CountingPolicy(horizon=10)
    broker = ActionChunkBroker(inner, replan_every=3)
    steps = [broker.infer({}) for _ in range(7)]
    assert [s["actions"][0] for s in steps] == [100, 101, 102, 200, 201, 202, 300]
    assert steps[0]["actions"].shape == (2,) and steps[0]["server_timing"] == {"infer_ms": 1.0}
    assert inner.calls == 3
    broker.reset()
    assert broker.infer({})["actions"][0] == 400 and inner.resets == 1
    short = ActionChunkBroker(CountingPolicy(horizon=2), replan_every=5)  # replans when the chunk runs out
    assert [short.infer({})["actions"][0] for _ in range(5)] == [100, 101, 200, 201, 300]
    with pytest.raises(ValueError, match="replan_every"):
        ActionChunkBroker(inner, replan_every=0)


class FakeClock:
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def test_run_loop_keeps_the_rate_and_does_not_burst_after_a_stall():
    clock = FakeClock()
    durations = iter([0.02, 0.02, 0.35, 0.02, 0.02])  # the third step stalls for 3.5 periods
    actions = []

    def act(action):
        actions.append(action)
        clock.now += next(durations)

    run_loop(CountingPolicy(horizon=4), dict, act, hz=10, steps=5, clock=clock, sleep=clock.sleep)
    assert len(actions) == 5
    assert clock.sleeps == [0.08, 0.08, 0.08, 0.08]  # no sleep after the stall, then the rate again
