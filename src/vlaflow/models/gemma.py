"""Gemma decoder pieces: RMS norms (plain and adaptive), gated-GELU MLP, RoPE, one expert's layer.

Attention itself is not here: the two experts attend jointly, so the layer only owns its
projections and `mixture.py` runs one attention over both experts' tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlaflow.models.config import GemmaConfig


def _rms_normalize(x: Tensor, eps: float) -> Tensor:
    """x / rms(x), always in float32 (bf16 statistics drift)."""
    x = x.float()
    return x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + eps)


class RMSNorm(nn.Module):
    """Gemma's RMSNorm, `normalize(x) * (1 + scale)`: a zero scale is the identity scaling."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, None]:
        if cond is not None:
            raise ValueError("a plain RMSNorm takes no condition (only pi0.5's expert norms are adaptive)")
        return (_rms_normalize(x, self.eps) * (1.0 + self.scale.float())).to(x.dtype), None


class AdaRMSNorm(nn.Module):
    """pi0.5's time-conditioned norm: `normalize(x) * (1 + scale) + shift`, plus a residual gate.

    `[scale, shift, gate] = modulation(cond)`. The modulation starts at zero, so at
    initialization the norm is a bare RMS normalization and every gated residual branch is off.
    """

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.modulation = nn.Linear(cond_dim, 3 * dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def modulate(self, cond: Tensor) -> Tensor:
        """`[scale, shift, gate]` (B, 3 * dim) of a condition (B, cond_dim). It depends on time
        only, so sampling computes it once for every step before the steps run."""
        return self.modulation(cond.to(self.modulation.weight.dtype))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if cond is None:
            raise ValueError("an adaptive RMSNorm needs the time condition `cond` (B, width)")
        return self.modulated(x, self.modulate(cond))

    def modulated(self, x: Tensor, modulation: Tensor) -> tuple[Tensor, Tensor]:
        """The norm with a precomputed `modulate(cond)`: (normalized x, residual gate). A condition
        (B, cond_dim) holds for every token; (B, L, cond_dim) gives each token its own."""
        scale, shift, gate = (modulation[:, None, :] if modulation.ndim == 2 else modulation).chunk(3, dim=-1)
        out = _rms_normalize(x, self.eps) * (1.0 + scale.float()) + shift.float()
        return out.to(x.dtype), gate.to(x.dtype)


class GatedMLP(nn.Module):
    """`down(gelu_tanh(gate(x)) * up(x))`."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


def rope_tables(positions: Tensor, head_dim: int, base: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos/sin tables (B, L, head_dim) for integer positions (B, L), computed in float32.

    Frequencies are recomputed on every call (a few hundred flops) instead of being stored in a
    buffer, so a model built on the meta device and loaded with `assign=True` needs no fix-up.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim
    inv_freq = 1.0 / (base**exponents)
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, heads, L, head_dim) by the tables, pairing the two halves of head_dim."""
    cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def make_norm(config: GemmaConfig, adaptive: bool) -> RMSNorm | AdaRMSNorm:
    """An expert's norm: adaptive (time-conditioned) for pi0.5's action expert, plain otherwise."""
    return (
        AdaRMSNorm(config.width, config.width, config.norm_eps)
        if adaptive
        else RMSNorm(config.width, config.norm_eps)
    )


class GemmaLayer(nn.Module):
    """One expert's weights in one decoder layer: pre-attention norm, Q/K/V/O projections, pre-MLP
    norm, MLP. The attention itself is joint, run by `mixture.MixtureLayer`."""

    def __init__(self, config: GemmaConfig, adaptive: bool):
        super().__init__()
        c = config
        self.attn_norm = make_norm(c, adaptive)
        self.q_proj = nn.Linear(c.width, c.num_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.width, c.num_kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.width, c.num_kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.width, bias=False)
        self.mlp_norm = make_norm(c, adaptive)
        self.mlp = GatedMLP(c.width, c.mlp_dim)
