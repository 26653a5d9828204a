"""Training-step benchmark: samples/s, step time, peak memory and model FLOPs utilisation.

    python -m vlaflow.bench.train --preset pi05 --device cuda --batch-size 32
    python -m vlaflow.bench.train --preset pi05_tiny --device cpu --batch-size 8

One step = the flow-matching forward, backward, gradient clipping and an AdamW update, on
synthetic inputs (random images, full-length prompts), with float32 master weights and bf16
autocast on GPUs (the trainer's recipe). Model FLOPs come from `vlaflow.models.flops` (3 x the
analytic forward); MFU divides the achieved rate by the device's dense peak where it is known.

With `--dataset DIR --config NAME` it times the trainer's own step on real data instead (the data
pipeline with num_workers=0, then forward, losses, backward and the optimizer, `Trainer._step`),
for one or more `--variant NAME OVERRIDE...` of the config, each run `--steps-per-turn` steps in
turn for `--rounds` rounds in one process. Times are CPU seconds of this process on `--threads`
compute threads: on a shared machine wall-clock time measures the other work too, and alternating
the variants spreads what load remains evenly over them.

    python -m vlaflow.bench.train --dataset data --config pi05_tabletop_tiny batch_size=16 \
        --variant float32 --variant bf16 precision=bfloat16
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from vlaflow.bench.common import (
    DTYPES,
    benchmark_parser,
    finish,
    peak_memory,
    synchronizer,
    synthetic_observation,
)
from vlaflow.models import VLA, preset
from vlaflow.models.config import REFERENCE_IMAGE_KEYS
from vlaflow.models.flops import peak_flops, training_step_flops
from vlaflow.training.optim import OptimConfig, build_optimizer


@dataclass
class TrainBenchmark:
    preset: str
    device: str
    autocast: str
    batch_size: int
    cameras: int
    gradient_checkpointing: bool
    compiled: bool
    iterations: int
    parameters: int
    step_ms: float
    samples_per_s: float
    peak_memory_gib: float
    memory_kind: str
    model_tflop_per_step: float
    achieved_tflops: float
    mfu: float | None


def run(
    preset_name: str,
    *,
    device: str = "cpu",
    batch_size: int = 8,
    dtype: str | None = None,
    cameras: int = 3,
    gradient_checkpointing: bool = False,
    compile: bool = False,
    iterations: int = 5,
    warmup: int = 2,
) -> TrainBenchmark:
    dev = torch.device(device)
    dtype = dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    config = preset(preset_name, image_keys=REFERENCE_IMAGE_KEYS[:cameras])
    with dev:
        model = VLA(config).train()
    model.set_gradient_checkpointing(gradient_checkpointing)
    forward = torch.compile(model) if compile else model  # as the trainer's `compile=true`
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], OptimConfig())
    obs = synthetic_observation(model, batch_size, dev)
    actions = torch.randn(batch_size, config.action_horizon, config.action_dim, device=dev)
    sync = synchronizer(dev)

    def step() -> float:
        sync()
        start = time.perf_counter()
        with torch.autocast(dev.type, dtype=DTYPES[dtype], enabled=dtype != "float32"):
            loss = forward(obs, actions).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - start

    for _ in range(warmup):
        step()
    seconds = statistics.median(step() for _ in range(iterations))
    peak, kind = peak_memory(dev)
    flops = training_step_flops(config, batch_size=batch_size).total
    achieved = flops / seconds
    peak_rate = peak_flops(dev, DTYPES[dtype])
    return TrainBenchmark(
        preset=preset_name,
        device=str(dev),
        autocast=dtype,
        batch_size=batch_size,
        cameras=cameras,
        gradient_checkpointing=gradient_checkpointing,
        compiled=compile,
        iterations=iterations,
        parameters=sum(p.numel() for p in model.parameters()),
        step_ms=seconds * 1e3,
        samples_per_s=batch_size / seconds,
        peak_memory_gib=peak,
        memory_kind=kind,
        model_tflop_per_step=flops / 1e12,
        achieved_tflops=achieved / 1e12,
        mfu=achieved / peak_rate if peak_rate else None,
    )


def report(b: TrainBenchmark) -> str:
    mfu = f"{100 * b.mfu:.1f}%" if b.mfu is not None else "n/a (no known peak for this device)"
    return "\n".join(
        [
            f"vlaflow training benchmark: preset={b.preset} device={b.device} autocast={b.autocast} "
            f"batch={b.batch_size} cameras={b.cameras} checkpointing={b.gradient_checkpointing} "
            f"compiled={b.compiled} "
            f"iterations={b.iterations}",
            f"parameters: {b.parameters / 1e9:.3f} B",
            f"median step: {b.step_ms:.1f} ms   samples/s: {b.samples_per_s:.2f}",
            f"model FLOPs/step: {b.model_tflop_per_step:.3f} TFLOP   "
            f"achieved: {b.achieved_tflops:.3f} TFLOP/s   MFU: {mfu}",
            f"peak memory: {b.peak_memory_gib:.2f} GiB ({b.memory_kind})",
        ]
    )


@dataclass
class PipelineStep:
    """One variant's cost per training step on real data (CPU seconds, medians over the steps)."""

    variant: str
    overrides: list[str]
    batch_size: int
    precision: str
    parameters: int
    threads: int
    steps: int
    data_s: float
    step_s: float
    operators: str | None = None  # torch.profiler's table of the costliest operators, if asked

    @property
    def samples_per_cpu_s(self) -> float:
        return self.batch_size / (self.data_s + self.step_s)


