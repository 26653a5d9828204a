"""`vlaflow serve` as openpi's clients see it: metadata, actions equal to the in-process policy,
health check, tokens, error replies that keep the connection, batching across clients, key maps,
and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request

import msgpack
import numpy as np
import pytest
from serve_helpers import (
    NUM_STEPS,
    STUB_MAX_FRAME,
    connect,
    infer,
    observation,
    policy_observation,
    stub_server,
)
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus

from vlaflow import cli
from vlaflow.bench.serve import TINY_ACTION_DIM, TINY_CAMERAS, TINY_HORIZON, TINY_STATE_DIM
from vlaflow.client import PolicyClient
from vlaflow.inference.protocol import ARRAY_TAG, pack, unpack
from vlaflow.inference.schema import ServingSpec
from vlaflow.inference.server import (
    MAX_CONTROL_BYTES,
    OVERSIZE_FACTOR,
    AuthGuard,
    ServerConfig,
    server_for_policy,
)
from vlaflow.pretrained import read_config


def in_process(policy, request: dict) -> np.ndarray:
    """What the policy itself answers to a request in the dataset's key names."""
    return policy(policy_observation(request))


def test_openpi_client_gets_metadata_and_the_policys_own_actions(served, checkpoint):
    from vlaflow.inference.policy import Policy

    reference = Policy.load(checkpoint, num_steps=NUM_STEPS)
    requests = [observation(seed=1), observation(size=48, seed=2)]
    expected = [in_process(reference, r) for r in requests]  # its generator starts from seed 0
    served.policy.generator.manual_seed(0)  # as does the server's, for this test
    with connect(served.uri) as connection:
        metadata = unpack(connection.recv())
        replies = [infer(connection, r) for r in requests]
    assert metadata["action_dim"] == TINY_ACTION_DIM and metadata["action_horizon"] == TINY_HORIZON
    assert metadata["control_hz"] == 10.0 and metadata["vlaflow_version"]
    assert metadata["observation"]["observation.state"] == {"dtype": "float32", "shape": [TINY_STATE_DIM]}
    assert metadata["observation"]["observation.images.wrist"]["shape"] == [None, None, 3]
    for reply, actions in zip(replies, expected, strict=True):
        assert reply["actions"].shape == (TINY_HORIZON, TINY_ACTION_DIM)
        np.testing.assert_allclose(reply["actions"], actions, rtol=1e-5, atol=1e-6)
        assert reply["policy_timing"]["infer_ms"] > 0 and reply["server_timing"]["batch_size"] == 1
        assert reply["server_timing"]["infer_ms"] >= reply["policy_timing"]["infer_ms"]
    assert "prev_total_ms" not in replies[0]["server_timing"]
    assert replies[1]["server_timing"]["prev_total_ms"] > 0


def test_health_check_answers_200(served):
    with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/healthz", timeout=5) as response:
        assert response.status == 200


