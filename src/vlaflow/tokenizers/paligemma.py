"""PaliGemma's SentencePiece tokenizer, loaded from a local `tokenizer.model` (no downloads).

The real model has 257,152 ids: 256,000 text pieces, then `<loc0000>`..`<loc1023>` and
`<seg000>`..`<seg127>`. Loc ids are looked up by piece, so small test models built with
SentencePiece's trainer (with the loc pieces as user-defined symbols) work the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sentencepiece

from vlaflow.tokenizers.base import Tokenizer


class PaliGemmaTokenizer(Tokenizer):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"PaliGemma tokenizer not found at {self.path}: give the path of a local tokenizer.model "
                "(big_vision's paligemma_tokenizer.model; vlaflow never downloads it)"
            )
        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(self.path))
        # Padding stays 0 whatever the model says: the reference pads prompts with id 0.
        self.eos_id, self.bos_id = self._sp.eos_id(), self._sp.bos_id()
        self._loc_ids = [self._sp.piece_to_id(f"<loc{v:04d}>") for v in range(1024)]
        if len(set(self._loc_ids)) != 1024 or self._sp.unk_id() in self._loc_ids:
            raise ValueError(f"{self.path} has no complete set of <loc0000>..<loc1023> pieces")

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return self._sp.encode(text, add_bos=add_bos, add_eos=add_eos)

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def loc_id(self, value: int) -> int:
        self._check_loc(value)
        return self._loc_ids[value]

    def spec(self) -> dict[str, Any]:
        return {"kind": "paligemma", "path": str(self.path)}
