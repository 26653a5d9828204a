"""Normalization statistics, the step sampler, augmentation and the sample pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlaflow.data.augment import augment_image
from vlaflow.data.pipeline import Source, SourceConfig, TrainingSamples
from vlaflow.data.sampling import SampleKey, StepSampler, mixture_weights
from vlaflow.data.stats import Normalizer, chunked_action_stats, feature_stats, to_absolute, to_delta
from vlaflow.models import preset
from vlaflow.tokenizers import EmbeddedTokenizer
from vlaflow.tokenizers.prompts import pi05_prompt_text


def test_chunk_pooled_action_stats_match_brute_force():
    rng = np.random.default_rng(0)
    lengths, horizon = [5, 3, 7], 4
    actions, states = rng.normal(size=(15, 2)), rng.normal(size=(15, 3))
    ends = np.repeat(np.cumsum(lengths), lengths)
    mask = (True, False)
    pooled = []
    start = 0
    for length in lengths:
        for i in range(start, start + length):
            for k in range(min(horizon, start + length - i)):  # real actions only, no end padding
                a = actions[i + k].copy()
                a[0] -= states[i, 0]
                pooled.append(a)
        start += length
    expected = feature_stats(np.array(pooled))
    got = chunked_action_stats(actions, states, ends, horizon, mask)
    for name in ("mean", "std", "min", "max", "q01", "q99"):
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name), rtol=1e-12)
    assert got.count == len(pooled) < 15 * horizon


def test_action_stats_ignore_the_padding_past_short_episodes():
    """Chunks longer than the episodes: the last action repeated past each end must not shrink a
    dimension that is constant there (a yaw that stops turning) to a sliver of its real range."""
    rng = np.random.default_rng(1)
    lengths, horizon = [12] * 20, 50
    actions = np.concatenate([np.r_[rng.uniform(-0.2, 0.2, n - 4), np.zeros(4)] for n in lengths])[:, None]
    ends = np.repeat(np.cumsum(lengths), lengths)
    stats = chunked_action_stats(actions, np.zeros((len(actions), 1)), ends, horizon)
    real = feature_stats(actions)
    assert stats.q01[0] < -0.15 and stats.q99[0] > 0.15
    np.testing.assert_allclose([stats.q01[0], stats.q99[0]], [real.q01[0], real.q99[0]], atol=0.03)


def test_normalizers_round_trip_and_match_the_reference_formulas():
    values = np.random.default_rng(1).normal(3.0, 2.0, size=(500, 3))
    stats = feature_stats(values)
    x = values[:7]
    z = Normalizer(stats, "zscore").normalize(x)
    np.testing.assert_allclose(z, (x - stats.mean) / (stats.std + 1e-6), rtol=1e-5)
    q = Normalizer(stats, "quantile").normalize(x)
    np.testing.assert_allclose(q, (x - stats.q01) / (stats.q99 - stats.q01 + 1e-6) * 2 - 1, rtol=1e-5)
    for mode in ("zscore", "quantile", "none"):
        n = Normalizer(stats, mode)
        np.testing.assert_allclose(n.unnormalize(n.normalize(x)), x, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="last dimension 3"):
        Normalizer(stats, "zscore").normalize(np.zeros((2, 4)))


def test_delta_actions_round_trip():
    actions, state = np.arange(12, dtype=np.float32).reshape(4, 3), np.array([1.0, 2.0, 3.0, 9.0], np.float32)
    delta = to_delta(actions, state, (True, False, True))
    assert delta[:, 1].tolist() == actions[:, 1].tolist()
    assert delta[:, 0].tolist() == (actions[:, 0] - 1).tolist()
    np.testing.assert_array_equal(to_absolute(delta, state, (True, False, True)), actions)
    with pytest.raises(ValueError, match="delta_action_mask"):
        to_delta(actions, state, (True,))


def test_sampler_is_a_pure_function_of_seed_and_step_and_ranks_split_the_batch():
    def keys(**kw):
        return StepSampler([10], [1.0], global_batch=4, seed=3, start=0, stop=6, **kw)

    full = [k for batch in keys() for k in batch]
    assert [k.n for k in full] == list(range(24))
    # Each epoch of 10 samples visits every frame once, in a new order.
    assert sorted(k.index for k in full[:10]) == list(range(10))
    assert [k.index for k in full[:10]] != [k.index for k in full[10:20]]
    ranks = [list(keys(rank=r, world=2)) for r in range(2)]
    for step in range(6):
        assert ranks[0][step] + ranks[1][step] == list(keys())[step]
    resumed = StepSampler([10], [1.0], global_batch=4, seed=3, start=4, stop=6)
    assert list(resumed) == list(keys())[4:]


def test_mixture_weights_and_frequencies():
    p = mixture_weights([100, 10_000], [None, None])
    assert p[0] / p[1] == pytest.approx((100 / 10_000) ** 0.43)
    assert mixture_weights([5, 5], [3.0, 1.0]).tolist() == [0.75, 0.25]
    sampler = StepSampler([100, 10_000], p, global_batch=64, seed=0, start=0, stop=200)
    sources = np.array([k.source for batch in sampler for k in batch])
    assert (sources == 0).mean() == pytest.approx(p[0], abs=0.02)
    with pytest.raises(ValueError, match="at least one frame"):
        mixture_weights([0, 3], [None, None])


def test_augmentation_is_reproducible_and_bounded():
    image = torch.rand(3, 32, 32)

    def run(seed, wrist=False):
        return augment_image(image, wrist=wrist, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    out = run(3)
    assert out.shape == image.shape and out.min() >= 0 and out.max() <= 1
    # Wrist cameras get colour changes only: the image structure stays (high correlation).
    wrist = run(4, wrist=True)
    assert torch.corrcoef(torch.stack([wrist.flatten(), image.flatten()]))[0, 1] > 0.5


def test_samples_mask_padding_and_missing_cameras(v30_video_dataset):
    config = preset("pi05_tiny", action_horizon=5)
    source = Source(SourceConfig(str(v30_video_dataset)), config, normalization="quantile")
    samples = TrainingSamples([source], EmbeddedTokenizer(), augment=False, seed=0)
    last_of_first_episode = source.dataset.episode_range(source.dataset.episode_of(0)).stop - 1
    sample = samples[SampleKey(7, 0, last_of_first_episode - 1)]
    assert sample["actions"].shape == (5, 32)
    # 2 real action dims; only the first 2 chunk steps are inside the episode.
    assert sample["action_mask"][:, :2].tolist() == [[True, True]] * 2 + [[False, False]] * 3
    assert not sample["action_mask"][:, 2:].any()
    assert sample["image_masks"]["base_0_rgb"] and not sample["image_masks"]["left_wrist_0_rgb"]
    assert (sample["images"]["left_wrist_0_rgb"] == -1).all()
    state = source.state_norm.normalize(source.dataset[last_of_first_episode - 1]["observation.state"])
    text = EmbeddedTokenizer().decode(sample["tokens"][sample["token_mask"]].tolist())
    assert text == pi05_prompt_text(source.dataset.meta.tasks[0], state)
