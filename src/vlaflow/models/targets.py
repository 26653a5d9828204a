"""What a training sample asks the model to predict, and the per-element losses it gets back.

A batch can mix samples of different kinds (a web sample has only a text answer, a robot sample
FAST tokens and an action chunk, perhaps a subtask): every term's tensors are batch-wide, and the
masks say which elements of which samples count, so the trainer can normalize each term exactly
over the elements that have it. Tensors of a term no sample in the batch has are None.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from vlaflow.models.config import VLAConfig


@dataclass
class Targets:
    """text_tokens / fast_tokens: (B, L) int64 ids of the causal text target (subtask, answer) and
    of the FAST action target (`Action: ` + FAST ids + `|` + EOS); *_mask (B, L) bool: real tokens
    (the sequence layout), *_loss (B, L) bool: tokens that carry cross-entropy. actions: (B, H, D)
    normalized chunk for the flow term, action_mask (B, H, D) bool its real elements."""

    text_tokens: Tensor | None = None
    text_mask: Tensor | None = None
    text_loss: Tensor | None = None
    fast_tokens: Tensor | None = None
    fast_mask: Tensor | None = None
    fast_loss: Tensor | None = None
    actions: Tensor | None = None
    action_mask: Tensor | None = None

    def check(self, batch: int, config: VLAConfig) -> None:
        """Raise a ValueError naming the first field that does not fit."""
        for name in ("text", "fast"):
            tokens, mask, loss = (getattr(self, f"{name}_{k}") for k in ("tokens", "mask", "loss"))
            if tokens is None:
                if mask is not None or loss is not None:
                    raise ValueError(f"Targets.{name}_mask/_loss given without {name}_tokens")
                continue
            if tokens.ndim != 2 or tokens.shape[0] != batch or tokens.is_floating_point():
                raise ValueError(
                    f"Targets.{name}_tokens: expected int64 (B={batch}, L), got {tuple(tokens.shape)}"
                )
            for field, value in (("mask", mask), ("loss", loss)):
                if value is None or value.shape != tokens.shape or value.dtype.is_floating_point:
                    raise ValueError(f"Targets.{name}_{field}: expected bool {tuple(tokens.shape)}")
            if int(tokens.max()) >= config.embedding_rows or int(tokens.min()) < 0:
                raise ValueError(
                    f"Targets.{name}_tokens: ids must be in [0, {config.embedding_rows}) (text + FAST ids)"
                )
        if self.actions is not None:
            shape = (batch, config.action_horizon, config.action_dim)
            if tuple(self.actions.shape) != shape:
                raise ValueError(f"Targets.actions: expected {shape}, got {tuple(self.actions.shape)}")
        if self.actions is None and self.text_tokens is None and self.fast_tokens is None:
            raise ValueError("Targets: nothing to predict (no text, FAST or action targets)")


@dataclass
class Losses:
    """Per-element losses: text / fast (B, L) cross-entropy per target token (0 where the
    targets' `*_loss` is false), flow (B, H, D) squared error of the velocity; None for a term the
    targets did not ask for."""

    text: Tensor | None = None
    fast: Tensor | None = None
    flow: Tensor | None = None
