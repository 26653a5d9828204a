"""The kinds of samples one training run mixes, drawn from each dataset directory it is given.

π0.5 co-trains one model on heterogeneous data. Each dataset yields
up to four kinds, each one source of the mixture with its own weight (default: its number of samples
** 0.43, as in the π0 paper):

* ``robot``: frames of task episodes (all frames of a dataset without an ``annotation.kind`` column):
  the action chunk (flow), FAST tokens, and, with `subtask_targets`, the text target
  ``Subtask: ...`` where the frame has a subtask (LeRobot 0.4.4's ``subtask_index`` +
  meta/subtasks.parquet), which the actions are then conditioned on;
* ``verbal``: frames of verbal-instruction episodes (``annotation.kind == "verbal_instruction"``): the
  prompt is the command in force; actions and FAST tokens, no subtask target;
* ``high_level``: the robot frames that have a subtask, as text-only samples: the high-level prompt
  -> ``Bounding boxes: <loc..>x4 label ; ...\\nSubtask: ...`` (boxes from the
  ``annotation.boxes.<camera>`` column of the first image slot's camera; without that column, the
  subtask line alone), so any subtask-annotated LeRobot dataset trains the high level;
* ``web``: ``web/samples.jsonl`` + ``web/images/`` (captions, VQA, detection with ``<loc>`` answers):
  text only, the image in the slot of the camera it was taken with.

A kind a dataset does not hold is simply absent from the mixture. Every kind is made by the same
`pipeline.assemble`, so all share one batch and one loss reduction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlaflow.data.lerobot import SUBTASK_INDEX
from vlaflow.data.pipeline import (
    SampleFormat,
    Source,
    assemble,
    camera_name,
    model_images,
    sample_generator,
)
from vlaflow.data.sampling import SampleKey
from vlaflow.models import VLAConfig
from vlaflow.tokenizers.prompts import question_prompt

SAMPLE_KINDS = ("robot", "verbal", "high_level", "web")
KIND_COLUMN = "annotation.kind"
VERBAL_KIND = "verbal_instruction"
WEB_SAMPLES = Path("web") / "samples.jsonl"


class FrameSamples:
    """One kind of sample made from some of a dataset's frames: a source of the mixture."""

    def __init__(self, source: Source, kind: str, frames: np.ndarray, *, subtask_target: bool):
        self.source, self.kind, self.frames = source, kind, frames
        self.subtask_target = subtask_target and kind == "robot"
        self.name = f"{source.config.name}/{kind}"
        self.has_text = kind == "high_level" or (
            self.subtask_target and source.dataset.meta.subtasks is not None
        )

    def __len__(self) -> int:
        return len(self.frames)

    def sample(self, key: SampleKey, fmt: SampleFormat) -> dict[str, Any]:
        frame = replace(key, index=int(self.frames[key.index]))
        return self.source.sample(frame, fmt, kind=self.kind, subtask_target=self.subtask_target)


def frame_kinds(source: Source, kinds: Mapping[str, Any], *, subtask_targets: bool) -> list[FrameSamples]:
    """The frame-based kinds among `kinds` that `source`'s dataset holds (see the module doc)."""
    dataset = source.dataset
    if KIND_COLUMN in dataset.meta.features:
        verbal = dataset.column(KIND_COLUMN) == VERBAL_KIND
    else:
        verbal = np.zeros(len(dataset), dtype=bool)
    labelled = np.zeros(len(dataset), dtype=bool)
    subtasks = dataset.meta.subtasks
    if subtasks is not None:
        has_text = np.array([bool(text.strip()) for text in subtasks])
        labelled = has_text[dataset.column(SUBTASK_INDEX)[:, 0]]
    frames = {"robot": ~verbal, "verbal": verbal, "high_level": ~verbal & labelled}
    return [
        FrameSamples(source, kind, np.flatnonzero(frames[kind]), subtask_target=subtask_targets)
        for kind in kinds
        if kind in frames and frames[kind].any()
    ]


class WebSamples:
    """A dataset directory's web samples (text-only questions about images): a source of the mixture."""

    def __init__(self, root: str | Path, model: VLAConfig, cameras: Mapping[str, str]):
        """`cameras`: model slot -> dataset camera key; a sample's image goes to the slot of the camera
        it was taken with (``observation.images.<camera>``), else to the first slot."""
        self.root, self.model = Path(root), model
        self.kind, self.name = "web", f"{self.root.name}/web"
        self.has_text = True
        path = self.root / WEB_SAMPLES
        self.records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for i, record in enumerate(self.records):
            for field in ("image", "prompt", "target"):
                if not isinstance(record.get(field), str):
                    raise ValueError(
                        f"{path} line {i + 1}: {field!r} must be a string, got {record.get(field)!r}"
                    )
        self.slots = {camera_name(camera): slot for slot, camera in cameras.items()}

    @staticmethod
    def available(root: str | Path) -> bool:
        return (Path(root) / WEB_SAMPLES).is_file()

    def __len__(self) -> int:
        return len(self.records)

    def sample(self, key: SampleKey, fmt: SampleFormat) -> dict[str, Any]:
        record = self.records[key.index]
        with Image.open(self.root / WEB_SAMPLES.parent / record["image"]) as image:
            pixels = np.array(image.convert("RGB"))
        slot = self.slots.get(record.get("camera", ""), self.model.image_keys[0])
        images, masks = model_images(
            self.model, {slot: pixels}, augment=fmt.augment, generator=sample_generator(fmt.seed, key.n)
        )
        prompt = question_prompt(self.model, fmt.tokenizer, record["prompt"])
        return assemble(self.model, fmt, key, images, masks, prompt, None, text=record["target"])
