"""Inference cost of trained checkpoints: one action chunk from a real Meta-World observation.

Flow models sample 10 Euler steps after one prefix pass; pi0-FAST decodes FAST tokens one at a time
with the KV cache. Each checkpoint's Policy is called in turn for `--rounds` rounds on the same
observations (one per task, at the checkpoint's training resolution), timed in CPU seconds of this
process with one compute thread (the machine is shared: wall-clock time would measure the other
work too) and in wall-clock seconds. For FAST models it also counts the decoded tokens per chunk.

    python docs/results/fast-and-insulation/latency.py --tasks button-press-topdown-v3,door-close-v3 \
        flow=runs/flow/checkpoints/step_00000900 fast=runs/fast/checkpoints/step_00000429 --out latency.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from vlaflow.inference.policy import Policy
from vlaflow.models import VLA
from vlaflow.sim.evaluate import EVAL_SEED, training_view
from vlaflow.sim.generate import camera_feature
from vlaflow.sim.metaworld import MetaWorldEnv


def observations(checkpoint: str, tasks: list[str]) -> list[dict]:
    view = training_view(checkpoint)
    result = []
    for task in tasks:
        with MetaWorldEnv(task, seed=EVAL_SEED, cameras=view.cameras, resolution=view.resolution) as env:
            obs = env.reset(seed=EVAL_SEED)
        images = {camera_feature(c): image for c, image in obs["images"].items()}
        result.append({"images": images, "state": obs["state"], "prompt": obs["prompt"]})
    return result


def count_decoded_tokens(policy: Policy) -> list[int]:
    """Wrap the model's decoder to record how many tokens each call produced (per sample)."""
    counts: list[int] = []
    generate = policy.model.generate

    def counted(*args, **kwargs):
        out = generate(*args, **kwargs)
        counts.extend((out.lengths + 1).tolist())  # + the end-of-sequence token
        return out

    policy.model.generate = counted  # type: ignore[method-assign]
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="+", help="NAME=CHECKPOINT_DIR")
    parser.add_argument("--tasks", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    named = dict(item.split("=", 1) for item in args.checkpoints)
    tasks = args.tasks.split(",")
    policies = {name: Policy.load(path) for name, path in named.items()}
    inputs = {name: observations(path, tasks) for name, path in named.items()}
    tokens = {name: count_decoded_tokens(p) for name, p in policies.items() if not p.model.has_expert}
    cpu: dict[str, list[float]] = {name: [] for name in named}
    wall: dict[str, list[float]] = {name: [] for name in named}
    for name, policy in policies.items():  # warm-up
        policy(inputs[name][0])
    for counts in tokens.values():
        counts.clear()
    for _ in range(args.rounds):
        for name, policy in policies.items():
            for obs in inputs[name]:
                start, start_wall = time.process_time(), time.perf_counter()
                policy(obs)
                cpu[name].append(time.process_time() - start)
                wall[name].append(time.perf_counter() - start_wall)
    result = {}
    for name, policy in policies.items():
        model: VLA = policy.model
        row = {
            "checkpoint": named[name],
            "kind": "flow, 10 Euler steps" if model.has_expert else "FAST decoding (greedy, KV cache)",
            "cpu_ms_median": 1e3 * statistics.median(cpu[name]),
            "wall_ms_median": 1e3 * statistics.median(wall[name]),
            "calls": len(cpu[name]),
        }
        if name in tokens:
            per_chunk = statistics.mean(tokens[name])
            row["tokens_per_chunk_mean"] = per_chunk
            row["tokens_per_cpu_s"] = per_chunk / statistics.median(cpu[name])
            row["fast_failures"] = policy.fast_failures
        result[name] = row
        print(name, json.dumps(row))
    Path(args.out).write_text(json.dumps({"threads": 1, "rounds": args.rounds, "results": result}, indent=2))


if __name__ == "__main__":
    main()
