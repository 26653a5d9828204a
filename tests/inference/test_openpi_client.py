"""`vlaflow serve` through openpi's own client package (`openpi-client` from PyPI, installed by the
README's test command), not our re-reading of its protocol: `WebsocketClientPolicy` connects,
reads the metadata and gets the policy's own actions; its `ActionChunkBroker` steps through them;
its `Api-Key` header passes the token check; a bad request gets an error map and the same
connection keeps serving."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from serve_helpers import NUM_STEPS, observation, policy_observation, stub_server
from websockets.exceptions import ConnectionClosed

from vlaflow.bench.serve import TINY_ACTION_DIM, TINY_HORIZON, TINY_STATE_DIM

websocket_client_policy = pytest.importorskip("openpi_client.websocket_client_policy")
action_chunk_broker = pytest.importorskip("openpi_client.action_chunk_broker")


def test_openpi_websocket_client_gets_the_policys_own_actions(served, checkpoint):
    from vlaflow.inference.policy import Policy

    reference = Policy.load(checkpoint, num_steps=NUM_STEPS)
    request = observation(size=40, seed=5)
    expected = reference(policy_observation(request))
    served.policy.generator.manual_seed(0)  # as the reference's, which starts from seed 0
    client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", served.port)
    metadata = client.get_server_metadata()
    assert (metadata["action_horizon"], metadata["action_dim"]) == (TINY_HORIZON, TINY_ACTION_DIM)
    reply = client.infer(request)
    np.testing.assert_allclose(reply["actions"], expected, rtol=1e-5, atol=1e-6)
    assert reply["actions"].dtype == np.float32 and reply["policy_timing"]["infer_ms"] > 0

    bad = client.infer({**request, "observation.state": np.zeros(99, np.float32)})  # same connection
    assert bad["error"]["field"] == "observation.state" and "(" in bad["error"]["expected"]
    assert client.infer(request)["actions"].shape == (TINY_HORIZON, TINY_ACTION_DIM)


def test_openpi_action_chunk_broker_steps_through_a_served_chunk(served):
    client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", served.port)
    broker = action_chunk_broker.ActionChunkBroker(client, action_horizon=TINY_HORIZON)
    served.policy.generator.manual_seed(0)
    steps = [broker.infer(observation(seed=7))["actions"] for _ in range(TINY_HORIZON)]
    served.policy.generator.manual_seed(0)
    chunk = client.infer(observation(seed=7))["actions"]
    np.testing.assert_allclose(np.stack(steps), chunk, rtol=1e-5, atol=1e-6)
    assert steps[0].shape == (TINY_ACTION_DIM,)


def test_openpi_client_api_key_passes_the_token_check():
    server, model = stub_server(token="s3cret")
    with server.in_background() as port:
        client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", port, api_key="s3cret")
        reply = client.infer(observation())
    assert reply["actions"].shape[-1] == TINY_ACTION_DIM and model.batches == [1]


def test_openpi_client_gets_named_errors_never_non_finite_actions():
    """Inputs that overflow float32 or cannot be resized, and a model that returns NaN: each an
    error reply naming the field (None for the model), and the connection keeps serving."""
    server, model = stub_server()
    with server.in_background() as port:
        client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", port)
        good, image = observation(), "observation.images.corner2"
        error = client.infer({**good, "observation.state": np.full(TINY_STATE_DIM, 1e39)})["error"]
        assert error["field"] == "observation.state" and "overflows float32" in error["message"]
        error = client.infer({**good, image: np.zeros((1, 200, 3), np.uint8)})["error"]
        assert error["field"] == image and "1 x 200" in error["message"]
        model.nan_next = True
        error = client.infer(good)["error"]
        assert error["field"] is None and "non-finite actions" in error["message"]
        assert np.isfinite(client.infer(good)["actions"]).all()


def test_openpi_client_left_silent_is_disconnected_by_the_idle_timeout():
    server, _ = stub_server(idle_timeout_s=0.2)
    with server.in_background() as port:
        client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", port)
        for _ in range(600):  # the server closes it on its own loop
            if server.stats.open_connections == 0:
                break
            threading.Event().wait(0.05)
        assert server.stats.open_connections == 0
        with pytest.raises(ConnectionClosed):
            client.infer(observation())


def test_openpi_client_meets_the_connection_limit_the_token_throttle_and_the_control_echo_bound():
    from websockets.exceptions import InvalidStatus

    from vlaflow.inference.server import MAX_CONTROL_BYTES

    server, _ = stub_server(token="s3cret", max_connections=1, max_auth_failures=2)
    with server.in_background() as port:
        first = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", port, api_key="s3cret")
        with pytest.raises(InvalidStatus) as refused:  # one connection allowed
            websocket_client_policy.WebsocketClientPolicy("127.0.0.1", port, api_key="s3cret")
        assert refused.value.response.status_code == 503
        error = first.infer({"__ctrl__": "x" * MAX_CONTROL_BYTES})["error"]
        assert error["field"] == "__ctrl__"
        assert first.infer({"__ctrl__": "episode_start"}) == {"__ack__": "episode_start"}
        codes = []
        for _ in range(3):
            with pytest.raises(InvalidStatus) as refused:
                websocket_client_policy.WebsocketClientPolicy("127.0.0.1", port, api_key="guess")
            codes.append(refused.value.response.status_code)
        assert codes == [401, 401, 429]
        assert "actions" in first.infer(observation())  # the open connection is not affected
