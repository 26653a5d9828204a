"""`python -m vlaflow.bench.train --dataset`: the trainer's own step timed on real data, variants
alternated in one process."""

from __future__ import annotations

import json

from vlaflow.bench.train import main, run_pipeline

TINY = ['model_overrides={"action_horizon": 4, "max_token_len": 16}', "batch_size=2"]


def test_pipeline_benchmark_times_each_variant_of_the_real_trainer(toy_dataset):
    results = run_pipeline(
        "pi05_tiny",
        toy_dataset,
        {"f32": [], "bf16": ["precision=bfloat16"]},
        overrides=TINY,
        rounds=2,
        steps_per_turn=1,
        warmup=1,
        profile_operators=5,
    )
    assert [r.variant for r in results] == ["f32", "bf16"]
    assert [r.precision for r in results] == ["float32", "bfloat16"]
    for r in results:
        assert r.steps == 2 and r.step_s > 0 and r.data_s >= 0 and r.batch_size == 2
        assert r.samples_per_cpu_s == 2 / (r.data_s + r.step_s)
        assert "aten::" in r.operators and "Self CPU" in r.operators
        assert r.overrides[-1:] == (["precision=bfloat16"] if r.variant == "bf16" else TINY[-1:])


def test_pipeline_benchmark_cli_prints_and_writes_json(toy_dataset, tmp_path, capsys):
    out = tmp_path / "steps.json"
    argv = [*TINY, "--dataset", str(toy_dataset), "--rounds", "1", "--steps-per-turn", "1", "--warmup", "0"]
    assert main([*argv, "--json", str(out), "--variant", "big_batch", "batch_size=4"]) == 0
    assert "samples/CPU-s" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())
    assert (
        row["variant"] == "big_batch"
        and row["batch_size"] == 4
        and row["overrides"] == [*TINY, "batch_size=4"]
    )
    assert row["parameters"] > 0 and row["samples_per_cpu_s"] > 0


def test_a_variant_can_start_from_another_named_config(toy_dataset):
    flow, fast = run_pipeline(
        "pi05_tiny",
        toy_dataset,
        {"flow": [], "fast": ["config=pi0fast_tiny"]},
        overrides=TINY,
        rounds=1,
        steps_per_turn=1,
        warmup=0,
    )
    assert fast.overrides == [*TINY, "config=pi0fast_tiny"]
    assert fast.parameters < flow.parameters  # pi0-FAST has no action expert
