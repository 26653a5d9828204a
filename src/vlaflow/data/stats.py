"""Normalization statistics of state and actions, and the normalizers that use them.

Statistics are exact: every value is in memory (numeric columns only, no video) and quantiles
come from `np.quantile` with linear interpolation, per dimension. Action statistics pool the
elements of all training action chunks that are real actions: frame i contributes actions
i .. i + H - 1 of its episode, up to the episode's end. The reference also pools the copies of the
last action that pad a chunk past the episode's end; the flow loss never sees those (they are
masked), and with chunks about as long as the episodes they dominate a dimension that is constant
at the end (a tabletop gripper's yaw: q01..q99 collapses to a few milliradians and the real actions
normalize to +-18), so they are left out. With a delta-action mask, the masked dimensions are taken
relative to the chunk's current state before pooling, so the statistics describe exactly what
the model sees. (openpi's quantiles come from a 5,000-bin running histogram; ours have no
approximation error.)

Normalizers: z-score `(x - mean) / (std + 1e-6)` (pi0) and quantile
`(x - q01) / (q99 - q01 + 1e-6) * 2 - 1` (pi0.5, pi0-FAST), neither clipped, as the reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

EPS = 1e-6
Mode = Literal["zscore", "quantile", "none"]
MODES = ("zscore", "quantile", "none")


@dataclass(frozen=True)
class FeatureStats:
    """Per-dimension statistics of one feature, arrays of shape (D,)."""

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    q01: np.ndarray
    q99: np.ndarray
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {
            # NaN (a statistic the source did not record) as null, so the JSON stays standard
            **{
                k: [None if np.isnan(v) else v for v in getattr(self, k).tolist()]
                for k in ("mean", "std", "min", "max", "q01", "q99")
            },
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureStats:
        missing = [k for k in ("mean", "std", "min", "max", "q01", "q99", "count") if k not in data]
        if missing:
            raise ValueError(f"normalization stats lack {missing}")
        arrays = {
            k: np.asarray(data[k], dtype=np.float64) for k in ("mean", "std", "min", "max", "q01", "q99")
        }
        return cls(**arrays, count=int(data["count"]))

    @property
    def dim(self) -> int:
        return len(self.mean)


def feature_stats(values: np.ndarray) -> FeatureStats:
    """Exact statistics of (M, D) values."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or len(values) == 0:
        raise ValueError(f"statistics need a non-empty (M, D) array, got shape {values.shape}")
    q01, q99 = np.quantile(values, [0.01, 0.99], axis=0)
    return FeatureStats(
        mean=values.mean(0),
        std=values.std(0),
        min=values.min(0),
        max=values.max(0),
        q01=q01,
        q99=q99,
        count=len(values),
    )


def chunk_indices(episode_ends: np.ndarray, horizon: int) -> np.ndarray:
    """(N, H) frame indices of every frame's action chunk, clamped to its episode's last frame.

    `episode_ends[i]` is the (exclusive) end row of frame i's episode.
    """
    steps = np.arange(len(episode_ends))[:, None] + np.arange(horizon)[None, :]
    return np.minimum(steps, episode_ends[:, None] - 1)


def chunked_action_stats(
    actions: np.ndarray,
    states: np.ndarray,
    episode_ends: np.ndarray,
    horizon: int,
    delta_mask: Sequence[bool] | None = None,
) -> FeatureStats:
    """Statistics of the action-chunk elements inside their episodes (never the padding past an
    episode's end); one dimension at a time to bound memory."""
    steps = np.arange(len(episode_ends))[:, None] + np.arange(horizon)[None, :]
    real = steps < episode_ends[:, None]
    idx = np.minimum(steps, episode_ends[:, None] - 1)
    mask = _check_delta_mask(delta_mask, actions.shape[1], states.shape[1])
    per_dim = []
    for d in range(actions.shape[1]):
        values = actions[idx, d].astype(np.float64)
        if mask[d]:
            values -= states[:, d : d + 1]
        per_dim.append(feature_stats(values[real].reshape(-1, 1)))
    return FeatureStats(
        **{
            k: np.concatenate([getattr(s, k) for s in per_dim])
            for k in ("mean", "std", "min", "max", "q01", "q99")
        },
        count=per_dim[0].count,
    )


def _check_delta_mask(mask: Sequence[bool] | None, action_dim: int, state_dim: int) -> np.ndarray:
    if mask is None:
        return np.zeros(action_dim, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (action_dim,):
        raise ValueError(
            f"delta_action_mask: expected {action_dim} booleans (one per action dim), got {mask.shape}"
        )
    if mask.any() and np.flatnonzero(mask).max() >= state_dim:
        raise ValueError(f"delta_action_mask marks action dims beyond the state's {state_dim} dims")
    return mask


def _shift(actions: np.ndarray, state: np.ndarray, mask: Sequence[bool] | None, sign: float) -> np.ndarray:
    idx = np.flatnonzero(_check_delta_mask(mask, actions.shape[-1], state.shape[-1]))
    out = np.array(actions, dtype=np.float32, copy=True)
    out[..., idx] += sign * np.expand_dims(state[..., idx], -2)
    return out


def to_delta(actions: np.ndarray, state: np.ndarray, mask: Sequence[bool] | None) -> np.ndarray:
    """Actions ([B,] H, A) relative to the current state ([B,] S) in the masked dims."""
    return _shift(actions, state, mask, -1.0)


def to_absolute(actions: np.ndarray, state: np.ndarray, mask: Sequence[bool] | None) -> np.ndarray:
    """Inverse of `to_delta`."""
    return _shift(actions, state, mask, 1.0)


class Normalizer:
    """Maps one feature to the model's range and back, with its dataset's statistics."""

    def __init__(self, stats: FeatureStats, mode: Mode):
        if mode not in MODES:
            raise ValueError(f"normalization mode must be one of {MODES}, got {mode!r}")
        self.stats, self.mode = stats, mode

    def _check(self, x: np.ndarray) -> None:
        if x.shape[-1] != self.stats.dim:
            raise ValueError(
                f"expected last dimension {self.stats.dim} (the statistics' size), got {x.shape}"
            )

    def normalize(self, x: np.ndarray) -> np.ndarray:
        self._check(x)
        s = self.stats
        if self.mode == "zscore":
            y = (x - s.mean) / (s.std + EPS)
        elif self.mode == "quantile":
            y = (x - s.q01) / (s.q99 - s.q01 + EPS) * 2.0 - 1.0
        else:
            y = x
        return np.asarray(y, dtype=np.float32)

    def unnormalize(self, y: np.ndarray) -> np.ndarray:
        self._check(y)
        s = self.stats
        if self.mode == "zscore":
            x = y * (s.std + EPS) + s.mean
        elif self.mode == "quantile":
            x = (y + 1.0) / 2.0 * (s.q99 - s.q01 + EPS) + s.q01
        else:
            x = y
        return np.asarray(x, dtype=np.float32)
