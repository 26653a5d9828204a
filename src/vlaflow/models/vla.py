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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlaflow.models.config import VLAConfig
from vlaflow.models.gemma import AdaRMSNorm, RMSNorm
from vlaflow.models.mixture import KVCache, MixtureTransformer, additive_mask
from vlaflow.models.observation import Observation
from vlaflow.models.segments import EXPERT, VLM, Kind, Segment, build_layout
from vlaflow.models.siglip import SiglipEncoder
from vlaflow.models.targets import Losses, Targets

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
class Generation:
    """Decoded tokens (B, T) (pad id 0 after a sample's end), each sample's length before its end
    of sequence (B,), and optionally the logits (B, T, V) each token was chosen from."""

    tokens: Tensor
    lengths: Tensor
    logits: Tensor | None = None


@dataclass
class Decoding:
    """A generation's state once its prompt is in the cache, all that a one-token step reads:
    the cache (capacity = prompt + tokens to decode), which slots hold real prompt tokens
    (B, capacity) bool, each decoding slot's index (capacity,) int64 (the capacity at the
    prompt's slots, so no decoding slot ever compares below them), and the RoPE position of slot
    0 (B,) int64, so that a token at slot s sits at position `position_offset + s`."""

    cache: KVCache
    prompt: Tensor
    slots: Tensor
    position_offset: Tensor

    def readable(self, slot: Tensor) -> Tensor:
        """(B, capacity) bool: the real prompt tokens and the decoded ones up to `slot` included."""
        return self.prompt | (self.slots <= slot)


# A one-token decoding step: (state, token (B,), slot (0-dim int64)) -> next-token logits (B, V)
# float32, writing the token's keys/values at the slot (`VLA.decode_step` or a compiled one).
DecodeStep = Callable[[Decoding, Tensor, Tensor], Tensor]


@dataclass
class Prefix:
    """What the denoising steps need after the prefix has run once: the filled cache, the expert
    tokens' rows of the attention mask (additive, in the compute dtype), their positions and
    RoPE tables, and the state."""

    cache: KVCache
    length: int
    suffix_mask: Tensor
    suffix_positions: Tensor
    suffix_rope: tuple[Tensor, Tensor]
    state: Tensor


@dataclass
class StepCondition:
    """What time contributes to one velocity evaluation, known before the noisy actions are:
    the suffix's time features (`VLA.time_features`) and, for pi0.5, every expert norm's
    modulation (2 * depth + 1, B, 3 * width). Sampling can compute it for all steps at once."""

    features: Tensor
    modulations: Tensor | None


