"""What the serving tests share: a request for the tiny checkpoint and a stub-model server."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import websockets.sync.client

from vlaflow.bench.serve import TINY_ACTION_DIM, TINY_CAMERAS, TINY_HORIZON, TINY_STATE_DIM
from vlaflow.inference.policy import Policy
from vlaflow.inference.protocol import pack, unpack
from vlaflow.inference.schema import ServingSpec
from vlaflow.inference.server import PolicyServer, ServerConfig

NUM_STEPS = 2
WINDOW_MS = 1000.0  # long, so concurrent requests reliably share a batch; a lone client never waits
STUB_MAX_FRAME = 64 * 1024


@dataclass
class Served:
    server: PolicyServer
    policy: Policy
    port: int

    @property
    def uri(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


def connect(uri: str, **kwargs) -> websockets.sync.client.ClientConnection:
    """The way openpi's client connects: no compression, no size limit."""
    return websockets.sync.client.connect(uri, compression=None, max_size=None, **kwargs)


def infer(connection, message) -> dict:
    connection.send(pack(message))
    return unpack(connection.recv())


def observation(size: int = 32, seed: int = 0) -> dict:
    """A request in the tiny checkpoint's dataset key names."""
    rng = np.random.default_rng(seed)
    return {
        **{c: rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8) for c in TINY_CAMERAS.values()},
        "observation.state": rng.normal(size=TINY_STATE_DIM).astype(np.float32),
        "prompt": "pick up the cup",
    }


def policy_observation(request: dict, **hints) -> dict:
    """A request in the dataset's key names as `Policy` takes it, with `hints` (e.g. prev_actions)."""
    images = {c: request[c] for c in TINY_CAMERAS.values()}
    return {"images": images, "state": request["observation.state"], "prompt": request["prompt"], **hints}


class StubModel:
    """Zeros of the right shape; records batch sizes; raises when told to."""

    def __init__(self):
        self.batches: list[int] = []
        self.fail_next = False
        self.nan_next = False
        self.gate: threading.Event | None = None  # when set, inference waits for it
        self.entered = threading.Event()  # inference has started

    def __call__(self, observations: list[dict]) -> np.ndarray:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("out of memory")
        self.batches.append(len(observations))
        actions = np.zeros((len(observations), TINY_HORIZON, TINY_ACTION_DIM), np.float32)
        if self.nan_next:
            self.nan_next = False
            actions[:, 1, 0] = np.nan
        return actions


def stub_server(**config) -> tuple[PolicyServer, StubModel]:
    spec = ServingSpec(
        cameras=tuple(TINY_CAMERAS.values()), state_key="observation.state", state_dim=TINY_STATE_DIM
    )
    model = StubModel()
    defaults = {"port": 0, "max_frame_bytes": STUB_MAX_FRAME, "batch_window_ms": 0.0}
    return PolicyServer(model, spec, {"server": "stub"}, ServerConfig(**{**defaults, **config})), model
