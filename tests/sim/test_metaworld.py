"""Meta-World harness: task tables, seeding, image orientation, experts, chunked and parallel rollouts."""

import numpy as np
import pytest

from vlaflow.sim.metaworld import (
    DIFFICULTY,
    DIFFICULTY_LEVELS,
    MT10_TASKS,
    MT50_TASKS,
    TASK_DESCRIPTIONS,
    ExpertPolicy,
    MetaWorldEnv,
    episode_jobs,
    resolve_tasks,
    rollout,
    rollout_many,
)


@pytest.fixture(scope="module")
def metaworld():
    return pytest.importorskip("metaworld")


def test_task_tables_are_consistent():
    assert len(set(MT50_TASKS)) == 50
    assert set(MT10_TASKS) <= set(MT50_TASKS)
    assert set(DIFFICULTY) == set(TASK_DESCRIPTIONS) == set(MT50_TASKS)
    sizes = {level: sum(v == level for v in DIFFICULTY.values()) for level in DIFFICULTY_LEVELS}
    assert sizes == {"easy": 28, "medium": 11, "hard": 6, "very_hard": 5}
    # push-v3 and push-back-v3 share a prompt, hence 49 tasks in lerobot/metaworld_mt50.
    assert len(set(TASK_DESCRIPTIONS.values())) == 49


def test_task_tables_match_installed_metaworld(metaworld):
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT10_V3
    from metaworld.policies import ENV_POLICY_MAP

    assert set(MT50_TASKS) == set(ALL_V3_ENVIRONMENTS) == set(ENV_POLICY_MAP)
    assert list(MT10_TASKS) == list(MT10_V3)


def test_resolve_tasks():
    assert resolve_tasks("mt50") == list(MT50_TASKS)
    assert resolve_tasks(" MT10 ") == list(MT10_TASKS)
    assert resolve_tasks("very_hard") == [t for t in MT50_TASKS if DIFFICULTY[t] == "very_hard"]
    assert resolve_tasks("reach-v3, push-v3,reach-v3") == ["reach-v3", "push-v3"]
    easy = {t for t in MT50_TASKS if DIFFICULTY[t] == "easy"}
    mixed = resolve_tasks("mt10,easy")
    assert mixed[:10] == list(MT10_TASKS) and sorted(mixed) == sorted(set(MT10_TASKS) | easy)
    with pytest.raises(ValueError, match=r"unknown Meta-World task\(s\) \['reach-v2'\].*window-close-v3"):
        resolve_tasks("reach-v3,reach-v2")
    with pytest.raises(ValueError, match="empty"):
        resolve_tasks(" , ")


def test_seed_fixes_initial_state(metaworld):
    a = MetaWorldEnv("pick-place-v3", seed=3, cameras=())
    b = MetaWorldEnv("pick-place-v3", seed=3, cameras=())
    first = a.reset()["raw"]
    np.testing.assert_array_equal(first, b.reset()["raw"])
    assert not np.array_equal(first, a.reset()["raw"])  # successive resets draw new variations
    np.testing.assert_array_equal(first, a.reset(seed=3)["raw"])
    assert not np.array_equal(first, a.reset(seed=4)["raw"])
    a.close()
    b.close()


