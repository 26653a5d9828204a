"""One reduction for every kind of sample: each loss term is averaged over exactly the elements
that have it, across the whole global batch, then the terms are weighted and summed.

loss = mean(CE over text-target tokens) + mean(CE over FAST tokens) + flow_weight * mean(flow
squared error over real action elements). A sample without a term (a web sample has no action
chunk, a flow-only model no FAST tokens) adds nothing to that term's sum or count, so mixing kinds
in a batch changes no term's scale.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from vlaflow.data.pipeline import Batch
from vlaflow.models import Losses, Targets

TERMS = ("text", "fast", "flow")


def batch_targets(batch: Batch, *, flow: bool, reference_reduction: bool) -> Targets:
    """What a training batch asks the model to predict. `reference_reduction` averages the flow
    term over every element of the chunks (as openpi does), not only real ones."""
    action_mask = batch.action_mask
    if reference_reduction:
        action_mask = batch.has_actions[:, None, None].expand_as(batch.action_mask)
    return drop_padding_columns(
        Targets(
            text_tokens=batch.text_tokens,
            text_mask=batch.text_mask,
            text_loss=batch.text_mask,
            fast_tokens=batch.fast_tokens,
            fast_mask=batch.fast_mask,
            fast_loss=batch.fast_mask,
            actions=batch.actions if flow else None,
            action_mask=action_mask if flow else None,
        )
    )


def drop_padding_columns(targets: Targets) -> Targets:
    """The targets without the trailing token columns that no sample in the batch uses.

    Targets are padded to a fixed length (e.g. `max_fast_tokens`) and most samples' are much
    shorter: the padding adds VLM tokens and vocabulary-sized logits to every step without changing
    any loss. At least one column is kept, so whether a term is present never depends on the batch
    (processes of a distributed step must reduce the same terms).
    """
    changes = {}
    for name in ("text", "fast"):
        tokens, mask, loss = (getattr(targets, f"{name}_{k}") for k in ("tokens", "mask", "loss"))
        if tokens is None:
            continue
        used = mask.any(dim=0).nonzero()
        width = int(used.max()) + 1 if used.numel() else 1
        changes.update(
            {
                f"{name}_tokens": tokens[:, :width],
                f"{name}_mask": mask[:, :width],
                f"{name}_loss": loss[:, :width],
            }
        )
    return dataclasses.replace(targets, **changes)


def term_sums(losses: Losses, targets: Targets) -> dict[str, tuple[Tensor, Tensor]]:
    """Per present term: (sum of its counted elements, their number), both float32 scalars."""
    masks = {"text": targets.text_loss, "fast": targets.fast_loss, "flow": targets.action_mask}
    out = {}
    for term in TERMS:
        values = getattr(losses, term)
        if values is not None:
            mask = masks[term].float()
            out[term] = ((values.float() * mask).sum(), mask.sum())
    return out


def weighted_total(
    sums: dict[str, tuple[Tensor, Tensor]], weights: dict[str, float], global_sum: Callable[[Tensor], Tensor]
) -> tuple[Tensor, dict[str, Tensor]]:
    """(the loss to differentiate, each term's global mean). `global_sum` adds a scalar over all
    processes; the returned total is this process's share, so summing gradients over processes
    (DDP) gives the gradient of the global loss."""
    total = torch.zeros((), dtype=torch.float32, device=next(iter(sums.values()))[0].device)
    means = {}
    for term, (value, count) in sums.items():
        count = global_sum(count.detach()).clamp(min=1.0)
        total = total + weights.get(term, 1.0) * value / count
        means[term] = global_sum(value.detach()) / count
    return total, means
