"""Questions about images to a trained model: captions, VQA, detection (`vlaflow ask`).

The question is laid out as web samples were in training (`tokenizers.prompts.question_prompt`:
PaliGemma's "BOS + prompt + \\n", no state), the images fill the model's image slots in order, and
the answer is decoded greedily with the KV cache up to EOS. An answer holding `<loc>` boxes can be
drawn on the image it refers to (the first).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vlaflow.data.transforms import prepare_images
from vlaflow.models import VLA, Observation
from vlaflow.tokenizers import Tokenizer
from vlaflow.tokenizers.boxes import draw_boxes, parse_boxes
from vlaflow.tokenizers.prompts import question_prompt


def ask(
    model: VLA, tokenizer: Tokenizer, images: Sequence[np.ndarray], prompt: str, *, max_new_tokens: int = 64
) -> str:
    """The model's answer to `prompt` about uint8 (H, W, 3) `images` (first image -> first slot)."""
    slots = model.config.image_keys
    if not images or len(images) > len(slots):
        raise ValueError(f"images: expected 1 to {len(slots)} images (the model's slots {list(slots)})")
    for i, image in enumerate(images):
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"images[{i}]: expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
    model_images, masks = prepare_images(
        {slot: image[None] for slot, image in zip(slots, images, strict=False)}, model.config, 1
    )
    tokens, mask = question_prompt(model.config, tokenizer, prompt)
    device = next(model.parameters()).device
    obs = Observation(
        images=model_images,
        image_masks=masks,
        state=torch.zeros(1, model.config.action_dim),
        tokenized_prompt=torch.from_numpy(tokens)[None],
        tokenized_prompt_mask=torch.from_numpy(mask)[None],
    ).to(device)
    out = model.eval().generate(obs, max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id)
    return tokenizer.decode(out.tokens[0, : int(out.lengths[0])].tolist()).strip()


def answer_boxes(image: np.ndarray, answer: str) -> np.ndarray | None:
    """`image` with the answer's `<loc>` boxes drawn, or None when the answer holds none."""
    return draw_boxes(image, answer) if parse_boxes(answer) else None
