"""The pi0.5 training sequence beyond the flow head: text and FAST targets, their cross-entropy,
knowledge insulation, a VLM-only (pi0-FAST) configuration, and KV-cached decoding."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import full_recomputation_logits, make_observation, randomize_
from vlaflow import VLA, preset
from vlaflow.models import Targets
from vlaflow.models.segments import Kind, Segment, build_layout

FAST_VOCAB = 16


def recipe_model(**overrides) -> VLA:
    config = preset("pi05_tiny", action_horizon=4, max_token_len=12, fast_vocab_size=FAST_VOCAB, **overrides)
    torch.manual_seed(0)
    model = VLA(config)
    randomize_(model, std=0.1)
    return model


def targets_for(model: VLA, batch: int = 2, seed: int = 0, actions: bool = True) -> Targets:
    g = torch.Generator().manual_seed(seed)
    c = model.config
    text = torch.randint(3, 200, (batch, 3), generator=g)
    text_mask = torch.tensor([[True, True, False], [True, True, True]])[:batch]
    fast = c.vocab_size + torch.randint(0, FAST_VOCAB, (batch, 4), generator=g)
    fast_mask = torch.tensor([[True, True, True, True], [True, True, False, False]])[:batch]
    return Targets(
        text_tokens=text,
        text_mask=text_mask,
        text_loss=text_mask.clone(),
        fast_tokens=fast,
        fast_mask=fast_mask,
        fast_loss=fast_mask.clone(),
        actions=torch.randn(batch, c.action_horizon, c.action_dim, generator=g) if actions else None,
        action_mask=torch.ones(batch, c.action_horizon, c.action_dim, dtype=torch.bool) if actions else None,
    )


def flow_inputs(model: VLA, batch: int = 2):
    g = torch.Generator().manual_seed(3)
    c = model.config
    return torch.randn(batch, c.action_horizon, c.action_dim, generator=g), torch.tensor([0.3, 0.8])[:batch]


def test_losses_have_one_value_per_target_element():
    model = recipe_model()
    targets = targets_for(model)
    noise, time = flow_inputs(model)
    losses = model.compute_losses(make_observation(model.config), targets, noise=noise, time=time)
    assert losses.text.shape == (2, 3) and losses.fast.shape == (2, 4)
    assert losses.flow.shape == (2, 4, model.config.action_dim)
    assert ((losses.text > 0) == targets.text_loss).all() and ((losses.fast > 0) == targets.fast_loss).all()


def test_cross_entropy_only_where_counted_and_unchanged_there():
    """Tokens without a loss get 0 and skip the head; the counted ones keep their values."""
    model = recipe_model()
    targets = targets_for(model)
    noise, time = flow_inputs(model)
    obs = make_observation(model.config)
    full = model.compute_losses(obs, targets, noise=noise, time=time)
    text_loss = targets.text_loss.clone()
    text_loss[0, 0] = False
    fast_loss = targets.fast_loss.clone()
    fast_loss[1, 1:] = False
    fewer = dataclasses.replace(targets, text_loss=text_loss, fast_loss=fast_loss)
    part = model.compute_losses(obs, fewer, noise=noise, time=time)
    for got, want, counted in ((part.text, full.text, text_loss), (part.fast, full.fast, fast_loss)):
        torch.testing.assert_close(got[counted], want[counted], rtol=1e-6, atol=1e-6)
        assert (got[~counted] == 0).all()


def test_padding_and_other_samples_leave_a_samples_losses_unchanged():
    """Padding tokens and other samples contribute nothing to a sample's losses; the expert reads
    the text target but never the FAST tokens."""
    model = recipe_model()
    obs = make_observation(model.config)
    noise, time = flow_inputs(model)
    base = model.compute_losses(obs, targets_for(model), noise=noise, time=time)

    padded = targets_for(model)
    padded.text_tokens[0, 2] = 7  # a padding token of sample 0
    padded.fast_tokens[1, 2:] = model.config.vocab_size  # padding tokens of sample 1
    other = model.compute_losses(obs, padded, noise=noise, time=time)
    assert torch.allclose(base.text[0, :2], other.text[0, :2], atol=1e-6)
    assert torch.allclose(base.fast[1, :2], other.fast[1, :2], atol=1e-6)
    assert torch.allclose(base.fast[0], other.fast[0], atol=1e-6)
    assert torch.allclose(base.flow, other.flow, atol=1e-6)

    text = targets_for(model)
    text.text_tokens[1] = torch.tensor([11, 12, 13])  # sample 1's subtask
    other = model.compute_losses(obs, text, noise=noise, time=time)
    assert torch.allclose(base.text[0], other.text[0], atol=1e-6)
    assert torch.allclose(base.flow[0], other.flow[0], atol=1e-6)
    assert not torch.allclose(base.flow[1], other.flow[1], atol=1e-6)

    fast = targets_for(model)
    fast.fast_tokens[:, :2] = model.config.vocab_size + torch.tensor([1, 2])
    assert torch.allclose(model.compute_losses(obs, fast, noise=noise, time=time).flow, base.flow, atol=1e-6)


def test_target_ce_equals_an_explicit_next_token_computation():
    model = recipe_model()
    obs = make_observation(model.config, batch=1)
    targets = targets_for(model, batch=1, actions=False)
    losses = model.compute_losses(obs, targets)
    # Recompute: real tokens only, each predicted from the real token before it.
    prefix, segments = model.embed_prefix(obs)
    tokens = torch.cat([targets.text_tokens[:, :2], targets.fast_tokens], dim=1)
    embedded = model.transformer.embed_tokens(tokens)
    segments.append(Segment(Kind.TEXT_TARGET, torch.ones(1, tokens.shape[1], dtype=torch.bool)))
    layout = build_layout(segments)
    hidden, _ = model.transformer(
        [torch.cat([prefix, embedded], 1), None], layout.mask, layout.positions, [None, None]
    )
    last_prompt = int(obs.tokenized_prompt_mask[0].sum()) - 1 + prefix.shape[1] - model.config.max_token_len
    start = prefix.shape[1]
    rows = [last_prompt, *range(start, start + tokens.shape[1] - 1)]
    logits = model.text_logits(hidden[0, rows])
    expected = torch.nn.functional.cross_entropy(logits, tokens[0], reduction="none")
    got = torch.cat([losses.text[0, :2], losses.fast[0]])
    assert torch.allclose(got, expected, atol=1e-5)


def _grads(model: VLA, loss: torch.Tensor) -> dict[str, float]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: 0.0 if p.grad is None else float(p.grad.abs().max()) for n, p in model.named_parameters()}


def _is_vlm(name: str) -> bool:
    return name.startswith(("vision", "transformer.embed", "transformer.norms.0")) or ".experts.0." in name


@pytest.mark.parametrize("insulate", [True, False])
def test_knowledge_insulation_gradients(insulate):
    model = recipe_model(knowledge_insulation=insulate)
    obs = make_observation(model.config)
    noise, time = flow_inputs(model)
    targets = targets_for(model)
    flow = _grads(model, model.compute_losses(obs, targets, noise=noise, time=time).flow.mean())
    vlm_flow = {n: g for n, g in flow.items() if _is_vlm(n)}
    expert_flow = {n: g for n, g in flow.items() if ".experts.1." in n}
    assert max(expert_flow.values()) > 0
    if insulate:
        assert all(g == 0.0 for g in vlm_flow.values()), [n for n, g in vlm_flow.items() if g]
    else:
        assert sum(g > 0 for g in vlm_flow.values()) > len(vlm_flow) // 2
    fast = _grads(model, model.compute_losses(obs, targets, noise=noise, time=time).fast.mean())
    assert max(g for n, g in fast.items() if n.startswith("vision")) > 0
    assert max(g for n, g in fast.items() if ".experts.0." in n) > 0
    assert all(g == 0.0 for n, g in fast.items() if ".experts.1." in n or n.startswith("action_"))


def test_a_vlm_only_model_has_no_expert_and_refuses_the_flow():
    model = recipe_model(expert=None)
    assert not any(
        ".experts.1." in n or n.startswith(("action_", "time_mlp")) for n, _ in model.named_parameters()
    )
    assert model.transformer.embed.weight.shape[0] == model.config.vocab_size + FAST_VOCAB
    obs = make_observation(model.config)
    losses = model.compute_losses(obs, targets_for(model, actions=False))
    assert losses.flow is None and losses.fast.shape == (2, 4)
    with pytest.raises(ValueError, match="needs an action expert"):
        model.sample_actions(obs)
    with pytest.raises(ValueError, match="needs an action expert"):
        model.compute_losses(obs, targets_for(model))
    with pytest.raises(ValueError, match="knowledge_insulation needs an action expert"):
        preset("pi05_tiny", expert=None, knowledge_insulation=True)


@pytest.mark.parametrize("expert", [True, False])
def test_cached_decoding_equals_full_recomputation(expert):
    """Prompts of different lengths (padding at different places): every decoded token equals the
    argmax of a full recomputation, i.e. the cache and RoPE positions continue exactly."""
    model = recipe_model(**({} if expert else {"expert": None})).eval()
    obs = make_observation(model.config, batch=3, seed=4)
    assert len(set(obs.tokenized_prompt_mask.sum(1).tolist())) == 3
    forced = [5, 6]
    out = model.generate(obs, max_new_tokens=5, eos_id=1, forced=forced, keep_logits=True)
    tokens, lengths = out.tokens, out.lengths
    assert tokens.shape[0] == 3 and tokens.shape[1] <= 5
    sequence = torch.tensor([forced] * 3)
    for k in range(tokens.shape[1]):
        with torch.no_grad():
            logits = full_recomputation_logits(model, obs, sequence)
        alive = lengths >= k  # samples that had not stopped before step k
        assert torch.equal(logits.argmax(-1)[alive], tokens[alive, k]), k
        assert torch.allclose(logits[alive], out.logits[alive, k], atol=1e-5), k
        sequence = torch.cat([sequence, tokens[:, k : k + 1]], 1)


def test_decoding_stops_per_sample_at_eos_and_pads():
    model = recipe_model(expert=None).eval()
    obs = make_observation(model.config, batch=2)
    with torch.no_grad():
        first = full_recomputation_logits(model, obs, torch.zeros(2, 0, dtype=torch.int64)).argmax(-1)
    out = model.generate(obs, max_new_tokens=4, eos_id=int(first[0]))
    tokens, lengths = out.tokens, out.lengths
    assert lengths[0] == 0 and (tokens[0, 1:] == 0).all()
    if int(first[1]) != int(first[0]):
        assert lengths[1] >= 1