class VLA(nn.Module):
    def __init__(self, config: VLAConfig):
        super().__init__()
        self.config = config
        self.vision = SiglipEncoder(config.vision)
        self.vision_proj = nn.Linear(config.vision.width, config.vlm.width)
        self.transformer = MixtureTransformer(
            config.vlm,
            config.expert,
            vocab_size=config.embedding_rows,
            adaptive_expert=config.pi05,
            insulate=config.knowledge_insulation,
        )
        if config.expert is not None:
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

    @property
    def has_expert(self) -> bool:
        return self.config.expert is not None

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
        velocity are computed in float32. The kept weights are never rounded through `dtype`."""
        kept = [m for m in self.modules() if isinstance(m, RMSNorm | AdaRMSNorm)]
        kept += [getattr(self, name) for name in FLOAT32_HEADS if hasattr(self, name)]
        kept.append(self.vision.patch_embed)
        kept_ids = {id(m) for top in kept for m in top.modules()}
        for module in self.modules():
            if id(module) in kept_ids:
                module.float()
                continue
            for tensor in [*module._parameters.values(), *module._buffers.values()]:
                if tensor is None or not tensor.is_floating_point() or tensor is self.vision.pos_embed:
                    continue
                tensor.data = tensor.data.to(dtype)
        self.vision.pos_embed.data = self.vision.pos_embed.data.float()
        return self

    # ---- embeddings -------------------------------------------------------------------------

    def embed_images(self, obs: Observation) -> Tensor:
        """All cameras through SigLIP in one batch; (B, cameras * patches, vlm width)."""
        keys = self.config.image_keys
        b = obs.batch_size
        images = torch.cat([obs.channels_first(k) for k in keys], dim=0)
        features = self.vision_proj(self.vision(images))
        n, width = features.shape[1:]
        return features.view(len(keys), b, n, width).transpose(0, 1).reshape(b, len(keys) * n, width)

    def prefix_segments(self, obs: Observation) -> list[Segment]:
        """One segment per camera, then the prompt: they depend on the observation's masks only."""
        b, n = obs.batch_size, self.config.tokens_per_image
        images = [
            Segment(Kind.IMAGE, obs.image_mask(k)[:, None].expand(b, n)) for k in self.config.image_keys
        ]
        return [*images, Segment(Kind.PROMPT, obs.tokenized_prompt_mask)]

    def embed_prefix(
        self, obs: Observation, text: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, list[Segment]]:
        """Images and prompt; with `text` = (tokens (B, T), real (B, T) bool) also a causal text
        segment after them, laid out as a training text target (a subtask the actions follow)."""
        images, segments = self.embed_images(obs), self.prefix_segments(obs)
        parts = [images, self.transformer.embed_tokens(obs.tokenized_prompt).to(images.dtype)]
        if text is not None:
            tokens, valid = text
            if tokens.shape != valid.shape or tokens.shape[0] != obs.batch_size:
                raise ValueError(
                    f"text: expected tokens and mask of one shape (B={obs.batch_size}, T), got "
                    f"{tuple(tokens.shape)} and {tuple(valid.shape)}"
                )
            parts.append(self.transformer.embed_tokens(tokens).to(images.dtype))
            segments.append(Segment(Kind.TEXT_TARGET, valid))
        return torch.cat(parts, dim=1), segments

    def time_embedding(self, time: Tensor) -> Tensor:
        """sin/cos features of t (B,) with periods geometric in [min_period, max_period], float64."""
        c = self.config
        fraction = torch.linspace(0.0, 1.0, c.expert.width // 2, dtype=torch.float64, device=time.device)
        period = c.time_min_period * (c.time_max_period / c.time_min_period) ** fraction
        angle = (1.0 / period * 2 * math.pi)[None, :] * time[:, None].double()
        return torch.cat([angle.sin(), angle.cos()], dim=1).to(time.dtype)

    def suffix_segments(self, batch: int, device: torch.device, copies: int = 1) -> list[Segment]:
        """The expert's tokens: `[ACTION]` (pi0.5) or `[STATE] [ACTION]` (pi0); `copies` > 1 repeats
        them as independent groups (one per flow-matching draw)."""

        def real(n: int) -> Tensor:
            return torch.ones(batch, n, dtype=torch.bool, device=device)

        segments = []
        for g in range(1, copies + 1):
            group = g if copies > 1 else 0
            if not self.config.pi05:
                segments.append(Segment(Kind.STATE, real(1), group))
            segments.append(Segment(Kind.ACTION, real(self.config.action_horizon), group))
        return segments

    def time_features(self, time: Tensor) -> Tensor:
        """What time (B,) contributes to the suffix, in the flow heads' dtype: the adaRMS
        condition (pi0.5) or the sin/cos embedding that pi0 mixes into every action token."""
        features = self.time_embedding(time).to(self.action_in_proj.weight.dtype)
        if self.config.pi05:
            return F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(features))))
        return features

    def condition(self, time: Tensor) -> StepCondition:
        """The time features of t (B,) and pi0.5's norm modulations."""
        features = self.time_features(time)
        modulations = self.transformer.modulations(EXPERT, features) if self.config.pi05 else None
        return StepCondition(features, modulations)

    def embed_suffix(
        self, state: Tensor, noisy_actions: Tensor, time_features: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Expert token embeddings (B, suffix_len, width) in the compute dtype and the adaRMS
        condition (pi0.5, in the flow heads' dtype) or None, from `time_features(t)`."""
        heads = self.action_in_proj.weight.dtype
        actions = self.action_in_proj(noisy_actions.to(heads))
        if self.config.pi05:
            return actions.to(self.dtype), time_features
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

    def velocity(
        self, obs: Observation, noisy_actions: Tensor, time: Tensor, text: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """v(x_t, t) from one joint pass over prefix and suffix (the training path, no cache)."""
        prefix, segments = self.embed_prefix(obs, text)
        suffix, cond = self.embed_suffix(obs.state, noisy_actions, self.time_features(time))
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
        self._need_expert("the flow loss")
        expected = (obs.batch_size, self.config.action_horizon, self.config.action_dim)
        if tuple(actions.shape) != expected:
            raise ValueError(
                f"actions: expected {expected} (B, action_horizon, action_dim), got {tuple(actions.shape)}"
            )
        return self.compute_losses(obs, Targets(actions=actions), noise=noise, time=time).flow

    def _need_expert(self, what: str) -> None:
        if not self.has_expert:
            raise ValueError(f"{what} needs an action expert; this model has none (expert=None: FAST only)")

    def compute_losses(
        self, obs: Observation, targets: Targets, noise: Tensor | None = None, time: Tensor | None = None
    ) -> Losses:
        """Per-token cross-entropies of the text and FAST targets and the per-element flow loss, from
        one pass over `[images, prompt] [text target] [FAST] [state] [noisy actions]` (the segments
        a sample lacks are left out; `targets.actions` None: no flow term).

        `noise` (B, K, H, D) and `time` (B, K) give K flow-matching draws per sample: the prefix runs
        once, the expert's tokens K times as independent groups, and the flow loss is their mean
        (more supervision of the flow per step for little compute: the expert is the small part).
        (B, H, D) and (B,) are one draw, the reference's.

        Token i of a target is predicted from the hidden state of the real token before it (the last
        prompt token for the first target), so padding anywhere in the sequence is harmless. The
        expert sees the prefix and the text target but never the FAST tokens (`segments.HIDDEN`).
        Cross-entropy is computed only where the targets' `*_loss` is set (0 elsewhere); reducing
        (which samples and elements count, the weights) is the caller's.
        """
        obs.check(self.config)
        targets.check(obs.batch_size, self.config)
        text = None if targets.text_tokens is None else (targets.text_tokens, targets.text_mask)
        prefix, segments = self.embed_prefix(obs, text)
        vlm = [prefix]
        if targets.fast_tokens is not None:
            vlm.append(self.transformer.embed_tokens(targets.fast_tokens).to(prefix.dtype))
            segments.append(Segment(Kind.FAST, targets.fast_mask))
        vlm_tokens = torch.cat(vlm, dim=1)
        suffix = cond = flow_target = None
        if targets.actions is not None:
            self._need_expert("the flow loss")
            actions = targets.actions.float()
            noise = torch.randn_like(actions) if noise is None else noise.float()
            time = self.sample_time(actions.shape[0], actions.device) if time is None else time.float()
            copies = noise.shape[1] if noise.ndim == 4 else 1
            b, h, d = actions.shape
            noise, time = noise.reshape(b * copies, h, d), time.reshape(b * copies)
            actions = actions.repeat_interleave(copies, dim=0)
            t = time[:, None, None]
            suffix, cond = self.embed_suffix(
                obs.state.repeat_interleave(copies, dim=0),
                t * noise + (1 - t) * actions,
                self.time_features(time),
            )
            if copies > 1:  # the draws of a sample side by side, each token with its own time condition
                suffix = suffix.reshape(b, -1, suffix.shape[-1])
                if cond is not None:
                    cond = (
                        cond.reshape(b, copies, 1, -1)
                        .expand(-1, -1, self.config.suffix_len, -1)
                        .reshape(b, -1, cond.shape[-1])
                    )
            segments += self.suffix_segments(obs.batch_size, suffix.device, copies)
            flow_target = (noise - actions).reshape(b, copies, h, d)
        layout = build_layout(segments)
        wants_text = targets.text_tokens is not None or targets.fast_tokens is not None
        vlm_out, expert_out = self.transformer(
            [vlm_tokens, suffix],
            layout.mask,
            layout.positions,
            [None, cond],
            keep=(wants_text, suffix is not None),
        )
        text_ce = fast_ce = flow = None
        if wants_text:
            valid = torch.cat([s.valid for s in segments if s.owner == VLM], dim=1)
            ce = self._next_token_ce(
                vlm_out,
                valid,
                torch.cat([t for t in (targets.text_tokens, targets.fast_tokens) if t is not None], 1),
                torch.cat([m for m in (targets.text_loss, targets.fast_loss) if m is not None], 1),
            )
            split = targets.text_tokens.shape[1] if targets.text_tokens is not None else 0
            text_ce = ce[:, :split] if targets.text_tokens is not None else None
            fast_ce = ce[:, split:] if targets.fast_tokens is not None else None
        if suffix is not None:
            b, copies = flow_target.shape[:2]
            per_copy = expert_out.reshape(b * copies, -1, expert_out.shape[-1])
            velocity = self.predict_velocity(per_copy).reshape(flow_target.shape)
            flow = F.mse_loss(velocity, flow_target, reduction="none").mean(dim=1)
        return Losses(text=text_ce, fast=fast_ce, flow=flow)

    def _next_token_ce(self, hidden: Tensor, valid: Tensor, target_ids: Tensor, counted: Tensor) -> Tensor:
        """Cross-entropy (B, T) of the last T VLM tokens, each predicted from the previous real
        token's hidden state; 0 where `counted` (B, T) is false. Only counted tokens go through the
        vocabulary-sized head: in a mixed batch most target columns are padding (about two thirds
        on the tabletop mixture), and the head and its log-softmax are a tenth of a tiny model's step."""
        b, n = valid.shape
        index = torch.arange(n, device=valid.device).expand(b, n)
        last_real = torch.cummax(torch.where(valid, index, -1), dim=1).values
        before = torch.cat([last_real.new_full((b, 1), -1), last_real[:, :-1]], dim=1)[
            :, n - target_ids.shape[1] :
        ]
        rows, cols = counted.nonzero(as_tuple=True)
        logits = self.text_logits(hidden[rows, before[rows, cols].clamp(min=0)]).float()
        ce = F.cross_entropy(logits, target_ids[rows, cols], reduction="none")
        return ce.new_zeros(target_ids.shape).index_put((rows, cols), ce)

    def forward(
        self,
        obs: Observation,
        actions: Tensor | Targets,
        noise: Tensor | None = None,
        time: Tensor | None = None,
    ) -> Tensor | Losses:
        """The training forward (what DDP / FSDP wrap): the per-element flow loss of an action
        chunk, or every loss term of `Targets`."""
        if isinstance(actions, Targets):
            return self.compute_losses(obs, actions, noise=noise, time=time)
        return self.compute_loss(obs, actions, noise=noise, time=time)

    # ---- inference --------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, obs: Observation, text: tuple[Tensor, Tensor] | None = None) -> Prefix:
        """Run the prefix (and the conditioning `text`, see `embed_prefix`) once and cache its
        keys/values for the denoising steps."""
        obs.check(self.config)
        self._need_expert("sampling actions from the flow")
        return self.fill_cache(*self.embed_prefix(obs, text), obs.state)

    @torch.no_grad()
    def fill_cache(
        self, prefix: Tensor, segments: list[Segment], state: Tensor, cache: KVCache | None = None
    ) -> Prefix:
        """Run the embedded prefix into `cache` (allocated when None; a given one must hold the
        prefix and the suffix)."""
        b, length = prefix.shape[:2]
        layout = build_layout(segments + self.suffix_segments(b, prefix.device))
        if cache is None:
            cache = KVCache.allocate(self.config.vlm, b, layout.mask.shape[-1], prefix.dtype, prefix.device)
        self.transformer(
            [prefix, None],
            layout.mask[:, :length, :length],
            layout.positions[:, :length],
            [None, None],
            cache=cache,
            keep=(False, False),
        )
        positions = layout.positions[:, length:]
        return Prefix(
            cache,
            length,
            additive_mask(layout.mask[:, length:], prefix.dtype),
            positions,
            self.transformer.rope(positions, prefix.dtype),
            state,
        )

    def denoise_step(self, prefix: Prefix, noisy_actions: Tensor, time: Tensor) -> Tensor:
        """v(x_t, t) running only the expert's tokens against the cached prefix. Not under no_grad:
        with grad enabled it is differentiable in `noisy_actions` (real-time chunking's guidance);
        samplers call it under no_grad / inference_mode."""
        return self.conditioned_velocity(prefix, noisy_actions, self.condition(time))

    def conditioned_velocity(self, prefix: Prefix, noisy_actions: Tensor, condition: StepCondition) -> Tensor:
        """`denoise_step` with the step's time condition already computed."""
        suffix, cond = self.embed_suffix(prefix.state, noisy_actions, condition.features)
        outputs = self.transformer(
            [None, suffix],
            prefix.suffix_mask,
            None,
            [None, cond],
            cache=prefix.cache,
            offset=prefix.length,
            rope=prefix.suffix_rope,
            modulations=[None, condition.modulations],
        )
        return self.predict_velocity(outputs[EXPERT])

    @staticmethod
    def integrate(velocity: Callable[[Tensor, Tensor], Tensor], noise: Tensor, num_steps: int) -> Tensor:
        """Euler from t = 1 (noise) to t = 0 with dt = -1 / num_steps; time accumulates in float32
        exactly as the reference steps it."""
        times, dt = VLA.euler_times(num_steps, noise.device)
        x = noise.float()
        for time in times:
            x = x + dt * velocity(x, time.expand(x.shape[0]))
        return x

    @staticmethod
    def euler_times(num_steps: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The times (num_steps,) float32 at which Euler evaluates the velocity, accumulated as the
        reference steps them (1, 1 + dt, ...), and dt."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        dt = torch.tensor(-1.0 / num_steps, dtype=torch.float32, device=device)
        times = [torch.tensor(1.0, dtype=torch.float32, device=device)]
        for _ in range(num_steps - 1):
            times.append(times[-1] + dt)
        return torch.stack(times), dt

    @torch.no_grad()
    def sample_actions(
        self,
        obs: Observation,
        noise: Tensor | None = None,
        num_steps: int = 10,
        use_cache: bool = True,
        text: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Integrate the flow from noise to actions: (B, H, action_dim) float32, conditioned on
        `text` (e.g. a decoded subtask) where given.

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
            return self.integrate(lambda x, t: self.velocity(obs, x, t, text), noise, num_steps)
        prefix = self.prefill(obs, text)
        return self.integrate(lambda x, t: self.denoise_step(prefix, x, t), noise, num_steps)

    def text_logits(self, vlm_hidden: Tensor) -> Tensor:
        """Next-token logits of VLM hidden states (for text / FAST targets), via the tied embedding."""
        return self.transformer.logits(vlm_hidden)

    @torch.no_grad()
    def generate(
        self,
        obs: Observation,
        *,
        max_new_tokens: int,
        eos_id: int,
        forced: Sequence[int] = (),
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
        keep_logits: bool = False,
        step: DecodeStep | None = None,
    ) -> Generation:
        """Decode tokens after the prompt with a static KV cache: tokens (B, T), lengths (B,), and
        with `keep_logits` the logits (B, T, V) each token was chosen from.

        `forced` tokens are fed first (e.g. "Action: "), then up to `max_new_tokens` are chosen
        greedily (`temperature` 0) or sampled; a sample stops at `eos_id` (not counted in its
        length; later slots hold the pad id 0). Every sample's first token sits at the position
        right after its own last real prompt token, whatever the padding, and each step reads the
        real prompt tokens and the tokens decoded so far (checked against full recomputation).

        The prompt runs once into a cache with room for every step; each token is then fed by
        `step` (`decode_step` by default; `inference.engine.DecodingEngine` passes a compiled or
        CUDA-graph one), a pass of one shape whatever the step. Choosing the tokens stays here,
        as does the check after each one whether every sample has ended (a host read).
        """
        obs.check(self.config)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        step = step or self.decode_step
        steps = len(forced) + max_new_tokens
        decoding, logits = self._start_decoding(obs, steps)
        (b, _), device = decoding.prompt.shape, logits.device
        slot = torch.full((), decoding.prompt.shape[1] - steps, dtype=torch.int64, device=device)
        tokens, scores, done = [], [], torch.zeros(b, dtype=torch.bool, device=device)
        lengths = torch.zeros(b, dtype=torch.int64, device=device)
        for k in range(steps):
            if k < len(forced):
                token = torch.full((b,), forced[k], dtype=torch.int64, device=device)
            else:
                if keep_logits:
                    scores.append(logits)
                if temperature > 0:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    token = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(device)
                else:
                    token = logits.argmax(dim=-1)
                token = torch.where(done, torch.zeros_like(token), token)
                lengths += (~done & (token != eos_id)).long()
                done |= token == eos_id
                tokens.append(token)
                if bool(done.all()) or k == steps - 1:
                    break
            logits = step(decoding, token, slot)
            slot = slot + 1
        return Generation(
            tokens=torch.stack(tokens, dim=1),
            lengths=lengths,
            logits=torch.stack(scores, 1) if keep_logits else None,
        )

    def _start_decoding(self, obs: Observation, steps: int) -> tuple[Decoding, Tensor]:
        """The prompt run into a cache with room for `steps` more tokens, and the logits (B, V)
        float32 after each sample's last real prompt token."""
        prefix, segments = self.embed_prefix(obs)
        layout = build_layout(segments)
        valid = torch.cat([s.valid for s in segments], dim=1)
        (b, n), device = valid.shape, valid.device
        cache = KVCache.allocate(self.config.vlm, b, n + steps, prefix.dtype, device)
        (hidden, _) = self.transformer(
            [prefix, None], layout.mask, layout.positions, [None, None], cache=cache, keep=(True, False)
        )
        index = torch.arange(n + steps, device=device)
        last = torch.where(valid, index[:n], -1).max(dim=1).values
        decoding = Decoding(
            cache,
            prompt=torch.cat([valid, valid.new_zeros(b, steps)], dim=1),
            slots=index.masked_fill(index < n, n + steps),
            position_offset=layout.positions.max(dim=1).values + 1 - n,
        )
        return decoding, self.text_logits(hidden[torch.arange(b, device=device), last]).float()

    def decode_step(self, decoding: Decoding, token: Tensor, slot: Tensor) -> Tensor:
        """The next-token logits (B, V) float32 after feeding `token` (B,) at cache slot `slot`
        (a 0-dim int64 tensor): one VLM pass over one token per sample, which writes its keys and
        values at `slot` by index and attends over the whole cache, the slots after `slot` and
        the prompt's padding masked. Every step has the same shapes and no host number depends
        on the step, so the step compiles once and captures as one CUDA graph."""
        (hidden, _) = self.transformer(
            [self.transformer.embed_tokens(token[:, None]).to(self.dtype), None],
            decoding.readable(slot)[:, None],
            (decoding.position_offset + slot)[:, None],
            [None, None],
            cache=decoding.cache,
            offset=slot,
            keep=(True, False),
        )
        return self.text_logits(hidden[:, 0]).float()
