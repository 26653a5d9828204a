"""What a tabletop scene is made of: object vocabulary, fixtures, layouts, and the train / OOD splits.

Coordinates: metres, world frame with the table top at z = 0, +x pointing away from the robot (which
looks at the table from -x), +y to the robot's left. Every fixture faces the robot: its front is its
local -x side. A scene is pure data (frozen dataclasses); `vlaflow.sim.tabletop.mjcf` turns it into a
MuJoCo model and `vlaflow.sim.tabletop.tasks` decides what to do in it.

Splits measure generalization. The OOD split uses only `HELD_OUT_LAYOUTS` and makes at least one object
the prompt names a `HELD_OUT_COMBOS` (category, colour) pair; the training split never contains
either (`check_split` is the invariant every sampled episode passes).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SPLITS: tuple[str, ...] = ("train", "ood")

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.15, 0.68, 0.22),
    "blue": (0.16, 0.34, 0.88),
    "yellow": (0.96, 0.84, 0.12),
    "orange": (0.98, 0.52, 0.08),
    "purple": (0.56, 0.24, 0.76),
    "pink": (0.98, 0.52, 0.72),
    "white": (0.94, 0.94, 0.92),
    "black": (0.09, 0.09, 0.1),
}


@dataclass(frozen=True)
class GeomSpec:
    """One primitive of an object, in the object's frame (origin at the centre of its collision box)."""

    type: str  # MuJoCo geom type: box, sphere, cylinder, capsule, ellipsoid
    size: tuple[float, ...]
    pos: tuple[float, float, float] = (0.0, 0.0, 0.0)
    euler: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rgba: tuple[float, float, float, float] | None = None  # None: the object's colour
    collide: bool = True


@dataclass(frozen=True)
class Category:
    """An object kind: its group (what prompts call it collectively), colours, shape and how to grasp it.

    `half_extents` bounds the collision geometry; `grasp` lists (yaw offset, width): closing the fingers
    along the object's local y axis rotated by the offset meets a width of `width` metres (an empty
    tuple means any yaw, width = 2 * half_extents[0]).
    """

    name: str
    group: str
    colours: tuple[str, ...]
    geoms: tuple[GeomSpec, ...]
    half_extents: tuple[float, float, float]
    grasp: tuple[tuple[float, float], ...] = ()
    density: float = 400.0

    @property
    def radius(self) -> float:
        """Radius of the footprint (for spacing objects and fixtures)."""
        return math.hypot(self.half_extents[0], self.half_extents[1])

    @property
    def long_extent(self) -> float:
        """Longest horizontal size; what must fit across a drawer or box when placed there."""
        return 2 * max(self.half_extents[0], self.half_extents[1])

    def grasp_options(self) -> tuple[tuple[float, float], ...]:
        return self.grasp or ((0.0, 2 * self.half_extents[0]),)


_DARK = (0.18, 0.14, 0.1, 1.0)
_CUP_COLOURS = ("red", "green", "blue", "yellow", "white", "purple", "orange", "pink")

CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in (
        Category(
            "cup",
            "dishes",
            _CUP_COLOURS,
            (
                GeomSpec("cylinder", (0.027, 0.04)),
                GeomSpec("cylinder", (0.022, 0.0012), (0, 0, 0.04), rgba=(0.25, 0.22, 0.2, 1), collide=False),
            ),
            (0.027, 0.027, 0.04),
            density=300,
        ),
        Category(
            "mug",
            "dishes",
            _CUP_COLOURS,
            (
                GeomSpec("cylinder", (0.03, 0.034)),
                GeomSpec(
                    "cylinder", (0.025, 0.0012), (0, 0, 0.034), rgba=(0.25, 0.22, 0.2, 1), collide=False
                ),
                GeomSpec("box", (0.004, 0.005, 0.02), (0.042, 0, 0), collide=False),
                GeomSpec("box", (0.007, 0.005, 0.004), (0.035, 0, 0.017), collide=False),
                GeomSpec("box", (0.007, 0.005, 0.004), (0.035, 0, -0.017), collide=False),
            ),
            (0.03, 0.03, 0.034),
            grasp=((0.0, 0.06),),
            density=300,
        ),
        Category(
            "plate",
            "dishes",
            ("white", "blue", "green", "red", "yellow", "pink"),
            (
                GeomSpec("cylinder", (0.046, 0.006)),
                GeomSpec(
                    "cylinder", (0.032, 0.0008), (0, 0, 0.006), rgba=(0.97, 0.97, 0.95, 1), collide=False
                ),
            ),
            (0.046, 0.046, 0.006),
            density=300,
        ),
        Category(
            "apple",
            "fruit",
            ("red", "green", "yellow"),
            (
                GeomSpec("sphere", (0.029,)),
                GeomSpec(
                    "cylinder", (0.0025, 0.007), (0, 0, 0.031), rgba=(0.35, 0.22, 0.1, 1), collide=False
                ),
            ),
            (0.029, 0.029, 0.029),
            density=500,
        ),
        Category(
            "orange",
            "fruit",
            ("orange",),
            (GeomSpec("sphere", (0.031,)),),
            (0.031, 0.031, 0.031),
            density=500,
        ),
        Category(
            "lemon",
            "fruit",
            ("yellow", "green"),
            (GeomSpec("ellipsoid", (0.036, 0.025, 0.025)),),
            (0.036, 0.025, 0.025),
            grasp=((0.0, 0.05),),
            density=500,
        ),
        Category(
            "banana",
            "fruit",
            ("yellow", "green"),
            (
                GeomSpec("capsule", (0.017, 0.042), euler=(0, math.pi / 2, 0)),
                GeomSpec("sphere", (0.006,), (0.058, 0, 0.004), rgba=(0.3, 0.22, 0.1, 1), collide=False),
            ),
            (0.059, 0.017, 0.017),
            grasp=((0.0, 0.034),),
            density=500,
        ),
        Category(
            "block",
            "toys",
            ("red", "green", "blue", "yellow", "purple", "orange", "pink", "white"),
            (GeomSpec("box", (0.021, 0.021, 0.021)),),
            (0.021, 0.021, 0.021),
            grasp=((0.0, 0.042), (math.pi / 2, 0.042)),
        ),
        Category(
            "car",
            "toys",
            ("red", "blue", "green", "yellow", "purple", "orange"),
            (
                GeomSpec("box", (0.045, 0.024, 0.016)),
                GeomSpec(
                    "box", (0.022, 0.02, 0.009), (-0.006, 0, 0.024), rgba=(0.75, 0.85, 0.95, 1), collide=False
                ),
                *(
                    GeomSpec(
                        "cylinder",
                        (0.011, 0.004),
                        (sx * 0.028, sy * 0.026, -0.008),
                        euler=(math.pi / 2, 0, 0),
                        rgba=(0.08, 0.08, 0.08, 1),
                        collide=False,
                    )
                    for sx in (-1, 1)
                    for sy in (-1, 1)
                ),
            ),
            (0.045, 0.024, 0.016),
            grasp=((0.0, 0.048),),
        ),
        Category(
            "sponge",
            "supplies",
            ("yellow", "green", "blue", "pink"),
            (
                GeomSpec("box", (0.04, 0.027, 0.016)),
                GeomSpec(
                    "box", (0.0401, 0.0271, 0.004), (0, 0, 0.013), rgba=(0.12, 0.4, 0.18, 1), collide=False
                ),
            ),
            (0.04, 0.027, 0.016),
            grasp=((0.0, 0.054),),
            density=150,
        ),
        Category(
            "marker",
            "supplies",
            ("red", "blue", "green", "black", "purple"),
            (
                GeomSpec("capsule", (0.011, 0.048), euler=(0, math.pi / 2, 0)),
                GeomSpec(
                    "cylinder",
                    (0.0118, 0.004),
                    (0.03, 0, 0),
                    euler=(0, math.pi / 2, 0),
                    rgba=(0.93, 0.93, 0.9, 1),
                    collide=False,
                ),
            ),
            (0.059, 0.011, 0.011),
            grasp=((0.0, 0.022),),
        ),
        Category(
            "tape",
            "supplies",
            ("white", "blue", "yellow", "red"),
            (
                GeomSpec("cylinder", (0.03, 0.0125)),
                GeomSpec("cylinder", (0.017, 0.0127), rgba=(0.55, 0.42, 0.28, 1), collide=False),
            ),
            (0.03, 0.03, 0.0125),
        ),
    )
}

