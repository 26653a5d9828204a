"""Training configurations: typed, named, overridable with `key=value`, saved with checkpoints.

Named configs (`vlaflow train --config NAME`):

* `pi05_tiny`, `pi0_tiny`: tiny models trained from scratch on a CPU (higher learning rate,
  short warmup, cosine over the run, float32).
* `pi05_full`, `pi0_full`: the reference recipe for full-size fine-tuning (the reference's AdamW,
  warmup 1k + cosine to 30k, clip 1.0, EMA 0.99, batch 32), bf16 autocast with float32 master
  weights and activation checkpointing; start from converted weights with `init=DIR`.
* `pi05_full_lora`: like `pi05_full`, with the vision tower frozen and LoRA on the VLM (rank 16)
  and the action expert (rank 32), as the reference's low-memory fine-tuning configs.
* `pi0fast_tiny`, `pi0fast_full`: pi0-FAST, a VLM without an action expert trained with
  cross-entropy on FAST action tokens (a FAST tokenizer is fitted on the training data unless
  `fast_tokenizer=DIR` names one, e.g. from `vlaflow fast fit`).
* `pi05_ki_tiny_stage1`, `pi05_ki_full_stage1`: the knowledge-insulation recipe's first stage, the
  same VLM-only model (alpha = 0: text and FAST targets only).
* `pi05_ki_tiny_stage2`, `pi05_ki_full_stage2`: its second stage, from the stage-1 checkpoint
  (`init=DIR`): a freshly initialized action expert, knowledge insulation, loss = CE(FAST) +
  10 * flow.
* `pi05_tabletop_tiny`, `pi05_tabletop_full`: hierarchical pi0.5 co-trained on every kind of sample
  a `vlaflow generate tabletop` directory holds (`TABLETOP_KINDS`), plus any other robot given
  with another `--dataset`; see `_tabletop`.

Overrides are dotted paths with JSON values (bare words are strings): `batch_size=8`,
`optim.peak_lr=1e-4`, `model_overrides.action_horizon=10`, `freeze=["vision"]`. Every value is
checked against its setting's type (and model overrides against the model config's fields), so a
mistake is a one-line error naming the setting and the expected type, never a failure deep inside
training. `describe(config)` lists every setting with its value, its default and what it does.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from vlaflow.data.mixture import SAMPLE_KINDS
from vlaflow.data.pipeline import SourceConfig
from vlaflow.models import VLAConfig
from vlaflow.models.presets import FAST_VOCAB, PRESETS, TINY_FAST_VOCAB
from vlaflow.training.optim import OptimConfig


def _setting(default: Any, help: str) -> Any:
    """A dataclass field with a one-line description (for `--print-config`)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    model: str = _setting("pi05_tiny", "model preset to build when no init checkpoint is given")
    model_overrides: dict[str, Any] = _setting(
        {}, "model config fields to replace, e.g. action_horizon (a JSON object adds to the config's)"
    )
    init: str | None = _setting(None, "vlaflow model directory to start from (e.g. converted openpi weights)")
    tokenizer: str | None = _setting(
        None, "PaliGemma tokenizer.model (full-size models; tiny ones embed theirs)"
    )
    datasets: list[SourceConfig] = _setting([], "LeRobot datasets (--dataset DIR, repeat to mix)")
    batch_size: int = _setting(32, "global batch size (split across processes)")
    steps: int = _setting(2_000, "optimizer steps of the whole run")
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimizer and schedule"})
    precision: str = _setting("float32", "float32, or bfloat16 autocast over float32 master weights")
    gradient_checkpointing: bool = _setting(False, "recompute activations in the backward pass (less memory)")
    compile: bool = _setting(False, "torch.compile the training step")
    freeze: list[str] = _setting([], "model parts not trained: vision, vlm, expert")
    lora: dict[str, int] = _setting({}, 'LoRA rank per model part, e.g. {"vlm": 16}')
    normalization: str | None = _setting(
        None, "zscore, quantile or none (default: quantile for pi0.5, zscore for pi0)"
    )
    loss_reduction: str = _setting("masked", "masked: mean over real action elements; reference: over all")
    augment: bool = _setting(True, "the reference's image augmentation (crop, rotate, colour jitter)")
    seed: int = _setting(0, "seed of the initialization, the data order and every sample's randomness")
    log_every: int = _setting(10, "steps between rows of metrics.jsonl")
    save_every: int = _setting(500, "steps between checkpoints")
    keep_last: int = _setting(3, "checkpoints kept (older ones are deleted)")
    num_workers: int = _setting(2, "data loader processes (0: load in the training process)")
    mixture_exponent: float = _setting(0.43, "a source's default weight is its frames ** this")
    sample_kinds: dict[str, float | None] = _setting(
        {"robot": None, "verbal": None},
        f"kinds of samples drawn from each dataset ({', '.join(SAMPLE_KINDS)}) -> mixture weight "
        "(null: its samples ** mixture_exponent)",
    )
    subtask_targets: bool = _setting(
        False, "robot frames with a subtask also predict it as text, and their actions follow it"
    )
    max_text_tokens: int = _setting(48, "text target length (subtask, high-level, answer + EOS), padded")
    cameras: dict[str, str] | None = _setting(None, "model image slot -> dataset camera (default: in order)")
    delta_action_mask: list[bool] | None = _setting(None, "action dims trained relative to the state")
    prompt: str | None = _setting(None, "prompt for every frame instead of the dataset's tasks")
    flow_weight: float = _setting(
        1.0, "alpha: weight of the flow term next to the text and FAST cross-entropies"
    )
    flow_draws: int = _setting(
        1, "flow-matching (noise, time) draws per sample: the prefix runs once, the expert once per draw"
    )
    fast_tokenizer: str | None = _setting(
        None, "FAST tokenizer directory (default: fitted on the training data)"
    )
    fast_scale: float = _setting(10.0, "DCT scale of a FAST tokenizer fitted at the start of training")
    max_fast_tokens: int = _setting(64, "FAST action target length (Action: + tokens + | + EOS), padded")
    val_fraction: float = _setting(0.0, "fraction of each dataset's episodes held out for validation")
    val_episodes: list[int] | dict[str, list[int]] | None = _setting(
        None, "held-out episode indices: a list (one dataset) or {dataset name: [...]}"
    )
    val_every: int = _setting(500, "steps between validation losses on the held-out episodes")
    val_samples: int = _setting(64, "held-out frames in each validation (a fixed, evenly spaced set)")
    val_action_error: bool = _setting(False, "also sample chunks on held-out frames: normalized action MSE")
    distributed: str = _setting("ddp", "ddp or fsdp (under torchrun)")
    device: str | None = _setting(None, "cpu, cuda, ... (default: cuda when available)")
    wandb_project: str | None = _setting(None, "log to this Weights & Biases project")

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(TrainConfig)
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(getattr(self, f.name), hints[f.name], f.name))
        choices = {
            "precision": ("float32", "bfloat16"),
            "loss_reduction": ("masked", "reference"),
            "normalization": (None, "zscore", "quantile", "none"),
            "distributed": ("ddp", "fsdp"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {allowed}")
        unknown_kinds = sorted(set(self.sample_kinds) - set(SAMPLE_KINDS))
        if unknown_kinds or not self.sample_kinds:
            raise ValueError(
                f"sample_kinds: expected some of {list(SAMPLE_KINDS)}, got {sorted(self.sample_kinds)}"
            )
        for name in (
            "batch_size",
            "steps",
            "log_every",
            "save_every",
            "val_every",
            "val_samples",
            "max_text_tokens",
            "flow_draws",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0 or self.keep_last < 0:
            raise ValueError("num_workers and keep_last must be >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_fraction and self.val_episodes is not None:
            raise ValueError("give val_fraction or val_episodes, not both")
        model_fields = typing.get_type_hints(VLAConfig)
        for key, value in self.model_overrides.items():
            if key not in model_fields:
                raise ValueError(f"model_overrides.{key}: not a model setting; known: {sorted(model_fields)}")
            self.model_overrides[key] = _coerce(value, model_fields[key], f"model_overrides.{key}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown settings {unknown}; known: {sorted(known)}")
        return cls(**data)


def _type_name(hint: Any) -> str:
    if hint is Any:
        return "any value"
    if hint is type(None):
        return "null"
    if isinstance(hint, type) and not typing.get_args(hint):
        return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}.get(
            hint.__name__, hint.__name__
        )
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin in (list, tuple):
        return f"a JSON list of {_type_name(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin is dict:
        return f"a JSON object of {_type_name(args[1]).removeprefix('an ').removeprefix('a ')}s"
    return str(hint)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` (e.g. parsed JSON) as the type `hint`, or a ValueError naming `where` and the type."""
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a JSON object of {hint.__name__} settings, got {value!r}")
        hints = typing.get_type_hints(hint)
        unknown = sorted(set(value) - set(hints))
        if unknown:
            raise ValueError(f"{where}: unknown settings {unknown}; known: {sorted(hints)}")
        return hint(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in value.items()})
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _coerce(value, option, where)
            except ValueError:
                continue
        raise ValueError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    if origin in (list, tuple) and isinstance(value, list | tuple):
        items = [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict and isinstance(value, dict):
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if hint is type(None) and value is None:
        return None
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    raise ValueError(f"{where}: expected {_type_name(hint)}, got {value!r}")


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


def _stage2(config: TrainConfig, expert: str) -> TrainConfig:
    """The recipe's second stage: start from a stage-1 (VLM-only) checkpoint (`init=DIR`), add a
    fresh action expert, flow weight alpha = 10, knowledge insulation on."""
    expert_config = dataclasses.asdict(PRESETS[expert]().expert)
    config.model_overrides = {"expert": expert_config, "knowledge_insulation": True}
    config.flow_weight = 10.0
    return TrainConfig.from_dict(config.to_dict())


TABLETOP_KINDS: dict[str, float | None] = {
    "robot": None,  # task episodes: flow + FAST + "Subtask: ..." where labelled
    "verbal": None,  # verbal-instruction episodes: prompt = the command; flow + FAST
    "high_level": None,  # labelled frames: prompt -> "Bounding boxes: ...\nSubtask: ..." (text only)
    "web": None,  # captions, VQA, detection with <loc> answers (text only)
}


def _tabletop(config: TrainConfig) -> TrainConfig:
    """Hierarchical pi0.5 on a `vlaflow generate tabletop` directory: every kind of sample it holds
    (`TABLETOP_KINDS`), each weighted by its samples ** 0.43 like any other `--dataset` (another
    robot, e.g. Meta-World, adds its robot frames); FAST tokens next to the flow; robot frames
    predict their subtask, and their actions are conditioned on it (hierarchical inference)."""
    config.sample_kinds = dict(TABLETOP_KINDS)
    config.subtask_targets = True
    return TrainConfig.from_dict(config.to_dict())


TABLETOP_CAMERAS = {"base_0_rgb": "observation.images.scene", "left_wrist_0_rgb": "observation.images.wrist"}
"""The tabletop's cameras in the slots of the `pi05_tabletop_tiny` model preset."""


def _tabletop_cpu(model: str) -> TrainConfig:
    """CPU-sized tabletop training: the `pi05_tabletop_tiny` model presets (16 tokens per image, two
    camera slots, chunks of 10), a high learning rate, no augmentation, data loaded in the training
    process (two cores: a second process would take the other core), and four flow-matching draws
    per sample (the prefix is paid once; at equal steps the flow loss falls about twice as fast:
    docs/results/tabletop-single-commands.md). The preset's action expert and chunk length are named
    in the model changes, so `init=` a pre-trained VLM (`pi05_tabletop_vlm_tiny`) gets them."""
    config = _tiny(model)
    preset = PRESETS[model]()
    if preset.expert is not None:
        config.model_overrides = {
            "expert": dataclasses.asdict(preset.expert),
            "action_horizon": preset.action_horizon,
        }
        config.flow_draws = 4
    config.cameras = dict(TABLETOP_CAMERAS)
    config.optim = OptimConfig(peak_lr=2e-3, end_lr=1e-4, warmup_steps=100, decay_steps=None, ema_decay=None)
    config.augment = False
    config.num_workers = 0
    return config


def _tabletop_tiny() -> TrainConfig:
    """Hierarchical pi0.5 on a CPU: FAST + flow without insulation (one-stage insulation from scratch
    did worst in docs/results/fast-and-insulation.md), the flow term weighted 1; chunks of 10 actions
    (half a second; the benchmark executes 5 per inference) keep FAST targets short."""
    config = _tabletop_cpu("pi05_tabletop_tiny")
    config.model_overrides["fast_vocab_size"] = TINY_FAST_VOCAB
    return _tabletop(config)


def _tabletop_tiny_flow() -> TrainConfig:
    """The low level alone: robot frames of the task episodes, the flow loss, the prompt as the only
    instruction (what the assisted skills are measured with)."""
    config = _tabletop_cpu("pi05_tabletop_tiny")
    config.sample_kinds = {"robot": None}
    return TrainConfig.from_dict(config.to_dict())


def _tabletop_vlm_tiny() -> TrainConfig:
    """The tabletop's VLM pre-trained in miniature, as PaliGemma was: text targets only, half web
    samples (captions, VQA, detection, region descriptions), half high-level samples (the boxes of
    what a subtask involves, then the subtask), from many rendered scenes of the training split.
    Post-training starts from it with `init=DIR` (a fresh action expert is added)."""
    config = _tabletop_cpu("pi05_tabletop_vlm_tiny")
    config.sample_kinds = {"web": 1.0, "high_level": 1.0}
    config.optim = OptimConfig(peak_lr=1e-3, end_lr=5e-5, warmup_steps=200, decay_steps=None, ema_decay=None)
    config.steps = 6_000
    config.save_every = 1_000
    return TrainConfig.from_dict(config.to_dict())


def _tabletop_full() -> TrainConfig:
    """The recipe's post-training from converted pi0.5 weights (`init=DIR`): FAST tokens, knowledge
    insulation, flow weight alpha = 10."""
    config = _full("pi05")
    config.model_overrides = {"fast_vocab_size": FAST_VOCAB, "knowledge_insulation": True}
    config.flow_weight = 10.0
    config.max_fast_tokens = 180  # the FAST paper's length for single-arm robots
    return _tabletop(config)


CONFIGS = {
    "pi05_tiny": lambda: _tiny("pi05_tiny"),
    "pi0fast_tiny": lambda: _tiny("pi0fast_tiny"),
    "pi05_ki_tiny_stage1": lambda: _tiny("pi0fast_tiny"),
    "pi05_ki_tiny_stage2": lambda: _stage2(_tiny("pi05_ki_tiny"), "pi05_ki_tiny"),
    "pi0fast_full": lambda: _full("pi0fast"),
    "pi05_ki_full_stage1": lambda: _full("pi0fast"),
    "pi05_ki_full_stage2": lambda: _stage2(_full("pi05_ki"), "pi05_ki"),
    "pi0_tiny": lambda: _tiny("pi0_tiny"),
    "pi05_full": lambda: _full("pi05"),
    "pi0_full": lambda: _full("pi0"),
    "pi05_full_lora": lambda: _full("pi05", freeze=["vision"], lora={"vlm": 16, "expert": 32}),
    "pi05_tabletop_tiny": _tabletop_tiny,
    "pi05_tabletop_tiny_flow": _tabletop_tiny_flow,
    "pi05_tabletop_vlm_tiny": _tabletop_vlm_tiny,
    "pi05_tabletop_full": _tabletop_full,
}


def named_config(name: str) -> TrainConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown training config {name!r}; choose one of {sorted(CONFIGS)}")
    return CONFIGS[name]()


def _parse_value(key: str, text: str) -> Any:
    """JSON, or a bare word as a string; text that starts like JSON must be valid JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        if text.strip()[:1] in ("[", "{", '"'):
            raise ValueError(f"{key}={text}: not valid JSON ({err.msg} at character {err.pos})") from None
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
        value = _parse_value(key, text)
        if key == "model_overrides" and isinstance(value, dict) and isinstance(target[key], dict):
            value = {**target[key], **value}  # adds to a named config's model changes, never drops them
        target[path[-1]] = value
    return TrainConfig.from_dict(data)


RESUMABLE = frozenset(
    {
        "steps",
        "log_every",
        "save_every",
        "keep_last",
        "num_workers",
        "val_every",
        "val_samples",
        "val_action_error",
        "device",
        "distributed",
        "compile",
        "gradient_checkpointing",
        "wandb_project",
    }
)
"""Settings a resumed run may change: how long, how often it logs and saves, and where and how it
computes; never what it learns from or how (data, batch, model, optimizer, losses, seed)."""


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if key == "optim" and isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_changes(saved: TrainConfig, requested: TrainConfig) -> list[str]:
    """How `requested` differs from a resumed run's `saved` config (`name: old -> new`) when only in
    `RESUMABLE` settings. Any other difference raises ValueError that lists every one: a resume
    never silently ignores a setting."""
    old, new = _flat(saved.to_dict()), _flat(requested.to_dict())
    changes = {key: (old.get(key), new.get(key)) for key in new if old.get(key) != new.get(key)}
    shown = {
        k: f"{k}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}"
        for k, (a, b) in changes.items()
    }
    refused = [text for key, text in shown.items() if key not in RESUMABLE]
    if refused:
        raise ValueError(
            "--resume continues a run with the settings it was started with, and these differ from "
            f"its checkpoint's: {'; '.join(refused)}. Start a new --output to change them (init=DIR "
            "starts from a checkpoint's weights), or resume without them"
        )
    return list(shown.values())


def describe(config: TrainConfig, defaults: TrainConfig | None = None) -> str:
    """Every setting as `name = value  # what it does (default: ...)`, one per line."""
    defaults = defaults or TrainConfig()
    lines = []

    def add(name: str, value: Any, default: Any, help: str) -> None:
        shown = json.dumps(value)
        changed = "" if value == default else f" (default: {json.dumps(default)})"
        lines.append(f"{name} = {shown}  # {help}{changed}")

    for f in dataclasses.fields(config):
        value, default = getattr(config, f.name), getattr(defaults, f.name)
        if f.name == "optim":
            for g in dataclasses.fields(value):
                add(f"optim.{g.name}", getattr(value, g.name), getattr(default, g.name), g.metadata["help"])
        elif f.name == "datasets":
            add(f.name, [d.path for d in value], [d.path for d in default], f.metadata["help"])
        else:
            add(f.name, value, default, f.metadata["help"])
    return "\n".join(lines)
