"""Inference latency benchmark: variants of the sampler side by side, split into vision, prefix
and denoising, with peak memory, speed-ups and (on known GPUs) the distance to the physical floor.

    python -m vlaflow.bench.inference --preset pi05 --device cuda --compare eager,compiled,graph
    python -m vlaflow.bench.inference --preset pi05_dummy --device cpu --dtype bfloat16 \\
        --compare eager,engine,compiled --batch-size 1,8 --cameras 1,3

Variants: `eager` is `VLA.sample_actions`' path; `engine` the sampling engine uncompiled,
`compiled` with `torch.compile`, `graph` compiled and replayed as CUDA graphs
(`vlaflow.inference.engine`). All variants share one model and one input per configuration and
are timed alternately, one call each in turn, so that a change in load affects them alike. Each
stage is timed between device synchronizations (CUDA graphs are one graph per stage), so the
stages add up to the total. Weights are random: latency does not depend on their values.

A pi0-FAST preset (no action expert, e.g. `pi0fast`) acts by decoding tokens: the benchmark then
times `VLA.generate` for a chunk of `--fast-tokens` tokens and reports tokens/s, for the variants
of `DECODE_VARIANTS` (`eager` `VLA.generate`'s own step, `compiled` its step under
`torch.compile`, `graph` compiled and replayed as a CUDA graph; `vlaflow.inference.engine`),
alternated in the same way:

    python -m vlaflow.bench.inference --preset pi0fast_tiny --device cpu --threads 1 \\
        --compare eager,compiled
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vlaflow.bench.common import DTYPES, peak_memory, synchronizer, synthetic_observation
from vlaflow.bench.devices import Floor, sampling_floor
from vlaflow.inference.engine import STAGES, DecodingEngine, SamplingEngine
from vlaflow.models import VLA, preset
from vlaflow.models.config import REFERENCE_IMAGE_KEYS
from vlaflow.models.vla import Generation

VARIANTS = ("eager", "engine", "compiled", "graph")
DECODE_VARIANTS = ("eager", "compiled", "graph")


@dataclass
class VariantResult:
    variant: str
    vision_ms: float
    prefix_ms: float
    denoise_ms: float
    total_ms: float
    total_p10_ms: float
    total_p90_ms: float
    speedup: float  # the first variant's median total over this one's
    max_rel_diff: float  # largest relative difference of its actions from the first variant's
    peak_memory_gib: float | None  # CUDA only: a CPU process's peak RSS is shared by all variants
    floor_fraction: float | None = None  # the floor's time over this variant's median total


@dataclass
class InferenceBenchmark:
    preset: str
    device: str
    dtype: str
    batch_size: int
    cameras: int
    steps: int
    iterations: int
    threads: int
    parameters: int
    prefix_tokens: int
    suffix_tokens: int
    floor: Floor
    variants: list[VariantResult] = field(default_factory=list)
    process_peak_rss_gib: float | None = None


def _sampler(variant: str, model: VLA, steps: int) -> Callable:
    """(obs, noise) -> the stages as thunks, for one variant."""
    if variant == "eager":

        def eager(obs, noise):
            out: dict[str, object] = {}

            def vision():
                out["vision"] = model.embed_prefix(obs)
                return out["vision"]

            def prefix():
                out["prefix"] = model.fill_cache(*out["vision"], obs.state)
                return out["prefix"]

            def denoise():
                return model.integrate(lambda x, t: model.denoise_step(out["prefix"], x, t), noise, steps)

            return list(zip(STAGES, (vision, prefix, denoise), strict=True))

        return eager
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    engine = SamplingEngine(
        model, num_steps=steps, compile=variant != "engine", cuda_graph=variant == "graph", dtype=None
    )
    return engine.stages


def run(
    preset_name: str,
    *,
    compare: tuple[str, ...] = ("eager", "engine"),
    device: str = "cpu",
    dtype: str | None = None,
    cameras: int = 3,
    steps: int = 10,
    batch_size: int = 1,
    iterations: int = 10,
    warmup: int = 2,
) -> InferenceBenchmark:
    """`dtype` may name several ("float32,bfloat16"): each variant then runs in each, on copies of
    the same weights, all alternated (variants are labelled "eager/float32" and so on)."""
    dev = torch.device(device)
    dtypes = (dtype or ("bfloat16" if dev.type == "cuda" else "float32")).split(",")
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise ValueError(f"unknown dtype {unknown}; choose from {sorted(DTYPES)}")
    if not 1 <= cameras <= len(REFERENCE_IMAGE_KEYS):
        raise ValueError(f"cameras must be in [1, {len(REFERENCE_IMAGE_KEYS)}], got {cameras}")
    if "graph" in compare and dev.type != "cuda":
        raise ValueError("the graph variant needs a CUDA device")
    config = preset(preset_name, image_keys=REFERENCE_IMAGE_KEYS[:cameras])
    with dev:
        model = VLA(config).eval()
    models = {d: (copy.deepcopy(model) if d != dtypes[-1] else model) for d in dtypes}
    for d, m in models.items():
        m.set_compute_dtype(DTYPES[d])
    model = models[dtypes[0]]
    obs = synthetic_observation(model, batch_size, dev)
    noise = torch.randn(batch_size, config.action_horizon, config.action_dim, device=dev)
    sync = synchronizer(dev)
    samplers = {
        v if len(dtypes) == 1 else f"{v}/{d}": _sampler(v, models[d], steps) for d in dtypes for v in compare
    }
    compare = tuple(samplers)
    times: dict[str, list[list[float]]] = {v: [] for v in compare}
    actions: dict[str, torch.Tensor] = {}
    peaks: dict[str, float | None] = {}

    def one_call(variant: str) -> list[float]:
        stage_ms = []
        for _, thunk in samplers[variant](obs, noise):
            sync()
            start = time.perf_counter()
            out = thunk()
            sync()
            stage_ms.append((time.perf_counter() - start) * 1e3)
        actions[variant] = out.clone()
        return stage_ms

    with torch.no_grad():
        for variant in compare:  # warm-up (and compilation), one variant at a time
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            for _ in range(warmup):
                one_call(variant)
            peaks[variant] = peak_memory(dev)[0] if dev.type == "cuda" else None
        for _ in range(iterations):
            for variant in compare:
                times[variant].append(one_call(variant))

    floor = sampling_floor(model, batch_size=batch_size, num_steps=steps, device=dev)
    result = InferenceBenchmark(
        preset=preset_name,
        device=str(dev),
        dtype=",".join(dtypes),
        batch_size=batch_size,
        cameras=cameras,
        steps=steps,
        iterations=iterations,
        threads=torch.get_num_threads(),
        parameters=sum(p.numel() for p in model.parameters()),
        prefix_tokens=config.prefix_len,
        suffix_tokens=config.suffix_len,
        floor=floor,
        process_peak_rss_gib=None if dev.type == "cuda" else peak_memory(dev)[0],
    )
    base = actions[compare[0]]
    for variant in compare:
        rows = times[variant]
        totals = [sum(r) for r in rows]
        total = statistics.median(totals)
        result.variants.append(
            VariantResult(
                variant=variant,
                vision_ms=statistics.median(r[0] for r in rows),
                prefix_ms=statistics.median(r[1] for r in rows),
                denoise_ms=statistics.median(r[2] for r in rows),
                total_ms=total,
                total_p10_ms=_spread(totals)[0],
                total_p90_ms=_spread(totals)[1],
                speedup=0.0,
                max_rel_diff=((actions[variant] - base).norm() / base.norm()).item(),
                peak_memory_gib=peaks[variant],
                floor_fraction=floor.floor_ms / total if floor.floor_ms else None,
            )
        )
    first = result.variants[0].total_ms
    for v in result.variants:
        v.speedup = first / v.total_ms
    return result


def _spread(values: list[float]) -> tuple[float, float]:
    """The 10th and 90th percentiles (nearest rank)."""
    ordered = sorted(values)
    return ordered[int(0.1 * (len(ordered) - 1))], ordered[round(0.9 * (len(ordered) - 1))]


@dataclass
class DecodeVariantResult:
    variant: str
    chunk_ms: float
    chunk_p10_ms: float
    chunk_p90_ms: float
    prefill_ms: float  # one call decoding a single token
    tokens_per_s: float  # per sequence, after the prefill
    speedup: float  # the first variant's median chunk over this one's
    same_tokens: bool  # its chunk's tokens are the first variant's


@dataclass
class DecodeBenchmark:
    """pi0-FAST: one chunk = the prompt's prefill, then `tokens` greedy KV-cached decoding steps."""

    preset: str
    device: str
    dtype: str
    batch_size: int
    cameras: int
    tokens: int
    iterations: int
    threads: int
    variants: list[DecodeVariantResult] = field(default_factory=list)


