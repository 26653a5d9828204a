"""Masks and positions derived from segments: hand-written expectations and properties."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlaflow.models.segments import EXPERT, OWNER, VLM, Kind, Segment, build_layout


def seg(kind: Kind, valid: list[int]) -> Segment:
    return Segment(kind, torch.tensor([valid], dtype=torch.bool))


def as_int(mask: torch.Tensor) -> list[list[int]]:
    return mask[0].int().tolist()


def test_pi0_layout_matches_hand_written_mask():
    # image(2) prompt(2, one pad) | state(1) actions(2)
    layout = build_layout(
        [seg(Kind.IMAGE, [1, 1]), seg(Kind.PROMPT, [1, 0]), seg(Kind.STATE, [1]), seg(Kind.ACTION, [1, 1])]
    )
    assert as_int(layout.mask) == [
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1],  # a padding query reads everything (finite softmax); never read itself
        [1, 1, 1, 0, 1, 0, 0],
        [1, 1, 1, 0, 1, 1, 1],
        [1, 1, 1, 0, 1, 1, 1],
    ]
    assert layout.positions[0].tolist() == [0, 1, 2, 2, 3, 4, 5]
    assert layout.owner_lengths == (4, 3)


def test_pi05_layout_matches_hand_written_mask():
    layout = build_layout([seg(Kind.IMAGE, [1]), seg(Kind.PROMPT, [1, 1]), seg(Kind.ACTION, [1, 1])])
    assert as_int(layout.mask) == [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
    ]
    assert layout.positions[0].tolist() == [0, 1, 2, 3, 4]


def test_full_recipe_layout_hides_fast_from_actions():
    # prefix(2) | subtask (causal, 2) | FAST (causal, 2) | actions(2)
    layout = build_layout(
        [
            seg(Kind.PROMPT, [1, 1]),
            seg(Kind.TEXT_TARGET, [1, 1]),
            seg(Kind.FAST, [1, 1]),
            seg(Kind.ACTION, [1, 1]),
        ]
    )
    assert as_int(layout.mask) == [
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0, 1, 1],  # actions see prefix + subtask + each other, never FAST
        [1, 1, 1, 1, 0, 0, 1, 1],
    ]
    # Actions keep the positions they would have without FAST tokens in the sequence.
    assert layout.positions[0].tolist() == [0, 1, 2, 3, 4, 5, 4, 5]
    without_fast = build_layout(
        [seg(Kind.PROMPT, [1, 1]), seg(Kind.TEXT_TARGET, [1, 1]), seg(Kind.ACTION, [1, 1])]
    )
    assert without_fast.positions[0, -2:].tolist() == [4, 5]


def test_expert_segments_must_follow_vlm_segments():
    try:
        build_layout([seg(Kind.ACTION, [1]), seg(Kind.PROMPT, [1])])
    except ValueError as e:
        assert "precede" in str(e)
    else:
        raise AssertionError("expected a ValueError")


VLM_KINDS = [Kind.IMAGE, Kind.PROMPT, Kind.TEXT_TARGET, Kind.FAST]
EXPERT_KINDS = [Kind.STATE, Kind.ACTION]


@st.composite
def layouts(draw):
    batch = draw(st.integers(1, 3))

    def segment(kind):
        n = draw(st.integers(1, 4))
        valid = draw(
            st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=batch, max_size=batch)
        )
        if kind in EXPERT_KINDS:  # expert tokens are never padding
            valid = [[True] * n for _ in range(batch)]
        return Segment(kind, torch.tensor(valid, dtype=torch.bool))

    vlm = [segment(k) for k in draw(st.lists(st.sampled_from(VLM_KINDS), min_size=1, max_size=4))]
    expert = [segment(k) for k in draw(st.lists(st.sampled_from(EXPERT_KINDS), min_size=0, max_size=2))]
    return vlm + expert


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_mask_properties(segments):
    layout = build_layout(segments)
    mask, positions = layout.mask, layout.positions
    valid = torch.cat([s.valid for s in segments], dim=1)
    owner = torch.tensor([OWNER[s.kind] for s in segments for _ in range(s.length)])
    kinds = [s.kind for s in segments for _ in range(s.length)]
    real_query = valid[:, :, None]

    # Padding is never attended by a real token.
    assert not (mask & real_query & ~valid[:, None, :]).any()
    # The VLM (prefix, text, FAST) never sees expert tokens.
    vlm_to_expert = (owner[:, None] == VLM) & (owner[None, :] == EXPERT)
    assert not (mask & real_query & vlm_to_expert[None]).any()
    # Expert tokens never see FAST tokens.
    is_fast = torch.tensor([k is Kind.FAST for k in kinds])
    assert not (mask & (owner == EXPERT)[None, :, None] & is_fast[None, None, :]).any()
    # Every real token sees itself; every row reads something.
    eye = torch.eye(len(kinds), dtype=torch.bool)[None]
    assert (mask | ~(eye & real_query)).all()
    assert mask.any(-1).all()
    # Positions skip padding: consecutive real tokens a token can see have consecutive positions.
    for b in range(valid.shape[0]):
        for i in range(len(kinds)):
            if not valid[b, i]:
                continue
            seen_before = [
                j for j in range(i) if valid[b, j] and not (kinds[i] in EXPERT_KINDS and is_fast[j])
            ]
            assert positions[b, i].item() == len(seen_before)
