"""The privileged simulator state, in its own module so that the task rubric (`tasks`) and the
environment (`world`) both use it without importing each other."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class WorldState:
    """Privileged simulator state after a step (what the scripted expert and the task rubric read)."""

    tcp: np.ndarray  # (3,) tool centre point
    yaw: float
    opening: float  # metres between the finger pads
    target: np.ndarray  # (3,) mocap target
    target_yaw: float
    positions: dict[str, np.ndarray]  # object -> (3,) centre
    rotations: dict[str, np.ndarray]  # object -> (3, 3) orientation
    drawer: float  # metres pulled out
    lid: float  # radians
    handle: np.ndarray  # (3,) centre of the box's handle block
    grasped: frozenset[str]  # objects touching both fingers

    def yaw_of(self, name: str) -> float:
        rot = self.rotations[name]
        return math.atan2(rot[1, 0], rot[0, 0])
