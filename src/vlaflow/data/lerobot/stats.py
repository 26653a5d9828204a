"""LeRobot's statistics of a dataset (meta/stats.json, per-episode `stats/...` columns), computed and
combined the way LeRobot does, in the format's shapes (image stats (3, 1, 1) in [0, 1]).

These describe what a dataset stores; vlaflow's normalization statistics for training are
`vlaflow.data.stats` (exact, over action chunks), which is why `column_stats` has its own name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
STAT_NAMES = ("min", "max", "mean", "std", "count")


def column_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """min, max, mean, std, count and quantiles over the first (frame) axis, in float64."""
    x = np.asarray(values, dtype=np.float64)
    stats = {
        "min": x.min(axis=0),
        "max": x.max(axis=0),
        "mean": x.mean(axis=0),
        "std": x.std(axis=0),
        "count": np.array([len(x)]),
    }
    for name, q in zip(QUANTILES, np.quantile(x, list(QUANTILES.values()), axis=0), strict=True):
        stats[name] = q
    return stats


def image_histogram(frames: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-channel counts of the 256 uint8 values over a subsample of frames [T, H, W, C]: LeRobot's
    sample sizes (up to ~T^0.75 frames, at least 100) and downscaling of frames of 300 px or more."""
    t, h, w, c = frames.shape
    count = t if t < 100 else max(100, min(int(t**0.75), 10_000))
    picked = frames[np.round(np.linspace(0, t - 1, count)).astype(int)]
    step = max(1, max(h, w) // 150) if max(h, w) >= 300 else 1
    picked = picked[:, ::step, ::step]
    hist = np.stack([np.bincount(picked[..., ch].ravel(), minlength=256) for ch in range(c)])
    return hist.astype(np.int64), count


def histogram_stats(hist: np.ndarray, count: int) -> dict[str, np.ndarray]:
    """Image stats shaped (C, 1, 1) in [0, 1] from per-channel value counts; quantiles interpolate
    linearly between order statistics exactly as `np.quantile` would on the sampled pixels."""
    values = np.arange(hist.shape[1], dtype=np.float64)
    n = hist.sum(axis=1, keepdims=True).astype(np.float64)
    mean = (hist * values).sum(axis=1, keepdims=True) / n
    std = np.sqrt((hist * (values - mean) ** 2).sum(axis=1, keepdims=True) / n)
    cumulative = np.cumsum(hist, axis=1)

    def order_statistic(rank: np.ndarray) -> np.ndarray:
        return np.array(
            [np.searchsorted(cum, r, side="right") for cum, r in zip(cumulative, rank, strict=True)]
        )

    stats = {
        "min": np.array([np.flatnonzero(h)[0] for h in hist], np.float64),
        "max": np.array([np.flatnonzero(h)[-1] for h in hist], np.float64),
        "mean": mean[:, 0],
        "std": std[:, 0],
    }
    for name, q in QUANTILES.items():
        position = q * (n[:, 0] - 1)
        low, high = order_statistic(np.floor(position)), order_statistic(np.ceil(position))
        stats[name] = low + (position - np.floor(position)) * (high - low)
    out = {name: (value / 255.0).reshape(-1, 1, 1) for name, value in stats.items()}
    out["count"] = np.array([count])
    return out


def aggregate_stats(stats_list: Sequence[Mapping[str, Mapping[str, np.ndarray]]]) -> dict:
    """Combine per-episode stats: exact min, max, mean, std and count (parallel variance); each
    quantile is the count-weighted mean of the episodes' quantiles, an approximation."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in dict.fromkeys(k for stats in stats_list for k in stats):
        parts = [stats[key] for stats in stats_list if key in stats]
        counts = np.array([float(np.asarray(p["count"]).reshape(-1)[0]) for p in parts])
        weights = counts / counts.sum()
        means = np.stack([np.asarray(p["mean"], np.float64) for p in parts])
        mean = np.tensordot(weights, means, axes=1)
        second = np.stack([np.asarray(p["std"], np.float64) ** 2 for p in parts]) + (means - mean) ** 2
        out[key] = {
            "min": np.min(np.stack([p["min"] for p in parts]), axis=0),
            "max": np.max(np.stack([p["max"] for p in parts]), axis=0),
            "mean": mean,
            "std": np.sqrt(np.tensordot(weights, second, axes=1)),
            "count": np.array([int(counts.sum())]),
        }
        for name in QUANTILES:
            if all(name in p for p in parts):
                out[key][name] = np.tensordot(weights, np.stack([p[name] for p in parts]), axes=1)
    return out


def jsonable_stats(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
    return {key: {name: np.asarray(v).tolist() for name, v in ft.items()} for key, ft in stats.items()}


def stats_to_numpy(stats: Mapping) -> dict[str, dict[str, np.ndarray]]:
    return {key: {name: np.asarray(value) for name, value in ft.items()} for key, ft in stats.items()}
