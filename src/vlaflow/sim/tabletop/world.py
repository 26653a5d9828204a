"""The tabletop world: a gymnasium-style environment around one MuJoCo model per episode.

``TabletopEnv(family=None, split="train", cameras=("scene", "wrist"), resolution=224)``:
``reset(seed) -> obs`` samples an episode (scene + task, `vlaflow.sim.tabletop.tasks`), generates its
MJCF, lets the objects settle and returns the first observation; ``step(action) -> (obs, reward,
terminated, truncated, info)``.

Action (5,) float, clipped: ``[dx, dy, dz, dyaw, grip]`` = the change of the gripper's target position
(metres, world frame, each in [-0.02, 0.02]) and yaw (radians, [-0.2, 0.2]) over one control step, and the
gripper command in [0, 1] (0 fully open, 1 closed: a position target for the fingers, so a grasped object
is squeezed with a bounded force). The target is a mocap body that drags the hand through a weld; it is
kept inside the workspace and within 3 cm of the hand, so a blocked hand does not wind up.

State (5,) float32: ``[x, y, z, yaw, opening]`` = tool centre point (between the finger pads, metres),
hand yaw (radians) and distance between the finger pads (metres, 0..0.11).

Control runs at 20 Hz (`FPS`): one step is 25 physics steps of 2 ms, the mocap target moving linearly
over them. Observations: ``{"state", "images": {camera: uint8 (R, R, 3)}, "prompt", "subtask" (the plan
step in force), "world": WorldState (privileged simulator state, for the scripted expert), "spec":
EpisodeSpec}``. Rendering is offscreen
(``MUJOCO_GL=egl`` by default) without shadows, reflections or multisampling. Reward = task progress in
[0, 1]; ``terminated`` = success (every subtask of the rubric done); ``truncated`` = the episode's step
limit (`EpisodeSpec.max_steps`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from vlaflow.sim.metaworld import track_renderer, untrack_renderer
from vlaflow.sim.tabletop.annotations import Annotator
from vlaflow.sim.tabletop.mjcf import CAMERA_NAMES, FINGER_TRAVEL, HOME, MAX_OPENING, TIMESTEP, scene_xml
from vlaflow.sim.tabletop.scene import Scene, check_split_name
from vlaflow.sim.tabletop.skills import GraspAssist, check_skills
from vlaflow.sim.tabletop.state import WorldState
from vlaflow.sim.tabletop.tasks import FAMILIES, EpisodeSpec, TaskTracker, sample_episode

FPS = 20
SUBSTEPS = round(1 / (FPS * TIMESTEP))
STATE_DIM = 5
ACTION_DIM = 5
STATE_NAMES = ["x", "y", "z", "yaw", "opening"]
ACTION_NAMES = ["dx", "dy", "dz", "dyaw", "grip"]
MAX_DELTA = 0.02
MAX_DYAW = 0.2
ACTION_LOW = np.array([-MAX_DELTA, -MAX_DELTA, -MAX_DELTA, -MAX_DYAW, 0.0], dtype=np.float32)
ACTION_HIGH = np.array([MAX_DELTA, MAX_DELTA, MAX_DELTA, MAX_DYAW, 1.0], dtype=np.float32)
WORKSPACE_LOW = np.array([-0.34, -0.42, 0.0])
WORKSPACE_HIGH = np.array([0.34, 0.42, 0.4])
MAX_LAG = 0.03
_SETTLE_STEPS = 150


def _mujoco() -> Any:
    try:
        import mujoco
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ImportError("the tabletop benchmark needs MuJoCo: pip install 'vlaflow[sim]'") from err
    return mujoco


def _check_cameras(cameras: Sequence[str]) -> tuple[str, ...]:
    if isinstance(cameras, str):
        raise TypeError(f"cameras must be a sequence of camera names, got the string {cameras!r}")
    unknown = [c for c in cameras if c not in CAMERA_NAMES]
    if unknown:
        raise ValueError(f"unknown camera(s) {unknown}; available: {list(CAMERA_NAMES)}")
    return tuple(cameras)


class TabletopWorld:
    """One scene in MuJoCo: physics stepping, cameras, and the privileged state."""

    def __init__(self, scene: Scene, *, cameras: Sequence[str], resolution: int, skills: str = "physical"):
        mujoco = _mujoco()
        self._mj = mujoco
        self.scene = scene
        self.cameras = _check_cameras(cameras)
        self.resolution = resolution
        self.skills = check_skills(skills)
        self.model = mujoco.MjModel.from_xml_string(scene_xml(scene, skills))
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._body = {
            name: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, name)
            for name in ("hand", "mocap", "box_handle", *(o.name for o in scene.objects))
        }
        self._mocap = int(m.body_mocapid[self._body["mocap"]])
        self._qadr = {
            j: int(m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, j)])
            for j in ("drawer_slide", "box_hinge", "finger_l", "finger_r")
        }
        self._handle_geom = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "box_handle")
        fingers = {mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, f) for f in ("finger_l", "finger_r")}
        self._finger_of_geom = {
            g: int(m.geom_bodyid[g]) for g in range(m.ngeom) if m.geom_bodyid[g] in fingers
        }
        self._object_of_body = {self._body[o.name]: o.name for o in scene.objects}
        self.data.qpos[self._qadr["drawer_slide"]] = scene.drawer_opening
        self.data.qpos[self._qadr["box_hinge"]] = scene.lid_angle
        self.target = np.array(HOME, dtype=float)
        self.target_yaw = 0.0
        self.grip = 0.0
        mujoco.mj_forward(m, self.data)
        self.settle()
        names = [o.name for o in scene.objects]
        self.assist = GraspAssist(mujoco, m, self.data, names) if self.skills == "assisted" else None
        self.annotator = Annotator(m, self.data, scene, resolution)
        self._renderer = self._make_renderer() if self.cameras else None

    def _make_renderer(self) -> Any:
        """Offscreen renderer; the model itself turns shadows and multisampling off (fast on a CPU)."""
        mujoco, vis = self._mj, self.model.vis.global_
        vis.offwidth, vis.offheight = max(vis.offwidth, self.resolution), max(vis.offheight, self.resolution)
        try:
            renderer = mujoco.Renderer(self.model, self.resolution, self.resolution)
        except mujoco.FatalError as err:
            raise RuntimeError(
                f"cannot create a MuJoCo GL context (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}): {err}. "
                "Set MUJOCO_GL to egl or osmesa before mujoco is first imported."
            ) from err
        track_renderer(renderer)
        return renderer

    def step(self, action: np.ndarray) -> None:
        """Apply one clipped action (see the module docstring) over `SUBSTEPS` physics steps."""
        mujoco, m, d = self._mj, self.model, self.data
        tcp = d.xpos[self._body["hand"]]
        start, start_yaw = self.target.copy(), self.target_yaw
        goal = np.clip(start + action[:3], WORKSPACE_LOW, WORKSPACE_HIGH)
        goal = tcp + np.clip(goal - tcp, -MAX_LAG, MAX_LAG)
        goal_yaw = float(np.clip(start_yaw + action[3], -math.pi, math.pi))
        self.grip = float(action[4])
        d.ctrl[:] = self.grip * FINGER_TRAVEL
        if self.assist is not None:
            self.assist.update(self.grip, self._opening())
        for k in range(1, SUBSTEPS + 1):
            a = k / SUBSTEPS
            d.mocap_pos[self._mocap] = (1 - a) * start + a * goal
            yaw = (1 - a) * start_yaw + a * goal_yaw
            d.mocap_quat[self._mocap] = (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))
            mujoco.mj_step(m, d)
        self.target, self.target_yaw = goal, goal_yaw

    def state(self) -> WorldState:
        m, d = self.model, self.data
        hand = self._body["hand"]
        quat = d.xquat[hand]
        yaw = math.atan2(2 * (quat[0] * quat[3] + quat[1] * quat[2]), 1 - 2 * (quat[2] ** 2 + quat[3] ** 2))
        touching: dict[str, set[int]] = {}
        for g1, g2 in d.contact.geom[: d.ncon].tolist():
            for g, other in ((g1, g2), (g2, g1)):
                finger = self._finger_of_geom.get(g)
                obj = self._object_of_body.get(int(m.geom_bodyid[other]))
                if finger is not None and obj is not None:
                    touching.setdefault(obj, set()).add(finger)
        names = [o.name for o in self.scene.objects]
        return WorldState(
            tcp=d.xpos[hand].copy(),
            yaw=yaw,
            opening=self._opening(),
            target=self.target.copy(),
            target_yaw=self.target_yaw,
            positions={n: d.xpos[self._body[n]].copy() for n in names},
            rotations={n: d.xmat[self._body[n]].reshape(3, 3).copy() for n in names},
            drawer=float(d.qpos[self._qadr["drawer_slide"]]),
            lid=float(d.qpos[self._qadr["box_hinge"]]),
            handle=d.geom_xpos[self._handle_geom].copy(),
            grasped=frozenset(o for o, f in touching.items() if len(f) == 2) | self._attached_object(),
        )

    def _opening(self) -> float:
        """Distance between the finger pads (metres)."""
        qpos = self.data.qpos
        return float(MAX_OPENING - qpos[self._qadr["finger_l"]] - qpos[self._qadr["finger_r"]])

    def _attached_object(self) -> frozenset[str]:
        held = self.assist.held if self.assist is not None else None
        return frozenset((held,)) if held in self._body and held.startswith("obj") else frozenset()

    def set_object_pose(self, name: str, pos: Sequence[float], yaw: float) -> None:
        """Teleport an object (its free joint) to `pos` with `yaw`, at rest."""
        mujoco, m, d = self._mj, self.model, self.data
        joint = int(m.body_jntadr[self._body[name]])
        qpos, qvel = int(m.jnt_qposadr[joint]), int(m.jnt_dofadr[joint])
        d.qpos[qpos : qpos + 7] = [*pos, math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]
        d.qvel[qvel : qvel + 6] = 0.0
        mujoco.mj_forward(m, d)

    def set_articulations(self, drawer: float, lid: float) -> None:
        """Set the drawer opening (metres) and the lid angle (radians)."""
        self.data.qpos[self._qadr["drawer_slide"]] = drawer
        self.data.qpos[self._qadr["box_hinge"]] = lid
        self._mj.mj_forward(self.model, self.data)

    def set_gripper(self, pos: Sequence[float], yaw: float, grip: float) -> None:
        """Teleport the gripper (hand and mocap target) to `pos` / `yaw` with finger command `grip`."""
        m, d = self.model, self.data
        joint = int(m.body_jntadr[self._body["hand"]])
        qpos, qvel = int(m.jnt_qposadr[joint]), int(m.jnt_dofadr[joint])
        quat = [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]
        d.qpos[qpos : qpos + 7] = [*pos, *quat]
        d.qvel[qvel : qvel + 6] = 0.0
        d.mocap_pos[self._mocap], d.mocap_quat[self._mocap] = pos, quat
        self.target, self.target_yaw, self.grip = np.array(pos, dtype=float), yaw, grip
        d.ctrl[:] = grip * FINGER_TRAVEL
        self._mj.mj_forward(m, d)

    def settle(self, substeps: int = _SETTLE_STEPS) -> None:
        """Let physics run with the controls held (objects come to rest)."""
        for _ in range(substeps):
            self._mj.mj_step(self.model, self.data)

    def proprio(self, world: WorldState) -> np.ndarray:
        return np.array([*world.tcp, world.yaw, world.opening], dtype=np.float32)

    def render(self) -> dict[str, np.ndarray]:
        images = {}
        if self._renderer is not None:
            for cam in self.cameras:
                self._renderer.update_scene(self.data, camera=cam)
                images[cam] = self._renderer.render().copy()
        return images

    def segmentation(self, camera: str) -> np.ndarray:
        """(R, R) int32 geom id seen at each pixel of `camera` (-1: background), for checking annotations."""
        if self._renderer is None or camera not in self.cameras:
            raise ValueError(f"camera {camera!r} is not rendered; cameras: {list(self.cameras)}")
        self._renderer.enable_segmentation_rendering()
        try:
            self._renderer.update_scene(self.data, camera=camera)
            seg = self._renderer.render()
        finally:
            self._renderer.disable_segmentation_rendering()
        objtype = self._mj.mjtObj.mjOBJ_GEOM
        return np.where(seg[..., 1] == objtype, seg[..., 0], -1).astype(np.int32)

    def boxes(self, entities: Sequence[str], cameras: Sequence[str] | None = None) -> dict[str, str]:
        """`<loc>` box strings of `entities` per camera (see `vlaflow.sim.tabletop.annotations`)."""
        return {cam: self.annotator.boxes_text(entities, cam) for cam in (cameras or self.cameras)}

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            untrack_renderer(self._renderer)
            self._renderer = None


class TabletopEnv:
    """Gymnasium-style tabletop environment: one sampled episode (scene + task) per `reset`.

    `family` fixes the task family (None: drawn from the seed among the long-horizon families);
    `split` picks the scene distribution ("train" or "ood"). The MuJoCo model is rebuilt at every reset
    (scenes differ in their objects), which takes ~0.1-0.2 s with the renderer.
    """

    def __init__(
        self,
        family: str | None = None,
        *,
        split: str = "train",
        cameras: Sequence[str] = ("scene", "wrist"),
        resolution: int = 224,
        skills: str = "physical",
    ) -> None:
        if family is not None and family not in FAMILIES:
            raise ValueError(f"family must be None or one of {FAMILIES}, got {family!r}")
        check_split_name(split)
        if not isinstance(resolution, int) or resolution < 16:
            raise ValueError(f"resolution must be an int >= 16, got {resolution!r}")
        self.family = family
        self.split = split
        self.cameras = _check_cameras(cameras)
        self.resolution = resolution
        self.skills = check_skills(skills)
        self.render_images = True  # False: observations carry no images (policies that read `world`)
        self.world: TabletopWorld | None = None
        self.spec: EpisodeSpec | None = None
        self.tracker: TaskTracker | None = None
        self._steps = 0
        self._last: WorldState | None = None

    def reset(self, seed: int | None = None, *, spec: EpisodeSpec | None = None) -> dict[str, Any]:
        """Start an episode: `spec` if given, else the one `sample_episode` draws for `seed` (default 0)."""
        if spec is None:
            if seed is not None and (not isinstance(seed, int) or seed < 0):
                raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
            spec = sample_episode(0 if seed is None else seed, family=self.family, split=self.split)
        if self.world is not None:
            self.world.close()
        self.spec = spec
        self.world = TabletopWorld(
            spec.scene, cameras=self.cameras, resolution=self.resolution, skills=self.skills
        )
        self._last = self.world.state()
        self.tracker = TaskTracker(spec, self._last)
        self._steps = 0
        return self._observe()

    @property
    def prompt(self) -> str:
        """The instruction now in force: the task's prompt, or for verbal-instruction sessions the
        command being executed (the next one is issued when the current one is done)."""
        assert self.spec is not None, "call reset() first"
        return self.subtask if self.spec.family == "verbal" else self.spec.prompt

    @property
    def subtask(self) -> str:
        """The step of the plan in force (the first one not done yet; the last once all are): the
        subtask the scripted expert reports when it is not recovering, what `oracle` mode conditions
        on and what a predicted subtask is scored against."""
        assert self.spec is not None and self.tracker is not None, "call reset() first"
        return self.spec.subtasks[min(self.tracker.current, len(self.spec.subtasks) - 1)].text

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self.world is None or self.spec is None or self.tracker is None:
            raise RuntimeError("call reset() before step()")
        if self._steps >= self.spec.max_steps:
            raise RuntimeError(f"episode is over (max_steps={self.spec.max_steps}); call reset()")
        act = np.asarray(action, dtype=np.float64)
        if act.shape != (ACTION_DIM,):
            raise ValueError(f"action must have shape ({ACTION_DIM},) = {ACTION_NAMES}, got {act.shape}")
        if not np.all(np.isfinite(act)):
            raise ValueError(f"action must be finite, got {act}")
        self.world.step(np.clip(act, ACTION_LOW, ACTION_HIGH))
        self._steps += 1
        self._last = self.world.state()
        self.tracker.update(self._last)
        info = self.tracker.summary()
        truncated = self._steps >= self.spec.max_steps
        return self._observe(), float(info["progress"]), bool(info["success"]), truncated, info

    def _observe(self) -> dict[str, Any]:
        assert self.world is not None and self._last is not None
        return {
            "state": self.world.proprio(self._last),
            "images": self.world.render() if self.render_images else {},
            "prompt": self.prompt,
            "subtask": self.subtask,
            "world": self._last,
            "spec": self.spec,
        }

    def boxes(self, entities: Sequence[str]) -> dict[str, str]:
        """`<loc>` boxes of `entities` in every camera of the current frame."""
        if self.world is None:
            raise RuntimeError("call reset() first")
        return self.world.boxes(entities)

    @property
    def steps(self) -> int:
        return self._steps

    def close(self) -> None:
        if self.world is not None:
            self.world.close()
            self.world = None

    def __enter__(self) -> TabletopEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
