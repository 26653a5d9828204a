"""How well a trained model answers held-out web-style questions (captions, VQA, detection, regions).

Fresh web samples are rendered for the split from seeds far from the ones datasets use
(`vlaflow.sim.tabletop.web`), the model answers each question as `vlaflow ask` does, and every kind
is scored with a Wilson 95% interval:

* caption, vqa, region: the answer equals the target after `normalized` (case, spacing, final
  punctuation);
* detection: the predicted boxes match the target's one to one, each pair with the same label and
  intersection over union >= 0.5 (boxes in PaliGemma's 1024-bin coordinates); the mean best IoU of the
  target boxes is reported too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vlaflow.sim.tabletop.web import WEB_KINDS, generate_web_samples
from vlaflow.tokenizers.boxes import parse_boxes

IOU_THRESHOLD = 0.5
WEB_EVAL_SEED = 3_000_000  # web samples of datasets use scene seeds from 0

Box = tuple[int, int, int, int]


def normalized(text: str) -> str:
    """Lower case, single spaces, no surrounding space or final punctuation: the form two answers
    (or subtasks) are compared in when wording matters but formatting does not."""
    return re.sub(r"\s+", " ", text.lower()).strip().rstrip(".!?;,").strip()


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (y0, x0, y1, x1) boxes in inclusive 1024-bin coordinates."""
    height = min(a[2], b[2]) - max(a[0], b[0]) + 1
    width = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(0, height) * max(0, width)

    def area(box: Box) -> int:
        return (box[2] - box[0] + 1) * (box[3] - box[1] + 1)

    return inter / (area(a) + area(b) - inter)


def detection_score(answer: str, target: str) -> tuple[bool, float]:
    """(every target box matched one to one by a predicted box of the same label with IoU >= 0.5 and
    no extra boxes, mean over target boxes of the best IoU of a same-label prediction)."""
    predicted, wanted = parse_boxes(answer), parse_boxes(target)
    best = [
        max(
            (box_iou(box, p) for p, plabel in predicted if normalized(plabel) == normalized(label)),
            default=0.0,
        )
        for box, label in wanted
    ]
    unused = list(predicted)
    matched = 0
    for box, label in wanted:
        candidates = [
            (box_iou(box, p), i)
            for i, (p, plabel) in enumerate(unused)
            if normalized(plabel) == normalized(label)
        ]
        iou, i = max(candidates, default=(0.0, -1))
        if iou >= IOU_THRESHOLD:
            matched += 1
            unused.pop(i)
    correct = bool(wanted) and matched == len(wanted) and not unused
    return correct, float(np.mean(best)) if best else 0.0


def score_answer(kind: str, answer: str, target: str) -> dict[str, Any]:
    """{"correct": bool} (and "iou" for detection) of one answer."""
    if kind == "detection":
        correct, iou = detection_score(answer, target)
        return {"correct": correct, "iou": iou}
    return {"correct": normalized(answer) == normalized(target)}


def summarize_web(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per kind and overall: n, correct, rate and Wilson 95% interval (and mean IoU for detection)."""
    from vlaflow.sim.tabletop.evaluate import wilson_interval

    def block(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        wins = sum(r["correct"] for r in rows)
        out = {
            "samples": len(rows),
            "correct": wins,
            "rate": wins / len(rows) if rows else 0.0,
            "ci95": wilson_interval(wins, len(rows)),
        }
        ious = [r["iou"] for r in rows if "iou" in r]
        if ious:
            out["mean_iou"] = float(np.mean(ious))
        return out

    kinds = {k: block([r for r in records if r["kind"] == k]) for k in WEB_KINDS}
    return {"kinds": {k: v for k, v in kinds.items() if v["samples"]}, "overall": block(records)}


def evaluate_web(
    checkpoint: str | Path,
    output: str | Path,
    *,
    split: str,
    images: int,
    seed: int = WEB_EVAL_SEED,
    resolution: int = 224,
    progress: bool = True,
) -> dict[str, Any]:
    """Render `images` held-out web images of `split` (samples under ``output/samples``), ask the
    checkpoint every question, write ``output/web_results.json`` and return it."""
    from PIL import Image

    from vlaflow.inference.ask import ask
    from vlaflow.pretrained import load_pretrained

    output = Path(output)
    loaded = load_pretrained(checkpoint)
    if loaded.tokenizer is None:
        raise ValueError(f"{checkpoint} names no tokenizer")
    samples_dir = output / "samples"
    if not (samples_dir / "samples.jsonl").is_file():
        generate_web_samples(
            samples_dir, images=images, split=split, seed=seed, resolution=resolution, progress=progress
        )
    samples = [json.loads(line) for line in (samples_dir / "samples.jsonl").read_text().splitlines()]
    records = []
    for sample in tqdm(samples, disable=not progress, desc=f"web questions ({split})", unit="q"):
        image = np.asarray(Image.open(samples_dir / sample["image"]).convert("RGB"))
        answer = ask(loaded.model, loaded.tokenizer, [image], sample["prompt"])
        records.append(
            {
                **{k: sample[k] for k in ("kind", "prompt", "target", "image", "camera")},
                "answer": answer,
                **score_answer(sample["kind"], answer, sample["target"]),
            }
        )
    results = {
        **summarize_web(records),
        "settings": {"checkpoint": str(checkpoint), "split": split, "images": images, "seed": seed},
        "samples": records,
    }
    (output / "web_results.json").write_text(json.dumps(results, indent=2))
    return results
