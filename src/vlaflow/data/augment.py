"""The reference's per-sample training augmentation, driven by an explicit generator.

Non-wrist cameras: random crop to 95% and resize back, then a random rotation in [-5, 5] degrees
(black corners). All cameras: brightness x U[0.7, 1.3], contrast x U[0.6, 1.4] around the mean
grey, saturation x U[0.5, 1.5] around the per-pixel grey; clamped to [0, 1]. Each sample gets its
own draws from a generator seeded by the sample's identity, so augmentation is reproducible
whatever worker process draws it (exact resume).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LUMA = torch.tensor([0.299, 0.587, 0.114])


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g).item()


def _crop_and_resize(image: Tensor, g: torch.Generator, fraction: float = 0.95) -> Tensor:
    _, h, w = image.shape
    ch, cw = int(h * fraction), int(w * fraction)
    top = int(torch.randint(0, h - ch + 1, (), generator=g))
    left = int(torch.randint(0, w - cw + 1, (), generator=g))
    crop = image[None, :, top : top + ch, left : left + cw]
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0]


def _rotate(image: Tensor, degrees: float) -> Tensor:
    _, h, w = image.shape
    a = math.radians(degrees)
    theta = torch.tensor(
        [[math.cos(a), -math.sin(a) * h / w, 0.0], [math.sin(a) * w / h, math.cos(a), 0.0]], dtype=image.dtype
    )
    grid = F.affine_grid(theta[None], [1, 3, h, w], align_corners=False)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def augment_image(image: Tensor, *, wrist: bool, generator: torch.Generator) -> Tensor:
    """image: (3, H, W) float in [0, 1] -> augmented, same shape and range."""
    if not wrist:
        image = _rotate(_crop_and_resize(image, generator), _uniform(generator, -5.0, 5.0))
    image = image * _uniform(generator, 0.7, 1.3)
    grey = (image * LUMA[:, None, None]).sum(0, keepdim=True)
    image = (image - grey.mean()) * _uniform(generator, 0.6, 1.4) + grey.mean()
    grey = (image * LUMA[:, None, None]).sum(0, keepdim=True)
    image = grey + (image - grey) * _uniform(generator, 0.5, 1.5)
    return image.clamp(0.0, 1.0)
