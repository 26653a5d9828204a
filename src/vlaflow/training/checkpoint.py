"""Training checkpoints: written atomically, kept with retention, resumed exactly.

A checkpoint is a directory `OUTPUT/checkpoints/step_XXXXXXXX/` that is also a vlaflow model
directory (`config.json` + `model.safetensors`, the weights to run: EMA if enabled, LoRA merged),
plus what resuming needs: `params.safetensors` (the trainable state as trained, when it differs
from the exported weights), `ema.safetensors`, `optimizer.pt` and `trainer_state.json` (step,
seed, data position, metrics bookkeeping). It is written under a hidden temporary name and
renamed in one step, so a directory named `step_*` is always complete; a crash mid-write leaves
only a temporary directory, removed at the next save, and a failed write (a full disk) removes it
at once and says that the previous checkpoint is intact. `manifest.json` records every file's size:
a checkpoint damaged later (truncated, a file lost or unreadable) raises `CheckpointError` naming
the file, and `load_latest` falls back to the newest checkpoint that loads.
"""

from __future__ import annotations

import errno
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
MANIFEST_FILE = "manifest.json"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message names the file."""


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
    previous = latest_checkpoint(output)
    try:
        tmp.mkdir()
        _write(tmp, export, config, trainer_state, optimizer, params, ema, write_extra, step)
    except Exception as error:  # a full disk shows up as OSError, or as safetensors' own error
        shutil.rmtree(tmp, ignore_errors=True)
        intact = (
            f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        )
        reason = getattr(error, "strerror", None) or f"{type(error).__name__}: {error}"
        raise OSError(
            getattr(error, "errno", None) or errno.EIO,
            f"writing checkpoint {final} failed ({reason}); {intact}",
        ) from error
    if final.exists():  # a re-run of the same step after a resume
        shutil.rmtree(final)
    os.rename(tmp, final)
    for _, old in complete_checkpoints(output)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write(
    tmp: Path,
    export: dict[str, Tensor],
    config: dict[str, Any],
    trainer_state: dict[str, Any],
    optimizer: dict[str, Any],
    params: dict[str, Tensor] | None,
    ema: dict[str, Tensor] | None,
    write_extra: Callable[[Path], None] | None,
    step: int,
) -> None:
    """Every file of a checkpoint into `tmp`, synced, with the manifest of their sizes last."""
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
    sizes = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
    (tmp / MANIFEST_FILE).write_text(json.dumps(sizes, indent=1))
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())


def _checked_sizes(path: Path) -> None:
    manifest = path / MANIFEST_FILE
    if not manifest.is_file():  # written before manifests existed
        return
    try:
        sizes = json.loads(manifest.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{manifest}: unreadable ({error})") from error
    for name, size in sizes.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        if f.stat().st_size != size:
            raise CheckpointError(
                f"{f}: {f.stat().st_size} bytes, written with {size} (truncated or damaged)"
            )


def _loaded(f: Path, load: Callable[[Path], Any]) -> Any:
    try:
        return load(f)
    except Exception as error:  # every loader's own error type: safetensors, torch, json, OS
        raise CheckpointError(f"{f}: cannot be loaded ({type(error).__name__}: {error})") from error


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Everything `save_checkpoint` wrote, as tensors / dicts (missing optional parts -> None);
    CheckpointError names a file that is missing, truncated or unreadable."""
    path = Path(path)
    if _STEP_DIR.match(path.name):
        _checked_sizes(path)
    if not _STEP_DIR.match(path.name) or not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"{path} is not a complete training checkpoint (step_XXXXXXXX with {STATE_FILE})"
        )
    tensors = lambda f: load_file(str(f))  # noqa: E731
    text = lambda f: json.loads(f.read_text())  # noqa: E731
    export = _loaded(path / WEIGHTS_FILE, tensors)
    return {
        "export": export,
        "params": _loaded(path / PARAMS_FILE, tensors) if (path / PARAMS_FILE).exists() else export,
        "ema": _loaded(path / EMA_FILE, tensors) if (path / EMA_FILE).exists() else None,
        "optimizer": _loaded(
            path / OPTIMIZER_FILE, lambda f: torch.load(f, map_location="cpu", weights_only=True)
        ),
        "trainer_state": _loaded(path / STATE_FILE, text),
        "config": _loaded(path / CONFIG_FILE, text),
    }


def load_latest(output: Path, warn: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in `output` that loads, with its contents; each newer one that does
    not is reported through `warn` (naming the bad file) and skipped. None: there is none."""
    for _, path in reversed(complete_checkpoints(output)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as error:
            warn(f"skipping damaged checkpoint {path.name}: {error}")
    return None