def _decoder(variant: str, model: VLA) -> Callable[..., Generation]:
    """`VLA.generate`'s signature, for one decoding variant."""
    if variant == "eager":
        return model.generate
    if variant not in DECODE_VARIANTS:
        raise ValueError(f"unknown decoding variant {variant!r}; choose from {DECODE_VARIANTS}")
    return DecodingEngine(model, compile=True, cuda_graph=variant == "graph").generate


def run_decode(
    preset_name: str,
    *,
    compare: tuple[str, ...] = ("eager",),
    device: str = "cpu",
    dtype: str | None = None,
    cameras: int = 3,
    tokens: int = 64,
    batch_size: int = 1,
    iterations: int = 10,
    warmup: int = 2,
) -> DecodeBenchmark:
    """Times each variant's decoding of a chunk of `tokens` FAST tokens (no end of sequence is
    chosen, so every call decodes them all) and of a single token (the prefill), all alternated."""
    dev = torch.device(device)
    dtype = dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    if "graph" in compare and dev.type != "cuda":
        raise ValueError("the graph variant needs a CUDA device")
    config = preset(preset_name, image_keys=REFERENCE_IMAGE_KEYS[:cameras])
    with dev:
        model = VLA(config).eval()
    model.set_compute_dtype(DTYPES[dtype])
    obs = synthetic_observation(model, batch_size, dev)
    sync = synchronizer(dev)
    decoders = {v: _decoder(v, model) for v in compare}
    chunks: dict[str, Generation] = {}

    def timed(variant: str, n: int) -> float:
        sync()
        start = time.perf_counter()
        out = decoders[variant](obs, max_new_tokens=n, eos_id=-1)
        sync()
        if n == tokens:
            chunks[variant] = out
        return (time.perf_counter() - start) * 1e3

    for variant in compare:  # warm-up (and compilation), one variant at a time
        for _ in range(warmup):
            timed(variant, tokens), timed(variant, 1)
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in compare}
    for _ in range(iterations):
        for variant in compare:
            times[variant].append((timed(variant, tokens), timed(variant, 1)))
    result = DecodeBenchmark(
        preset=preset_name,
        device=str(dev),
        dtype=dtype,
        batch_size=batch_size,
        cameras=cameras,
        tokens=tokens,
        iterations=iterations,
        threads=torch.get_num_threads(),
    )
    for variant in compare:
        chunk = statistics.median(c for c, _ in times[variant])
        prefill = statistics.median(p for _, p in times[variant])
        p10, p90 = _spread([c for c, _ in times[variant]])
        result.variants.append(
            DecodeVariantResult(
                variant=variant,
                chunk_ms=chunk,
                chunk_p10_ms=p10,
                chunk_p90_ms=p90,
                prefill_ms=prefill,
                tokens_per_s=(tokens - 1) / max(chunk - prefill, 1e-9) * 1e3,
                speedup=0.0,
                same_tokens=torch.equal(chunks[variant].tokens, chunks[compare[0]].tokens),
            )
        )
    for v in result.variants:
        v.speedup = result.variants[0].chunk_ms / v.chunk_ms
    return result


