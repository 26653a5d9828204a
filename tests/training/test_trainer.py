"""The trainer end to end on small datasets: resume, datasets of every layout, checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vlaflow import VLA
from vlaflow.data.pipeline import Source, SourceConfig, TrainingSamples, collate
from vlaflow.data.sampling import SampleKey
from vlaflow.pretrained import load_pretrained
from vlaflow.tokenizers import EmbeddedTokenizer
from vlaflow.training.checkpoint import complete_checkpoints
from vlaflow.training.configs import apply_overrides, named_config
from vlaflow.training.trainer import flow_inputs, train

FAST = ["batch_size=4", "log_every=1", "model_overrides.action_horizon=4", "augment=true"]


def config_for(*datasets: Path, overrides=(), name="pi05_tiny"):
    config = apply_overrides(named_config(name), [*FAST, "num_workers=0", *overrides])
    config.datasets = [SourceConfig(str(d)) for d in datasets]
    return config


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vlaflow.cli", "train", *args]


@pytest.mark.parametrize(
    "config,extra",
    [
        ("pi05_tiny", []),
        # pi0.5 with FAST tokens and knowledge insulation (FAST tokenizer fitted at the start)
        ("pi05_tiny", ["model_overrides.fast_vocab_size=64", "model_overrides.knowledge_insulation=true"]),
        ("pi0fast_tiny", ["model_overrides.fast_vocab_size=64", "max_fast_tokens=24"]),
    ],
)
def test_killed_run_resumes_with_the_same_losses(toy_dataset, tmp_path, config, extra):
    common = [
        "--config",
        config,
        "--dataset",
        str(toy_dataset),
        "--steps",
        "16",
        "--save-every",
        "4",
        *FAST,
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    straight = tmp_path / "straight"
    subprocess.run(
        cli(*common, "--output", str(straight), "num_workers=0"), check=True, env=env, capture_output=True
    )

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        cli(*common, "--output", str(killed), "num_workers=2"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (killed / "metrics.jsonl").exists() and len(metrics(killed)) >= 6 and complete_checkpoints(killed):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = complete_checkpoints(killed)[-1][0]
    assert 4 <= before < 16
    resumed = subprocess.run(
        cli("--resume", "--output", str(killed)), check=True, env=env, capture_output=True
    )
    assert f"resuming from step {before}".encode() in resumed.stdout

    a, b = metrics(straight), metrics(killed)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 17))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [{k: v for k, v in r.items() if k.startswith("loss")} for r in a] == [
        {k: v for k, v in r.items() if k.startswith("loss")} for r in b
    ]
    assert [r["grad_norm"] for r in a] == [r["grad_norm"] for r in b]
    final_a = load_pretrained(straight / "checkpoints" / "step_00000016").model.state_dict()
    final_b = load_pretrained(killed / "checkpoints" / "step_00000016").model.state_dict()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_trains_from_v21_and_hand_built_v30_datasets(tmp_path):
    from data.conftest import build_v21, build_v30

    v21 = build_v21(tmp_path / "v21", lengths=[7, 12, 5])
    v30 = build_v30(tmp_path / "v30", files=[[6, 9], [8]], camera="video")
    images = build_v30(tmp_path / "v30_images", files=[[5, 4]], camera="image")
    result = train(config_for(v21, v30, images, overrides=["steps=3"]), tmp_path / "run", progress=False)
    assert len(result.losses) == 3 and all(loss == loss for _, loss in result.losses)
    stats = json.loads((tmp_path / "run" / "norm_stats.json").read_text())
    assert sorted(stats) == ["v21", "v30", "v30_images"]


def fixed_batch_loss(model, dataset: Path) -> float:
    """Masked flow loss over every frame, with fixed noise and time and no augmentation."""
    source = Source(SourceConfig(str(dataset)), model.config, normalization="quantile")
    samples = TrainingSamples([source], EmbeddedTokenizer(), augment=False, seed=123)
    batch = collate([samples[SampleKey(i, 0, i)] for i in range(len(source))])
    noise, t = flow_inputs(batch.ids, model.config.action_horizon, model.config.action_dim, seed=99)
    with torch.no_grad():
        per_element = model.compute_loss(batch.observation, batch.actions, noise, t)
    return ((per_element * batch.action_mask).sum() / batch.action_mask.sum()).item()


def test_loss_falls_and_checkpoints_are_policies(toy_dataset, tmp_path):
    overrides = ["steps=40", "save_every=20", "keep_last=1", "optim.ema_decay=0.5", "optim.warmup_steps=5"]
    result = train(config_for(toy_dataset, overrides=[*overrides, "optim.peak_lr=2e-3"]), tmp_path / "run")
    ckpt = result.checkpoint
    loaded = load_pretrained(ckpt)
    torch.manual_seed(0)  # the trainer's initialization
    initial = VLA(loaded.model.config)
    assert fixed_batch_loss(loaded.model, toy_dataset) < 0.9 * fixed_batch_loss(initial, toy_dataset)
    assert [s for s, _ in complete_checkpoints(tmp_path / "run")] == [40]  # retention
    assert (ckpt / "ema.safetensors").exists() and (ckpt / "params.safetensors").exists()
    assert loaded.metadata["normalization"] == "quantile"
    assert "toy" in loaded.metadata["norm_stats"]
    assert loaded.model.config.action_horizon == 4
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0


def test_existing_run_needs_resume(toy_dataset, tmp_path):
    train(config_for(toy_dataset, overrides=["steps=2", "save_every=2"]), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="--resume"):
        train(config_for(toy_dataset, overrides=["steps=2"]), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="--steps"):
        train(None, tmp_path / "run", resume=True, progress=False)
    result = train(None, tmp_path / "run", resume=True, steps=4, progress=False)
    assert [s for s, _ in result.losses] == [3, 4]


def test_a_resume_applies_allowed_changes_and_refuses_the_others_by_name(toy_dataset, tmp_path, capsys):
    from vlaflow.cli import main

    run = tmp_path / "run"
    train(config_for(toy_dataset, overrides=["steps=2", "save_every=2"]), run, progress=False)
    assert main(["train", "--resume", "--output", str(run), "batch_size=8", "optim.peak_lr=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "batch_size: 4 -> 8" in err and "optim.peak_lr: " in err and "-> 0.001" in err
    other = tmp_path / "other"
    other.mkdir()
    assert main(["train", "--resume", "--output", str(run), "--dataset", str(other)]) == 2
    assert "datasets: " in capsys.readouterr().err
    assert (
        main(["train", "--resume", "--output", str(run), "--steps", "3", "save_every=1", "log_every=2"]) == 0
    )
    out = capsys.readouterr().out
    assert "with changed settings: log_every: 1 -> 2; save_every: 2 -> 1" in out
    assert [s for s, _ in complete_checkpoints(run)][-1] == 3
    result = train(
        config_for(toy_dataset, overrides=["steps=4", "save_every=2"]), run, resume=True, progress=False
    )
    assert [s for s, _ in result.losses] == [4]  # the same config again: resumed, nothing to report


@pytest.mark.parametrize("name", ["pi0_tiny", "pi05_tiny"])
def test_lora_and_freezing(toy_dataset, tmp_path, name):
    config = config_for(toy_dataset, name=name, overrides=["steps=2", 'freeze=["vision"]', 'lora={"vlm": 4}'])
    result = train(config, tmp_path / "run", progress=False)
    ckpt = result.checkpoint
    exported = load_pretrained(ckpt)  # merged: plain names
    assert not any("lora" in k for k in exported.model.state_dict())
    from safetensors.torch import load_file

    params = load_file(str(ckpt / "params.safetensors"))
    assert any(k.endswith("lora_a") for k in params)


def test_bad_settings_fail_clearly(toy_dataset, tmp_path):
    with pytest.raises(ValueError, match="unknown setting 'batchsize'"):
        apply_overrides(named_config("pi05_tiny"), ["batchsize=3"])
    with pytest.raises(ValueError, match="precision"):
        apply_overrides(named_config("pi05_tiny"), ["precision=fp8"])
    with pytest.raises(ValueError, match="no datasets"):
        train(named_config("pi05_tiny"), tmp_path / "run")
    with pytest.raises(ValueError, match="cameras"):
        train(
            config_for(toy_dataset, overrides=['cameras={"base_0_rgb": "observation.images.nope"}']),
            tmp_path / "r",
        )


def test_policy_applies_the_checkpoint_normalization(toy_dataset, tmp_path):
    from vlaflow.data.lerobot import LeRobotDataset
    from vlaflow.inference.policy import Policy

    config = config_for(toy_dataset, overrides=["steps=2", "delta_action_mask=[true, false]"])
    result = train(config, tmp_path / "run", progress=False)
    policy = Policy.load(result.checkpoint)
    frame = LeRobotDataset(toy_dataset)[5]
    obs = {
        "images": {"observation.images.top": frame["observation.images.top"]},
        "state": frame["observation.state"],
        "prompt": frame["task"],
    }
    actions = policy(obs)
    assert actions.shape == (4, 2) and actions.dtype == np.float32
    # By hand: normalize, sample with the policy's noise, unnormalize, add the state back.
    model = policy.model
    torch.manual_seed(0)
    normalized = policy.state_norm.normalize(frame["observation.state"][None])
    from vlaflow.data.transforms import build_observation

    model_obs = build_observation(
        model.config,
        policy.tokenizer,
        images={"base_0_rgb": obs["images"]["observation.images.top"][None]},
        state=normalized,
        prompts=[frame["task"]],
    )
    noise = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(0))
    raw = model.sample_actions(model_obs, noise=noise)[0, :, :2].numpy()
    expected = policy.action_norm.unnormalize(raw)
    expected[:, 0] += frame["observation.state"][0]
    np.testing.assert_allclose(actions, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="state must have shape"):
        policy({**obs, "state": np.zeros(5)})
    with pytest.raises(ValueError, match="neither a model slot"):
        policy({**obs, "images": {"front": obs["images"]["observation.images.top"]}})


def test_tensorboard_and_wandb_logging(toy_dataset, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = config_for(toy_dataset, overrides=["steps=2", "wandb_project=vlaflow-test"])
    train(config, tmp_path / "run", progress=False)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert wandb.run is None  # finished


def test_bf16_autocast_with_activation_checkpointing(toy_dataset, tmp_path):
    overrides = ["steps=2", "precision=bfloat16", "gradient_checkpointing=true"]
    result = train(config_for(toy_dataset, overrides=overrides), tmp_path / "run", progress=False)
    assert all(np.isfinite(loss) for _, loss in result.losses)
    assert (
        load_pretrained(result.checkpoint).model.action_in_proj.weight.dtype == torch.float32
    )  # master weights


@pytest.mark.slow
def test_torch_compile(toy_dataset, tmp_path):
    result = train(
        config_for(toy_dataset, overrides=["steps=3", "compile=true"]), tmp_path / "run", progress=False
    )
    eager = train(config_for(toy_dataset, overrides=["steps=3"]), tmp_path / "eager", progress=False)
    for (_, a), (_, b) in zip(result.losses, eager.losses, strict=True):
        assert abs(a - b) < 1e-3 * abs(b)


@pytest.mark.parametrize(
    "override,message",
    [
        ("batch_size=abc", "batch_size: expected an integer, got 'abc'"),
        ("optim.peak_lr=abc", "optim.peak_lr: expected a number, got 'abc'"),
        ("freeze=[vision", r"freeze=\[vision: not valid JSON"),
        ('freeze="vision"', "freeze: expected a JSON list of strings, got 'vision'"),
        ("augment=1", "augment: expected true or false, got 1"),
        ('lora={"vlm": 1.5}', r"lora\.vlm: expected an integer, got 1\.5"),
        ("model_overrides.action_horizon=x", r"model_overrides\.action_horizon: expected an integer"),
        ("model_overrides.horizon=4", r"model_overrides\.horizon: not a model setting; known: \["),
        ('optim={"peak": 1}', r"optim: unknown settings \['peak'\]"),
        ("val_fraction=1.5", r"val_fraction must be in \[0, 1\)"),
    ],
)
def test_every_override_is_type_checked_and_named(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(named_config("pi05_tiny"), [override])


def test_overrides_are_converted_to_their_setting_types():
    config = apply_overrides(
        named_config("pi05_tiny"), ["optim.peak_lr=1", 'model_overrides={"image_keys": ["base_0_rgb"]}']
    )
    assert config.optim.peak_lr == 1.0 and isinstance(config.optim.peak_lr, float)
    assert config.model_overrides["image_keys"] == ("base_0_rgb",)


def test_describe_lists_every_setting_with_its_default_and_help():
    from dataclasses import fields

    from vlaflow.training.configs import TrainConfig, describe

    config = apply_overrides(named_config("pi05_tiny"), ["batch_size=8"])
    text = describe(config, named_config("pi05_tiny"))
    lines = dict(line.split(" = ", 1) for line in text.splitlines())
    expected = {f.name for f in fields(TrainConfig)} - {"optim"}
    assert expected | {"optim.peak_lr", "optim.ema_decay"} <= set(lines)
    assert lines["batch_size"] == "8  # global batch size (split across processes) (default: 32)"
    assert all("  # " in value for value in lines.values())


def test_validation_holds_out_episodes_and_logs_losses(toy_dataset, tmp_path):
    overrides = ["steps=4", "val_every=2", "val_samples=6", "val_episodes=[1]", "val_action_error=true"]
    result = train(config_for(toy_dataset, overrides=overrides), tmp_path / "run", progress=False)
    rows = metrics(tmp_path / "run")
    validated = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in validated] == [2, 4]
    assert all(np.isfinite(r["val_loss"]) and r["val_action_mse"] > 0 for r in validated)
    loaded = load_pretrained(result.checkpoint)
    assert loaded.metadata["val_episodes"] == {"toy": [1]}
    # statistics come from the training episodes only
    from vlaflow.data.lerobot import LeRobotDataset

    train_frames = LeRobotDataset(toy_dataset, episodes=[0, 2], image_keys=[])
    state_mean = train_frames.column("observation.state").astype(np.float64).mean(0)
    assert np.allclose(loaded.metadata["norm_stats"]["toy"]["state"]["mean"], state_mean)


def test_validation_loss_is_the_masked_loss_of_the_held_out_frames(toy_dataset, tmp_path):
    """The logged number is an independent recomputation's: same frames, no augmentation."""
    overrides = ["steps=1", "val_every=1", "val_samples=100", "val_episodes=[2]", "optim.peak_lr=0"]
    overrides += ["optim.warmup_steps=0", "optim.end_lr=0"]
    train(config_for(toy_dataset, overrides=overrides), tmp_path / "run", progress=False)
    (row,) = metrics(tmp_path / "run")
    torch.manual_seed(0)
    model = VLA(load_pretrained(tmp_path / "run" / "checkpoints" / "step_00000001").model.config)
    stats = load_pretrained(tmp_path / "run" / "checkpoints" / "step_00000001").metadata["norm_stats"]
    from vlaflow.data.pipeline import SourceStats
    from vlaflow.training.trainer import VALIDATION_IDS

    source = Source(
        SourceConfig(str(toy_dataset)),
        model.config,
        normalization="quantile",
        stats=SourceStats.from_dict(stats["toy"]),
        episodes=[2],
    )
    samples = TrainingSamples([source], EmbeddedTokenizer(), augment=False, seed=0)
    batch = collate([samples[SampleKey(VALIDATION_IDS + i, 0, i)] for i in range(len(source))])
    noise, t = flow_inputs(batch.ids, model.config.action_horizon, model.config.action_dim, seed=0)
    with torch.no_grad():
        per_element = model.compute_loss(batch.observation, batch.actions, noise, t)
    expected = ((per_element * batch.action_mask).sum() / batch.action_mask.sum()).item()
    assert row["val_loss"] == pytest.approx(expected, rel=1e-5)


