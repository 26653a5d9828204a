"""An independent, literal pi0 / pi0.5 built from Hugging Face `transformers` modules (tests only).

It is laid out the way openpi's PyTorch port is: a `paligemma_with_expert` module holding an HF
`PaliGemmaForConditionalGeneration` and an HF `GemmaForCausalLM`, so its `state_dict()` has the
reference's key names; masks built with big_vision's ar/pad rule and applied additively with
-2.3819763e38; eager attention with a float32 softmax; one vision call per camera; and no KV
cache (the whole sequence is recomputed at every denoising step). vlaflow's own code is never
imported here, so a test comparing the two compares two implementations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GemmaConfig, GemmaForCausalLM, PaliGemmaConfig, PaliGemmaForConditionalGeneration
from transformers.models.gemma import modeling_gemma

MASK_VALUE = -2.3819763e38


class AdaptiveNorm(nn.Module):
    """The reference's adaRMS norm (`dense` -> scale, shift, gate)."""

    def __init__(self, width: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(width, 3 * width)

    def forward(self, x, cond):
        var = torch.mean(torch.square(x.float()), dim=-1, keepdim=True)
        normed = x * torch.rsqrt(var + self.eps)
        scale, shift, gate = torch.chunk(self.dense(cond).unsqueeze(1), 3, dim=-1)
        return (normed * (1 + scale.float()) + shift.float()).to(x.dtype), gate.to(x.dtype)


def _norm(module, x, cond):
    if isinstance(module, AdaptiveNorm):
        return module(x, cond)
    return module(x), None


def _gemma(width, depth, mlp, heads, kv, head_dim):
    return dict(
        hidden_size=width,
        num_hidden_layers=depth,
        intermediate_size=mlp,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        hidden_activation="gelu_pytorch_tanh",
        vocab_size=257152,
    )


class PaliGemmaWithExpert(nn.Module):
    def __init__(self, vision: dict, vlm: dict, expert: dict, vocab: int, adaptive: bool):
        super().__init__()
        config = PaliGemmaConfig(
            vision_config=dict(
                model_type="siglip_vision_model",
                **vision,
                projection_dim=vlm["hidden_size"],
                vision_use_head=False,
            ),
            text_config=dict(model_type="gemma", **{**vlm, "vocab_size": vocab}),
            vocab_size=vocab,
            image_token_index=vocab,
            projection_dim=vlm["hidden_size"],
        )
        config.text_config._attn_implementation = "eager"
        config.vision_config._attn_implementation = "eager"
        self.paligemma = PaliGemmaForConditionalGeneration(config)
        self.gemma_expert = GemmaForCausalLM(GemmaConfig(**{**expert, "vocab_size": vocab}))
        self.gemma_expert.model.embed_tokens = None
        if adaptive:
            for layer in self.gemma_expert.model.layers:
                layer.input_layernorm = AdaptiveNorm(expert["hidden_size"])
                layer.post_attention_layernorm = AdaptiveNorm(expert["hidden_size"])
            self.gemma_expert.model.norm = AdaptiveNorm(expert["hidden_size"])


# What openpi's `to_bfloat16_for_selected_params` keeps in float32 when it casts the VLM and the
# expert to bfloat16 (matched as substrings of parameter names); the flow heads outside
# `paligemma_with_expert` are never cast.
FLOAT32_SELECTORS = (
    "vision_tower.vision_model.embeddings.patch_embedding.weight",
    "vision_tower.vision_model.embeddings.patch_embedding.bias",
    "vision_tower.vision_model.embeddings.position_embedding.weight",
    "input_layernorm",
    "post_attention_layernorm",
    "model.norm",
)


class ReferencePi0(nn.Module):
    def __init__(
        self, *, pi05, vision, vlm, expert, vocab=257152, action_dim=32, horizon=50, image_keys=None
    ):
        super().__init__()
        self.pi05, self.horizon = pi05, horizon
        self.image_keys = image_keys or ["base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"]
        self.paligemma_with_expert = PaliGemmaWithExpert(vision, vlm, expert, vocab, adaptive=pi05)
        w = expert["hidden_size"]
        self.action_in_proj = nn.Linear(action_dim, w)
        self.action_out_proj = nn.Linear(w, action_dim)
        if pi05:
            self.time_mlp_in = nn.Linear(w, w)
            self.time_mlp_out = nn.Linear(w, w)
        else:
            self.state_proj = nn.Linear(action_dim, w)
            self.action_time_mlp_in = nn.Linear(2 * w, w)
            self.action_time_mlp_out = nn.Linear(w, w)

    def to_reference_bfloat16(self) -> ReferencePi0:
        """The reference's bfloat16 inference: the VLM and expert in bf16 except FLOAT32_SELECTORS."""
        self.paligemma_with_expert.to(torch.bfloat16)
        for name, param in self.paligemma_with_expert.named_parameters():
            if any(selector in name for selector in FLOAT32_SELECTORS):
                param.data = param.data.float()
        return self

    @property
    def compute_dtype(self):
        return self.paligemma_with_expert.paligemma.model.multi_modal_projector.linear.weight.dtype

    # ---- embeddings, masks ----
    def vision_features(self, img):
        vision = self.paligemma_with_expert.paligemma.model.vision_tower.vision_model
        hidden = vision.embeddings(img).to(self.compute_dtype)  # patch + position embeddings in float32
        return vision.post_layernorm(vision.encoder(inputs_embeds=hidden).last_hidden_state)

    def embed_prefix(self, obs):
        pg = self.paligemma_with_expert.paligemma
        embs, pads, ars = [], [], []
        for key in self.image_keys:
            img = obs.images[key]
            if img.shape[-1] == 3:
                img = img.permute(0, 3, 1, 2)
            feats = pg.model.multi_modal_projector(self.vision_features(img))
            embs.append(feats)
            mask = obs.image_masks.get(key, torch.ones(img.shape[0], dtype=torch.bool))
            pads.append(mask[:, None].expand(img.shape[0], feats.shape[1]))
            ars += [0] * feats.shape[1]
        lang = pg.model.language_model.embed_tokens(obs.tokenized_prompt)
        embs.append(lang * math.sqrt(lang.shape[-1]))
        pads.append(obs.tokenized_prompt_mask)
        ars += [0] * lang.shape[1]
        return torch.cat(embs, 1), torch.cat(pads, 1), torch.tensor(ars)

    def time_embedding(self, t, dim):
        fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64)
        period = 4e-3 * (4.0 / 4e-3) ** fraction
        x = (1.0 / period * 2 * math.pi)[None, :] * t[:, None]
        return torch.cat([torch.sin(x), torch.cos(x)], dim=1).to(t.dtype)

    def embed_suffix(self, state, x_t, t):
        embs, ars = [], []
        a = self.action_in_proj(x_t)
        temb = self.time_embedding(t, a.shape[-1])
        if self.pi05:
            cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(temb))))
            embs.append(a)
        else:
            embs.append(self.state_proj(state)[:, None, :])
            ars.append(1)
            mixed = torch.cat([a, temb[:, None, :].expand_as(a)], dim=2)
            embs.append(self.action_time_mlp_out(F.silu(self.action_time_mlp_in(mixed))))
            cond = None
        ars += [1] + [0] * (self.horizon - 1)
        suffix = torch.cat(embs, 1)
        return suffix, torch.ones(suffix.shape[:2], dtype=torch.bool), torch.tensor(ars), cond

    # ---- the joint transformer ----
    def joint(self, prefix, suffix, pad, ar, cond):
        cum = torch.cumsum(ar, 0)
        allowed = (cum[None, :] <= cum[:, None])[None] & pad[:, None, :] & pad[:, :, None]
        mask = torch.where(allowed[:, None], 0.0, MASK_VALUE)
        positions = torch.cumsum(pad, dim=1) - 1
        models = [
            self.paligemma_with_expert.paligemma.model.language_model,
            self.paligemma_with_expert.gemma_expert.model,
        ]
        conds = [None, cond]
        xs = [prefix, suffix]
        for i in range(len(models[0].layers)):
            qs, ks, vs, gates = [], [], [], []
            for e, x in enumerate(xs):
                layer = models[e].layers[i]
                h, g = _norm(layer.input_layernorm, x, conds[e])
                gates.append(g)
                shape = (*h.shape[:-1], -1, layer.self_attn.head_dim)
                qs.append(layer.self_attn.q_proj(h).view(shape).transpose(1, 2))
                ks.append(layer.self_attn.k_proj(h).view(shape).transpose(1, 2))
                vs.append(layer.self_attn.v_proj(h).view(shape).transpose(1, 2))
            q, k, v = torch.cat(qs, 2), torch.cat(ks, 2), torch.cat(vs, 2)
            dummy = torch.zeros(q.shape[0], q.shape[2], q.shape[3], dtype=q.dtype)
            cos, sin = models[0].rotary_emb(dummy, positions)
            q, k = modeling_gemma.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
            attn_module = models[0].layers[i].self_attn
            out, _ = modeling_gemma.eager_attention_forward(attn_module, q, k, v, mask, attn_module.scaling)
            out = out.reshape(out.shape[0], out.shape[1], -1)
            start, new = 0, []
            for e, x in enumerate(xs):
                layer = models[e].layers[i]
                end = start + x.shape[1]
                y = layer.self_attn.o_proj(out[:, start:end])
                x = x + y if gates[e] is None else x + y * gates[e]
                h, g = _norm(layer.post_attention_layernorm, x, conds[e])
                y = layer.mlp(h)
                new.append(x + y if g is None else x + y * g)
                start = end
            xs = new
        return _norm(models[1].norm, xs[1], cond)[0]

    def velocity(self, obs, x_t, t):
        prefix, ppad, par = self.embed_prefix(obs)
        suffix, spad, sar, cond = self.embed_suffix(obs.state, x_t, t)
        dtype = self.compute_dtype
        pad, ar = torch.cat([ppad, spad], 1), torch.cat([par, sar])
        out = self.joint(prefix.to(dtype), suffix.to(dtype), pad, ar, cond)
        return self.action_out_proj(out[:, -self.horizon :].float())

    def compute_loss(self, obs, actions, noise, time):
        t = time[:, None, None]
        x_t = t * noise + (1 - t) * actions
        return F.mse_loss(noise - actions, self.velocity(obs, x_t, time), reduction="none")

    def materialize_buffers(self):
        """After building on the meta device: recreate the non-persistent buffers HF registers."""
        for module in self.modules():
            if isinstance(module, modeling_gemma.GemmaRotaryEmbedding):
                inv_freq, _ = module.rope_init_fn(module.config, "cpu")
                module.inv_freq = inv_freq
                module.original_inv_freq = inv_freq
            position_ids = getattr(module, "position_ids", None)
            if isinstance(position_ids, torch.Tensor) and position_ids.is_meta:
                module.position_ids = torch.arange(position_ids.shape[-1]).expand(position_ids.shape)

    @torch.no_grad()
    def sample_actions(self, obs, noise, num_steps=10):
        dt = torch.tensor(-1.0 / num_steps, dtype=torch.float32)
        x, time = noise, torch.tensor(1.0, dtype=torch.float32)
        while time >= -dt / 2:
            x = x + dt * self.velocity(obs, x, time.expand(x.shape[0]))
            time += dt
        return x
