"""Tasks: long-horizon prompts made of subtasks, derived from a sampled scene, and how they are scored.

Families (`FAMILIES`):

* ``group_in_container``  "put the dishes in the bin", "put the toys on the tray": every object of a
  group (dishes, fruit, toys, supplies) into an open container; 1-3 targets, 1-2 distractors.
* ``colour_in_container`` "put all the red things in the bowl": 2-3 targets, 1-2 distractors of other colours
  (possibly the same kinds: a red cup to move, a blue cup to leave).
* ``items_in_drawer`` / ``items_in_box`` "put the red block and the blue tape in the drawer", "put the toys
  in the box": open, pick and place each item, close; 1-2 targets that fit, 1-2 distractors.
* ``clean_up``            "clean up the table": every object to its home (dishes -> bin, fruit -> bowl,
  toys -> box, supplies -> drawer), opening and closing what it needs; 2-3 objects.
* ``instruction``         one verbal command from the initial state: "pick up the red cup", "open the drawer",
  "close the box" (the fixture then starts open).
* ``verbal``              a verbal-instruction session: 3-8 commands issued one at a time (the environment's
  prompt is the command in force; the next is issued when it is done), as a person would teleoperate the
  robot through language.
* ``item_in_container``   "put the red cup in the bowl": one named object (among 3-4) into an open container,
  the shortest task with a plan (pick it up, place it).

Each episode is a sequence of 1-8 `Subtask` s: ``pick up the X``, ``place the X in/on the C``, ``open the F``,
``close the F``. Scoring (`TaskTracker`) follows a points-per-step rubric, normalized to [0, 1]:

* pick: a point once the object has been lifted 4 cm above where it started, held by both fingers;
* place: a point if the object rests inside the container at the end (released, low in the container);
* open: a point once the drawer is pulled out >= 10 cm / the box's lid is raised >= 1.35 rad;
* close: a point if the fixture is closed at the end, and (when the plan opens it first) it was opened.

Success = all points. Language following = |acted on ∩ named| / |acted on ∪ named| (1 when both are empty):
an object is acted on if it ever moved 3 cm from its start; the named objects are the prompt's targets
(every object for "clean up the table"). The first object to move 3 cm is recorded too: when the prompt
names objects and it is not one of them, the policy went for the wrong target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlaflow.sim.tabletop.scene import (
    ARTICULATED,
    BIN_HALF,
    BOWL_RADIUS,
    BOX_CLOSED,
    BOX_HALF,
    BOX_LID_RANGE,
    BOX_OPEN,
    CATEGORIES,
    DRAWER_CLOSED,
    DRAWER_FLOOR,
    DRAWER_INNER_HALF,
    DRAWER_INNER_X,
    DRAWER_OPEN,
    DRAWER_TRAVEL,
    GROUPS,
    HELD_OUT_COMBOS,
    OPEN_CONTAINERS,
    SPLITS,
    TRAY_HALF,
    WALL,
    FixtureSpec,
    ObjectSpec,
    Scene,
    check_split,
    check_split_name,
    colours_for,
    layouts_for,
    place_objects,
    sample_fixtures,
)
from vlaflow.sim.tabletop.state import WorldState

FAMILIES: tuple[str, ...] = (
    "group_in_container",
    "colour_in_container",
    "items_in_drawer",
    "items_in_box",
    "clean_up",
    "instruction",
    "verbal",
    "item_in_container",
)
LONG_FAMILIES: tuple[str, ...] = FAMILIES[:5]
HOMES: dict[str, str] = {"dishes": "bin", "fruit": "bowl", "toys": "box", "supplies": "drawer"}
MAX_SUBTASKS = 8
LIFT_HEIGHT = 0.04
MOVED_DISTANCE = 0.03
BOX_FLOOR = 0.01


def preposition(container: str) -> str:
    return "on" if container == "tray" else "in"


@dataclass(frozen=True)
class Subtask:
    kind: str  # "pick" | "place" | "open" | "close"
    target: str  # object name (pick, place) or fixture (open, close)
    dest: str | None  # container of a place
    text: str
    entities: tuple[str, ...]  # what its bounding boxes show


def make_subtask(scene: Scene, kind: str, target: str, dest: str | None = None) -> Subtask:
    label = scene.label(target)
    if kind == "pick":
        return Subtask(kind, target, None, f"pick up the {label}", (target,))
    if kind == "place":
        if dest is None:
            raise ValueError("a place subtask needs a destination container")
        return Subtask(
            kind, target, dest, f"place the {label} {preposition(dest)} the {dest}", (target, dest)
        )
    if kind in ("open", "close"):
        return Subtask(kind, target, None, f"{kind} the {label}", (target,))
    raise ValueError(f"subtask kind must be pick, place, open or close, got {kind!r}")


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode: its scene, prompt, plan of subtasks and the objects the prompt names."""

    family: str
    split: str
    seed: int
    scene: Scene
    prompt: str
    subtasks: tuple[Subtask, ...]
    targets: tuple[str, ...]

    @property
    def max_steps(self) -> int:
        """Step limit: about 1.7x what the scripted expert needs (it averages 40-70 steps per subtask)."""
        return 60 + 90 * len(self.subtasks)


