"""The analytic FLOP counts against torch's FlopCounterMode, exactly, on real forward passes.

How the counter counts attention: `sdpa_flop_count` charges every (query, key) pair of the
Q/K/V it is given, 2 * B * heads * Lq * Lk * (d_qk + d_v), mask or not (and grouped K/V heads
as broadcast to the query heads). `MixtureTransformer` hands SDPA only the key blocks each
expert's queries read, so the counter's rectangle is the analytic one and the two agree exactly.
On CPU, though, SDPA runs `_scaled_dot_product_flash_attention_for_cpu`, which the counter's
registry lacks (it silently counts 0): `CPU_SDPA` counts it with the formula the counter
applies to the CUDA flash kernel. The math backend is checked too; it decomposes into `bmm`s,
which the counter counts without any help.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from helpers import make_observation
from vlaflow import VLA, preset
from vlaflow.models.flops import FlopBreakdown, forward_flops, peak_flops, sampling_flops, training_step_flops

aten = torch.ops.aten
FUSED_CPU = aten._scaled_dot_product_flash_attention_for_cpu


def _same_formula_as(cuda_op: torch._ops.OpOverloadPacket):
    formula = flop_registry[cuda_op]

    def counted(*args, out_val=None, **kwargs) -> int:
        return formula(*args, out_val=out_val, **kwargs)

    counted._get_raw = True  # `formula` already reads shapes off the tensors
    return counted


CPU_SDPA = {
    FUSED_CPU: _same_formula_as(aten._scaled_dot_product_flash_attention),
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _same_formula_as(
        aten._scaled_dot_product_flash_attention_backward
    ),
}
BACKENDS = {"fused": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}

# (preset, overrides, batch, backend): every case on the kernel CPU SDPA really runs, two on math.
CASES = [
    ("pi0_tiny", {}, 1, "fused"),
    ("pi0_tiny", {}, 3, "fused"),
    ("pi0_tiny", {}, 3, "math"),
    ("pi05_tiny", {}, 1, "fused"),
    ("pi05_tiny", {}, 3, "fused"),
    ("pi05_tiny", {}, 3, "math"),
    ("pi0_tiny", {"action_horizon": 7, "max_token_len": 20, "image_keys": ("top", "wrist")}, 3, "fused"),
    ("pi05_tiny", {"action_horizon": 5, "max_token_len": 33, "image_keys": ("top",)}, 1, "fused"),
]


def count(fn, backend: str) -> dict[str, dict]:
    """FlopCounterMode's per-module counts of `fn()`, after checking `backend` really ran."""
    with sdpa_kernel(BACKENDS[backend]), FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as counter:
        fn()
    counts = counter.get_flop_counts()
    assert (FUSED_CPU in counts["Global"]) == (backend == "fused")
    return counts


def total(counts: dict[str, dict], module: str = "Global") -> int:
    return sum(counts[module].values())


def build(name: str, overrides: dict, batch: int):
    config = preset(name, **overrides)
    model = VLA(config).eval()
    noise = torch.randn(batch, config.action_horizon, config.action_dim)
    return config, model, make_observation(config, batch), noise


@pytest.mark.parametrize(("name", "overrides", "batch", "backend"), CASES)
def test_forward_matches_flop_counter(name, overrides, batch, backend):
    config, model, obs, noise = build(name, overrides, batch)
    with torch.no_grad():
        counts = count(lambda: model.velocity(obs, noise, torch.rand(batch)), backend)
    expected = forward_flops(config, batch_size=batch)
    assert total(counts) == expected.total
    # The counter names the modules VLA.velocity calls directly by class; the top-level
    # nn.Linear ones are the projector and the flow heads.
    assert total(counts, "SiglipEncoder") == expected.vision
    assert total(counts, "MixtureTransformer") == expected.vlm + expected.expert
    assert total(counts, "Linear") == expected.projector + expected.heads


@pytest.mark.parametrize(("name", "overrides", "batch", "backend"), CASES)
def test_cached_sampling_matches_flop_counter(name, overrides, batch, backend):
    config, model, obs, noise = build(name, overrides, batch)
    steps = 2
    counts = count(lambda: model.sample_actions(obs, noise=noise, num_steps=steps), backend)
    expected = sampling_flops(config, batch_size=batch, num_steps=steps)
    assert total(counts) == expected.total
    # VLA.condition computes each step's adaRMS modulations (the expert's norms' linears) before
    # the transformer's forward, so the counter files them under the norms, outside its total.
    modulations = sum(total(counts, key) for key in counts if key.endswith(".modulation"))
    assert (modulations > 0) == config.pi05
    assert total(counts, "MixtureTransformer") + modulations == expected.vlm + expected.expert
    # The prefix pass alone is the VLM's share (its queries read the prefix only), which pins
    # the split of the transformer's FLOPs between the two experts.
    prefill = count(lambda: model.prefill(obs), backend)
    assert total(prefill, "MixtureTransformer") == expected.vlm
    assert expected.expert == steps * forward_flops(config, batch_size=batch).expert


