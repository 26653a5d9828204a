"""Token sequences as typed segments; attention masks and positions derived from them.

Every sequence the model sees (training or inference, pi0, pi0.5, FAST, subtask prediction) is a
list of segments. A segment's *kind* fixes three things:

* its owner: which expert's weights process it (the VLM or the action expert);
* its attention pattern, in big_vision's `ar_mask` terms: JOIN tokens continue the previous
  bidirectional block (ar=0), a BLOCK segment opens one new bidirectional block (ar=1 then 0s),
  CAUSAL tokens each open a block of their own (ar=1);
* which other kinds it must never read (expert tokens never see FAST action tokens, so the two
  action representations cannot leak into each other).

The reference's rule is the special case with no hidden kinds: with `c = cumsum(ar)`, query i may
read key j iff `c[j] <= c[i]` and both are real tokens. Positions are `cumsum(valid) - 1`, except
that a token skips the tokens it may never read, so an action token has the same RoPE position
whether or not FAST tokens were placed before it (training with FAST, inference without).

Expert segments may carry a *group* (1, 2, ...): tokens of different groups never read each other
and each group takes the positions it would have alone, so one prefix can condition several
independent suffixes in one pass (several flow-matching draws per training sample).

The full pi0.5 layout is then just a segment list:

    [IMAGE]* [PROMPT (+ discretized state)] [TEXT_TARGET (subtask)] [FAST] [ACTION]

and the reference pi0 / pi0.5 flow layouts are `[IMAGE]* [PROMPT] [STATE] [ACTION]` and
`[IMAGE]* [PROMPT] [ACTION]`. VLM-owned segments always precede expert-owned ones; the mixture
transformer relies on it to give each expert's queries only the keys they can see.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import Tensor

VLM, EXPERT = 0, 1


class Kind(enum.Enum):
    IMAGE = "image"
    PROMPT = "prompt"
    TEXT_TARGET = "text_target"
    FAST = "fast"
    STATE = "state"
    ACTION = "action"


class Pattern(enum.Enum):
    JOIN = "join"
    BLOCK = "block"
    CAUSAL = "causal"


OWNER = {
    Kind.IMAGE: VLM,
    Kind.PROMPT: VLM,
    Kind.TEXT_TARGET: VLM,
    Kind.FAST: VLM,
    Kind.STATE: EXPERT,
    Kind.ACTION: EXPERT,
}
PATTERN = {
    Kind.IMAGE: Pattern.JOIN,
    Kind.PROMPT: Pattern.JOIN,
    Kind.TEXT_TARGET: Pattern.CAUSAL,
    Kind.FAST: Pattern.CAUSAL,
    Kind.STATE: Pattern.BLOCK,
    Kind.ACTION: Pattern.BLOCK,
}
# query kind -> key kinds it never reads, whatever their order.
HIDDEN = {Kind.STATE: (Kind.FAST,), Kind.ACTION: (Kind.FAST,)}


@dataclass(frozen=True)
class Segment:
    """`length` tokens of one kind; `valid` (B, length) is False on padding; `group` > 0: one of
    several independent suffixes (see the module docstring)."""

    kind: Kind
    valid: Tensor
    group: int = 0

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    @property
    def owner(self) -> int:
        return OWNER[self.kind]


@dataclass(frozen=True)
class Layout:
    """What the transformer needs about a sequence: who may read whom, and where each token is.

    `mask` (B, L, L) bool, True where query i may read key j; `positions` (B, L) int64 RoPE
    positions; `owner_lengths[e]` tokens of expert e (VLM tokens first).
    """

    mask: Tensor
    positions: Tensor
    owner_lengths: tuple[int, int]


def _ar_pattern(segment: Segment) -> Tensor:
    n, device = segment.length, segment.valid.device
    pattern = PATTERN[segment.kind]
    if pattern is Pattern.JOIN:
        return torch.zeros(n, dtype=torch.int64, device=device)
    if pattern is Pattern.CAUSAL:
        return torch.ones(n, dtype=torch.int64, device=device)
    ar = torch.zeros(n, dtype=torch.int64, device=device)
    ar[:1] = 1
    return ar


def build_layout(segments: list[Segment]) -> Layout:
    """Derive the attention mask and positions of a segment list (see the module docstring)."""
    if not segments:
        raise ValueError("a layout needs at least one segment")
    owners = [s.owner for s in segments]
    if owners != sorted(owners):
        order = [s.kind.value for s in segments]
        raise ValueError(f"VLM segments must precede expert segments, got order {order}")
    batch = segments[0].valid.shape[0]
    for s in segments:
        if s.valid.ndim != 2 or s.valid.shape[0] != batch or s.valid.dtype != torch.bool:
            raise ValueError(
                f"segment {s.kind.value}: valid must be a bool tensor (B={batch}, n), got "
                f"{s.valid.dtype} {tuple(s.valid.shape)}"
            )

    valid = torch.cat([s.valid for s in segments], dim=1)
    blocks = torch.cumsum(torch.cat([_ar_pattern(s) for s in segments]), dim=0)
    allowed = blocks[None, :] <= blocks[:, None]
    device = valid.device

    def per_token(values: list[bool] | list[int]) -> Tensor:
        # One value per segment, repeated over its tokens, made on the device (no host copy, so
        # a CUDA graph can capture it).
        return torch.cat(
            [torch.full((s.length,), v, device=device) for s, v in zip(segments, values, strict=True)]
        )

    def is_kind(kind: Kind) -> Tensor:
        return per_token([s.kind is kind for s in segments])

    owner = per_token([s.owner for s in segments])
    allowed &= ~((owner[:, None] == VLM) & (owner[None, :] == EXPERT))
    never = torch.zeros_like(allowed)  # query i may never read key j, wherever j stands
    for query_kind, key_kinds in HIDDEN.items():
        for key_kind in key_kinds:
            never |= is_kind(query_kind)[:, None] & is_kind(key_kind)[None, :]
    group = per_token([s.group for s in segments])
    never |= (group[:, None] != group[None, :]) & (group[:, None] > 0) & (group[None, :] > 0)
    allowed &= ~never
    # Positions skip the earlier tokens a token may never read.
    earlier = torch.ones_like(allowed).tril(-1)
    hidden_before = (valid[:, None, :] & (never & earlier)[None]).sum(-1)

    mask = allowed[None] & valid[:, None, :] & valid[:, :, None]
    # A padding query reads nothing; let it read everything instead (as the reference's additive
    # mask does), so its softmax stays finite. Its output is never read by a real token.
    mask |= ~mask.any(dim=-1, keepdim=True)
    positions = torch.cumsum(valid, dim=1) - 1 - hidden_before
    n_vlm = sum(s.length for s in segments if s.owner == VLM)
    return Layout(mask=mask, positions=positions, owner_lengths=(n_vlm, valid.shape[1] - n_vlm))
