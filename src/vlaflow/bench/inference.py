"""Inference latency benchmark: median time of vision, prefix and denoising, and peak memory.

    python -m vlaflow.bench.inference --preset pi05 --device cuda --cameras 3 --steps 10
    python -m vlaflow.bench.inference --preset pi05_tiny --device cpu

Weights are random (latency does not depend on their values); inputs are one observation per
batch element with full-length prompts. Each stage is timed between device synchronizations, so
the stages add up to the total.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
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


@dataclass
class InferenceBenchmark:
    preset: str
    device: str
    dtype: str
    batch_size: int
    cameras: int
    steps: int
    iterations: int
    parameters: int
    prefix_tokens: int
    suffix_tokens: int
    vision_ms: float
    prefix_ms: float
    denoise_ms: float
    total_ms: float
    total_p90_ms: float
    peak_memory_gib: float
    memory_kind: str


def _timed(fn: Callable[[], object], sync: Callable[[], None]) -> tuple[object, float]:
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, (time.perf_counter() - start) * 1e3


def run(
    preset_name: str,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    cameras: int = 3,
    steps: int = 10,
    batch_size: int = 1,
    iterations: int = 10,
    warmup: int = 2,
) -> InferenceBenchmark:
    dev = torch.device(device)
    dtype = dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    if not 1 <= cameras <= len(REFERENCE_IMAGE_KEYS):
        raise ValueError(f"--cameras must be in [1, {len(REFERENCE_IMAGE_KEYS)}], got {cameras}")
    config = preset(preset_name, image_keys=REFERENCE_IMAGE_KEYS[:cameras])
    with dev:
        model = VLA(config).eval()
    model.set_compute_dtype(DTYPES[dtype])
    obs = synthetic_observation(model, batch_size, dev)
    noise = torch.randn(batch_size, config.action_horizon, config.action_dim, device=dev)
    sync = synchronizer(dev)

    def one_call() -> tuple[float, float, float]:
        (prefix, segments), vision_ms = _timed(lambda: model.embed_prefix(obs), sync)
        cache, prefix_ms = _timed(lambda: model.fill_cache(prefix, segments, obs.state), sync)
        _, denoise_ms = _timed(
            lambda: model.integrate(lambda x, t: model.denoise_step(cache, x, t), noise, steps), sync
        )
        return vision_ms, prefix_ms, denoise_ms

    with torch.inference_mode():
        for _ in range(warmup):
            one_call()
        rows = [(*r, sum(r)) for r in (one_call() for _ in range(iterations))]

    peak, kind = peak_memory(dev)
    totals = sorted(r[3] for r in rows)
    return InferenceBenchmark(
        preset=preset_name,
        device=str(dev),
        dtype=dtype,
        batch_size=batch_size,
        cameras=cameras,
        steps=steps,
        iterations=iterations,
        parameters=sum(p.numel() for p in model.parameters()),
        prefix_tokens=config.prefix_len,
        suffix_tokens=config.suffix_len,
        vision_ms=statistics.median(r[0] for r in rows),
        prefix_ms=statistics.median(r[1] for r in rows),
        denoise_ms=statistics.median(r[2] for r in rows),
        total_ms=statistics.median(totals),
        total_p90_ms=totals[min(len(totals) - 1, int(0.9 * len(totals)))],
        peak_memory_gib=peak,
        memory_kind=kind,
    )


def report(b: InferenceBenchmark) -> str:
    return "\n".join(
        [
            f"vlaflow inference benchmark: preset={b.preset} device={b.device} dtype={b.dtype} "
            f"batch={b.batch_size} cameras={b.cameras} steps={b.steps} iterations={b.iterations}",
            f"parameters: {b.parameters / 1e9:.3f} B   prefix tokens: {b.prefix_tokens}   "
            f"suffix tokens: {b.suffix_tokens}",
            f"median latency (ms): vision {b.vision_ms:.1f} | prefix {b.prefix_ms:.1f} | "
            f"denoise {b.denoise_ms:.1f} | total {b.total_ms:.1f}   (p90 total {b.total_p90_ms:.1f})",
            f"peak memory: {b.peak_memory_gib:.2f} GiB ({b.memory_kind})",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, batch_size=1, iterations=10)
    parser.add_argument("--steps", type=int, default=10, help="Euler steps")
    args = parser.parse_args(argv)
    result = run(
        args.preset,
        device=args.device,
        dtype=args.dtype,
        cameras=args.cameras,
        steps=args.steps,
        batch_size=args.batch_size,
        iterations=args.iterations,
        warmup=args.warmup,
    )
    return finish(result, report(result), args.json)


if __name__ == "__main__":
    sys.exit(main())
