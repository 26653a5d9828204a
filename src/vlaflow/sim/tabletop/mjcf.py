"""The MuJoCo model of a scene, generated as MJCF text from code (no asset files).

The gripper is a free-floating parallel gripper: a mocap body drags the hand through a weld
constraint (so contacts and held loads never meet an infinitely stiff body), the hand and fingers are
gravity-compensated, and each finger is a slide joint with a force-limited position actuator. Grasps
are physical (friction between the finger pads and the object): pads use elliptic friction cones with
torsional friction (condim 4), and the solver's `impratio` is raised so held objects do not creep.
"""

from __future__ import annotations

import math
from xml.sax.saxutils import quoteattr

import numpy as np

from vlaflow.sim.tabletop.scene import (
    BIN_HALF,
    BIN_HEIGHT,
    BOWL_HEIGHT,
    BOWL_RADIUS,
    BOWL_SEGMENTS,
    BOX_HALF,
    BOX_HANDLE_ARM,
    BOX_HANDLE_HALF,
    BOX_HEIGHT,
    BOX_LID_OVERHANG,
    BOX_LID_RANGE,
    BOX_LID_THICKNESS,
    CABINET_HALF,
    CABINET_HEIGHT,
    COLOURS,
    DRAWER_FLOOR,
    DRAWER_HANDLE_DEPTH,
    DRAWER_HANDLE_Z,
    DRAWER_INNER_HALF,
    DRAWER_TRAVEL,
    DRAWER_WALL_TOP,
    TRAY_HALF,
    TRAY_HEIGHT,
    WALL,
    FixtureSpec,
    GeomSpec,
    ObjectSpec,
    Scene,
)
from vlaflow.sim.tabletop.skills import PROBE, attach_name, attachable_bodies, check_skills

TIMESTEP = 0.002
FINGER_TRAVEL = 0.056  # per finger, metres: fully open (0) to fingers touching
MAX_OPENING = 0.11  # distance between the finger pads when fully open
FINGER_HALF = (0.012, 0.006, 0.041)  # finger box half-sizes in the hand frame (x, y, z)
FINGER_Z = 0.029  # finger box centre above the tool centre point: pads span TCP-0.012 .. TCP+0.07
HOME = (-0.12, 0.0, 0.25)
TABLE_HALF = (0.4, 0.52)
HANDLE_BLOCK_DROP = 0.024  # handle block centre below its pivot

CAMERAS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], float]] = {
    "scene": ((-0.66, 0.0, 0.62), (0.02, 0.0, 0.0), 52.0),
    "side": ((0.02, -0.78, 0.52), (0.02, 0.02, 0.02), 50.0),
}
"""Static cameras: name -> (position, look-at point, vertical field of view in degrees)."""
WRIST_CAMERA = ((-0.075, 0.0, 0.13), (0.06, 0.0, -0.06), 75.0)  # in the hand frame
CAMERA_NAMES: tuple[str, ...] = ("scene", "side", "wrist")

_TABLE_RGBA = (0.62, 0.47, 0.33, 1)
_CABINET_RGBA = (0.86, 0.84, 0.8, 1)
_DRAWER_RGBA = (0.35, 0.5, 0.62, 1)
_BOX_RGBA = (0.55, 0.36, 0.22, 1)
_LID_RGBA = (0.62, 0.42, 0.26, 1)
_METAL_RGBA = (0.72, 0.72, 0.74, 1)
_BIN_RGBA = (0.28, 0.3, 0.34, 1)
_BOWL_RGBA = (0.88, 0.8, 0.66, 1)
_TRAY_RGBA = (0.2, 0.2, 0.22, 1)
_GRIPPER_RGBA = (0.3, 0.3, 0.32, 1)
_FINGER_RGBA = (0.78, 0.78, 0.8, 1)


