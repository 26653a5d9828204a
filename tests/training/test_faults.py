"""Faults never lose a run: a failed or killed checkpoint write, a damaged checkpoint, a damaged
dataset. Each test injects the fault and checks what the user is told and what survives."""

from __future__ import annotations

import errno
import shutil

import numpy as np
import pytest
import torch

from conftest import write_dataset
from vlaflow.cli import main
from vlaflow.data.pipeline import SourceConfig
from vlaflow.training import checkpoint as checkpoint_module
from vlaflow.training.checkpoint import complete_checkpoints, load_checkpoint
from vlaflow.training.configs import apply_overrides, named_config
from vlaflow.training.trainer import train

TINY = ["batch_size=4", "log_every=1", "model_overrides.action_horizon=4", "num_workers=0", "augment=false"]


def _config(dataset, *overrides):
    config = apply_overrides(named_config("pi05_tiny"), [*TINY, *overrides])
    config.datasets = [SourceConfig(str(dataset))]
    return config


def _steps(run) -> list[int]:
    return [step for step, _ in complete_checkpoints(run)]


def test_a_full_disk_fails_clearly_and_leaves_the_previous_checkpoint(
    toy_dataset, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    train(_config(toy_dataset, "steps=2", "save_every=2"), run, progress=False)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full)
    assert main(["train", "--resume", "--output", str(run), "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert (
        "No space left on device" in err and "previous checkpoint" in err and "step_00000002 is intact" in err
    )
    assert _steps(run) == [2] and not list((run / "checkpoints").glob(".*.tmp"))
    load_checkpoint(run / "checkpoints" / "step_00000002")  # still whole
    monkeypatch.undo()
    assert [s for s, _ in train(None, run, resume=True, steps=4, progress=False).losses] == [3, 4]


def test_a_kill_while_writing_leaves_the_last_complete_checkpoint_to_resume_from(
    toy_dataset, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    train(_config(toy_dataset, "steps=2", "save_every=2"), run, progress=False)
    real_save = torch.save

    def killed(*args, **kwargs):  # the weights are on disk, then the process dies
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        train(None, run, resume=True, steps=4, progress=False)
    assert _steps(run) == [2] and len(list((run / "checkpoints").glob(".step_00000004.tmp"))) == 1
    monkeypatch.undo()
    assert [s for s, _ in train(None, run, resume=True, steps=4, progress=False).losses] == [3, 4]
    assert _steps(run) == [2, 4] and not list((run / "checkpoints").glob(".*.tmp"))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _scramble(path):  # same size, garbage inside
    path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())


@pytest.mark.parametrize(
    ("damage", "name", "message"),
    [
        (_truncate, "model.safetensors", "written with"),
        (_scramble, "optimizer.pt", "cannot be loaded"),
        (lambda path: path.unlink(), "trainer_state.json", "missing"),
    ],
)
def test_a_damaged_latest_checkpoint_is_skipped_with_a_warning_naming_the_file(
    toy_dataset, tmp_path, damage, name, message
):
    run = tmp_path / "run"
    train(_config(toy_dataset, "steps=4", "save_every=2"), run, progress=False)
    damage(run / "checkpoints" / "step_00000004" / name)
    with pytest.warns(
        UserWarning, match=rf"skipping damaged checkpoint step_00000004: .*{name}: .*{message}"
    ):
        result = train(None, run, resume=True, steps=5, progress=False)
    assert [s for s, _ in result.losses] == [3, 4, 5]  # resumed from step 2


def test_a_run_whose_every_checkpoint_is_damaged_says_so(toy_dataset, tmp_path):
    run = tmp_path / "run"
    train(_config(toy_dataset, "steps=2", "save_every=2"), run, progress=False)
    _truncate(run / "checkpoints" / "step_00000002" / "model.safetensors")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no checkpoint there can be loaded"):
        train(None, run, resume=True, steps=4, progress=False)


def test_a_missing_data_file_is_named_with_its_episodes_before_training(tmp_path):
    from data.conftest import build_v30

    dataset = build_v30(tmp_path / "v30", files=[[6, 9], [8]], camera="video")
    (dataset / "data" / "chunk-000" / "file-001.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"episode 2: missing data file .*file-001\.parquet"):
        train(_config(dataset, "steps=2"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_a_damaged_or_missing_video_is_named_with_its_episode(tmp_path, workers):
    dataset = write_dataset(tmp_path / "toy")
    video = next((dataset / "videos").rglob("*.mp4"))
    kept = tmp_path / "kept.mp4"
    shutil.copy(video, kept)
    video.unlink()
    with pytest.raises(FileNotFoundError, match=rf"episode 0: missing video file .*{video.name}"):
        train(_config(dataset, "steps=2"), tmp_path / "run0", progress=False)
    shutil.copy(kept, video)
    _scramble(video)
    with pytest.raises(
        ValueError, match=rf"^.*episode \d+: cannot decode observation.images.top .* from .*{video.name}"
    ):
        train(_config(dataset, "steps=2", f"num_workers={workers}"), tmp_path / "run1", progress=False)