def test_concurrent_clients_share_one_batch_when_compatible(served):
    def run_pair(first: dict, second: dict) -> list[dict]:
        replies: list = [None, None]
        with connect(served.uri) as one, connect(served.uri) as two:
            connections = [one, two]
            for c in connections:
                c.recv()

            def ask(i: int, message: dict) -> None:
                replies[i] = infer(connections[i], message)

            threads = [threading.Thread(target=ask, args=(i, m)) for i, m in enumerate((first, second))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        return replies

    served.server.stats.batch_sizes.clear()
    replies = run_pair(observation(seed=3), observation(seed=4))
    assert served.server.stats.batch_sizes == {2: 1}
    assert [r["server_timing"]["batch_size"] for r in replies] == [2, 2]
    assert not np.allclose(replies[0]["actions"], replies[1]["actions"])  # each got its own
    served.server.stats.batch_sizes.clear()
    run_pair(observation(size=32), observation(size=40))  # different image sizes: never batched
    assert served.server.stats.batch_sizes == {1: 2}


def test_libero_style_keys_through_a_key_map(served, checkpoint):
    server = server_for_policy(served.policy, read_config(checkpoint)["metadata"], key_map="libero")
    request = observation()
    libero = {
        "observation/image": request["observation.images.corner2"],
        "observation/wrist_image": request["observation.images.wrist"],
        "observation/state": request["observation.state"],
        "prompt": request["prompt"],
    }
    nested = {"observation": {k.split("/")[1]: v for k, v in libero.items() if "/" in k}, "prompt": "x"}
    with server.in_background() as port, connect(f"ws://127.0.0.1:{port}") as connection:
        metadata = unpack(connection.recv())
        assert set(metadata["observation"]) == set(libero)
        assert infer(connection, libero)["actions"].shape == (TINY_HORIZON, TINY_ACTION_DIM)
        assert infer(connection, nested)["actions"].shape == (TINY_HORIZON, TINY_ACTION_DIM)
        assert infer(connection, request)["actions"].shape == (TINY_HORIZON, TINY_ACTION_DIM)  # own names too
        error = infer(connection, {**libero, "observation.state": request["observation.state"]})["error"]
        assert error["field"] == "observation.state" and "given twice" in error["message"]


def test_key_maps_from_json_from_the_checkpoint_and_wrong_ones():
    cameras, base = dict(TINY_CAMERAS), {"norm_stats": {"tiny": {}}}
    spec = ServingSpec.from_metadata(
        base,
        cameras=cameras,
        state_dim=8,
        key_map='{"cam": "observation.images.corner2", "s": "observation.state"}',
    )
    assert spec.client_name("observation.images.corner2") == "cam" and spec.client_name("prompt") == "prompt"
    stored = {**base, "serving": {"key_map": {"q": "observation.state"}}}
    assert ServingSpec.from_metadata(stored, cameras=cameras, state_dim=8).key_map == {
        "q": "observation.state"
    }
    with pytest.raises(ValueError, match="targets must be among"):
        ServingSpec.from_metadata(base, cameras=cameras, state_dim=8, key_map={"a": "observation.images.top"})
    with pytest.raises(ValueError, match="expected a JSON object"):
        ServingSpec.from_metadata(base, cameras=cameras, state_dim=8, key_map="liberoo")


def test_token_is_required_and_accepted_in_every_form():
    server, _ = stub_server(token="s3cret")
    with server.in_background() as port:
        uri = f"ws://127.0.0.1:{port}"
        for headers, path in [(None, ""), ({"Authorization": "Bearer wrong"}, ""), (None, "/?token=nope")]:
            with pytest.raises(InvalidStatus) as refused:
                connect(uri + path, additional_headers=headers)
            assert refused.value.response.status_code == 401
        for headers, path in [
            ({"Authorization": "Bearer s3cret"}, ""),
            ({"Authorization": "Api-Key s3cret"}, ""),  # openpi's client sends its api_key so
            (None, "/?token=s3cret"),
        ]:
            with connect(uri + path, additional_headers=headers) as connection:
                assert unpack(connection.recv()) == server.metadata
                assert infer(connection, observation())["actions"].shape == (TINY_HORIZON, TINY_ACTION_DIM)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200  # health checks need no token


def _bad_requests() -> list[tuple[object, str]]:
    """(frame or message, the field its error reply must name)."""
    good = observation()
    state, image = "observation.state", "observation.images.corner2"
    rng = np.random.default_rng(0)
    good_frame = pack(good)
    nan_state = good[state].copy()
    nan_state[2] = np.nan
    cases: list[tuple[object, str]] = [
        (b"", "frame"),
        (b"\xc1\x00", "frame"),
        (bytes(rng.integers(0, 256, 300, dtype=np.uint8)), "frame"),
        (pack([1, 2, 3]), "frame"),
        (pack("just a string"), "frame"),
        (pack(None), "frame"),
        (msgpack.packb(msgpack.ExtType(7, b"x")), "frame"),
        (msgpack.packb({b"prompt": "bytes key"}), "frame"),
        (b"\x81\xa1a" * 2000 + b"\xc0", "frame"),  # maps nested 2000 deep
        (
            msgpack.packb({image: {ARRAY_TAG: True, b"data": bytes(8), b"dtype": "|O", b"shape": [1]}}),
            "frame",
        ),
        (
            msgpack.packb({image: {ARRAY_TAG: True, b"data": bytes(5), b"dtype": "|u1", b"shape": [9]}}),
            "frame",
        ),
        ("a text frame", "frame"),
        (bytes(STUB_MAX_FRAME + 1), "frame"),
        ({**good, state: nan_state}, state),
        ({**good, state: np.full(TINY_STATE_DIM, np.inf)}, state),
        ({**good, state: np.full(TINY_STATE_DIM, 1e39)}, state),  # finite float64, inf as float32
        ({**good, state: [1e39] * TINY_STATE_DIM}, state),
        ({**good, image: np.zeros((1, 200, 3), np.uint8)}, image),  # 1 x 200: nothing left once resized
        ({**good, image: np.zeros((90, 10, 3), np.uint8)}, image),
        ({**good, state: good[state][:-1]}, state),
        ({**good, state: good[state][None]}, state),
        ({**good, state: np.array(["a"] * TINY_STATE_DIM)}, state),
        ({**good, state: [[1.0], [2.0, 3.0]]}, state),
        ({**good, state: "1,2,3"}, state),
        ({**good, image: good[image].astype(np.float32)}, image),
        ({**good, image: good[image][..., 0]}, image),
        ({**good, image: np.moveaxis(good[image], -1, 0)}, image),  # CHW
        ({**good, image: np.zeros((0, 4, 3), np.uint8)}, image),
        ({**good, image: "not an image"}, image),
        ({**good, "prompt": 42}, "prompt"),
        ({**good, "prompt": b"bytes"}, "prompt"),
        ({**good, "prompt": np.array(["text"])}, "prompt"),
    ]
    cases += [({k: v for k, v in good.items() if k != missing}, missing) for missing in good]
    cuts = sorted(rng.choice(len(good_frame) - 1, 12, replace=False))
    cases += [(good_frame[:cut], "frame") for cut in cuts]  # truncated frames
    return cases


def test_every_bad_request_gets_an_error_reply_and_the_connection_and_server_stay_up():
    server, _ = stub_server()
    with server.in_background() as port, connect(f"ws://127.0.0.1:{port}") as connection:
        connection.recv()
        for message, field in _bad_requests():
            connection.send(message if isinstance(message, str | bytes) else pack(message))
            reply = unpack(connection.recv())
            assert set(reply) == {"error"}, (message if isinstance(message, str) else field, reply)
            error = reply["error"]
            assert error["field"] == field and error["message"] and error["expected"], error
        assert "actions" in infer(connection, observation())  # the same connection still works
        assert infer(connection, {"__ctrl__": "episode_start"}) == {"__ack__": "episode_start"}  # openpi's
        assert server.stats.replies == 1 and sum(server.stats.errors.values()) == len(_bad_requests())
        connection.send(bytes(STUB_MAX_FRAME * OVERSIZE_FACTOR + 1))  # too big to even read
        with pytest.raises(ConnectionClosedError) as closed:
            connection.recv()
        assert closed.value.rcvd.code == 1009
        with connect(f"ws://127.0.0.1:{port}") as fresh:  # and so does a new one
            fresh.recv()
            assert "actions" in infer(fresh, observation())


def test_an_inference_failure_is_an_error_reply_too():
    server, model = stub_server()
    with server.in_background() as port, connect(f"ws://127.0.0.1:{port}") as connection:
        connection.recv()
        model.fail_next = True
        error = infer(connection, observation())["error"]
        assert error["field"] is None and "out of memory" in error["message"]
        assert "actions" in infer(connection, observation())
        model.nan_next = True  # non-finite actions are never sent as a success
        error = infer(connection, observation())["error"]
        assert error["field"] is None and "non-finite actions" in error["message"]
        assert np.isfinite(infer(connection, observation())["actions"]).all()


def _reply(connection, frame: bytes) -> dict:
    connection.send(frame)
    return unpack(connection.recv())


def test_a_decoding_bomb_is_refused_quickly_by_its_structure():
    """Millions of empty containers in one frame, inside the size limit: refused from the type
    headers, before anything is built (the decoder would take seconds and gigabytes)."""
    count = 4 * STUB_MAX_FRAME
    server, _ = stub_server(max_frame_bytes=count + 8)
    with server.in_background() as port, connect(f"ws://127.0.0.1:{port}") as connection:
        connection.recv()
        for empty in (b"\x90", b"\x80"):
            error = _reply(connection, b"\xdd" + count.to_bytes(4, "big") + empty * count)["error"]
            assert error["field"] == "frame" and "more than 10000 objects" in error["message"]
        error = _reply(connection, b"\x91" * 100_000 + b"\xc0")["error"]
        assert "nesting deeper than 64 levels" in error["message"]
        assert "actions" in infer(connection, observation())


def test_cli_serves_with_a_token_from_the_environment_and_stops_on_sigterm(checkpoint, monkeypatch, caplog):
    """`vlaflow serve` in this process's main thread; a robot thread waits for it, is refused
    without the token, gets actions with it, then sends this process SIGTERM."""
    monkeypatch.setenv("VLAFLOW_SERVER_TOKEN", "tok")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outcome: dict = {}

    def robot() -> None:
        try:
            with pytest.raises(InvalidStatus):
                PolicyClient("127.0.0.1", port, wait_s=60)  # retries until the server is up
            outcome["connected"] = True
            with PolicyClient("127.0.0.1", port, token="tok") as client:
                outcome["shape"] = client.infer(observation(size=64))["actions"].shape
        except BaseException as error:
            outcome["error"] = error
        finally:
            if outcome.get("connected"):  # the server is up, so its SIGTERM handler is installed
                os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=robot)
    thread.start()
    with caplog.at_level(logging.INFO):
        code = cli.main(["serve", "--checkpoint", str(checkpoint), "--port", str(port), "--num-steps", "1"])
    thread.join()
    assert code == 0 and "error" not in outcome, outcome
    assert outcome["shape"] == (TINY_HORIZON, TINY_ACTION_DIM)
    assert "token required" in caplog.text and "refused" in caplog.text
    assert "status=ok batch=1" in caplog.text and "stopped after 1 replies" in caplog.text


