"""Behaviour of the model: cached sampling, training signal, adaRMS, knowledge insulation, errors."""

from __future__ import annotations

import pytest
import torch

from helpers import make_observation, randomize_, relative_error
from vlaflow import VLA, preset
from vlaflow.models.gemma import AdaRMSNorm, _rms_normalize
from vlaflow.models.targets import Targets


@pytest.fixture(params=["pi0_tiny", "pi05_tiny"])
def model(request):
    m = VLA(preset(request.param)).eval()
    randomize_(m)
    return m


def test_cached_sampling_equals_recomputing_every_step(model):
    obs = make_observation(model.config, batch=3)
    noise = torch.randn(3, model.config.action_horizon, model.config.action_dim)
    cached = model.sample_actions(obs, noise=noise, num_steps=5)
    recomputed = model.sample_actions(obs, noise=noise, num_steps=5, use_cache=False)
    assert relative_error(cached, recomputed) < 1e-5


def test_actions_depend_on_images_prompt_and_state_but_not_padding(model):
    config = model.config
    obs = make_observation(config, batch=2)
    noise = torch.randn(2, config.action_horizon, config.action_dim)
    base = model.sample_actions(obs, noise=noise, num_steps=2)

    def changed(mutate) -> bool:
        o = make_observation(config, batch=2)
        mutate(o)
        return not torch.allclose(model.sample_actions(o, noise=noise, num_steps=2), base, atol=1e-6)

    assert changed(lambda o: o.images[config.image_keys[0]].mul_(-1))
    assert changed(lambda o: o.tokenized_prompt[:, :2].add_(1))
    if not config.pi05:  # pi0.5 reads the state only through the prompt
        assert changed(lambda o: o.state.add_(1.0))
    # Padding tokens and a masked camera cannot influence anything.
    assert not changed(lambda o: o.tokenized_prompt.add_(~o.tokenized_prompt_mask * 7))
    last = config.image_keys[-1]
    assert not changed(lambda o: o.images[last][1:].mul_(-1))


def test_channels_first_images_give_the_same_actions(model):
    config = model.config
    hwc = make_observation(config, batch=2)
    chw = make_observation(config, batch=2)
    chw.images = {k: v.permute(0, 3, 1, 2).contiguous() for k, v in hwc.images.items()}
    noise = torch.randn(2, config.action_horizon, config.action_dim)
    assert (
        relative_error(model.sample_actions(hwc, noise=noise), model.sample_actions(chw, noise=noise)) < 1e-5
    )


