"""The same trainer under torchrun: 2 CPU processes (gloo), DDP and FSDP2, same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from vlaflow.pretrained import load_pretrained

STEPS = 4
SETTINGS = [
    "batch_size=4",
    "log_every=1",
    "num_workers=0",
    "model_overrides.action_horizon=4",
    "optim.peak_lr=1e-3",
    "optim.warmup_steps=1",
]


def run(dataset, output, *, processes: int, strategy: str = "ddp") -> list[dict]:
    train = [
        "-m",
        "vlaflow.cli",
        "train",
        "--config",
        "pi05_tiny",
        "--dataset",
        str(dataset),
        "--output",
        str(output),
        "--steps",
        str(STEPS),
        *SETTINGS,
        f"distributed={strategy}",
    ]
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        if processes > 1
        else []
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, *launcher, *train], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single(toy_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return out, run(toy_dataset, out, processes=1)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(toy_dataset, tmp_path, single, strategy):
    one_dir, one = single
    two = run(toy_dataset, tmp_path, processes=2, strategy=strategy)
    assert [r["step"] for r in two] == list(range(1, STEPS + 1))
    for a, b in zip(one, two, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * abs(a["loss"]), (a, b)
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-3 * abs(a["grad_norm"]), (a, b)
    checkpoint = f"checkpoints/step_{STEPS:08d}"
    ours = load_pretrained(tmp_path / checkpoint).model.state_dict()
    reference = load_pretrained(one_dir / checkpoint).model.state_dict()
    for name, value in reference.items():
        assert torch.allclose(ours[name], value, atol=1e-5, rtol=1e-4), name
