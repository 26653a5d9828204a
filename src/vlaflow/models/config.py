"""Typed model configurations.

Everything that shapes the network lives here as frozen dataclasses, so a config can be written to
JSON with a checkpoint and read back exactly (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# The three camera slots of the reference, in prefix order.
REFERENCE_IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
FAST_ID_LAYOUTS = ("appended", "reference")
REFERENCE_FAST_SKIP = 128  # openpi's pi0-FAST leaves PaliGemma's last 128 ids alone


@dataclass(frozen=True)
class GemmaConfig:
    """One Gemma decoder stack (the VLM's language model or the action expert)."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_base: float = 10_000.0
    norm_eps: float = 1e-6


@dataclass(frozen=True)
class SiglipConfig:
    """A SigLIP ViT image encoder (no pooling head: every patch token is kept)."""

    image_size: int = 224
    patch_size: int = 14
    width: int = 1152
    depth: int = 27
    mlp_dim: int = 4304
    num_heads: int = 16
    norm_eps: float = 1e-6

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class VLAConfig:
    """A pi0 / pi0.5 model: SigLIP + Gemma VLM + Gemma action expert.

    `pi05` switches the flow head between the two reference variants: pi0 embeds the state as one
    expert token and mixes time into the action tokens with an MLP; pi0.5 writes the discretized
    state into the prompt and conditions every expert norm on time (adaRMSNorm).
    `knowledge_insulation` makes the expert read the VLM's keys/values through a stop-gradient,
    so the flow loss cannot change the VLM, which then learns from its own (text / FAST) losses.
    `expert=None` is a VLM without an action expert (pi0-FAST, the recipe's first stage): it acts
    through FAST tokens only. `fast_vocab_size` FAST action tokens get embedding rows after the
    `vocab_size` text tokens (ids vocab_size .. vocab_size + fast_vocab_size - 1), so they collide
    with no text, `<loc>` or `<seg>` token.
    `fast_ids="reference"` is openpi's pi0-FAST instead: FAST id k is text id
    `vocab_size - 1 - REFERENCE_FAST_SKIP - k` (PaliGemma's `<loc>` ids, below its final 128 ids),
    with no rows of its own, and its prompt is lower-cased; converted openpi pi0-FAST models use it.
    `discrete_state_input` (openpi's name; None: `pi05`) writes the discretized state into the prompt;
    a pi0.5 model without it sees no state at all (the prompt takes pi0's form, "prompt\n"), so it
    must read where the robot is from its cameras.
    """

    vision: SiglipConfig
    vlm: GemmaConfig
    expert: GemmaConfig | None
    pi05: bool
    vocab_size: int = 257_152
    fast_vocab_size: int = 0
    fast_ids: str = "appended"
    action_dim: int = 32
    action_horizon: int = 50
    max_token_len: int = 48
    image_keys: tuple[str, ...] = REFERENCE_IMAGE_KEYS
    knowledge_insulation: bool = False
    discrete_state_input: bool | None = None
    time_min_period: float = 4e-3
    time_max_period: float = 4.0

    def __post_init__(self) -> None:
        shared = ("depth", "num_heads", "num_kv_heads", "head_dim")
        for name in shared if self.expert is not None else ():
            if getattr(self.vlm, name) != getattr(self.expert, name):
                raise ValueError(
                    f"vlm.{name}={getattr(self.vlm, name)} != expert.{name}={getattr(self.expert, name)}: "
                    "the two experts attend jointly, so they must share depth, heads, kv heads and head_dim"
                )
        if self.vlm.num_heads % self.vlm.num_kv_heads:
            raise ValueError(f"num_heads={self.vlm.num_heads} must be a multiple of num_kv_heads")
        if self.expert is not None and self.expert.width % 2:
            raise ValueError(f"expert.width={self.expert.width} must be even (sin/cos time embedding)")
        if self.expert is None and self.knowledge_insulation:
            raise ValueError("knowledge_insulation needs an action expert to insulate (expert is None)")
        if self.fast_vocab_size < 0:
            raise ValueError(f"fast_vocab_size must be >= 0, got {self.fast_vocab_size}")
        if self.fast_ids not in FAST_ID_LAYOUTS:
            raise ValueError(f"fast_ids={self.fast_ids!r}: expected one of {FAST_ID_LAYOUTS}")
        if not self.image_keys:
            raise ValueError("image_keys must name at least one camera")
        if self.discrete_state_input and not self.pi05:
            raise ValueError("discrete_state_input=True is a pi0.5 setting (pi0 projects the state instead)")

    @property
    def state_in_prompt(self) -> bool:
        """Whether prompts carry the discretized state (`discrete_state_input`, default: pi0.5)."""
        return self.pi05 if self.discrete_state_input is None else self.discrete_state_input

    @property
    def tokens_per_image(self) -> int:
        return self.vision.num_patches

    @property
    def prefix_len(self) -> int:
        return len(self.image_keys) * self.tokens_per_image + self.max_token_len

    @property
    def suffix_len(self) -> int:
        if self.expert is None:
            return 0
        return self.action_horizon + (0 if self.pi05 else 1)

    @property
    def embedding_rows(self) -> int:
        """Rows of the token embedding (and of the tied output head): text, then FAST tokens (none
        of their own where FAST ids reuse text ids, `fast_ids="reference"`)."""
        return self.vocab_size + (self.fast_vocab_size if self.fast_ids == "appended" else 0)

    def replace(self, **changes: Any) -> VLAConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["image_keys"] = list(self.image_keys)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VLAConfig:
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown VLAConfig fields {unknown}; known: {sorted(known)}")
        data["vision"] = SiglipConfig(**data["vision"])
        data["vlm"] = GemmaConfig(**data["vlm"])
        data["expert"] = GemmaConfig(**data["expert"]) if data.get("expert") is not None else None
        data["image_keys"] = tuple(data.get("image_keys", REFERENCE_IMAGE_KEYS))
        return cls(**data)
