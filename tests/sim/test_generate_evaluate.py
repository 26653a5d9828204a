"""Dataset generation and evaluation through the Meta-World harness, on one or two tasks."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("metaworld")

from vlaflow.cli import main
from vlaflow.data.lerobot import LeRobotDataset, validate_dataset
from vlaflow.data.pipeline import SourceConfig
from vlaflow.sim.evaluate import evaluate_metaworld, summarize
from vlaflow.sim.generate import generate_metaworld
from vlaflow.sim.metaworld import TASK_DESCRIPTIONS
from vlaflow.training.configs import apply_overrides, named_config
from vlaflow.training.trainer import train

TASKS = ["reach-v3", "button-press-topdown-v3"]


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("mw") / "demos"
    summary = generate_metaworld(
        root, tasks=TASKS, episodes_per_task=2, resolution=64, workers=1, progress=False
    )
    assert summary.episodes == 4 and summary.attempts >= 4
    return root


def test_generated_dataset_follows_the_protocol(demos):
    validate_dataset(demos)
    ds = LeRobotDataset(demos)
    assert ds.meta.fps == 80 and ds.meta.robot_type == "metaworld" and ds.num_episodes == 4
    assert ds.meta.tasks == [TASK_DESCRIPTIONS[t] for t in TASKS]
    assert ds.camera_keys == ["observation.image"]
    frame = ds[0]
    assert frame["observation.state"].shape == (4,) and frame["action"].shape == (4,)
    assert frame["observation.environment_state"].shape == (39,)
    assert frame["observation.image"].shape == (64, 64, 3)
    np.testing.assert_allclose(
        frame["observation.state"], frame["observation.environment_state"][:4], rtol=1e-6
    )
    for episode in ds.meta.episodes:  # success-only, ending at the first success
        rows = ds.episode_range(episode["episode_index"])
        success = ds.column("next.success")[rows.start : rows.stop, 0]
        assert success[-1] and not success[:-1].any()


def test_generation_refuses_to_overwrite(demos):
    with pytest.raises(FileExistsError):
        generate_metaworld(demos, tasks=TASKS[:1], episodes_per_task=1, progress=False)


def test_expert_evaluation_writes_results_chart_and_videos(tmp_path):
    results = evaluate_metaworld(
        tmp_path, policy="expert", tasks=TASKS, episodes_per_task=2, workers=1, resolution=64, progress=False
    )
    assert results["overall"]["episodes"] == 4 and results["overall"]["success_rate"] >= 0.5
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["tasks"]) == set(TASKS) and saved["groups"]["easy"]["tasks"] == 2
    assert (tmp_path / "success.png").stat().st_size > 0
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 4


def test_trained_checkpoint_runs_through_the_harness(demos, tmp_path, capsys):
    config = apply_overrides(
        named_config("pi05_tiny"),
        [
            "steps=2",
            "batch_size=4",
            "num_workers=0",
            'model_overrides={"image_keys": ["base_0_rgb"], "action_horizon": 5}',
        ],
    )
    config.datasets = [SourceConfig(str(demos))]
    checkpoint = train(config, tmp_path / "run", progress=False).checkpoint
    args = [
        "eval",
        "metaworld",
        "--checkpoint",
        str(checkpoint),
        "--episodes-per-task",
        "1",
        "--workers",
        "1",
    ]
    args += ["--videos-per-task", "1", "--output", str(tmp_path / "eval"), "--tasks", "reach-v3,door-open-v3"]
    assert main(args) == 0
    captured = capsys.readouterr()
    # rendered as the training data was (64 px, corner2), not at the 224 px default
    assert "rendered at 64 px, cameras corner2" in captured.out
    assert re.search(r"reach-v3: +\d+\.\d%  \([01]/1\)", captured.out)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["tasks"]["reach-v3"]["episodes"] == 1
    assert results["settings"]["steps_per_chunk"] == 5
    assert (results["settings"]["resolution"], results["settings"]["cameras"]) == (64, ["corner2"])
    assert results["settings"]["untrained_tasks"] == ["door-open-v3"]
    assert len(list((tmp_path / "eval" / "videos").glob("reach-v3_seed1000000_*.mp4"))) == 1


def test_a_failed_evaluation_leaves_no_folder_behind(demos, tmp_path, capsys):
    """An unknown camera fails inside the rollout: the new results folder is removed again."""
    config = apply_overrides(named_config("pi05_tiny"), ["steps=1", "batch_size=2", "num_workers=0"])
    config.datasets = [SourceConfig(str(demos))]
    checkpoint = train(config, tmp_path / "run", progress=False).checkpoint
    out = tmp_path / "eval"
    args = ["eval", "metaworld", "--checkpoint", str(checkpoint), "--tasks", "reach-v3", "--workers", "1"]
    assert main([*args, "--episodes-per-task", "1", "--cameras", "nope", "--output", str(out)]) == 2
    assert "unknown camera(s) ['nope']" in capsys.readouterr().err and not out.exists()
    assert main(["eval", "metaworld", "--checkpoint", str(tmp_path / "none"), "--output", str(out)]) == 2
    assert "not a vlaflow model directory" in capsys.readouterr().err and not out.exists()


def test_summary_groups_average_over_tasks():
    out = summarize(
        {"reach-v3": [True, False], "door-open-v3": [True, True], "push-v3": [False, False]},
        {"reach-v3": [10, 500], "door-open-v3": [20, 30], "push-v3": [500, 500]},
    )
    assert out["groups"]["easy"]["success_rate"] == 0.75 and out["groups"]["hard"]["success_rate"] == 0.0
    assert out["overall"]["success_rate"] == pytest.approx(0.5)
    assert out["tasks"]["reach-v3"]["mean_length"] == 255
