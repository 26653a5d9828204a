"""Raw observations -> model `Observation`: cameras, resize-with-pad, [-1, 1] scaling, padding, prompts.

The same functions serve training and inference, so a policy cannot preprocess differently from
how it was trained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vlaflow.models import Observation, VLAConfig
from vlaflow.tokenizers import Tokenizer, model_prompt

ArrayLike = np.ndarray | Tensor


def as_tensor(x: ArrayLike) -> Tensor:
    return x if isinstance(x, Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def resize_with_pad(images: Tensor, height: int, width: int) -> Tensor:
    """Resize (..., H, W, 3) images to fit (height, width) keeping the aspect ratio, then pad
    evenly with black (0 for uint8, -1 for float images in [-1, 1]). Same dtype out."""
    if images.ndim < 3 or images.shape[-1] != 3:
        raise ValueError(f"images: expected (..., H, W, 3), got {tuple(images.shape)}")
    *lead, h, w, _ = images.shape
    if (h, w) == (height, width):
        return images
    ratio = max(w / width, h / height)
    new_h, new_w = int(h / ratio), int(w / ratio)
    x = images.reshape(-1, h, w, 3).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    black = 0.0 if images.dtype == torch.uint8 else -1.0
    x = F.pad(x, (left, width - new_w - left, top, height - new_h - top), value=black)
    x = x.permute(0, 2, 3, 1)
    if images.dtype == torch.uint8:
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x.to(images.dtype).reshape(*lead, height, width, 3)


def to_model_range(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]; float images are taken to be in [-1, 1] already."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0 * 2.0 - 1.0
    return images.float()


def pad_to_dim(x: Tensor, dim: int, name: str = "vector") -> Tensor:
    """Zero-pad the last axis to `dim` (state and actions are padded to the model's action_dim)."""
    if x.shape[-1] > dim:
        raise ValueError(f"{name}: last dimension {x.shape[-1]} exceeds the model's action_dim {dim}")
    return F.pad(x, (0, dim - x.shape[-1]))


def prepare_images(
    images: Mapping[str, ArrayLike], config: VLAConfig, batch: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Camera images (B, H, W, 3) uint8 or float -> model images and masks; cameras the model
    expects but `images` lacks become black images with mask False."""
    unknown = sorted(set(images) - set(config.image_keys))
    if unknown:
        raise ValueError(
            f"images: unknown cameras {unknown}; the model's cameras are {list(config.image_keys)}"
        )
    size = config.vision.image_size
    out, masks = {}, {}
    for key in config.image_keys:
        if key not in images:
            out[key] = torch.full((batch, size, size, 3), -1.0)
            masks[key] = torch.zeros(batch, dtype=torch.bool)
            continue
        image = as_tensor(images[key])
        if image.ndim != 4 or image.shape[0] != batch or image.shape[-1] != 3:
            raise ValueError(
                f"images[{key!r}]: expected (B={batch}, H, W, 3) uint8 or float, got {tuple(image.shape)}"
            )
        out[key] = to_model_range(resize_with_pad(image, size, size))
        masks[key] = torch.ones(batch, dtype=torch.bool)
    return out, masks


def build_observation(
    config: VLAConfig,
    tokenizer: Tokenizer,
    *,
    images: Mapping[str, ArrayLike],
    state: ArrayLike,
    prompts: Sequence[str],
) -> Observation:
    """One batch: `state` (B, N) already normalized (N <= action_dim, except for a model without an
    action expert, which reads the state from its prompt only: openpi's LIBERO pi0-FAST has an
    8-value state and 7 actions), one prompt per sample."""
    state = as_tensor(state).float()
    if state.ndim != 2:
        raise ValueError(f"state: expected (B, N) normalized state, got {tuple(state.shape)}")
    batch = state.shape[0]
    if isinstance(prompts, str) or len(prompts) != batch:
        raise ValueError(f"prompts: expected a list of {batch} strings (one per sample)")
    model_images, masks = prepare_images(images, config, batch)
    tokens, token_masks = zip(
        *(model_prompt(config, tokenizer, p, s.numpy()) for p, s in zip(prompts, state, strict=True)),
        strict=True,
    )
    return Observation(
        images=model_images,
        image_masks=masks,
        state=pad_to_dim(
            state if config.expert else state[:, : config.action_dim], config.action_dim, "state"
        ),
        tokenized_prompt=torch.from_numpy(np.stack(tokens)),
        tokenized_prompt_mask=torch.from_numpy(np.stack(token_masks)),
    )