# ----------------------------------------------------------------------------------------------
# Geometry predicates


def to_local(fixture: FixtureSpec, point: np.ndarray) -> tuple[float, float]:
    """(x, y) of a world point in a fixture's frame."""
    c, s = math.cos(fixture.yaw), math.sin(fixture.yaw)
    dx, dy = float(point[0]) - fixture.x, float(point[1]) - fixture.y
    return c * dx + s * dy, -s * dx + c * dy


def interior(kind: str, drawer: float = DRAWER_TRAVEL) -> tuple[float, float, float, float, float]:
    """(x_min, x_max, y_min, y_max, floor z) of a container's inside, in its frame; the bowl's is its
    bounding square (`inside` checks the circle); the drawer's moves with its opening."""
    if kind == "bin":
        hx, hy = BIN_HALF[0] - WALL, BIN_HALF[1] - WALL
        return -hx, hx, -hy, hy, WALL
    if kind == "bowl":
        r = BOWL_RADIUS - WALL
        return -r, r, -r, r, WALL
    if kind == "tray":
        hx, hy = TRAY_HALF[0] - WALL, TRAY_HALF[1] - WALL
        return -hx, hx, -hy, hy, WALL
    if kind == "drawer":
        return (
            DRAWER_INNER_X[0] - drawer,
            DRAWER_INNER_X[1] - drawer,
            -DRAWER_INNER_HALF[1],
            DRAWER_INNER_HALF[1],
            DRAWER_FLOOR,
        )
    if kind == "box":
        hx, hy = BOX_HALF[0] - 0.01, BOX_HALF[1] - 0.01
        return -hx, hx, -hy, hy, BOX_FLOOR
    raise ValueError(f"{kind!r} is not a container")


def inside(scene: Scene, world: WorldState, obj: str, container: str) -> bool:
    """Whether `obj` rests inside `container` (centre within the inside, low, not held)."""
    if obj in world.grasped:
        return False
    pos = world.positions[obj]
    x0, x1, y0, y1, floor = interior(container, world.drawer)
    lx, ly = to_local(scene.fixture(container), pos)
    within = math.hypot(lx, ly) <= x1 if container == "bowl" else x0 <= lx <= x1 and y0 <= ly <= y1
    return within and pos[2] - floor <= max(CATEGORIES[scene.object(obj).category].half_extents) + 0.02


def is_open(world: WorldState, fixture: str) -> bool:
    return world.drawer >= DRAWER_OPEN if fixture == "drawer" else world.lid >= BOX_OPEN


def is_closed(world: WorldState, fixture: str) -> bool:
    return world.drawer <= DRAWER_CLOSED if fixture == "drawer" else world.lid <= BOX_CLOSED


def subtask_done(scene: Scene, sub: Subtask, world: WorldState, rest_z: dict[str, float]) -> bool:
    """Whether `sub` holds in `world` right now (lifted / inside / open / closed)."""
    if sub.kind == "pick":
        return (
            sub.target in world.grasped and world.positions[sub.target][2] >= rest_z[sub.target] + LIFT_HEIGHT
        )
    if sub.kind == "place":
        assert sub.dest is not None
        return inside(scene, world, sub.target, sub.dest)
    if sub.kind == "open":
        return is_open(world, sub.target)
    return is_closed(world, sub.target)


