"""Fit a FAST tokenizer on LeRobot datasets and measure it on episodes it never saw.

The chunks are the ones training sees: every frame's action chunk (clamped at its episode's end,
`chunk_indices`), made relative to the state where the source's delta mask says so, normalized with
the dataset's exact statistics (`source_stats`, the same ones `vlaflow train` computes). Some
episodes of each dataset are held out (seeded) to measure what matters for training and
decoding: tokens per chunk and the round-trip error in normalized units.

The output directory holds the tokenizer (`FastTokenizer.save`), the statistics it was fitted with
(`norm_stats.json`, as `vlaflow stats` writes them) and `fit_report.json`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vlaflow.data.lerobot import LeRobotDataset
from vlaflow.data.pipeline import (
    SourceConfig,
    SourceStats,
    normalized_action_chunks,
    save_stats,
    source_stats,
)
from vlaflow.data.stats import Mode, Normalizer
from vlaflow.tokenizers.fast import FastTokenizer

STATS_FILE = "norm_stats.json"
REPORT_FILE = "fit_report.json"


@dataclass(frozen=True)
class FastFitReport:
    """Figures of a fit; token counts and errors are measured on the held-out chunks."""

    output: str
    normalization: str
    action_horizon: int
    action_dim: int
    train_chunks: int
    heldout_chunks: int
    heldout_episodes: int
    coefficient_values: int  # distinct quantized coefficients, the BPE's base symbols
    bpe_ids: int  # ids the BPE uses, at most the tokenizer's vocab_size
    mean_tokens: float
    p99_tokens: float
    rmse: float
    max_abs_error: float
    decoding_failures: int
    clipped_coefficients: int  # held-out coefficients outside the fitted range

    @property
    def binning_tokens(self) -> int:
        """Tokens per chunk with one token per dimension and step."""
        return self.action_horizon * self.action_dim

    @property
    def compression(self) -> float:
        return self.binning_tokens / self.mean_tokens


@dataclass(frozen=True)
class _SourceChunks:
    stats: SourceStats
    chunks: np.ndarray  # (N, H, D) normalized
    heldout: np.ndarray  # (N,) bool
    heldout_episodes: int


def _source_chunks(
    config: SourceConfig, horizon: int, normalization: Mode, holdout_fraction: float, rng: np.random.Generator
) -> _SourceChunks:
    dataset = LeRobotDataset(
        config.path, state_key=config.state_key, action_key=config.action_key, image_keys=[]
    )
    if dataset.num_episodes < 2:
        raise ValueError(
            f"{config.path}: holding out episodes needs at least 2, it has {dataset.num_episodes}"
        )
    stats = source_stats(dataset, config, horizon, cameras={})
    chunks = normalized_action_chunks(dataset, config, Normalizer(stats.actions, normalization), horizon)
    episodes = dataset.column("episode_index")[:, 0]
    unique = np.unique(episodes)
    count = min(max(1, round(holdout_fraction * len(unique))), len(unique) - 1)
    return _SourceChunks(stats, chunks, np.isin(episodes, rng.permutation(unique)[:count]), count)


def fit_from_datasets(
    sources: Sequence[SourceConfig],
    output: str | Path,
    *,
    action_horizon: int = 50,
    vocab_size: int = 1024,
    scale: float = 10.0,
    normalization: Mode = "quantile",
    holdout_fraction: float = 0.1,
    seed: int = 0,
) -> FastFitReport:
    """Fit on the training episodes' chunks of all sources, measure on the held-out ones, save."""
    if not sources:
        raise ValueError("fitting a FAST tokenizer needs at least one dataset")
    if action_horizon < 1:
        raise ValueError(f"action_horizon must be >= 1, got {action_horizon}")
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"datasets need distinct directory names (their statistics' keys), got {names}")
    rng = np.random.default_rng(seed)
    parts = [_source_chunks(s, action_horizon, normalization, holdout_fraction, rng) for s in sources]
    dims = {p.chunks.shape[-1] for p in parts}
    if len(dims) != 1:
        raise ValueError(f"one FAST tokenizer needs one action dimension, the datasets have {sorted(dims)}")
    chunks = np.concatenate([p.chunks for p in parts])
    heldout = np.concatenate([p.heldout for p in parts])
    tokenizer = FastTokenizer.fit(chunks[~heldout], vocab_size=vocab_size, scale=scale)

    test = chunks[heldout]
    ids = tokenizer.encode(test)
    lengths = np.array([len(sequence) for sequence in ids])
    decoded, ok = tokenizer.decode(ids)
    errors = decoded[ok] - test[ok]
    output = tokenizer.save(output)
    save_stats(output / STATS_FILE, {s.name: p.stats for s, p in zip(sources, parts, strict=True)})
    report = FastFitReport(
        output=str(output),
        normalization=normalization,
        action_horizon=action_horizon,
        action_dim=dims.pop(),
        train_chunks=int((~heldout).sum()),
        heldout_chunks=len(test),
        heldout_episodes=sum(p.heldout_episodes for p in parts),
        coefficient_values=tokenizer.max_token - tokenizer.min_token + 1,
        bpe_ids=tokenizer.bpe.get_vocab_size(),
        mean_tokens=float(lengths.mean()),
        p99_tokens=float(np.percentile(lengths, 99)),
        rmse=float(np.sqrt(np.mean(errors**2))) if ok.any() else float("nan"),
        max_abs_error=float(np.abs(errors).max()) if ok.any() else float("nan"),
        decoding_failures=int((~ok).sum()),
        clipped_coefficients=int(tokenizer.out_of_range_counts(test).sum()),
    )
    (output / REPORT_FILE).write_text(
        json.dumps({**asdict(report), "datasets": [s.path for s in sources], "seed": seed}, indent=2) + "\n"
    )
    return report
