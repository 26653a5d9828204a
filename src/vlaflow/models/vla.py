"""The pi0 / pi0.5 vision-language-action model: embeddings, flow-matching loss, Euler sampling.

Conventions follow the reference implementation (openpi): t = 1 is noise and t = 0 is data,
`x_t = t * noise + (1 - t) * actions`, the network predicts `u = noise - actions`, and sampling
integrates from t = 1 to 0 with Euler steps of -1 / num_steps. The prefix (images + prompt) runs
once into a static-shape KV cache; each denoising step runs only the expert's tokens.

pi0 and pi0.5 are one class: `config.pi05` chooses how state and time enter the expert (a state
token and an action-time MLP, or the state written into the prompt and adaRMSNorm everywhere).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlaflow.models.config import VLAConfig
from vlaflow.models.gemma import AdaRMSNorm, RMSNorm
from vlaflow.models.mixture import KVCache, MixtureTransformer
from vlaflow.models.observation import Observation
from vlaflow.models.segments import EXPERT, Kind, Segment, build_layout
from vlaflow.models.siglip import SiglipEncoder

# The layers between the transformer and the flow's continuous inputs and outputs, which the
# reference runs in float32 even when the transformer runs in bfloat16.
FLOAT32_HEADS = (
    "action_in_proj",
    "action_out_proj",
    "time_mlp_in",
    "time_mlp_out",
    "state_proj",
    "action_time_mlp_in",
    "action_time_mlp_out",
)


@dataclass
class Prefix:
    """What the denoising steps need after the prefix has run once: the filled cache and the
    expert tokens' rows of the attention mask and their positions."""

    cache: KVCache
    length: int
    suffix_mask: Tensor
    suffix_positions: Tensor
    state: Tensor


