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
Decoding text one token at a time moves the offset at every step instead: a pass given its
offset as a tensor writes its K/V there by index and reads the whole cache (its mask hides the
slots not written yet), so those steps share one shape too.
Sampling can also hand a pass what depends on time and positions only, computed once for all
denoising steps: the RoPE tables and every adaptive norm's modulation (`modulations`).
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
    """What every layer of one pass shares: which experts have tokens and where, the additive
    mask rows, the RoPE tables, the adaRMS conditions or their precomputed modulations, and the
    cache offset (an int, or a 0-dim int64 tensor: see `MixtureTransformer.forward`)."""

    spans: dict[int, tuple[int, int]]
    mask: Tensor
    cos: Tensor
    sin: Tensor
    conds: list[Tensor | None]
    modulations: list[Tensor | None]
    offset: int | Tensor

    def end(self, hi: int) -> int | None:
        """How many cache slots the tokens ending at `hi` read: up to their own last slot, or
        all of them (None) when the offset is a tensor."""
        return self.offset + hi if isinstance(self.offset, int) else None

    def norm(self, norm: nn.Module, x: Tensor, e: int, index: int) -> tuple[Tensor, Tensor | None]:
        """Expert e's norm number `index` (2 per layer, then the final one) of x."""
        modulations = self.modulations[e]
        if modulations is None:
            return norm(x, self.conds[e])
        return norm.modulated(x, modulations[index])


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
        cache: tuple[Tensor, Tensor] | None,
        index: int,
    ) -> list[Tensor | None]:
        qs, ks, vs, gates = [], [], [], {}
        for e in p.spans:
            layer = self.experts[e]
            h, gates[e] = p.norm(layer.attn_norm, xs[e], e, 2 * index)
            b, n, _ = h.shape
            qs.append(layer.q_proj(h).view(b, n, self.num_heads, self.head_dim).transpose(1, 2))
            ks.append(layer.k_proj(h).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2))
            vs.append(layer.v_proj(h).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2))
        q = apply_rope(torch.cat(qs, dim=2), p.cos, p.sin)
        k = apply_rope(torch.cat(ks, dim=2), p.cos, p.sin)
        v = torch.cat(vs, dim=2)
        if cache is not None:
            if isinstance(p.offset, Tensor):
                slots = p.offset + torch.arange(k.shape[2], device=k.device)
                cache[0].index_copy_(2, slots, k)
                cache[1].index_copy_(2, slots, v)
            else:
                cache[0][:, :, p.offset : p.offset + k.shape[2]] = k
                cache[1][:, :, p.offset : p.offset + v.shape[2]] = v
            k, v = cache

        out: list[Tensor | None] = [None] * len(xs)
        for e in finishing:
            lo, hi = p.spans[e]
            end = p.end(hi)
            keys, values = k[:, :, :end], v[:, :, :end]
            if self.insulate and e == EXPERT:
                own = p.offset + lo
                keys = torch.cat([keys[:, :, :own].detach(), keys[:, :, own:]], dim=2)
                values = torch.cat([values[:, :, :own].detach(), values[:, :, own:]], dim=2)
            mask = p.mask[:, :, lo:hi, :end]
            attn = F.scaled_dot_product_attention(
                q[:, :, lo:hi],
                keys,
                values,
                attn_mask=mask if mask.dtype == q.dtype else mask.to(q.dtype),  # autocast
                scale=self.head_dim**-0.5,
                enable_gqa=self.num_heads != self.num_kv_heads,
            )
            attn = attn.transpose(1, 2).reshape(attn.shape[0], hi - lo, -1)
            layer = self.experts[e]
            x = _residual(xs[e], layer.o_proj(attn), gates[e])
            h, gate = p.norm(layer.mlp_norm, x, e, 2 * index + 1)
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

    def modulations(self, e: int, cond: Tensor) -> Tensor:
        """Every adaptive norm's `[scale, shift, gate]` for expert e's condition (B, width):
        (2 * depth + 1, B, 3 * width), two per layer then the final norm's."""
        norms = [n for layer in self.layers for n in (layer.experts[e].attn_norm, layer.experts[e].mlp_norm)]
        return torch.stack([n.modulate(cond) for n in [*norms, self.norms[e]]])

    def rope(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """RoPE tables (cos, sin) of positions (B, L), as a pass computes them."""
        c = self.vlm_config
        return rope_tables(positions, c.head_dim, c.rope_base, dtype)

    def forward(
        self,
        inputs: list[Tensor | None],
        mask: Tensor,
        positions: Tensor | None,
        conds: list[Tensor | None],
        cache: KVCache | None = None,
        offset: int | Tensor = 0,
        keep: tuple[bool, ...] = (True, True),
        *,
        rope: tuple[Tensor, Tensor] | None = None,
        modulations: list[Tensor | None] | None = None,
    ) -> list[Tensor | None]:
        """Run all layers over the tokens of this pass.

        inputs[e]: (B, n_e, width_e) embeddings of expert e's tokens in this pass, or None.
        mask: (B, Lq, offset + Lq) rows of the layout for this pass's tokens ((B, Lq, capacity)
        with a tensor offset), bool or already additive (`additive_mask`).
        positions: (B, Lq) positions of this pass's tokens (None when `rope` gives their tables).
        conds[e]: (B, width_e) adaRMS condition for an adaptive expert, else None; or, in
        `modulations[e]`, its precomputed `self.modulations(e, cond)` (conds[e] is then unused).
        cache/offset: with a cache, this pass's K/V go to slots [offset, offset + Lq) and the
        attention reads slots [0, offset + Lq); an offset given as a 0-dim int64 tensor writes the
        same slots by index and reads the whole cache, so passes at different offsets have one
        shape and nothing depends on the offset's value on the host (one-token decoding steps);
        without a cache, offset must be 0.
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
        if cache is None and not (isinstance(offset, int) and offset == 0):
            raise ValueError("offset is only meaningful with a KV cache")
        spans, start = {}, 0
        for e in present:
            spans[e] = (start, start + inputs[e].shape[1])
            start += inputs[e].shape[1]
        dtype = inputs[present[0]].dtype
        cos, sin = self.rope(positions, dtype) if rope is None else rope
        if mask.dtype == torch.bool:
            mask = additive_mask(mask, dtype)
        p = Pass(
            spans=spans,
            mask=mask[:, None],
            cos=cos,
            sin=sin,
            conds=conds,
            modulations=modulations or [None] * len(inputs),
            offset=offset,
        )
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        xs = list(inputs)
        for i, layer in enumerate(self.layers):
            finishing = present if i < len(self.layers) - 1 else [e for e in present if keep[e]]
            layer_cache = None if cache is None else (cache.keys[i], cache.values[i])
            if recompute:
                xs = checkpoint(layer, xs, p, finishing, layer_cache, i, use_reentrant=False)
            else:
                xs = layer(xs, p, finishing, layer_cache, i)
        final = 2 * len(self.layers)
        return [None if x is None else p.norm(self.norms[e], x, e, final)[0] for e, x in enumerate(xs)]


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask as SDPA's additive one: 0 where allowed, the dtype's most negative number
    elsewhere. SDPA converts a boolean mask inside every call (per layer); converted once per
    pass, the suffix attention ran 2x faster on a CPU, with bit-identical outputs (no row is
    fully masked: `segments.build_layout` lets padding queries read everything)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
        ~mask, torch.finfo(dtype).min
    )


def _residual(x: Tensor, branch: Tensor, gate: Tensor | None) -> Tensor:
    return x + branch if gate is None else x + branch * gate