def test_val_fraction_split_is_seeded_and_refuses_bad_requests(toy_dataset, tmp_path):
    from vlaflow.training.trainer import held_out_episodes

    def split(*overrides):
        return held_out_episodes(config_for(toy_dataset, overrides=list(overrides)))

    assert split("val_fraction=0.3") == split("val_fraction=0.3")
    assert len(split("val_fraction=0.3")["toy"]) == 1
    assert split() == {}
    with pytest.raises(ValueError, match="val_episodes names datasets"):
        split('val_episodes={"other": [1]}')
    with pytest.raises(ValueError, match=r"episodes \[7\] are not in"):
        train(config_for(toy_dataset, overrides=["steps=1", "val_episodes=[7]"]), tmp_path / "x")
    with pytest.raises(ValueError, match="every episode is held out"):
        train(config_for(toy_dataset, overrides=["steps=1", "val_episodes=[0,1,2]"]), tmp_path / "y")


def test_the_runtime_pins_its_thread_count():
    from vlaflow.training.distributed import init_runtime

    before = torch.get_num_threads()
    assert init_runtime("cpu").threads == before == torch.get_num_threads()


def test_model_overrides_add_to_a_named_configs_own():
    config = apply_overrides(named_config("pi05_ki_tiny_stage2"), ['model_overrides={"action_horizon": 4}'])
    assert config.model_overrides["action_horizon"] == 4
    assert config.model_overrides["knowledge_insulation"] is True
    assert config.model_overrides["expert"] is not None
