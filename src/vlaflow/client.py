"""The robot's side of `vlaflow serve`: a policy client, an action-chunk broker and a
rate-limited control loop. The client speaks openpi's protocol, so it also talks to openpi's
server; its API is openpi's (`infer(obs) -> dict`, `get_server_metadata()`, `reset()`). For
real-time chunking against `vlaflow serve --rtc`, an observation may also carry `prev_actions`
(the current chunk's actions not yet executed when it was taken) and `inference_delay` (control
steps the inference is expected to take); see `vlaflow.inference.schema`.

    client = PolicyClient("gpu-box.local", 8000, token="...")
    broker = ActionChunkBroker(client, replan_every=5)
    run_loop(broker, robot.observe, robot.act, hz=client.get_server_metadata()["control_hz"], steps=500)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import websockets.sync.client

from vlaflow.inference.protocol import pack, unpack

RETRY_INTERVAL_S = 0.5


class InferencePolicy(Protocol):
    def infer(self, obs: Mapping[str, Any]) -> dict[str, Any]: ...


class PolicyServerError(RuntimeError):
    """The server's error reply: which field of the request, what was wrong, what it expected."""

    def __init__(self, field: str | None, message: str, expected: str | None = None):
        detail = f" (expected {expected})" if expected else ""
        super().__init__(f"{field}: {message}{detail}" if field else f"{message}{detail}")
        self.field, self.message, self.expected = field, message, expected


class PolicyClient:
    """One connection to a policy server; waits up to `wait_s` for the server to come up."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = 8000,
        *,
        token: str | None = None,
        wait_s: float = 30.0,
    ):
        base = host if host.startswith(("ws://", "wss://")) else f"ws://{host}"
        self.uri = base if port is None else f"{base}:{port}"
        headers = {"Authorization": f"Bearer {token}"} if token else None
        deadline = time.monotonic() + wait_s
        self._open = contextlib.ExitStack()
        while True:
            try:
                self.connection = self._open.enter_context(
                    websockets.sync.client.connect(
                        self.uri, compression=None, max_size=None, additional_headers=headers
                    )
                )
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(RETRY_INTERVAL_S)
        self.metadata = unpack(self.connection.recv())

    def get_server_metadata(self) -> dict[str, Any]:
        return self.metadata

    def infer(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """The server's reply to one observation: `actions` (H, action_dim) and timings."""
        self.connection.send(pack(obs))
        response = self.connection.recv()
        if isinstance(response, str):  # openpi's server sends its traceback as text
            raise PolicyServerError(None, response)
        reply = unpack(response)
        if "error" in reply:
            raise PolicyServerError(**reply["error"])
        return reply

    def reset(self) -> None:
        """A new episode (openpi API): a vlaflow server forgets this connection's decoded subtask
        (hierarchical mode); openpi's server keeps no per-episode state, so it is told nothing."""
        if self.metadata.get("server") == "vlaflow":
            self.connection.send(pack({"__ctrl__": "reset"}))
            reply = unpack(self.connection.recv())
            if "__ack__" not in reply:
                raise PolicyServerError(
                    None, f"expected an acknowledgement of the reset, got {sorted(reply)}"
                )

    def close(self) -> None:
        self._open.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ActionChunkBroker:
    """Serves a policy's action chunk one step per call and asks for a new chunk every
    `replan_every` steps (or when the chunk runs out), so the robot replans before the chunk ends."""

    def __init__(self, policy: InferencePolicy, replan_every: int):
        if replan_every < 1:
            raise ValueError(f"replan_every must be >= 1, got {replan_every}")
        self.policy, self.replan_every = policy, replan_every
        self.chunk: dict[str, Any] | None = None
        self.step = 0

    def infer(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """The reply with every array replaced by its row for this step."""
        if self.chunk is None or self.step >= min(self.replan_every, len(self.chunk["actions"])):
            self.chunk, self.step = self.policy.infer(obs), 0
        row = {k: v[self.step] if isinstance(v, np.ndarray) and v.ndim else v for k, v in self.chunk.items()}
        self.step += 1
        return row

    def reset(self) -> None:
        self.chunk, self.step = None, 0
        if hasattr(self.policy, "reset"):
            self.policy.reset()


def run_loop(
    policy: InferencePolicy,
    get_observation: Callable[[], Mapping[str, Any]],
    apply_action: Callable[[np.ndarray], None],
    *,
    hz: float | None,
    steps: int,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Observe, infer, act `steps` times at most `hz` times a second (no limit when None). Ticks
    are scheduled from the start, so a slow step is made up by the next; a loop that falls a whole
    period behind restarts its schedule instead of bursting to catch up."""
    period = 1.0 / hz if hz else 0.0
    next_tick = clock()
    for _ in range(steps):
        apply_action(policy.infer(get_observation())["actions"])
        next_tick += period
        delay = next_tick - clock()
        if delay > 0:
            sleep(delay)
        elif delay < -period:
            next_tick = clock()
