"""The model's input: a batch of preprocessed observations, checked field by field.

This is the tensor-level contract of the reference (openpi's `Observation`): images already at
the model's resolution in [-1, 1], state normalized and padded to `action_dim`, prompt tokenized.
Raw robot data becomes an `Observation` through `vlaflow.data.transforms`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from vlaflow.models.config import VLAConfig


@dataclass
class Observation:
    """images[name]: (B, S, S, 3) or (B, 3, S, S) float in [-1, 1]; image_masks[name]: (B,) bool
    (False = camera missing; absent = all present); state: (B, action_dim) float;
    tokenized_prompt: (B, L) int64, L <= max_token_len; tokenized_prompt_mask: (B, L) bool (False =
    padding)."""

    images: dict[str, Tensor]
    state: Tensor
    tokenized_prompt: Tensor
    tokenized_prompt_mask: Tensor
    image_masks: dict[str, Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.state.shape[0]

    def to(self, device: torch.device | str) -> Observation:
        return Observation(
            images={k: v.to(device) for k, v in self.images.items()},
            image_masks={k: v.to(device) for k, v in self.image_masks.items()},
            state=self.state.to(device),
            tokenized_prompt=self.tokenized_prompt.to(device),
            tokenized_prompt_mask=self.tokenized_prompt_mask.to(device),
        )

    def check(self, config: VLAConfig) -> None:
        """Raise a ValueError naming the first field that does not fit `config`."""
        b = self.state.shape[0] if self.state.ndim == 2 else None
        _expect(
            self.state.ndim == 2
            and self.state.shape[1] == config.action_dim
            and self.state.is_floating_point(),
            "state",
            f"float (B, {config.action_dim}) (normalized, zero-padded to action_dim)",
            self.state,
        )
        length = self.tokenized_prompt.shape[-1]
        _expect(
            self.tokenized_prompt.shape == (b, length)
            and 1 <= length <= config.max_token_len
            and self.tokenized_prompt.dtype in (torch.int64, torch.int32),
            "tokenized_prompt",
            f"int64 (B={b}, L <= max_token_len={config.max_token_len})",
            self.tokenized_prompt,
        )
        _expect(
            self.tokenized_prompt_mask.shape == (b, length)
            and self.tokenized_prompt_mask.dtype == torch.bool,
            "tokenized_prompt_mask",
            f"bool (B={b}, L={length}), the prompt's shape",
            self.tokenized_prompt_mask,
        )
        missing = [k for k in config.image_keys if k not in self.images]
        if missing:
            raise ValueError(
                f"Observation.images is missing {missing}; the model expects {list(config.image_keys)} "
                "(give a missing camera as a black image with image_masks[name] = False)"
            )
        s = config.vision.image_size
        for name in config.image_keys:
            image = self.images[name]
            shape_ok = image.ndim == 4 and image.shape[0] == b and image.shape[1:] in ((s, s, 3), (3, s, s))
            _expect(
                shape_ok and image.is_floating_point(),
                f"images[{name!r}]",
                f"float in [-1, 1] shaped (B={b}, {s}, {s}, 3) or (B, 3, {s}, {s}) "
                "(uint8 or other sizes: use vlaflow.data.transforms.prepare_images)",
                image,
            )
            if name in self.image_masks:
                m = self.image_masks[name]
                _expect(
                    m.shape == (b,) and m.dtype == torch.bool, f"image_masks[{name!r}]", f"bool (B={b},)", m
                )

    def without_prompt_padding(self) -> Observation:
        """The batch without the trailing prompt columns that are padding in every sample (at least
        one kept). Prompts are padded to `max_token_len` and most are far shorter; padding is masked
        out of attention and positions, so the columns cost compute and change nothing."""
        used = self.tokenized_prompt_mask.any(dim=0).nonzero()
        width = int(used.max()) + 1 if used.numel() else 1
        return dataclasses.replace(
            self,
            tokenized_prompt=self.tokenized_prompt[:, :width],
            tokenized_prompt_mask=self.tokenized_prompt_mask[:, :width],
        )

    def channels_first(self, name: str) -> Tensor:
        image = self.images[name]
        return image.permute(0, 3, 1, 2) if image.shape[-1] == 3 else image

    def image_mask(self, name: str) -> Tensor:
        if name in self.image_masks:
            return self.image_masks[name]
        return torch.ones(self.batch_size, dtype=torch.bool, device=self.state.device)


def _expect(ok: bool, name: str, expected: str, got: Tensor) -> None:
    if not ok:
        raise ValueError(f"Observation.{name}: expected {expected}, got {got.dtype} {tuple(got.shape)}")