GROUPS: dict[str, tuple[str, ...]] = {}
for _category in CATEGORIES.values():
    GROUPS.setdefault(_category.group, ())
    GROUPS[_category.group] += (_category.name,)

# ----------------------------------------------------------------------------------------------
# Fixtures: dimensions shared by the model builder, the task predicates and the expert.

OPEN_CONTAINERS: tuple[str, ...] = ("bin", "bowl", "tray")
ARTICULATED: tuple[str, ...] = ("drawer", "box")
FIXTURES: tuple[str, ...] = ARTICULATED + OPEN_CONTAINERS
CONTAINERS: tuple[str, ...] = OPEN_CONTAINERS + ARTICULATED
"""Everything an object can be put in."""

WALL = 0.006
BIN_HALF = (0.085, 0.085)
BIN_HEIGHT = 0.07
BOWL_RADIUS = 0.085
BOWL_HEIGHT = 0.04
BOWL_SEGMENTS = 16
TRAY_HALF = (0.1, 0.075)
TRAY_HEIGHT = 0.02

CABINET_HALF = (0.08, 0.11)  # the drawer's cabinet, (x, y)
CABINET_HEIGHT = 0.14
DRAWER_INNER_HALF = (0.064, 0.09)  # half-sizes of the drawer's box (x, y)
DRAWER_INNER_X = (-0.07, 0.062)  # inside of the drawer along the cabinet's x when closed
DRAWER_FLOOR = 0.022
DRAWER_WALL_TOP = 0.09
DRAWER_TRAVEL = 0.15  # slide range of the drawer, metres
DRAWER_HANDLE_DEPTH = 0.04  # handle bar axis in front of the drawer front
DRAWER_HANDLE_Z = 0.065
DRAWER_OPEN = 0.1  # "open": pulled out at least this far
DRAWER_CLOSED = 0.008  # "closed": at most this far out

BOX_HALF = (0.085, 0.1)  # the lidded box (a toy chest), (x, y)
BOX_HEIGHT = 0.09
BOX_LID_THICKNESS = 0.012
BOX_LID_OVERHANG = 0.008
BOX_HANDLE_ARM = 0.05  # pivot of the swinging handle in front of the lid's front edge
BOX_HANDLE_HALF = (0.01, 0.025, 0.02)  # the handle block hanging from the pivot
BOX_LID_RANGE = 1.7  # radians; past vertical, so an opened lid rests open
BOX_OPEN = 1.35  # "open": lid raised at least this far (radians)
BOX_CLOSED = 0.06  # "closed": lid at most this far up

BACK_X = 0.17
FRONT_X = -0.235
SLOTS: dict[str, tuple[float, float]] = {
    "back_left": (BACK_X, 0.24),
    "back_center": (BACK_X, 0.0),
    "back_right": (BACK_X, -0.24),
    "front_left": (FRONT_X, 0.25),
    "front_right": (FRONT_X, -0.25),
}
BACK_SLOTS = ("back_left", "back_center", "back_right")


def _all_layouts() -> tuple[dict[str, str], ...]:
    """Every assignment of fixtures to slots with the drawer and the box on the back row."""
    layouts = []
    for drawer, box in itertools.permutations(BACK_SLOTS, 2):
        rest = [s for s in SLOTS if s not in (drawer, box)]
        for order in itertools.permutations(rest):
            layouts.append({"drawer": drawer, "box": box, **dict(zip(OPEN_CONTAINERS, order, strict=True))})
    return tuple(layouts)


