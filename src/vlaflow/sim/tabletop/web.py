"""Web-style samples (captions, VQA, detection, region descriptions) rendered from the tabletop world.

π0.5 co-trains on web data; these samples give the same kinds of text targets with exact ground truth
from the simulator, in the world the robot data comes from. Each image is a random scene of the split
in a random state (some objects put into containers, the drawer and the box open or shut, the gripper
somewhere above the table), rendered from one camera; several samples are asked about it.

Format: ``web/samples.jsonl``, one JSON object per line
``{"image": "images/000012.png", "prompt": str, "target": str, "kind": str, "camera": str, "split": str,
"seed": int}`` with PNG images under ``web/images/``. Prompts follow PaliGemma's task prefixes:

* ``caption``:   "caption en" -> "a table with a red cup, a banana and a blue block. the drawer is open."
  (visible objects left to right as the camera sees them; fixture states);
* ``vqa``:       "answer en what colour is the cup left of the bowl?" -> "red"; also "how many red things
  are there?" -> "2", "where is the banana?" -> "in the bowl", "is the drawer open?" -> "yes",
  "what is in the bin?" -> "the red cup and the blue block" / "nothing";
* ``detection``: "detect banana" -> "<loc..><loc..><loc..><loc..> banana" (every visible object of the
  category, " ; "-separated), or a fixture;
* ``region``:    "describe this region: <loc..>x4" -> "yellow banana".

"left of" / "right of" are judged in the image (projected centres at least 2% of the width apart).
Only visible things are asked about (see `vlaflow.sim.tabletop.annotations` for visibility).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vlaflow.sim.tabletop.annotations import Annotator, format_box
from vlaflow.sim.tabletop.scene import (
    BOX_LID_RANGE,
    CATEGORIES,
    CONTAINERS,
    DRAWER_TRAVEL,
    OPEN_CONTAINERS,
    Scene,
)
from vlaflow.sim.tabletop.state import WorldState
from vlaflow.sim.tabletop.tasks import (
    LONG_FAMILIES,
    inside,
    interior,
    is_closed,
    is_open,
    preposition,
    sample_episode,
)
from vlaflow.sim.tabletop.world import TabletopWorld

WEB_KINDS: tuple[str, ...] = ("caption", "vqa", "detection", "region")
_SIDE_MARGIN = 0.02


def _article(label: str) -> str:
    return f"an {label}" if label[0] in "aeiou" else f"a {label}"


def _list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class _Facts:
    """Ground truth about one rendered image: what is visible where, what is inside what."""

    def __init__(self, scene: Scene, world: WorldState, annotator: Annotator, camera: str) -> None:
        self.scene, self.world, self.camera = scene, world, camera
        self.boxes = {e: b for e in annotator.entities if (b := annotator.box(e, camera)) is not None}
        self.labels = {e: annotator.label(e) for e in annotator.entities}
        self.size = annotator.resolution
        self.location = {}
        for o in scene.objects:
            where = next((c for c in CONTAINERS if inside(scene, world, o.name, c)), None)
            self.location[o.name] = where
        self.visible = [o for o in scene.objects if o.name in self.boxes]

    def centre_x(self, entity: str) -> float:
        _, x0, _, x1 = self.boxes[entity]
        return (x0 + x1) / 2

    def box_text(self, entity: str) -> str:
        return format_box(self.boxes[entity], self.labels[entity], self.size, self.size)


def _caption(f: _Facts, rng: np.random.Generator) -> tuple[str, str] | None:
    if not f.visible:
        return None
    objects = sorted(f.visible, key=lambda o: f.centre_x(o.name))
    text = f"a table with {_list([_article(o.label) for o in objects])}."
    for fixture in ("drawer", "box"):
        if fixture in f.boxes and (is_open(f.world, fixture) or is_closed(f.world, fixture)):
            text += f" the {fixture} is {'open' if is_open(f.world, fixture) else 'closed'}."
    return "caption en", text


def _vqa_colour(f: _Facts, rng: np.random.Generator) -> tuple[str, str] | None:
    if not f.visible:
        return None
    target = f.visible[int(rng.integers(len(f.visible)))]
    same = [o for o in f.visible if o.category == target.category]
    if len(same) == 1:
        return f"answer en what colour is the {target.category}?", target.colour
    refs = [e for e in f.boxes if e != target.name]
    for ref in (refs[i] for i in rng.permutation(len(refs))):
        margin = _SIDE_MARGIN * f.size
        for side, sign in (("left of", -1), ("right of", 1)):
            chosen = [o for o in same if sign * (f.centre_x(o.name) - f.centre_x(ref)) > margin]
            if chosen == [target] and ref not in {o.name for o in same}:
                return (
                    f"answer en what colour is the {target.category} {side} the {f.labels[ref]}?",
                    target.colour,
                )
    return None


def _vqa_count(f: _Facts, rng: np.random.Generator) -> tuple[str, str] | None:
    colours = sorted({o.colour for o in f.scene.objects})
    colour = colours[int(rng.integers(len(colours)))]
    if any(o.colour == colour and o not in f.visible for o in f.scene.objects):
        return None  # a hidden one would make the count ambiguous
    count = sum(o.colour == colour for o in f.visible)
    return f"answer en how many {colour} things are there?", str(count)


def _vqa_where(f: _Facts, rng: np.random.Generator) -> tuple[str, str] | None:
    if not f.visible:
        return None
    o = f.visible[int(rng.integers(len(f.visible)))]
    where = f.location[o.name]
    if where is None and o.name in f.world.grasped:
        answer = "in the gripper"
    elif where is None:
        answer = "on the table"
    else:
        answer = f"{preposition(where)} the {where}"
    return f"answer en where is the {o.label}?", answer


def _vqa_state(f: _Facts, rng: np.random.Generator) -> tuple[str, str] | None:
    fixture = ("drawer", "box")[int(rng.integers(2))]
    if fixture not in f.boxes or not (is_open(f.world, fixture) or is_closed(f.world, fixture)):
        return None
    return f"answer en is the {fixture} open?", "yes" if is_open(f.world, fixture) else "no"


def _vqa_contents(f: _Facts, rng: np.random.Generator) -> tuple[str, str] | None:
    container = CONTAINERS[int(rng.integers(len(CONTAINERS)))]
    if container not in f.boxes or (container in ("drawer", "box") and not is_open(f.world, container)):
        return None
    inside_it = [o for o in f.scene.objects if f.location[o.name] == container]
    if any(o not in f.visible for o in inside_it):
        return None
    answer = _list([f"the {o.label}" for o in inside_it]) if inside_it else "nothing"
    return f"answer en what is {preposition(container)} the {container}?", answer


def _detection(f: _Facts, rng: np.random.Generator) -> tuple[str, str] | None:
    if not f.boxes:
        return None
    options = list(f.boxes)
    entity = options[int(rng.integers(len(options)))]
    if entity.startswith("obj"):
        o = f.scene.object(entity)
        if rng.random() < 0.5:  # by category: every visible one
            hidden = [x for x in f.scene.objects if x.category == o.category and x not in f.visible]
            if hidden:
                return None
            same = sorted(
                (x for x in f.visible if x.category == o.category), key=lambda x: f.centre_x(x.name)
            )
            boxes = [format_box(f.boxes[x.name], o.category, f.size, f.size) for x in same]
            return f"detect {o.category}", " ; ".join(boxes)
    return f"detect {f.labels[entity]}", f.box_text(entity)


def _region(f: _Facts, rng: np.random.Generator) -> tuple[str, str] | None:
    if not f.boxes:
        return None
    entity = list(f.boxes)[int(rng.integers(len(f.boxes)))]
    locs = f.box_text(entity).split(" ", 1)[0]
    return f"describe this region: {locs}", f.labels[entity]


_MAKERS = {
    "caption": (_caption,),
    "vqa": (_vqa_colour, _vqa_count, _vqa_where, _vqa_state, _vqa_contents),
    "detection": (_detection,),
    "region": (_region,),
}


def random_state(world: TabletopWorld, rng: np.random.Generator) -> None:
    """Put the world in a random state: articulations, some objects in containers, the gripper."""
    drawer = float(rng.choice([0.0, DRAWER_TRAVEL, rng.uniform(0.0, DRAWER_TRAVEL)], p=[0.45, 0.4, 0.15]))
    lid = float(rng.choice([0.0, BOX_LID_RANGE], p=[0.55, 0.45]))
    world.set_articulations(drawer, lid)
    scene = world.scene
    options = (
        list(OPEN_CONTAINERS)
        + (["drawer"] if drawer >= DRAWER_TRAVEL - 1e-6 else [])
        + (["box"] if lid > 1 else [])
    )
    for o in scene.objects:
        if rng.random() >= 0.4:
            continue
        container = options[int(rng.integers(len(options)))]
        x0, x1, y0, y1, floor = interior(container, drawer)
        if container == "drawer":
            x1 = min(x1, x0 + 0.1)
        r = min(CATEGORIES[o.category].half_extents[:2])
        lx, ly = rng.uniform(x0 + r, max(x0 + r, x1 - r)), rng.uniform(y0 + r, max(y0 + r, y1 - r))
        f = scene.fixture(container)
        c, s = math.cos(f.yaw), math.sin(f.yaw)
        pos = (
            f.x + c * lx - s * ly,
            f.y + s * lx + c * ly,
            floor + CATEGORIES[o.category].half_extents[2] + 0.02,
        )
        world.set_object_pose(o.name, pos, float(rng.uniform(-math.pi, math.pi)))
    grip_pos = (rng.uniform(-0.25, 0.05), rng.uniform(-0.3, 0.3), rng.uniform(0.16, 0.3))
    world.set_gripper(grip_pos, float(rng.uniform(-math.pi / 2, math.pi / 2)), float(rng.uniform(0, 1)))
    world.settle(300)


def web_samples_for_image(
    scene: Scene, world: TabletopWorld, camera: str, rng: np.random.Generator, count: int
) -> list[dict[str, Any]]:
    """Up to `count` samples about `camera`'s view of `world` (a caption first, then mixed kinds)."""
    facts = _Facts(scene, world.state(), world.annotator, camera)
    out: list[dict[str, Any]] = []
    kinds = ["caption"] + [WEB_KINDS[1 + int(i)] for i in rng.integers(0, 3, size=4 * count)]
    seen: set[str] = set()
    for kind in kinds:
        if len(out) >= count:
            break
        makers = _MAKERS[kind]
        made = makers[int(rng.integers(len(makers)))](facts, rng)
        if made is not None and made[0] not in seen:
            seen.add(made[0])
            out.append({"prompt": made[0], "target": made[1], "kind": kind})
    return out


