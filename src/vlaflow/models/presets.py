"""Named model sizes: the reference's variants and tiny CPU models.

`gemma_2b`, `gemma_300m` and `dummy` are the reference's Gemma variants; `so400m` its vision
tower. The reference's `dummy` models keep the full So400m vision tower (projected down to the
dummy width). `*_tiny` presets are small enough to train from scratch on a CPU; they use the
embedded tokenizer, whose vocabulary size `EMBEDDED_VOCAB_SIZE` must match
`vlaflow.tokenizers.EmbeddedTokenizer` (a test checks it).
"""

from __future__ import annotations

from typing import Any

from vlaflow.models.config import GemmaConfig, SiglipConfig, VLAConfig

GEMMA_VARIANTS = {
    "gemma_2b": GemmaConfig(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256),
    "gemma_300m": GemmaConfig(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
    "dummy": GemmaConfig(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
}
SO400M = SiglipConfig()
TINY_VISION = SiglipConfig(image_size=112, patch_size=14, width=96, depth=3, mlp_dim=192, num_heads=4)
TABLETOP_VISION = SiglipConfig(image_size=112, patch_size=28, width=96, depth=3, mlp_dim=192, num_heads=4)
"""The tiny vision tower with 28-px patches: 16 tokens per image, a quarter of the image tokens of
14-px patches (the prefix and most of a training step's cost)."""
TABLETOP_IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb")
"""The tabletop's two cameras (scene, wrist) in the first two slots; no black third slot."""
TINY_VLM = GemmaConfig(width=128, depth=4, mlp_dim=256, num_heads=4, num_kv_heads=1, head_dim=32)
TINY_EXPERT = GemmaConfig(width=64, depth=4, mlp_dim=128, num_heads=4, num_kv_heads=1, head_dim=32)
PALIGEMMA_VOCAB_SIZE = 257_152
EMBEDDED_VOCAB_SIZE = 5_112


def reference_config(
    *,
    pi05: bool,
    paligemma_variant: str = "gemma_2b",
    action_expert_variant: str = "gemma_300m",
    action_horizon: int = 50,
    action_dim: int = 32,
    max_token_len: int | None = None,
) -> VLAConfig:
    """A config with the reference's architecture, named the way openpi's `Pi0Config` names it."""
    for name, variant in (
        ("paligemma_variant", paligemma_variant),
        ("action_expert_variant", action_expert_variant),
    ):
        if variant not in GEMMA_VARIANTS:
            raise ValueError(f"{name}={variant!r}: expected one of {sorted(GEMMA_VARIANTS)}")
    return VLAConfig(
        vision=SO400M,
        vlm=GEMMA_VARIANTS[paligemma_variant],
        expert=GEMMA_VARIANTS[action_expert_variant],
        pi05=pi05,
        vocab_size=PALIGEMMA_VOCAB_SIZE,
        action_dim=action_dim,
        action_horizon=action_horizon,
        max_token_len=max_token_len if max_token_len is not None else (200 if pi05 else 48),
    )


def _tiny(pi05: bool) -> VLAConfig:
    return VLAConfig(
        vision=TINY_VISION,
        vlm=TINY_VLM,
        expert=TINY_EXPERT,
        pi05=pi05,
        vocab_size=EMBEDDED_VOCAB_SIZE,
        max_token_len=64 if pi05 else 48,
    )


def _tabletop_tiny(*, expert: bool) -> VLAConfig:
    """CPU-sized for the tabletop: 16 tokens per image, only the two camera slots the data has, chunks
    of 10 actions (half a second), prompts up to 48 tokens; `expert=False` is its VLM alone (what
    `pi05_tabletop_base_tiny` pre-trains)."""
    config = _tiny(pi05=True).replace(
        vision=TABLETOP_VISION, image_keys=TABLETOP_IMAGE_KEYS, action_horizon=10, max_token_len=48
    )
    return config if expert else config.replace(expert=None)


TINY_FAST_VOCAB = 256
FAST_VOCAB = 1024


def _fast(config: VLAConfig, fast_vocab_size: int, *, expert: bool, insulate: bool = False) -> VLAConfig:
    """pi0-FAST (a VLM without an action expert) or pi0.5 with FAST tokens and knowledge insulation."""
    return config.replace(
        expert=config.expert if expert else None,
        fast_vocab_size=fast_vocab_size,
        knowledge_insulation=insulate,
    )


PRESETS = {
    "pi0": lambda: reference_config(pi05=False),
    "pi05": lambda: reference_config(pi05=True),
    "pi0_dummy": lambda: reference_config(
        pi05=False, paligemma_variant="dummy", action_expert_variant="dummy"
    ),
    "pi05_dummy": lambda: reference_config(
        pi05=True, paligemma_variant="dummy", action_expert_variant="dummy"
    ),
    "pi0_tiny": lambda: _tiny(pi05=False),
    "pi05_tiny": lambda: _tiny(pi05=True),
    # pi0-FAST and the knowledge-insulation recipe (the expert-less model is also its first stage).
    "pi0fast": lambda: _fast(reference_config(pi05=True), FAST_VOCAB, expert=False),
    "pi05_ki": lambda: _fast(reference_config(pi05=True), FAST_VOCAB, expert=True, insulate=True),
    "pi0fast_tiny": lambda: _fast(_tiny(pi05=True), TINY_FAST_VOCAB, expert=False),
    "pi05_ki_tiny": lambda: _fast(_tiny(pi05=True), TINY_FAST_VOCAB, expert=True, insulate=True),
    "pi05_tabletop_tiny": lambda: _tabletop_tiny(expert=True),
    "pi05_tabletop_vlm_tiny": lambda: _tabletop_tiny(expert=False),
}


def preset(name: str, **overrides: Any) -> VLAConfig:
    """The named config, with any top-level field replaced (e.g. `action_horizon=10`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]().replace(**overrides)
