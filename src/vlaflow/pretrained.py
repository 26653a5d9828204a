"""vlaflow's own model directory: `config.json` + `model.safetensors` (our parameter names).

`config.json` holds the model config, the tokenizer spec and any metadata (later: normalization
statistics and transforms), so a saved directory is everything needed to run the policy.
Files are written under temporary names and renamed, `config.json` last: a directory with a
`config.json` is complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vlaflow.interop.openpi import checkpoint_file
from vlaflow.models import VLA, VLAConfig
from vlaflow.tokenizers import Tokenizer, load_tokenizer

FORMAT = "vlaflow"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FAST_TOKENIZER_DIR = "fast_tokenizer"  # a model with FAST action tokens keeps its FAST tokenizer here


@dataclass
class Pretrained:
    model: VLA
    tokenizer: Tokenizer | None
    metadata: dict[str, Any] = field(default_factory=dict)


def _replace_atomically(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_pretrained(
    directory: str | Path,
    model: VLA,
    *,
    tokenizer: Tokenizer | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _replace_atomically(
        directory / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata={"format": FORMAT})
    )
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "tokenizer": tokenizer.spec() if tokenizer is not None else None,
        "metadata": metadata or {},
    }
    _replace_atomically(directory / CONFIG_FILE, lambda p: p.write_text(json.dumps(config, indent=2)))
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a vlaflow model directory (no {CONFIG_FILE})")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format {config.get('format')!r} v{config.get('format_version')} is not "
            f"{FORMAT!r} v{FORMAT_VERSION} (openpi / LeRobot checkpoints: use `vlaflow convert`)"
        )
    return config


def load_pretrained(
    directory: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Pretrained:
    config = read_config(directory)
    with torch.device("meta"):
        model = VLA(VLAConfig.from_dict(config["model"]))
    state = load_file(str(checkpoint_file(Path(directory) / WEIGHTS_FILE)), device=str(device))
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    tokenizer = load_tokenizer(config["tokenizer"]) if config.get("tokenizer") else None
    return Pretrained(model.eval(), tokenizer, config.get("metadata", {}))
