"""One inference on a synthetic observation: the quickest end-to-end check of an install or a
checkpoint (tokenizer, preprocessing, model, sampling), with no data and no downloads."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vlaflow.data.transforms import build_observation
from vlaflow.inference.policy import Policy
from vlaflow.models import VLA, preset
from vlaflow.models.presets import EMBEDDED_VOCAB_SIZE
from vlaflow.pretrained import load_pretrained
from vlaflow.tokenizers import EmbeddedTokenizer, PaliGemmaTokenizer, Tokenizer, model_prompt


@dataclass
class ExampleResult:
    actions: np.ndarray  # (B, H, action_dim)
    prompt_tokens: int
    seconds: float


def synthetic_frame(height: int, width: int, seed: int) -> np.ndarray:
    """A 'table top' picture: a gradient background and a few coloured blocks (uint8 HWC)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    for _ in range(3):
        h, w = rng.integers(height // 8, height // 3), rng.integers(width // 8, width // 3)
        top, left = rng.integers(0, height - h), rng.integers(0, width - w)
        frame[top : top + h, left : left + w] = rng.integers(0, 256, 3)
    return frame


def load_model(
    *, checkpoint: Path | None, preset_name: str, tokenizer_path: Path | None, seed: int
) -> tuple[VLA, Tokenizer]:
    if checkpoint is not None:
        loaded = load_pretrained(checkpoint)
        if loaded.tokenizer is None and tokenizer_path is None:
            raise ValueError(f"{checkpoint} names no tokenizer: pass --tokenizer PATH/tokenizer.model")
        tokenizer = PaliGemmaTokenizer(tokenizer_path) if tokenizer_path else loaded.tokenizer
        return loaded.model, tokenizer
    config = preset(preset_name)
    if tokenizer_path is None and config.vocab_size != EMBEDDED_VOCAB_SIZE:
        raise ValueError(
            f"preset {preset_name!r} uses PaliGemma's vocabulary: pass --tokenizer PATH/tokenizer.model"
        )
    tokenizer = PaliGemmaTokenizer(tokenizer_path) if tokenizer_path else EmbeddedTokenizer()
    torch.manual_seed(seed)
    return VLA(config).eval(), tokenizer


def run_policy_example(policy: Policy, *, prompt: str, batch_size: int, seed: int) -> ExampleResult:
    """One inference through a trained policy: synthetic frames for its training cameras (at their
    training size), the state at the training mean; actions come back in the robot's units and
    dimensions."""
    stats = policy.stats
    frames = []
    for i in range(batch_size):
        images = {
            camera: synthetic_frame(*stats.image_sizes.get(camera, (240, 320)), seed + 7 * i + j)
            for j, camera in enumerate(stats.cameras.values())
        }
        frames.append({"images": images, "state": stats.state.mean.astype(np.float32), "prompt": prompt})
    tokens = model_prompt(
        policy.model.config, policy.tokenizer, prompt, policy.state_norm.normalize(stats.state.mean)
    )[1]
    start = time.perf_counter()
    actions = policy.infer_batch(frames)
    return ExampleResult(
        actions=actions, prompt_tokens=int(tokens.sum()), seconds=time.perf_counter() - start
    )


def run_example(
    model: VLA, tokenizer: Tokenizer, *, prompt: str, batch_size: int, steps: int, seed: int
) -> ExampleResult:
    rng = np.random.default_rng(seed)
    images = {
        key: np.stack([synthetic_frame(240, 320, seed + 7 * i + j) for i in range(batch_size)])
        for j, key in enumerate(model.config.image_keys)
    }
    state = rng.uniform(-1, 1, size=(batch_size, 7)).astype(np.float32)
    obs = build_observation(
        model.config, tokenizer, images=images, state=state, prompts=[prompt] * batch_size
    )
    noise = torch.from_numpy(
        rng.standard_normal((batch_size, model.config.action_horizon, model.config.action_dim))
    )
    start = time.perf_counter()
    actions = model.sample_actions(obs, noise=noise.float(), num_steps=steps)
    return ExampleResult(
        actions=actions.numpy(),
        prompt_tokens=int(obs.tokenized_prompt_mask[0].sum()),
        seconds=time.perf_counter() - start,
    )