def generate_web_samples(
    output: str | Path,
    *,
    images: int,
    split: str = "train",
    seed: int = 0,
    resolution: int = 224,
    cameras: Sequence[str] = ("scene", "scene", "wrist"),
    samples_per_image: int = 5,
    progress: bool = True,
) -> int:
    """Write `images` rendered scenes and their samples under `output` (``samples.jsonl`` + ``images/``);
    image i uses scene seed ``seed + i`` of `split` and camera ``cameras[i % len(cameras)]`` (repeat a
    camera to weight it). Returns the number of samples written."""
    from PIL import Image

    if images < 1 or samples_per_image < 1:
        raise ValueError(f"images and samples_per_image must be >= 1, got {images}, {samples_per_image}")
    output = Path(output)
    (output / "images").mkdir(parents=True, exist_ok=False)
    written = 0
    with open(output / "samples.jsonl", "w") as f:
        for i in tqdm(range(images), disable=not progress, desc="web samples", unit="img"):
            camera = cameras[i % len(cameras)]
            rng = np.random.default_rng([seed + i, 17])
            family = LONG_FAMILIES[int(rng.integers(len(LONG_FAMILIES)))]
            spec = sample_episode(seed + i, family=family, split=split)
            world = TabletopWorld(spec.scene, cameras=(camera,), resolution=resolution)
            try:
                random_state(world, rng)
                name = f"images/{i:06d}.png"
                Image.fromarray(world.render()[camera]).save(output / name)
                for sample in web_samples_for_image(spec.scene, world, camera, rng, samples_per_image):
                    record = {"image": name, **sample, "camera": camera, "split": split, "seed": seed + i}
                    f.write(json.dumps(record) + "\n")
                    written += 1
            finally:
                world.close()
    return written