def report_decode(b: DecodeBenchmark) -> str:
    lines = [
        f"vlaflow FAST decoding benchmark: preset={b.preset} device={b.device} dtype={b.dtype} "
        f"batch={b.batch_size} cameras={b.cameras} iterations={b.iterations} threads={b.threads}",
        f"chunk of {b.tokens} tokens, median ms: variant | chunk (p10-p90) | prefill + 1 token | "
        "decoding per sequence | speed-up | same tokens",
    ]
    for v in b.variants:
        lines.append(
            f"  {v.variant:10s} | chunk {v.chunk_ms:8.1f} ({v.chunk_p10_ms:.1f}-{v.chunk_p90_ms:.1f}) "
            f"| prefill {v.prefill_ms:7.1f} | {v.tokens_per_s:7.1f} tokens/s | x{v.speedup:.2f} "
            f"| {'yes' if v.same_tokens else 'NO'}"
        )
    return "\n".join(lines)


def report(b: InferenceBenchmark) -> str:
    f = b.floor
    lines = [
        f"vlaflow inference benchmark: preset={b.preset} device={b.device} dtype={b.dtype} "
        f"batch={b.batch_size} cameras={b.cameras} steps={b.steps} iterations={b.iterations} "
        f"threads={b.threads}",
        f"parameters: {b.parameters / 1e9:.3f} B   prefix tokens: {b.prefix_tokens}   "
        f"suffix tokens: {b.suffix_tokens}   model: {f.tflop:.3f} TFLOP, "
        f"{f.weight_gb:.2f} GB of weights read",
    ]
    if f.floor_ms is not None:
        lines.append(
            f"physical floor: {f.floor_ms:.2f} ms (compute {f.compute_ms or float('nan'):.2f} ms, "
            f"weights {f.memory_ms or float('nan'):.2f} ms)"
        )
    lines.append(
        "median latency (ms): variant | vision | prefix | denoise | total (p10-p90) | speed-up | "
        "% of floor | peak GiB | rel. diff"
    )
    for v in b.variants:
        floor = f"{100 * v.floor_fraction:.0f}%" if v.floor_fraction else "-"
        peak = f"{v.peak_memory_gib:.2f}" if v.peak_memory_gib is not None else "-"
        lines.append(
            f"  {v.variant:16s} | vision {v.vision_ms:8.1f} | prefix {v.prefix_ms:8.1f} | "
            f"denoise {v.denoise_ms:8.1f} | total {v.total_ms:8.1f} "
            f"({v.total_p10_ms:.1f}-{v.total_p90_ms:.1f}) "
            f"| x{v.speedup:.2f} | {floor} | {peak} | {v.max_rel_diff:.1e}"
        )
    if b.process_peak_rss_gib is not None:
        lines.append(f"process peak RSS: {b.process_peak_rss_gib:.2f} GiB (all variants)")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="pi05_tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype",
        help=f"one of {sorted(DTYPES)}, or several comma-separated (each variant in each); "
        "default: bfloat16 on cuda, float32 on cpu",
    )
    parser.add_argument(
        "--compare",
        help=f"variants, comma-separated, of {VARIANTS} (default eager,engine) or, for pi0-FAST "
        f"presets, of {DECODE_VARIANTS} (default eager)",
    )
    parser.add_argument("--cameras", type=_ints, default=[3], help="camera counts, e.g. 1,2,3")
    parser.add_argument("--batch-size", type=_ints, default=[1], help="batch sizes, e.g. 1,8")
    parser.add_argument("--steps", type=int, default=10, help="Euler steps")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--fast-tokens", type=int, default=64, help="pi0-FAST presets: tokens per chunk")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    decode = preset(args.preset).expert is None  # pi0-FAST acts by decoding tokens
    for cameras in args.cameras:
        for batch_size in args.batch_size:
            common = {
                "device": args.device,
                "dtype": args.dtype,
                "cameras": cameras,
                "batch_size": batch_size,
                "iterations": args.iterations,
                "warmup": args.warmup,
            }
            if decode:
                compare = tuple((args.compare or "eager").split(","))
                result = run_decode(args.preset, compare=compare, tokens=args.fast_tokens, **common)
                text = report_decode(result)
            else:
                compare = tuple((args.compare or "eager,engine").split(","))
                result = run(args.preset, compare=compare, steps=args.steps, **common)
                text = report(result)
            print(text, flush=True)
            results.append(asdict(result))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
