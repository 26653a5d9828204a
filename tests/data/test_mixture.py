"""The kinds of samples a training mixture draws from a dataset directory: robot and verbal frames,
high-level targets (<loc> boxes + subtask line), web questions; each with only its own loss terms,
and mixture proportions that follow the weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from data.test_lerobot_subtasks import (
    FEATURES,
    add_subtasks_like_add_features,
    frames,
    write_subtasks_like_pandas,
)
from vlaflow.data.lerobot import LeRobotDatasetWriter
from vlaflow.data.mixture import WebSamples, frame_kinds
from vlaflow.data.pipeline import ActionTokens, Source, SourceConfig, TrainingSamples, collate
from vlaflow.data.sampling import SampleKey, StepSampler, mixture_weights
from vlaflow.models import preset
from vlaflow.tokenizers import EmbeddedTokenizer, FastIdRange, FastTokenizer
from vlaflow.tokenizers.prompts import high_level_text, prompt_token_ids
from vlaflow.training.configs import TrainConfig
from vlaflow.training.losses import batch_targets

MODEL = preset("pi05_tiny", action_horizon=4, max_token_len=48, fast_vocab_size=64)
TOKENIZER = EmbeddedTokenizer()
BOX = "<loc0100><loc0200><loc0500><loc0600> red cup"
TEXT_LEN = 40
FRAME_KINDS = dict.fromkeys(("robot", "verbal", "high_level"))


def write_plain_dataset(root: Path, task: str) -> Path:
    """One 6-frame episode without images, subtasks or annotation columns."""
    with LeRobotDatasetWriter(root, fps=10, features=FEATURES) as writer:
        writer.add_episode(frames(6), task=task)
    return root


def write_mixed_dataset(root: Path) -> Path:
    """Two task episodes with subtasks and boxes, one verbal-instruction episode, three web samples:
    the layout `vlaflow generate tabletop` writes, at toy size."""
    size, rng = 32, np.random.default_rng(0)
    features = {
        "observation.state": {"dtype": "float32", "shape": [3], "names": None},
        "action": {"dtype": "float32", "shape": [2], "names": None},
        "observation.images.top": {"dtype": "video", "shape": [size, size, 3], "names": None},
        "annotation.kind": {"dtype": "string"},
        "annotation.boxes.top": {"dtype": "string"},
    }
    with LeRobotDatasetWriter(root, fps=10, features=features, subtasks=True) as writer:
        for kind, length, task, subtasks in (
            ("task", 8, "tidy up", ["pick up the red cup"] * 4 + ["place the red cup in the bin"] * 4),
            ("task", 6, "tidy up", ["pick up the red cup"] * 6),
            ("verbal_instruction", 6, "open the drawer", ["open the drawer"] * 6),
        ):
            writer.add_episode(
                {
                    "observation.state": rng.normal(size=(length, 3)).astype(np.float32),
                    "action": rng.normal(size=(length, 2)).astype(np.float32),
                    "observation.images.top": rng.integers(0, 255, (length, size, size, 3), dtype=np.uint8),
                    "annotation.kind": [kind] * length,
                    "annotation.boxes.top": [BOX if kind == "task" else ""] * length,
                },
                task=task,
                subtasks=subtasks,
            )
    (root / "web/images").mkdir(parents=True)
    Image.fromarray(np.full((size, size, 3), 200, np.uint8)).save(root / "web/images/0.png")
    samples = [
        {"image": "images/0.png", "prompt": "caption en", "target": "a red cup.", "camera": "top"},
        {"image": "images/0.png", "prompt": "detect red cup", "target": BOX, "camera": "top"},
        {"image": "images/0.png", "prompt": "answer en how many cups?", "target": "1", "camera": "side"},
    ]
    (root / "web/samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return root


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = write_mixed_dataset(tmp_path_factory.mktemp("mixed") / "tabletop")
    source = Source(SourceConfig(str(root)), MODEL, normalization="quantile")
    entries = frame_kinds(source, FRAME_KINDS, subtask_targets=True)
    entries.append(WebSamples(root, MODEL, source.cameras))
    fast = FastTokenizer.fit(source.normalized_chunks(), vocab_size=64)
    tokens = ActionTokens(fast=fast, ids=FastIdRange(MODEL.vocab_size, fast.vocab_size), max_len=32)
    samples = TrainingSamples(
        entries, TOKENIZER, augment=False, seed=0, action_tokens=tokens, text_len=TEXT_LEN
    )
    return {e.kind: (i, e) for i, e in enumerate(entries)}, samples


def text_of(sample) -> str:
    return TOKENIZER.decode(sample["text_tokens"][sample["text_mask"]].tolist())


def test_the_high_level_target_is_loc_boxes_then_the_subtask_line(mixed):
    assert (
        high_level_text("pick up the red cup", BOX) == f"Bounding boxes: {BOX}\nSubtask: pick up the red cup"
    )
    assert high_level_text("open the drawer", "") == "Subtask: open the drawer"  # nothing boxed
    kinds, samples = mixed
    index, entry = kinds["high_level"]
    assert len(entry) == 14  # every frame of the two task episodes (all labelled)
    sample = samples[SampleKey(0, index, 5)]  # episode 0, frame 5: the second subtask
    assert text_of(sample) == f"Bounding boxes: {BOX}\nSubtask: place the red cup in the bin"
    ids = sample["text_tokens"][sample["text_mask"]].tolist()
    locs = [TOKENIZER.loc_id(v) for v in (100, 200, 500, 600)]
    start = ids.index(locs[0])
    assert ids[start : start + 4] == locs  # each box value is one <loc> token
    assert ids[-1] == TOKENIZER.eos_id
    prompt = TOKENIZER.encode("Task: tidy up, State:", add_bos=True)  # the robot frames' prompt
    assert sample["tokens"][: len(prompt)].tolist() == prompt


def test_each_kind_carries_only_its_loss_terms(mixed):
    kinds, samples = mixed
    terms = {}
    for kind, (index, _) in kinds.items():
        s = samples[SampleKey(0, index, 0)]
        terms[kind] = (bool(s["text_mask"].any()), bool(s["fast_mask"].any()), bool(s["action_mask"].any()))
        assert bool(s["has_actions"]) == terms[kind][2]
    assert terms == {
        "robot": (True, True, True),  # subtask line, FAST, flow
        "verbal": (False, True, True),  # the command is the prompt: actions only
        "high_level": (True, False, False),
        "web": (True, False, False),
    }
    robot = samples[SampleKey(0, kinds["robot"][0], 0)]
    assert text_of(robot) == "Subtask: pick up the red cup"
    verbal = samples[SampleKey(0, kinds["verbal"][0], 0)]
    assert "open the drawer" in TOKENIZER.decode(verbal["tokens"][verbal["token_mask"]].tolist())
    web = samples[SampleKey(0, kinds["web"][0], 1)]
    assert text_of(web) == BOX
    question = prompt_token_ids(TOKENIZER, "detect red cup", None, pi05=False)  # BOS + prompt + "\n"
    assert web["tokens"][web["token_mask"]].tolist() == question
    assert bool(web["image_masks"]["base_0_rgb"]) and not bool(web["image_masks"]["left_wrist_0_rgb"])
    assert not web["state"].any()
    # One batch of every kind: each term counts only the elements of the samples that have it.
    batch = collate([samples[SampleKey(n, i, 1)] for n, (i, _) in enumerate(kinds.values())])
    targets = batch_targets(batch, flow=True, reference_reduction=False)
    per_sample = {
        "text": targets.text_loss.any(1).tolist(),
        "fast": targets.fast_loss.any(1).tolist(),
        "flow": targets.action_mask.flatten(1).any(1).tolist(),
    }
    assert per_sample == {
        "text": [True, False, True, True],
        "fast": [True, True, False, False],
        "flow": [True, True, False, False],
    }


def test_a_kind_the_dataset_lacks_is_absent_and_unknown_kinds_are_refused(tmp_path):
    root = write_plain_dataset(tmp_path / "plain", "stay")
    entries = frame_kinds(
        Source(SourceConfig(str(root)), MODEL, normalization="quantile"), FRAME_KINDS, subtask_targets=True
    )
    assert [(e.kind, len(e), e.has_text) for e in entries] == [("robot", 6, False)]
    assert not WebSamples.available(root)
    with pytest.raises(
        ValueError, match=r"sample_kinds: expected some of \['robot', 'verbal', 'high_level', 'web'\]"
    ):
        TrainConfig(sample_kinds={"robot": None, "videos": 1.0})


def test_a_lerobot_users_subtask_annotations_train_the_high_level(tmp_path):
    """LeRobot 0.4.4's convention as its add_features tool leaves it (no boxes, no kind column): the
    subtasks become high-level samples ("Subtask: ..." after the prompt) and robot frames' subtask
    targets, the same way as tabletop data."""
    root = write_plain_dataset(tmp_path / "annotated", "make tea")
    add_subtasks_like_add_features(root, np.array([0, 0, 1, 1, 2, 2]), pa.int64(), names=True)
    write_subtasks_like_pandas(
        root / "meta/subtasks.parquet", ["boil water", "pour water", "add tea"], "subtask"
    )
    source = Source(SourceConfig(str(root)), MODEL, normalization="quantile")
    entries = frame_kinds(source, FRAME_KINDS, subtask_targets=True)
    assert [(e.kind, len(e)) for e in entries] == [("robot", 6), ("high_level", 6)]
    samples = TrainingSamples(entries, TOKENIZER, augment=False, seed=0, text_len=TEXT_LEN)
    assert text_of(samples[SampleKey(0, 1, 3)]) == "Subtask: pour water"
    robot = samples[SampleKey(1, 0, 4)]
    assert text_of(robot) == "Subtask: add tea" and bool(robot["action_mask"].any())


def test_the_realised_mixture_follows_the_weights():
    sizes, given = [100, 10, 1000, 5], [None, 2.0, None, 0.0]
    p = mixture_weights(sizes, given, exponent=0.43)
    np.testing.assert_allclose(
        p[[0, 2]] / p[[0, 2]].sum(), np.array([100, 1000]) ** 0.43 / (100**0.43 + 1000**0.43)
    )
    assert p[3] == 0 and np.isclose(p[1], 2.0 / (100**0.43 + 2.0 + 1000**0.43))
    sampler = StepSampler(sizes, p, global_batch=32, seed=3, start=10, stop=410)
    counts = sampler.source_counts()
    assert counts.sum() == 400 * 32 and counts[3] == 0
    drawn = np.bincount([k.source for keys in sampler for k in keys], minlength=4)
    np.testing.assert_array_equal(counts, drawn)  # what the loader will actually draw
    sigma = np.sqrt(counts.sum() * p * (1 - p))
    assert (np.abs(counts - counts.sum() * p) < 4 * sigma + 1e-9).all()


def test_a_narrower_robots_fast_target_is_its_chunk_zero_padded():
    """One FAST tokenizer serves robots of different action sizes (fitted on padded chunks)."""
    rng = np.random.default_rng(0)
    fast = FastTokenizer.fit(np.clip(rng.normal(0, 0.3, (64, 4, 3)), -1, 1), vocab_size=64)
    tokens = ActionTokens(fast=fast, ids=FastIdRange(MODEL.vocab_size, fast.vocab_size), max_len=64)
    chunk = np.clip(rng.normal(0, 0.3, (4, 2)), -1, 1)
    ids, mask = tokens.target(TOKENIZER, chunk)
    fast_ids = [i - MODEL.vocab_size for i in ids[mask] if i >= MODEL.vocab_size]
    decoded, ok = fast.decode([fast_ids])
    assert ok[0] and np.abs(decoded[0, :, :2] - chunk).max() < 0.1 and np.abs(decoded[0, :, 2]).max() < 0.1
    with pytest.raises(ValueError, match="action chunk of 4 dims; the FAST tokenizer has 3"):
        tokens.target(TOKENIZER, np.zeros((4, 4)))
