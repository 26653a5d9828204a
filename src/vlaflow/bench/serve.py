"""Policy server benchmark: latency, throughput and batching of `vlaflow serve` under concurrent
clients, and the server's overhead over a bare in-process `Policy.infer_batch` call.

    python -m vlaflow.bench.serve --clients 4 --requests 20
    python -m vlaflow.bench.serve --checkpoint runs/mine/checkpoints/step_00002000 --device cuda

The server listens on 127.0.0.1 only (an ephemeral port) in this process; clients are threads with
`vlaflow.client.PolicyClient`. Without --checkpoint it serves a tiny random-weight pi0.5 written to
a temporary directory. Every client sends at most --requests requests and stops after
--duration-s seconds, so the run ends by itself.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlaflow.bench.common import finish
from vlaflow.client import PolicyClient, PolicyServerError
from vlaflow.data.pipeline import SourceStats
from vlaflow.data.stats import feature_stats
from vlaflow.inference.policy import Policy
from vlaflow.inference.server import ServerConfig, server_for_policy
from vlaflow.models import VLA, preset
from vlaflow.pretrained import read_config, save_pretrained
from vlaflow.tokenizers import EmbeddedTokenizer

TINY_CAMERAS = {"base_0_rgb": "observation.images.corner2", "left_wrist_0_rgb": "observation.images.wrist"}
TINY_STATE_DIM, TINY_ACTION_DIM, TINY_HORIZON = 8, 7, 10


def tiny_checkpoint(directory: str | Path, *, seed: int = 0) -> Path:
    """A training-style checkpoint of a tiny random pi0.5 with two cameras (LIBERO-like sizes:
    8-d state, 7-d actions), normalization statistics of random data and a 10 Hz control rate;
    written in well under a second, no training needed."""
    torch.manual_seed(seed)
    model = VLA(preset("pi05_tiny", image_keys=tuple(TINY_CAMERAS), action_horizon=TINY_HORIZON))
    rng = np.random.default_rng(seed)
    stats = SourceStats(
        state=feature_stats(rng.normal(size=(256, TINY_STATE_DIM))),
        actions=feature_stats(rng.normal(size=(256, TINY_ACTION_DIM))),
        action_horizon=TINY_HORIZON,
        cameras=dict(TINY_CAMERAS),
    )
    metadata = {
        "normalization": "quantile",
        "norm_stats": {"tiny": stats.to_dict()},
        "serving": {"control_hz": 10.0},
    }
    return save_pretrained(directory, model, tokenizer=EmbeddedTokenizer(), metadata=metadata)


def example_observation(policy: Policy, image_size: int, seed: int = 0) -> dict[str, Any]:
    """A request in the dataset's own key names: random images of `image_size` and state."""
    rng = np.random.default_rng(seed)
    images = {
        camera: rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
        for camera in policy.stats.cameras.values()
    }
    return {
        **images,
        "observation.state": rng.normal(size=policy.stats.state.dim).astype(np.float32),
        "prompt": "put the bowl on the plate",
    }


@dataclass
class ServeBenchmark:
    checkpoint: str
    device: str
    clients: int
    requests_per_client: int
    num_steps: int
    image_size: int
    batch_window_ms: float
    max_batch: int
    bare_p50_ms: float
    single_client_p50_ms: float
    overhead_ms: float
    p50_ms: float
    p99_ms: float
    throughput_rps: float
    replies: int
    client_errors: int
    server_errors: int
    batch_sizes: dict[int, int]


def _timed_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _client_run(port: int, request: dict[str, Any], count: int, deadline: float, out: list) -> None:
    """One client: sequential requests until `count` or `deadline`; appends (latencies, errors)."""
    latencies, errors = [], 0
    with PolicyClient("127.0.0.1", port) as client:
        while len(latencies) + errors < count and time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                client.infer(request)
                latencies.append((time.perf_counter() - start) * 1e3)
            except PolicyServerError:
                errors += 1
    out.append((latencies, errors))


