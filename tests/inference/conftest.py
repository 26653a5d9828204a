"""A tiny checkpoint, its policy and a server for it, shared by the serving tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serve_helpers import NUM_STEPS, WINDOW_MS, Served

from vlaflow.bench.serve import tiny_checkpoint
from vlaflow.inference.policy import Policy
from vlaflow.inference.server import ServerConfig, server_for_policy
from vlaflow.pretrained import read_config


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="session")
def policy(checkpoint) -> Policy:
    return Policy.load(checkpoint, num_steps=NUM_STEPS)


@pytest.fixture(scope="module")
def served(checkpoint, policy) -> Iterator[Served]:
    config = ServerConfig(port=0, batch_window_ms=WINDOW_MS)
    server = server_for_policy(policy, read_config(checkpoint)["metadata"], config=config)
    with server.in_background() as port:
        yield Served(server, policy, port)
