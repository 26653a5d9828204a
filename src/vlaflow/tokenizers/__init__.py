"""Tokenizers behind one interface, the reference's prompt formats, and FAST action tokens."""

from __future__ import annotations

from typing import Any

from vlaflow.tokenizers.base import Tokenizer
from vlaflow.tokenizers.embedded import EmbeddedTokenizer
from vlaflow.tokenizers.fast import FastIdRange, FastTokenizer
from vlaflow.tokenizers.paligemma import PaliGemmaTokenizer
from vlaflow.tokenizers.prompts import action_target_ids, discretize_state, model_prompt, tokenize_prompt


def load_tokenizer(spec: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from its `spec()` (as stored with a checkpoint)."""
    kind = spec.get("kind")
    if kind == "embedded":
        return EmbeddedTokenizer(spec["num_words"])
    if kind == "paligemma":
        return PaliGemmaTokenizer(spec["path"])
    raise ValueError(f"tokenizer spec {spec}: 'kind' must be 'embedded' or 'paligemma'")


__all__ = [
    "EmbeddedTokenizer",
    "FastIdRange",
    "FastTokenizer",
    "PaliGemmaTokenizer",
    "Tokenizer",
    "action_target_ids",
    "discretize_state",
    "load_tokenizer",
    "model_prompt",
    "tokenize_prompt",
]