def test_an_empty_token_is_refused_not_taken_for_no_token(checkpoint, monkeypatch, capsys):
    with pytest.raises(ValueError, match="empty token"):
        ServerConfig(token="")
    assert cli.main(["serve", "--checkpoint", str(checkpoint), "--token", ""]) == 2
    monkeypatch.setenv("VLAFLOW_SERVER_TOKEN", " ")
    assert cli.main(["serve", "--checkpoint", str(checkpoint)]) == 2
    assert capsys.readouterr().err.count("empty token") == 2


def test_auth_guard_blocks_an_address_after_repeated_failures_until_the_window_passes():
    now = [0.0]
    guard = AuthGuard(max_failures=3, window_s=60.0, clock=lambda: now[0])
    assert [guard.fail("1.2.3.4") for _ in range(2)] == [1, 2] and guard.blocked_for("1.2.3.4") == 0
    now[0] = 61.0  # old failures expire
    assert guard.fail("1.2.3.4") == 1
    assert [guard.fail("1.2.3.4") for _ in range(2)] == [2, 3]
    assert guard.blocked_for("1.2.3.4") == 60.0 and guard.blocked_for("5.6.7.8") == 0
    now[0] = 100.0
    assert guard.blocked_for("1.2.3.4") == 21.0
    now[0] = 121.5
    assert guard.blocked_for("1.2.3.4") == 0


