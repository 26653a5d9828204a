"""Seconds per training step of each variant, measured in alternation in one process.

Equal wall-clock budgets on a machine that other work loads unevenly: a variant trained while the
machine is busy would get fewer steps for the same minutes. So the budget is fixed in steps, from
the ratio of step costs measured here. Each step is timed in CPU seconds of this process with one
compute thread (wall-clock seconds on a shared machine measure the other work as much as ours),
split into building the batch (num_workers=0: in a real run the data workers share the same two
cores) and the optimizer step; every variant runs `--steps-per-turn` steps in turn, for `--rounds`
rounds.

    python docs/results/fast-and-insulation/calibrate.py --dataset data --rounds 4 --out calib.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vlaflow.data.pipeline import SourceConfig
from vlaflow.training.configs import apply_overrides, named_config
from vlaflow.training.distributed import init_runtime
from vlaflow.training.trainer import Trainer

MODEL = 'model_overrides={"image_keys": ["base_0_rgb"], "action_horizon": 10, "max_token_len": 40}'
COMMON = ["batch_size=32", "augment=false", "num_workers=0", "max_fast_tokens=48", MODEL]
# Stage 2 costs what one-stage insulation costs (the same model; only its start differs), and
# stage 1 what pi0-FAST costs (no text targets in Meta-World data).
VARIANTS = {
    "flow": ("pi05_tiny", []),
    "fast": ("pi0fast_tiny", []),
    "ki": (
        "pi05_tiny",
        [
            "model_overrides.fast_vocab_size=256",
            "model_overrides.knowledge_insulation=true",
            "flow_weight=10",
        ],
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps-per-turn", type=int, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    runtime = init_runtime("cpu")
    torch.set_num_threads(1)
    trainers, loaders = {}, {}
    for name, (config_name, extra) in VARIANTS.items():
        config = apply_overrides(named_config(config_name), [*COMMON, *extra, "steps=100000"])
        config.datasets = [SourceConfig(path=args.dataset)]
        trainer = Trainer(config, Path(tempfile.mkdtemp()), runtime, resume=False, steps=None, progress=False)
        trainer.model.train()
        trainers[name], loaders[name] = trainer, iter(trainer._loader())
        for step in range(2):  # warm-up
            trainer._step(step, next(loaders[name]))
    data: dict[str, list[float]] = {name: [] for name in VARIANTS}
    compute: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds):
        for name, trainer in trainers.items():
            for step in range(args.steps_per_turn):
                start = time.process_time()
                batch = next(loaders[name])
                fetched = time.process_time()
                trainer._step(step, batch)
                data[name].append(fetched - start)
                compute[name].append(time.process_time() - fetched)
        print(
            f"round {round_ + 1}: "
            + ", ".join(f"{n} {data[n][-1]:.3f} + {compute[n][-1]:.3f} CPU s/step" for n in VARIANTS)
        )
    median = {name: statistics.median(data[name]) + statistics.median(compute[name]) for name in VARIANTS}
    result = {
        "cpu_seconds_per_step": median,
        "data_cpu_seconds": {name: statistics.median(s) for name, s in data.items()},
        "step_cpu_seconds": {name: statistics.median(s) for name, s in compute.items()},
        "relative_to_flow": {name: m / median["flow"] for name, m in median.items()},
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["relative_to_flow"], indent=2))


if __name__ == "__main__":
    main()