LAYOUTS: tuple[dict[str, str], ...] = _all_layouts()
"""36 layouts: fixture -> slot."""

HELD_OUT_LAYOUTS: frozenset[int] = frozenset(
    i for i, lay in enumerate(LAYOUTS) if lay["drawer"] == "back_center" and lay["box"] == "back_left"
)
"""The 6 layouts with the drawer in the middle and the box to its left: OOD only."""

HELD_OUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {
        ("cup", "green"),
        ("mug", "blue"),
        ("plate", "red"),
        ("apple", "yellow"),
        ("banana", "green"),
        ("block", "purple"),
        ("car", "green"),
        ("sponge", "pink"),
        ("marker", "black"),
        ("tape", "red"),
    }
)
"""(category, colour) pairs seen only in the OOD split; each category and colour alone is in train."""


def layouts_for(split: str) -> tuple[int, ...]:
    check_split_name(split)
    return tuple(i for i in range(len(LAYOUTS)) if (i in HELD_OUT_LAYOUTS) == (split == "ood"))


def colours_for(category: str, split: str) -> tuple[str, ...]:
    """Colours a category may take in a split (OOD: all of them, held-out ones included)."""
    check_split_name(split)
    colours = CATEGORIES[category].colours
    return colours if split == "ood" else tuple(c for c in colours if (category, c) not in HELD_OUT_COMBOS)


