"""openpi's normalization statistics (`assets/<asset_id>/norm_stats.json`) as a converted model's own.

openpi stores `{"norm_stats": {"state": {"mean", "std", "q01", "q99"}, "actions": {...}}}` per
asset id (one robot or dataset), next to a checkpoint's `params/`, with the robot's own state and
action widths (before padding to the model's). Its policy normalizes with quantiles for pi0.5 and
pi0-FAST and with z-scores for pi0 (`use_quantile_norm = model_type != PI0`), with the same
formulas as `vlaflow.data.stats.Normalizer`, so writing them into the model's metadata makes
`Policy`, `vlaflow serve` and `vlaflow eval` normalize and unnormalize as openpi's server does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlaflow.data.pipeline import SourceStats
from vlaflow.data.stats import FeatureStats, Mode

NORM_STATS_FILE = "norm_stats.json"
FEATURES = ("state", "actions")


def openpi_normalization(family: str) -> Mode:
    """openpi's normalization for a model family: quantile except for pi0."""
    return "zscore" if family == "pi0" else "quantile"


def find_norm_stats(path: str | Path, asset_id: str | None = None) -> tuple[Path, str]:
    """The `norm_stats.json` at `path` and its asset id. `path` may be the file, its asset directory,
    an `assets/` directory, or a checkpoint directory holding `assets/`; `asset_id` picks one asset
    where there are several."""
    path = Path(path)
    if path.is_file():
        return path, path.parent.name
    if (path / NORM_STATS_FILE).is_file():
        return path / NORM_STATS_FILE, path.name
    assets = path / "assets" if (path / "assets").is_dir() else path
    found = sorted(p.parent.name for p in assets.glob(f"**/{NORM_STATS_FILE}"))
    if asset_id is not None:
        if not (assets / asset_id / NORM_STATS_FILE).is_file():
            there = found or "none"
            raise FileNotFoundError(f"no {assets / asset_id / NORM_STATS_FILE} (asset ids there: {there})")
        return assets / asset_id / NORM_STATS_FILE, asset_id
    if not found:
        raise FileNotFoundError(f"no {NORM_STATS_FILE} under {path}")
    if len(found) > 1:
        raise ValueError(f"{assets} holds statistics for {found}: choose one with --asset-id")
    return next(assets.glob(f"**/{NORM_STATS_FILE}")), found[0]


def _feature(entry: Any, where: str, need_quantiles: bool) -> FeatureStats:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object with mean, std, q01, q99, got {type(entry).__name__}")
    required = ("mean", "std", "q01", "q99") if need_quantiles else ("mean", "std")
    missing = [k for k in required if entry.get(k) is None]
    if missing:
        raise ValueError(f"{where} lacks {missing} (needed for this model's normalization)")
    arrays = {}
    for key in ("mean", "std", "q01", "q99"):
        values = entry.get(key)
        array = np.full(len(entry["mean"]), np.nan) if values is None else np.asarray(values, np.float64)
        if array.ndim != 1 or len(array) != len(entry["mean"]):
            raise ValueError(f"{where}.{key}: expected {len(entry['mean'])} numbers, got shape {array.shape}")
        arrays[key] = array
    unknown = np.full_like(arrays["mean"], np.nan)  # openpi keeps no min / max / count
    return FeatureStats(**arrays, min=unknown, max=unknown.copy(), count=0)


def read_norm_stats(file: str | Path, mode: Mode) -> tuple[FeatureStats, FeatureStats]:
    """(state, actions) statistics from openpi's `norm_stats.json`."""
    file = Path(file)
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}: not valid JSON ({error})") from None
    stats = raw.get("norm_stats") if isinstance(raw, dict) else None
    if not isinstance(stats, dict):
        raise ValueError(f'{file}: expected {{"norm_stats": {{"state": ..., "actions": ...}}}}')
    missing = [k for k in FEATURES if k not in stats]
    if missing:
        raise ValueError(f"{file}: norm_stats lacks {missing} (has {sorted(stats)})")
    state, actions = (_feature(stats[k], f"{file}: norm_stats.{k}", mode == "quantile") for k in FEATURES)
    return state, actions


def openpi_metadata(
    file: str | Path,
    asset_id: str,
    *,
    family: str,
    action_horizon: int,
    image_keys: Sequence[str],
    delta_action_mask: tuple[bool, ...] | None = None,
) -> dict[str, Any]:
    """Metadata entries that make a converted model a policy: its normalization mode and statistics
    under the asset id, with each camera named by its model slot; `delta_action_mask`: the actions
    the model predicts relative to the state (statistics of those are of the differences)."""
    mode = openpi_normalization(family)
    state, actions = read_norm_stats(file, mode)
    if delta_action_mask is not None:  # openpi's masks may stop short: the rest is absolute
        if len(delta_action_mask) > actions.dim:
            raise ValueError(
                f"{file}: actions have {actions.dim} values, the robot's delta-action mask "
                f"{len(delta_action_mask)}"
            )
        delta_action_mask = (*delta_action_mask, *(False,) * (actions.dim - len(delta_action_mask)))
    source = SourceStats(
        state=state,
        actions=actions,
        action_horizon=action_horizon,
        delta_action_mask=delta_action_mask,
        cameras={k: k for k in image_keys},
    )
    return {"normalization": mode, "norm_stats": {asset_id: source.to_dict()}}
