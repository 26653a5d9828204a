"""The two-expert transformer (mixture of transformers) with one joint attention per layer.

Per layer, each expert normalizes its own tokens and projects them to Q/K/V with its own weights;
RoPE is applied at the joint positions; one attention runs over the joint sequence; each expert
then applies its own output projection, (gated) residual, norm, MLP and residual.

Expert routing follows the sequence order fixed by `segments.py`: VLM tokens come first, and the
queries of expert e read only keys up to the end of expert e's tokens, so the VLM's attention
never spends work on (or reads) expert tokens. With knowledge insulation the expert reads the
keys/values of the tokens before its own through `detach()`: the flow loss then cannot reach the
VLM through attention, while the VLM's own losses still train it.

A static-shape `KVCache` lets inference run the prefix once and then run only the expert's
tokens at every denoising step: each pass writes its K/V at a fixed offset and reads the cache
up to the end of its own slots, so every step sees the same shapes (CUDA-graph friendly).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vlaflow.models.config import GemmaConfig
from vlaflow.models.gemma import GemmaStack, apply_rope, rope_tables
from vlaflow.models.segments import EXPERT


@dataclass
class KVCache:
    """Per-layer keys and values (B, kv_heads, capacity, head_dim), preallocated."""

    keys: list[Tensor]
    values: list[Tensor]

    @classmethod
    def allocate(
        cls, config: GemmaConfig, batch: int, capacity: int, dtype: torch.dtype, device: torch.device
    ) -> KVCache:
        shape = (batch, config.num_kv_heads, capacity, config.head_dim)

        def zeros() -> list[Tensor]:
            # Zeros, not empty(): unwritten slots are masked, but NaN garbage would survive 0 * NaN.
            return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.depth)]

        return cls(keys=zeros(), values=zeros())

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]


class MixtureTransformer(nn.Module):
    """The VLM stack (expert 0) and the action expert (expert 1), attending jointly."""

    def __init__(
        self,
        vlm: GemmaConfig,
        expert: GemmaConfig,
        *,
        vocab_size: int,
        adaptive_expert: bool,
        insulate: bool,
    ):
        super().__init__()
        self.experts = nn.ModuleList(
            [
                GemmaStack(vlm, adaptive=False, vocab_size=vocab_size),
                GemmaStack(expert, adaptive=adaptive_expert, vocab_size=None),
            ]
        )
        self.insulate = insulate
        self.num_heads, self.num_kv_heads, self.head_dim = vlm.num_heads, vlm.num_kv_heads, vlm.head_dim
        self.rope_base = vlm.rope_base
        self.gradient_checkpointing = False

    def forward(
        self,
        inputs: list[Tensor | None],
        mask: Tensor,
        positions: Tensor,
        conds: list[Tensor | None],
        cache: KVCache | None = None,
        offset: int = 0,
        keep: tuple[bool, ...] = (True, True),
    ) -> list[Tensor | None]:
        """Run all layers over the tokens of this pass.

        inputs[e]: (B, n_e, width_e) embeddings of expert e's tokens in this pass, or None.
        mask: (B, Lq, offset + Lq) bool rows of the layout for this pass's tokens.
        positions: (B, Lq) positions of this pass's tokens.
        conds[e]: (B, width_e) adaRMS condition for an adaptive expert, else None.
        cache/offset: with a cache, this pass's K/V go to slots [offset, offset + Lq) and the
        attention reads slots [0, offset + Lq); without one, offset must be 0.
        keep[e]: whether expert e's outputs are wanted. The last layer skips the attention, output
        projection and MLP of the others (the flow loss and the prefill only need the VLM's keys
        and values), which also leaves those weights out of the graph.
        Returns each expert's final-normed hidden states (None where it had no tokens or is not kept).
        """
        present = [e for e, x in enumerate(inputs) if x is not None]
        if not present:
            raise ValueError("the transformer needs tokens for at least one expert")
        if cache is None and offset:
            raise ValueError("offset is only meaningful with a KV cache")
        xs = list(inputs)
        dtype = xs[present[0]].dtype
        cos, sin = rope_tables(positions, self.head_dim, self.rope_base, dtype)
        mask = mask[:, None]  # broadcast over heads
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        depth = len(self.experts[0].layers)
        for i in range(depth):
            finishing = present if i < depth - 1 else [e for e in present if keep[e]]
            args = (i, xs, present, finishing, mask, cos, sin, conds, cache, offset)
            xs = checkpoint(self._layer, *args, use_reentrant=False) if recompute else self._layer(*args)
        return [None if x is None else self.experts[e].norm(x, conds[e])[0] for e, x in enumerate(xs)]

    def _layer(
        self,
        i: int,
        xs: list[Tensor | None],
        present: list[int],
        finishing: list[int],
        mask: Tensor,
        cos: Tensor,
        sin: Tensor,
        conds: list[Tensor | None],
        cache: KVCache | None,
        offset: int,
    ) -> list[Tensor | None]:
        qs, ks, vs, gates, spans = [], [], [], {}, {}
        start = 0
        for e in present:
            layer = self.experts[e].layers[i]
            h, gates[e] = layer.attn_norm(xs[e], conds[e])
            b, n, _ = h.shape
            qs.append(layer.q_proj(h).view(b, n, self.num_heads, self.head_dim).transpose(1, 2))
            ks.append(layer.k_proj(h).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2))
            vs.append(layer.v_proj(h).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2))
            spans[e] = (start, start + n)
            start += n
        q = apply_rope(torch.cat(qs, dim=2), cos, sin)
        k = apply_rope(torch.cat(ks, dim=2), cos, sin)
        v = torch.cat(vs, dim=2)
        if cache is not None:
            cache.keys[i][:, :, offset : offset + start] = k
            cache.values[i][:, :, offset : offset + start] = v
            k, v = cache.keys[i], cache.values[i]

        out: list[Tensor | None] = [None] * len(xs)
        for e in finishing:
            lo, hi = spans[e]
            keys, values = k[:, :, : offset + hi], v[:, :, : offset + hi]
            if self.insulate and e == EXPERT:
                own = offset + lo
                keys = torch.cat([keys[:, :, :own].detach(), keys[:, :, own:]], dim=2)
                values = torch.cat([values[:, :, :own].detach(), values[:, :, own:]], dim=2)
            attn = F.scaled_dot_product_attention(
                q[:, :, lo:hi],
                keys,
                values,
                attn_mask=mask[:, :, lo:hi, : offset + hi],
                scale=self.head_dim**-0.5,
                enable_gqa=self.num_heads != self.num_kv_heads,
            )
            attn = attn.transpose(1, 2).reshape(attn.shape[0], hi - lo, -1)
            layer = self.experts[e].layers[i]
            x = _residual(xs[e], layer.o_proj(attn), gates[e])
            h, gate = layer.mlp_norm(x, conds[e])
            out[e] = _residual(x, layer.mlp(h), gate)
        return out


def _residual(x: Tensor, branch: Tensor, gate: Tensor | None) -> Tensor:
    return x + branch if gate is None else x + branch * gate