def test_failed_token_attempts_are_throttled_and_logged_once_per_burst(caplog):
    server, _ = stub_server(token="s3cret", max_auth_failures=3)
    with caplog.at_level(logging.WARNING), server.in_background() as port:
        uri = f"ws://127.0.0.1:{port}"
        for _ in range(3):
            with pytest.raises(InvalidStatus) as refused:
                connect(uri + "/?token=guess")
            assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as refused:  # even the right token, until the window passes
            connect(uri + "/?token=s3cret")
        assert refused.value.response.status_code == 429 and b"retry in" in refused.value.response.body
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "refusing 127.0.0.1" in warnings[1], warnings


def test_connections_beyond_the_limit_get_503_and_a_freed_slot_is_reused():
    server, _ = stub_server(max_connections=2)
    with server.in_background() as port:
        uri = f"ws://127.0.0.1:{port}"
        with connect(uri) as first, connect(uri) as second:
            first.recv(), second.recv()
            with pytest.raises(InvalidStatus) as refused:
                connect(uri)
            assert refused.value.response.status_code == 503
            first.close()
            for _ in range(200):  # the server notices the close on its own loop
                if server.stats.open_connections < 2:
                    break
                threading.Event().wait(0.05)
            with connect(uri) as third:
                third.recv()
                assert "actions" in infer(third, observation())


