"""`<loc>` boxes: the text format, and projection checked against MuJoCo's own segmentation."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco")

import mujoco

from vlaflow.sim.tabletop.annotations import format_box, loc_value
from vlaflow.sim.tabletop.tasks import sample_episode
from vlaflow.sim.tabletop.world import TabletopWorld
from vlaflow.tokenizers.boxes import draw_boxes, parse_boxes

RES = 96


def test_loc_format_round_trips():
    assert loc_value(0.0, 224) == 0 and loc_value(224.0, 224) == 1023 and loc_value(112.0, 224) == 512
    text = format_box((10.0, 20.5, 100.0, 223.9), "red cup", 224, 224)
    assert text == "<loc0045><loc0093><loc0457><loc1023> red cup"
    both = text + " ; " + format_box((0.0, 0.0, 50.0, 60.0), "drawer", 224, 224)
    assert parse_boxes(both) == [((45, 93, 457, 1023), "red cup"), ((0, 0, 228, 274), "drawer")]
    assert parse_boxes("") == [] and parse_boxes("no boxes here") == []


@pytest.fixture(scope="module")
def world():
    spec = sample_episode(3, family="group_in_container")
    world = TabletopWorld(spec.scene, cameras=("scene", "wrist"), resolution=RES)
    yield world
    world.close()


def _pixels(world: TabletopWorld, name: str, camera: str) -> np.ndarray:
    m = world.model
    body = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, name)
    geoms = [g for g in range(m.ngeom) if m.geom_bodyid[g] == body]
    return np.isin(world.segmentation(camera), geoms)


@pytest.mark.parametrize("camera", ["scene", "wrist"])
def test_boxes_enclose_the_rendered_object(world, camera):
    checked = 0
    for o in world.scene.objects:
        ys, xs = np.nonzero(_pixels(world, o.name, camera))
        box = world.annotator.box(o.name, camera)
        if len(ys) < 4:
            continue
        assert box is not None, f"{o.label} is visible in {camera} but has no box"
        y0, x0, y1, x1 = box
        # Every rendered pixel lies in the box (1 px slack), and the box is not much larger.
        assert y0 - 1 <= ys.min() and ys.max() + 1 <= y1 + 1 and x0 - 1 <= xs.min() and xs.max() + 1 <= x1 + 1
        seen = (ys.max() + 1 - ys.min()) * (xs.max() + 1 - xs.min())
        assert seen / ((y1 - y0) * (x1 - x0)) > 0.6
        checked += 1
    assert checked >= 2


def test_hidden_and_out_of_view_objects_have_no_box(world):
    name = world.scene.objects[0].name
    world.set_object_pose(name, (-0.9, 0.0, 0.5), 0.0)  # behind the scene camera
    assert world.annotator.box(name, "scene") is None
    world.set_object_pose(name, (0.3, 1.2, 0.5), 0.0)  # far to the left of the table
    assert world.annotator.box(name, "scene") is None
    assert world.boxes([name]) == {"scene": "", "wrist": ""}
    with pytest.raises(KeyError, match="unknown entity"):
        world.annotator.box("obj99", "scene")


def test_boxes_text_names_and_draws_entities(world):
    names = [o.name for o in world.scene.objects[1:]]
    text = world.boxes([*names, "drawer"])["scene"]
    labels = [label for _, label in parse_boxes(text)]
    assert "drawer" in labels and set(labels) <= {*(world.scene.label(n) for n in names), "drawer"}
    image = world.render()["scene"]
    drawn = draw_boxes(image, text)
    assert drawn.shape == image.shape and (drawn != image).any()
