"""Video decoding throughput of `LeRobotDataset`: sequential, random, and through a DataLoader.

    python -m vlaflow.bench.decode [--frames N] [--workers W] [--fps F] [--codec C]

Writes a temporary 224x224 LeRobot v3.0 dataset with our writer (a few episodes of a synthetic
moving pattern), then reports decoded camera frames per second for each access pattern.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from vlaflow.data.lerobot import LeRobotDataset, LeRobotDatasetWriter
from vlaflow.data.video import default_video_codec

SIZE = 224
CAMERA = "observation.images.front"


def moving_pattern(start: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [T, 224, 224, 3]: drifting colour gradients and a moving square (compresses like a
    camera view with some motion, unlike static or random frames)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    frames = np.empty((length, SIZE, SIZE, 3), np.uint8)
    offset = rng.integers(0, 256)
    for k in range(length):
        t = start + k
        frames[k, ..., 0] = (x + 3 * t + offset) % 256
        frames[k, ..., 1] = (y + 2 * t) % 256
        frames[k, ..., 2] = ((x + y) // 2 + t) % 256
        cx, cy = (20 + 5 * t) % (SIZE - 40), (60 + 3 * t) % (SIZE - 40)
        frames[k, cy : cy + 40, cx : cx + 40] = 255
    return frames


def write_dataset(root: Path, frames: int, episodes: int, fps: int, codec: str) -> float:
    """Writes the benchmark dataset; returns the encoding throughput in frames/s."""
    rng = np.random.default_rng(0)
    features = {
        "observation.state": {"dtype": "float32", "shape": [8]},
        "action": {"dtype": "float32", "shape": [7]},
        CAMERA: {"dtype": "video", "shape": [SIZE, SIZE, 3]},
    }
    lengths = np.full(episodes, frames // episodes)
    lengths[: frames % episodes] += 1
    start = time.perf_counter()
    with LeRobotDatasetWriter(root, fps=fps, features=features, video_codec=codec) as writer:
        for e, length in enumerate(lengths):
            writer.add_episode(
                {
                    "observation.state": rng.normal(size=(length, 8)).astype(np.float32),
                    "action": rng.normal(size=(length, 7)).astype(np.float32),
                    CAMERA: moving_pattern(int(lengths[:e].sum()), int(length), rng),
                },
                task=f"task {e % 3}",
            )
    return frames / (time.perf_counter() - start)


def time_indexing(dataset: LeRobotDataset, order: np.ndarray) -> float:
    start = time.perf_counter()
    for i in order:
        dataset[int(i)]
    return len(order) / (time.perf_counter() - start)


def time_loader(dataset: LeRobotDataset, workers: int, batch_size: int) -> tuple[float, float, float]:
    """Over one shuffled epoch: frames/s including worker start-up, seconds to the first batch, and
    frames/s after the first batch."""
    generator = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, generator=generator
    )
    start = time.perf_counter()
    first_batch_s, first_count, count = 0.0, 0, 0
    for batch in loader:
        count += len(batch[CAMERA])
        if not first_count:
            first_batch_s, first_count = time.perf_counter() - start, count
    total_s = time.perf_counter() - start
    return count / total_s, first_batch_s, (count - first_count) / (total_s - first_batch_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=1200, help="frames in the dataset (default 1200)")
    parser.add_argument("--episodes", type=int, default=6, help="episodes (default 6)")
    parser.add_argument("--fps", type=int, default=15, help="dataset fps, 10-30 typical (default 15)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--codec", default=None, help=f"video encoder (default {default_video_codec()})")
    args = parser.parse_args(argv)
    codec = args.codec or default_video_codec()

    print(
        f"vlaflow decode benchmark: {args.frames} frames of {SIZE}x{SIZE}, {args.episodes} episodes, "
        f"{args.fps} fps, codec {codec}, g=2"
    )
    print(
        f"  PyAV {av.__version__} (FFmpeg {av.ffmpeg_version_info}), torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
    )
    with tempfile.TemporaryDirectory(prefix="vlaflow-decode-bench-") as tmp:
        root = Path(tmp) / "dataset"
        encode_fps = write_dataset(root, args.frames, args.episodes, args.fps, codec)
        video_mb = sum(p.stat().st_size for p in root.glob("videos/**/*.mp4")) / 1e6
        print(f"  wrote the dataset at {encode_fps:.0f} frames/s ({video_mb:.1f} MB of video)")

        dataset = LeRobotDataset(root, action_horizon=50)
        order = np.arange(len(dataset))
        sequential = time_indexing(dataset, order)
        random = time_indexing(dataset, np.random.default_rng(0).permutation(order))
        loader, first_batch_s, steady = time_loader(dataset, args.workers, args.batch_size)

    print("decoded frames/s (one camera, each item also carries a 50-step action chunk):")
    print(f"  sequential  dataset[i], i = 0..N-1 : {sequential:8.0f}")
    print(f"  random      dataset[i], shuffled   : {random:8.0f}")
    print(
        f"  DataLoader  {args.workers} workers, batch {args.batch_size}, shuffled: {loader:8.0f}"
        f"  (first batch after {first_batch_s:.2f} s; {steady:.0f} frames/s after it)"
    )


if __name__ == "__main__":
    main()
