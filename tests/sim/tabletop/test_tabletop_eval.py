"""The scripted expert and other policies through the evaluation harness; `vlaflow eval tabletop`."""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np
import pytest
import torch

pytest.importorskip("mujoco")

from vlaflow.cli import main
from vlaflow.data.pipeline import SourceStats
from vlaflow.data.stats import feature_stats
from vlaflow.models import VLA, preset
from vlaflow.pretrained import save_pretrained
from vlaflow.sim.tabletop.evaluate import evaluate_tabletop, wilson_interval
from vlaflow.sim.tabletop.expert import ExpertPolicy
from vlaflow.sim.tabletop.rollout import parse_output
from vlaflow.sim.tabletop.tasks import _pick_place
from vlaflow.tokenizers import EmbeddedTokenizer

FAMILIES = ("items_in_drawer", "colour_in_container")


@pytest.mark.parametrize("split", ["train", "ood"])
def test_expert_solves_two_families(tmp_path, split):
    results = evaluate_tabletop(
        tmp_path, policy="expert", split=split, episodes=2, families=FAMILIES, workers=1, videos=0,
        progress=False,
    )  # fmt: skip
    for family in FAMILIES:
        r = results["families"][family]
        assert r["episodes"] == 2 and r["success"]["rate"] == 1.0 and r["progress"]["mean"] == 1.0
        assert r["language_following"]["mean"] == 1.0
    for episode in results["episodes"]:
        assert episode["completed"] == [True] * len(episode["subtasks"]) and episode["targets"]
        assert set(episode["acted_on"]) == set(episode["targets"])


class Idle:
    """Holds still with the gripper open; says what it is (not) doing."""

    def __init__(self, family: str) -> None:
        self.family = family

    def __call__(self, obs):
        assert obs["images"]["scene"].shape == (48, 48, 3)  # a non-expert policy sees images
        return {"actions": np.zeros((4, 5), dtype=np.float32), "subtask": "wait"}


def test_results_json_chart_and_videos(tmp_path):
    evaluate_tabletop(
        tmp_path, policy=Idle, split="ood", episodes=2, families=("instruction", "group_in_container"),
        workers=1, videos=1, resolution=48, steps_per_chunk=4, progress=False,
    )  # fmt: skip
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved) == {"families", "overall", "settings", "episodes", "commands"}
    assert saved["settings"]["split"] == "ood" and saved["settings"]["steps_per_chunk"] == 4
    assert saved["settings"]["skills"] == "physical"
    # Single commands by kind; objects that never move are never the wrong target.
    assert sum(c["episodes"] for c in saved["commands"].values()) == 2
    assert set(saved["commands"]) <= {
        "pick up",
        "open the drawer",
        "open the box",
        "close the drawer",
        "close the box",
    }
    assert saved["families"]["group_in_container"]["wrong_target"] == {
        "rate": 0.0, "wrong": 0, "episodes": 2, "ci95": list(wilson_interval(0, 2))
    }  # fmt: skip
    overall = saved["overall"]
    assert overall["episodes"] == 4 and overall["success"]["rate"] == 0.0 and overall["progress"]["mean"] == 0
    lo, hi = overall["success"]["ci95"]
    assert lo == 0.0 and hi == pytest.approx(wilson_interval(0, 4)[1]) and 0.4 < hi < 0.6
    grouped = saved["families"]["group_in_container"]
    assert grouped["language_following"]["mean"] == 0.0  # named objects never touched
    assert grouped["mean_length"] > 200  # ran to the step limit
    for episode in saved["episodes"]:
        assert {"family", "seed", "prompt", "subtasks", "progress", "success", "language_following"} <= set(
            episode
        )
    assert (tmp_path / "results.png").stat().st_size > 1000
    videos = sorted(p.name for p in (tmp_path / "videos").glob("*.mp4"))
    assert videos == ["group_in_container_seed1000000_failure.mp4", "instruction_seed1000000_failure.mp4"]


