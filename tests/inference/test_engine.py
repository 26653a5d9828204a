"""The sampling engine gives the eager path's actions, and the decoding engine the eager path's
tokens: uncompiled, compiled, and as CUDA graphs. Decoding's fixed-shape step is checked against
recomputing the whole sequence."""

from __future__ import annotations

import pytest
import torch

from helpers import full_recomputation_logits, make_observation, randomize_, relative_error
from vlaflow import VLA, preset
from vlaflow.inference.engine import DecodingEngine, SamplingEngine, auto_dtype, has_native_bf16
from vlaflow.models.config import GemmaConfig, SiglipConfig


def tiny(name: str, **overrides) -> VLA:
    model = VLA(preset(name, **overrides)).eval()
    randomize_(model)
    return model


def micro(name: str) -> VLA:
    """The smallest model with every part of the preset (one layer each, 28 px cameras), to
    compile quickly."""
    config = preset(name, action_horizon=4, image_keys=("base_0_rgb", "left_wrist_0_rgb"), max_token_len=8)
    expert = GemmaConfig(width=16, depth=1, mlp_dim=32, num_heads=2, num_kv_heads=1, head_dim=16)
    config = config.replace(
        vision=SiglipConfig(image_size=28, patch_size=14, width=32, depth=1, mlp_dim=64, num_heads=2),
        vlm=GemmaConfig(width=32, depth=1, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=16),
        expert=None if config.expert is None else expert,
    )
    model = VLA(config).eval()
    randomize_(model)
    return model


def inputs(model: VLA, batch: int, seed: int = 0):
    c = model.config
    noise = torch.randn(batch, c.action_horizon, c.action_dim, generator=torch.Generator().manual_seed(seed))
    return make_observation(c, batch=batch, seed=seed), noise


@pytest.mark.parametrize("name", ["pi0_tiny", "pi05_tiny"])
def test_engine_equals_eager_sampling_in_float32(name):
    model = tiny(name)
    engine = SamplingEngine(model, num_steps=4, compile=False, dtype=None)
    for batch, seed in ((2, 0), (3, 1), (2, 2)):  # padding and a masked camera in every batch
        obs, noise = inputs(model, batch, seed)
        expected = model.sample_actions(obs, noise=noise, num_steps=4)
        assert relative_error(engine(obs, noise), expected) < 1e-5


@pytest.mark.parametrize("name", ["pi0_tiny", "pi05_tiny"])
def test_engine_in_bfloat16_is_within_the_eager_bfloat16_error(name):
    model = tiny(name)
    obs, noise = inputs(model, 2)
    exact = model.sample_actions(obs, noise=noise)
    model.set_compute_dtype(torch.bfloat16)
    eager_error = relative_error(model.sample_actions(obs, noise=noise), exact)
    engine = SamplingEngine(model, compile=False, dtype=torch.bfloat16)
    assert 0 < relative_error(engine(obs, noise), exact) < 1.5 * eager_error + 1e-4


def test_the_time_condition_is_computed_once_per_call_not_per_step(monkeypatch):
    model = tiny("pi05_tiny")
    engine = SamplingEngine(model, num_steps=5, compile=False, dtype=None)
    calls = []
    time_mlp = model.time_mlp_in.forward
    monkeypatch.setattr(model.time_mlp_in, "forward", lambda x: calls.append(x.shape) or time_mlp(x))
    engine(*inputs(model, 2))
    assert calls == [(5, model.config.expert.width)]  # every step's time in one row each


def test_compiled_engine_equals_eager_and_does_not_recompile_for_new_inputs():
    """Inductor on the CPU at the smallest size (compiling takes minutes on a loaded 2-core CPU)."""
    torch._dynamo.reset()
    model = micro("pi05_tiny")
    engine = SamplingEngine(model, num_steps=2, compile=True, dtype=None)
    for seed in (0, 1):
        obs, noise = inputs(model, 2, seed)
        with torch._dynamo.config.patch(error_on_recompile=seed > 0):
            actions = engine(obs, noise)
        assert relative_error(actions, model.sample_actions(obs, noise=noise, num_steps=2)) < 1e-5


def test_engine_checks_its_inputs_and_options():
    model = tiny("pi05_tiny")
    engine = SamplingEngine(model, compile=False, dtype=None)
    obs, noise = inputs(model, 2)
    with pytest.raises(ValueError, match=r"noise: expected \(2, 50, 32\)"):
        engine(obs, noise[:, :10])
    with pytest.raises(ValueError, match="cuda_graph=True needs the model on a CUDA device"):
        SamplingEngine(model, cuda_graph=True)
    with pytest.raises(ValueError, match="needs a model with an action expert"):
        SamplingEngine(VLA(preset("pi0fast_tiny")))
    with pytest.raises(ValueError, match="cuda_graph=True needs the model on a CUDA device"):
        DecodingEngine(model, cuda_graph=True)


