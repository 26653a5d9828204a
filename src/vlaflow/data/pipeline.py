"""Dataset frames -> model-ready training samples -> batches.

Per sample: cameras mapped onto the model's image slots (missing slots black, mask False),
resize-with-pad, the reference's augmentation (seeded by the sample's global number), actions
made relative to the state where the delta mask says so, state and actions normalized with the
source's statistics, the prompt tokenized (pi0.5 writes the normalized state into it), state and
actions zero-padded to the model's `action_dim`, and a loss mask that is False on padded action
dimensions and on chunk steps past the episode's end.

Every sample carries every target of the run (text target, FAST tokens, action chunk), each with a
mask that is False where the sample lacks it, so samples of different kinds (robot frames, high-level
annotations, web questions: `vlaflow.data.mixture`) share a batch and contribute only to their own
losses. `assemble` is the one place a sample's tensors are made.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlaflow.data.augment import augment_image
from vlaflow.data.lerobot import LeRobotDataset
from vlaflow.data.sampling import SampleKey
from vlaflow.data.stats import (
    FeatureStats,
    Mode,
    Normalizer,
    chunk_indices,
    chunked_action_stats,
    feature_stats,
    to_delta,
)
from vlaflow.data.transforms import pad_to_dim, resize_with_pad, to_model_range
from vlaflow.models import Observation, VLAConfig
from vlaflow.tokenizers import FastIdRange, FastTokenizer, Tokenizer, action_target_ids, model_prompt
from vlaflow.tokenizers.prompts import high_level_text, pad_tokens, subtask_text, text_target


@dataclass(frozen=True)
class SourceConfig:
    """One LeRobot dataset of a training mixture.

    cameras: model image slot -> dataset camera key (default: the dataset's cameras, in order);
    weight: mixture weight of each kind of sample it gives, unless `sample_kinds` sets that kind's
    (default: the kind's samples ** mixture exponent); delta_action_mask: action dims made relative
    to the state (e.g. joints but not the gripper); prompt: replaces the tasks.
    """

    path: str
    weight: float | None = None
    cameras: dict[str, str] | None = None
    state_key: str = "observation.state"
    action_key: str = "action"
    delta_action_mask: tuple[bool, ...] | None = None
    prompt: str | None = None

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass(frozen=True)
class SourceStats:
    """What a checkpoint keeps about a source to run the policy: statistics and transforms."""

    state: FeatureStats
    actions: FeatureStats
    action_horizon: int
    delta_action_mask: tuple[bool, ...] | None = None
    cameras: dict[str, str] = field(default_factory=dict)
    # What the robot looked like in training: (height, width) per camera and the task prompts, so a
    # policy can be run (and evaluated) the way it was trained. Empty in older checkpoints.
    image_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    tasks: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.to_dict(),
            "actions": self.actions.to_dict(),
            "action_horizon": self.action_horizon,
            "delta_action_mask": list(self.delta_action_mask) if self.delta_action_mask else None,
            "cameras": dict(self.cameras),
            "image_sizes": {k: list(v) for k, v in self.image_sizes.items()},
            "tasks": list(self.tasks),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SourceStats:
        mask = data.get("delta_action_mask")
        return cls(
            state=FeatureStats.from_dict(data["state"]),
            actions=FeatureStats.from_dict(data["actions"]),
            action_horizon=int(data["action_horizon"]),
            delta_action_mask=tuple(mask) if mask else None,
            cameras=dict(data.get("cameras", {})),
            image_sizes={k: (int(v[0]), int(v[1])) for k, v in data.get("image_sizes", {}).items()},
            tasks=tuple(data.get("tasks", ())),
        )


def source_stats(
    dataset: LeRobotDataset, config: SourceConfig, horizon: int, cameras: dict[str, str]
) -> SourceStats:
    """Exact statistics of a dataset's state and (chunk-pooled, delta-converted) actions."""
    states = dataset.column(config.state_key).astype(np.float64)
    actions = dataset.column(config.action_key).astype(np.float64)
    return SourceStats(
        state=feature_stats(states),
        actions=chunked_action_stats(
            actions, states, dataset.episode_ends(), horizon, config.delta_action_mask
        ),
        action_horizon=horizon,
        delta_action_mask=config.delta_action_mask,
        cameras=cameras,
        image_sizes={key: tuple(dataset.meta.features[key]["shape"][:2]) for key in cameras.values()},
        tasks=tuple(dataset.meta.tasks),
    )


def resolve_cameras(
    requested: Mapping[str, str] | None, dataset_cameras: Sequence[str], slots: Sequence[str]
) -> dict[str, str]:
    """Model slot -> dataset camera key; by default the dataset's cameras fill the slots in order."""
    if requested is None:
        if len(dataset_cameras) > len(slots):
            raise ValueError(
                f"the dataset has cameras {list(dataset_cameras)} but the model has {len(slots)} image slots "
                f"{list(slots)}: choose with cameras={{slot: camera}}"
            )
        return dict(zip(slots, dataset_cameras, strict=False))
    unknown_slots = sorted(set(requested) - set(slots))
    unknown_cameras = sorted(set(requested.values()) - set(dataset_cameras))
    if unknown_slots or unknown_cameras:
        raise ValueError(
            f"cameras={dict(requested)}: unknown model slots {unknown_slots} (slots: {list(slots)}) or "
            f"dataset cameras {unknown_cameras} (cameras: {list(dataset_cameras)})"
        )
    return dict(requested)


class Source:
    """One dataset prepared for one model: its camera mapping, statistics and normalizers."""

    def __init__(
        self,
        config: SourceConfig,
        model: VLAConfig,
        *,
        normalization: Mode,
        stats: SourceStats | None = None,
        episodes: Sequence[int] | None = None,
    ):
        """`episodes`: only these episode indices (default: all); statistics, when not given, are
        computed from them."""
        self.config, self.model = config, model
        probe = LeRobotDataset(
            config.path, state_key=config.state_key, action_key=config.action_key, image_keys=[]
        )
        self.cameras = resolve_cameras(config.cameras, probe.meta.camera_keys, model.image_keys)
        self.dataset = LeRobotDataset(
            config.path,
            episodes=episodes,
            action_horizon=model.action_horizon,
            state_key=config.state_key,
            action_key=config.action_key,
            image_keys=list(self.cameras.values()),
        )
        self.state_dim = int(self.dataset.meta.features[config.state_key]["shape"][0])
        self.action_dim = int(self.dataset.meta.features[config.action_key]["shape"][0])
        for name, dim in (("state", self.state_dim), ("action", self.action_dim)):
            if dim > model.action_dim:
                raise ValueError(
                    f"{config.path}: {name} has {dim} dims, more than action_dim={model.action_dim}"
                )
        self.stats = stats or source_stats(self.dataset, config, model.action_horizon, self.cameras)
        self.state_norm = Normalizer(self.stats.state, normalization)
        self.action_norm = Normalizer(self.stats.actions, normalization)
        # High-level targets box what the subtask involves in the first image slot's camera.
        first_camera = next(iter(self.cameras.values()), None)
        boxes = None if first_camera is None else boxes_column(first_camera)
        self.boxes_key = boxes if boxes in self.dataset.meta.features else None

    def __len__(self) -> int:
        return len(self.dataset)

    def normalized_chunks(self) -> np.ndarray:
        """Every frame's action chunk (N, H, A) as the model is trained on it: delta-converted where
        the mask says so and normalized (e.g. to fit a FAST tokenizer)."""
        return normalized_action_chunks(
            self.dataset, self.config, self.action_norm, self.model.action_horizon
        )

    def sample(
        self, key: SampleKey, fmt: SampleFormat, *, kind: str = "robot", subtask_target: bool = False
    ) -> dict[str, Any]:
        """Frame `key.index` as a sample of `kind`: "robot" / "verbal" (the action chunk, FAST tokens,
        and with `subtask_target` the frame's subtask line where it has one) or "high_level" (text
        only: the high-level target of its subtask and boxes)."""
        frame = self.dataset[key.index]
        images, masks = model_images(
            self.model,
            {slot: frame[camera] for slot, camera in self.cameras.items()},
            augment=fmt.augment,
            generator=sample_generator(fmt.seed, key.n),
        )
        raw_state = np.asarray(frame[self.config.state_key], dtype=np.float32)
        state = self.state_norm.normalize(raw_state)
        prompt = model_prompt(self.model, fmt.tokenizer, self.config.prompt or frame["task"], state)
        subtask = frame.get("subtask") or None
        if kind == "high_level":
            if subtask is None:
                raise ValueError(
                    f"{self.config.path}: frame {key.index} has no subtask for a high-level sample"
                )
            boxes = frame[self.boxes_key] if self.boxes_key else ""
            return assemble(
                self.model, fmt, key, images, masks, prompt, state, text=high_level_text(subtask, boxes)
            )
        actions = to_delta(frame[self.config.action_key], raw_state, self.config.delta_action_mask)
        return assemble(
            self.model,
            fmt,
            key,
            images,
            masks,
            prompt,
            state,
            text=subtask_text(subtask) if subtask_target and subtask else None,
            actions=self.action_norm.normalize(actions),
            action_pad=frame[f"{self.config.action_key}_is_pad"],
        )


def camera_name(camera_key: str) -> str:
    """A dataset camera key's short name: observation.images.scene -> scene."""
    return camera_key.removeprefix("observation.images.")


def boxes_column(camera_key: str) -> str:
    """The column of a camera's `<loc>` boxes: observation.images.scene -> annotation.boxes.scene."""
    return "annotation.boxes." + camera_name(camera_key)


def sample_generator(seed: int, n: int) -> torch.Generator:
    """The randomness of sample number `n` (its augmentation), the same in any process."""
    return torch.Generator().manual_seed(int(np.random.default_rng([seed, n, 1]).integers(2**62)))


def model_images(
    model: VLAConfig, slot_images: Mapping[str, np.ndarray], *, augment: bool, generator: torch.Generator
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """uint8 (H, W, 3) images by model slot -> the model's images in [-1, 1] (resize-with-pad, the
    reference's augmentation) and masks; slots without an image are black with mask False."""
    size = model.vision.image_size
    images, masks = {}, {}
    for slot in model.image_keys:
        if slot not in slot_images:
            images[slot] = torch.full((size, size, 3), -1.0)
            masks[slot] = torch.tensor(False)
            continue
        image = resize_with_pad(torch.from_numpy(np.ascontiguousarray(slot_images[slot])), size, size)
        if augment:
            chw = image.permute(2, 0, 1).float() / 255.0
            image = (
                augment_image(chw, wrist="wrist" in slot, generator=generator).permute(1, 2, 0) * 2.0 - 1.0
            )
        else:
            image = to_model_range(image)
        images[slot], masks[slot] = image, torch.tensor(True)
    return images, masks


def assemble(
    model: VLAConfig,
    fmt: SampleFormat,
    key: SampleKey,
    images: dict[str, Tensor],
    masks: dict[str, Tensor],
    prompt: tuple[np.ndarray, np.ndarray],
    state: np.ndarray | None,
    *,
    text: str | None = None,
    actions: np.ndarray | None = None,
    action_pad: np.ndarray | None = None,
) -> dict[str, Any]:
    """One training sample of any kind, with every target the run trains (`fmt`): a target the
    sample lacks is zeros with a False mask, so it adds nothing to that loss term.

    `state` (S,) and `actions` (H, A) are normalized (state None: zeros); `action_pad` (H,) flags
    chunk steps past the episode's end; `text` is the text target (None: none)."""
    h, d = model.action_horizon, model.action_dim
    sample: dict[str, Any] = {
        "images": images,
        "image_masks": masks,
        "state": pad_to_dim(torch.from_numpy(np.zeros(d, np.float32) if state is None else state), d),
        "tokens": torch.from_numpy(prompt[0]),
        "token_mask": torch.from_numpy(prompt[1]),
        "has_actions": torch.tensor(actions is not None),
        "id": torch.tensor(key.n),
        "source": torch.tensor(key.source),
    }
    action_mask = np.zeros((h, d), dtype=bool)
    if actions is None:
        sample["actions"] = torch.zeros(h, d)
    else:
        action_mask[:, : actions.shape[-1]] = ~np.asarray(action_pad, dtype=bool)[:, None]
        sample["actions"] = pad_to_dim(torch.from_numpy(actions), d)
    sample["action_mask"] = torch.from_numpy(action_mask)
    if fmt.action_tokens is not None:
        length = fmt.action_tokens.max_len
        tokens, mask = (
            fmt.action_tokens.target(fmt.tokenizer, actions)
            if actions is not None
            else (np.zeros(length, np.int64), np.zeros(length, bool))
        )
        sample |= {"fast_tokens": torch.from_numpy(tokens), "fast_mask": torch.from_numpy(mask)}
    if fmt.text_len is not None:
        tokens, mask = (
            text_target(fmt.tokenizer, text, fmt.text_len)
            if text is not None
            else (np.zeros(fmt.text_len, np.int64), np.zeros(fmt.text_len, bool))
        )
        sample |= {"text_tokens": torch.from_numpy(tokens), "text_mask": torch.from_numpy(mask)}
    elif text is not None:
        raise ValueError("a sample has a text target but the run has none (SampleFormat.text_len is None)")
    return sample


def normalized_action_chunks(
    dataset: LeRobotDataset, config: SourceConfig, normalizer: Normalizer, horizon: int
) -> np.ndarray:
    """(N, H, A) chunks of every frame (clamped at episode ends), delta-converted and normalized."""
    states = dataset.column(config.state_key)
    actions = dataset.column(config.action_key)[chunk_indices(dataset.episode_ends(), horizon)]
    return normalizer.normalize(to_delta(actions, states, config.delta_action_mask))


@dataclass(frozen=True)
class ActionTokens:
    """How a sample's normalized action chunk becomes its FAST target: FAST ids placed among the VLM's
    ids (`ids`: after the text vocabulary, or the reference's layout), as "Action: " ids "|" EOS,
    padded to `max_len` (a longer target is cut, with a warning)."""

    fast: FastTokenizer
    ids: FastIdRange
    max_len: int

    def target(self, tokenizer: Tokenizer, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A robot with fewer action dims than the tokenizer's has its chunk zero-padded to them."""
        dims = self.fast.action_dim
        if chunk.shape[-1] > dims:
            raise ValueError(f"action chunk of {chunk.shape[-1]} dims; the FAST tokenizer has {dims}")
        padded = np.pad(chunk, ((0, 0), (0, dims - chunk.shape[-1])))
        fast_ids = self.fast.encode(padded)[0]
        ids = action_target_ids(tokenizer, self.ids.to_vlm(fast_ids))
        return pad_tokens(ids, self.max_len, what="FAST target", setting="max_fast_tokens")


@dataclass(frozen=True)
class SampleFormat:
    """What every sample of a run holds, so samples of any kind stack into one batch: the tokenizer,
    augmentation and seed, the FAST target builder (models with FAST tokens) and the text-target
    length (None: no sample of the run has a text target)."""

    tokenizer: Tokenizer
    augment: bool
    seed: int
    action_tokens: ActionTokens | None = None
    text_len: int | None = None


class TrainingSamples(torch.utils.data.Dataset):
    """Map-style dataset indexed by `SampleKey`s (from `StepSampler`) over the mixture's sources:
    anything with `sample(key, fmt)` (a `Source`'s frames, or `vlaflow.data.mixture` kinds)."""

    def __init__(
        self,
        sources: Sequence[Any],
        tokenizer: Tokenizer,
        *,
        augment: bool,
        seed: int,
        action_tokens: ActionTokens | None = None,
        text_len: int | None = None,
    ):
        self.sources = sources
        self.format = SampleFormat(tokenizer, augment, seed, action_tokens, text_len)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        # One thread, always: vectorized image kernels round differently depending on how the work
        # is split, and a sample must not depend on which process (with how many threads) made it.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self.sources[key.source].sample(key, self.format)
        finally:
            torch.set_num_threads(threads)


@dataclass
class Batch:
    observation: Observation
    actions: Tensor  # (B, H, action_dim), normalized
    action_mask: Tensor  # (B, H, action_dim) bool: real dims of real steps
    has_actions: Tensor  # (B,) bool: the sample carries an action chunk
    ids: Tensor  # (B,) global sample numbers (seed per-sample randomness)
    sources: Tensor  # (B,) source index
    fast_tokens: Tensor | None = None  # (B, L) the FAST action target, for models with FAST tokens
    fast_mask: Tensor | None = None  # (B, L) bool: its real tokens (each carries cross-entropy)
    text_tokens: Tensor | None = None  # (B, T) text targets (subtask, high-level, answer) + EOS
    text_mask: Tensor | None = None  # (B, T) bool: their real tokens (each carries cross-entropy)

    def to(self, device: torch.device | str) -> Batch:
        def move(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.to(device)

        return Batch(
            observation=self.observation.to(device),
            actions=self.actions.to(device),
            action_mask=self.action_mask.to(device),
            has_actions=self.has_actions.to(device),
            ids=self.ids,
            sources=self.sources,
            fast_tokens=move(self.fast_tokens),
            fast_mask=move(self.fast_mask),
            text_tokens=move(self.text_tokens),
            text_mask=move(self.text_mask),
        )


def collate(samples: list[dict[str, Any]]) -> Batch:
    def stack(key: str) -> Tensor:
        return torch.stack([s[key] for s in samples])

    slots = samples[0]["images"].keys()
    return Batch(
        observation=Observation(
            images={k: torch.stack([s["images"][k] for s in samples]) for k in slots},
            image_masks={k: torch.stack([s["image_masks"][k] for s in samples]) for k in slots},
            state=stack("state"),
            tokenized_prompt=stack("tokens"),
            tokenized_prompt_mask=stack("token_mask"),
        ),
        actions=stack("actions"),
        action_mask=stack("action_mask"),
        has_actions=stack("has_actions"),
        ids=stack("id"),
        sources=stack("source"),
        fast_tokens=stack("fast_tokens") if "fast_tokens" in samples[0] else None,
        fast_mask=stack("fast_mask") if "fast_mask" in samples[0] else None,
        text_tokens=stack("text_tokens") if "text_tokens" in samples[0] else None,
        text_mask=stack("text_mask") if "text_mask" in samples[0] else None,
    )


def save_stats(path: Path, stats: Mapping[str, SourceStats]) -> None:
    path.write_text(json.dumps({name: s.to_dict() for name, s in stats.items()}, indent=2))


def load_stats(path: Path) -> dict[str, SourceStats]:
    return {name: SourceStats.from_dict(d) for name, d in json.loads(Path(path).read_text()).items()}
