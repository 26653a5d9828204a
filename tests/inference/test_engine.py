"""The sampling engine gives the eager path's actions: uncompiled, compiled, and as CUDA graphs."""

from __future__ import annotations

import pytest
import torch

from helpers import make_observation, randomize_, relative_error
from vlaflow import VLA, preset
from vlaflow.inference.engine import SamplingEngine, auto_dtype, has_native_bf16
from vlaflow.models.config import GemmaConfig, SiglipConfig


def tiny(name: str, **overrides) -> VLA:
    model = VLA(preset(name, **overrides)).eval()
    randomize_(model)
    return model


def micro(name: str) -> VLA:
    """The smallest model with every part (one layer each, one 28 px camera), to compile quickly."""
    config = preset(name, action_horizon=4, image_keys=("base_0_rgb", "left_wrist_0_rgb"), max_token_len=8)
    config = config.replace(
        vision=SiglipConfig(image_size=28, patch_size=14, width=32, depth=1, mlp_dim=64, num_heads=2),
        vlm=GemmaConfig(width=32, depth=1, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=16),
        expert=GemmaConfig(width=16, depth=1, mlp_dim=32, num_heads=2, num_kv_heads=1, head_dim=16),
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
