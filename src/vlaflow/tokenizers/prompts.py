"""Prompt formats exactly as the reference writes them, and the pi0.5 state discretization.

pi0:   BOS + cleaned prompt + "\\n"            (the newline encoded separately, as "start of answer")
pi0.5: BOS + "Task: {prompt}, State: {b1 b2 ... bN};\\nAction: "
FAST:  BOS + "Task: {prompt}, State: {b1 b2 ... bN};\\n" (models with FAST tokens: the action
       target that follows is "Action: " + FAST ids + "|" + EOS, the reference's pi0-FAST layout)
where the prompt is stripped with `_` and newlines replaced by spaces, and b_i are the state's
256-bin indices. Tokens are padded with id 0 (mask False) or truncated to `max_len`.

Text targets (after the prompt, causal, each ending with EOS):
subtask:    "Subtask: {subtask}" (a robot frame's label; the actions that follow are conditioned on it)
high level: "Bounding boxes: {<locY0><locX0><locY1><locX1> label ; ...}\nSubtask: {subtask}"
            (PaliGemma's box format; without boxes it is the subtask line alone)
A question about an image (caption, VQA, detection: no state, no actions) uses PaliGemma's prefix
"BOS + prompt + \n", the pi0 format, and its answer is the text target.
"""

from __future__ import annotations

import logging

import numpy as np

from vlaflow.models import VLAConfig
from vlaflow.tokenizers.base import Tokenizer

log = logging.getLogger(__name__)
STATE_BINS = 256


def clean_prompt(prompt: str) -> str:
    return prompt.strip().replace("_", " ").replace("\n", " ")


def discretize_state(state: np.ndarray) -> np.ndarray:
    """Normalized state (N,) -> bin indices in [0, 255] of 256 uniform bins on [-1, 1].

    Same bins as the reference (`digitize(state, linspace(-1, 1, 257)[:-1]) - 1`), but clipped:
    the reference writes "-1" for values below -1, a token sequence it never trained on.
    """
    state = np.asarray(state, dtype=np.float64)
    if state.ndim != 1:
        raise ValueError(f"state: expected a 1-d vector (N,), got shape {state.shape}")
    bins = np.digitize(state, bins=np.linspace(-1, 1, STATE_BINS + 1)[:-1]) - 1
    return np.clip(bins, 0, STATE_BINS - 1)


ACTION_START = "Action: "
ACTION_END = "|"
SUBTASK_START = "Subtask:"
BOXES_START = "Bounding boxes:"


def subtask_text(subtask: str) -> str:
    """The subtask target. Decoding forces `SUBTASK_START` (whose tokens begin every subtask
    target's) and reads the subtask from what follows."""
    return f"{SUBTASK_START} {clean_prompt(subtask)}"


def high_level_text(subtask: str, boxes: str) -> str:
    """The high-level target: the boxes of what the subtask involves, then the subtask line."""
    boxes = boxes.strip()
    return f"{BOXES_START} {boxes}\n{subtask_text(subtask)}" if boxes else subtask_text(subtask)


def text_target(tokenizer: Tokenizer, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """A padded text target: the text's ids + EOS (tokens int64 [max_len], mask bool [max_len])."""
    return pad_tokens(
        tokenizer.encode(text, add_eos=True), max_len, what="text target", setting="max_text_tokens"
    )


def question_prompt(config: VLAConfig, tokenizer: Tokenizer, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    """The padded prompt of a question about images (no state): PaliGemma's "BOS + prompt + \n"."""
    return pad_tokens(prompt_token_ids(tokenizer, prompt, None, pi05=False), config.max_token_len)


def pi05_prompt_text(prompt: str, state: np.ndarray, *, fast: bool = False) -> str:
    state_text = " ".join(str(b) for b in discretize_state(state))
    return f"Task: {clean_prompt(prompt)}, State: {state_text};\n" + ("" if fast else ACTION_START)


def prompt_token_ids(
    tokenizer: Tokenizer, prompt: str, state: np.ndarray | None, *, pi05: bool, fast: bool = False
) -> list[int]:
    """Unpadded ids of the model's prompt; pi0.5 and FAST need the normalized raw-dimension `state`."""
    if pi05 or fast:
        if state is None:
            raise ValueError("pi0.5 prompts include the discretized state: pass the normalized state (N,)")
        return tokenizer.encode(pi05_prompt_text(prompt, state, fast=fast), add_bos=True)
    return tokenizer.encode(clean_prompt(prompt), add_bos=True) + tokenizer.encode("\n")


def action_target_ids(tokenizer: Tokenizer, fast_vlm_ids: list[int]) -> list[int]:
    """The FAST action target: "Action: " + FAST ids (in the VLM vocabulary) + "|" + EOS."""
    return (
        tokenizer.encode(ACTION_START)
        + list(fast_vlm_ids)
        + tokenizer.encode(ACTION_END)
        + [tokenizer.eos_id]
    )


def model_prompt(
    config: VLAConfig, tokenizer: Tokenizer, prompt: str, state: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The padded prompt in the format `config` was built for (pi0, pi0.5 or with FAST tokens; a
    model without `discrete_state_input` gets pi0's form and never the state; openpi's pi0-FAST,
    `fast_ids="reference"`, lower-cases the prompt as its tokenizer does)."""
    with_state = config.state_in_prompt
    if config.fast_ids == "reference":
        prompt = prompt.lower()
    return tokenize_prompt(
        tokenizer,
        prompt,
        state if with_state else None,
        pi05=config.pi05 and with_state,
        fast=config.fast_vocab_size > 0 and with_state,
        max_len=config.max_token_len,
    )


def pad_tokens(
    ids: list[int], max_len: int, *, what: str = "prompt", setting: str = "max_token_len"
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int64 [max_len], mask bool [max_len]); longer inputs are truncated with a warning."""
    if len(ids) > max_len:
        log.warning("%s has %d tokens, truncated to %s=%d", what, len(ids), setting, max_len)
        ids = ids[:max_len]
    tokens = np.zeros(max_len, dtype=np.int64)
    tokens[: len(ids)] = ids
    return tokens, np.arange(max_len) < len(ids)


def tokenize_prompt(
    tokenizer: Tokenizer,
    prompt: str,
    state: np.ndarray | None,
    *,
    pi05: bool,
    max_len: int,
    fast: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    return pad_tokens(prompt_token_ids(tokenizer, prompt, state, pi05=pi05, fast=fast), max_len)
