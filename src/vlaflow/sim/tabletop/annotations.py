"""Bounding boxes of scene entities in each camera, in PaliGemma's `<loc>` format.

A box is the image-space bounding box of points sampled on the entity's geometry (box corners, edge
midpoints and face centres; rings on cylinders; a Fibonacci sphere on spheres and ellipsoids),
projected with the camera's pinhole model (MuJoCo's ``fovy``, principal point at the image centre,
pose from ``cam_xpos`` / ``cam_xmat``) and clipped to the image. Boxes are amodal: a partly hidden
object keeps the box of its whole shape. Special cases:

* points behind the camera's near plane are dropped (the box is that of the points in front);
* out of view: an entity whose clipped box is narrower or shorter than 1% of the image side is omitted;
* occlusion: rays are cast from the camera to up to 16 of the entity's points (moved 15% towards their
  geom's centre, so they lie inside it); if no ray's first hit belongs to the entity, it is fully hidden
  and omitted;
* the drawer is boxed by its parts outside the cabinet (front, handle, and the pulled-out part).

Text format: ``<locY0><locX0><locY1><locX1> label`` per entity (y_min, x_min, y_max, x_max, each
``min(1023, floor(coordinate / side * 1024))`` of the continuous pixel coordinate in [0, side]),
entities joined by ``" ; "`` as in PaliGemma's multi-object detection outputs; "" when none is visible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlaflow.sim.tabletop.scene import CABINET_HALF, Scene
from vlaflow.tokenizers.base import NUM_LOC_TOKENS

MIN_SIDE_FRACTION = 0.01
MAX_RAYS = 16

Box = tuple[float, float, float, float]
"""(y_min, x_min, y_max, x_max) in pixels."""


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = math.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


_SPHERE = _fibonacci_sphere(48)
_GRID = np.array(
    [(x, y, z) for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1) if (x, y, z) != (0, 0, 0)]
)
_RING = np.stack(
    [
        np.cos(np.linspace(0, 2 * math.pi, 16, endpoint=False)),
        np.sin(np.linspace(0, 2 * math.pi, 16, endpoint=False)),
    ],
    axis=1,
)


def geom_points(gtype: int, size: np.ndarray) -> np.ndarray:
    """Points on the surface of a MuJoCo primitive in its own frame, (N, 3)."""
    import mujoco

    t = mujoco.mjtGeom
    if gtype == t.mjGEOM_BOX:
        return _GRID * size[:3]
    if gtype == t.mjGEOM_SPHERE:
        return _SPHERE * size[0]
    if gtype == t.mjGEOM_ELLIPSOID:
        return _SPHERE * size[:3]
    if gtype == t.mjGEOM_CYLINDER:
        ring = np.concatenate([_RING * size[0], np.zeros((16, 1))], axis=1)
        cap = np.array([0.0, 0.0, size[1]])
        return np.concatenate([ring + cap, ring - cap])
    if gtype == t.mjGEOM_CAPSULE:
        caps = _SPHERE * size[0]
        return caps + np.where(caps[:, 2:] >= 0, 1.0, -1.0) * (0, 0, size[1])
    raise ValueError(f"geom type {gtype} is not supported for annotation")


def loc_value(coordinate: float, side: int) -> int:
    """`<loc>` index of a continuous pixel coordinate in [0, side]."""
    return int(min(NUM_LOC_TOKENS - 1, max(0, math.floor(coordinate / side * NUM_LOC_TOKENS))))


def format_box(box: Box, label: str, height: int, width: int) -> str:
    """``<locY0><locX0><locY1><locX1> label``."""
    y0, x0, y1, x1 = box
    locs = (loc_value(y0, height), loc_value(x0, width), loc_value(y1, height), loc_value(x1, width))
    return "".join(f"<loc{v:04d}>" for v in locs) + f" {label}"


@dataclass(frozen=True)
class CameraView:
    pos: np.ndarray  # (3,)
    rot: np.ndarray  # (3, 3): columns are the camera's x (right), y (up), z (backward) in world frame
    focal: float  # pixels
    height: int
    width: int
    near: float


class Annotator:
    """Projects entities (object names such as "obj0", or fixture names) into the cameras of one model."""

    def __init__(self, model: Any, data: Any, scene: Scene, resolution: int) -> None:
        import mujoco

        self._mj = mujoco
        self.model, self.data, self.scene, self.resolution = model, data, scene, resolution
        m = model
        body_geoms: dict[int, list[int]] = {}
        for g in range(m.ngeom):
            body_geoms.setdefault(int(m.geom_bodyid[g]), []).append(g)

        def subtree(name: str) -> list[int]:
            root = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, name)
            bodies = [b for b in range(m.nbody) if self._descends(b, root)]
            return [g for b in bodies for g in body_geoms.get(b, [])]

        self._geoms = {o.name: subtree(o.name) for o in scene.objects}
        self._geoms.update({f.kind: subtree(f.kind) for f in scene.fixtures if f.kind != "drawer"})
        self._geoms["drawer"] = subtree("drawer_body")
        self._cabinet = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "drawer")
        self._local = {
            g: geom_points(int(m.geom_type[g]), m.geom_size[g]) for gs in self._geoms.values() for g in gs
        }
        self._labels = {name: scene.label(name) for name in self._geoms}

    def _descends(self, body: int, root: int) -> bool:
        while body > 0:
            if body == root:
                return True
            body = int(self.model.body_parentid[body])
        return False

    @property
    def entities(self) -> tuple[str, ...]:
        return tuple(self._geoms)

    def label(self, entity: str) -> str:
        return self._labels[entity]

    def camera(self, name: str) -> CameraView:
        m, d = self.model, self.data
        cam = self._mj.mj_name2id(m, self._mj.mjtObj.mjOBJ_CAMERA, name)
        if cam < 0:
            raise ValueError(f"unknown camera {name!r}")
        focal = 0.5 * self.resolution / math.tan(math.radians(m.cam_fovy[cam]) / 2)
        near = float(m.vis.map.znear * m.stat.extent)
        return CameraView(
            d.cam_xpos[cam].copy(),
            d.cam_xmat[cam].reshape(3, 3).copy(),
            focal,
            self.resolution,
            self.resolution,
            near,
        )

    @staticmethod
    def project(points: np.ndarray, view: CameraView) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (N, 2) as (x, y) with y down, and depth in front of the camera (N,)."""
        local = (np.asarray(points) - view.pos) @ view.rot
        depth = -local[:, 2]
        safe = np.where(depth > 1e-9, depth, 1e-9)
        x = view.width / 2 + view.focal * local[:, 0] / safe
        y = view.height / 2 - view.focal * local[:, 1] / safe
        return np.stack([x, y], axis=1), depth

    def _points(self, entity: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World points, their geom ids and the centres of those geoms."""
        d = self.data
        pts, ids, centres = [], [], []
        for g in self._geoms[entity]:
            rot = d.geom_xmat[g].reshape(3, 3)
            pts.append(self._local[g] @ rot.T + d.geom_xpos[g])
            ids.append(np.full(len(self._local[g]), g))
            centres.append(np.broadcast_to(d.geom_xpos[g], (len(self._local[g]), 3)))
        points, geoms, centre = np.concatenate(pts), np.concatenate(ids), np.concatenate(centres)
        if entity == "drawer":  # only what sticks out of the cabinet
            frame = d.xmat[self._cabinet].reshape(3, 3)
            local_x = (points - d.xpos[self._cabinet]) @ frame[:, 0]
            keep = local_x <= -CABINET_HALF[0] + 0.002
            points, geoms, centre = points[keep], geoms[keep], centre[keep]
        return points, geoms, centre

    def box(self, entity: str, camera: str) -> Box | None:
        """Clipped pixel box of `entity` in `camera`, or None if it is out of view or fully hidden."""
        if entity not in self._geoms:
            raise KeyError(f"unknown entity {entity!r}; entities: {list(self._geoms)}")
        view = self.camera(camera)
        points, geoms, centres = self._points(entity)
        uv, depth = self.project(points, view)
        front = depth > view.near
        if not front.any():
            return None
        uv = uv[front]
        x0, y0 = np.clip(uv.min(axis=0), 0, [view.width, view.height])
        x1, y1 = np.clip(uv.max(axis=0), 0, [view.width, view.height])
        min_side = MIN_SIDE_FRACTION * max(view.width, view.height)
        if x1 - x0 < min_side or y1 - y0 < min_side:
            return None
        if not self._visible(points[front], geoms[front], centres[front], view):
            return None
        return float(y0), float(x0), float(y1), float(x1)

    def _visible(self, points: np.ndarray, geoms: np.ndarray, centres: np.ndarray, view: CameraView) -> bool:
        mj = self._mj
        own = set(geoms.tolist())
        step = max(1, len(points) // MAX_RAYS)
        hit = np.zeros(1, dtype=np.int32)
        for p, c in zip(points[::step], centres[::step], strict=True):
            target = p + 0.15 * (c - p)
            mj.mj_ray(self.model, self.data, view.pos, target - view.pos, None, 1, -1, hit)
            if hit[0] < 0 or int(hit[0]) in own:
                return True
        return False

    def boxes_text(self, entities: Sequence[str], camera: str) -> str:
        """`<loc>` string of the visible `entities` in `camera`, joined by " ; "."""
        parts = []
        for entity in entities:
            box = self.box(entity, camera)
            if box is not None:
                parts.append(format_box(box, self._labels[entity], self.resolution, self.resolution))
        return " ; ".join(parts)
