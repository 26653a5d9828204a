"""`vlaflow demo tabletop` end to end at toy size: every kind of sample generated and co-trained on,
hierarchical evaluation on both splits (subtask accuracy, videos, web answers), and its resume: a
rerun reuses data and checkpoint; an interrupted generation is redone, not trusted."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mujoco")

from vlaflow.cli import main
from vlaflow.demo import TabletopDemoConfig, run_tabletop_demo

TOY = TabletopDemoConfig(
    families=("instruction",),
    episodes=2,
    resolution=56,
    steps=2,
    batch_size=4,
    eval_episodes=1,
    web_images=2,
    workers=1,
)


def test_tabletop_demo_runs_end_to_end_and_a_rerun_continues(tmp_path, capsys):
    (tmp_path / "data.partial").mkdir(parents=True)  # an interrupted generation: thrown away
    (tmp_path / "data.partial" / "junk").write_text("x")
    summary = run_tabletop_demo(tmp_path, TOY, progress=False)
    assert not (tmp_path / "data.partial").exists() and (tmp_path / "data" / "web").is_dir()
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    kinds = {name.split("/")[-1] for name in metrics[0]["mixture"]}
    assert {"robot", "verbal", "high_level", "web"} <= kinds
    assert summary["checkpoint"].endswith("step_00000002")
    for split in ("train", "ood"):
        result = summary["splits"][split]
        assert result["overall"]["episodes"] == 1 and set(result["families"]) == {"instruction"}
        assert result["overall"]["subtask_accuracy"]["episodes"] == 1  # hierarchical: it decoded
        assert result["web"]["samples"] > 0
        assert len(list((tmp_path / "eval" / split / "videos").glob("instruction_*.mp4"))) == 1
    settings = json.loads((tmp_path / "eval" / "ood" / "results.json").read_text())["settings"]
    assert settings["mode"] == "hierarchical" and settings["split"] == "ood"
    assert settings["skills"] == "assisted"  # the demo's default, also what its data was generated with
    episodes_meta = (tmp_path / "data" / "meta" / "tabletop_episodes.jsonl").read_text().splitlines()
    assert {json.loads(line)["skills"] for line in episodes_meta} == {"assisted"}

    data_files = sorted(p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*") if p.is_file())
    assert main(["demo", "tabletop", "--output", str(tmp_path), "--families", "instruction", "--episodes",
                 "2", "--resolution", "56", "--steps", "2", "--batch-size", "4", "--eval-episodes", "1",
                 "--workers", "1", "--skills", "assisted"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "ood: progress" in out and "subtask accuracy" in out and "videos" in out
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*") if p.is_file()) == data_files
    assert json.loads((tmp_path / "demo.json").read_text())["checkpoint"] == summary["checkpoint"]


def test_demo_refuses_options_of_the_other_simulator(tmp_path, capsys):
    assert main(["demo", "tabletop", "--output", str(tmp_path), "--tasks", "reach-v3"]) == 2
    assert main(["demo", "--output", str(tmp_path), "--families", "instruction"]) == 2
    assert main(["demo", "--output", str(tmp_path), "--skills", "assisted"]) == 2
    assert main(["demo", "tabletop", "--output", str(tmp_path), "--families", "verbal"]) == 2
    err = capsys.readouterr().err
    assert "--tasks: Meta-World options" in err and "--families: tabletop options" in err
    assert "--families ['verbal']" in err and "--skills: tabletop options" in err
    assert not any(tmp_path.iterdir())  # nothing generated or trained