def test_auto_precision_is_bfloat16_only_where_it_is_native_and_pays():
    cpu = torch.device("cpu")
    assert auto_dtype(tiny("pi05_tiny"), cpu) == torch.float32  # too narrow to gain
    dummy = VLA(preset("pi05_dummy", image_keys=("base_0_rgb",))).eval()
    assert auto_dtype(dummy, cpu) == (torch.bfloat16 if has_native_bf16(cpu) else torch.float32)
    SamplingEngine(dummy, compile=False)
    assert dummy.dtype == auto_dtype(dummy, cpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_graphs_replay_new_inputs_and_recapture_for_a_new_batch_size(compile):
    model = micro("pi05_tiny").cuda()
    engine = SamplingEngine(model, num_steps=3, compile=compile, cuda_graph=True, dtype=None)
    for batch, seed in ((2, 0), (2, 1), (3, 2), (2, 3)):
        obs, noise = inputs(model, batch, seed)
        obs, noise = obs.to("cuda"), noise.cuda()
        expected = model.sample_actions(obs, noise=noise, num_steps=3)
        assert relative_error(engine(obs, noise), expected) < 1e-5
    assert len(engine._captured) == 2


# ---- decoding ---------------------------------------------------------------------------------


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def recomputed_generation(model: VLA, obs, steps: int, eos_id: int, forced: list[int], temperature: float):
    """Tokens (B, T) and logits (B, T, V) as `VLA.generate` chooses them (with the generator seeded
    0), the logits recomputed over the whole sequence at every step, without a cache."""
    generator, b = seeded(0), obs.batch_size
    sequence = torch.tensor([forced] * b, dtype=torch.int64).reshape(b, len(forced))
    done, tokens, scores = torch.zeros(b, dtype=torch.bool), [], []
    for _ in range(steps):
        logits = full_recomputation_logits(model, obs, sequence).float()
        if temperature > 0:
            token = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)[:, 0]
        else:
            token = logits.argmax(-1)
        token = torch.where(done, 0, token)
        done |= token == eos_id
        tokens.append(token)
        scores.append(logits)
        sequence = torch.cat([sequence, token[:, None]], 1)
    return torch.stack(tokens, 1), torch.stack(scores, 1)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_fixed_shape_decoding_equals_recomputing_the_whole_sequence(temperature):
    """Prompts of three lengths, forced tokens, one sample ending before the others: each step of
    one shape (whole-cache reads, slot and position as tensors) gives the recomputed tokens and
    logits, and pads after a sample's end."""
    model = tiny("pi0fast_tiny", max_token_len=12)
    obs = make_observation(model.config, batch=3, seed=4)
    assert len(set(obs.tokenized_prompt_mask.sum(1).tolist())) == 3
    forced, steps = [5, 6], 6
    # Sampled tokens differ step to step; sample 1 ends at step 3 on the token it samples there.
    eos_id = int(recomputed_generation(model, obs, steps, -1, forced, 1.0)[0][1, 3])
    tokens, logits = recomputed_generation(model, obs, steps, eos_id, forced, temperature)
    out = model.generate(
        obs,
        max_new_tokens=steps,
        eos_id=eos_id,
        forced=forced,
        temperature=temperature,
        generator=seeded(0),
        keep_logits=True,
    )
    if temperature > 0:
        assert out.lengths.tolist() == [6, 3, 6] and (out.tokens[1, 4:] == 0).all()
    assert torch.equal(out.tokens, tokens[:, : out.tokens.shape[1]])
    alive = torch.cat([torch.ones(3, 1, dtype=torch.bool), (tokens != eos_id).cummin(1).values], 1)
    alive = alive[:, : out.tokens.shape[1]]  # the steps before each sample's end
    assert (out.logits - logits[:, : out.tokens.shape[1]])[alive].abs().max() < 1e-5


def test_compiled_decoding_gives_the_eager_tokens_and_logits_without_recompiling():
    """Inductor on the CPU at the smallest size (about 30 s to compile on a loaded 2-core CPU):
    one graph serves every step of every generation of one shape, greedy or sampled."""
    torch._dynamo.reset()
    model = micro("pi0fast_tiny")
    engine = DecodingEngine(model, compile=True)
    options = {"max_new_tokens": 6, "forced": [5], "keep_logits": True}
    obs = make_observation(model.config, batch=3, seed=4)
    eos_id = int(model.generate(obs, eos_id=-1, temperature=1.0, generator=seeded(0), **options).tokens[1, 3])
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed, temperature in ((4, 1.0), (4, 0.0), (5, 1.0)):
            obs = make_observation(model.config, batch=3, seed=seed)
            run = {"eos_id": eos_id, "temperature": temperature, **options}
            compiled = engine(obs, generator=seeded(0), **run)
            eager = model.generate(obs, generator=seeded(0), **run)
            assert torch.equal(compiled.tokens, eager.tokens)
            assert torch.equal(compiled.lengths, eager.lengths)
            assert (compiled.logits - eager.logits).abs().max() < 1e-5
            if seed == 4 and temperature > 0:
                assert compiled.lengths[1] == 3 and compiled.lengths.max() == 6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("compile", [False, True])
def test_decoding_cuda_graphs_replay_new_generations_and_recapture_for_a_new_shape(compile):
    model = micro("pi0fast_tiny").cuda()
    engine = DecodingEngine(model, compile=compile, cuda_graph=True)
    for batch, seed in ((2, 0), (2, 1), (3, 2), (2, 3)):
        obs = make_observation(model.config, batch=batch, seed=seed).to("cuda")
        run = {"max_new_tokens": 5, "eos_id": -1, "temperature": 1.0, "keep_logits": True}
        out = engine(obs, generator=seeded(seed), **run)
        expected = model.generate(obs, generator=seeded(seed), **run)
        assert torch.equal(out.tokens, expected.tokens)
        assert (out.logits - expected.logits).abs().max() < 1e-5
    assert len(engine._captured) == 2