def look_at(pos: tuple[float, ...], target: tuple[float, ...]) -> str:
    """MJCF `xyaxes` of a camera at `pos` looking at `target` with +z up (image right, image up)."""
    forward = np.subtract(target, pos, dtype=float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return _vec(tuple(right) + tuple(up))


def _vec(values: tuple[float, ...]) -> str:
    return " ".join(f"{v:.6g}" for v in values)


def _rgba(rgba: tuple[float, ...]) -> str:
    return _vec(tuple(rgba))


def _geom(
    name: str | None,
    gtype: str,
    size: tuple[float, ...],
    pos: tuple[float, ...] = (0, 0, 0),
    rgba: tuple[float, ...] = (1, 1, 1, 1),
    *,
    euler: tuple[float, ...] = (0, 0, 0),
    collide: bool = True,
    extra: str = "",
) -> str:
    attrs = f'type="{gtype}" size="{_vec(size)}" pos="{_vec(pos)}" rgba="{_rgba(rgba)}"'
    if any(euler):
        attrs += f' euler="{_vec(euler)}"'
    if name:
        attrs += f" name={quoteattr(name)}"
    if not collide:
        attrs += ' class="visual"'
    return f"<geom {attrs} {extra}/>"


def _box_walls(prefix: str, half: tuple[float, float], height: float, rgba: tuple[float, ...]) -> list[str]:
    """Floor and four walls of an open box centred on the body origin, standing on z = 0."""
    hx, hy = half
    return [
        _geom(f"{prefix}_floor", "box", (hx, hy, WALL / 2), (0, 0, WALL / 2), rgba),
        _geom(f"{prefix}_wall_px", "box", (WALL / 2, hy, height / 2), (hx - WALL / 2, 0, height / 2), rgba),
        _geom(f"{prefix}_wall_nx", "box", (WALL / 2, hy, height / 2), (-hx + WALL / 2, 0, height / 2), rgba),
        _geom(f"{prefix}_wall_py", "box", (hx, WALL / 2, height / 2), (0, hy - WALL / 2, height / 2), rgba),
        _geom(f"{prefix}_wall_ny", "box", (hx, WALL / 2, height / 2), (0, -hy + WALL / 2, height / 2), rgba),
    ]


def _fixture_body(f: FixtureSpec, inner: list[str]) -> str:
    return (
        f'<body name="{f.kind}" pos="{_vec((f.x, f.y, 0))}" euler="0 0 {f.yaw:.6g}">'
        + "".join(inner)
        + "</body>"
    )


def _bin(f: FixtureSpec) -> str:
    return _fixture_body(f, _box_walls("bin", BIN_HALF, BIN_HEIGHT, _BIN_RGBA))


def _tray(f: FixtureSpec) -> str:
    return _fixture_body(f, _box_walls("tray", TRAY_HALF, TRAY_HEIGHT, _TRAY_RGBA))


def _bowl(f: FixtureSpec) -> str:
    half_chord = BOWL_RADIUS * math.tan(math.pi / BOWL_SEGMENTS) + 0.001
    parts = [_geom("bowl_floor", "cylinder", (BOWL_RADIUS - WALL, WALL / 2), (0, 0, WALL / 2), _BOWL_RGBA)]
    for k in range(BOWL_SEGMENTS):
        a = 2 * math.pi * k / BOWL_SEGMENTS
        r = BOWL_RADIUS - WALL / 2
        parts.append(
            _geom(
                f"bowl_wall{k}",
                "box",
                (WALL / 2, half_chord, BOWL_HEIGHT / 2),
                (r * math.cos(a), r * math.sin(a), BOWL_HEIGHT / 2),
                _BOWL_RGBA,
                euler=(0, 0, a),
            )
        )
    return _fixture_body(f, parts)


def _drawer(f: FixtureSpec) -> str:
    """A cabinet with one drawer sliding out towards the robot (local -x), handle bar in front."""
    hx, hy = CABINET_HALF
    h, t = CABINET_HEIGHT, 0.012
    ix, iy = DRAWER_INNER_HALF
    carcass = [
        _geom("cabinet_bottom", "box", (hx, hy, t / 2), (0, 0, t / 2), _CABINET_RGBA),
        _geom("cabinet_top", "box", (hx, hy, t / 2), (0, 0, h - t / 2), _CABINET_RGBA),
        _geom("cabinet_side_l", "box", (hx, t / 2, h / 2), (0, hy - t / 2, h / 2), _CABINET_RGBA),
        _geom("cabinet_side_r", "box", (hx, t / 2, h / 2), (0, -hy + t / 2, h / 2), _CABINET_RGBA),
        _geom("cabinet_back", "box", (t / 2, hy, h / 2), (hx - t / 2, 0, h / 2), _CABINET_RGBA),
    ]
    wall_h = (DRAWER_WALL_TOP - DRAWER_FLOOR) / 2 + 0.004
    wall_z = (DRAWER_WALL_TOP + DRAWER_FLOOR) / 2 - 0.004
    front_x = -hx + t / 2
    handle_x = -hx - DRAWER_HANDLE_DEPTH
    drawer = [
        _geom("drawer_floor", "box", (ix + 0.006, iy, 0.004), (0, 0, DRAWER_FLOOR - 0.004), _DRAWER_RGBA),
        _geom("drawer_side_l", "box", (ix + 0.006, 0.004, wall_h), (0, iy + 0.004, wall_z), _DRAWER_RGBA),
        _geom("drawer_side_r", "box", (ix + 0.006, 0.004, wall_h), (0, -iy - 0.004, wall_z), _DRAWER_RGBA),
        _geom("drawer_back", "box", (0.004, iy, wall_h), (ix + 0.004, 0, wall_z), _DRAWER_RGBA),
        _geom(
            "drawer_front", "box", (t / 2, hy - t, (h - 2 * t) / 2 - 0.002), (front_x, 0, h / 2), _DRAWER_RGBA
        ),
        _geom(
            "drawer_post_l",
            "box",
            (DRAWER_HANDLE_DEPTH / 2, 0.005, 0.006),
            (-hx - DRAWER_HANDLE_DEPTH / 2, 0.045, DRAWER_HANDLE_Z),
            _METAL_RGBA,
        ),
        _geom(
            "drawer_post_r",
            "box",
            (DRAWER_HANDLE_DEPTH / 2, 0.005, 0.006),
            (-hx - DRAWER_HANDLE_DEPTH / 2, -0.045, DRAWER_HANDLE_Z),
            _METAL_RGBA,
        ),
        _geom(
            "drawer_handle",
            "capsule",
            (0.007, 0.05),
            (handle_x, 0, DRAWER_HANDLE_Z),
            _METAL_RGBA,
            euler=(math.pi / 2, 0, 0),
        ),
    ]
    # The drawer's front panel is flush with the cabinet when closed; the inside ends at ix (local x).
    joint = (
        f'<joint name="drawer_slide" type="slide" axis="-1 0 0" range="0 {DRAWER_TRAVEL}" damping="6" '
        'frictionloss="0.4" armature="0.05"/>'
    )
    inner = [*carcass, f'<body name="drawer_body" pos="{_vec((-0.002, 0, 0))}">', joint, *drawer, "</body>"]
    return _fixture_body(f, inner)


def _box(f: FixtureSpec) -> str:
    """A toy chest whose lid hinges at its back edge; a handle block swings freely under the lid's front."""
    hx, hy = BOX_HALF
    carcass = [
        _geom("box_floor", "box", (hx, hy, 0.005), (0, 0, 0.005), _BOX_RGBA),
        _geom(
            "box_wall_front", "box", (0.005, hy, BOX_HEIGHT / 2), (-hx + 0.005, 0, BOX_HEIGHT / 2), _BOX_RGBA
        ),
        _geom(
            "box_wall_back", "box", (0.005, hy, BOX_HEIGHT / 2), (hx - 0.005, 0, BOX_HEIGHT / 2), _BOX_RGBA
        ),
        _geom("box_wall_l", "box", (hx, 0.005, BOX_HEIGHT / 2), (0, hy - 0.005, BOX_HEIGHT / 2), _BOX_RGBA),
        _geom("box_wall_r", "box", (hx, 0.005, BOX_HEIGHT / 2), (0, -hy + 0.005, BOX_HEIGHT / 2), _BOX_RGBA),
    ]
    lid_len = 2 * hx + BOX_LID_OVERHANG
    th = BOX_LID_THICKNESS
    hb = BOX_HANDLE_HALF
    lid = [
        f'<body name="box_lid" pos="{_vec((hx, 0, BOX_HEIGHT))}">',
        f'<joint name="box_hinge" type="hinge" axis="0 1 0" range="0 {BOX_LID_RANGE}" damping="0.08" '
        'armature="0.002"/>',
        _geom("box_lid", "box", (lid_len / 2, hy + 0.004, th / 2), (-lid_len / 2, 0, th / 2), _LID_RGBA),
        _geom(
            "box_arm",
            "box",
            (BOX_HANDLE_ARM / 2, 0.005, 0.004),
            (-lid_len - BOX_HANDLE_ARM / 2, 0, th / 2),
            _METAL_RGBA,
        ),
        f'<body name="box_handle" pos="{_vec((-lid_len - BOX_HANDLE_ARM, 0, th / 2))}">',
        '<joint name="box_handle_pivot" type="hinge" axis="0 1 0" damping="0.0005"/>',
        _geom(
            "box_knuckle",
            "cylinder",
            (0.006, 0.01),
            (0, 0, 0),
            _METAL_RGBA,
            euler=(math.pi / 2, 0, 0),
            collide=False,
        ),
        _geom("box_handle", "box", hb, (0, 0, -HANDLE_BLOCK_DROP), _METAL_RGBA, extra='density="800"'),
        "</body>",
        "</body>",
    ]
    return _fixture_body(f, [*carcass, *lid])


_FIXTURE_BUILDERS = {"bin": _bin, "bowl": _bowl, "tray": _tray, "drawer": _drawer, "box": _box}


def _object(o: ObjectSpec) -> str:
    kind = o.kind
    colour = (*COLOURS[o.colour], 1.0)
    z = kind.half_extents[2] + 0.001
    parts = [f'<body name="{o.name}" pos="{_vec((o.x, o.y, z))}" euler="0 0 {o.yaw:.6g}">', "<freejoint/>"]
    for i, g in enumerate(kind.geoms):
        parts.append(_object_geom(f"{o.name}_g{i}", g, colour, kind.density))
    parts.append("</body>")
    return "".join(parts)


def _object_geom(name: str, g: GeomSpec, colour: tuple[float, ...], density: float) -> str:
    rgba = g.rgba or colour
    # Rolling friction (condim 6) keeps round things (fruit, markers) from creeping across the table.
    extra = f'density="{density}" friction="1.0 0.01 0.002" condim="6"' if g.collide else ""
    return _geom(name, g.type, g.size, g.pos, rgba, euler=g.euler, collide=g.collide, extra=extra)


_PROBE_GEOM = (
    f'<geom name="{PROBE}" type="sphere" size="0.0005" contype="0" conaffinity="0" group="5" mass="0"/>'
)
"""A point at the tool centre point that touches nothing (distances for the assisted grasp)."""


def _gripper(assisted: bool) -> str:
    fy = FINGER_HALF[1]
    y0 = MAX_OPENING / 2 + fy
    finger_extra = 'friction="1.6 0.02 0.001" condim="4" density="600"'
    cam_pos, cam_target, cam_fovy = WRIST_CAMERA
    wrist_axes = look_at(cam_pos, cam_target)
    slide = f'type="slide" range="0 {FINGER_TRAVEL}" damping="8" armature="0.01"'
    return (
        f'<body name="mocap" mocap="true" pos="{_vec(HOME)}"/>'
        f'<body name="hand" pos="{_vec(HOME)}" gravcomp="1">'
        '<freejoint name="hand_free"/>'
        '<inertial pos="0 0 0.08" mass="0.4" diaginertia="0.002 0.002 0.002"/>'
        + _geom("palm", "box", (0.022, y0 + fy, 0.01), (0, 0, 0.08), _GRIPPER_RGBA, collide=False)
        + _geom("wrist_link", "cylinder", (0.02, 0.04), (0, 0, 0.13), _GRIPPER_RGBA, collide=False)
        + f'<camera name="wrist" pos="{_vec(cam_pos)}" xyaxes="{wrist_axes}" fovy="{cam_fovy}"/>'
        + '<site name="tcp" pos="0 0 0" size="0.003" group="5"/>'
        + (_PROBE_GEOM if assisted else "")
        + f'<body name="finger_l" pos="0 {y0:.6g} 0" gravcomp="1">'
        f'<joint name="finger_l" axis="0 -1 0" {slide}/>'
        + _geom("finger_l", "box", FINGER_HALF, (0, 0, FINGER_Z), _FINGER_RGBA, extra=finger_extra)
        + "</body>"
        f'<body name="finger_r" pos="0 {-y0:.6g} 0" gravcomp="1">'
        f'<joint name="finger_r" axis="0 1 0" {slide}/>'
        + _geom("finger_r", "box", FINGER_HALF, (0, 0, FINGER_Z), _FINGER_RGBA, extra=finger_extra)
        + "</body></body>"
    )


def scene_xml(scene: Scene, skills: str = "physical") -> str:
    """MJCF text of `scene` (deterministic: the same scene gives the same text). `skills="assisted"`
    adds the inactive welds and the probe of `vlaflow.sim.tabletop.skills.GraspAssist`."""
    assisted = check_skills(skills) == "assisted"
    welds = "".join(
        f'<weld name="{attach_name(entity)}" body1="hand" body2="{body}" active="false" solref="0.01 1"/>'
        for entity, body in attachable_bodies([o.name for o in scene.objects]).items()
        if assisted
    )
    static_cams = "".join(
        f'<camera name="{name}" pos="{_vec(pos)}" xyaxes="{look_at(pos, target)}" fovy="{fovy}"/>'
        for name, (pos, target, fovy) in CAMERAS.items()
    )
    tx, ty = TABLE_HALF
    actuator = "".join(
        f'<position name="{j}" joint="{j}" kp="900" ctrlrange="0 {FINGER_TRAVEL}" forcerange="-22 22"/>'
        for j in ("finger_l", "finger_r")
    )
    return f"""<mujoco model="tabletop">
<compiler angle="radian" autolimits="true"/>
<option timestep="{TIMESTEP}" integrator="implicitfast" cone="elliptic" impratio="10"/>
<visual>
  <global offwidth="640" offheight="640"/>
  <quality shadowsize="0" offsamples="0" numslices="12" numstacks="6" numquads="1"/>
  <headlight ambient="0.42 0.42 0.42" diffuse="0.45 0.45 0.45" specular="0.05 0.05 0.05"/>
</visual>
<default>
  <geom solref="0.005 1" solimp="0.95 0.99 0.001" friction="0.8 0.005 0.0001"/>
  <default class="visual"><geom contype="0" conaffinity="0" group="1" mass="0"/></default>
</default>
<worldbody>
  <light name="key" pos="-0.4 -0.3 1.6" dir="0.25 0.2 -1" directional="true" castshadow="false"
         diffuse="0.5 0.5 0.5"/>
  <geom name="floor" type="box" size="3 3 0.01" pos="0 0 -0.76" rgba="0.4 0.4 0.42 1"/>
  <geom name="wall_back" type="box" size="0.01 3 1.2" pos="1.2 0 0.4" rgba="0.72 0.74 0.78 1"/>
  <geom name="wall_left" type="box" size="3 0.01 1.2" pos="0 1.3 0.4" rgba="0.76 0.74 0.7 1"/>
  <geom name="table" type="box" size="{tx} {ty} 0.025" pos="0 0 -0.025" rgba="{_rgba(_TABLE_RGBA)}"/>
  {static_cams}
  {_gripper(assisted)}
  {"".join(_FIXTURE_BUILDERS[f.kind](f) for f in scene.fixtures)}
  {"".join(_object(o) for o in scene.objects)}
</worldbody>
<contact>
  <exclude body1="drawer" body2="drawer_body"/>
  <exclude body1="box" body2="box_lid"/>
  <exclude body1="box" body2="box_handle"/>
  <exclude body1="box_lid" body2="box_handle"/>
</contact>
<equality><weld body1="mocap" body2="hand" solref="0.01 1"/>{welds}</equality>
<actuator>{actuator}</actuator>
</mujoco>
"""
