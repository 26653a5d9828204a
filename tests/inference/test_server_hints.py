"""What `vlaflow serve` accepts beyond cameras, state and prompt: real-time chunking's hints
(`prev_actions`, `inference_delay`), checked with error replies that keep the connection and giving
the in-process policy's own actions; oracle subtasks; hierarchical subtasks in the reply, kept per
connection (session) whatever batches the connections' requests share."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from serve_helpers import NUM_STEPS, WINDOW_MS, connect, infer, observation, policy_observation

from vlaflow import cli
from vlaflow.bench.serve import TINY_ACTION_DIM, TINY_HORIZON
from vlaflow.inference import DELAY_KEY, PREV_ACTIONS_KEY, SESSION_KEY, SUBTASK_KEY
from vlaflow.inference.policy import Policy
from vlaflow.inference.protocol import pack, unpack
from vlaflow.inference.rtc import RTCConfig
from vlaflow.inference.schema import RequestError, ServingSpec
from vlaflow.inference.server import ServerConfig, server_for_policy
from vlaflow.models.vla import Generation
from vlaflow.pretrained import read_config

DELAY = 2


def serve(checkpoint, policy: Policy, **config):
    config = ServerConfig(**{"port": 0, "batch_window_ms": WINDOW_MS, **config})
    return server_for_policy(policy, read_config(checkpoint)["metadata"], config=config)


def previous_chunk(policy: Policy, request: dict, executed: int = 4) -> np.ndarray:
    """The actions of a chunk for `request` not yet executed after `executed` steps (robot units)."""
    return policy(policy_observation(request))[executed:]


@pytest.fixture(scope="module")
def rtc_served(checkpoint) -> Iterator[tuple[str, Policy]]:
    policy = Policy.load(checkpoint, num_steps=NUM_STEPS, rtc=RTCConfig())
    with serve(checkpoint, policy).in_background() as port:
        yield f"ws://127.0.0.1:{port}", policy


def test_rtc_hints_through_the_server_give_the_in_process_policys_actions(checkpoint, rtc_served):
    uri, served_policy = rtc_served
    reference = Policy.load(checkpoint, num_steps=NUM_STEPS, rtc=RTCConfig())
    plain, hinted = observation(seed=1), observation(seed=2)
    prev = previous_chunk(Policy.load(checkpoint, num_steps=NUM_STEPS, seed=5), hinted)
    expected = [
        reference.infer_batch([policy_observation(plain)])[0],
        reference.infer_batch([policy_observation(hinted, prev_actions=prev, inference_delay=DELAY)])[0],
    ]
    served_policy.generator.manual_seed(0)  # as the reference's
    with connect(uri) as connection:
        metadata = unpack(connection.recv())
        replies = [
            infer(connection, plain),
            infer(connection, {**hinted, PREV_ACTIONS_KEY: prev, DELAY_KEY: DELAY}),
        ]
    assert metadata["rtc"] == {"beta": RTCConfig().beta} and metadata["mode"] == "implicit"
    assert metadata["optional_observation"][PREV_ACTIONS_KEY] == {
        "dtype": "float32",
        "shape": [None, TINY_ACTION_DIM],
    }
    assert SUBTASK_KEY not in metadata["observation"] and SUBTASK_KEY not in replies[1]
    for reply, actions in zip(replies, expected, strict=True):
        np.testing.assert_allclose(reply["actions"], actions, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(replies[1]["actions"][:DELAY], prev[:DELAY], rtol=1e-4, atol=1e-4)  # frozen
    unguided = Policy.load(checkpoint, num_steps=NUM_STEPS, rtc=RTCConfig())  # the same noise, no hints
    unguided.infer_batch([policy_observation(plain)])
    assert not np.allclose(
        replies[1]["actions"], unguided.infer_batch([policy_observation(hinted)])[0], atol=1e-3
    )


def test_a_mixed_batch_guides_only_the_hinted_observations(checkpoint):
    """Rows without prev_actions get zero guidance: the same chunk as in a batch without hints."""
    policy = Policy.load(checkpoint, num_steps=NUM_STEPS, rtc=RTCConfig())
    a, b = observation(seed=1), observation(seed=2)
    prev_a = previous_chunk(Policy.load(checkpoint, num_steps=NUM_STEPS, seed=5), a)
    prev_b = previous_chunk(Policy.load(checkpoint, num_steps=NUM_STEPS, seed=6), b, executed=7)
    hinted_a = policy_observation(a, prev_actions=prev_a, inference_delay=DELAY)
    hinted_b = policy_observation(b, prev_actions=prev_b, inference_delay=1)

    def batch(*observations):
        policy.generator.manual_seed(0)  # the same noise for every batch
        return policy.infer_batch(list(observations))

    mixed = batch(hinted_a, policy_observation(b))
    np.testing.assert_allclose(mixed[0], batch(hinted_a, hinted_b)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        mixed[1], batch(policy_observation(a), policy_observation(b))[1], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(mixed[0, :DELAY], prev_a[:DELAY], rtol=1e-4, atol=1e-4)


def _rtc_bad_requests() -> list[tuple[dict, str, str]]:
    """(hints, field the error names, text its `expected` holds)."""
    good = np.zeros((6, TINY_ACTION_DIM), np.float32)
    nan = good.copy()
    nan[2, 3] = np.nan
    shape = f"(L, {TINY_ACTION_DIM}) (L, 1 <= L <= {TINY_HORIZON})"
    return [
        ({PREV_ACTIONS_KEY: np.zeros((6, TINY_ACTION_DIM + 1), np.float32)}, PREV_ACTIONS_KEY, shape),
        (
            {PREV_ACTIONS_KEY: np.zeros((TINY_HORIZON + 1, TINY_ACTION_DIM), np.float32)},
            PREV_ACTIONS_KEY,
            shape,
        ),
        ({PREV_ACTIONS_KEY: np.zeros((0, TINY_ACTION_DIM), np.float32)}, PREV_ACTIONS_KEY, shape),
        ({PREV_ACTIONS_KEY: np.zeros(TINY_ACTION_DIM, np.float32)}, PREV_ACTIONS_KEY, shape),
        ({PREV_ACTIONS_KEY: "actions"}, PREV_ACTIONS_KEY, shape),
        ({PREV_ACTIONS_KEY: nan}, PREV_ACTIONS_KEY, "finite"),
        ({PREV_ACTIONS_KEY: good, DELAY_KEY: -1}, DELAY_KEY, f"d < {TINY_HORIZON}"),
        ({PREV_ACTIONS_KEY: good, DELAY_KEY: 7}, DELAY_KEY, "d <= 6 (the rows of prev_actions)"),
        (
            {PREV_ACTIONS_KEY: np.zeros((TINY_HORIZON, TINY_ACTION_DIM)), DELAY_KEY: TINY_HORIZON},
            DELAY_KEY,
            "d <",
        ),
        ({PREV_ACTIONS_KEY: good, DELAY_KEY: 1.5}, DELAY_KEY, "an int"),
        ({PREV_ACTIONS_KEY: good, DELAY_KEY: True}, DELAY_KEY, "an int"),
        ({PREV_ACTIONS_KEY: good, DELAY_KEY: "2"}, DELAY_KEY, "an int"),
        ({DELAY_KEY: 2}, DELAY_KEY, "prev_actions alongside it"),
    ]


def test_bad_rtc_hints_get_error_replies_naming_the_field_and_the_connection_stays_open(rtc_served):
    uri, _ = rtc_served
    with connect(uri) as connection:
        connection.recv()
        for hints, field, expected in _rtc_bad_requests():
            reply = infer(connection, {**observation(), **hints})
            assert set(reply) == {"error"}, (hints, reply)
            error = reply["error"]
            assert error["field"] == field and error["message"] and expected in error["expected"], error
        good = {PREV_ACTIONS_KEY: [[0.0] * TINY_ACTION_DIM] * 3, DELAY_KEY: np.int64(3)}  # lists, numpy ints
        assert infer(connection, {**observation(), **good})["actions"].shape == (
            TINY_HORIZON,
            TINY_ACTION_DIM,
        )


def test_hints_may_come_under_other_names_through_the_key_map():
    spec = ServingSpec(
        cameras=("cam",),
        state_key="state",
        state_dim=2,
        key_map={"rtc/prev": PREV_ACTIONS_KEY, "rtc/delay": DELAY_KEY},
        action_dim=3,
        action_horizon=4,
    )
    request = {"cam": np.zeros((4, 4, 3), np.uint8), "state": [0.0, 1.0], "prompt": "go"}
    parsed = spec.parse({**request, "rtc": {"prev": np.ones((2, 3)), "delay": 1}}).observation
    assert parsed[PREV_ACTIONS_KEY].dtype == np.float32 and parsed[DELAY_KEY] == 1
    assert spec.optional_spec() == {
        "rtc/prev": {"dtype": "float32", "shape": [None, 3]},
        "rtc/delay": {"dtype": "int", "shape": []},
    }
    with pytest.raises(RequestError) as error:
        spec.parse({**request, "rtc/delay": 1})
    assert error.value.field == "rtc/delay" and "rtc/prev alongside it" in error.value.expected
    with pytest.raises(RequestError) as error:
        spec.parse({**request, "rtc/prev": np.ones((2, 3)), "rtc/delay": 3})
    assert (
        error.value.field == "rtc/delay"
        and error.value.expected == "an int d >= 0 with d < 4 and d <= 2 (the rows of rtc/prev)"
    )


def test_oracle_mode_needs_a_subtask_in_every_request_and_replies_with_it(checkpoint):
    policy = Policy.load(checkpoint, num_steps=NUM_STEPS, mode="oracle")
    with serve(checkpoint, policy).in_background() as port, connect(f"ws://127.0.0.1:{port}") as connection:
        metadata = unpack(connection.recv())
        assert metadata["mode"] == "oracle" and metadata["observation"][SUBTASK_KEY]["dtype"] == "str"
        for bad in ({}, {SUBTASK_KEY: "  "}, {SUBTASK_KEY: 3}):
            error = infer(connection, {**observation(), **bad})["error"]
            assert error["field"] == SUBTASK_KEY and "oracle mode" in error["expected"], error
        reply = infer(connection, {**observation(), SUBTASK_KEY: "open the drawer"})
        assert reply["subtask"] == "open the drawer" and reply["actions"].shape == (
            TINY_HORIZON,
            TINY_ACTION_DIM,
        )


def decode_by_row(policy: Policy, monkeypatch) -> list[int]:
    """Makes the policy's decoding answer "s<call> r<row>" (the batch it decodes: one call per list
    entry)."""
    tokenizer, calls = policy.tokenizer, []

    def generate(obs, *, max_new_tokens, eos_id, forced=()):
        calls.append(obs.batch_size)
        rows = [tokenizer.encode(f" s{len(calls)} r{row}")[:max_new_tokens] for row in range(obs.batch_size)]
        width = max(map(len, rows))
        tokens = torch.tensor([row + [0] * (width - len(row)) for row in rows])
        return Generation(tokens=tokens, lengths=torch.tensor([len(row) for row in rows]))

    monkeypatch.setattr(policy.decoder, "generate", generate)
    return calls


def test_the_policy_keeps_each_sessions_subtask_whatever_the_batch_order(checkpoint, monkeypatch):
    policy = Policy.load(checkpoint, num_steps=NUM_STEPS, mode="hierarchical", subtask_every=2)
    calls = decode_by_row(policy, monkeypatch)

    def subtasks(*sessions):
        batch = [policy_observation(observation(seed=1), **{SESSION_KEY: s}) for s in sessions]
        return [info[SUBTASK_KEY] for info in policy.infer_batch(batch, return_info=True)[1]]

    assert subtasks("a", "b") == ["s1 r0", "s1 r1"]  # both new: one decoding of the whole batch
    assert subtasks("b", "a") == ["s1 r1", "s1 r0"]  # each keeps its own, in any order
    assert subtasks("a") == ["s2 r0"]  # a's is 2 chunks old: decoded again
    assert subtasks("b", "a") == ["s3 r0", "s2 r0"]  # only b's is stale: b alone is decoded
    policy.forget("a")  # a new episode for a: decoded anew
    assert subtasks("b", "a") == ["s3 r0", "s4 r0"]
    assert calls == [2, 1, 1, 1]


def test_hierarchical_server_replies_with_each_connections_own_subtask(checkpoint, monkeypatch):
    """Two robots whose requests share batches in either order, a reset marker and a disconnect."""
    policy = Policy.load(checkpoint, num_steps=NUM_STEPS, mode="hierarchical", subtask_every=2)
    calls = decode_by_row(policy, monkeypatch)
    server = serve(checkpoint, policy)

    def batch(first, second=None):
        """Replies to requests of `first` and then `second` sharing one batch (in that order)."""
        first.send(pack(observation(seed=1)))
        if second is None:
            return [unpack(first.recv())[SUBTASK_KEY]]
        time.sleep(0.3)  # the first request is waiting for the second client's
        second.send(pack(observation(seed=2)))
        return [unpack(c.recv())[SUBTASK_KEY] for c in (first, second)]

    with server.in_background() as port, connect(f"ws://127.0.0.1:{port}") as a:
        a.recv()
        with connect(f"ws://127.0.0.1:{port}") as b:
            b.recv()
            assert batch(a, b) == ["s1 r0", "s1 r1"]
            assert batch(b, a) == ["s1 r1", "s1 r0"]
            assert batch(b) == ["s2 r0"]
            assert batch(a, b) == ["s3 r0", "s2 r0"]
            assert infer(a, {"__ctrl__": "reset"}) == {"__ack__": "reset"}  # a new episode: a decodes anew
            assert batch(b, a) == ["s4 r0", "s4 r1"]  # both stale: decoded together
        deadline = time.monotonic() + 10
        while len(policy._subtasks) > 1 and time.monotonic() < deadline:  # b is gone: forgotten
            time.sleep(0.05)
        assert len(policy._subtasks) == 1
    assert calls == [2, 1, 1, 2] and server.stats.batch_sizes == {2: 4, 1: 1}


def test_cli_serve_builds_rtc_and_mode_from_its_options(monkeypatch, checkpoint, capsys):
    built = {}
    monkeypatch.setattr(
        "vlaflow.inference.server.PolicyServer.run", lambda self: built.update(metadata=self.metadata)
    )
    args = ["serve", "--checkpoint", str(checkpoint), "--rtc", "--rtc-beta", "5", "--mode", "hierarchical"]
    assert cli.main([*args, "--subtask-every", "3"]) == 0
    metadata = built["metadata"]
    assert (
        metadata["rtc"] == {"beta": 5.0}
        and metadata["mode"] == "hierarchical"
        and metadata["subtask_every"] == 3
    )
    assert cli.main(["serve", "--checkpoint", str(checkpoint), "--rtc-beta", "5"]) == 2
    assert "--rtc-beta is a setting of --rtc" in capsys.readouterr().err