def check_split_name(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


@dataclass(frozen=True)
class ObjectSpec:
    name: str  # MuJoCo body name, e.g. "obj0"
    category: str
    colour: str
    x: float
    y: float
    yaw: float

    @property
    def label(self) -> str:
        """ "red cup"; just "orange" for an orange orange."""
        return self.category if self.colour == self.category else f"{self.colour} {self.category}"

    @property
    def kind(self) -> Category:
        return CATEGORIES[self.category]


@dataclass(frozen=True)
class FixtureSpec:
    kind: str  # one of FIXTURES; also the MuJoCo body name and its label
    slot: str
    x: float
    y: float
    yaw: float

    @property
    def label(self) -> str:
        return self.kind


@dataclass(frozen=True)
class Scene:
    """A fully specified initial scene: fixtures, objects, and the articulations' initial state."""

    layout: int
    fixtures: tuple[FixtureSpec, ...]
    objects: tuple[ObjectSpec, ...]
    drawer_opening: float = 0.0  # metres pulled out
    lid_angle: float = 0.0  # radians

    def fixture(self, kind: str) -> FixtureSpec:
        for f in self.fixtures:
            if f.kind == kind:
                return f
        raise KeyError(f"the scene has no fixture {kind!r}")

    def object(self, name: str) -> ObjectSpec:
        for o in self.objects:
            if o.name == name:
                return o
        raise KeyError(f"the scene has no object {name!r}")

    def label(self, entity: str) -> str:
        """Text label of an object or fixture name."""
        return self.object(entity).label if entity.startswith("obj") else self.fixture(entity).label


def check_split(scene: Scene, split: str, named: Sequence[str] = ()) -> None:
    """Raise ValueError if `scene` violates its split: held-out layouts and combinations never in train;
    OOD scenes always use a held-out layout and show a held-out combination, on one of the `named`
    objects (what the prompt is about) when there are any."""
    check_split_name(split)
    combos = {(o.category, o.colour) for o in scene.objects}
    if split == "train":
        if scene.layout in HELD_OUT_LAYOUTS:
            raise ValueError(f"train scene uses held-out layout {scene.layout}")
        if combos & HELD_OUT_COMBOS:
            raise ValueError(f"train scene has held-out objects {sorted(combos & HELD_OUT_COMBOS)}")
        return
    if scene.layout not in HELD_OUT_LAYOUTS:
        raise ValueError(f"OOD scene uses training layout {scene.layout}")
    if named:
        combos = {(scene.object(n).category, scene.object(n).colour) for n in named}
    if not combos & HELD_OUT_COMBOS:
        raise ValueError(f"OOD scene has no held-out object{' among the named ones' if named else ''}")


def fixture_footprint(kind: str) -> tuple[float, float, float, float]:
    """(x_min, x_max, y_min, y_max) in the fixture's frame that objects must keep out of: its body plus
    the room the gripper needs to operate it (the pulled-out drawer, the box's handle and lid push)."""
    if kind == "drawer":
        return (-CABINET_HALF[0] - DRAWER_TRAVEL - DRAWER_HANDLE_DEPTH - 0.03, CABINET_HALF[0], -0.12, 0.12)
    if kind == "box":
        reach = BOX_HALF[0] + BOX_LID_OVERHANG + BOX_HANDLE_ARM + 0.03
        return (-reach, BOX_HALF[0] + 0.06, -BOX_HALF[1] - 0.01, BOX_HALF[1] + 0.01)
    if kind == "bin":
        return (-BIN_HALF[0], BIN_HALF[0], -BIN_HALF[1], BIN_HALF[1])
    if kind == "bowl":
        return (-BOWL_RADIUS, BOWL_RADIUS, -BOWL_RADIUS, BOWL_RADIUS)
    if kind == "tray":
        return (-TRAY_HALF[0], TRAY_HALF[0], -TRAY_HALF[1], TRAY_HALF[1])
    raise ValueError(f"unknown fixture {kind!r}; expected one of {FIXTURES}")


def sample_fixtures(rng: np.random.Generator, layout: int) -> tuple[FixtureSpec, ...]:
    """Fixtures of a layout with small position jitter; open containers get a random yaw."""
    fixtures = []
    for kind in FIXTURES:
        slot = LAYOUTS[layout][kind]
        x, y = SLOTS[slot]
        x += rng.uniform(-0.01, 0.01)
        y += rng.uniform(-0.01, 0.01)
        yaw = 0.0 if kind in ARTICULATED else float(rng.uniform(-0.2, 0.2))
        fixtures.append(FixtureSpec(kind, slot, float(x), float(y), yaw))
    return tuple(fixtures)


OBJECT_REGION = ((-0.28, 0.06), (-0.36, 0.36))
"""(x range, y range) where objects start."""
_FIXTURE_MARGIN = 0.035
_OBJECT_GAP = 0.06


def _outside_fixtures(x: float, y: float, radius: float, fixtures: tuple[FixtureSpec, ...]) -> bool:
    for f in fixtures:
        c, s = math.cos(f.yaw), math.sin(f.yaw)
        lx, ly = c * (x - f.x) + s * (y - f.y), -s * (x - f.x) + c * (y - f.y)
        x0, x1, y0, y1 = fixture_footprint(f.kind)
        m = radius + _FIXTURE_MARGIN
        if x0 - m < lx < x1 + m and y0 - m < ly < y1 + m:
            return False
    return True


def place_objects(
    rng: np.random.Generator, fixtures: tuple[FixtureSpec, ...], categories: list[str], tries: int = 400
) -> list[tuple[float, float, float]] | None:
    """Random (x, y, yaw) for each category, clear of fixtures and of each other; None if they do not fit."""
    placed: list[tuple[float, float, float, float]] = []
    (x_lo, x_hi), (y_lo, y_hi) = OBJECT_REGION
    for name in categories:
        radius = CATEGORIES[name].radius
        for _ in range(tries):
            x, y = rng.uniform(x_lo + radius, x_hi - radius), rng.uniform(y_lo + radius, y_hi - radius)
            if _outside_fixtures(x, y, radius, fixtures) and all(
                math.hypot(x - px, y - py) > radius + pr + _OBJECT_GAP for px, py, pr, _ in placed
            ):
                placed.append((float(x), float(y), radius, float(rng.uniform(-math.pi, math.pi))))
                break
        else:
            return None
    return [(x, y, yaw) for x, y, _, yaw in placed]
