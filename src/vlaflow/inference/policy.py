"""A trained policy: raw robot observation in, action chunk in the robot's own units out.

It applies exactly what training applied, from what the checkpoint recorded: the camera-to-slot
mapping, the normalization statistics and mode, the delta-action mask and the prompt format; then
samples the flow and undoes normalization and deltas. A raw observation is a dict:

    {"images": {camera: uint8 (H, W, 3)}, "state": float (S,), "prompt": str}

where cameras are named as in the training dataset (e.g. `observation.images.top`) or by model
slot (`base_0_rgb`); cameras the robot lacks are simply left out.

A model without an action expert (pi0-FAST) decodes FAST tokens instead of sampling the flow. A
sequence that does not decode to a whole chunk is never silently turned into actions: the policy
repeats its last decoded chunk (the mean action, normalized zero, before it has one), counts the
failure in `fast_failures` and logs it.

Hierarchical pi0.5 (`mode`): `hierarchical` decodes the subtask
("Subtask: ..." after the prompt, KV-cached) every `subtask_every` chunks and samples each chunk
conditioned on it, as training conditioned robot frames on their subtask; `oracle` takes it from
the observation's "subtask"; `implicit` (the default) decodes nothing: the prompt alone conditions
the actions. `infer_batch(..., return_info=True)` and `act` also return the subtask. The decoded
subtask and its age in chunks are kept per robot: an observation's `SESSION_KEY` (the policy server
sets one per connection), by default its index in the batch, so a batch of the same robots in the
same order needs none. A chunk re-decodes the subtasks of just those robots of its batch whose
subtask is `subtask_every` chunks old or unknown; `reset()` forgets every robot's (an episode's
start), `forget(session)` one robot's.

Real-time chunking (`rtc`, `vlaflow.inference.rtc`): observations carrying `PREV_ACTIONS_KEY` (and
`DELAY_KEY`) get chunks guided toward those actions; in a batch where only some do, the others get
zero guidance weight, so their chunks are sampled as without RTC.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlaflow.data.pipeline import SourceStats
from vlaflow.data.stats import Mode, Normalizer, to_absolute, to_delta
from vlaflow.data.transforms import build_observation
from vlaflow.inference import PREV_ACTIONS_KEY, SESSION_KEY, SUBTASK_KEY
from vlaflow.inference.engine import DecodingEngine, SamplingEngine, policy_options
from vlaflow.inference.rtc import RTCConfig, policy_guidance, sample_guided
from vlaflow.models import VLA, Observation
from vlaflow.pretrained import FAST_TOKENIZER_DIR, load_pretrained, read_config
from vlaflow.tokenizers import FastIdRange, FastTokenizer, Tokenizer
from vlaflow.tokenizers.prompts import ACTION_START, SUBTASK_START, subtask_text, text_target


def checkpoint_stats(checkpoint: str | Path, source: str | None = None) -> SourceStats:
    """What a training checkpoint recorded about one training dataset (statistics, cameras, image
    sizes, tasks), read without loading the weights; `source` picks the dataset of a mixture."""
    all_stats = read_config(checkpoint).get("metadata", {}).get("norm_stats")
    if not all_stats:
        raise ValueError(f"{checkpoint} has no normalization statistics (not a training checkpoint?)")
    if source is None:
        if len(all_stats) > 1:
            raise ValueError(f"{checkpoint} was trained on {sorted(all_stats)}: choose one with source=")
        source = next(iter(all_stats))
    if source not in all_stats:
        raise ValueError(f"source {source!r} not in {sorted(all_stats)}")
    return SourceStats.from_dict(all_stats[source])


log = logging.getLogger(__name__)
MODES = ("implicit", "hierarchical", "oracle")


class Policy:
    def __init__(
        self,
        model: VLA,
        tokenizer: Tokenizer,
        stats: SourceStats,
        normalization: Mode,
        *,
        num_steps: int = 10,
        seed: int = 0,
        fast: FastTokenizer | None = None,
        max_fast_tokens: int = 64,
        mode: str = "implicit",
        subtask_every: int = 1,
        max_subtask_tokens: int = 32,
        max_text_tokens: int = 48,
        rtc: RTCConfig | None = None,
    ):
        if not model.has_expert and fast is None:
            raise ValueError("a model without an action expert needs its FAST tokenizer to act")
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {MODES}")
        if mode != "implicit" and not model.has_expert:
            raise ValueError(
                f"mode={mode!r} conditions the flow on a subtask: the model needs an action expert"
            )
        if subtask_every < 1 or max_subtask_tokens < 1:
            raise ValueError(
                f"subtask_every={subtask_every}, max_subtask_tokens={max_subtask_tokens}: both must be >= 1"
            )
        self.mode, self.subtask_every = mode, subtask_every
        self.max_subtask_tokens, self.max_text_tokens = max_subtask_tokens, max_text_tokens
        # per session: the decoded subtask in force and how many chunks it has conditioned
        self._subtasks: dict[Hashable, tuple[str, int]] = {}
        self.fast, self.max_fast_tokens, self.fast_failures = fast, max_fast_tokens, 0
        self._last_fast_chunk: np.ndarray | None = None
        self.model, self.tokenizer, self.stats = model.eval(), tokenizer, stats
        self.state_norm = Normalizer(stats.state, normalization)
        self.action_norm = Normalizer(stats.actions, normalization)
        self.num_steps, self.rtc = num_steps, rtc  # rtc: guide chunks toward an observation's prev_actions
        # Samples unconditioned on text (implicit mode, no RTC) at the engine's precision and speed.
        self.engine = (
            SamplingEngine(model, num_steps=num_steps, **policy_options(self.device))
            if model.has_expert
            else None
        )
        # Decodes FAST tokens and subtasks: its step compiled and captured where that pays.
        self.decoder = DecodingEngine(model, **policy_options(self.device))
        self.generator = torch.Generator().manual_seed(seed)
        self.camera_slots = {camera: slot for slot, camera in stats.cameras.items()}

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        *,
        source: str | None = None,
        device: str | torch.device = "cpu",
        num_steps: int = 10,
        seed: int = 0,
        rtc: RTCConfig | None = None,
        mode: str = "implicit",
        subtask_every: int = 1,
    ) -> Policy:
        """A policy from a training checkpoint; `source` picks the dataset whose statistics (and
        robot) to use when the model was trained on several; `mode` / `subtask_every`: see the
        module doc."""
        stats = checkpoint_stats(checkpoint, source)
        loaded = load_pretrained(checkpoint, device=device)
        if loaded.tokenizer is None:
            raise ValueError(f"{checkpoint} names no tokenizer")
        fast_dir = Path(checkpoint) / FAST_TOKENIZER_DIR
        train_config = loaded.metadata.get("train_config", {})
        return cls(
            loaded.model,
            loaded.tokenizer,
            stats,
            loaded.metadata["normalization"],
            num_steps=num_steps,
            seed=seed,
            fast=FastTokenizer.load(fast_dir) if fast_dir.is_dir() else None,
            max_fast_tokens=int(train_config.get("max_fast_tokens", 64)),
            mode=mode,
            subtask_every=subtask_every,
            max_text_tokens=int(train_config.get("max_text_tokens", 48)),
            rtc=rtc,
        )

    @property
    def action_dim(self) -> int:
        return self.stats.actions.dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _slot(self, camera: str) -> str:
        if camera in self.model.config.image_keys:
            return camera
        if camera in self.camera_slots:
            return self.camera_slots[camera]
        raise ValueError(
            f"observation camera {camera!r} is neither a model slot {list(self.model.config.image_keys)} "
            f"nor a training camera {sorted(self.camera_slots)}"
        )

    def reset(self) -> None:
        """Forget the decoded subtasks of every session (a new episode)."""
        self._subtasks.clear()

    def forget(self, session: Hashable) -> None:
        """Forget one session's decoded subtask (its robot starts an episode, or is gone)."""
        self._subtasks.pop(session, None)

    def infer_batch(
        self, observations: Sequence[Mapping[str, Any]], *, return_info: bool = False
    ) -> np.ndarray | tuple[np.ndarray, list[dict[str, Any]]]:
        """(B, H, action_dim) float32 actions for B raw observations (same cameras in each); with
        `return_info` also per observation {"subtask": str} (the subtask the chunk followed; {} in
        implicit mode)."""
        if not observations:
            raise ValueError("observations: expected at least one")
        states = []
        for i, o in enumerate(observations):
            state = np.asarray(o.get("state"), dtype=np.float32)
            if state.shape != (self.stats.state.dim,):
                raise ValueError(
                    f"observation {i}: state must have shape ({self.stats.state.dim},), got {state.shape}"
                )
            states.append(state)
        raw_state = np.stack(states)
        cameras = observations[0].get("images", {})
        images = {self._slot(c): np.stack([o["images"][c] for o in observations]) for c in cameras}
        obs = build_observation(
            self.model.config,
            self.tokenizer,
            images=images,
            state=self.state_norm.normalize(raw_state),
            prompts=[str(o.get("prompt", "")) for o in observations],
        ).to(self.device)
        c = self.model.config
        subtasks = self._subtasks_for(observations, obs)
        text = None if subtasks is None else self._subtask_condition(subtasks)
        if self.model.has_expert:
            noise = torch.randn(len(observations), c.action_horizon, c.action_dim, generator=self.generator)
            if self.rtc is not None and any(PREV_ACTIONS_KEY in o for o in observations):
                guide = policy_guidance(
                    observations, self._to_model, raw_state, c.action_horizon, c.action_dim
                )
                sampled = sample_guided(
                    self.model, obs, noise.to(self.device), self.num_steps, *guide, self.rtc, text
                )
            elif text is None:
                sampled = self.engine.sample(obs, noise.to(self.device))
            else:
                sampled = self.model.sample_actions(
                    obs, noise=noise.to(self.device), num_steps=self.num_steps, text=text
                )
            normalized = sampled[..., : self.action_dim].cpu().numpy()
        else:
            normalized = self._decode_fast(obs)
        actions = to_absolute(
            self.action_norm.unnormalize(normalized), raw_state, self.stats.delta_action_mask
        )
        if not return_info:
            return actions
        if subtasks is None:
            return actions, [{} for _ in observations]
        return actions, [{SUBTASK_KEY: s} for s in subtasks]

    def _subtasks_for(self, observations: Sequence[Mapping[str, Any]], obs: Observation) -> list[str] | None:
        """The subtask each chunk follows (None: implicit mode)."""
        if self.mode == "implicit":
            return None
        if self.mode == "oracle":
            given = [o.get(SUBTASK_KEY) for o in observations]
            for i, subtask in enumerate(given):
                if not isinstance(subtask, str) or not subtask.strip():
                    raise ValueError(
                        f"observation {i}: mode=oracle needs 'subtask' (a non-empty str), got {subtask!r}"
                    )
            return given
        sessions = [o.get(SESSION_KEY, i) for i, o in enumerate(observations)]
        known = self._subtasks
        stale = [i for i, s in enumerate(sessions) if s not in known or known[s][1] >= self.subtask_every]
        if stale:
            rows = obs if len(stale) == len(sessions) else _rows(obs, stale)
            for i, subtask in zip(stale, self.decode_subtasks(rows), strict=True):
                known[sessions[i]] = (subtask, 0)
        subtasks = []
        for session in sessions:
            subtask, age = known[session]
            known[session] = (subtask, age + 1)
            subtasks.append(subtask)
        return subtasks

    def decode_subtasks(self, obs: Observation) -> list[str]:
        """The subtask of each observation, greedily decoded after "Subtask:" (KV-cached)."""
        out = self.decoder.generate(
            obs,
            max_new_tokens=self.max_subtask_tokens,
            eos_id=self.tokenizer.eos_id,
            forced=self.tokenizer.encode(SUBTASK_START),
        )
        return [
            self.tokenizer.decode(row[:length]).strip()
            for row, length in zip(out.tokens.tolist(), out.lengths.tolist(), strict=True)
        ]

    def _subtask_condition(self, subtasks: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The subtasks as the text segment robot frames were trained with ("Subtask: ..." + EOS)."""
        tokens, masks = zip(
            *(text_target(self.tokenizer, subtask_text(s), self.max_text_tokens) for s in subtasks),
            strict=True,
        )
        return torch.from_numpy(np.stack(tokens)).to(self.device), torch.from_numpy(np.stack(masks)).to(
            self.device
        )

    def _to_model(self, actions: np.ndarray, raw_state: np.ndarray) -> np.ndarray:
        """Robot-unit actions (H, A) as the model samples them, given the state they start from."""
        return self.action_norm.normalize(to_delta(actions, raw_state, self.stats.delta_action_mask))

    def _decode_fast(self, obs: Observation) -> np.ndarray:
        """Normalized chunks (B, H, action_dim) from FAST tokens decoded after "Action: "."""
        c = self.model.config
        out = self.decoder.generate(
            obs,
            max_new_tokens=self.max_fast_tokens,
            eos_id=self.tokenizer.eos_id,
            forced=self.tokenizer.encode(ACTION_START),
        )
        sequences, fast_ids = [], FastIdRange.for_model(c)
        for row, length in zip(out.tokens.tolist(), out.lengths.tolist(), strict=True):
            ids = row[:length]
            end = next((i for i, t in enumerate(ids) if t not in fast_ids), len(ids))  # "|" ends them
            sequences.append(fast_ids.to_fast(ids[:end]))
        chunks, ok = self.fast.decode(sequences)
        chunks = chunks[..., : self.action_dim]
        if not ok.all():
            self.fast_failures += int((~ok).sum())
            log.warning(
                "%d of %d FAST sequences did not decode; repeating the last chunk", (~ok).sum(), len(ok)
            )
            fallback = self._last_fast_chunk
            if fallback is None:
                fallback = np.zeros((c.action_horizon, self.action_dim), dtype=np.float32)
            chunks[~ok] = fallback
        self._last_fast_chunk = chunks[ok][-1] if ok.any() else self._last_fast_chunk
        return chunks.astype(np.float32)

    def __call__(self, observation: Mapping[str, Any]) -> np.ndarray:
        """(H, action_dim) actions for one raw observation."""
        return self.infer_batch([observation])[0]

    def act(self, observation: Mapping[str, Any]) -> dict[str, Any]:
        """{"actions": (H, action_dim)} for one raw observation, with "subtask" when one conditioned
        the chunk (the output the tabletop evaluation draws under its videos)."""
        actions, info = self.infer_batch([observation], return_info=True)
        return {"actions": actions[0], **info[0]}


def _rows(obs: Observation, rows: list[int]) -> Observation:
    """The observations at batch positions `rows`."""
    index = torch.tensor(rows, device=obs.state.device)
    return Observation(
        images={k: v[index] for k, v in obs.images.items()},
        image_masks={k: v[index] for k, v in obs.image_masks.items()},
        state=obs.state[index],
        tokenized_prompt=obs.tokenized_prompt[index],
        tokenized_prompt_mask=obs.tokenized_prompt_mask[index],
    )
