"""The chunk-boundary smoothness measure of the latency comparison."""

from __future__ import annotations

import numpy as np
import pytest

from vlaflow.sim.latency import boundary_smoothness


def test_a_jump_between_chunks_shows_at_the_boundary_only():
    t = np.arange(12, dtype=np.float32)[:, None]
    actions = np.concatenate([0.1 * t[:6], 0.1 * t[6:] + 1.0])  # a ramp; the second chunk jumps by 1
    out = boundary_smoothness(actions, np.array([0, 6]))
    assert out["boundary_jump"] == pytest.approx([1.1], rel=1e-5)
    assert out["boundary_jerk"] == pytest.approx([2.0], rel=1e-5)  # a unit step at k: u[k+1] - 3 u[k] = 1 - 3
    assert max(out["inner_jump"]) == pytest.approx(0.1, rel=1e-5)
    assert max(out["inner_jerk"]) == pytest.approx(1.0, rel=1e-5)
    # steps 2..10 all have a whole window; the unit step also shows in the windows next to k = 6
    assert len(out["boundary_jerk"]) + len(out["inner_jerk"]) == 9
    smooth = boundary_smoothness(0.1 * t, np.array([0, 6]))
    assert smooth["boundary_jump"] == pytest.approx([0.1], rel=1e-5)
    assert smooth["boundary_jerk"] == pytest.approx([0.0], abs=1e-5)
