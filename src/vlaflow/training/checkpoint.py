"""Training checkpoints: written atomically, kept with retention, resumed exactly.

A checkpoint is a directory `OUTPUT/checkpoints/step_XXXXXXXX/` that is also a vlaflow model
directory (`config.json` + `model.safetensors`, the weights to run: EMA if enabled, LoRA merged),
plus what resuming needs: `params.safetensors` (the trainable state as trained, when it differs
from the exported weights), `ema.safetensors`, `optimizer.pt` and `trainer_state.json` (step,
seed, data position, metrics bookkeeping). It is written under a hidden temporary name and
renamed in one step, so a directory named `step_*` is always complete; a crash mid-write leaves
only a temporary directory, removed at the next save.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from vlaflow.pretrained import CONFIG_FILE, FORMAT, FORMAT_VERSION, WEIGHTS_FILE

PARAMS_FILE = "params.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def checkpoints_root(output: Path) -> Path:
    return Path(output) / "checkpoints"


def complete_checkpoints(output: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    root = checkpoints_root(output)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def latest_checkpoint(output: Path) -> Path | None:
    found = complete_checkpoints(output)
    return found[-1][1] if found else None


def _contiguous(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_checkpoint(
    output: Path,
    step: int,
    *,
    export: dict[str, Tensor],
    config: dict[str, Any],
    trainer_state: dict[str, Any],
    optimizer: dict[str, Any],
    params: dict[str, Tensor] | None = None,
    ema: dict[str, Tensor] | None = None,
    keep_last: int = 3,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write one checkpoint atomically, then delete all but the newest `keep_last`.

    `export`: the weights to run, with our plain parameter names; `config`: the `config.json`
    body (model config, tokenizer spec, metadata); `params`/`ema`: training state when it is not
    `export` itself; `write_extra(dir)` adds files of its own (e.g. a FAST tokenizer).
    """
    root = checkpoints_root(output)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step_*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".{final.name}.tmp"
    tmp.mkdir()
    save_file(_contiguous(export), str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
    if params is not None:
        save_file(_contiguous(params), str(tmp / PARAMS_FILE))
    if ema is not None:
        save_file(_contiguous(ema), str(tmp / EMA_FILE))
    torch.save(optimizer, tmp / OPTIMIZER_FILE)
    if write_extra is not None:
        write_extra(tmp)
    (tmp / STATE_FILE).write_text(json.dumps({**trainer_state, "step": step}, indent=2))
    body = {"format": FORMAT, "format_version": FORMAT_VERSION, **config}
    (tmp / CONFIG_FILE).write_text(json.dumps(body, indent=2))
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
    if final.exists():  # a re-run of the same step after a resume
        shutil.rmtree(final)
    os.rename(tmp, final)
    for _, old in complete_checkpoints(output)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Everything `save_checkpoint` wrote, as tensors / dicts (missing optional parts -> None)."""
    path = Path(path)
    if not _STEP_DIR.match(path.name) or not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"{path} is not a complete training checkpoint (step_XXXXXXXX with {STATE_FILE})"
        )
    export = load_file(str(path / WEIGHTS_FILE))
    return {
        "export": export,
        "params": load_file(str(path / PARAMS_FILE)) if (path / PARAMS_FILE).exists() else export,
        "ema": load_file(str(path / EMA_FILE)) if (path / EMA_FILE).exists() else None,
        "optimizer": torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True),
        "trainer_state": json.loads((path / STATE_FILE).read_text()),
        "config": json.loads((path / CONFIG_FILE).read_text()),
    }