def _wood_below_minus_above(image: np.ndarray) -> float:
    """Fraction of table-coloured (brown) pixels in the lower half minus the upper half."""
    x = image.astype(np.int32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    wood = (r > g) & (g > b) & (r - b > 40) & (g > 0.5 * r)
    half = wood.shape[0] // 2
    return float(wood[half:].mean() - wood[:half].mean())


@pytest.mark.parametrize("task", ["reach-v3", "shelf-place-v3"])
def test_observation_layout_and_upright_images(metaworld, task):
    with MetaWorldEnv(task, seed=0, cameras=("corner2", "corner4", "corner"), resolution=64) as env:
        obs = env.reset()
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (4,)
    np.testing.assert_array_equal(obs["state"], obs["raw"][:4].astype(np.float32))
    assert obs["raw"].shape == (39,) and obs["prompt"] == TASK_DESCRIPTIONS[task] == env.prompt
    for cam, image in obs["images"].items():
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8, cam
    # LeRobot's corner2 is moved onto the stock corner4 pose.
    np.testing.assert_array_equal(obs["images"]["corner2"], obs["images"]["corner4"])
    for cam in ("corner2", "corner"):
        image = obs["images"][cam]
        assert _wood_below_minus_above(image) > 0.15, f"{cam}: the table should fill the lower half"
        assert _wood_below_minus_above(image[::-1, ::-1]) < -0.15


@pytest.mark.parametrize("task", ["reach-v3", "button-press-topdown-v3"])
def test_expert_succeeds_and_episode_stops_at_first_success(metaworld, task):
    with MetaWorldEnv(task, seed=0, cameras=()) as env:
        episode = rollout(env, ExpertPolicy(task), seed=7)
    assert episode.success and episode.task == task and episode.seed == 7
    assert episode.success_step == episode.length - 1 < env.max_steps
    assert episode.states.shape == (episode.length, 4) and episode.actions.shape == (episode.length, 4)
    assert episode.raw.shape == (episode.length, 39) and episode.rewards.shape == (episode.length,)
    assert episode.actions.dtype == np.float32 and np.abs(episode.actions).max() <= 1.0
    assert episode.images == {}


def test_steps_after_success_and_recorded_images(metaworld):
    with MetaWorldEnv("reach-v3", seed=0, resolution=32) as env:
        episode = rollout(env, ExpertPolicy("reach-v3"), seed=1, steps_after_success=3)
        unrecorded = rollout(env, ExpertPolicy("reach-v3"), seed=1, record=False)
    assert episode.success and episode.length == episode.success_step + 4
    assert episode.images["corner2"].shape == (episode.length, 32, 32, 3)
    assert unrecorded.images == {} and unrecorded.length == episode.success_step + 1
    np.testing.assert_array_equal(unrecorded.actions, episode.actions[: unrecorded.length])


class _ChunkedExpert:
    """Stands in for a neural policy: returns 8 actions per call (the expert's action, repeated)."""

    def __init__(self, task: str) -> None:
        self.expert = ExpertPolicy(task)
        self.calls = 0
        self.resets = 0
        self.chunks: list[np.ndarray] = []

    def reset(self) -> None:
        self.resets += 1

    def __call__(self, obs: dict) -> np.ndarray:
        self.calls += 1
        chunk = np.tile(self.expert(obs), (8, 1)) * np.linspace(1.0, 0.5, 8, dtype=np.float32)[:, None]
        self.chunks.append(chunk)
        return chunk


def test_chunked_execution(metaworld):
    policy = _ChunkedExpert("reach-v3")
    with MetaWorldEnv("reach-v3", seed=0, cameras=()) as env:
        episode = rollout(env, policy, seed=2, steps_per_chunk=4)
    assert policy.resets == 1 and episode.success
    assert policy.calls == -(-episode.length // 4)
    executed = np.concatenate([chunk[:4] for chunk in policy.chunks])[: episode.length]
    np.testing.assert_allclose(episode.actions, np.clip(executed, -1, 1))


def test_input_validation(metaworld):
    with MetaWorldEnv("reach-v3", seed=0, cameras=(), max_steps=5) as env:
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.zeros(4))
        env.reset()
        with pytest.raises(ValueError, match=r"action must have shape \(4,\)"):
            env.step(np.zeros(3))
        episode = rollout(env, lambda obs: np.zeros(4, np.float32))
        assert episode.length == 5 and not episode.success
        with pytest.raises(ValueError, match=r"policy output must have shape \(4,\) or \(T_chunk, 4\)"):
            rollout(env, lambda obs: np.zeros((2, 3)))
    with pytest.raises(ValueError, match="unknown camera"):
        MetaWorldEnv("reach-v3", seed=0, cameras=("front",))
    with pytest.raises(ValueError, match="task must be one Meta-World v3 task"):
        MetaWorldEnv("reach", seed=0)


def test_rollout_many_parallel_matches_in_process(metaworld):
    jobs = episode_jobs(["reach-v3", "button-press-topdown-v3"], 2, seed=0)
    assert jobs == [
        ("reach-v3", 0),
        ("reach-v3", 1),
        ("button-press-topdown-v3", 0),
        ("button-press-topdown-v3", 1),
    ]
    kwargs = {"env_kwargs": {"cameras": ()}, "record": False}
    parallel = {(ep.task, ep.seed): ep for ep in rollout_many(jobs, ExpertPolicy, workers=2, **kwargs)}
    serial = {(ep.task, ep.seed): ep for ep in rollout_many(jobs, ExpertPolicy, workers=1, **kwargs)}
    assert set(parallel) == set(serial) == set(jobs)
    for key, episode in parallel.items():
        assert episode.success, key
        np.testing.assert_array_equal(episode.actions, serial[key].actions)
