"""A byte-level tokenizer that needs no files, for models trained from scratch and for tests.

Ids: 0 pad, 1 eos, 2 bos, 3 unused (PaliGemma's unk slot), 4..259 the 256 byte values,
260..1283 `<loc0000>`..`<loc1023>`, then `NUM_RESERVED` ids kept free for discrete action
(FAST) tokens, so adding FAST later does not change the vocabulary of existing checkpoints.
The table never changes: a checkpoint trained with it decodes the same text forever.
"""

from __future__ import annotations

import re
from typing import Any

from vlaflow.tokenizers.base import NUM_LOC_TOKENS, Tokenizer

BYTE_OFFSET = 4
LOC_OFFSET = BYTE_OFFSET + 256
RESERVED_OFFSET = LOC_OFFSET + NUM_LOC_TOKENS
NUM_RESERVED = 2048
_LOC_PATTERN = re.compile(r"<loc(\d{4})>")


class EmbeddedTokenizer(Tokenizer):
    @property
    def vocab_size(self) -> int:
        return RESERVED_OFFSET + NUM_RESERVED

    @property
    def reserved_range(self) -> range:
        """Ids free for discrete action tokens."""
        return range(RESERVED_OFFSET, RESERVED_OFFSET + NUM_RESERVED)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = [self.bos_id] if add_bos else []
        position = 0
        for match in _LOC_PATTERN.finditer(text):
            ids += self._bytes(text[position : match.start()])
            value = int(match.group(1))
            ids += [self.loc_id(value)] if value < NUM_LOC_TOKENS else self._bytes(match.group(0))
            position = match.end()
        ids += self._bytes(text[position:])
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
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    def loc_id(self, value: int) -> int:
        self._check_loc(value)
        return LOC_OFFSET + value

    def spec(self) -> dict[str, Any]:
        return {"kind": "embedded"}

    @staticmethod
    def _bytes(text: str) -> list[int]:
        return [BYTE_OFFSET + b for b in text.encode("utf-8")]