class ExpertFor:
    """The scripted expert, made to carry out the plan of another object: `decoy=True` picks up and places
    an object the prompt does not name."""

    uses_images = False

    def __init__(self, decoy: bool) -> None:
        self.decoy, self.expert, self.plans = decoy, ExpertPolicy(), {}

    def __call__(self, obs):
        spec = obs["spec"]
        if self.decoy:  # the same replacement spec all episode long (the expert restarts on a new one)
            if spec.seed not in self.plans:
                other = next(o.name for o in spec.scene.objects if o.name not in spec.targets)
                plan = _pick_place(spec.scene, [other], spec.subtasks[1].dest)
                self.plans[spec.seed] = dataclasses.replace(spec, subtasks=tuple(plan))
            spec = self.plans[spec.seed]
        return self.expert({**obs, "spec": spec})


def test_wrong_targets_and_first_headings_are_scored(tmp_path):
    """The expert heads for the named object and moves it first; sent to a distractor, it scores a
    wrong target in every episode."""
    for decoy in (False, True):
        results = evaluate_tabletop(
            tmp_path / str(decoy), policy=functools.partial(lambda decoy, family: ExpertFor(decoy), decoy),
            split="train", episodes=3, families=("item_in_container",), workers=1, videos=0,
            steps_per_chunk=5, progress=False,
        )  # fmt: skip
        r = results["families"]["item_in_container"]
        assert r["wrong_target"]["wrong"] == (3 if decoy else 0) and r["wrong_target"]["episodes"] == 3
        assert r["success"]["rate"] == (0.0 if decoy else 1.0)
        headings = [e["first_heading"] for e in results["episodes"]]
        if not decoy:
            assert min(headings) > 0.9 and r["first_heading"]["towards"] == 1.0
        assert all(e["first_moved"] for e in results["episodes"])


def test_bad_policy_outputs_and_options_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(5,\) or \(T, 5\)"):
        parse_output(np.zeros((2, 7)))
    with pytest.raises(ValueError, match="'actions'"):
        parse_output({"subtask": "pick up the cup"})
    with pytest.raises(ValueError, match="families"):
        evaluate_tabletop(tmp_path, policy="expert", families=("fly",), progress=False)
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        evaluate_tabletop(tmp_path, policy=str(tmp_path), progress=False)


