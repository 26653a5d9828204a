"""Sampling conditioned on text (a decoded subtask) sees the sequence training's flow term saw."""

from __future__ import annotations

import torch

from helpers import make_observation
from models.test_recipe import recipe_model, targets_for


def test_the_cached_text_conditioned_velocity_is_the_training_flow_term():
    """The flow loss of a sample with a text target (and FAST tokens, which the expert never reads)
    equals the squared error of the velocity sampling computes from the cached prefix + text."""
    model = recipe_model().eval()
    obs = make_observation(model.config)
    targets = targets_for(model)
    noise = torch.randn(targets.actions.shape, generator=torch.Generator().manual_seed(1))
    time = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        flow = model.compute_losses(obs, targets, noise=noise, time=time).flow
        text = (targets.text_tokens, targets.text_mask)
        x_t = time[:, None, None] * noise + (1 - time[:, None, None]) * targets.actions
        prefix = model.prefill(obs, text)
        cached = model.denoise_step(prefix, x_t, time)
        uncached = model.velocity(obs, x_t, time, text)
    expected = (cached - (noise - targets.actions)) ** 2
    torch.testing.assert_close(flow, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-4)


def test_the_text_changes_the_sampled_actions():
    model = recipe_model().eval()
    obs = make_observation(model.config)
    targets = targets_for(model)
    noise = torch.randn(targets.actions.shape, generator=torch.Generator().manual_seed(2))
    plain = model.sample_actions(obs, noise=noise, num_steps=2)
    one = model.sample_actions(obs, noise=noise, num_steps=2, text=(targets.text_tokens, targets.text_mask))
    other = targets.text_tokens.flip(1)
    two = model.sample_actions(obs, noise=noise, num_steps=2, text=(other, targets.text_mask.flip(1)))
    assert not torch.allclose(plain, one) and not torch.allclose(one, two)
