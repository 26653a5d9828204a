"""The assisted skills: a forgiving grasp of objects and handles, everything else as in the physical mode."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco")

from vlaflow.sim.tabletop.expert import ExpertPolicy
from vlaflow.sim.tabletop.mjcf import scene_xml
from vlaflow.sim.tabletop.rollout import rollout
from vlaflow.sim.tabletop.skills import GRASP_TOLERANCE, HOLD_GRIP
from vlaflow.sim.tabletop.tasks import is_open, sample_episode
from vlaflow.sim.tabletop.world import TabletopEnv


def _pick_spec(seed: int = 0):
    """The first single-command episode from `seed` on that picks up an object."""
    return next(
        s
        for s in (sample_episode(i, family="instruction") for i in range(seed, seed + 50))
        if s.subtasks[0].kind == "pick"
    )


def _go(env: TabletopEnv, obs: dict, goal: np.ndarray, grip: float, steps: int = 60) -> dict:
    """Move the tool centre point to `goal` in steps of at most 1.5 cm, holding the gripper command."""
    for _ in range(steps):
        error = goal - obs["world"].tcp
        if np.linalg.norm(error) < 0.003:
            break
        step = error if np.linalg.norm(error) < 0.015 else error * 0.015 / np.linalg.norm(error)
        obs, *_ = env.step(np.array([*step, 0.0, grip]))
    return obs


def _sloppy_pick(skills: str, spec, offset, *, close_above: float = 0.0) -> tuple[TabletopEnv, dict]:
    """Descend next to the target (`offset` in the table plane, `close_above` too high), close, lift."""
    env = TabletopEnv(cameras=(), skills=skills)
    obs = env.reset(spec=spec)
    target = obs["world"].positions[spec.targets[0]].copy()
    target[:2] += offset
    obs = _go(env, obs, np.array([target[0], target[1], 0.15]), 0.0)
    obs = _go(env, obs, np.array([target[0], target[1], max(target[2], 0.015) + close_above]), 0.0)
    for _ in range(6):
        obs, *_ = env.step(np.array([0.0, 0.0, 0.0, 0.0, 1.0]))
    obs = _go(env, obs, np.array([target[0], target[1], 0.2]), 1.0)
    return env, obs


def test_physical_scenes_have_no_assist_and_unknown_skills_are_errors():
    spec = sample_episode(0, family="instruction")
    assert "attach_" not in scene_xml(spec.scene) and "attach_obj0" in scene_xml(spec.scene, "assisted")
    with pytest.raises(ValueError, match="skills must be one of"):
        TabletopEnv(skills="easy")
    with TabletopEnv(cameras=()) as env:
        env.reset(0)
        assert env.world.assist is None


def test_an_assisted_grasp_holds_where_a_physical_one_slips():
    """Closing 3 cm above a small object: the physical fingers close on air, the assisted ones hold."""
    spec = next(
        s
        for i in range(200)
        if (s := sample_episode(i, family="instruction")).subtasks[0].kind == "pick"
        and s.scene.object(s.targets[0]).kind.half_extents[2] < 0.02
    )
    env, obs = _sloppy_pick("physical", spec, np.zeros(2), close_above=0.035)
    assert not env.tracker.success and spec.targets[0] not in obs["world"].grasped
    env.close()
    env, obs = _sloppy_pick("assisted", spec, np.zeros(2), close_above=0.035)
    assert env.tracker.success and spec.targets[0] in obs["world"].grasped
    assert env.world.assist.held == spec.targets[0]
    held_at = obs["world"].positions[spec.targets[0]][2]
    for _ in range(15):  # open: the object drops
        obs, *_ = env.step(np.array([0.0, 0.0, 0.0, 0.0, 0.0]))
    assert env.world.assist.held is None and spec.targets[0] not in obs["world"].grasped
    assert obs["world"].positions[spec.targets[0]][2] < held_at - 0.1
    env.close()


def test_the_assist_has_a_tolerance_and_needs_closing_fingers():
    spec = _pick_spec()
    env, obs = _sloppy_pick("assisted", spec, np.array([0.0, GRASP_TOLERANCE + 0.06]))
    assert env.world.assist.held is None and not env.tracker.success  # too far beside it
    env.close()
    # Fingers closed on nothing, then lowered onto the object: nothing is grasped.
    env = TabletopEnv(cameras=(), skills="assisted")
    obs = env.reset(spec=spec)
    target = obs["world"].positions[spec.targets[0]]
    for _ in range(8):
        obs, *_ = env.step(np.array([0.0, 0.0, 0.0, 0.0, 1.0]))
    obs = _go(env, obs, np.array([target[0], target[1], 0.15]), 1.0)
    obs = _go(env, obs, np.array([target[0], target[1], target[2]]), 1.0)
    assert env.world.assist.held is None
    env.close()


def test_the_assisted_drawer_handle_holds_while_the_command_stays_high():
    spec = next(
        s for i in range(200) if (s := sample_episode(i, family="instruction")).prompt == "open the drawer"
    )
    env = TabletopEnv(cameras=(), skills="assisted")
    obs = env.reset(spec=spec)
    policy = ExpertPolicy()
    while env.world.assist.held is None:  # the expert's approach and grasp of the handle bar
        obs, *_ = env.step(policy(obs)["actions"][0])
    assert env.world.assist.held == "drawer"
    pull = np.array([-0.01, 0.0, 0.0, 0.0, HOLD_GRIP])  # straight towards the robot, barely closed
    for _ in range(15):
        obs, *_ = env.step(pull)
    assert is_open(obs["world"], "drawer") and env.tracker.success
    obs, *_ = env.step(np.array([0.0, 0.0, 0.0, 0.0, HOLD_GRIP - 0.01]))
    assert env.world.assist.held is None
    env.close()


@pytest.mark.parametrize("family", ["instruction", "items_in_box"])
def test_the_expert_solves_assisted_episodes(family):
    with TabletopEnv(family, split="ood", cameras=(), skills="assisted") as env:
        for seed in (1_000_000, 1_000_001):
            episode = rollout(env, ExpertPolicy(), seed=seed, record=False)
            assert episode.success, (family, seed, episode.spec.prompt)


def test_perturbed_rollouts_record_the_experts_corrections():
    """Noise injection: the hand drifts, the episode keeps what the expert asked for (not what ran),
    the expert still succeeds, and the same seed drifts the same way."""
    with TabletopEnv("instruction", cameras=(), skills="assisted") as env:
        clean = rollout(env, ExpertPolicy(), seed=3, record=False)
        runs = [rollout(env, ExpertPolicy(), seed=3, record=False, perturb=0.004) for _ in range(2)]
    assert clean.success and all(r.success for r in runs)
    np.testing.assert_array_equal(runs[0].states, runs[1].states)
    assert not np.allclose(runs[0].states[: clean.length], clean.states[: len(runs[0].states)])
    # Recorded actions are the expert's commands: replaying them without the drift does not give the
    # recorded states (it would if the executed, perturbed actions had been recorded).
    moved = np.diff(runs[0].states[:, :3], axis=0)
    assert np.abs(moved - runs[0].actions[:-1, :3]).max() > 0.004
    with pytest.raises(ValueError, match="perturb"), TabletopEnv("instruction", cameras=()) as env:
        rollout(env, ExpertPolicy(), seed=3, record=False, perturb=-1.0)
