"""Analytic FLOP counts of the pi0 / pi0.5 model, for model FLOPs utilisation (MFU) in benchmarks.

Counted: the matmuls the code runs, at 2 FLOPs per multiply-add: every `nn.Linear` (biases are
elementwise and not counted), SigLIP's patch-embedding convolution, and the attention score
(Q K^T) and attention-value (P V) products over exactly the key blocks `MixtureTransformer._layer`
passes to `scaled_dot_product_attention`: the VLM's queries read the VLM's keys only, the
expert's queries read every key (prefix + suffix); where the VLM's outputs are not needed
(training, prefill) its last layer stops after the Q/K/V projections. Masked-out entries inside
those blocks are computed (padding included), so they are counted. Not counted: elementwise work
(norms, activations, softmax, RoPE, residuals, time sin/cos features), well under 1% of the
matmul FLOPs at the reference sizes and not what MFU measures. These are the conventions of
`torch.utils.flop_counter.FlopCounterMode`; `tests/models/test_flops.py` checks exact agreement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

import torch

from vlaflow.models.config import GemmaConfig, VLAConfig


@dataclass(frozen=True)
class FlopBreakdown:
    """FLOPs by part of the model; `total` is their sum.

    vision: SigLIP (patch embedding, blocks) on every camera; projector: SigLIP -> VLM width;
    vlm / expert: each expert's projections, MLPs and the attention of its own queries (pi0.5's
    adaRMS modulations count as expert); heads: the flow heads (action in/out, time or
    action-time MLPs, state projection); text_head: tied-embedding logits, when asked for.
    """

    vision: float = 0.0
    projector: float = 0.0
    vlm: float = 0.0
    expert: float = 0.0
    heads: float = 0.0
    text_head: float = 0.0

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))

    def __add__(self, other: FlopBreakdown) -> FlopBreakdown:
        return FlopBreakdown(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __mul__(self, factor: float) -> FlopBreakdown:
        return FlopBreakdown(**{f.name: getattr(self, f.name) * factor for f in fields(self)})

    __rmul__ = __mul__


def _linear(tokens: int, d_in: int, d_out: int) -> float:
    return 2.0 * tokens * d_in * d_out


def _attention(queries: int, keys: int, heads: int, head_dim: int) -> float:
    """Q K^T plus P V for one sequence: each query reads `keys` keys in every query head
    (grouped K/V heads are broadcast, so they save memory, not FLOPs)."""
    return 2 * _linear(queries * heads, head_dim, keys)


def _vision(config: VLAConfig, images: int) -> float:
    v = config.vision
    p = v.num_patches
    patch_embed = _linear(p, 3 * v.patch_size**2, v.width)
    block = (
        4 * _linear(p, v.width, v.width)
        + _linear(p, v.width, v.mlp_dim)
        + _linear(p, v.mlp_dim, v.width)
        + _attention(p, p, v.num_heads, v.width // v.num_heads)
    )
    return images * (patch_embed + v.depth * block)


def _gemma(c: GemmaConfig, batch: int, queries: int, keys: int, *, finish_last_layer: bool) -> float:
    """One expert's layers over `queries` tokens per sequence, attending to `keys` keys.

    An expert whose outputs no one reads (the VLM, in `VLA.velocity` and in the prefill) stops
    its last layer after the Q/K/V projections: only its keys and values are read there.
    """
    q_width, kv_width = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    projections = queries * (_linear(1, c.width, q_width) + 2 * _linear(1, c.width, kv_width))
    rest = queries * (_linear(1, q_width, c.width) + 3 * _linear(1, c.width, c.mlp_dim))
    rest += _attention(queries, keys, c.num_heads, c.head_dim)
    finished_layers = c.depth if finish_last_layer else c.depth - 1
    return batch * (c.depth * projections + finished_layers * rest)


def _adarms(config: VLAConfig, batch: int) -> float:
    """pi0.5's expert norm modulations: two per layer plus the final norm, once per sequence."""
    if not config.pi05:
        return 0.0
    w = config.expert.width
    return (2 * config.expert.depth + 1) * _linear(batch, w, 3 * w)


def _heads(config: VLAConfig, batch: int) -> float:
    """The flow heads of one velocity evaluation (time enters per sequence in pi0.5, per action
    token in pi0)."""
    w, dim, h = config.expert.width, config.action_dim, config.action_horizon
    actions = _linear(batch * h, dim, w) + _linear(batch * h, w, dim)
    if config.pi05:
        return actions + 2 * _linear(batch, w, w)
    return actions + _linear(batch, dim, w) + _linear(batch * h, 2 * w, w) + _linear(batch * h, w, w)