def test_cli_evaluates_the_expert(tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", "tabletop", "--policy", "expert", "--split", "train", "--episodes", "1"]
    argv += ["--families", "instruction", "--resolution", "48", "--workers", "1", "--output", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "instruction" in printed and "overall" in printed and "100.0" in printed
    assert json.loads((out / "results.json").read_text())["settings"]["split"] == "train"
    assert len(list((out / "videos").glob("instruction_seed1000000_success.mp4"))) == 1
    assert main(["eval", "tabletop", "--output", str(out)]) == 2  # neither --policy nor --checkpoint


class SaysThePlan:
    """Holds still and reports the plan step in force, or a fixed wrong subtask."""

    def __init__(self, family: str, wrong: bool = False) -> None:
        self.wrong = wrong

    def __call__(self, obs):
        subtask = "dance" if self.wrong else obs["subtask"].upper() + "."
        return {"actions": np.zeros((5, 5), dtype=np.float32), "subtask": subtask}


def test_subtask_accuracy_scores_each_chunk_against_the_plan_step_in_force(tmp_path):
    run = dict(split="train", episodes=1, families=("instruction",), workers=1, videos=0, resolution=48)
    right = evaluate_tabletop(tmp_path / "a", policy=SaysThePlan, steps_per_chunk=5, progress=False, **run)
    accuracy = right["overall"]["subtask_accuracy"]
    assert accuracy["normalized"]["mean"] == 1.0 and accuracy["exact"]["mean"] == 0.0  # case and "."
    episode = right["episodes"][0]
    assert accuracy["chunks"] == episode["subtask_accuracy"]["chunks"] == -(-episode["length"] // 5)
    wrong = evaluate_tabletop(
        tmp_path / "b", policy=functools.partial(SaysThePlan, wrong=True), progress=False, **run
    )
    assert wrong["overall"]["subtask_accuracy"]["normalized"]["mean"] == 0.0


def test_the_expert_mostly_reports_the_plan_step_in_force(tmp_path):
    results = evaluate_tabletop(
        tmp_path, policy="expert", split="train", episodes=1, families=FAMILIES, workers=1, videos=0,
        progress=False,
    )  # fmt: skip
    # It differs only while it recovers a dropped object or after the last step is done.
    assert results["overall"]["subtask_accuracy"]["exact"]["mean"] > 0.8


def tabletop_checkpoint(directory):
    """A tiny random pi0.5 with the tabletop's cameras, 5-d state and actions."""
    rng = np.random.default_rng(0)
    cameras = {"base_0_rgb": "observation.images.scene", "left_wrist_0_rgb": "observation.images.wrist"}
    stats = SourceStats(
        state=feature_stats(rng.normal(size=(64, 5))),
        actions=feature_stats(rng.normal(size=(64, 5))),
        action_horizon=10,
        cameras=cameras,
    )
    torch.manual_seed(0)
    model = VLA(preset("pi05_tiny", image_keys=tuple(cameras), action_horizon=10))
    metadata = {"normalization": "quantile", "norm_stats": {"tabletop": stats.to_dict()}}
    return save_pretrained(directory, model, tokenizer=EmbeddedTokenizer(), metadata=metadata)


def test_a_checkpoint_in_oracle_mode_follows_the_plan_step_it_is_given(tmp_path, capsys):
    checkpoint = tabletop_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "eval"
    argv = ["eval", "tabletop", "--checkpoint", str(checkpoint), "--mode", "oracle", "--split", "train"]
    argv += ["--episodes", "1", "--families", "instruction", "--resolution", "48", "--workers", "1"]
    argv += ["--steps-per-chunk", "10", "--output", str(out)]
    assert main(argv) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["mode"] == "oracle"
    assert saved["overall"]["subtask_accuracy"]["exact"]["mean"] == 1.0
    assert "subtask accuracy" in capsys.readouterr().out
    argv = ["eval", "metaworld", "--checkpoint", str(checkpoint), "--mode", "oracle", "--output", str(out)]
    assert main(argv) == 2 and "--mode and --web-images are for the tabletop" in capsys.readouterr().err


def test_a_server_in_oracle_mode_gets_the_plan_step_over_the_wire(tmp_path, capsys):
    """`vlaflow eval tabletop --server` sends an oracle server the plan step in force and scores the
    subtask each reply carries; a --mode other than the server's is refused."""
    from vlaflow.inference.policy import Policy
    from vlaflow.inference.server import ServerConfig, server_for_policy
    from vlaflow.pretrained import read_config

    checkpoint = tabletop_checkpoint(tmp_path / "ckpt")
    policy = Policy.load(checkpoint, num_steps=2, mode="oracle")
    server = server_for_policy(policy, read_config(checkpoint)["metadata"], config=ServerConfig(port=0))
    out = tmp_path / "eval"
    with server.in_background() as port:
        argv = ["eval", "tabletop", "--server", f"ws://127.0.0.1:{port}", "--split", "train"]
        argv += ["--episodes", "1", "--families", "instruction", "--resolution", "48", "--workers", "1"]
        argv += ["--steps-per-chunk", "10", "--output", str(out)]
        assert main([*argv, "--mode", "oracle"]) == 0
        assert main([*argv, "--mode", "hierarchical"]) == 2
    assert "the server runs mode 'oracle'" in capsys.readouterr().err
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["mode"] == "oracle" and saved["settings"]["policy"] == f"ws://127.0.0.1:{port}"
    assert saved["overall"]["subtask_accuracy"]["exact"]["mean"] == 1.0
    assert server.stats.replies > 0 and not server.stats.errors


def test_video_banner_wraps_long_prompts_and_subtasks_instead_of_cutting_them():
    from types import SimpleNamespace

    from vlaflow.sim.tabletop.evaluate import video_frames

    def episode(subtask: str) -> SimpleNamespace:
        return SimpleNamespace(
            images={"scene": np.zeros((2, 48, 96, 3), np.uint8)},
            prompts=["put the dishes in the drawer"] * 2,
            subtasks=["", subtask],
            progress=np.zeros(2, np.float32),
        )

    short = video_frames(episode("open the drawer"), ["scene"])
    long = video_frames(episode("place the orange mug in the top drawer, then close the drawer"), ["scene"])
    # 16 characters a line: the prompt on three lines, "subtask: open the drawer" on two, the step on one
    assert short.shape[1:] == (48 + 2 + 14 * 6, 96, 3)
    assert long.shape[1] > short.shape[1] and long.shape[1] % 2 == 0  # even: yuv420p video
    yellow = (long[..., 0] > 200) & (long[..., 1] > 180) & (long[..., 2] < 120)
    rows = np.flatnonzero(yellow[1].any(axis=1))
    assert rows.max() - rows.min() > 2 * 14  # the subtask spans three lines or more