def _opener(subtasks: tuple[Subtask, ...], i: int) -> int | None:
    """Index of the "open" step that a "close" step at `i` undoes, if the plan has one before it."""
    if subtasks[i].kind != "close":
        return None
    for j in range(i - 1, -1, -1):
        if subtasks[j].kind == "open" and subtasks[j].target == subtasks[i].target:
            return j
    return None


class TaskTracker:
    """Scores an episode as it runs: rubric points, success, the command in force, language following."""

    def __init__(self, spec: EpisodeSpec, world: WorldState) -> None:
        self.spec = spec
        self.start = {o: p.copy() for o, p in world.positions.items()}
        self.rest_z = {o: float(p[2]) for o, p in world.positions.items()}
        self.moved = dict.fromkeys(world.positions, 0.0)
        self.first_moved: str | None = None  # the first object to move MOVED_DISTANCE from its start
        self.latched = [False] * len(spec.subtasks)
        self.current = 0
        self._opener = [_opener(spec.subtasks, i) for i in range(len(spec.subtasks))]
        self.completed: list[bool] = [False] * len(spec.subtasks)
        self.update(world)

    def update(self, world: WorldState) -> None:
        spec = self.spec
        now = [subtask_done(spec.scene, s, world, self.rest_z) for s in spec.subtasks]
        self.latched = [a or b for a, b in zip(self.latched, now, strict=True)]
        while self.current < len(now) and now[self.current]:
            self.current += 1
        for o, p in world.positions.items():
            self.moved[o] = max(self.moved[o], float(np.linalg.norm(p - self.start[o])))
            if self.first_moved is None and self.moved[o] >= MOVED_DISTANCE:
                self.first_moved = o
        completed = []
        for i, s in enumerate(spec.subtasks):
            if s.kind in ("pick", "open"):
                completed.append(self.latched[i])
            elif s.kind == "place":
                completed.append(now[i])
            else:
                opener = self._opener[i]
                completed.append(now[i] and (opener is None or self.latched[opener]))
        self.completed = completed

    @property
    def progress(self) -> float:
        return float(np.mean(self.completed)) if self.completed else 1.0

    @property
    def success(self) -> bool:
        return all(self.completed)

    @property
    def acted_on(self) -> tuple[str, ...]:
        return tuple(o for o, d in self.moved.items() if d >= MOVED_DISTANCE)

    @property
    def language_following(self) -> float:
        acted, named = set(self.acted_on), set(self.spec.targets)
        union = acted | named
        return len(acted & named) / len(union) if union else 1.0

    def summary(self) -> dict[str, Any]:
        return {
            "progress": self.progress,
            "success": self.success,
            "completed": list(self.completed),
            "subtask_index": self.current,
            "acted_on": list(self.acted_on),
            "first_moved": self.first_moved,
            "language_following": self.language_following,
        }


# ----------------------------------------------------------------------------------------------
# Sampling


def fits(category: str, container: str) -> bool:
    """Whether an object of `category` can go into `container` with this gripper (drawer and box are
    filled from above through a ~12 cm gap, so wide or tall things stay out)."""
    kind = CATEGORIES[category]
    if container in OPEN_CONTAINERS:
        return True
    narrow = min(w for _, w in kind.grasp_options()) <= 0.062 and kind.long_extent <= 0.125
    return narrow and 2 * kind.half_extents[2] <= (0.09 if container == "drawer" else 0.07)


def _capacity_ok(categories: list[str], container: str) -> bool:
    """Whether the objects fit into the container together, with room for the fingers to let go of each:
    every object's footprint widened by the open fingers must fit, and all of them cover at most 80% of
    the inside (drawer and box: at most 2 objects, side by side across their width)."""
    kinds = [CATEGORIES[c] for c in categories]
    if container in ARTICULATED:
        if len(kinds) > 2 or not all(fits(c, container) for c in categories):
            return False
        return len(kinds) < 2 or sum(k.long_extent for k in kinds) <= 0.17
    x0, x1, y0, y1, _ = interior(container)
    side = min(x1 - x0, y1 - y0)
    area = (x1 - x0) * (y1 - y0) * (math.pi / 4 if container == "bowl" else 1.0)
    swept = [(k.long_extent + 0.015, min(w for _, w in k.grasp_options()) + 0.04) for k in kinds]
    return all(a <= side - 0.01 for a, _ in swept) and sum(a * b for a, b in swept) <= 0.8 * area