def _parts(
    config: VLAConfig, batch_size: int, prefix_text_tokens: int | None, cameras: int | None
) -> tuple[FlopBreakdown, FlopBreakdown]:
    """(run once per observation: vision, projector, VLM; run per velocity: expert, heads)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cameras = len(config.image_keys) if cameras is None else cameras
    text = config.max_token_len if prefix_text_tokens is None else prefix_text_tokens
    if cameras < 0 or text < 0 or cameras + text == 0:
        raise ValueError(f"the prefix needs tokens: cameras={cameras}, prefix_text_tokens={text}")
    images = batch_size * cameras
    prefix = cameras * config.tokens_per_image + text
    suffix = config.suffix_len
    once = FlopBreakdown(
        vision=_vision(config, images),
        projector=_linear(images * config.tokens_per_image, config.vision.width, config.vlm.width),
        vlm=_gemma(config.vlm, batch_size, prefix, prefix, finish_last_layer=False),
    )
    per_velocity = FlopBreakdown(
        expert=_gemma(config.expert, batch_size, suffix, prefix + suffix, finish_last_layer=True)
        + _adarms(config, batch_size),
        heads=_heads(config, batch_size),
    )
    return once, per_velocity


def forward_flops(
    config: VLAConfig,
    *,
    batch_size: int,
    prefix_text_tokens: int | None = None,
    cameras: int | None = None,
    text_logit_tokens: int = 0,
) -> FlopBreakdown:
    """FLOPs of one training forward (`VLA.velocity` / `VLA.compute_loss`, no KV cache).

    The prompt is `max_token_len` tokens (padding is computed too) unless `prefix_text_tokens`
    says otherwise; `cameras` defaults to `len(config.image_keys)`. The flow loss never reads
    text logits; `text_logit_tokens` adds the tied-embedding head over that many VLM positions
    per sequence, for recipes that also train on text or FAST targets.
    """
    if text_logit_tokens < 0:
        raise ValueError(f"text_logit_tokens must be >= 0, got {text_logit_tokens}")
    once, per_velocity = _parts(config, batch_size, prefix_text_tokens, cameras)
    text_head = _linear(batch_size * text_logit_tokens, config.vlm.width, config.vocab_size)
    return once + per_velocity + FlopBreakdown(text_head=text_head)


def training_step_flops(
    config: VLAConfig,
    *,
    batch_size: int,
    prefix_text_tokens: int | None = None,
    cameras: int | None = None,
    text_logit_tokens: int = 0,
) -> FlopBreakdown:
    """FLOPs of one optimizer step's forward + backward: 3 x forward, the usual MFU convention.

    The backward of a matmul costs two matmuls of the same size (gradients of both operands). The
    convention counts a few things the step does not run (input gradients of the layers that read
    data: patch embedding, action_in_proj, state_proj / time_mlp_in) and nothing it re-runs
    (Q K^T recomputed by fused attention backwards, the forward re-run by
    `VLA.set_gradient_checkpointing`), so MFU stays comparable across implementations.
    """
    forward = forward_flops(
        config,
        batch_size=batch_size,
        prefix_text_tokens=prefix_text_tokens,
        cameras=cameras,
        text_logit_tokens=text_logit_tokens,
    )
    return forward * 3


def sampling_flops(
    config: VLAConfig,
    *,
    batch_size: int,
    num_steps: int,
    prefix_text_tokens: int | None = None,
    cameras: int | None = None,
) -> FlopBreakdown:
    """FLOPs of `VLA.sample_actions` with the KV cache.

    Vision and one VLM pass over the prefix (its queries read the prefix only), then per Euler
    step one expert pass whose queries read the cached prefix and the suffix, plus the heads.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    once, per_velocity = _parts(config, batch_size, prefix_text_tokens, cameras)
    return once + per_velocity * num_steps


# Dense (no 2:4 sparsity) peak FLOP/s from the vendors' datasheets, which print the sparse
# figure for tensor-core formats: dense = sparse / 2.
# - H100 and H200 datasheets, BF16 / TF32 sparse and FP32: H100 SXM and H200 (also GH200's GPU)
#   1,979 / 989 / 67 TFLOPS; H100 PCIe 1,513 / 756 / 51; H100 NVL and H200 NVL 1,671 / 835 / 60.
# - A100 (SXM and PCIe alike): A100 datasheet, BF16 312 dense, TF32 156 dense, FP32 19.5.
# - L40S: L40S datasheet, BF16 362.05 dense, TF32 183 dense, FP32 91.6.
# - A10G: no public NVIDIA datasheet for this AWS part; the A10 datasheet's figures (BF16 125
#   dense, TF32 62.5 dense, FP32 31.2) are the usual stand-in, so treat its MFU as approximate.
# - RTX 4090: Ada Lovelace architecture whitepaper, Appendix: BF16/FP16 tensor with FP32
#   accumulate (what PyTorch uses) 165.2 dense, TF32 82.6 dense, FP32 82.6.
# Patterns are searched in the lower-cased `torch.cuda.get_device_name`; the first match wins, so
# variants come before their family (the H100 SXM reports itself as "NVIDIA H100 80GB HBM3").
_TF32 = "tf32"


def _peaks(half: float, tf32: float, fp32: float) -> dict[torch.dtype | str, float]:
    """TFLOP/s for bf16/fp16, TF32 and plain fp32 -> FLOP/s by dtype."""
    return {
        torch.bfloat16: half * 1e12,
        torch.float16: half * 1e12,
        _TF32: tf32 * 1e12,
        torch.float32: fp32 * 1e12,
    }


_PEAK_FLOPS: tuple[tuple[str, dict[torch.dtype | str, float]], ...] = (
    (r"h[12]00 nvl", _peaks(835.5, 417.5, 60)),
    (r"h100.*(pcie|hbm2e)", _peaks(756.5, 378, 51)),
    (r"h[12]00", _peaks(989.5, 494.5, 67)),
    (r"a100", _peaks(312, 156, 19.5)),
    (r"l40s", _peaks(362.05, 183, 91.6)),
    (r"a10g", _peaks(125, 62.5, 31.2)),
    (r"rtx 4090", _peaks(165.2, 82.6, 82.6)),
)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Dense peak matmul FLOP/s of `device` for `dtype`, or None when unknown (CPUs included).

    float32 matmuls run on TF32 tensor cores when `torch.get_float32_matmul_precision()` is not
    "highest" (e.g. after `torch.backends.cuda.matmul.allow_tf32 = True`), so the TF32 peak is
    returned then.
    """
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    key: torch.dtype | str = dtype
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        key = _TF32
    for pattern, peaks in _PEAK_FLOPS:
        if re.search(pattern, name):
            return peaks.get(key)
    return None