def test_loss_shape_and_overfitting_one_batch():
    torch.manual_seed(0)
    model = VLA(preset("pi05_tiny", action_horizon=8))
    obs = make_observation(model.config, batch=4)
    actions = torch.randn(4, 8, model.config.action_dim) * 0.5
    noise, time = torch.randn_like(actions), torch.rand(4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = model.compute_loss(obs, actions, noise=noise, time=time)
        assert loss.shape == (4, 8, model.config.action_dim)
        optimizer.zero_grad()
        loss.mean().backward()
        optimizer.step()
        losses.append(loss.mean().item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.2 * first, (first, last)


def test_adarms_starts_as_identity():
    model = VLA(preset("pi05_tiny"))
    norms = [m for m in model.modules() if isinstance(m, AdaRMSNorm)]
    assert len(norms) == 2 * model.config.expert.depth + 1
    x, cond = torch.randn(2, 5, model.config.expert.width), torch.randn(2, model.config.expert.width)
    for norm in norms:
        out, gate = norm(x, cond)
        assert torch.equal(out, _rms_normalize(x, norm.eps))
        assert torch.equal(gate, torch.zeros_like(gate))


def _parameters(model: VLA, expert: int) -> list[torch.nn.Parameter]:
    t = model.transformer
    modules = [t.norms[expert], *(layer.experts[expert] for layer in t.layers)] + (
        [t.embed] if expert == 0 else []
    )
    return [p for m in modules for p in m.parameters()]


def _grad_norms(model: VLA, insulate: bool) -> tuple[float, float]:
    model = VLA(model.config.replace(knowledge_insulation=insulate))
    randomize_(model)
    obs = make_observation(model.config, batch=2)
    actions = torch.randn(2, model.config.action_horizon, model.config.action_dim)
    model.compute_loss(obs, actions).mean().backward()
    vlm = sum(p.grad.norm() ** 2 for p in _parameters(model, 0) if p.grad is not None)
    expert = sum(p.grad.norm() ** 2 for p in _parameters(model, 1) if p.grad is not None)
    return float(vlm), float(expert)


def test_knowledge_insulation_stops_flow_gradients_into_the_vlm(model):
    vlm, expert = _grad_norms(model, insulate=False)
    assert vlm > 0 and expert > 0
    vlm, expert = _grad_norms(model, insulate=True)
    assert vlm == 0 and expert > 0


def test_knowledge_insulation_does_not_change_the_forward(model):
    insulated = VLA(model.config.replace(knowledge_insulation=True)).eval()
    insulated.load_state_dict(model.state_dict())
    obs = make_observation(model.config)
    noise = torch.randn(2, model.config.action_horizon, model.config.action_dim)
    assert torch.equal(model.sample_actions(obs, noise=noise), insulated.sample_actions(obs, noise=noise))


def test_text_logits_use_the_tied_embedding(model):
    hidden = torch.randn(2, 3, model.config.vlm.width)
    logits = model.text_logits(hidden)
    assert logits.shape == (2, 3, model.config.vocab_size)
    assert torch.allclose(logits, hidden @ model.transformer.embed.weight.T, atol=1e-5)


def test_bfloat16_compute_runs_and_stays_close(model):
    obs = make_observation(model.config)
    noise = torch.randn(2, model.config.action_horizon, model.config.action_dim)
    full = model.sample_actions(obs, noise=noise)
    half = VLA(model.config).eval()
    half.load_state_dict(model.state_dict())
    half.set_compute_dtype(torch.bfloat16)
    assert half.transformer.layers[0].experts[0].attn_norm.scale.dtype == torch.float32
    assert half.transformer.layers[0].experts[0].q_proj.weight.dtype == torch.bfloat16
    out = half.sample_actions(obs, noise=noise)
    assert out.dtype == torch.float32
    assert relative_error(out, full) < 0.1


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda o: setattr(o, "state", o.state[:, :4]), "Observation.state"),
        (lambda o: setattr(o, "tokenized_prompt", o.tokenized_prompt[:, :5]), "Observation.tokenized_prompt"),
        (
            lambda o: setattr(o, "tokenized_prompt_mask", o.tokenized_prompt_mask.long()),
            "tokenized_prompt_mask",
        ),
        (lambda o: o.images.pop("base_0_rgb"), "missing ['base_0_rgb']"),
        (lambda o: o.images.update(base_0_rgb=o.images["base_0_rgb"][:, :50]), "images['base_0_rgb']"),
        (
            lambda o: o.images.update(base_0_rgb=o.images["base_0_rgb"].to(torch.uint8)),
            "images['base_0_rgb']",
        ),
        (
            lambda o: o.image_masks.update(base_0_rgb=torch.ones(3, dtype=torch.bool)),
            "image_masks['base_0_rgb']",
        ),
    ],
)
def test_bad_observations_fail_with_the_field_named(mutate, field):
    model = VLA(preset("pi0_tiny"))
    obs = make_observation(model.config)
    mutate(obs)
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("(", r"\(")):
        model.sample_actions(obs)


def test_bad_actions_and_noise_fail_clearly():
    model = VLA(preset("pi0_tiny"))
    obs = make_observation(model.config)
    with pytest.raises(ValueError, match="actions: expected"):
        model.compute_loss(obs, torch.zeros(2, 3, 32))
    with pytest.raises(ValueError, match="noise: expected"):
        model.sample_actions(obs, noise=torch.zeros(2, 3, 32))
    with pytest.raises(ValueError, match="num_steps"):
        model.sample_actions(obs, num_steps=0)


@pytest.mark.parametrize("name", ["pi05_tiny", "pi0_tiny"])
def test_several_flow_draws_in_one_pass_equal_separate_passes(name):
    """K (noise, time) draws per sample in one pass (the prefix once, K independent suffixes) give
    exactly the mean of K single-draw passes, with text and FAST targets in the same pass."""
    model = VLA(preset(name, action_horizon=4))
    randomize_(model)
    obs = make_observation(model.config, batch=2)
    g = torch.Generator().manual_seed(1)
    actions = torch.randn(2, 4, model.config.action_dim, generator=g)
    noise = torch.randn(2, 3, 4, model.config.action_dim, generator=g)
    time = torch.rand(2, 3, generator=g)
    text = torch.randint(0, 100, (2, 5), generator=g)
    targets = Targets(
        text,
        torch.ones_like(text, dtype=torch.bool),
        torch.ones_like(text, dtype=torch.bool),
        actions=actions,
    )
    together = model.compute_losses(obs, targets, noise=noise, time=time)
    separate = [model.compute_losses(obs, targets, noise=noise[:, k], time=time[:, k]) for k in range(3)]
    expected = torch.stack([s.flow for s in separate]).mean(0)
    assert together.flow.shape == (2, 4, model.config.action_dim)
    assert relative_error(together.flow, expected) < 1e-5
    torch.testing.assert_close(together.text, separate[0].text)  # the VLM does not see the suffixes