class _Draw:
    """Random choices for one scene: unique labels, split-aware colours (OOD favours held-out pairs)."""

    def __init__(self, rng: np.random.Generator, split: str) -> None:
        self.rng, self.split = rng, split
        self.labels: set[tuple[str, str]] = set()

    def choice(self, options: Any) -> Any:
        options = list(options)
        return options[int(self.rng.integers(len(options)))]

    def colour(self, category: str, allowed: tuple[str, ...] | None = None) -> str | None:
        options = [
            c
            for c in colours_for(category, self.split)
            if (category, c) not in self.labels and (allowed is None or c in allowed)
        ]
        if not options:
            return None
        weights = np.array([3.0 if (category, c) in HELD_OUT_COMBOS else 1.0 for c in options])
        colour = options[int(self.rng.choice(len(options), p=weights / weights.sum()))]
        self.labels.add((category, colour))
        return colour

    def objects(self, categories: list[str], colour: str | None = None) -> list[tuple[str, str]] | None:
        """(category, colour) of each category (all of `colour` if given); None if labels run out."""
        out = []
        for category in categories:
            picked = self.colour(category, None if colour is None else (colour,))
            if picked is None:
                return None
            out.append((category, picked))
        return out

    def with_distractors(
        self, targets: list[tuple[str, str]] | None, groups: tuple[str, ...], avoid_colour: str | None = None
    ) -> list[tuple[str, str]] | None:
        """`targets` followed by 1-2 distractors from `groups` (none of `avoid_colour`)."""
        if targets is None:
            return None
        out = list(targets)
        for _ in range(int(self.rng.integers(1, 3))):
            category = self.choice(c for g in groups for c in GROUPS[g])
            allowed = tuple(c for c in CATEGORIES[category].colours if c != avoid_colour)
            colour = self.colour(category, allowed)
            if colour is None:
                return None
            out.append((category, colour))
        return out


def _build(
    draw: _Draw,
    family: str,
    seed: int,
    items: list[tuple[str, str]] | None,
    plan: Any,
    *,
    drawer_opening: float = 0.0,
    lid_angle: float = 0.0,
) -> EpisodeSpec | None:
    """Place `items` ((category, colour), targets first) in a random layout; `plan(scene)` gives the
    prompt, subtasks and targets."""
    if items is None:
        return None
    rng = draw.rng
    layout = int(draw.choice(layouts_for(draw.split)))
    fixtures = sample_fixtures(rng, layout)
    poses = place_objects(rng, fixtures, [c for c, _ in items])
    if poses is None:
        return None
    objects = tuple(
        ObjectSpec(f"obj{i}", c, col, x, y, yaw)
        for i, ((c, col), (x, y, yaw)) in enumerate(zip(items, poses, strict=True))
    )
    scene = Scene(layout, fixtures, objects, drawer_opening, lid_angle)
    prompt, subtasks, targets = plan(scene)
    return EpisodeSpec(family, draw.split, seed, scene, prompt, tuple(subtasks), tuple(targets))


def _pick_place(scene: Scene, names: list[str], dest: str) -> list[Subtask]:
    out = []
    for name in names:
        out += [make_subtask(scene, "pick", name), make_subtask(scene, "place", name, dest)]
    return out


def _group_in_container(draw: _Draw, seed: int) -> EpisodeSpec | None:
    group = draw.choice(sorted(GROUPS))
    home = HOMES[group]
    container = home if home in OPEN_CONTAINERS and draw.rng.random() < 0.5 else draw.choice(OPEN_CONTAINERS)
    categories = [draw.choice(GROUPS[group]) for _ in range(int(draw.rng.integers(1, 4)))]
    if not _capacity_ok(categories, container):
        return None
    others = tuple(g for g in sorted(GROUPS) if g != group)
    items = draw.with_distractors(draw.objects(categories), others)
    n = len(categories)

    def plan(scene: Scene) -> tuple[str, list[Subtask], list[str]]:
        names = [o.name for o in scene.objects[:n]]
        prompt = f"put the {group} {preposition(container)} the {container}"
        return prompt, _pick_place(scene, names, container), names

    return _build(draw, "group_in_container", seed, items, plan)


