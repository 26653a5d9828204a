"""The GPU suite: full-size pi0 and pi0.5 inference and pi0-FAST decoding of a 64-token chunk
(eager, compiled, CUDA graphs) in bf16 and a full-size pi0.5 training step (bf16 autocast,
compiled, gradient checkpointing off and on), in about 8 minutes on one H100 / H200; writes
OUTDIR/gpu_suite.json and OUTDIR/gpu_suite.md.

    python -m vlaflow.bench.gpu_suite OUTDIR
    python -m vlaflow.bench.gpu_suite OUTDIR --dry-run     # the same code, tiny models on a CPU

Weights are random (speed does not depend on their values); nothing is downloaded. Each part runs
only while the time budget (`--budget-s`) lasts; a part that does not fit, or runs out of
memory, is recorded as skipped with the reason, so the suite always writes its report. The dry
run swaps in the tiny presets, a CPU, the uncompiled sampling engine, eager decoding only and no
training compile (compiling on a CPU takes minutes), and nothing else.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from vlaflow.bench import inference, train


@dataclass(frozen=True)
class Plan:
    device: str
    inference_presets: tuple[str, ...]
    variants: tuple[str, ...]
    decode_preset: str
    decode_variants: tuple[str, ...]
    batch_sizes: tuple[int, ...]  # the first runs before training, the others after it
    train_preset: str
    train_batch: int
    train_compile: bool
    iterations: int
    warmup: int
    budget_s: float  # start no part after this many seconds


FULL = Plan(
    device="cuda",
    inference_presets=("pi05", "pi0"),
    variants=("eager", "compiled", "graph"),
    decode_preset="pi0fast",
    decode_variants=("eager", "compiled", "graph"),
    batch_sizes=(1, 8),
    train_preset="pi05",
    train_batch=16,
    train_compile=True,
    iterations=20,
    warmup=2,
    budget_s=360,
)
DRY = Plan(
    device="cpu",
    inference_presets=("pi05_tiny", "pi0_tiny"),
    variants=("eager", "engine"),
    decode_preset="pi0fast_tiny",
    decode_variants=("eager",),
    batch_sizes=(1, 2),
    train_preset="pi05_tiny",
    train_batch=2,
    train_compile=False,
    iterations=1,
    warmup=1,
    budget_s=1e9,
)


def _parts(plan: Plan) -> list[tuple[str, Callable[[], object]]]:
    """Batch 1 inference and decoding, then training, then the larger batches: what matters most
    runs first, in case the budget runs out. Decoding and training, whose calls are long (a
    64-token chunk, a training step), time a quarter of the iterations."""
    long_iterations = max(1, plan.iterations // 4)

    def infer(name: str, batch: int) -> tuple[str, Callable[[], object]]:
        return f"inference {name} batch {batch}", lambda: inference.run(
            name,
            compare=plan.variants,
            device=plan.device,
            dtype="bfloat16",
            batch_size=batch,
            iterations=plan.iterations,
            warmup=plan.warmup,
        )

    def decode(batch: int) -> tuple[str, Callable[[], object]]:
        return f"decoding {plan.decode_preset} batch {batch}", lambda: inference.run_decode(
            plan.decode_preset,
            compare=plan.decode_variants,
            device=plan.device,
            dtype="bfloat16",
            batch_size=batch,
            iterations=long_iterations,
            warmup=plan.warmup,
        )

    def batch(size: int) -> list[tuple[str, Callable[[], object]]]:
        return [infer(name, size) for name in plan.inference_presets] + [decode(size)]

    def training(checkpointing: bool) -> tuple[str, Callable[[], object]]:
        return (
            f"training {plan.train_preset} checkpointing {'on' if checkpointing else 'off'}",
            lambda: train.run(
                plan.train_preset,
                device=plan.device,
                batch_size=plan.train_batch,
                dtype="bfloat16",
                gradient_checkpointing=checkpointing,
                compile=plan.train_compile,
                iterations=long_iterations,
                warmup=plan.warmup,
            ),
        )

    first, *more = plan.batch_sizes
    return batch(first) + [training(False), training(True)] + [p for size in more for p in batch(size)]


def _environment(plan: Plan) -> dict[str, str]:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": plan.device}
    if plan.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = str(torch.version.cuda)
    else:
        env["cpu"] = platform.processor() or platform.machine()
        env["threads"] = str(torch.get_num_threads())
    return env


def _results(report: dict, key: str) -> list[dict]:
    """The results of the parts that ran whose results have `key` (which tells the kinds apart)."""
    return [p["result"] for p in report["parts"] if key in p.get("result", {})]


def markdown(report: dict) -> str:
    env = ", ".join(f"{k} {v}" for k, v in report["environment"].items())
    lines = [f"# vlaflow GPU suite{' (dry run)' if report['dry_run'] else ''}", "", env, ""]
    lines += [
        "| inference | batch | variant | vision ms | prefix ms | denoise ms | total ms (p10-p90) "
        "| speed-up | floor / total | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in _results(report, "floor"):
        for v in result["variants"]:
            floor = f"{100 * v['floor_fraction']:.0f}%" if v["floor_fraction"] else "-"
            peak = f"{v['peak_memory_gib']:.1f}" if v["peak_memory_gib"] is not None else "-"
            lines.append(
                f"| {result['preset']} | {result['batch_size']} | {v['variant']} | {v['vision_ms']:.2f} "
                f"| {v['prefix_ms']:.2f} | {v['denoise_ms']:.2f} | {v['total_ms']:.2f} "
                f"({v['total_p10_ms']:.2f}-{v['total_p90_ms']:.2f}) | x{v['speedup']:.2f} | {floor} "
                f"| {peak} |"
            )
    lines += [
        "",
        "| decoding | batch | variant | chunk ms (p10-p90) | prefill ms | tokens/s | speed-up "
        "| same tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in _results(report, "tokens"):
        for v in result["variants"]:
            lines.append(
                f"| {result['preset']} | {result['batch_size']} | {v['variant']} | {v['chunk_ms']:.1f} "
                f"({v['chunk_p10_ms']:.1f}-{v['chunk_p90_ms']:.1f}) | {v['prefill_ms']:.1f} "
                f"| {v['tokens_per_s']:.0f} | x{v['speedup']:.2f} | {'yes' if v['same_tokens'] else 'NO'} |"
            )
    lines += [
        "",
        "| training | batch | checkpointing | compiled | step ms | samples/s | MFU | peak GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in _results(report, "step_ms"):
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        lines.append(
            f"| {r['preset']} | {r['batch_size']} | {r['gradient_checkpointing']} | {r['compiled']} "
            f"| {r['step_ms']:.1f} | {r['samples_per_s']:.2f} | {mfu} | {r['peak_memory_gib']:.1f} |"
        )
    skipped = [p for p in report["parts"] if p.get("skipped")]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{p['name']} ({p['skipped']})" for p in skipped)]
    return "\n".join(lines) + "\n"


def run(out_dir: Path, *, dry_run: bool = False, budget_s: float | None = None) -> dict:
    plan = DRY if dry_run else FULL
    budget_s = plan.budget_s if budget_s is None else budget_s
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("the GPU suite needs a CUDA device (use --dry-run to check it on a CPU)")
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = {"dry_run": dry_run, "environment": _environment(plan), "plan": asdict(plan), "parts": []}
    for name, part in _parts(plan):
        elapsed = time.perf_counter() - start
        entry: dict = {"name": name}
        if elapsed > budget_s:
            entry["skipped"] = f"time budget of {budget_s:.0f} s spent"
        else:
            try:
                entry["result"] = asdict(part())
            except torch.cuda.OutOfMemoryError as error:
                entry["skipped"] = f"out of memory: {str(error).splitlines()[0]}"
            finally:
                if plan.device == "cuda":
                    torch.cuda.empty_cache()
        entry["seconds"] = round(time.perf_counter() - start - elapsed, 1)
        print(f"[{time.perf_counter() - start:6.0f} s] {name}: {entry.get('skipped', 'done')}", flush=True)
        report["parts"].append(entry)
        (out_dir / "gpu_suite.json").write_text(json.dumps(report, indent=2))
    (out_dir / "gpu_suite.md").write_text(markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="tiny models on a CPU, same code")
    parser.add_argument(
        "--budget-s",
        type=float,
        help="start no part after this many seconds (default 360; none in a dry run)",
    )
    args = parser.parse_args(argv)
    report = run(args.out_dir, dry_run=args.dry_run, budget_s=args.budget_s)
    print((args.out_dir / "gpu_suite.md").read_text())
    return 0 if any("result" in p for p in report["parts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
