"""Training configurations: typed, named, overridable with `key=value`, saved with checkpoints.

Named configs (`vlaflow train --config NAME`):

* `pi05_tiny`, `pi0_tiny`: tiny models trained from scratch on a CPU (higher learning rate,
  short warmup, cosine over the run, float32).
* `pi05_full`, `pi0_full`: the reference recipe for full-size fine-tuning (the reference's AdamW,
  warmup 1k + cosine to 30k, clip 1.0, EMA 0.99, batch 32), bf16 autocast with float32 master
  weights and activation checkpointing; start from converted weights with `init=DIR`.
* `pi05_full_lora`: like `pi05_full`, with the vision tower frozen and LoRA on the VLM (rank 16)
  and the action expert (rank 32), as the reference's low-memory fine-tuning configs.

Overrides are dotted paths with JSON values (bare words are strings): `batch_size=8`,
`optim.peak_lr=1e-4`, `model_overrides.action_horizon=10`, `freeze=["vision"]`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from vlaflow.data.pipeline import SourceConfig
from vlaflow.training.optim import OptimConfig


@dataclass
class TrainConfig:
    model: str = "pi05_tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    tokenizer: str | None = None
    datasets: list[SourceConfig] = field(default_factory=list)
    batch_size: int = 32
    steps: int = 2_000
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: str = "float32"
    gradient_checkpointing: bool = False
    compile: bool = False
    freeze: list[str] = field(default_factory=list)
    lora: dict[str, int] = field(default_factory=dict)
    normalization: str | None = None
    loss_reduction: str = "masked"
    augment: bool = True
    seed: int = 0
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 3
    num_workers: int = 2
    mixture_exponent: float = 0.43
    cameras: dict[str, str] | None = None
    delta_action_mask: list[bool] | None = None
    prompt: str | None = None
    distributed: str = "ddp"
    device: str | None = None
    wandb_project: str | None = None

    def __post_init__(self) -> None:
        choices = {
            "precision": ("float32", "bfloat16"),
            "loss_reduction": ("masked", "reference"),
            "normalization": (None, "zscore", "quantile", "none"),
            "distributed": ("ddp", "fsdp"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {allowed}")
        for name in ("batch_size", "steps", "log_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        data["optim"] = OptimConfig(**data.get("optim", {}))
        data["datasets"] = [SourceConfig(**_tuple_mask(d)) for d in data.get("datasets", [])]
        return cls(**data)


def _tuple_mask(d: dict[str, Any]) -> dict[str, Any]:
    mask = d.get("delta_action_mask")
    return {**d, "delta_action_mask": tuple(mask) if mask is not None else None}


def _tiny(model: str) -> TrainConfig:
    return TrainConfig(
        model=model,
        batch_size=32,
        steps=2_000,
        optim=OptimConfig(peak_lr=5e-4, end_lr=5e-5, warmup_steps=100, decay_steps=None, ema_decay=None),
    )


def _full(model: str, **changes: Any) -> TrainConfig:
    return TrainConfig(
        model=model,
        batch_size=32,
        steps=30_000,
        optim=OptimConfig(),
        precision="bfloat16",
        gradient_checkpointing=True,
        save_every=1_000,
        num_workers=8,
        **changes,
    )


CONFIGS = {
    "pi05_tiny": lambda: _tiny("pi05_tiny"),
    "pi0_tiny": lambda: _tiny("pi0_tiny"),
    "pi05_full": lambda: _full("pi05"),
    "pi0_full": lambda: _full("pi0"),
    "pi05_full_lora": lambda: _full("pi05", freeze=["vision"], lora={"vlm": 16, "expert": 32}),
}


def named_config(name: str) -> TrainConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown training config {name!r}; choose one of {sorted(CONFIGS)}")
    return CONFIGS[name]()


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """`key=value` overrides; dotted keys reach into `optim` and the dict fields."""
    data = config.to_dict()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected key=value")
        path = key.split(".")
        target = data
        for part in path[:-1]:
            if part not in target or not isinstance(target[part], dict):
                raise ValueError(f"override {item!r}: {part!r} is not a group of settings")
            target = target[part]
        if path[0] not in data or (len(path) > 1 and path[0] == "optim" and path[-1] not in target):
            known = sorted(data) if len(path) == 1 else sorted(target)
            raise ValueError(f"override {item!r}: unknown setting {key!r}; known: {known}")
        target[path[-1]] = _parse_value(text)
    return TrainConfig.from_dict(data)