def _colour_in_container(draw: _Draw, seed: int) -> EpisodeSpec | None:
    colour = draw.choice(c for c in ("red", "green", "blue", "yellow", "orange", "purple", "pink", "white"))
    container = draw.choice(OPEN_CONTAINERS)
    candidates = [c for c in CATEGORIES if colour in colours_for(c, draw.split)]
    n = int(draw.rng.integers(2, 4))
    if len(candidates) < n:
        return None
    order = draw.rng.permutation(len(candidates))[:n]
    categories = [candidates[i] for i in order]
    if not _capacity_ok(categories, container):
        return None
    items = draw.with_distractors(draw.objects(categories, colour), tuple(sorted(GROUPS)), colour)

    def plan(scene: Scene) -> tuple[str, list[Subtask], list[str]]:
        names = [o.name for o in scene.objects[:n]]
        prompt = f"put all the {colour} things {preposition(container)} the {container}"
        return prompt, _pick_place(scene, names, container), names

    return _build(draw, "colour_in_container", seed, items, plan)


def _join(labels: list[str]) -> str:
    return " and ".join(f"the {label}" for label in labels)


def _items_in(fixture: str, family: str) -> Any:
    def sample(draw: _Draw, seed: int) -> EpisodeSpec | None:
        group = draw.choice(sorted(GROUPS))
        pool = [c for c in GROUPS[group] if fits(c, fixture)]
        if not pool:
            return None
        categories = [draw.choice(pool) for _ in range(int(draw.rng.integers(1, 3)))]
        if not _capacity_ok(categories, fixture):
            return None
        targets = draw.objects(categories)
        by_group = draw.rng.random() < 0.4
        others = tuple(g for g in sorted(GROUPS) if g != group) if by_group else tuple(sorted(GROUPS))
        items = draw.with_distractors(targets, others)
        n = len(categories)

        def plan(scene: Scene) -> tuple[str, list[Subtask], list[str]]:
            names = [o.name for o in scene.objects[:n]]
            what = f"the {group}" if by_group else _join([scene.label(x) for x in names])
            subtasks = [
                make_subtask(scene, "open", fixture),
                *_pick_place(scene, names, fixture),
                make_subtask(scene, "close", fixture),
            ]
            return f"put {what} in the {fixture}", subtasks, names

        return _build(draw, family, seed, items, plan)

    return sample


def _clean_up(draw: _Draw, seed: int) -> EpisodeSpec | None:
    n = int(draw.rng.integers(2, 4))
    categories = [draw.choice(CATEGORIES) for _ in range(n)]
    homes = [HOMES[CATEGORIES[c].group] for c in categories]
    per_home: dict[str, list[int]] = {}
    for i, h in enumerate(homes):
        per_home.setdefault(h, []).append(i)
    if any(not _capacity_ok([categories[i] for i in idx], h) for h, idx in per_home.items()):
        return None
    if 2 * n + 2 * sum(h in ARTICULATED for h in per_home) > MAX_SUBTASKS:
        return None
    items = draw.objects(categories)
    order = [list(per_home)[i] for i in draw.rng.permutation(len(per_home))]

    def plan(scene: Scene) -> tuple[str, list[Subtask], list[str]]:
        subtasks = []
        for home in order:
            names = [scene.objects[i].name for i in per_home[home]]
            if home in ARTICULATED:
                subtasks.append(make_subtask(scene, "open", home))
            subtasks += _pick_place(scene, names, home)
            if home in ARTICULATED:
                subtasks.append(make_subtask(scene, "close", home))
        prompt = draw.choice(("clean up the table", "tidy up the table"))
        return prompt, subtasks, [o.name for o in scene.objects]

    return _build(draw, "clean_up", seed, items, plan)


def _random_items(draw: _Draw, n: int) -> list[tuple[str, str]] | None:
    return draw.objects([draw.choice(CATEGORIES) for _ in range(n)])


def _instruction(draw: _Draw, seed: int) -> EpisodeSpec | None:
    items = _random_items(draw, int(draw.rng.integers(3, 5)))
    if items is None:
        return None
    kind = draw.choice(("pick", "pick", "open", "close"))
    fixture = draw.choice(ARTICULATED)
    target_index = int(draw.rng.integers(len(items)))
    start_open = kind == "close"

    def plan(scene: Scene) -> tuple[str, list[Subtask], list[str]]:
        if kind == "pick":
            sub = make_subtask(scene, "pick", scene.objects[target_index].name)
            return sub.text, [sub], [sub.target]
        sub = make_subtask(scene, kind, fixture)
        return sub.text, [sub], []

    return _build(
        draw,
        "instruction",
        seed,
        items,
        plan,
        drawer_opening=DRAWER_TRAVEL if start_open and fixture == "drawer" else 0.0,
        lid_angle=BOX_LID_RANGE if start_open and fixture == "box" else 0.0,
    )