class VLA(nn.Module):
    def __init__(self, config: VLAConfig):
        super().__init__()
        self.config = config
        self.vision = SiglipEncoder(config.vision)
        self.vision_proj = nn.Linear(config.vision.width, config.vlm.width)
        self.transformer = MixtureTransformer(
            config.vlm,
            config.expert,
            vocab_size=config.vocab_size,
            adaptive_expert=config.pi05,
            insulate=config.knowledge_insulation,
        )
        width, dim = config.expert.width, config.action_dim
        self.action_in_proj = nn.Linear(dim, width)
        self.action_out_proj = nn.Linear(width, dim)
        if config.pi05:
            self.time_mlp_in = nn.Linear(width, width)
            self.time_mlp_out = nn.Linear(width, width)
        else:
            self.state_proj = nn.Linear(dim, width)
            self.action_time_mlp_in = nn.Linear(2 * width, width)
            self.action_time_mlp_out = nn.Linear(width, width)
        self._init_weights()

    def _init_weights(self) -> None:
        """From-scratch init (a loaded checkpoint overwrites it); adaRMS modulations start at zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, AdaRMSNorm):
                nn.init.zeros_(module.modulation.weight)
        nn.init.normal_(self.vision.pos_embed, std=0.02)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each transformer layer in the backward pass instead of storing activations."""
        self.vision.gradient_checkpointing = enabled
        self.transformer.gradient_checkpointing = enabled

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's compute dtype (norms, embeddings of patches and positions and the flow
        heads may stay float32)."""
        return self.vision_proj.weight.dtype

    def set_compute_dtype(self, dtype: torch.dtype) -> VLA:
        """Cast the VLM, the vision tower and the expert's transformer to `dtype`, keeping in float32
        what the reference keeps there: the norms (adaRMS modulations included), the vision
        patch/position embeddings, and the flow heads around the transformer (action in/out
        projections, the time MLPs, pi0's state projection), so the adaRMS condition and the
        velocity are computed in float32."""
        self.to(dtype)
        for module in self.modules():
            if isinstance(module, RMSNorm | AdaRMSNorm):
                module.float()
        for name in FLOAT32_HEADS:
            if hasattr(self, name):
                getattr(self, name).float()
        self.vision.patch_embed.float()
        self.vision.pos_embed.data = self.vision.pos_embed.data.float()
        return self

    # ---- embeddings -------------------------------------------------------------------------

    def embed_images(self, obs: Observation) -> tuple[Tensor, list[Segment]]:
        """All cameras through SigLIP in one batch; (B, cameras * patches, vlm width)."""
        keys = self.config.image_keys
        b = obs.batch_size
        images = torch.cat([obs.channels_first(k) for k in keys], dim=0)
        features = self.vision_proj(self.vision(images))
        n, width = features.shape[1:]
        features = features.view(len(keys), b, n, width).transpose(0, 1).reshape(b, len(keys) * n, width)
        segments = [Segment(Kind.IMAGE, obs.image_mask(k)[:, None].expand(b, n)) for k in keys]
        return features, segments

    def embed_prefix(self, obs: Observation) -> tuple[Tensor, list[Segment]]:
        images, segments = self.embed_images(obs)
        text = self.transformer.embed_tokens(obs.tokenized_prompt).to(images.dtype)
        segments.append(Segment(Kind.PROMPT, obs.tokenized_prompt_mask))
        return torch.cat([images, text], dim=1), segments

    def time_embedding(self, time: Tensor) -> Tensor:
        """sin/cos features of t (B,) with periods geometric in [min_period, max_period], float64."""
        c = self.config
        fraction = torch.linspace(0.0, 1.0, c.expert.width // 2, dtype=torch.float64, device=time.device)
        period = c.time_min_period * (c.time_max_period / c.time_min_period) ** fraction
        angle = (1.0 / period * 2 * math.pi)[None, :] * time[:, None].double()
        return torch.cat([angle.sin(), angle.cos()], dim=1).to(time.dtype)

    def suffix_segments(self, batch: int, device: torch.device) -> list[Segment]:
        def real(n: int) -> Tensor:
            return torch.ones(batch, n, dtype=torch.bool, device=device)

        actions = Segment(Kind.ACTION, real(self.config.action_horizon))
        return [actions] if self.config.pi05 else [Segment(Kind.STATE, real(1)), actions]

    def embed_suffix(
        self, state: Tensor, noisy_actions: Tensor, time: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Expert token embeddings (B, suffix_len, width) in the compute dtype and the adaRMS
        condition (pi0.5, in the flow heads' dtype) or None."""
        heads = self.action_in_proj.weight.dtype
        actions = self.action_in_proj(noisy_actions.to(heads))
        time_features = self.time_embedding(time).to(heads)
        if self.config.pi05:
            cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(time_features))))
            return actions.to(self.dtype), cond
        time_features = time_features[:, None, :].expand_as(actions)
        mixed = self.action_time_mlp_out(
            F.silu(self.action_time_mlp_in(torch.cat([actions, time_features], -1)))
        )
        state_token = self.state_proj(state.to(heads))[:, None, :]
        return torch.cat([state_token, mixed], dim=1).to(self.dtype), None

    def predict_velocity(self, expert_out: Tensor) -> Tensor:
        head = self.action_out_proj
        return head(expert_out[:, -self.config.action_horizon :].to(head.weight.dtype)).float()

    # ---- training ---------------------------------------------------------------------------

    def sample_time(self, batch: int, device: torch.device) -> Tensor:
        """t ~ Beta(1.5, 1) * 0.999 + 0.001: more weight near the noisy end."""
        beta = torch.distributions.Beta(
            torch.tensor(1.5, device=device, dtype=torch.float32),
            torch.tensor(1.0, device=device, dtype=torch.float32),
        )
        return beta.sample((batch,)) * 0.999 + 0.001

    def velocity(self, obs: Observation, noisy_actions: Tensor, time: Tensor) -> Tensor:
        """v(x_t, t) from one joint pass over prefix and suffix (the training path, no cache)."""
        prefix, segments = self.embed_prefix(obs)
        suffix, cond = self.embed_suffix(obs.state, noisy_actions, time)
        layout = build_layout(segments + self.suffix_segments(obs.batch_size, suffix.device))
        _, expert_out = self.transformer(
            [prefix, suffix], layout.mask, layout.positions, [None, cond], keep=(False, True)
        )
        return self.predict_velocity(expert_out)

    def compute_loss(
        self, obs: Observation, actions: Tensor, noise: Tensor | None = None, time: Tensor | None = None
    ) -> Tensor:
        """Per-element flow-matching loss (B, H, action_dim): (v - (noise - actions))^2."""
        obs.check(self.config)
        expected = (obs.batch_size, self.config.action_horizon, self.config.action_dim)
        if tuple(actions.shape) != expected:
            raise ValueError(
                f"actions: expected {expected} (B, action_horizon, action_dim), got {tuple(actions.shape)}"
            )
        actions = actions.float()
        noise = torch.randn_like(actions) if noise is None else noise.float()
        time = self.sample_time(actions.shape[0], actions.device) if time is None else time.float()
        t = time[:, None, None]
        noisy = t * noise + (1 - t) * actions
        return F.mse_loss(self.velocity(obs, noisy, time), noise - actions, reduction="none")

    def forward(
        self, obs: Observation, actions: Tensor, noise: Tensor | None = None, time: Tensor | None = None
    ) -> Tensor:
        """The training forward (what DDP / FSDP wrap): the per-element flow loss."""
        return self.compute_loss(obs, actions, noise=noise, time=time)

    # ---- inference --------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, obs: Observation) -> Prefix:
        """Run the prefix once and cache its keys/values for the denoising steps."""
        obs.check(self.config)
        return self.fill_cache(*self.embed_prefix(obs), obs.state)

    @torch.no_grad()
    def fill_cache(self, prefix: Tensor, segments: list[Segment], state: Tensor) -> Prefix:
        b, length = prefix.shape[:2]
        layout = build_layout(segments + self.suffix_segments(b, prefix.device))
        cache = KVCache.allocate(self.config.vlm, b, layout.mask.shape[-1], prefix.dtype, prefix.device)
        self.transformer(
            [prefix, None],
            layout.mask[:, :length, :length],
            layout.positions[:, :length],
            [None, None],
            cache=cache,
            keep=(False, False),
        )
        return Prefix(cache, length, layout.mask[:, length:], layout.positions[:, length:], state)

    @torch.no_grad()
    def denoise_step(self, prefix: Prefix, noisy_actions: Tensor, time: Tensor) -> Tensor:
        """v(x_t, t) running only the expert's tokens against the cached prefix."""
        suffix, cond = self.embed_suffix(prefix.state, noisy_actions, time)
        outputs = self.transformer(
            [None, suffix],
            prefix.suffix_mask,
            prefix.suffix_positions,
            [None, cond],
            cache=prefix.cache,
            offset=prefix.length,
        )
        return self.predict_velocity(outputs[EXPERT])

    @staticmethod
    def integrate(velocity: Callable[[Tensor, Tensor], Tensor], noise: Tensor, num_steps: int) -> Tensor:
        """Euler from t = 1 (noise) to t = 0 with dt = -1 / num_steps; time accumulates in float32
        exactly as the reference steps it."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        dt = torch.tensor(-1.0 / num_steps, dtype=torch.float32, device=noise.device)
        time = torch.tensor(1.0, dtype=torch.float32, device=noise.device)
        x = noise.float()
        for _ in range(num_steps):
            x = x + dt * velocity(x, time.expand(x.shape[0]))
            time = time + dt
        return x

    @torch.no_grad()
    def sample_actions(
        self, obs: Observation, noise: Tensor | None = None, num_steps: int = 10, use_cache: bool = True
    ) -> Tensor:
        """Integrate the flow from noise to actions: (B, H, action_dim) float32.

        `use_cache=False` recomputes the whole sequence at every step (the training path); it is
        slower and exists to check the cache.
        """
        obs.check(self.config)
        c = self.config
        shape = (obs.batch_size, c.action_horizon, c.action_dim)
        if noise is None:
            noise = torch.randn(shape, device=obs.state.device)
        elif tuple(noise.shape) != shape:
            raise ValueError(
                f"noise: expected {shape} (B, action_horizon, action_dim), got {tuple(noise.shape)}"
            )
        if not use_cache:
            return self.integrate(lambda x, t: self.velocity(obs, x, t), noise, num_steps)
        prefix = self.prefill(obs)
        return self.integrate(lambda x, t: self.denoise_step(prefix, x, t), noise, num_steps)

    def text_logits(self, vlm_hidden: Tensor) -> Tensor:
        """Next-token logits of VLM hidden states (for text / FAST targets), via the tied embedding."""
        return self.transformer.logits(vlm_hidden)
