"""A small LeRobot v3.0 dataset written with our writer, shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vlaflow.data.lerobot import LeRobotDatasetWriter


def write_dataset(
    root: Path,
    *,
    episodes: int = 3,
    length: int = 12,
    state_dim: int = 3,
    action_dim: int = 2,
    size: int = 32,
    seed: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)
    features = {
        "observation.state": {"dtype": "float32", "shape": [state_dim], "names": None},
        "action": {"dtype": "float32", "shape": [action_dim], "names": None},
        "observation.images.top": {
            "dtype": "video",
            "shape": [size, size, 3],
            "names": ["height", "width", "channels"],
        },
    }
    with LeRobotDatasetWriter(root, fps=10, features=features, robot_type="toy") as writer:
        for e in range(episodes):
            t = np.linspace(0, 1, length, dtype=np.float32)[:, None]
            state = np.concatenate([np.sin(t * (e + 1) * np.arange(1, state_dim + 1))], axis=1).astype(
                np.float32
            )
            action = (state[:, :action_dim] * 2 + rng.normal(0, 0.01, (length, action_dim))).astype(
                np.float32
            )
            frames = np.zeros((length, size, size, 3), dtype=np.uint8)
            for i in range(length):
                frames[i, :, : (i * size) // length + 1, e % 3] = 200
            writer.add_episode(
                {"observation.state": state, "action": action, "observation.images.top": frames},
                task=["move left", "move right", "stay"][e % 3],
            )
    return root


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "toy")