def _item_in_container(draw: _Draw, seed: int) -> EpisodeSpec | None:
    items = _random_items(draw, int(draw.rng.integers(3, 5)))
    container = draw.choice(OPEN_CONTAINERS)
    target_index = int(draw.rng.integers(len(items))) if items else 0
    if items is None or not _capacity_ok([items[target_index][0]], container):
        return None

    def plan(scene: Scene) -> tuple[str, list[Subtask], list[str]]:
        target = scene.objects[target_index]
        prompt = f"put the {target.label} {preposition(container)} the {container}"
        return prompt, _pick_place(scene, [target.name], container), [target.name]

    return _build(draw, "item_in_container", seed, items, plan)


def _verbal(draw: _Draw, seed: int) -> EpisodeSpec | None:
    items = _random_items(draw, int(draw.rng.integers(3, 5)))
    length = int(draw.rng.integers(3, 7))
    rng = draw.rng

    def plan(scene: Scene) -> tuple[str, list[Subtask], list[str]]:
        where = {o.name: "table" for o in scene.objects}
        state = {f: "closed" for f in ARTICULATED}  # closed -> open -> done (each opened and closed once)
        holding: str | None = None
        subtasks: list[Subtask] = []

        def room(container: str, held: str) -> bool:
            """At most two things per container, and they must fit together."""
            there = [scene.object(o).category for o, w in where.items() if w == container]
            return len(there) < 2 and _capacity_ok([*there, scene.object(held).category], container)

        while len(subtasks) < length or holding is not None:
            if holding is not None:
                options = [c for c in OPEN_CONTAINERS if room(c, holding)]
                options += [f for f in ARTICULATED if state[f] == "open" and room(f, holding)]
                dest = options[int(rng.integers(len(options)))] if options else "bin"
                subtasks.append(make_subtask(scene, "place", holding, dest))
                where[holding], holding = dest, None
                continue
            options: list[tuple[str, str]] = [("pick", o) for o, w in where.items() if w == "table"] * 2
            options += [("open", f) for f in ARTICULATED if state[f] == "closed"]
            options += [("close", f) for f in ARTICULATED if state[f] == "open"]
            kind, target = options[int(rng.integers(len(options)))]
            subtasks.append(make_subtask(scene, kind, target))
            if kind == "pick":
                holding, where[target] = target, "hand"
            else:
                state[target] = "open" if kind == "open" else "done"
        picked = [s.target for s in subtasks if s.kind == "pick"]
        return subtasks[0].text, subtasks, picked

    spec = _build(draw, "verbal", seed, items, plan)
    if spec is None or len(spec.subtasks) > MAX_SUBTASKS or not spec.targets:
        return None
    return spec


_SAMPLERS = {
    "group_in_container": _group_in_container,
    "colour_in_container": _colour_in_container,
    "items_in_drawer": _items_in("drawer", "items_in_drawer"),
    "items_in_box": _items_in("box", "items_in_box"),
    "clean_up": _clean_up,
    "instruction": _instruction,
    "verbal": _verbal,
    "item_in_container": _item_in_container,
}


def _in_split(spec: EpisodeSpec) -> bool:
    try:
        check_split(spec.scene, spec.split, spec.targets)
    except ValueError:
        return False
    return True


def sample_episode(seed: int, *, family: str | None = None, split: str = "train") -> EpisodeSpec:
    """The episode of (`seed`, `family`, `split`): the same arguments always give the same episode.
    `family=None` draws one of `LONG_FAMILIES` from the seed."""
    check_split_name(split)
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if family is None:
        family = LONG_FAMILIES[int(np.random.default_rng([seed, 99]).integers(len(LONG_FAMILIES)))]
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    rng = np.random.default_rng([seed, FAMILIES.index(family), SPLITS.index(split)])
    for _ in range(2000):
        spec = _SAMPLERS[family](_Draw(rng, split), seed)
        if spec is not None and spec.subtasks and _in_split(spec):
            return spec
    raise RuntimeError(f"could not sample a {family} episode for seed {seed} in split {split}")
