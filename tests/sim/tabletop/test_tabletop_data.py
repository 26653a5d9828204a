"""Generated tabletop data: LeRobot episodes with subtasks and boxes, verbal instructions, web samples;
and a model trained on them running through the evaluation harness."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("mujoco")

from vlaflow.cli import main
from vlaflow.data.lerobot import LeRobotDataset, validate_dataset
from vlaflow.data.pipeline import SourceConfig
from vlaflow.sim.tabletop.evaluate import evaluate_tabletop, training_skills
from vlaflow.sim.tabletop.generate import EPISODES_META, generate_tabletop
from vlaflow.sim.tabletop.web import WEB_KINDS
from vlaflow.tokenizers.boxes import parse_boxes
from vlaflow.training.configs import apply_overrides, named_config
from vlaflow.training.trainer import train

RES = 48


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("tabletop") / "data"
    summary = generate_tabletop(
        root, episodes=2, families=("group_in_container", "instruction"), verbal_sessions=1, web_images=3,
        resolution=RES, workers=1, progress=False,
    )  # fmt: skip
    assert summary.task_episodes == 2 and summary.verbal_sessions == 1 and summary.verbal_episodes >= 3
    assert summary.web_samples >= 6
    return root


def test_dataset_loads_with_subtasks_and_boxes(dataset):
    validate_dataset(dataset)
    ds = LeRobotDataset(dataset)
    assert ds.fps == 20 and ds.camera_keys == ["observation.images.scene", "observation.images.wrist"]
    frame = ds[0]
    assert frame["observation.state"].shape == (5,) and frame["action"].shape == (5,)
    assert frame["observation.images.wrist"].shape == (RES, RES, 3)
    kinds = ds.column("annotation.kind")
    subtasks = [ds.meta.subtasks[i] for i in ds.column("subtask_index")[:, 0]]
    assert frame["subtask"] == subtasks[0] and frame["subtask_index"].dtype == np.int64
    boxes = ds.column("annotation.boxes.scene")
    assert set(kinds) == {"task", "verbal_instruction"}
    assert all(subtasks) and sum("<loc" in b for b in boxes) > 0.8 * len(boxes)
    for subtask, text in zip(subtasks, boxes, strict=True):
        for _, label in parse_boxes(text):  # the boxes show what the subtask is about
            assert label in subtask
    first = ds.episode_range(0)
    assert ds[first.start]["task"].startswith("put the ")
    assert ds.column("annotation.plan_step")[first.start, 0] == 0
    assert ds.column("next.success")[first.stop - 1, 0] and not ds.column("next.success")[first.start, 0]


def test_verbal_instruction_episodes_prompt_each_command(dataset):
    ds = LeRobotDataset(dataset, image_keys=[])
    records = [json.loads(line) for line in (dataset / EPISODES_META).read_text().splitlines()]
    assert [r["episode_index"] for r in records] == list(range(ds.num_episodes))
    verbal = [r for r in records if r["kind"] == "verbal_instruction"]
    assert [r["command"] for r in verbal] == list(range(len(verbal)))
    assert [r["prompt"] for r in verbal] == verbal[0]["subtasks"][: len(verbal)]
    for r in verbal:
        rows = ds.episode_range(r["episode_index"])
        assert ds[rows.start]["task"] == r["prompt"]
        assert {ds[i]["subtask"] for i in rows} == {r["prompt"]}


def test_web_samples(dataset):
    lines = (dataset / "web" / "samples.jsonl").read_text().splitlines()
    samples = [json.loads(line) for line in lines]
    kinds = {s["kind"] for s in samples}
    assert kinds <= set(WEB_KINDS) and {"caption", "vqa"} <= kinds
    for s in samples:
        assert set(s) == {"image", "prompt", "target", "kind", "camera", "split", "seed"}
        assert (dataset / "web" / s["image"]).is_file() and s["target"] and s["split"] == "train"
        if s["kind"] == "detection":
            assert parse_boxes(s["target"]) and s["prompt"].startswith("detect ")
        if s["kind"] == "region":
            assert len(parse_boxes(s["prompt"].split(": ", 1)[1] + " x")) == 1
    captions = [s for s in samples if s["kind"] == "caption"]
    assert len(captions) == 3 and all(s["target"].startswith("a table with ") for s in captions)


def test_generation_refuses_to_overwrite_and_checks_arguments(dataset, tmp_path):
    with pytest.raises(FileExistsError):
        generate_tabletop(dataset, episodes=1, progress=False)
    with pytest.raises(ValueError, match="families"):
        generate_tabletop(tmp_path / "x", episodes=1, families=("verbal",), progress=False)
    with pytest.raises(ValueError, match="split"):
        generate_tabletop(tmp_path / "y", episodes=1, split="test", progress=False)


def test_cli_generates_a_dataset(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["generate", "tabletop", "--episodes", "1", "--split", "ood", "--resolution", "32"]
    assert main([*argv, "--workers", "1", "--cameras", "scene", "--output", str(out)]) == 0
    assert "1 task episodes" in capsys.readouterr().out
    ds = LeRobotDataset(out)
    assert ds.camera_keys == ["observation.images.scene"] and "annotation.boxes.scene" in ds.meta.features
    record = json.loads((out / EPISODES_META).read_text().splitlines()[0])
    assert record["split"] == "ood" and record["skills"] == "physical" and record["perturb"] == 0.0
    # The tabletop options: families, how many verbal sessions and web images, skills, noise injection.
    out = tmp_path / "assisted"
    options = ["--families", "instruction", "--verbal-sessions", "0", "--web-images", "0"]
    options += ["--skills", "assisted", "--perturb", "0.003"]
    assert main([*argv, *options, "--workers", "1", "--output", str(out)]) == 0
    assert "0 verbal-instruction episodes" in capsys.readouterr().out and not (out / "web").exists()
    records = [json.loads(line) for line in (out / EPISODES_META).read_text().splitlines()]
    assert [(r["family"], r["skills"], r["perturb"]) for r in records] == [("instruction", "assisted", 0.003)]


def test_trained_checkpoint_runs_through_the_harness(dataset, tmp_path):
    config = apply_overrides(
        named_config("pi05_tiny"),
        ["steps=1", "batch_size=2", "num_workers=0", 'model_overrides={"action_horizon": 4}'],
    )
    config.datasets = [SourceConfig(str(dataset))]
    checkpoint = train(config, tmp_path / "run", progress=False).checkpoint
    results = evaluate_tabletop(
        tmp_path / "eval", policy=str(checkpoint), families=("instruction",), episodes=1, workers=1,
        resolution=RES, videos=1, num_steps=1, steps_per_chunk=4, progress=False,
    )  # fmt: skip
    assert results["overall"]["episodes"] == 1 and results["settings"]["denoising_steps"] == 1
    assert len(list((tmp_path / "eval" / "videos").glob("instruction_seed1000000_*.mp4"))) == 1
    assert results["settings"]["skills"] == "physical"  # the mode its data was made in


def test_a_checkpoint_is_evaluated_in_the_skills_mode_of_its_data(tmp_path):
    data = tmp_path / "assisted"
    generate_tabletop(
        data, episodes=1, families=("instruction",), verbal_sessions=0, web_images=0, resolution=RES,
        workers=1, skills="assisted", progress=False,
    )  # fmt: skip
    config = apply_overrides(named_config("pi05_tabletop_tiny_flow"), ["steps=1", "batch_size=2"])
    config.datasets = [SourceConfig(str(data))]
    assert config.flow_draws == 4  # the CPU presets' recipe, trained through here
    checkpoint = str(train(config, tmp_path / "run", progress=False).checkpoint)
    assert training_skills(checkpoint) == "assisted" and training_skills("expert") == "physical"
    common = {"families": ("instruction",), "episodes": 1, "workers": 1, "videos": 0, "num_steps": 1}
    results = evaluate_tabletop(tmp_path / "eval", policy=checkpoint, progress=False, **common)
    assert results["settings"]["skills"] == "assisted" and results["settings"]["resolution"] == RES
    results = evaluate_tabletop(
        tmp_path / "eval2", policy=checkpoint, skills="physical", progress=False, **common
    )
    assert results["settings"]["skills"] == "physical"
