"""Convert openpi's own JAX checkpoints with vlaflow and compare with openpi's recorded outputs.

Reads what `make_reference.py` wrote under REF (REF/<pi0|pi05>/{released,train_run/1000,
released_bf16}/params and io.npz / io_bf16_weights.npz), converts each checkpoint with
`vlaflow.interop.openpi_jax.load_jax_checkpoint` and runs `sample_actions` (fixed noise) and
`compute_loss` (fixed noise and time) on the same inputs in float32.

    python docs/interop/jax-check/compare.py REF
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from vlaflow.interop.openpi_jax import load_jax_checkpoint
from vlaflow.models import Observation

SLOTS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


def compare(ref: Path, name: str, checkpoint: str) -> dict:
    io = dict(np.load(ref / name / "io.npz"))
    obs = Observation(
        images={k: torch.from_numpy(io[f"image_{k}"]) for k in SLOTS},
        image_masks={k: torch.from_numpy(io[f"image_mask_{k}"]) for k in SLOTS},
        state=torch.from_numpy(io["state"]),
        tokenized_prompt=torch.from_numpy(io["tokenized_prompt"]).long(),
        tokenized_prompt_mask=torch.from_numpy(io["tokenized_prompt_mask"]),
    )
    model, detected = load_jax_checkpoint(
        ref / name / checkpoint,
        action_horizon=io["noise"].shape[1],
        max_token_len=io["tokenized_prompt"].shape[1],
    )
    expected = io["actions"]
    if "bf16" in checkpoint:  # openpi's own outputs from the bfloat16-stored weights
        expected = np.load(ref / name / "io_bf16_weights.npz")["actions"]
    result = {"model": name, "checkpoint": checkpoint, "stored dtype": detected.dtype}
    with torch.no_grad():
        actions = model.sample_actions(
            obs, noise=torch.from_numpy(io["noise"]), num_steps=int(io["num_steps"])
        )
        error = actions.numpy() - expected
        result["actions max abs"] = float(np.abs(error).max())
        result["actions relative"] = float(np.linalg.norm(error) / np.linalg.norm(expected))
        if "bf16" not in checkpoint:
            loss = model.compute_loss(
                obs,
                torch.from_numpy(io["loss_actions"]),
                noise=torch.from_numpy(io["loss_noise"]),
                time=torch.from_numpy(io["loss_time"]),
            ).mean(-1)
            error = loss.numpy() - io["loss"]
            result["loss max abs"] = float(np.abs(error).max())
            result["loss relative"] = float(np.linalg.norm(error) / np.linalg.norm(io["loss"]))
    return result


if __name__ == "__main__":
    ref = Path(sys.argv[1])
    for name, checkpoint in [
        ("pi0", "released"),
        ("pi0", "train_run/1000"),
        ("pi05", "released"),
        ("pi05", "train_run/1000"),
        ("pi05", "released_bf16"),
    ]:
        print(json.dumps(compare(ref, name, checkpoint)))
    for name in ("pi0", "pi05"):  # sharper attention: layout mistakes in q / k would show
        if (ref / "sharp_attn" / name / "released").is_dir():
            print(json.dumps(compare(ref / "sharp_attn", name, "released")))
