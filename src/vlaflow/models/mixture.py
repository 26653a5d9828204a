"""The two-expert transformer (mixture of transformers) with one joint attention per layer.

Per layer, each expert normalizes its own tokens and projects them to Q/K/V with its own weights;
RoPE is applied at the joint positions; one attention runs over the joint sequence; each expert
then applies its own output projection, (gated) residual, norm, MLP and residual. A
`MixtureLayer` owns both experts' weights of one layer, so it is the natural unit for activation
checkpointing and for FSDP sharding (one all-gather per layer).

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
from vlaflow.models.gemma import GemmaLayer, apply_rope, make_norm, rope_tables
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


@dataclass(frozen=True)
class Pass:
    """What every layer of one pass shares: which experts have tokens and where, the mask rows,
    the RoPE tables, the adaRMS conditions, and the cache offset."""

    spans: dict[int, tuple[int, int]]
    mask: Tensor
    cos: Tensor
    sin: Tensor
    conds: list[Tensor | None]
    offset: int


class MixtureLayer(nn.Module):
    """Layer i of both experts, and the joint attention between them."""

    def __init__(self, configs: list[GemmaConfig], adaptive: list[bool], insulate: bool):
        super().__init__()
        self.experts = nn.ModuleList(GemmaLayer(c, a) for c, a in zip(configs, adaptive, strict=True))
        c = configs[0]
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.insulate = insulate

    def forward(
        self,
        xs: list[Tensor | None],
        p: Pass,
        finishing: list[int],
        cache: tuple[Tensor, Tensor] | None = None,
    ) -> list[Tensor | None]:
        qs, ks, vs, gates = [], [], [], {}
        for e in p.spans:
            layer = self.experts[e]
            h, gates[e] = layer.attn_norm(xs[e], p.conds[e])
            b, n, _ = h.shape
            qs.append(layer.q_proj(h).view(b, n, self.num_heads, self.head_dim).transpose(1, 2))
            ks.append(layer.k_proj(h).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2))
            vs.append(layer.v_proj(h).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2))
        q = apply_rope(torch.cat(qs, dim=2), p.cos, p.sin)
        k = apply_rope(torch.cat(ks, dim=2), p.cos, p.sin)
        v = torch.cat(vs, dim=2)
        if cache is not None:
            cache[0][:, :, p.offset : p.offset + k.shape[2]] = k
            cache[1][:, :, p.offset : p.offset + v.shape[2]] = v
            k, v = cache

        out: list[Tensor | None] = [None] * len(xs)
        for e in finishing:
            lo, hi = p.spans[e]
            keys, values = k[:, :, : p.offset + hi], v[:, :, : p.offset + hi]
            if self.insulate and e == EXPERT:
                own = p.offset + lo
                keys = torch.cat([keys[:, :, :own].detach(), keys[:, :, own:]], dim=2)
                values = torch.cat([values[:, :, :own].detach(), values[:, :, own:]], dim=2)
            attn = F.scaled_dot_product_attention(
                q[:, :, lo:hi],
                keys,
                values,
                attn_mask=p.mask[:, :, lo:hi, : p.offset + hi],
                scale=self.head_dim**-0.5,
                enable_gqa=self.num_heads != self.num_kv_heads,
            )
            attn = attn.transpose(1, 2).reshape(attn.shape[0], hi - lo, -1)
            layer = self.experts[e]
            x = _residual(xs[e], layer.o_proj(attn), gates[e])
            h, gate = layer.mlp_norm(x, p.conds[e])
            out[e] = _residual(x, layer.mlp(h), gate)
        return out


class MixtureTransformer(nn.Module):
    """The VLM (expert 0, with the token embedding) and the action expert (expert 1), attending jointly."""

    def __init__(
        self,
        vlm: GemmaConfig,
        expert: GemmaConfig | None,
        *,
        vocab_size: int,
        adaptive_expert: bool,
        insulate: bool,
    ):
        """`expert=None`: the VLM alone (its tokens are then the only ones a pass may carry)."""
        super().__init__()
        self.vlm_config = vlm
        configs = [vlm] if expert is None else [vlm, expert]
        adaptive = [False, adaptive_expert][: len(configs)]
        self.embed = nn.Embedding(vocab_size, vlm.width)
        self.layers = nn.ModuleList(MixtureLayer(configs, adaptive, insulate) for _ in range(vlm.depth))
        self.norms = nn.ModuleList(make_norm(c, a) for c, a in zip(configs, adaptive, strict=True))
        self.gradient_checkpointing = False

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """Token embeddings scaled by sqrt(width), as Gemma does for text (never for image/action tokens)."""
        return self.embed(tokens) * (self.vlm_config.width**0.5)

    def logits(self, hidden: Tensor) -> Tensor:
        """Next-token logits of VLM hidden states through the tied embedding (PaliGemma's head)."""
        return F.linear(hidden, self.embed.weight)

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
        if present[-1] >= len(self.norms):
            raise ValueError("this model has no action expert: a pass may carry VLM tokens only")
        if cache is None and offset:
            raise ValueError("offset is only meaningful with a KV cache")
        spans, start = {}, 0
        for e in present:
            spans[e] = (start, start + inputs[e].shape[1])
            start += inputs[e].shape[1]
        c = self.vlm_config
        cos, sin = rope_tables(positions, c.head_dim, c.rope_base, inputs[present[0]].dtype)
        p = Pass(spans=spans, mask=mask[:, None], cos=cos, sin=sin, conds=conds, offset=offset)
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        xs = list(inputs)
        for i, layer in enumerate(self.layers):
            finishing = present if i < len(self.layers) - 1 else [e for e in present if keep[e]]
            layer_cache = None if cache is None else (cache.keys[i], cache.values[i])
            if recompute:
                xs = checkpoint(layer, xs, p, finishing, layer_cache, use_reentrant=False)
            else:
                xs = layer(xs, p, finishing, layer_cache)
        return [None if x is None else self.norms[e](x, conds[e])[0] for e, x in enumerate(xs)]


def _residual(x: Tensor, branch: Tensor, gate: Tensor | None) -> Tensor:
    return x + branch if gate is None else x + branch * gate