@pytest.mark.parametrize("name", ["pi0_tiny", "pi05_tiny"])
def test_training_step_is_three_forwards_less_the_input_gradients_autograd_skips(name):
    batch = 2
    config, model, obs, noise = build(name, {"image_keys": ("top",)}, batch)
    model.train()
    actions = torch.randn_like(noise)
    forward = forward_flops(config, batch_size=batch)
    step = training_step_flops(config, batch_size=batch)
    assert step.total == 3 * forward.total
    # 3 x forward also charges input gradients autograd never computes, those of the layers that
    # read data: the patch embedding (images), action_in_proj (noisy actions), and time_mlp_in
    # (time features, pi0.5) or state_proj (state, pi0).
    v, w, dim = config.vision, config.expert.width, config.action_dim
    images = batch * len(config.image_keys)
    skipped = 2 * images * v.num_patches * 3 * v.patch_size**2 * v.width
    skipped += 2 * batch * config.action_horizon * dim * w
    skipped += 2 * batch * w * w if config.pi05 else 2 * batch * dim * w

    def step_fn() -> None:
        model.compute_loss(obs, actions, noise=noise).mean().backward()

    assert total(count(step_fn, "math")) == step.total - skipped
    # The counter charges a fused attention backward 2.5 x its forward (it recomputes Q K^T);
    # the MFU convention counts 2 x, like any matmul.
    fused = count(step_fn, "fused")["Global"]
    attention = fused[FUSED_CPU]
    assert fused[aten._scaled_dot_product_flash_attention_for_cpu_backward] == 2.5 * attention
    assert sum(fused.values()) == step.total - skipped + attention / 2


@pytest.mark.parametrize("name", ["pi0", "pi05"])
def test_reference_sizes_match_flop_counter_on_meta_device(name):
    """The full-size models, shapes only: the meta device runs SDPA's math path."""
    config = preset(name)
    with torch.device("meta"):
        model = VLA(config)
    obs = make_observation(config, batch=1).to("meta")
    noise = torch.zeros(1, config.action_horizon, config.action_dim, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.velocity(obs, noise, torch.zeros(1, device="meta"))
    assert counter.get_total_flops() == forward_flops(config, batch_size=1).total


def test_options_change_what_they_say():
    config = preset("pi05")
    base = forward_flops(config, batch_size=2)
    assert forward_flops(config, batch_size=4).total == 2 * base.total
    fewer = forward_flops(config, batch_size=2, cameras=2, prefix_text_tokens=10)
    assert fewer.vision == base.vision * 2 / 3 and fewer.vlm < base.vlm and fewer.heads == base.heads
    logits = forward_flops(config, batch_size=2, text_logit_tokens=5)
    assert logits.text_head == 2 * 2 * 5 * config.vlm.width * config.vocab_size
    assert logits.total == base.total + logits.text_head
    sampling = sampling_flops(config, batch_size=2, num_steps=10)
    assert sampling.vlm == base.vlm and sampling.expert == 10 * base.expert
    assert (base * 2 + FlopBreakdown(heads=1.0)).heads == 2 * base.heads + 1
    with pytest.raises(ValueError, match="num_steps"):
        sampling_flops(config, batch_size=1, num_steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        forward_flops(config, batch_size=0)


@pytest.mark.parametrize(
    ("device_name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.5e12),
        ("NVIDIA H100 PCIe", 756.5e12),
        ("NVIDIA H100 NVL", 835.5e12),
        ("NVIDIA H200", 989.5e12),
        ("NVIDIA H200 NVL", 835.5e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA L40S", 362.05e12),
        ("NVIDIA A10G", 125e12),
        ("NVIDIA GeForce RTX 4090", 165.2e12),
        ("Tesla T4", None),
    ],
)
def test_peak_flops_by_device_name(monkeypatch, device_name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: device_name)
    cuda = torch.device("cuda")
    assert peak_flops(cuda, torch.bfloat16) == peak
    assert peak_flops(cuda, torch.float16) == peak


def test_peak_flops_float32_follows_the_matmul_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-40GB")
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "highest")
    assert peak_flops(cuda, torch.float32) == 19.5e12
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    assert peak_flops(cuda, torch.float32) == 156e12
    assert peak_flops(cuda, torch.float64) is None
    assert peak_flops(torch.device("cpu"), torch.float32) is None
