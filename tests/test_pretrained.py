from __future__ import annotations

import json

import pytest
import torch

from helpers import make_observation, randomize_
from vlaflow import VLA, preset
from vlaflow.pretrained import load_pretrained, save_pretrained
from vlaflow.tokenizers import EmbeddedTokenizer


def test_save_load_round_trip(tmp_path):
    model = VLA(preset("pi0_tiny", action_horizon=7)).eval()
    randomize_(model)
    save_pretrained(tmp_path, model, tokenizer=EmbeddedTokenizer(), metadata={"note": "x"})
    assert not list(tmp_path.glob(".*tmp"))
    loaded = load_pretrained(tmp_path)
    assert loaded.model.config == model.config
    assert isinstance(loaded.tokenizer, EmbeddedTokenizer)
    assert loaded.metadata == {"note": "x"}
    obs = make_observation(model.config)
    noise = torch.randn(2, 7, 32)
    assert torch.equal(model.sample_actions(obs, noise=noise), loaded.model.sample_actions(obs, noise=noise))


def test_not_a_model_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a vlaflow model directory"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "openpi"}))
    with pytest.raises(ValueError, match="vlaflow convert"):
        load_pretrained(tmp_path)
