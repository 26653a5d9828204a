"""Evaluation through a running policy server gives the same episodes as in-process evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("metaworld")

from vlaflow.data.pipeline import SourceStats
from vlaflow.data.stats import feature_stats
from vlaflow.inference.policy import Policy
from vlaflow.inference.rtc import RTCConfig
from vlaflow.inference.server import ServerConfig, server_for_policy
from vlaflow.models import VLA, preset
from vlaflow.pretrained import read_config, save_pretrained
from vlaflow.sim import metaworld as mw
from vlaflow.sim.evaluate import CheckpointPolicyFactory, ServerPolicyFactory, evaluate_metaworld
from vlaflow.sim.generate import camera_feature
from vlaflow.tokenizers import EmbeddedTokenizer

NUM_STEPS = 2
TASKS = ["reach-v3", "button-press-topdown-v3"]


def metaworld_checkpoint(directory: Path) -> Path:
    """A random tiny pi0.5 shaped for Meta-World (corner2 camera, 4-d state and actions)."""
    torch.manual_seed(0)
    model = VLA(preset("pi05_tiny", image_keys=("base_0_rgb",), action_horizon=6))
    rng = np.random.default_rng(0)
    stats = SourceStats(
        state=feature_stats(rng.normal(size=(256, mw.STATE_DIM))),
        actions=feature_stats(rng.uniform(-1, 1, size=(256, mw.ACTION_DIM))),
        action_horizon=6,
        cameras={"base_0_rgb": camera_feature("corner2")},
        image_sizes={camera_feature("corner2"): (32, 32)},
    )
    metadata = {"normalization": "quantile", "norm_stats": {"mw": stats.to_dict()}}
    return save_pretrained(directory, model, tokenizer=EmbeddedTokenizer(), metadata=metadata)


def served(checkpoint: Path, rtc: RTCConfig | None = None):
    """A fresh server (its sampling generator at seed 0, as a fresh in-process policy's)."""
    policy = Policy.load(checkpoint, num_steps=NUM_STEPS, rtc=rtc)
    return server_for_policy(policy, read_config(checkpoint)["metadata"], config=ServerConfig(port=0))


@pytest.mark.parametrize(
    ("rtc", "steps_per_chunk", "delay", "chunks"),
    [(False, 4, 0, 4), (True, 2, 1, 7)],
    ids=["synchronous", "rtc-delay-1"],
)
def test_server_backed_episodes_equal_in_process_ones(tmp_path, rtc, steps_per_chunk, delay, chunks):
    """With `vlaflow serve --rtc` the requests carry the rollout engine's prev_actions and delay (a
    client that left them out would get other actions: the guidance moves the executed ones)."""
    checkpoint = metaworld_checkpoint(tmp_path / "ckpt")
    jobs = mw.episode_jobs(TASKS, 1, seed=1_000_000)
    options = {
        "workers": 1,
        "env_kwargs": {"cameras": ("corner2",), "resolution": 32, "max_steps": 14},
        "steps_per_chunk": steps_per_chunk,
        "delay": delay,
        "record": False,
        "ordered": True,
    }
    config = RTCConfig() if rtc else None
    local_factory = CheckpointPolicyFactory(str(checkpoint), NUM_STEPS, rtc=config)
    local = list(mw.rollout_many(jobs, local_factory, **options))
    server = served(checkpoint, config)
    with server.in_background() as port:
        remote = list(mw.rollout_many(jobs, ServerPolicyFactory(f"ws://127.0.0.1:{port}"), **options))
    assert server.stats.replies == 2 * chunks and not server.stats.errors  # chunks per 14-step episode
    for a, b in zip(local, remote, strict=True):
        assert (a.task, a.seed, a.success) == (b.task, b.seed, b.success)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.raw, b.raw)
    assert np.abs(local[0].actions[:2] - local[0].actions[4:6]).max() > 1e-3  # fresh noise every chunk


def test_evaluate_metaworld_through_a_server(tmp_path):
    checkpoint = metaworld_checkpoint(tmp_path / "ckpt")
    server = served(checkpoint)
    with server.in_background() as port:
        factory = ServerPolicyFactory(f"ws://127.0.0.1:{port}")
        results = evaluate_metaworld(
            tmp_path / "eval",
            policy=factory,
            tasks=TASKS[:1],
            episodes_per_task=1,
            max_steps=6,
            workers=1,
            videos_per_task=0,
            progress=False,
        )
    settings = results["settings"]
    assert settings["policy"] == factory.uri and settings["denoising_steps"] == NUM_STEPS
    assert settings["cameras"] == ["corner2"] and settings["resolution"] == 32  # as training rendered
    assert results["tasks"]["reach-v3"]["mean_length"] == 6 and server.stats.replies == 2
    with pytest.raises(ValueError, match="ws:// or wss://"):
        ServerPolicyFactory("127.0.0.1:8000").metadata()
