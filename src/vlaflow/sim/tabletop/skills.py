"""How hard the low-level skills are: `physical` (the hard benchmark) or `assisted` (learnable on a CPU).

In the **physical** mode every grasp is friction between the finger pads and the object: the hand
must arrive within millimetres, across the object's narrow side, for the fingers to hold it, and the
drawer handle and the lid's handle need the same precision. A tiny policy trained for CPU-minutes
does not get there (the fingers close beside small objects, handles slip).

The **assisted** mode keeps everything else (layouts, splits, prompts, plans, subtasks, boxes,
scoring, the scripted expert's motions) and makes the grasp forgiving: when the gripper is commanded
closed (`HOLD_GRIP` or more) while the fingers are still open, the nearest graspable thing whose
surface is within `GRASP_TOLERANCE` of the tool centre point is attached to the hand by a weld
constraint (an object, the drawer's handle bar, or the lid's handle), and stays attached until the
command drops below `HOLD_GRIP`. An attached object counts as grasped by both fingers. Physics goes
on as before: an attached object still collides, a drawer still only slides, a lid still only
hinges, so a pull in the wrong direction still fails.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SKILLS: tuple[str, ...] = ("physical", "assisted")
GRASP_TOLERANCE = 0.02
"""Metres between the tool centre point and a thing's surface within which closing grasps it."""
HOLD_GRIP = 0.75
"""Gripper command at and above which an assisted grasp is made and held (the expert closes with 1.0
and opens to at most ~0.65 when it releases the narrowest object)."""
CLOSED_OPENING = 0.01
"""Finger opening (metres) below which the fingers are closed on nothing: no grasp can start then."""
HANDLES = {"drawer": ("drawer_body", "drawer_handle"), "box": ("box_handle", "box_handle")}
"""Articulated fixture -> (body attached to the hand, geom that must be near the tool centre point)."""
PROBE = "tcp_probe"
"""A point-sized, non-colliding geom at the tool centre point, for distances to other geoms."""


def check_skills(skills: str) -> str:
    if skills not in SKILLS:
        raise ValueError(f"skills must be one of {SKILLS}, got {skills!r}")
    return skills


def attach_name(entity: str) -> str:
    """Name of the (inactive) weld that attaches `entity` (an object or fixture name) to the hand."""
    return f"attach_{entity}"


def attachable_bodies(object_names: list[str]) -> dict[str, str]:
    """Entity -> the body its weld holds: each object itself, the drawer's sliding body, the lid's handle."""
    return {**{o: o for o in object_names}, **{f: body for f, (body, _) in HANDLES.items()}}


class GraspAssist:
    """The assisted grasp of one MuJoCo model built with `mjcf.scene_xml(..., skills="assisted")`."""

    def __init__(self, mujoco: Any, model: Any, data: Any, object_names: list[str]) -> None:
        self._mj, self.model, self.data = mujoco, model, data
        geom = mujoco.mjtObj.mjOBJ_GEOM
        self._probe = mujoco.mj_name2id(model, geom, PROBE)
        self._hand = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "hand")
        self._geoms: dict[str, list[int]] = {}
        for name in object_names:
            body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)
            self._geoms[name] = [
                g for g in range(model.ngeom) if model.geom_bodyid[g] == body and model.geom_contype[g]
            ]
        for fixture, (_, handle) in HANDLES.items():
            self._geoms[fixture] = [mujoco.mj_name2id(model, geom, handle)]
        self._bodies = {
            e: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, b)
            for e, b in attachable_bodies(object_names).items()
        }
        self._welds = {
            e: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_EQUALITY, attach_name(e)) for e in self._bodies
        }
        self.held: str | None = None

    def distance(self, entity: str) -> float:
        """Metres from the tool centre point to the nearest collision geom of `entity` (capped at 1 m)."""
        return min(
            self._mj.mj_geomDistance(self.model, self.data, self._probe, g, 1.0, None)
            for g in self._geoms[entity]
        )

    def update(self, grip: float, opening: float) -> None:
        """Release below `HOLD_GRIP`; at or above it, with the fingers not yet closed, grasp the nearest
        thing within `GRASP_TOLERANCE`."""
        if grip < HOLD_GRIP:
            if self.held is not None:
                self.data.eq_active[self._welds[self.held]] = 0
                self.held = None
            return
        if self.held is not None or opening < CLOSED_OPENING:
            return
        near = sorted((self.distance(e), e) for e in self._geoms)
        if near and near[0][0] <= GRASP_TOLERANCE:
            self._attach(near[0][1])

    def _attach(self, entity: str) -> None:
        """Activate `entity`'s weld at the current relative pose (nothing jumps)."""
        mj, d = self._mj, self.data
        hand, body = self._hand, self._bodies[entity]
        inverse = np.zeros(4)
        mj.mju_negQuat(inverse, d.xquat[hand])
        offset, turn = np.zeros(3), np.zeros(4)
        mj.mju_rotVecQuat(offset, d.xpos[body] - d.xpos[hand], inverse)
        mj.mju_mulQuat(turn, inverse, d.xquat[body])
        weld = self._welds[entity]
        self.model.eq_data[weld, 3:6] = offset
        self.model.eq_data[weld, 6:10] = turn
        d.eq_active[weld] = 1
        self.held = entity
