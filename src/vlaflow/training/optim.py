"""AdamW, the reference's warmup + cosine schedule, and an EMA of the weights.

Defaults are the reference's: AdamW(b1 0.9, b2 0.95, eps 1e-8, weight decay 1e-10), global-norm
clip 1.0, linear warmup over 1k steps from peak / (warmup + 1) to the peak 2.5e-5, then cosine
decay to 2.5e-6 at 30k steps (optax's `warmup_cosine_decay_schedule`, whose decay length
includes the warmup), EMA 0.99.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor


def _setting(default: float | int | None, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class OptimConfig:
    peak_lr: float = _setting(2.5e-5, "learning rate after warmup")
    end_lr: float = _setting(2.5e-6, "learning rate at the end of the cosine decay")
    warmup_steps: int = _setting(1_000, "linear warmup steps")
    decay_steps: int | None = _setting(30_000, "step where the cosine reaches end_lr (null: the run's end)")
    b1: float = _setting(0.9, "AdamW beta1")
    b2: float = _setting(0.95, "AdamW beta2")
    eps: float = _setting(1e-8, "AdamW epsilon")
    weight_decay: float = _setting(1e-10, "AdamW decoupled weight decay")
    clip_norm: float = _setting(1.0, "global gradient-norm clip")
    ema_decay: float | None = _setting(0.99, "EMA of the weights exported with checkpoints (null: none)")


def learning_rate(step: int, c: OptimConfig, total_steps: int) -> float:
    """The learning rate used for the update at `step` (0-based)."""
    if step < c.warmup_steps:
        start = c.peak_lr / (c.warmup_steps + 1)
        return start + (c.peak_lr - start) * step / c.warmup_steps
    decay_steps = c.decay_steps or total_steps
    progress = min(1.0, (step - c.warmup_steps) / max(1, decay_steps - c.warmup_steps))
    return c.end_lr + (c.peak_lr - c.end_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(params: list[nn.Parameter], c: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=c.peak_lr, betas=(c.b1, c.b2), eps=c.eps, weight_decay=c.weight_decay)


class EMA:
    """Exponential moving average of the trainable parameters, kept in float32.

    `ema = decay * ema + (1 - decay) * param` after every optimizer step; inference checkpoints
    use the averaged weights, as the reference does.
    """

    def __init__(self, named_params: dict[str, Tensor], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in named_params.items()}

    @torch.no_grad()
    def update(self, named_params: dict[str, Tensor]) -> None:
        for k, v in named_params.items():
            self.shadow[k].lerp_(v.detach().float(), 1.0 - self.decay)

    def full_state(self) -> dict[str, Tensor]:
        """Unsharded copies (a collective when the parameters are FSDP-sharded DTensors)."""
        return {k: v.full_tensor() if isinstance(v, DTensor) else v.clone() for k, v in self.shadow.items()}

    @torch.no_grad()
    def load(self, full: dict[str, Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(full))
        if missing:
            raise ValueError(f"EMA state lacks {missing[:5]}")
        for k, v in self.shadow.items():
            value = full[k].to(device=v.device, dtype=torch.float32)
            if isinstance(v, DTensor):
                value = distribute_tensor(value, v.device_mesh, v.placements)
            self.shadow[k] = value
