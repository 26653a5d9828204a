"""What the benchmarks share: command-line options, synthetic inputs, timing and memory readings."""

from __future__ import annotations

import argparse
import json
import resource
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from vlaflow.models import VLA, Observation

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def benchmark_parser(doc: str | None, *, batch_size: int, iterations: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="pi05_tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--iterations", type=int, default=iterations)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    return parser


def synthetic_observation(model: VLA, batch: int, device: torch.device) -> Observation:
    """Random images and full-length prompts: latency does not depend on the values."""
    c = model.config
    s = c.vision.image_size
    return Observation(
        images={k: torch.rand(batch, s, s, 3, device=device) * 2 - 1 for k in c.image_keys},
        state=torch.zeros(batch, c.action_dim, device=device),
        tokenized_prompt=torch.randint(0, c.vocab_size, (batch, c.max_token_len), device=device),
        tokenized_prompt_mask=torch.ones(batch, c.max_token_len, dtype=torch.bool, device=device),
    )


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for queued device work, so wall-clock times measure the work itself."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.synchronize
    return lambda: None


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(GiB, what was measured): the CUDA allocator's peak, or the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process peak RSS"


def finish(result: Any, text: str, json_path: Path | None) -> int:
    print(text)
    if json_path:
        json_path.write_text(json.dumps(asdict(result), indent=2))
    return 0
