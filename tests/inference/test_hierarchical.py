"""Hierarchical inference in `Policy`: the subtask decoded every `subtask_every` chunks (KV-cached
`generate`) conditions the chunk; oracle subtasks come from the observation; implicit decodes none."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import randomize_
from vlaflow.bench.serve import tiny_checkpoint
from vlaflow.inference.policy import Policy
from vlaflow.models.vla import Generation
from vlaflow.tokenizers.prompts import SUBTASK_START, subtask_text, text_target


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("hierarchical") / "tiny")


def observation(policy: Policy, seed: int = 0, **extra) -> dict:
    rng = np.random.default_rng(seed)
    images = {
        camera: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for camera in policy.stats.cameras.values()
    }
    state = rng.normal(size=policy.stats.state.dim).astype(np.float32)
    return {"images": images, "state": state, "prompt": "clean up the table", **extra}


class Spy:
    """Counts the policy's decoding calls (answering "pick up the cup") and records the text
    `sample_actions` gets."""

    def __init__(self, policy: Policy, monkeypatch):
        self.generated, self.texts = 0, []
        model, tokenizer = policy.model, policy.tokenizer
        sample_actions = model.sample_actions

        def generate(obs, *, max_new_tokens, eos_id, forced=()):
            assert list(forced) == tokenizer.encode(SUBTASK_START) and eos_id == tokenizer.eos_id
            self.generated += 1
            ids = tokenizer.encode(f" pick up the cup {self.generated}")[:max_new_tokens]
            tokens = torch.tensor([ids] * obs.batch_size)
            return Generation(tokens=tokens, lengths=torch.full((obs.batch_size,), len(ids)))

        def spy_sample(obs, *args, text=None, **kwargs):
            self.texts.append(text)
            return sample_actions(obs, *args, text=text, **kwargs)

        monkeypatch.setattr(policy.decoder, "generate", generate)
        monkeypatch.setattr(model, "sample_actions", spy_sample)
        engine_sample = policy.engine.sample  # without text, the policy samples through its engine

        def spy_engine(obs, noise):
            self.texts.append(None)
            return engine_sample(obs, noise)

        monkeypatch.setattr(policy.engine, "sample", spy_engine)


def expected_text(policy: Policy, subtask: str) -> torch.Tensor:
    tokens, _ = text_target(policy.tokenizer, subtask_text(subtask), policy.max_text_tokens)
    return torch.from_numpy(tokens)


def test_hierarchical_mode_decodes_every_subtask_every_chunks_and_conditions_on_it(checkpoint, monkeypatch):
    policy = Policy.load(checkpoint, num_steps=2, mode="hierarchical", subtask_every=3)
    spy = Spy(policy, monkeypatch)
    subtasks = [policy.act(observation(policy, seed=k)).get("subtask") for k in range(7)]
    assert spy.generated == 3  # chunks 0, 3 and 6
    assert subtasks == ["pick up the cup 1"] * 3 + ["pick up the cup 2"] * 3 + ["pick up the cup 3"]
    for text, subtask in zip(spy.texts, subtasks, strict=True):  # each chunk followed its subtask
        assert torch.equal(text[0][0], expected_text(policy, subtask))
    policy.reset()  # a new episode decodes at once
    actions, info = policy.infer_batch([observation(policy), observation(policy, seed=1)], return_info=True)
    assert spy.generated == 4 and actions.shape == (2, policy.stats.action_horizon, policy.action_dim)
    assert info == [{"subtask": "pick up the cup 4"}] * 2


def test_oracle_mode_takes_the_subtask_from_the_observation(checkpoint, monkeypatch):
    policy = Policy.load(checkpoint, num_steps=2, mode="oracle")
    spy = Spy(policy, monkeypatch)
    out = policy.act(observation(policy, subtask="open the drawer"))
    assert spy.generated == 0 and out["subtask"] == "open the drawer"
    assert torch.equal(spy.texts[0][0][0], expected_text(policy, "open the drawer"))
    with pytest.raises(ValueError, match=r"observation 0: mode=oracle needs 'subtask' \(a non-empty str\)"):
        policy.act(observation(policy))


def test_implicit_mode_decodes_nothing_and_the_prompt_alone_conditions(checkpoint, monkeypatch):
    policy = Policy.load(checkpoint, num_steps=2)
    spy = Spy(policy, monkeypatch)
    out = policy.act(observation(policy))
    assert spy.generated == 0 and spy.texts == [None] and set(out) == {"actions"}
    with pytest.raises(ValueError, match="mode='planner': expected one of"):
        Policy.load(checkpoint, mode="planner")


def test_the_decoded_subtask_changes_the_chunk(checkpoint):
    """Without spies: the real decoding runs, and conditioning on a subtask changes the actions."""
    implicit = Policy.load(checkpoint, num_steps=2)
    hierarchical = Policy.load(checkpoint, num_steps=2, mode="hierarchical")
    for policy in (implicit, hierarchical):  # weights that let the text reach the actions
        randomize_(policy.model, std=0.1)
    actions, info = hierarchical.infer_batch([observation(hierarchical)], return_info=True)
    assert isinstance(info[0]["subtask"], str)
    assert not np.allclose(actions, implicit.infer_batch([observation(implicit)]))
