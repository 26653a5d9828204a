"""pi0-FAST and the knowledge-insulation recipe through the trainer and the policy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.test_trainer import FAST, metrics
from vlaflow.inference.policy import Policy
from vlaflow.pretrained import FAST_TOKENIZER_DIR, load_pretrained
from vlaflow.training.configs import apply_overrides, named_config
from vlaflow.training.trainer import train


def run(name, dataset, output, *overrides):
    from vlaflow.data.pipeline import SourceConfig

    config = apply_overrides(named_config(name), [*FAST, "num_workers=0", "augment=false", *overrides])
    config.datasets = [SourceConfig(str(dataset))]
    return train(config, output, progress=False)


def observation(dataset):
    from vlaflow.data.lerobot import LeRobotDataset

    frame = LeRobotDataset(dataset)[0]
    return {
        "images": {"observation.images.top": frame["observation.images.top"]},
        "state": frame["observation.state"],
        "prompt": frame["task"],
    }


def test_pi0fast_trains_on_fast_tokens_and_acts_by_decoding(toy_dataset, tmp_path):
    result = run("pi0fast_tiny", toy_dataset, tmp_path / "run", "steps=3", "max_fast_tokens=32")
    rows = metrics(tmp_path / "run")
    assert all(set(r) >= {"loss", "loss_fast"} and "loss_flow" not in r for r in rows)
    assert all(r["loss"] == pytest.approx(r["loss_fast"]) and r["loss_fast"] > 0 for r in rows)
    assert (result.checkpoint / FAST_TOKENIZER_DIR / "tokenizer.json").is_file()
    loaded = load_pretrained(result.checkpoint)
    assert loaded.model.config.expert is None and not loaded.model.has_expert
    policy = Policy.load(result.checkpoint)
    actions = policy(observation(toy_dataset))
    assert actions.shape == (4, 2) and np.isfinite(actions).all()
    assert policy.fast_failures in (0, 1)  # an untrained model may emit an undecodable sequence: counted


def test_knowledge_insulation_two_stages(toy_dataset, tmp_path):
    stage1 = run("pi05_ki_tiny_stage1", toy_dataset, tmp_path / "stage1", "steps=2").checkpoint
    stage2 = run(
        "pi05_ki_tiny_stage2", toy_dataset, tmp_path / "stage2", "steps=2", f"init={stage1}"
    ).checkpoint
    rows = metrics(tmp_path / "stage2")
    for r in rows:
        assert r["loss"] == pytest.approx(r["loss_fast"] + 10 * r["loss_flow"], rel=1e-5)
    first, second = load_pretrained(stage1).model, load_pretrained(stage2).model
    assert second.config.knowledge_insulation and second.has_expert and first.config.expert is None
    # the FAST tokenizer of stage 1 is the one stage 2 trains with
    assert (stage1 / FAST_TOKENIZER_DIR / "tokenizer.json").read_bytes() == (
        stage2 / FAST_TOKENIZER_DIR / "tokenizer.json"
    ).read_bytes()
    assert json.loads((stage2 / "config.json").read_text())["model"]["fast_vocab_size"] == 256
    policy = Policy.load(stage2)  # with an expert it samples the flow
    actions = policy(observation(toy_dataset))
    assert actions.shape == (4, 2) and np.isfinite(actions).all() and policy.fast_failures == 0


def test_insulation_without_a_vlm_loss_is_refused(toy_dataset, tmp_path):
    with pytest.raises(ValueError, match="knowledge_insulation without a VLM loss"):
        run(
            "pi05_tiny", toy_dataset, tmp_path / "run", "steps=1", "model_overrides.knowledge_insulation=true"
        )
