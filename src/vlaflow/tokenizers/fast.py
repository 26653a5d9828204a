"""FAST action tokens: action chunks <-> short sequences of discrete ids, and their place among VLM ids.

Encoding a chunk (H, D), normalized to about [-1, 1]: orthonormal DCT-II along time for each
dimension (`scipy.fft.dct(norm="ortho", axis=0)`), times `scale`, rounded; the (H, D) coefficient
matrix flattened row-major, so the lowest frequency of every dimension comes first; shifted by the
fitted minimum (`min_token`) so every value is >= 0; each value written as the character `chr(v)`;
the string split into ids by a BPE trained on the dataset. Smooth chunks have few non-zero
high-frequency coefficients, so the BPE merges their long runs of zeros into few tokens.

Our BPE's symbols are the characters themselves (one per coefficient value, all values the fitted
chunks took), not their UTF-8 bytes: a token never holds part of a coefficient, and no regex
splits the string at boundaries that mean nothing for coefficients. The public processor's
byte-level tokenizer.json loads and works too (`FastTokenizer.load`).

Values outside the fitted range at encode time (chunks beyond the fitted data) are clipped to it,
a bounded error on those coefficients only; `out_of_range_counts` says how many were clipped.
Decoding is checked: a sequence with an id outside the vocabulary, a broken byte sequence or any
number of coefficients but H * D is a failure, reported per sample (`ok` False, actions NaN),
never silently turned into zeros as the public processor does. Callers decide what a failure
means (the policy falls back as configured and counts it).

In the VLM's vocabulary FAST ids occupy their own range after the text tokenizer's ids
(`FastIdRange`), clear of text, `<loc>` and `<seg>` ids.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers

from vlaflow.models.config import REFERENCE_FAST_SKIP, VLAConfig
from vlaflow.tokenizers.base import Tokenizer

CONFIG_FILE = "fast_config.json"
BPE_FILE = "tokenizer.json"
PUBLIC_CONFIG_FILE = "processor_config.json"
PROCESSOR_MODULE, PROCESSOR_CLASS = "processing_action_tokenizer", "UniversalActionProcessor"
CONFIG_FORMAT = "vlaflow-fast"
# Characters up to the first UTF-16 surrogate: every value below it is a valid `str` character.
MAX_VALUES = 0xD800
PROBE_BLOCK = 4096
BROKEN_BYTES = "\ufffd"  # what a byte-level decoder returns for an incomplete UTF-8 sequence


@functools.cache
def _dct_matrix(length: int) -> np.ndarray:
    """Orthonormal DCT-II matrix M (length, length): coefficients = M @ x, x = M.T @ coefficients."""
    k = np.arange(length)[:, None]
    t = np.arange(length)[None, :]
    matrix = np.sqrt(2.0 / length) * np.cos(np.pi * (2 * t + 1) * k / (2 * length))
    matrix[0] /= np.sqrt(2.0)
    matrix.flags.writeable = False
    return matrix


def dct(chunks: np.ndarray) -> np.ndarray:
    """Orthonormal DCT-II along time of (..., H, D) chunks."""
    return _dct_matrix(chunks.shape[-2]) @ chunks


def idct(coefficients: np.ndarray) -> np.ndarray:
    """Inverse of `dct`."""
    return _dct_matrix(coefficients.shape[-2]).T @ coefficients


def _quantize(chunks: np.ndarray, scale: float) -> np.ndarray:
    """(B, H, D) chunks -> (B, H * D) rounded, scaled DCT coefficients, lowest frequencies first."""
    return np.rint(dct(chunks.astype(np.float64)) * scale).astype(np.int64).reshape(len(chunks), -1)


def _as_text(values: np.ndarray) -> str:
    return "".join(map(chr, values.tolist()))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def _field(config: dict[str, Any], key: str, kind: type, path: Path) -> Any:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and value != int(value)):
        raise ValueError(f"{path}: {key!r} must be a number ({kind.__name__}), got {value!r}")
    return kind(value)


def _check_chunks(chunks: np.ndarray) -> np.ndarray:
    chunks = np.asarray(chunks)
    if chunks.ndim != 3 or 0 in chunks.shape:
        raise ValueError(f"action chunks must be a non-empty (N, H, D) array, got shape {chunks.shape}")
    if not np.isfinite(chunks).all():
        raise ValueError("action chunks contain NaN or infinite values")
    return chunks


def _encodable_values(bpe: tokenizers.Tokenizer) -> int:
    """How many values 0, 1, 2, ... in a row the tokenizer encodes and decodes back exactly.

    A BPE without an unknown token drops characters missing from its vocabulary without a word; a
    public byte-level tokenizer knows only the bytes of the values it was trained on.
    """
    for start in range(0, MAX_VALUES, PROBE_BLOCK):
        probes = [chr(v) for v in range(start, min(start + PROBE_BLOCK, MAX_VALUES))]
        decoded = bpe.decode_batch([e.ids for e in bpe.encode_batch(probes)])
        failed = next((i for i, text in enumerate(decoded) if text != probes[i]), None)
        if failed is not None:
            return start + failed
    return MAX_VALUES


class FastTokenizer:
    """Action chunks (H, D) <-> FAST ids in 0..vocab_size-1 (see the module docstring)."""

    def __init__(
        self,
        bpe: tokenizers.Tokenizer,
        *,
        scale: float,
        vocab_size: int,
        min_token: int,
        max_token: int,
        action_horizon: int,
        action_dim: int,
    ):
        self.bpe = bpe
        self.scale, self.vocab_size = scale, vocab_size
        self.min_token, self.max_token = min_token, max_token
        self.action_horizon, self.action_dim = action_horizon, action_dim

    @classmethod
    def fit(cls, chunks: np.ndarray, vocab_size: int = 1024, scale: float = 10.0) -> FastTokenizer:
        """Train on (N, H, D) normalized chunks: the coefficient range and the BPE merges."""
        chunks = _check_chunks(chunks)
        if not 0 < scale < float("inf"):
            raise ValueError(f"scale must be a positive number, got {scale}")
        if not 1 <= vocab_size <= MAX_VALUES:
            raise ValueError(f"vocab_size must be in [1, {MAX_VALUES}], got {vocab_size}")
        values = _quantize(chunks, scale)
        min_token, max_token = int(values.min()), int(values.max())
        num_values = max_token - min_token + 1
        if num_values > vocab_size:
            raise ValueError(
                f"vocab_size={vocab_size} is below the {num_values} coefficient values the chunks take "
                f"({min_token}..{max_token} at scale={scale}): raise vocab_size or lower scale, and check "
                "that the chunks are normalized to about [-1, 1]"
            )
        bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
        bpe.decoder = tokenizers.decoders.Fuse()
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=[],
            initial_alphabet=[chr(v) for v in range(num_values)],
            show_progress=False,
        )
        bpe.train_from_iterator((_as_text(row - min_token) for row in values), trainer=trainer)
        _, horizon, dim = chunks.shape
        return cls(
            bpe,
            scale=float(scale),
            vocab_size=vocab_size,
            min_token=min_token,
            max_token=max_token,
            action_horizon=horizon,
            action_dim=dim,
        )

    def _values(self, chunks: np.ndarray) -> np.ndarray:
        chunks = np.asarray(chunks)
        chunks = _check_chunks(chunks[None] if chunks.ndim == 2 else chunks)
        if chunks.shape[1:] != (self.action_horizon, self.action_dim):
            raise ValueError(
                f"chunks must have shape (H, D) or (B, H, D) with (H, D) = "
                f"({self.action_horizon}, {self.action_dim}), got {chunks.shape}"
            )
        return _quantize(chunks, self.scale)

    def encode(self, chunks: np.ndarray) -> list[list[int]]:
        """FAST ids of a chunk (H, D) or a batch (B, H, D); coefficients outside the fitted range
        are clipped to it."""
        values = np.clip(self._values(chunks), self.min_token, self.max_token) - self.min_token
        return [e.ids for e in self.bpe.encode_batch([_as_text(row) for row in values])]

    def out_of_range_counts(self, chunks: np.ndarray) -> np.ndarray:
        """(B,) how many coefficients of each chunk `encode` clips to the fitted range."""
        values = self._values(chunks)
        return ((values < self.min_token) | (values > self.max_token)).sum(axis=1)

    def decode(self, sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Actions (B, H, D) float32 and ok (B,) bool; a failed sample's actions are NaN."""
        size = self.action_horizon * self.action_dim
        bpe_size = self.bpe.get_vocab_size()
        actions = np.full((len(sequences), self.action_horizon, self.action_dim), np.nan, np.float32)
        ok = np.zeros(len(sequences), dtype=bool)
        for i, ids in enumerate(sequences):
            ids = [int(t) for t in ids]
            if not all(0 <= t < bpe_size for t in ids):
                continue
            text = self.bpe.decode(ids, skip_special_tokens=False)
            if len(text) != size or BROKEN_BYTES in text:
                continue
            values = np.fromiter(map(ord, text), dtype=np.int64, count=size) + self.min_token
            coefficients = values.reshape(self.action_horizon, self.action_dim) / self.scale
            actions[i], ok[i] = idct(coefficients), True
        return actions, ok

    def save(self, directory: str | Path) -> Path:
        """Write `tokenizer.json` (the BPE) and `fast_config.json` to a directory, with the public
        FAST processor's files (`processor_config.json`, `tokenizer_config.json` and the processor's
        code), so `transformers.AutoProcessor.from_pretrained(directory, trust_remote_code=True)`
        loads it too."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.bpe.save(str(directory / BPE_FILE))
        public = {
            "action_dim": self.action_dim,
            "auto_map": {"AutoProcessor": f"{PROCESSOR_MODULE}.{PROCESSOR_CLASS}"},
            "max_token": self.max_token,
            "min_token": self.min_token,
            "processor_class": PROCESSOR_CLASS,
            "scale": self.scale,
            "time_horizon": self.action_horizon,
            "vocab_size": self.vocab_size,
        }
        (directory / PUBLIC_CONFIG_FILE).write_text(json.dumps(public, indent=2) + "\n")
        tokenizer_config = {"processor_class": PROCESSOR_CLASS, "tokenizer_class": "PreTrainedTokenizerFast"}
        (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
        (directory / "special_tokens_map.json").write_text("{}\n")
        code = resources.files("vlaflow.tokenizers").joinpath(f"{PROCESSOR_MODULE}.py").read_text()
        (directory / f"{PROCESSOR_MODULE}.py").write_text(code)
        config = {
            "format": CONFIG_FORMAT,
            "scale": self.scale,
            "vocab_size": self.vocab_size,
            "min_token": self.min_token,
            "max_token": self.max_token,
            "action_horizon": self.action_horizon,
            "action_dim": self.action_dim,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def load(
        cls, directory: str | Path, *, action_horizon: int | None = None, action_dim: int | None = None
    ) -> FastTokenizer:
        """Our own directory (`save`) or the public FAST processor's (`processor_config.json` +
        `tokenizer.json`, e.g. a local copy of physical-intelligence/fast).

        The chunk shape comes from the config; the public universal tokenizer records none
        (`time_horizon`/`action_dim` null), so give it here. A given shape must match a recorded one.
        """
        directory = Path(directory)
        own, public = directory / CONFIG_FILE, directory / PUBLIC_CONFIG_FILE
        if not (directory / BPE_FILE).is_file() or not (own.is_file() or public.is_file()):
            raise FileNotFoundError(
                f"{directory} is no FAST tokenizer directory: expected {BPE_FILE} with {CONFIG_FILE} "
                f"(vlaflow) or {PUBLIC_CONFIG_FILE} (the public FAST processor)"
            )
        path = own if own.is_file() else public
        config = _read_json(path)
        shape_keys = ("action_horizon", "action_dim") if path == own else ("time_horizon", "action_dim")
        shape = []
        for key, given in zip(shape_keys, (action_horizon, action_dim), strict=True):
            recorded = None if config.get(key) is None else _field(config, key, int, path)
            if given is not None and recorded is not None and given != recorded:
                raise ValueError(f"{key}={given} differs from {recorded} recorded in {path}")
            value = given if given is not None else recorded
            if value is None or value < 1:
                raise ValueError(f"{path} records no {key}: give one >= 1 when loading, got {value}")
            shape.append(value)
        bpe = tokenizers.Tokenizer.from_file(str(directory / BPE_FILE))
        min_token = _field(config, "min_token", int, path)
        if path == own:
            max_token = _field(config, "max_token", int, path)
        elif (encodable := _encodable_values(bpe)) > 0:
            max_token = min_token + encodable - 1
        else:
            raise ValueError(f"{directory / BPE_FILE} cannot encode the value 0 (the character chr(0))")
        vocab_size = _field(config, "vocab_size", int, path)
        if bpe.get_vocab_size() > vocab_size:
            raise ValueError(
                f"{directory / BPE_FILE} has {bpe.get_vocab_size()} ids, more than vocab_size={vocab_size}"
            )
        return cls(
            bpe,
            scale=_field(config, "scale", float, path),
            vocab_size=vocab_size,
            min_token=min_token,
            max_token=max_token,
            action_horizon=shape[0],
            action_dim=shape[1],
        )


@dataclass(frozen=True)
class FastIdRange:
    """Where FAST ids live among the VLM's token ids: FAST id k is VLM id `offset + k`, 0 <= k < size
    (or `offset - k` where `descending`, openpi's pi0-FAST layout).

    `FastIdRange.after(text_tokenizer, size)` appends the range to the text tokenizer's vocabulary,
    so it collides with no text, `<locNNNN>` or `<segNNN>` id: with PaliGemma (257,152 ids, `<loc>`
    256000..257023, `<seg>` 257024..257151) FAST ids are 257152..257152+size-1; with
    `EmbeddedTokenizer` they start at its `vocab_size`. The VLM's embedding then needs
    `vlm_vocab_size` rows. The reference maps FAST id k to `vocab_size - 1 - 128 - k`, onto the
    `<loc>` tokens that detection targets use (`for_model` of a model with `fast_ids="reference"`).
    """

    offset: int
    size: int
    descending: bool = False

    @classmethod
    def after(cls, text_tokenizer: Tokenizer, size: int) -> FastIdRange:
        return cls(offset=text_tokenizer.vocab_size, size=size)

    @classmethod
    def for_model(cls, config: VLAConfig) -> FastIdRange:
        """The FAST ids of a model with FAST tokens, in its layout (`VLAConfig.fast_ids`)."""
        if config.fast_ids == "reference":
            return cls(config.vocab_size - 1 - REFERENCE_FAST_SKIP, config.fast_vocab_size, descending=True)
        return cls(config.vocab_size, config.fast_vocab_size)

    @property
    def vlm_vocab_size(self) -> int:
        return self.offset + 1 if self.descending else self.offset + self.size

    def __contains__(self, vlm_id: int) -> bool:
        if self.descending:
            return self.offset - self.size < vlm_id <= self.offset
        return self.offset <= vlm_id < self.offset + self.size

    def to_vlm(self, fast_ids: Sequence[int]) -> list[int]:
        """VLM ids of FAST ids; a FAST id outside 0..size-1 is a ValueError."""
        sign = -1 if self.descending else 1
        return [self.offset + sign * k for k in _check_range(fast_ids, 0, self.size, "FAST id")]

    def to_fast(self, vlm_ids: Sequence[int]) -> list[int]:
        """FAST ids of VLM ids; a VLM id outside the FAST range (text, EOS...) is a ValueError."""
        if self.descending:
            ids = _check_range(vlm_ids, self.offset - self.size + 1, self.offset + 1, "VLM id")
            return [self.offset - i for i in ids]
        return [
            i - self.offset for i in _check_range(vlm_ids, self.offset, self.offset + self.size, "VLM id")
        ]


def _check_range(ids: Sequence[int], start: int, stop: int, what: str) -> list[int]:
    ids = [int(i) for i in ids]
    bad = next((i for i in ids if not start <= i < stop), None)
    if bad is not None:
        raise ValueError(f"{what} {bad} is outside the FAST range [{start}, {stop - 1}]")
    return ids
