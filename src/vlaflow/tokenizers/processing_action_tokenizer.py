"""A FAST action tokenizer as a `transformers` processor (written next to every saved tokenizer).

`FastTokenizer.save` copies this file into the tokenizer's directory with a `processor_config.json`
whose `auto_map` names it, so `AutoProcessor.from_pretrained(DIR, trust_remote_code=True)` loads a
tokenizer vlaflow fitted, with the public FAST processor's interface: `processor(chunks)` -> a list
of token id lists, `processor.decode(token_lists, time_horizon=, action_dim=)` -> (B, H, D) chunks.
It encodes exactly as vlaflow does: the orthonormal DCT-II over time of each action dimension,
times `scale`, rounded, clipped to the fitted `min_token..max_token`, shifted to start at 0, one
character per value, then byte-pair encoded. vlaflow itself never imports this module.
"""

from __future__ import annotations

import numpy as np
from scipy.fft import dct, idct
from transformers.processing_utils import ProcessorMixin


class UniversalActionProcessor(ProcessorMixin):
    attributes = ["bpe_tokenizer"]  # noqa: RUF012 (the name transformers reads)
    bpe_tokenizer_class = "AutoTokenizer"

    def __init__(
        self,
        bpe_tokenizer,
        scale: float = 10.0,
        vocab_size: int = 1024,
        min_token: int = 0,
        max_token: int | None = None,
        action_dim: int | None = None,
        time_horizon: int | None = None,
    ):
        self.scale, self.vocab_size = scale, vocab_size
        self.min_token, self.max_token = min_token, max_token
        self.action_dim, self.time_horizon = action_dim, time_horizon
        super().__init__(bpe_tokenizer)

    def __call__(self, action_chunk: np.ndarray) -> list[list[int]]:
        chunks = np.asarray(action_chunk, dtype=np.float64)
        if chunks.ndim == 2:
            chunks = chunks[None]
        values = np.rint(dct(chunks, axis=1, norm="ortho") * self.scale).astype(np.int64)
        upper = self.max_token if self.max_token is not None else int(values.max())
        values = np.clip(values, self.min_token, upper) - self.min_token
        texts = ["".join(map(chr, row.reshape(-1))) for row in values]
        return [self.bpe_tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]

    def decode(self, tokens, *, time_horizon: int | None = None, action_dim: int | None = None) -> np.ndarray:
        horizon, dim = time_horizon or self.time_horizon, action_dim or self.action_dim
        if horizon is None or dim is None:
            raise ValueError("give time_horizon and action_dim (this tokenizer records none)")
        chunks = []
        for ids in tokens:
            text = self.bpe_tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)
            values = np.array([ord(c) for c in text], dtype=np.float64) + self.min_token
            if values.size != horizon * dim:
                raise ValueError(f"tokens decode to {values.size} values, not {horizon} x {dim}")
            chunks.append(idct(values.reshape(horizon, dim) / self.scale, axis=0, norm="ortho"))
        return np.stack(chunks)
