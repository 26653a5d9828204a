"""Freezing and LoRA for the three parts of a VLA: the vision tower, the VLM, the action expert.

LoRA wraps a frozen `nn.Linear` as `base(x) + scale * B(A(x))` with B zero-initialized (so the
wrapped model starts equal to the original). `merge_lora` folds the adapters back into plain
Linear layers, so an exported model has the original parameter names and no LoRA code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlaflow.models import VLA
from vlaflow.models.gemma import AdaRMSNorm

PARTS = ("vision", "vlm", "expert")


def part_modules(model: VLA, part: str) -> list[nn.Module]:
    """The modules making up one part: vision = SigLIP + projector; vlm = the language model
    (with its embedding); expert = the action expert and the flow heads."""
    if part == "vision":
        return [model.vision, model.vision_proj]
    t = model.transformer
    if part == "vlm":
        return [t.embed, t.norms[0], *(layer.experts[0] for layer in t.layers)]
    if part == "expert":
        heads = ("action_in_proj", "action_out_proj", "time_mlp_in", "time_mlp_out", "state_proj")
        heads += ("action_time_mlp_in", "action_time_mlp_out")
        experts = [t.norms[1], *(layer.experts[1] for layer in t.layers)]
        return experts + [getattr(model, h) for h in heads if hasattr(model, h)]
    raise ValueError(f"unknown model part {part!r}; expected one of {PARTS}")


def freeze(model: VLA, parts: list[str]) -> None:
    for part in parts:
        for module in part_modules(model, part):
            module.requires_grad_(False)


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        return (
            self.base(x)
            + F.linear(F.linear(x, self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype)) * self.scale
        )

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            delta = (self.lora_b.float() @ self.lora_a.float()) * self.scale
            self.base.weight.add_(delta.to(self.base.weight.dtype))
        return self.base.requires_grad_(True)


def _wrap_linears(module: nn.Module, rank: int, alpha: float) -> int:
    count = 0
    for name, child in module.named_children():
        if isinstance(module, AdaRMSNorm):  # tiny, zero-initialized: trained in full
            child.requires_grad_(True)
        elif isinstance(child, nn.Linear):
            setattr(module, name, LoRALinear(child, rank, alpha))
            count += 1
        else:
            count += _wrap_linears(child, rank, alpha)
    return count


def apply_lora(model: VLA, ranks: dict[str, int], alphas: dict[str, float] | None = None) -> int:
    """LoRA on every Linear of each part in `ranks` (part -> rank; alpha defaults to the rank).

    The rest of a LoRA'd part is frozen, as in the reference's LoRA configs, except the adaRMS
    modulations and the flow heads, which are small and trained in full. Returns the count.
    """
    count = 0
    for part, rank in ranks.items():
        alpha = (alphas or {}).get(part, float(rank))
        for module in part_modules(model, part):
            if isinstance(module, nn.Linear):  # a flow head
                continue
            module.requires_grad_(False)
            count += _wrap_linears(module, rank, alpha)
    return count


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRALinear back into a plain Linear (in place); returns how many."""
    count = 0
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
                count += 1
    return count


def lora_scales(model: nn.Module) -> dict[str, float]:
    """Module name -> scale of every LoRA layer (to fold a saved state without the modules)."""
    return {name: m.scale for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def merged_state(state: dict[str, Tensor], scales: dict[str, float]) -> dict[str, Tensor]:
    """A state dict with LoRA layers folded into plain `weight`/`bias` entries (original names)."""
    out = dict(state)
    for name, scale in scales.items():
        base_w = out.pop(f"{name}.base.weight")
        a, b = out.pop(f"{name}.lora_a"), out.pop(f"{name}.lora_b")
        out[f"{name}.weight"] = (base_w.float() + (b.float() @ a.float()) * scale).to(base_w.dtype)
        if f"{name}.base.bias" in out:
            out[f"{name}.bias"] = out.pop(f"{name}.base.bias")
    return out
