"""Training-step benchmark: samples/s, step time, peak memory and model FLOPs utilisation.

    python -m vlaflow.bench.train --preset pi05 --device cuda --batch-size 32
    python -m vlaflow.bench.train --preset pi05_tiny --device cpu --batch-size 8

One step = the flow-matching forward, backward, gradient clipping and an AdamW update, on
synthetic inputs (random images, full-length prompts), with float32 master weights and bf16
autocast on GPUs (the trainer's recipe). Model FLOPs come from `vlaflow.models.flops` (3 x the
analytic forward); MFU divides the achieved rate by the device's dense peak where it is known.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass

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


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, batch_size=8, iterations=5)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward")
    args = parser.parse_args(argv)
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
