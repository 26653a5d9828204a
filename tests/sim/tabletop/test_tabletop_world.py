"""The tabletop world: environment API, physics of the gripper, scoring, and the train / OOD splits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("mujoco")

from vlaflow.sim.tabletop.scene import HELD_OUT_COMBOS, HELD_OUT_LAYOUTS, LAYOUTS, check_split
from vlaflow.sim.tabletop.tasks import FAMILIES, TaskTracker, interior, sample_episode
from vlaflow.sim.tabletop.world import ACTION_DIM, STATE_DIM, WORKSPACE_HIGH, TabletopEnv, TabletopWorld

RES = 64


@pytest.fixture(scope="module")
def env():
    with TabletopEnv("group_in_container", cameras=("scene", "wrist"), resolution=RES) as env:
        yield env


def test_reset_and_step_return_the_documented_observation(env):
    obs = env.reset(3)
    assert obs["state"].shape == (STATE_DIM,) and obs["state"].dtype == np.float32
    assert set(obs["images"]) == {"scene", "wrist"}
    for image in obs["images"].values():
        assert image.shape == (RES, RES, 3) and image.dtype == np.uint8 and image.std() > 5
    assert obs["prompt"] == env.spec.prompt and obs["prompt"].startswith("put the ")
    obs2, reward, terminated, truncated, info = env.step(np.zeros(ACTION_DIM))
    assert reward == info["progress"] == 0.0 and not terminated and not truncated
    assert set(info) >= {"progress", "success", "completed", "language_following", "acted_on"}
    assert len(info["completed"]) == len(env.spec.subtasks) and env.steps == 1
    # Holding still keeps the scene still: the first frame after settling is stable.
    np.testing.assert_allclose(obs2["state"][:3], obs["state"][:3], atol=2e-3)


def test_same_seed_same_episode(env):
    first = env.reset(11)["state"]
    spec = env.spec
    again = env.reset(11)["state"]
    assert env.spec == spec
    np.testing.assert_array_equal(first, again)
    assert sample_episode(12, family="group_in_container") != spec


def test_actions_move_the_gripper_and_close_the_fingers(env):
    obs = env.reset(5)
    start = obs["state"].copy()
    for _ in range(10):
        obs, *_ = env.step([0.0, 0.02, 0.02, 0.1, 1.0])  # left, up, turn, close
    assert obs["state"][1] - start[1] == pytest.approx(0.2, abs=0.02)
    assert obs["state"][2] == pytest.approx(WORKSPACE_HIGH[2], abs=0.01)  # kept in the workspace
    assert obs["state"][3] - start[3] == pytest.approx(1.0, abs=0.05)
    assert obs["state"][4] < 0.01 < start[4]
    for action in [[1.0, 0.0, 0.0, 0.0, 1.0]] * 3 + [[0.0, 0.0, 0.0, 0.0, 1.0]] * 5:  # 3 x 2 cm at most
        obs, *_ = env.step(action)
    assert obs["state"][0] - start[0] == pytest.approx(0.06, abs=0.005)


def test_bad_actions_and_calls_are_clear_errors():
    env = TabletopEnv(cameras=())
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(ACTION_DIM))
    env.reset(0)
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        env.step(np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        env.step([0.0, np.nan, 0.0, 0.0, 0.0])
    env.close()
    with pytest.raises(ValueError, match="unknown camera"):
        TabletopEnv(cameras=("top",))
    with pytest.raises(TypeError, match="sequence"):
        TabletopEnv(cameras="scene")
    with pytest.raises(ValueError, match="split"):
        TabletopEnv(split="test")
    with pytest.raises(ValueError, match="family"):
        TabletopEnv("make_coffee")
    with pytest.raises(ValueError, match="seed"):
        sample_episode(-1)


def test_rubric_scores_places_and_language_following():
    spec = sample_episode(2, family="group_in_container", split="train")
    world = TabletopWorld(spec.scene, cameras=(), resolution=RES)
    tracker = TaskTracker(spec, world.state())
    assert tracker.progress == 0.0 and not tracker.success and tracker.language_following == 0.0
    fixture = spec.scene.fixture(spec.subtasks[1].dest)
    x0, x1, _, _, floor = interior(fixture.kind)
    for k, name in enumerate(spec.targets):  # put every target in the container, side by side
        lx = x0 + (k + 1) * (x1 - x0) / (len(spec.targets) + 1)
        pos = (fixture.x + np.cos(fixture.yaw) * lx, fixture.y + np.sin(fixture.yaw) * lx, floor + 0.04)
        world.set_object_pose(name, pos, 0.0)
    world.settle(400)
    tracker.update(world.state())
    places = [s.kind == "place" for s in spec.subtasks]
    assert tracker.completed == places  # picks were never seen: half the points
    assert tracker.progress == pytest.approx(0.5) and not tracker.success
    assert tracker.language_following == 1.0
    distractor = next(o for o in spec.scene.objects if o.name not in spec.targets)
    world.set_object_pose(distractor.name, (0.3, 0.0, 0.05), 0.0)
    world.settle(200)
    tracker.update(world.state())
    n = len(spec.targets)
    assert tracker.language_following == pytest.approx(n / (n + 1))
    world.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_splits_are_disjoint(family):
    for seed in range(12):
        train = sample_episode(seed, family=family, split="train")
        assert train.scene.layout not in HELD_OUT_LAYOUTS
        assert not {(o.category, o.colour) for o in train.scene.objects} & HELD_OUT_COMBOS
        ood = sample_episode(seed, family=family, split="ood")
        assert ood.scene.layout in HELD_OUT_LAYOUTS
        named = ood.targets or [o.name for o in ood.scene.objects]
        assert {(ood.scene.object(n).category, ood.scene.object(n).colour) for n in named} & HELD_OUT_COMBOS
        assert 1 <= len(train.subtasks) <= 8 and 1 <= len(ood.subtasks) <= 8


def test_check_split_rejects_held_out_scenes():
    spec = sample_episode(0, family="clean_up", split="train")
    check_split(spec.scene, "train")
    with pytest.raises(ValueError, match="held-out layout"):
        check_split(dataclasses.replace(spec.scene, layout=min(HELD_OUT_LAYOUTS)), "train")
    category, colour = sorted(HELD_OUT_COMBOS)[0]
    odd = dataclasses.replace(spec.scene.objects[0], category=category, colour=colour)
    with pytest.raises(ValueError, match="held-out objects"):
        check_split(dataclasses.replace(spec.scene, objects=(odd, *spec.scene.objects[1:])), "train")
    with pytest.raises(ValueError, match="training layout"):
        check_split(spec.scene, "ood")
    assert len(LAYOUTS) == 36 and len(HELD_OUT_LAYOUTS) == 6
