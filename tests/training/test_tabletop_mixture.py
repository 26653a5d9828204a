"""`vlaflow train --config pi05_tabletop_tiny` on a directory written by `vlaflow generate tabletop`
co-trains on every kind of sample in it, reports the realised mixture, and its checkpoint runs
hierarchically."""

from __future__ import annotations

import json

import pytest

from vlaflow.cli import main
from vlaflow.data.lerobot import SUBTASK_INDEX, SUBTASKS_PATH, LeRobotDataset
from vlaflow.inference.policy import Policy
from vlaflow.sim.tabletop.generate import generate_tabletop

KINDS = ("robot", "verbal", "high_level", "web")


@pytest.fixture(scope="module")
def tabletop(tmp_path_factory):
    root = tmp_path_factory.mktemp("tabletop") / "tabletop"
    generate_tabletop(
        root,
        episodes=2,
        families=("instruction",),
        verbal_sessions=1,
        web_images=1,
        resolution=48,
        workers=1,
        progress=False,
    )
    return root


def test_the_tabletop_config_trains_on_every_kind_of_sample(tabletop, tmp_path, capsys):
    # LeRobot 0.4.4's subtask convention is what the high-level samples read.
    dataset = LeRobotDataset(tabletop, image_keys=[])
    assert SUBTASK_INDEX in dataset.meta.features and (tabletop / SUBTASKS_PATH).is_file()
    assert dataset[0]["subtask"] in dataset.meta.subtasks

    steps, batch = 2, 4
    run = tmp_path / "run"
    small = [  # one camera, short prompts: a fast test
        'model_overrides={"image_keys": ["base_0_rgb"], "max_token_len": 48}',
        'cameras={"base_0_rgb": "observation.images.scene"}',
    ]
    args = ["train", "--config", "pi05_tabletop_tiny", "--dataset", str(tabletop), "--output", str(run)]
    assert (
        main([*args, "--steps", str(steps), f"batch_size={batch}", "num_workers=0", "log_every=1", *small])
        == 0
    )
    printed = capsys.readouterr().out
    assert f"mixture of steps 0-{steps} ({steps * batch} samples)" in printed
    assert all(f"tabletop/{kind} " in printed for kind in KINDS)

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    mixture = rows[0]["mixture"]
    assert list(mixture) == [f"tabletop/{kind}" for kind in KINDS]
    assert sum(m["samples"] for m in mixture.values()) == steps * batch
    assert abs(sum(m["weight"] for m in mixture.values()) - 1) < 1e-9
    assert all("mixture" not in row for row in rows[1:])
    assert {"loss_text", "loss_fast", "loss_flow"} <= set(rows[0])

    policy = Policy.load(run / "checkpoints" / f"step_{steps:08d}", num_steps=2, mode="hierarchical")
    frame = LeRobotDataset(tabletop, image_keys=["observation.images.scene"])[0]
    out = policy.act(
        {
            "images": {"observation.images.scene": frame["observation.images.scene"]},
            "state": frame["observation.state"],
            "prompt": frame["task"],
        }
    )
    assert out["actions"].shape == (10, 5) and isinstance(out["subtask"], str)
