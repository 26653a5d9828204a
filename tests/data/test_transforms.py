from __future__ import annotations

import numpy as np
import pytest
import torch

from vlaflow import VLA, preset
from vlaflow.data.transforms import build_observation, pad_to_dim, resize_with_pad, to_model_range
from vlaflow.tokenizers import EmbeddedTokenizer, tokenize_prompt


def test_resize_with_pad_keeps_aspect_and_pads_black():
    image = torch.full((1, 60, 120, 3), 200, dtype=torch.uint8)
    out = resize_with_pad(image, 64, 64)
    assert out.shape == (1, 64, 64, 3) and out.dtype == torch.uint8
    # 120x60 -> 64x32 content, 16 rows of black above and below.
    assert (out[0, :16] == 0).all() and (out[0, -16:] == 0).all()
    assert (out[0, 16:48] == 200).all()
    floats = resize_with_pad(torch.zeros(2, 30, 10, 3), 32, 32)
    assert floats.shape == (2, 32, 32, 3)
    assert (floats[:, :, :10] == -1).all() and (floats[:, :, 11:21] == 0).all()


def test_resize_with_pad_is_identity_at_target_size():
    image = torch.randint(0, 255, (3, 16, 16, 3), dtype=torch.uint8)
    assert resize_with_pad(image, 16, 16) is image


def test_uint8_to_model_range():
    x = torch.tensor([0, 255, 51], dtype=torch.uint8)
    assert torch.allclose(to_model_range(x), torch.tensor([-1.0, 1.0, -0.6]))


def test_pad_to_dim_pads_zeros_and_rejects_too_wide():
    assert pad_to_dim(torch.ones(2, 3), 5).tolist() == [[1, 1, 1, 0, 0]] * 2
    with pytest.raises(ValueError, match="exceeds the model's action_dim 2"):
        pad_to_dim(torch.ones(1, 3), 2, "state")


def test_build_observation_end_to_end():
    config = preset("pi05_tiny")
    tokenizer = EmbeddedTokenizer()
    state = np.array([[0.5, -0.5, 0.0], [1.0, -1.0, 0.2]], dtype=np.float32)
    images = {"base_0_rgb": np.full((2, 48, 64, 3), 255, dtype=np.uint8)}
    obs = build_observation(config, tokenizer, images=images, state=state, prompts=["pick", "place"])
    obs.check(config)
    assert obs.images["base_0_rgb"].shape == (2, 112, 112, 3)
    assert (
        obs.images["base_0_rgb"].max() == 1.0 and obs.images["base_0_rgb"].min() == -1.0
    )  # content + black bars
    assert obs.image_masks["base_0_rgb"].all()
    for missing in ("left_wrist_0_rgb", "right_wrist_0_rgb"):
        assert not obs.image_masks[missing].any() and (obs.images[missing] == -1).all()
    assert obs.state.shape == (2, 32) and torch.equal(obs.state[:, 3:], torch.zeros(2, 29))
    expected, mask = tokenize_prompt(tokenizer, "place", state[1], pi05=True, max_len=config.max_token_len)
    assert obs.tokenized_prompt[1].tolist() == expected.tolist()
    assert obs.tokenized_prompt_mask[1].tolist() == mask.tolist()
    VLA(config).sample_actions(obs, num_steps=1)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(state=np.zeros(3)), "state: expected"),
        (dict(prompts="pick"), "prompts: expected a list of 1"),
        (dict(images={"wrist": np.zeros((1, 8, 8, 3), np.uint8)}), "unknown cameras"),
        (dict(images={"base_0_rgb": np.zeros((1, 8, 8), np.uint8)}), r"images\['base_0_rgb'\]"),
    ],
)
def test_build_observation_errors_name_the_field(kwargs, message):
    args = dict(images={}, state=np.zeros((1, 3)), prompts=["pick"]) | kwargs
    with pytest.raises(ValueError, match=message):
        build_observation(preset("pi0_tiny"), EmbeddedTokenizer(), **args)
