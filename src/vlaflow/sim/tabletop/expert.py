"""Scripted expert: solves every task from the privileged simulator state, one subtask at a time.

Each subtask runs a motion primitive written as a generator of actions (waypoints reached with a
proportional step capped at 1.5 cm per control step, transit at a safe height):

* pick: choose a grasp yaw (the object's narrow axis, the one far from its neighbours for round things),
  open a little wider than the object, descend around it, close, lift;
* place: find a free spot in the container for the held object and the open fingers, carry it over,
  lower it until it almost touches the floor, open, rise;
* drawer: grasp the handle bar, pull (push) it to the open (closed) stop, let go;
* box: grasp the lid's swinging handle, carry it along the lid's arc past vertical (the lid then rests
  open on its stop); to close, push the raised lid from behind past vertical and let gravity close it.

After a primitive, the subtask's predicate is checked (`vlaflow.sim.tabletop.tasks.subtask_done`); a
failed pick is retried, a dropped object is picked up again, up to `max_retries` times per subtask.
The expert returns ``{"actions": (1, 5), "subtask": text}`` so the harness can record what it is doing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from vlaflow.sim.tabletop.mjcf import FINGER_TRAVEL, HANDLE_BLOCK_DROP, MAX_OPENING
from vlaflow.sim.tabletop.scene import (
    ARTICULATED,
    BOX_HALF,
    BOX_HANDLE_ARM,
    BOX_HEIGHT,
    BOX_LID_OVERHANG,
    BOX_LID_THICKNESS,
    CABINET_HALF,
    CATEGORIES,
    DRAWER_HANDLE_DEPTH,
    DRAWER_HANDLE_Z,
    DRAWER_TRAVEL,
    OPEN_CONTAINERS,
)
from vlaflow.sim.tabletop.state import WorldState
from vlaflow.sim.tabletop.tasks import (
    EpisodeSpec,
    Subtask,
    inside,
    interior,
    is_closed,
    is_open,
    make_subtask,
    subtask_done,
    to_local,
)

TRANSIT_Z = 0.2
HIGH_Z = 0.37
SPEED = 0.015
SLOW = 0.007
YAW_SPEED = 0.15
MIN_GRASP_Z = 0.015
LID_OPEN_ANGLE = 1.66

Action = np.ndarray


def grip_for_opening(opening: float) -> float:
    """Gripper command whose finger target leaves `opening` metres between the pads."""
    return float(np.clip((MAX_OPENING - opening) / (2 * FINGER_TRAVEL), 0.0, 1.0))


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def _nearest_yaw(yaw: float, current: float) -> float:
    """`yaw` modulo pi (the gripper is symmetric) closest to `current`, kept within [-pi, pi]."""
    best = current + _wrap(yaw - current)
    for candidate in (best - math.pi, best, best + math.pi):
        if abs(candidate - current) < abs(best - current) and abs(candidate) <= math.pi:
            best = candidate
    if abs(best) > math.pi:
        best -= math.copysign(math.pi, best)
    return best


def _axes(yaw: float) -> np.ndarray:
    """Rows: the x and y directions of a frame rotated by `yaw`."""
    return np.array([[math.cos(yaw), math.sin(yaw)], [-math.sin(yaw), math.cos(yaw)]])


def _outline(half: np.ndarray, round_: bool) -> np.ndarray:
    """Points on the outline of a rectangle (corners, edge midpoints) or circle (radius half[0]), (N, 2)."""
    if round_:
        a = np.linspace(0, 2 * math.pi, 16, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], axis=1) * half[0]
    return np.array([(sx, sy) for sx in (-1, 0, 1) for sy in (-1, 0, 1) if (sx, sy) != (0, 0)]) * half


def _inside(offsets: np.ndarray, axes: np.ndarray, half: np.ndarray, round_: bool) -> np.ndarray:
    """Whether points (offsets from a shape's centre, (..., 2)) fall inside a rectangle (rows of `axes`
    are its directions) or a circle of radius half[0]."""
    if round_:
        return np.linalg.norm(offsets, axis=-1) < half[0]
    local = offsets @ axes.T
    return (np.abs(local[..., 0]) < half[0]) & (np.abs(local[..., 1]) < half[1])


class ExpertPolicy:
    """obs (with "world" and "spec", as `TabletopEnv` returns) -> {"actions": (1, 5), "subtask": str}.

    `family` is accepted (and ignored: the expert solves every family) so that the class itself is a
    `rollout_many` policy factory.
    """

    uses_images = False  # it reads the privileged state: rollouts need not render for it

    def __init__(self, family: str | None = None, *, max_retries: int = 3) -> None:
        self.max_retries = max_retries
        self.reset()

    def reset(self) -> None:
        self._spec: EpisodeSpec | None = None
        self._index = 0
        self._retries = 0
        self._active: Subtask | None = None
        self._motion: Iterator[Action] | None = None
        self._grip = 0.0
        self._width = 0.0  # width of the object last grasped
        self.w: WorldState | None = None

    def __call__(self, obs: dict[str, Any]) -> dict[str, Any]:
        spec, self.w = obs["spec"], obs["world"]
        if spec is not self._spec:
            self.reset()
            self.w = obs["world"]
            self._spec = spec
            self._he = {o.name: CATEGORIES[o.category].half_extents for o in spec.scene.objects}
            self._rest_z = {o: float(p[2]) for o, p in self.w.positions.items()}
            self._begin(spec.subtasks[0])
        action = self._next_action()
        text = self._active.text if self._active is not None else spec.subtasks[-1].text
        if spec.family == "verbal":  # in a verbal-instruction session the subtask is the command given
            text = obs["prompt"]
        return {"actions": action[None].astype(np.float32), "subtask": text}

    # ------------------------------------------------------------------ sequencing

    def _begin(self, sub: Subtask) -> None:
        self._active = sub
        self._motion = self._primitive(sub)

    def _next_action(self) -> Action:
        assert self._spec is not None
        for _ in range(4):  # a finished primitive hands over to the next one within this step
            if self._motion is None:
                return self._hold()
            action = next(self._motion, None)
            if action is not None:
                return action
            self._advance()
        return self._hold()

    def _advance(self) -> None:
        """The active primitive ended: move on, retry, or go back to pick up a dropped object."""
        spec, w, active = self._spec, self.w, self._active
        assert spec is not None and w is not None and active is not None
        planned = spec.subtasks[self._index]
        if subtask_done(spec.scene, active, w, self._rest_z) and active is planned:
            self._index += 1
            self._retries = 0
            while self._index < len(spec.subtasks) and self._already_done(spec.subtasks[self._index]):
                self._index += 1
            if self._index < len(spec.subtasks):
                self._begin(spec.subtasks[self._index])
            else:
                self._active, self._motion = None, None
            return
        if active is not planned and subtask_done(spec.scene, active, w, self._rest_z):
            self._begin(self._recovery(planned))  # the recovery worked: on with the plan (or what it needs)
            return
        self._retries += 1
        if self._retries > self.max_retries:
            self._active, self._motion = None, None
            return
        self._begin(self._recovery(planned))

    def _recovery(self, planned: Subtask) -> Subtask:
        """What to do before `planned` can work: reopen its container, pick its object up again."""
        spec, w = self._spec, self.w
        assert spec is not None and w is not None
        if planned.kind == "place":
            assert planned.dest is not None
            if planned.dest in ARTICULATED and not is_open(w, planned.dest):
                return make_subtask(spec.scene, "open", planned.dest)
            if planned.target not in w.grasped:
                return make_subtask(spec.scene, "pick", planned.target)
        return planned

    def _already_done(self, sub: Subtask) -> bool:
        assert self._spec is not None and self.w is not None
        return sub.kind in ("open", "close") and subtask_done(self._spec.scene, sub, self.w, self._rest_z)

    def _primitive(self, sub: Subtask) -> Iterator[Action]:
        if sub.kind == "pick":
            return self._pick(sub.target)
        if sub.kind == "place":
            assert sub.dest is not None
            return self._place(sub.target, sub.dest)
        if sub.target == "drawer":
            return self._drawer(open_it=sub.kind == "open")
        return self._open_box() if sub.kind == "open" else self._close_box()

    # ------------------------------------------------------------------ motion

    def _act(self, delta: np.ndarray, dyaw: float) -> Action:
        return np.array([*delta, dyaw, self._grip], dtype=np.float64)

    def _hold(self) -> Action:
        return self._act(np.zeros(3), 0.0)

    def _move(
        self,
        goal: Any,
        yaw: float | None = None,
        *,
        speed: float = SPEED,
        tol: float = 0.004,
        timeout: int = 120,
    ) -> Iterator[Action]:
        goal = np.asarray(goal, dtype=float)
        for _ in range(timeout):
            w = self.w
            assert w is not None
            err = goal - w.tcp
            yaw_err = 0.0 if yaw is None else yaw - w.yaw
            if np.linalg.norm(err) < tol and abs(yaw_err) < 0.03:
                return
            norm = np.linalg.norm(err)
            delta = err if norm <= speed else err * (speed / norm)
            yield self._act(delta, float(np.clip(yaw_err, -YAW_SPEED, YAW_SPEED)))

    def _wait(self, steps: int) -> Iterator[Action]:
        for _ in range(steps):
            yield self._hold()

    def _set_grip(self, grip: float, steps: int) -> Iterator[Action]:
        self._grip = grip
        yield from self._wait(steps)

    def _transit(self, x: float, y: float, yaw: float | None, z: float = TRANSIT_Z) -> Iterator[Action]:
        """Rise to `z` if away from (x, y), then move over (x, y) at that height."""
        assert self.w is not None
        if np.hypot(self.w.tcp[0] - x, self.w.tcp[1] - y) > 0.02 and self.w.tcp[2] < z - 0.02:
            yield from self._move((*self.w.tcp[:2], z), None, tol=0.01)
        yield from self._move((x, y, z), yaw, tol=0.008)

    # ------------------------------------------------------------------ pick and place

    def _grasp_plan(self, obj: str) -> tuple[float, float]:
        """(yaw, width): the hand yaw for a grasp of `obj` and the width the fingers will meet."""
        w, spec = self.w, self._spec
        assert w is not None and spec is not None
        kind = CATEGORIES[spec.scene.object(obj).category]
        rot = w.rotations[obj]
        upright = rot[2, 2] > 0.9
        obj_yaw = w.yaw_of(obj)
        if upright and not kind.grasp:
            candidates = [obj_yaw + k * math.pi / 8 for k in range(8)]
        elif upright:
            candidates = [obj_yaw + off for off, _ in kind.grasp]
        else:  # tipped over: close across one of its horizontal principal directions
            candidates = [obj_yaw, obj_yaw + math.pi / 2]
        pos = w.positions[obj]
        best, best_cost = (w.yaw, MAX_OPENING), math.inf
        for raw in candidates:
            yaw = _nearest_yaw(raw, w.yaw)
            width = 2 * float(self._extent(obj, yaw)[1])
            closing = np.array([-math.sin(yaw), math.cos(yaw)])
            crowd = 0.0
            for other, p in w.positions.items():
                if other == obj:
                    continue
                for side in (-1, 1):
                    finger = pos[:2] + side * closing * (width / 2 + 0.03)
                    crowd += max(0.0, 0.07 - float(np.linalg.norm(finger - p[:2])))
            cost = 10 * crowd + 0.05 * abs(yaw - w.yaw) + (5.0 if width > MAX_OPENING - 0.012 else 0.0)
            if cost < best_cost:
                best, best_cost = (yaw, width), cost
        return best

    def _extent(self, obj: str, yaw: float) -> np.ndarray:
        assert self.w is not None
        rot = self.w.rotations[obj]
        axes = np.array(
            [[math.cos(yaw), math.sin(yaw), 0.0], [-math.sin(yaw), math.cos(yaw), 0.0], [0.0, 0.0, 1.0]]
        )
        return np.abs(axes @ rot) @ np.array(self._he[obj])

    def _pick(self, obj: str) -> Iterator[Action]:
        w = self.w
        assert w is not None
        yaw, width = self._grasp_plan(obj)
        self._width = width
        self._grip = grip_for_opening(min(MAX_OPENING, width + 0.035))
        pos = w.positions[obj]
        yield from self._transit(pos[0], pos[1], yaw)
        top = pos[2] + self._extent(obj, yaw)[2]
        yield from self._move((pos[0], pos[1], max(top + 0.03, pos[2] + 0.05)), yaw, tol=0.006)
        pos = self.w.positions[obj]
        yield from self._move(
            (pos[0], pos[1], max(pos[2], MIN_GRASP_Z)), yaw, speed=SLOW, tol=0.003, timeout=60
        )
        yield from self._set_grip(1.0, 6)
        yield from self._move((*self.w.tcp[:2], TRANSIT_Z), None, tol=0.01)

    def _place(self, obj: str, dest: str) -> Iterator[Action]:
        w, spec = self.w, self._spec
        assert w is not None and spec is not None
        fixture = spec.scene.fixture(dest)
        if dest in OPEN_CONTAINERS:
            yaws = [
                w.yaw + k * math.pi / 4 for k in (0, -1, 1, -2, 2) if abs(w.yaw + k * math.pi / 4) <= math.pi
            ]
        else:
            yaws = [_nearest_yaw(fixture.yaw + math.pi / 2, w.yaw)]
        x, y, yaw, gap = self._slot(obj, dest, yaws)
        yield from self._transit(x, y, yaw)
        floor = interior(dest, self.w.drawer)[4]
        below = self.w.tcp[2] - (self.w.positions[obj][2] - self._extent(obj, self.w.yaw)[2])
        release = floor + below + 0.012
        yield from self._move((x, y, release + 0.04), yaw, tol=0.006)
        yield from self._move((x, y, release), yaw, speed=SLOW, tol=0.004, timeout=40)
        opening = max(self.w.opening, self._width) + gap
        yield from self._set_grip(grip_for_opening(min(MAX_OPENING, opening)), 5)
        yield from self._move((*self.w.tcp[:2], TRANSIT_Z), None, tol=0.01)
        yield from self._wait(2)

    def _footprint(self, obj: str, yaw: float) -> tuple[bool, np.ndarray]:
        """(round, half extents along the axes of `yaw`): upright round things are circles."""
        spec, w = self._spec, self.w
        assert spec is not None and w is not None
        kind = CATEGORIES[spec.scene.object(obj).category]
        if not kind.grasp and w.rotations[obj][2, 2] > 0.9:
            return True, np.full(2, kind.half_extents[0])
        return False, self._extent(obj, yaw)[:2]

    def _slot(self, obj: str, dest: str, yaws: list[float]) -> tuple[float, float, float, float]:
        """(x, y, hand yaw, release gap) to put `obj` in `dest`: the free spot farthest from the middle of
        the reachable inside where the object and the opening fingers fit beside what is already there. When
        nothing fits, clearances and the release gap shrink step by step, and at last the least crowded spot
        is taken (objects may then be nudged)."""
        w, spec = self.w, self._spec
        assert w is not None and spec is not None
        fixture = spec.scene.fixture(dest)
        x0, x1, y0, y1, _ = interior(dest, w.drawer)
        if dest == "drawer":  # only the pulled-out part is reachable from above
            x1 = min(x1, -CABINET_HALF[0] - 0.006)
        if dest == "box":  # the raised lid stands at the back
            x1 = min(x1, BOX_HALF[0] - 0.025)
        others = []  # (centre, axes (2, 2), round, half extents (2,)) in the container frame
        for o in spec.scene.objects:
            if o.name != obj and inside(spec.scene, w, o.name, dest):
                oyaw = w.yaw_of(o.name)
                axes = _axes(oyaw - fixture.yaw)
                others.append(
                    (np.array(to_local(fixture, w.positions[o.name])), axes, *self._footprint(o.name, oyaw))
                )
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        grid = np.stack(
            np.meshgrid(np.arange(x0, x1 + 1e-9, 0.004), np.arange(y0, y1 + 1e-9, 0.004)), -1
        ).reshape(-1, 2)
        away = np.linalg.norm(grid - (cx, cy), axis=1)
        best, best_cost, free = (cx, cy, yaws[0], 0.008), math.inf, False
        # Where the object sits in the hand (hand frame): the footprint is centred there, the fingers at the
        # TCP. The held object turns with the hand, so its extents and offset in the hand frame stay put.
        offset = _axes(w.yaw) @ (w.positions[obj][:2] - w.tcp[:2])
        held_round, held = self._footprint(obj, w.yaw)
        for margin, gap in ((0.004, 0.016), (0.0, 0.012), (-0.006, 0.008)):
            for k, yaw in enumerate(yaws):
                axes = _axes(yaw - fixture.yaw)
                fingers = np.array([0.012, max(held[1], self._width / 2) + gap / 2 + 0.012])
                outline = (
                    np.concatenate([_outline(held, held_round) + offset, _outline(fingers, False)]) @ axes
                )
                pts = grid[:, None, :] + outline[None]
                if dest == "bowl":
                    bad = (np.linalg.norm(pts, axis=-1) > x1).sum(axis=1)
                else:
                    bad = (
                        (pts[..., 0] < x0) | (pts[..., 0] > x1) | (pts[..., 1] < y0) | (pts[..., 1] > y1)
                    ).sum(axis=1)
                for centre, oaxes, oround, half in others:
                    bad += _inside(pts - centre, oaxes, half + margin, oround).sum(axis=1)
                    corners = centre + _outline(half + margin, oround) @ oaxes
                    bad += _inside(
                        corners[None] - grid[:, None, :] - offset @ axes, axes, held, held_round
                    ).sum(axis=1)
                    bad += _inside(corners[None] - grid[:, None, :], axes, fingers, False).sum(axis=1)
                # Free spots first; among them pack against the walls (keeping the middle for what comes
                # next) and prefer not to turn the hand. Nothing free: the least crowded spot.
                cost = 100.0 * bad - away + 0.01 * k
                i = int(np.argmin(cost))
                if cost[i] < best_cost:
                    best, best_cost, free = (
                        (float(grid[i, 0]), float(grid[i, 1]), yaw, gap),
                        float(cost[i]),
                        bad[i] == 0,
                    )
            if free:
                break
        x, y = self._to_world(fixture, best[0], best[1])[:2]
        return float(x), float(y), best[2], best[3]

    @staticmethod
    def _to_world(fixture: Any, lx: float, ly: float, z: float = 0.0) -> np.ndarray:
        c, s = math.cos(fixture.yaw), math.sin(fixture.yaw)
        return np.array([fixture.x + c * lx - s * ly, fixture.y + s * lx + c * ly, z])

    # ------------------------------------------------------------------ articulated fixtures

    def _drawer(self, *, open_it: bool) -> Iterator[Action]:
        spec = self._spec
        assert spec is not None and self.w is not None
        fixture = spec.scene.fixture("drawer")
        yaw = _nearest_yaw(fixture.yaw + math.pi / 2, self.w.yaw)

        def handle(q: float) -> np.ndarray:
            return self._to_world(
                fixture, -0.002 - CABINET_HALF[0] - DRAWER_HANDLE_DEPTH - q, 0.0, DRAWER_HANDLE_Z
            )

        self._grip = grip_for_opening(0.045)
        start = handle(self.w.drawer)
        yield from self._transit(start[0], start[1], yaw)
        yield from self._move(start, yaw, tol=0.004)
        yield from self._set_grip(1.0, 6)
        goal = handle(DRAWER_TRAVEL - 0.004 if open_it else -0.012)
        yield from self._move(goal, yaw, speed=0.01, tol=0.005, timeout=50)
        yield from self._set_grip(grip_for_opening(0.045), 4)
        yield from self._move((*self.w.tcp[:2], TRANSIT_Z), None, tol=0.01)

    def _lid_geometry(self) -> tuple[Any, np.ndarray, float, float]:
        """(fixture, hinge in world, pivot radius, pivot angle offset) of the box's lid."""
        assert self._spec is not None
        fixture = self._spec.scene.fixture("box")
        hinge = self._to_world(fixture, BOX_HALF[0], 0.0, BOX_HEIGHT)
        reach = 2 * BOX_HALF[0] + BOX_LID_OVERHANG + BOX_HANDLE_ARM
        lift = BOX_LID_THICKNESS / 2
        return fixture, hinge, math.hypot(reach, lift), math.atan2(lift, reach)

    def _pivot(self, angle: float) -> np.ndarray:
        fixture, hinge, radius, offset = self._lid_geometry()
        a = angle + offset
        return (
            hinge
            + self._to_world(fixture, -radius * math.cos(a), 0.0, radius * math.sin(a))
            - (fixture.x, fixture.y, 0.0)
        )

    def _open_box(self) -> Iterator[Action]:
        assert self.w is not None
        fixture = self._lid_geometry()[0]
        yaw = _nearest_yaw(fixture.yaw, self.w.yaw)
        self._grip = grip_for_opening(0.085)
        handle = self.w.handle.copy()
        yield from self._transit(handle[0], handle[1], yaw)
        handle = self.w.handle.copy()
        yield from self._move(handle, yaw, speed=SLOW, tol=0.004, timeout=60)
        yield from self._set_grip(1.0, 6)
        drop = np.array([0.0, 0.0, HANDLE_BLOCK_DROP])
        for angle in np.linspace(self.w.lid, LID_OPEN_ANGLE, 12)[1:]:
            yield from self._move(self._pivot(float(angle)) - drop, yaw, speed=0.012, tol=0.01, timeout=20)
        yield from self._move(self._pivot(LID_OPEN_ANGLE) - drop, yaw, tol=0.005, timeout=20)
        yield from self._set_grip(grip_for_opening(0.085), 5)
        yield from self._move(self.w.tcp + np.array([0.0, 0.0, 0.05]), None, tol=0.01, timeout=20)
        front = self._to_world(fixture, -BOX_HALF[0] - 0.05, 0.0)
        yield from self._move((front[0], front[1], min(HIGH_Z, self.w.tcp[2])), None, tol=0.01)

    def _close_box(self) -> Iterator[Action]:
        assert self.w is not None
        fixture = self._lid_geometry()[0]
        yaw = _nearest_yaw(fixture.yaw, self.w.yaw)
        self._grip = 1.0
        behind = self._to_world(fixture, BOX_HALF[0] + 0.05, 0.0)
        yield from self._move((*self.w.tcp[:2], HIGH_Z), None, tol=0.01)
        yield from self._move((behind[0], behind[1], HIGH_Z), yaw, tol=0.008)
        yield from self._move((behind[0], behind[1], BOX_HEIGHT + 0.11), yaw, tol=0.006)
        push = self._to_world(fixture, BOX_HALF[0] - 0.1, 0.0, BOX_HEIGHT + 0.11)
        yield from self._move(push, yaw, speed=0.01, tol=0.006, timeout=40)
        for _ in range(30):
            if is_closed(self.w, "box"):
                break
            yield self._hold()
        yield from self._move((*self.w.tcp[:2], TRANSIT_Z), None, tol=0.01)
