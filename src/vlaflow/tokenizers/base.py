"""The interface every tokenizer offers, so prompts, subtasks and detection targets are built once."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

NUM_LOC_TOKENS = 1024


class Tokenizer(ABC):
    """Text <-> token ids, with PaliGemma's conventions: pad 0, eos 1, bos 2, and 1024 `<locNNNN>`
    tokens for box coordinates (y_min, x_min, y_max, x_max in 0..1023)."""

    pad_id = 0
    eos_id = 1
    bos_id = 2

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        """Text of `ids`, skipping pad/bos/eos; `<locNNNN>` tokens come back as that text."""

    @abstractmethod
    def loc_id(self, value: int) -> int:
        """Id of `<loc{value:04d}>`."""

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """JSON-able description from which `vlaflow.tokenizers.load_tokenizer` rebuilds it."""

    def _check_loc(self, value: int) -> None:
        if not 0 <= value < NUM_LOC_TOKENS:
            raise ValueError(f"<loc> value must be in [0, {NUM_LOC_TOKENS - 1}], got {value}")