def run_pipeline(
    config_name: str,
    dataset: str | Path,
    variants: Mapping[str, Sequence[str]],
    *,
    overrides: Sequence[str] = (),
    rounds: int = 3,
    steps_per_turn: int = 3,
    warmup: int = 2,
    threads: int = 1,
    profile_operators: int = 0,
) -> list[PipelineStep]:
    """Each variant's data and step cost on `dataset`, measured in alternation (see the module doc);
    with `profile_operators` N > 0, also the N costliest operators of `steps_per_turn` more steps.
    A variant whose first override is `config=NAME` starts from that named config instead (to
    compare, say, π0-FAST with π0.5 on the same data)."""
    from vlaflow.data.pipeline import SourceConfig
    from vlaflow.training.configs import apply_overrides, named_config
    from vlaflow.training.distributed import init_runtime
    from vlaflow.training.trainer import Trainer

    if not variants or rounds < 1 or steps_per_turn < 1:
        raise ValueError("give at least one variant, and rounds and steps_per_turn >= 1")
    torch.set_num_threads(threads)
    runtime = init_runtime("cpu")
    trainers, batches = {}, {}
    for name, extra in variants.items():
        base, extra = config_name, list(extra)
        if extra and extra[0].startswith("config="):
            base = extra.pop(0).removeprefix("config=")
        config = apply_overrides(named_config(base), [*overrides, *extra, "num_workers=0"])
        config.datasets = [SourceConfig(path=str(dataset))]
        config.steps = warmup + (rounds + 1) * steps_per_turn + 1
        trainer = Trainer(config, Path(tempfile.mkdtemp()), runtime, resume=False, steps=None, progress=False)
        trainer.model.train()
        trainers[name], batches[name] = trainer, iter(trainer._loader(trainer._sampler()))
        for step in range(warmup):
            trainer._step(step, next(batches[name]))
    data: dict[str, list[float]] = {name: [] for name in variants}
    compute: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, trainer in trainers.items():
            for _ in range(steps_per_turn):
                start = time.process_time()
                batch = next(batches[name])
                fetched = time.process_time()
                trainer._step(warmup, batch)
                data[name].append(fetched - start)
                compute[name].append(time.process_time() - fetched)
    operators = {name: None for name in trainers}
    if profile_operators > 0:
        for name, trainer in trainers.items():
            steps = [next(batches[name]) for _ in range(steps_per_turn)]
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
                for batch in steps:
                    trainer._step(warmup, batch)
            operators[name] = profiler.key_averages().table(
                sort_by="self_cpu_time_total", row_limit=profile_operators
            )
    return [
        PipelineStep(
            variant=name,
            overrides=[*overrides, *variants[name]],
            batch_size=trainer.config.batch_size,
            precision=trainer.config.precision,
            parameters=sum(p.numel() for p in trainer.model.parameters()),
            threads=threads,
            steps=len(compute[name]),
            data_s=statistics.median(data[name]),
            step_s=statistics.median(compute[name]),
            operators=operators[name],
        )
        for name, trainer in trainers.items()
    ]


def pipeline_report(results: Sequence[PipelineStep]) -> str:
    base = results[0]
    lines = [
        f"training step on real data: CPU seconds per step on {base.threads} thread(s), "
        f"medians of {base.steps} steps per variant, variants alternated"
    ]
    for r in results:
        ratio = (r.data_s + r.step_s) / (base.data_s + base.step_s)
        lines.append(
            f"{r.variant:>16}: {r.parameters / 1e6:7.2f} M params  {r.precision:>8}  "
            f"data {1e3 * r.data_s:7.1f} ms  step {1e3 * r.step_s:8.1f} ms  "
            f"{r.samples_per_cpu_s:6.2f} samples/CPU-s  ({ratio:.2f}x the first's cost)"
        )
    for r in results:
        if r.operators:
            lines += [
                f"\n{r.variant}: costliest operators (torch.profiler, one more turn of steps)",
                r.operators,
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, batch_size=8, iterations=5)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward")
    parser.add_argument("--dataset", type=Path, help="time the trainer's step on this dataset instead")
    parser.add_argument("--config", default="pi05_tiny", help="with --dataset: the training config")
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        metavar="NAME [OVERRIDE ...]",
        help="with --dataset: a named variant of the config, its first override may be config=NAME "
        "(repeat to compare; default: the config)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --dataset: turns of every variant")
    parser.add_argument("--steps-per-turn", type=int, default=3, help="with --dataset: steps per turn")
    parser.add_argument("--threads", type=int, default=1, help="with --dataset: compute threads")
    parser.add_argument(
        "--profile-operators",
        type=int,
        default=0,
        metavar="N",
        help="with --dataset: print the N costliest ops",
    )
    parser.add_argument("overrides", nargs="*", help="with --dataset: key=value for every variant")
    args = parser.parse_args(argv)
    if args.dataset is not None:
        variants = {v[0]: v[1:] for v in args.variant or [["config"]]}
        results = run_pipeline(
            args.config,
            args.dataset,
            variants,
            overrides=args.overrides,
            rounds=args.rounds,
            steps_per_turn=args.steps_per_turn,
            warmup=args.warmup,
            threads=args.threads,
            profile_operators=args.profile_operators,
        )
        print(pipeline_report(results))
        if args.json:
            rows = [{**asdict(r), "samples_per_cpu_s": r.samples_per_cpu_s} for r in results]
            args.json.write_text(json.dumps(rows, indent=2))
        return 0
    if args.overrides or args.variant:
        parser.error("overrides and --variant need --dataset")
    result = run(
        args.preset,
        device=args.device,
        batch_size=args.batch_size,
        dtype=args.dtype,
        cameras=args.cameras,
        gradient_checkpointing=args.gradient_checkpointing,
        compile=args.compile,
        iterations=args.iterations,
        warmup=args.warmup,
    )
    return finish(result, report(result), args.json)


if __name__ == "__main__":
    sys.exit(main())
