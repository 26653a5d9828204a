"""A tokenizer that needs no files, for models trained from scratch and for tests.

Ids: 0 pad, 1 eos, 2 bos, 3 unused (PaliGemma's unk slot), 4..259 the 256 byte values,
260..1283 `<loc0000>`..`<loc1023>`, then `NUM_RESERVED` ids kept free for discrete action
(FAST) tokens, then whole-word tokens: the words of `words.WORDS`, each with and without a
leading space, also capitalized. Text splits into words and single characters; a word in the table
is one token, anything else is its UTF-8 bytes, so every string encodes and decodes exactly. A
pi0.5 prompt such as "Task: press a button from the top, State: 130 126 35 255;\\nAction: " is
~31 tokens instead of ~70 bytes, which is most of the sequence of a tiny model.

Numbers stay digit by digit: a model trained from scratch reads the discretized state far better
from shared digit embeddings than from 1000 separate number embeddings it has to learn one by one
(Meta-World, one task, 600 steps: held-out action error 0.203 with digits vs 0.251 with number
tokens).

The table only grows at the end (new words), and a checkpoint records how many words its model
was trained with (`spec()`), so its ids never change.
"""

from __future__ import annotations

import re
from typing import Any

from vlaflow.tokenizers.base import NUM_LOC_TOKENS, Tokenizer
from vlaflow.tokenizers.words import WORDS

BYTE_OFFSET = 4
LOC_OFFSET = BYTE_OFFSET + 256
RESERVED_OFFSET = LOC_OFFSET + NUM_LOC_TOKENS
NUM_RESERVED = 2048
PIECE_OFFSET = RESERVED_OFFSET + NUM_RESERVED
_SPLIT = re.compile(r"<loc\d{4}>| ?[A-Za-z]+|.", re.DOTALL)


def _pieces(num_words: int) -> list[str]:
    return [p for w in WORDS[:num_words] for p in (w, f" {w}", w.capitalize(), f" {w.capitalize()}")]


class EmbeddedTokenizer(Tokenizer):
    def __init__(self, num_words: int = len(WORDS)):
        if not 0 <= num_words <= len(WORDS):
            raise ValueError(f"num_words must be in [0, {len(WORDS)}], got {num_words}")
        self.num_words = num_words
        self._pieces = _pieces(num_words)
        self._ids = {piece: PIECE_OFFSET + i for i, piece in enumerate(self._pieces)}

    @property
    def vocab_size(self) -> int:
        return PIECE_OFFSET + len(self._pieces)

    @property
    def reserved_range(self) -> range:
        """Ids free for discrete action tokens."""
        return range(RESERVED_OFFSET, RESERVED_OFFSET + NUM_RESERVED)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = [self.bos_id] if add_bos else []
        for piece in _SPLIT.findall(text):
            if piece in self._ids:
                ids.append(self._ids[piece])
            elif piece.startswith("<loc") and int(piece[4:8]) < NUM_LOC_TOKENS:
                ids.append(self.loc_id(int(piece[4:8])))
            else:
                ids += [BYTE_OFFSET + b for b in piece.encode("utf-8")]
        return ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: list[int]) -> str:
        out, pending = [], bytearray()
        for i in ids:
            if BYTE_OFFSET <= i < LOC_OFFSET:
                pending.append(i - BYTE_OFFSET)
                continue
            out.append(pending.decode("utf-8", errors="replace"))
            pending = bytearray()
            if LOC_OFFSET <= i < RESERVED_OFFSET:
                out.append(f"<loc{i - LOC_OFFSET:04d}>")
            elif PIECE_OFFSET <= i < self.vocab_size:
                out.append(self._pieces[i - PIECE_OFFSET])
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    def loc_id(self, value: int) -> int:
        self._check_loc(value)
        return LOC_OFFSET + value

    def spec(self) -> dict[str, Any]:
        return {"kind": "embedded", "num_words": self.num_words}
