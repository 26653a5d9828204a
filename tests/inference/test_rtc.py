"""Real-time chunking on a tiny flow model: the soft mask, the clipped weight, the true VJP, and
guided chunks that continue the previous chunk where plain chunks jump."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import make_observation, randomize_
from vlaflow.inference import DELAY_KEY, PREV_ACTIONS_KEY
from vlaflow.inference.policy import Policy
from vlaflow.inference.rtc import (
    RTCConfig,
    data_estimate_vjp,
    guidance_weight,
    guided_velocity,
    sample_guided,
    soft_mask,
)
from vlaflow.models import VLA, preset

H, D, DELAY, OVERLAP = 8, 4, 2, 5


@pytest.fixture(scope="module")
def model() -> VLA:
    torch.manual_seed(0)
    model = VLA(preset("pi05_tiny", action_horizon=H, action_dim=D)).eval()
    randomize_(model, std=0.1)
    return model


def test_soft_mask_freezes_decays_and_stops():
    w = soft_mask(10, 2, 6)
    assert w[:2].tolist() == [1.0, 1.0] and w[6:].tolist() == [0.0] * 4
    c = (6 - 3) / (6 - 2 + 1)  # the paper's Eq. 5 at i = 3
    assert w[3].item() == pytest.approx(c * math.expm1(c) / math.expm1(1))
    assert (w[1:7].diff() < 0).all() and (w[2:6] > 0).all() and (w[2:6] < 1).all()
    with pytest.raises(ValueError, match=r"delay \(4\) <= overlap \(3"):
        soft_mask(10, 4, 3)


def test_guidance_weight_is_the_papers_in_reference_time():
    t = torch.tensor([1.0, 0.9, 0.5, 0.1])
    tau = 1 - t  # the paper's time: 0 noise, 1 data
    paper = (1 - tau) / tau * (tau**2 + (1 - tau) ** 2) / (1 - tau) ** 2
    torch.testing.assert_close(guidance_weight(t, beta=1e9), torch.where(tau > 0, paper, 1e9))
    assert guidance_weight(t, beta=3.0).tolist() == pytest.approx([3.0, 3.0, 2.0, 3.0])


def test_vjp_is_the_true_jacobian_product(model):
    """u^T d x0_hat / d x_t by one backward pass equals u^T J with J computed explicitly (not the
    Jacobian-free shortcut u, which the model's own Jacobian term makes differ)."""
    obs = make_observation(model.config, batch=1)
    with torch.no_grad():
        prefix = model.prefill(obs)
    t = torch.tensor([0.6])
    x = torch.randn(1, H, D, generator=torch.Generator().manual_seed(1))
    u = torch.randn(1, H, D, generator=torch.Generator().manual_seed(2))

    def velocity(x_t, time):
        return model.denoise_step(prefix, x_t, time)

    _, vjp = data_estimate_vjp(velocity, x, t, lambda x0_hat: u)
    with torch.enable_grad():
        jacobian = torch.autograd.functional.jacobian(lambda y: y - t * velocity(y, t), x)
    explicit = torch.einsum("bhd,bhdcij->cij", u, jacobian)
    torch.testing.assert_close(vjp[0], explicit[0], atol=1e-5, rtol=1e-4)
    assert (vjp - u).abs().max() > 1e-3  # the shortcut would give u itself
    eps = 1e-2  # and a central finite difference agrees along a direction
    step = torch.randn(1, H, D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ends = [(x + e * step) - t * velocity(x + e * step, t) for e in (eps, -eps)]
    assert (u * (ends[0] - ends[1]) / (2 * eps)).sum().item() == pytest.approx(
        (vjp * step).sum().item(), rel=1e-2
    )


def test_guided_chunks_join_the_previous_chunk(model):
    obs = make_observation(model.config, batch=1)
    noise = torch.randn(1, H, D, generator=torch.Generator().manual_seed(4))
    ramp = torch.linspace(-0.8, 0.8, H + 3)[:, None].repeat(1, D)  # a smooth previous chunk
    previous = ramp[3:]  # its not-yet-executed actions, re-indexed from the new chunk's start
    target = torch.zeros(1, H, D)
    target[0, :OVERLAP] = previous[:OVERLAP]
    weights = soft_mask(H, DELAY, OVERLAP)[None, :, None].expand(1, H, D).contiguous()
    plain = model.sample_actions(obs, noise=noise, num_steps=10)
    guided = sample_guided(model, obs, noise, 10, target, weights, [DELAY], RTCConfig())
    torch.testing.assert_close(guided[0, :DELAY], target[0, :DELAY])  # the frozen prefix
    # the first action the new chunk executes continues the last one the old chunk executed
    joint = (guided[0, DELAY] - target[0, DELAY - 1]).norm()
    jump = (plain[0, DELAY] - target[0, DELAY - 1]).norm()
    ramp_step = (ramp[1] - ramp[0]).norm()
    assert joint < 2 * ramp_step < jump / 2, (joint, ramp_step, jump)
    # in the decaying part of the mask the chunk is still pulled toward the previous one
    inpainted = slice(DELAY, OVERLAP)
    assert (guided - target)[0, inpainted].norm() < (plain - target)[0, inpainted].norm()
    # the frozen prefix is reached by the guidance itself, before it is copied in exactly
    with torch.no_grad():
        prefix = model.prefill(obs)
        field = guided_velocity(lambda x, t: model.denoise_step(prefix, x, t), target, weights, 10.0)
        raw = model.integrate(field, noise, 10)
    frozen = slice(0, DELAY)
    assert (raw - target)[0, frozen].norm() < 0.1 * (plain - target)[0, frozen].norm()


def test_policy_freezes_the_prefix_in_robot_units(tmp_path):
    from vlaflow.bench.serve import example_observation, tiny_checkpoint

    checkpoint = tiny_checkpoint(tmp_path / "tiny")
    plain = Policy.load(checkpoint, num_steps=2)
    guided = Policy.load(checkpoint, num_steps=2, rtc=RTCConfig())
    obs = example_observation(plain, 32)
    raw = {"images": {k: obs[k] for k in plain.stats.cameras.values()}, "state": obs["observation.state"]}
    raw["prompt"] = obs["prompt"]
    previous = plain(raw)[4:]  # the 6 actions of a chunk not yet executed
    hinted = {**raw, PREV_ACTIONS_KEY: previous, DELAY_KEY: 3}
    np.testing.assert_allclose(guided(hinted)[:3], previous[:3], rtol=1e-4, atol=1e-4)
    # without the option the hints change nothing: both draw the same noise as a fresh policy
    fresh = Policy.load(checkpoint, num_steps=2)
    fresh(raw)
    np.testing.assert_array_equal(plain(hinted), fresh(raw))
    with pytest.raises(ValueError, match="inference_delay must be an int in"):
        guided({**raw, PREV_ACTIONS_KEY: previous, DELAY_KEY: 7})
