"""Scoring held-out web questions: exact answers, detection by one-to-one IoU >= 0.5 matches, and
the whole evaluation on freshly rendered samples."""

from __future__ import annotations

import json

import pytest

import vlaflow.inference.ask as ask_module
from vlaflow.bench.serve import tiny_checkpoint
from vlaflow.sim.tabletop.web_eval import box_iou, detection_score, evaluate_web, normalized, score_answer

CUP = "<loc0100><loc0100><loc0299><loc0299> red cup"


def test_normalized_ignores_case_spacing_and_final_punctuation():
    assert normalized("  In the  Bowl. ") == "in the bowl"
    assert normalized("red") != normalized("dark red")


def test_box_iou():
    assert box_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert box_iou((0, 0, 9, 9), (10, 10, 19, 19)) == 0.0
    assert box_iou((0, 0, 9, 9), (0, 5, 9, 14)) == pytest.approx(50 / 150)


@pytest.mark.parametrize(
    ("answer", "correct"),
    [
        (CUP, True),
        ("<loc0110><loc0105><loc0300><loc0290> red cup", True),  # IoU ~0.86
        ("<loc0100><loc0100><loc0299><loc0299> blue cup", False),  # wrong label
        ("<loc0200><loc0200><loc0399><loc0399> red cup", False),  # IoU 0.14
        (f"{CUP} ; {CUP}", False),  # an extra box
        ("red cup", False),  # no box
    ],
)
def test_detection_needs_every_box_matched_once(answer, correct):
    assert detection_score(answer, CUP)[0] is correct


def test_detection_of_several_boxes_matches_each_once():
    target = f"{CUP} ; <loc0500><loc0500><loc0699><loc0699> red cup"
    swapped = f"<loc0500><loc0500><loc0699><loc0699> red cup ; {CUP}"
    assert detection_score(swapped, target) == (True, 1.0)
    assert detection_score(CUP, target) == (False, 0.5)  # one of two found, mean best IoU 0.5


def test_answers_other_than_detection_are_exact_after_normalization():
    assert score_answer("vqa", "Red.", "red") == {"correct": True}
    assert score_answer("caption", "a table with a cup", "a table with a red cup") == {"correct": False}


def test_evaluate_web_scores_a_perfect_and_a_wrong_answerer(tmp_path, monkeypatch):
    checkpoint = tiny_checkpoint(tmp_path / "tiny")
    targets: dict[str, list[str]] = {}  # prompt -> targets in question order ("caption en" repeats)

    def perfect(model, tokenizer, images, prompt, **kwargs):
        return targets[prompt].pop(0)

    # The samples are rendered on the first call; read them to answer perfectly on the second.
    monkeypatch.setattr(ask_module, "ask", lambda *a, **k: "no idea")
    wrong = evaluate_web(checkpoint, tmp_path / "wrong", split="ood", images=2, resolution=64, progress=False)
    samples = (tmp_path / "wrong" / "samples" / "samples.jsonl").read_text().splitlines()
    assert wrong["overall"]["samples"] == len(samples) > 0 and wrong["overall"]["correct"] == 0
    for line in samples:
        sample = json.loads(line)
        targets.setdefault(sample["prompt"], []).append(sample["target"])
    monkeypatch.setattr(ask_module, "ask", perfect)
    (tmp_path / "right").mkdir()
    (tmp_path / "wrong" / "samples").rename(tmp_path / "right" / "samples")
    right = evaluate_web(checkpoint, tmp_path / "right", split="ood", images=2, resolution=64, progress=False)
    assert right["overall"]["rate"] == 1.0 and right["overall"]["ci95"][1] == pytest.approx(1.0)
    assert set(right["kinds"]) <= {"caption", "vqa", "detection", "region"} and "caption" in right["kinds"]
    saved = json.loads((tmp_path / "right" / "web_results.json").read_text())
    assert saved["settings"]["split"] == "ood" and len(saved["samples"]) == len(samples)
