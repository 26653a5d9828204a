"""Dropping the target and prompt columns no sample uses changes the work of a step, never its losses."""

from __future__ import annotations

import dataclasses

import torch

from helpers import make_observation
from models.test_recipe import flow_inputs, recipe_model, targets_for
from vlaflow.training.losses import drop_padding_columns, term_sums


def padded(targets, extra: int):
    """The same targets with `extra` more padding columns (garbage ids, masked out)."""
    changes = {}
    for name in ("text", "fast"):
        tokens, mask = getattr(targets, f"{name}_tokens"), getattr(targets, f"{name}_mask")
        pad_ids = tokens[:, :1].expand(-1, extra)
        pad_mask = torch.zeros(tokens.shape[0], extra, dtype=torch.bool)
        changes[f"{name}_tokens"] = torch.cat([tokens, pad_ids], 1)
        changes[f"{name}_mask"] = torch.cat([mask, pad_mask], 1)
        changes[f"{name}_loss"] = torch.cat([mask, pad_mask], 1)
    return dataclasses.replace(targets, **changes)


def test_padding_columns_are_dropped_and_the_losses_are_unchanged():
    model = recipe_model()
    obs = make_observation(model.config, batch=2)
    exact = targets_for(model)
    wide = padded(exact, extra=7)
    trimmed = drop_padding_columns(wide)
    assert trimmed.text_tokens.shape == (2, 3) and trimmed.fast_tokens.shape == (2, 4)
    assert torch.equal(trimmed.fast_tokens, exact.fast_tokens) and torch.equal(
        trimmed.text_loss, exact.text_loss
    )
    noise, time = flow_inputs(model)
    sums = {
        label: term_sums(model.compute_losses(obs, t, noise=noise, time=time), t)
        for label, t in (("wide", wide), ("trimmed", trimmed))
    }
    for term, (value, count) in sums["wide"].items():
        assert count == sums["trimmed"][term][1]
        torch.testing.assert_close(value, sums["trimmed"][term][0], rtol=1e-5, atol=1e-6)


def test_a_term_without_real_tokens_keeps_one_column():
    model = recipe_model()
    targets = targets_for(model)
    targets.text_mask = torch.zeros_like(targets.text_mask)
    targets.text_loss = torch.zeros_like(targets.text_loss)
    trimmed = drop_padding_columns(targets)
    assert trimmed.text_tokens.shape == (2, 1) and not trimmed.text_loss.any()
    assert trimmed.fast_tokens.shape == (2, 4)
    assert (
        drop_padding_columns(
            dataclasses.replace(targets, text_tokens=None, text_mask=None, text_loss=None)
        ).text_tokens
        is None
    )


def test_prompt_padding_columns_are_dropped_and_the_losses_are_unchanged():
    model = recipe_model()  # max_token_len 12
    obs = make_observation(model.config, batch=2)
    obs.tokenized_prompt_mask[:, 9:] = False  # no prompt is longer than 9 tokens
    trimmed = obs.without_prompt_padding()
    assert trimmed.tokenized_prompt.shape == (2, 9) and trimmed.tokenized_prompt_mask[:, -1].any()
    targets, (noise, time) = targets_for(model), flow_inputs(model)
    sums = {
        label: term_sums(model.compute_losses(o, targets, noise=noise, time=time), targets)
        for label, o in (("padded", obs), ("trimmed", trimmed))
    }
    for term, (value, count) in sums["padded"].items():
        assert count == sums["trimmed"][term][1]
        torch.testing.assert_close(value, sums["trimmed"][term][0], rtol=1e-5, atol=1e-6)
    empty = dataclasses.replace(obs, tokenized_prompt_mask=torch.zeros_like(obs.tokenized_prompt_mask))
    assert empty.without_prompt_padding().tokenized_prompt.shape == (2, 1)
