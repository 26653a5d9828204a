"""`vlaflow demo` end to end at toy size, and its resume: a rerun reuses data and checkpoint."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("metaworld")

from vlaflow.cli import main
from vlaflow.demo import DemoConfig, run_demo


def test_demo_runs_end_to_end_and_a_rerun_continues(tmp_path, capsys):
    config = DemoConfig(
        tasks=("reach-v3",),
        episodes_per_task=2,
        resolution=64,
        steps=3,
        batch_size=4,
        eval_episodes_per_task=1,
        workers=1,
    )
    summary = run_demo(tmp_path, config, progress=False)
    assert set(summary["tasks"]) == {"reach-v3"} and summary["episodes"] == 1
    assert 0.0 <= summary["success_rate"] <= 1.0
    assert summary["checkpoint"].endswith("step_00000003")
    for path in ("eval/results.json", "eval/success.png", "run/loss.png", "run/metrics.jsonl"):
        assert (tmp_path / path).is_file(), path
    assert len(list((tmp_path / "eval" / "videos").glob("reach-v3_*.mp4"))) == 1
    assert json.loads((tmp_path / "demo.json").read_text())["config"]["steps"] == 3

    data_files = sorted(p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*") if p.is_file())
    assert main(["demo", "--output", str(tmp_path), "--tasks", "reach-v3", "--episodes-per-task", "2",
                 "--resolution", "64", "--steps", "3", "--batch-size", "4", "--eval-episodes-per-task",
                 "1", "--workers", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "success rate" in out and "reach-v3" in out and "success.png" in out
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*") if p.is_file()) == data_files
    assert json.loads((tmp_path / "demo.json").read_text())["checkpoint"] == summary["checkpoint"]