def test_a_silent_connection_is_closed_after_the_idle_timeout():
    server, _ = stub_server(idle_timeout_s=0.2)
    with server.in_background() as port, connect(f"ws://127.0.0.1:{port}") as connection:
        connection.recv()
        with pytest.raises(ConnectionClosedOK) as closed:
            connection.recv(timeout=30)
        assert closed.value.rcvd.code == 1000 and "idle for 0.2 s" in closed.value.rcvd.reason


def test_only_short_control_markers_are_echoed():
    server, _ = stub_server()
    with server.in_background() as port, connect(f"ws://127.0.0.1:{port}") as connection:
        connection.recv()
        error = infer(connection, {"__ctrl__": "x" * (MAX_CONTROL_BYTES + 1)})["error"]
        assert error["field"] == "__ctrl__" and f"at most {MAX_CONTROL_BYTES} bytes" in error["expected"]
        assert infer(connection, {"__ctrl__": "episode_start"}) == {"__ack__": "episode_start"}


def test_a_client_that_does_not_read_its_reply_is_dropped():
    class Unread:
        """A connection whose send never completes (its reader never reads)."""

        def __init__(self):
            self.transport = self
            self.aborted = False

        async def send(self, frame):
            await asyncio.Event().wait()

        def abort(self):
            self.aborted = True

    server, _ = stub_server(send_timeout_s=0.05)
    connection = Unread()
    with pytest.raises(Exception, match=r"did not read its reply within 0\.05 s"):
        asyncio.run(server._send(connection, b"reply"))
    assert connection.aborted


def test_a_stop_delivers_the_reply_in_progress_and_refuses_new_requests():
    server, model = stub_server()
    model.gate = threading.Event()
    background = server.in_background()
    uri = f"ws://127.0.0.1:{background.__enter__()}"
    with connect(uri) as busy, connect(uri) as other:
        busy.recv(), other.recv()
        busy.send(pack(observation()))
        assert model.entered.wait(30)
        stopper = threading.Thread(target=background.__exit__, args=(None, None, None))
        stopper.start()
        for _ in range(600):
            if server._stopping:
                break
            threading.Event().wait(0.05)
        error = infer(other, observation())["error"]  # a new request while stopping
        assert error["field"] is None and "shutting down" in error["message"]
        model.gate.set()
        assert "actions" in unpack(busy.recv(timeout=30))  # computed during the stop, and delivered
        with pytest.raises(ConnectionClosedOK) as closed:
            busy.recv(timeout=30)
        assert closed.value.rcvd.code == 1001
        stopper.join()
    assert server.stats.replies == 1


_STUCK_SERVER = """
import logging, sys, threading
logging.basicConfig(level=logging.INFO)
sys.path.insert(0, {helpers!r})
from serve_helpers import stub_server
server, model = stub_server(port={port})
model.gate = threading.Event()  # inference never finishes: a hung model
threading.Thread(target=lambda: (model.entered.wait(), print("inference started", flush=True))).start()
server.run()
"""


def test_a_second_sigterm_exits_at_once_even_with_inference_hung():
    """The first SIGTERM waits for the hung inference (it would wait forever); the second exits."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = _STUCK_SERVER.format(helpers=os.path.dirname(__file__), port=port)
    server = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        for _ in range(600):
            try:
                with connect(f"ws://127.0.0.1:{port}") as connection:
                    break
            except OSError:
                threading.Event().wait(0.1)
        with connect(f"ws://127.0.0.1:{port}") as connection:
            connection.recv()
            connection.send(pack(observation()))
            for line in server.stdout:  # the log so far, then the model's marker
                if "inference started" in line:
                    break
            server.send_signal(signal.SIGTERM)
            for line in server.stdout:
                if "stopping: answering" in line:
                    break
            server.send_signal(signal.SIGTERM)
            assert server.wait(60) == 128 + signal.SIGTERM
        assert "second SIGTERM: exiting now" in server.stdout.read()
    finally:
        server.kill()
