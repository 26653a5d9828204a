"""Shared test inputs: observations with padding and a missing camera, and non-degenerate weights;
the reference of cached decoding (logits recomputed over the whole sequence)."""

from __future__ import annotations

import torch

from vlaflow import VLA, Observation, VLAConfig
from vlaflow.models.segments import Kind, Segment, build_layout


def make_observation(
    config: VLAConfig, batch: int = 2, seed: int = 0, channels_last: bool = True
) -> Observation:
    g = torch.Generator().manual_seed(seed)
    s = config.vision.image_size
    shape = (batch, s, s, 3) if channels_last else (batch, 3, s, s)
    images = {k: torch.rand(shape, generator=g) * 2 - 1 for k in config.image_keys}
    lengths = torch.randint(3, config.max_token_len, (batch,), generator=g)
    lengths[0] = config.max_token_len  # one prompt fills the whole window
    tokens = torch.randint(0, min(config.vocab_size, 1000), (batch, config.max_token_len), generator=g)
    mask = torch.arange(config.max_token_len)[None, :] < lengths[:, None]
    image_masks = {config.image_keys[-1]: torch.tensor([True] + [False] * (batch - 1))}
    return Observation(
        images=images,
        image_masks=image_masks,
        state=torch.randn(batch, config.action_dim, generator=g),
        tokenized_prompt=tokens * mask,
        tokenized_prompt_mask=mask,
    )


def randomize_(module: torch.nn.Module, std: float = 0.05, seed: int = 0) -> None:
    """Give every parameter (norm scales and adaRMS modulations included) random values, so no
    code path is hidden behind a zero-initialized gate."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def full_recomputation_logits(model: VLA, obs, generated: torch.Tensor) -> torch.Tensor:
    """Logits after `generated` tokens, recomputing the whole sequence without a cache."""
    prefix, segments = model.embed_prefix(obs)
    vlm = [prefix]
    if generated.shape[1]:
        vlm.append(model.transformer.embed_tokens(generated))
        segments.append(Segment(Kind.TEXT_TARGET, torch.ones(generated.shape, dtype=torch.bool)))
    layout = build_layout(segments)
    valid = torch.cat([s.valid for s in segments], 1)
    hidden, _ = model.transformer([torch.cat(vlm, 1), None], layout.mask, layout.positions, [None, None])
    last = torch.where(valid, torch.arange(valid.shape[1]), -1).max(1).values
    return model.text_logits(hidden[torch.arange(valid.shape[0]), last])