def _concurrent(
    port: int, request: dict, clients: int, count: int, duration_s: float
) -> tuple[list, int, float]:
    results: list[tuple[list[float], int]] = []
    deadline = time.monotonic() + duration_s
    threads = [
        threading.Thread(target=_client_run, args=(port, request, count, deadline, results))
        for _ in range(clients)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    return [ms for latencies, _ in results for ms in latencies], sum(e for _, e in results), seconds


def run(
    checkpoint: Path,
    *,
    device: str = "cpu",
    clients: int = 4,
    requests: int = 20,
    duration_s: float = 60.0,
    num_steps: int = 10,
    image_size: int = 224,
    batch_window_ms: float = ServerConfig.batch_window_ms,
    max_batch: int = ServerConfig.max_batch,
    warmup: int = 10,
) -> ServeBenchmark:
    policy = Policy.load(checkpoint, device=device, num_steps=num_steps)
    server = server_for_policy(
        policy,
        read_config(checkpoint)["metadata"],
        config=ServerConfig(port=0, batch_window_ms=batch_window_ms, max_batch=max_batch),
    )
    request = example_observation(policy, image_size)
    bare_request = server.spec.parse(request).observation
    with server.in_background() as port:
        with PolicyClient("127.0.0.1", port) as client:
            for _ in range(warmup):
                policy.infer_batch([bare_request])
                client.infer(request)
            bare, single, overhead = [], [], []
            for _ in range(requests):  # interleaved, so drift and other load affect both alike
                bare.append(_timed_ms(lambda: policy.infer_batch([bare_request])))
                start = time.perf_counter()
                reply = client.infer(request)
                single.append((time.perf_counter() - start) * 1e3)
                overhead.append(single[-1] - reply["policy_timing"]["infer_ms"])
        server.stats.batch_sizes.clear()
        replies_before = server.stats.replies
        latencies, client_errors, seconds = _concurrent(port, request, clients, requests, duration_s)
    return ServeBenchmark(
        checkpoint=str(checkpoint),
        device=device,
        clients=clients,
        requests_per_client=requests,
        num_steps=num_steps,
        image_size=image_size,
        batch_window_ms=batch_window_ms,
        max_batch=max_batch,
        bare_p50_ms=_percentile(bare, 50),
        single_client_p50_ms=_percentile(single, 50),
        overhead_ms=_percentile(overhead, 50),
        p50_ms=_percentile(latencies, 50),
        p99_ms=_percentile(latencies, 99),
        throughput_rps=len(latencies) / seconds,
        replies=server.stats.replies - replies_before,
        client_errors=client_errors,
        server_errors=sum(server.stats.errors.values()),
        batch_sizes=dict(sorted(server.stats.batch_sizes.items())),
    )


def report(b: ServeBenchmark) -> str:
    batches = ", ".join(f"{size}: {n}" for size, n in b.batch_sizes.items()) or "none"
    return "\n".join(
        [
            f"vlaflow serve benchmark: {b.checkpoint} on {b.device}, {b.num_steps} Euler steps, "
            f"{b.image_size}x{b.image_size} images, window {b.batch_window_ms:g} ms, max batch {b.max_batch}",
            f"bare Policy.infer_batch (batch 1): p50 {b.bare_p50_ms:.1f} ms",
            f"1 client through the server: p50 {b.single_client_p50_ms:.1f} ms; server overhead "
            f"(round trip minus the infer_batch call inside it) p50 {b.overhead_ms:.1f} ms",
            f"{b.clients} clients x <= {b.requests_per_client} requests: p50 {b.p50_ms:.1f} ms, "
            f"p99 {b.p99_ms:.1f} ms, throughput {b.throughput_rps:.1f} requests/s ({b.replies} replies)",
            f"batches formed (size: count): {batches}",
            f"errors: {b.client_errors} client-side, {b.server_errors} server-side",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, help="a training checkpoint (default: a tiny random one)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=20, help="requests per client (at most)")
    parser.add_argument("--duration-s", type=float, default=60.0, help="time limit of each phase")
    parser.add_argument("--num-steps", type=int, default=10, help="Euler steps")
    parser.add_argument("--image-size", type=int, default=224, help="side of the clients' square images")
    parser.add_argument("--batch-window-ms", type=float, default=ServerConfig.batch_window_ms)
    parser.add_argument("--max-batch", type=int, default=ServerConfig.max_batch)
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests first (bare and served)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(
            args.checkpoint or tiny_checkpoint(Path(tmp) / "tiny"),
            device=args.device,
            clients=args.clients,
            requests=args.requests,
            duration_s=args.duration_s,
            num_steps=args.num_steps,
            image_size=args.image_size,
            batch_window_ms=args.batch_window_ms,
            max_batch=args.max_batch,
            warmup=args.warmup,
        )
    if args.checkpoint is None:
        result.checkpoint = "tiny random pi0.5"
    return finish(result, report(result), args.json)


if __name__ == "__main__":
    sys.exit(main())
