"""Which samples make up each training step: a pure function of (seed, step).

Every sample of the run has a global number n = step * global_batch + slot. Its source and its
frame are derived from n and the seed alone, so a resumed run, a different number of data
workers, or a different number of GPUs (each rank takes a contiguous slice of the global batch)
all see exactly the same samples. A single dataset is read in shuffled epochs (a new permutation
per epoch, unlike the reference's PyTorch sampler whose epoch never advances); a mixture draws
each sample's source with the mixture weights and a uniform frame of it, both seeded per step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class SampleKey:
    """Global sample number, source index, frame index in that source."""

    n: int
    source: int
    index: int


def mixture_weights(
    sizes: Sequence[int], weights: Sequence[float | None], exponent: float = 0.43
) -> np.ndarray:
    """Normalized source probabilities: explicit weights where given, else size**exponent (the pi0
    paper's n^0.43, which down-weights large sources)."""
    if any(s <= 0 for s in sizes):
        raise ValueError(f"every source needs at least one frame, got sizes {list(sizes)}")
    raw = np.array(
        [float(s) ** exponent if w is None else float(w) for s, w in zip(sizes, weights, strict=True)]
    )
    if (raw < 0).any() or raw.sum() <= 0:
        raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {raw.tolist()}")
    return raw / raw.sum()


class StepSampler:
    """Yields, for steps [start, stop), this rank's list of `SampleKey`s (a DataLoader batch_sampler)."""

    def __init__(
        self,
        sizes: Sequence[int],
        probabilities: Sequence[float],
        *,
        global_batch: int,
        seed: int,
        start: int,
        stop: int,
        rank: int = 0,
        world: int = 1,
    ):
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by the {world} processes")
        self.sizes, self.p = list(sizes), np.asarray(probabilities, dtype=np.float64)
        self.global_batch, self.seed = global_batch, seed
        self.start, self.stop = start, stop
        self.local = global_batch // world
        self.offset = rank * self.local

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for step in range(self.start, self.stop):
            yield self.keys(step)

    def keys(self, step: int) -> list[SampleKey]:
        first = step * self.global_batch + self.offset
        numbers = range(first, first + self.local)
        if len(self.sizes) == 1:
            size = self.sizes[0]
            return [SampleKey(n, 0, int(_permutation(self.seed, n // size, size)[n % size])) for n in numbers]
        rng, sources = self._step_sources(step)
        frames = rng.random(self.global_batch)
        slots = range(self.offset, self.offset + self.local)
        return [
            SampleKey(n, int(sources[j]), int(frames[j] * self.sizes[sources[j]]))
            for n, j in zip(numbers, slots, strict=True)
        ]

    def _step_sources(self, step: int) -> tuple[np.random.Generator, np.ndarray]:
        """The step's generator and the source of each of its global batch's samples."""
        rng = np.random.default_rng([self.seed, step])
        return rng, rng.choice(len(self.sizes), size=self.global_batch, p=self.p)

    def source_counts(self) -> np.ndarray:
        """(sources,) how many samples of the whole global batch, over steps [start, stop), each
        source gives: the realised mixture (all processes together)."""
        counts = np.zeros(len(self.sizes), dtype=np.int64)
        if len(self.sizes) == 1:
            counts[0] = len(self) * self.global_batch
            return counts
        for step in range(self.start, self.stop):
            counts += np.bincount(self._step_sources(step)[1], minlength=len(self.sizes))
        return counts


@lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, size: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(size)
