from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vlaflow.data.lerobot import (
    LeRobotDataset,
    LeRobotDatasetWriter,
    LeRobotFormatWarning,
    LeRobotMeta,
    validate_dataset,
)

CAM = "observation.images.cam"
WRIST = "observation.images.wrist"
FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [4], "names": ["j0", "j1", "j2", "j3"]},
    "action": {"dtype": "float32", "shape": [3]},
    CAM: {"dtype": "video", "shape": [32, 32, 3]},
    "subtask": {"dtype": "string", "shape": [1]},
    "done": {"dtype": "bool", "shape": [1]},
    "reward": {"dtype": "float64", "shape": [1]},
    "grid": {"dtype": "int64", "shape": [2, 2]},
}


def make_episode(e: int, length: int, counter_frames) -> dict:
    rng = np.random.default_rng(e)
    return {
        "observation.state": rng.normal(size=(length, 4)).astype(np.float32),
        "action": rng.normal(size=(length, 3)),  # float64 in, stored as float32
        CAM: counter_frames(100 * e + np.arange(length), 32),
        "subtask": [f"episode {e} step {k}" for k in range(length)],
        "done": np.arange(length) == length - 1,
        "reward": rng.random(length),
        "grid": rng.integers(0, 9, size=(length, 2, 2)),
    }


def write(root: Path, lengths: list[int], counter_frames, **kwargs) -> list[dict]:
    episodes = [make_episode(e, n, counter_frames) for e, n in enumerate(lengths)]
    with LeRobotDatasetWriter(root, fps=10, features=FEATURES, robot_type="arm", **kwargs) as writer:
        for e, frames in enumerate(episodes):
            assert writer.add_episode(frames, task=f"task {e % 2}") == e
    return episodes


@pytest.fixture
def written(tmp_path: Path, counter) -> tuple[Path, list[dict]]:
    root = tmp_path / "ds"
    return root, write(root, [6, 9, 4], counter[0])


def test_round_trip_numeric_columns_and_metadata(written):
    root, episodes = written
    ds = LeRobotDataset(root)
    assert len(ds) == 19 and ds.num_episodes == 3
    for key in ("observation.state", "grid"):
        np.testing.assert_array_equal(ds.column(key), np.concatenate([ep[key] for ep in episodes]))
    np.testing.assert_array_equal(
        ds.column("reward")[:, 0], np.concatenate([ep["reward"] for ep in episodes])
    )
    np.testing.assert_array_equal(
        ds.column("action"), np.concatenate([ep["action"] for ep in episodes]).astype(np.float32)
    )
    item = ds[8]  # episode 1, frame 2
    assert item["observation.state"].dtype == np.float32 and item["observation.state"].shape == (4,)
    np.testing.assert_array_equal(item["observation.state"], episodes[1]["observation.state"][2])
    assert item["grid"].shape == (2, 2) and item["grid"].dtype == np.int64
    assert item["done"].dtype == np.bool_ and item["done"].shape == (1,)
    assert item["subtask"] == "episode 1 step 2" and isinstance(item["subtask"], str)
    assert item["task"] == "task 1"
    assert (item["index"][0], item["episode_index"][0], item["frame_index"][0]) == (8, 1, 2)
    assert item["timestamp"][0] == pytest.approx(0.2)
    assert ds.episode_of(8) == 1 and ds.episode_range(1) == range(6, 15)

    meta = ds.meta
    assert (meta.fps, meta.robot_type, meta.codebase_version) == (10, "arm", "v3.0")
    assert meta.tasks == ["task 0", "task 1"] and meta.camera_keys == [CAM]
    assert [(ep["length"], ep["dataset_from_index"], ep["dataset_to_index"]) for ep in meta.episodes] == [
        (6, 0, 6),
        (9, 6, 15),
        (4, 15, 19),
    ]
    assert meta.episodes[2]["tasks"] == ["task 0"]
    assert meta.info["features"]["observation.state"]["names"] == ["j0", "j1", "j2", "j3"]
    assert meta.info["features"][CAM]["info"]["video.codec"] == "h264"
    actions = ds.column("action").astype(np.float64)
    np.testing.assert_allclose(meta.stats["action"]["mean"], actions.mean(0))
    np.testing.assert_allclose(meta.stats["action"]["q01"], np.quantile(actions, 0.01, axis=0))
    assert meta.stats[CAM]["mean"].shape == (3, 1, 1) and meta.stats[CAM]["count"].tolist() == [19]
    assert "subtask" not in meta.stats
    validate_dataset(root)
    assert not list(root.parent.glob(".ds.partial-*"))


def test_video_frames_match_and_come_in_order(written, counter):
    root, episodes = written
    _, read_counter = counter
    ds = LeRobotDataset(root)
    originals = np.concatenate([ep[CAM] for ep in episodes])
    expected = np.concatenate([100 * e + np.arange(len(ep[CAM])) for e, ep in enumerate(episodes)])
    order = list(range(len(ds))) + list(np.random.default_rng(0).permutation(len(ds))) + [18, 0, 18, 7]
    for i in order:
        frame = ds[i][CAM]
        assert frame.dtype == np.uint8 and frame.shape == (32, 32, 3)
        assert read_counter(frame) == expected[i], f"frame {i}"
        assert np.abs(frame.astype(int) - originals[i]).mean() < 3.0


def test_action_chunks_pad_past_episode_end(written):
    root, episodes = written
    ds = LeRobotDataset(root, action_horizon=5)
    actions = episodes[0]["action"].astype(np.float32)
    item = ds[3]  # episode 0 has 6 frames: steps 3, 4, 5 exist, then 2 pads
    assert item["action"].shape == (5, 3)
    np.testing.assert_array_equal(item["action"], actions[[3, 4, 5, 5, 5]])
    np.testing.assert_array_equal(item["action_is_pad"], [False, False, False, True, True])
    first_of_next = ds[6]
    np.testing.assert_array_equal(first_of_next["action"], episodes[1]["action"][:5].astype(np.float32))
    assert not first_of_next["action_is_pad"].any()
    assert ds[18]["action_is_pad"].tolist() == [False, True, True, True, True]


def test_size_caps_split_data_and_video_files_into_chunks(tmp_path, counter):
    counter_frames, read_counter = counter
    root = tmp_path / "small_files"
    lengths = [5, 6, 4, 7, 5]
    write(
        root, lengths, counter_frames, chunks_size=2, data_files_size_in_mb=1e-4, video_files_size_in_mb=1e-4
    )
    assert len(list(root.glob("data/chunk-*/file-*.parquet"))) == 5
    assert (root / "data/chunk-002/file-000.parquet").is_file()
    assert len(list(root.glob(f"videos/{CAM}/chunk-*/file-*.mp4"))) == 5
    assert len(list(root.glob("meta/episodes/chunk-*/file-*.parquet"))) > 1
    ds = LeRobotDataset(root)
    assert ds.meta.episodes[3]["videos/observation.images.cam/chunk_index"] == 1
    expected = np.concatenate([100 * e + np.arange(n) for e, n in enumerate(lengths)])
    for i in np.random.default_rng(1).permutation(len(ds)):
        assert read_counter(ds[i][CAM]) == expected[i]


def test_video_episodes_share_a_file_under_the_cap(written):
    root, _ = written
    ds = LeRobotDataset(root)
    assert [ep[f"videos/{CAM}/from_timestamp"] for ep in ds.meta.episodes] == [0.0, 0.6, 1.5]
    assert [ep[f"videos/{CAM}/to_timestamp"] for ep in ds.meta.episodes] == [0.6, 1.5, 1.9]
    assert {ep[f"videos/{CAM}/file_index"] for ep in ds.meta.episodes} == {0}


def test_reads_v21_layout(v21_dataset, counter):
    _, read_counter = counter
    validate_dataset(v21_dataset)
    ds = LeRobotDataset(v21_dataset, action_horizon=3)
    assert ds.meta.codebase_version == "v2.1" and len(ds) == 24 and ds.meta.robot_type == "koch"
    assert [ep["dataset_from_index"] for ep in ds.meta.episodes] == [0, 7, 19]
    item = ds[10]  # episode 1, frame 3
    np.testing.assert_array_equal(item["observation.state"], [1003, 1006, 1009])
    np.testing.assert_array_equal(item["action"], [[103.5, 97.5], [104.5, 96.5], [105.5, 95.5]])
    assert item["task"] == "open the drawer"
    assert read_counter(item["observation.images.top"]) == 103
    assert ds[23]["action_is_pad"].tolist() == [False, True, True]
    for i in np.random.default_rng(2).permutation(len(ds)):
        e, k = ds.episode_of(i), i - ds.episode_range(ds.episode_of(i)).start
        assert read_counter(ds[i]["observation.images.top"]) == 100 * e + k
    states = ds.column("observation.state").astype(np.float64)
    np.testing.assert_allclose(ds.meta.stats["observation.state"]["mean"], states.mean(0))
    np.testing.assert_allclose(ds.meta.stats["observation.state"]["std"], states.std(0))
    assert ds.meta.stats["observation.images.top"]["mean"].shape == (3, 1, 1)


def test_reads_hand_built_v30_with_av1_videos_in_several_files(v30_video_dataset, counter):
    _, read_counter = counter
    validate_dataset(v30_video_dataset)
    ds = LeRobotDataset(v30_video_dataset)
    assert ds.meta.tasks == ["pick the cube", "open the drawer"]
    assert ds.meta.info["features"]["observation.images.front"]["dtype"] == "video"
    assert len(ds) == 23
    for i in list(range(len(ds))) + list(np.random.default_rng(3).permutation(len(ds))):
        e = ds.episode_of(i)
        assert read_counter(ds[i]["observation.images.front"]) == 100 * e + i - ds.episode_range(e).start
    assert ds[20]["task"] == "pick the cube"  # episode 2


def test_reads_hand_built_v30_with_png_images_in_parquet(v30_image_dataset, counter):
    counter_frames, _ = counter
    validate_dataset(v30_image_dataset)
    ds = LeRobotDataset(v30_image_dataset, image_keys=["observation.images.front"])
    assert ds.camera_keys == ["observation.images.front"]
    for i in range(len(ds)):
        e = ds.episode_of(i)
        k = i - ds.episode_range(e).start
        np.testing.assert_array_equal(ds[i]["observation.images.front"], counter_frames([100 * e + k], 32)[0])


def test_image_features_round_trip_through_the_writer_with_exact_stats(tmp_path):
    root = tmp_path / "png"
    features = {"action": {"dtype": "float32", "shape": [2]}, WRIST: {"dtype": "image", "shape": [16, 16, 3]}}
    images = np.random.default_rng(0).integers(0, 256, size=(2, 5, 16, 16, 3), dtype=np.uint8)
    images[1, ..., 2] //= 2  # a channel with another distribution
    with LeRobotDatasetWriter(root, fps=5, features=features) as writer:
        for episode in images:
            writer.add_episode({"action": np.zeros((5, 2)), WRIST: episode}, task="t")
    ds = LeRobotDataset(root, state_key=None)
    np.testing.assert_array_equal(np.stack([ds[i][WRIST] for i in range(10)]), images.reshape(10, 16, 16, 3))
    stats = ds.meta.stats[WRIST]
    pixels = images.reshape(-1, 3).astype(np.float64) / 255  # every frame is sampled at this size
    for name, q in [("q01", 0.01), ("q10", 0.1), ("q50", 0.5), ("q90", 0.9), ("q99", 0.99)]:
        np.testing.assert_allclose(stats[name][:, 0, 0], np.quantile(pixels, q, axis=0), err_msg=name)
    np.testing.assert_allclose(stats["mean"][:, 0, 0], pixels.mean(0))
    np.testing.assert_allclose(stats["std"][:, 0, 0], pixels.std(0))
    np.testing.assert_allclose(stats["max"][:, 0, 0], pixels.max(0))
    assert stats["count"].tolist() == [10]


def test_dataloader_workers_return_the_same_items(written):
    root, _ = written
    ds = LeRobotDataset(root, action_horizon=4)
    ds[5]  # opens a decoder in this process before the workers fork
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    batches = list(loader)
    for b, batch in enumerate(batches):
        for j in range(len(batch["index"])):
            item = ds[4 * b + j]
            for key, value in item.items():
                got = batch[key][j]
                if isinstance(value, str):
                    assert got == value
                else:
                    np.testing.assert_array_equal(got.numpy(), value, err_msg=key)


def test_dataset_pickles_without_open_files(written):
    root, _ = written
    ds = LeRobotDataset(root)
    before = ds[3][CAM]
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[3][CAM], before)


def test_unfinished_writer_leaves_nothing_at_root(tmp_path, counter):
    root = tmp_path / "crash"
    writer = LeRobotDatasetWriter(root, fps=10, features=FEATURES)
    writer.add_episode(make_episode(0, 3, counter[0]), task="t")
    assert not root.exists() and len(list(tmp_path.glob(".crash.partial-*"))) == 1
    with pytest.raises(FileNotFoundError):
        LeRobotDataset(root)
    writer.abort()
    assert not list(tmp_path.iterdir())


def test_exception_inside_the_context_discards_the_partial_dataset(tmp_path, counter):
    root = tmp_path / "failed"
    with (
        pytest.raises(RuntimeError, match="boom"),
        LeRobotDatasetWriter(root, fps=10, features=FEATURES) as w,
    ):
        w.add_episode(make_episode(0, 3, counter[0]), task="t")
        raise RuntimeError("boom")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.pop("action"), r"missing \['action'\]"),
        (lambda f: f.update(extra=np.zeros(3)), r"unexpected \['extra'\]"),
        (lambda f: f.update({"observation.state": np.zeros((3, 5))}), r"observation.state.*\(3, 4\)"),
        (lambda f: f.update(grid=np.zeros((3, 2, 2))), "cannot store float64 values as int64"),
        (lambda f: f.update({CAM: np.zeros((3, 32, 32, 3), np.float32)}), "uint8"),
        (lambda f: f.update(subtask=[1, 2, 3]), "subtask"),
        (lambda f: f.update(done=np.zeros(4, bool)), "same number"),
    ],
)
def test_writer_rejects_frames_that_do_not_fit_the_features(tmp_path, counter, change, message):
    frames = make_episode(0, 3, counter[0])
    change(frames)
    writer = LeRobotDatasetWriter(tmp_path / "bad", fps=10, features=FEATURES)
    with pytest.raises(ValueError, match=message):
        writer.add_episode(frames, task="t")
    writer.abort()


def test_writer_rejects_bad_features_and_existing_roots(tmp_path):
    with pytest.raises(ValueError, match="'timestamp' is written by the writer"):
        LeRobotDatasetWriter(
            tmp_path / "a", fps=10, features={"timestamp": {"dtype": "float32", "shape": [1]}}
        )
    with pytest.raises(ValueError, match="dtype 'float8'"):
        LeRobotDatasetWriter(tmp_path / "a", fps=10, features={"x": {"dtype": "float8", "shape": [1]}})
    with pytest.raises(ValueError, match=r"\[height, width, 3\]"):
        LeRobotDatasetWriter(tmp_path / "a", fps=10, features={"c": {"dtype": "video", "shape": [3, 8, 8]}})
    (tmp_path / "full").mkdir()
    (tmp_path / "full/file").write_text("x")
    with pytest.raises(FileExistsError):
        LeRobotDatasetWriter(tmp_path / "full", fps=10, features={})


def _rewrite_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (
            lambda root: (root / f"videos/{CAM}/chunk-000/file-000.mp4").unlink(),
            r"missing file .*file-000\.mp4",
        ),
        (
            lambda root: _rewrite_json(root / "meta/info.json", lambda i: i.update(total_frames=20)),
            "total_frames=20 but episode lengths sum to 19",
        ),
        (
            lambda root: _rewrite_json(root / "meta/info.json", lambda i: i.update(fps="10")),
            "'fps' must be",
        ),
        (lambda root: (root / "meta/stats.json").unlink(), "missing meta/stats.json"),
        (
            lambda root: _rewrite_json(root / "meta/stats.json", lambda s: s["action"].pop("std")),
            r"stats\['action'\]: missing \['std'\]",
        ),
        (
            lambda root: _rewrite_json(
                root / "meta/info.json", lambda i: i["features"]["action"].update(dtype="float64")
            ),
            "column 'action': stored as float, info.json says float64",
        ),
        (
            lambda root: _rewrite_json(
                root / "meta/info.json", lambda i: i["features"]["action"].update(shape=[4])
            ),
            r"column 'action'.*expected shape \[4\]",
        ),
        (lambda root: _truncate_video(root), r"episode 2: .* has \d+ frames, needs 19"),
    ],
)
def test_validate_names_the_problem(written, corrupt, message):
    root, _ = written
    corrupt(root)
    with pytest.raises(ValueError, match=message):
        validate_dataset(root)


def _truncate_video(root: Path) -> None:
    """Replace the camera file with one holding only the first 15 of its 19 frames."""
    from vlaflow.data.video import VideoDecoder, encode_video

    path = root / f"videos/{CAM}/chunk-000/file-000.mp4"
    with VideoDecoder(path) as decoder:
        frames = decoder.frames_at(np.arange(15) / 10)
    encode_video(path, frames, fps=10)


def test_validate_catches_timestamps_out_of_sync(v21_dataset):
    import pyarrow.parquet as pq

    path = v21_dataset / "data/chunk-000/episode_000001.parquet"
    table = pq.read_table(path)
    shifted = table.set_column(
        table.column_names.index("timestamp"),
        "timestamp",
        [np.arange(12, dtype=np.float32) / 10 + np.float32(0.01)],
    )
    pq.write_table(shifted, path)
    with pytest.raises(ValueError, match=r"column 'timestamp': row 7 .* expected frame_index / fps = 0\.0"):
        validate_dataset(v21_dataset)


def test_reader_errors_name_the_missing_file(written):
    root, _ = written
    shutil.rmtree(root / "data")
    with pytest.raises(FileNotFoundError, match=r"data/chunk-000/file-000\.parquet"):
        LeRobotDataset(root)
    with pytest.raises(FileNotFoundError, match=r"no such directory: .*nowhere$"):
        LeRobotMeta(root / "nowhere")


def test_a_feature_without_stats_is_a_warning_not_a_problem(written):
    root, _ = written
    _rewrite_json(root / "meta/stats.json", lambda s: s.pop("action"))
    with pytest.warns(LeRobotFormatWarning, match="stats: no entry for feature 'action'"):
        validate_dataset(root)


def test_episode_selection_restricts_every_view(written, counter):
    root, episodes = written  # lengths 6, 9, 4
    _, read_counter = counter
    ds = LeRobotDataset(root, episodes=[2, 0, 2], action_horizon=5)
    assert ds.episodes == [0, 2] and ds.num_episodes == 2 and len(ds) == 10
    np.testing.assert_array_equal(
        ds.column("observation.state"),
        np.concatenate([episodes[0]["observation.state"], episodes[2]["observation.state"]]),
    )
    np.testing.assert_array_equal(ds.episode_ends(), [6] * 6 + [10] * 4)
    assert ds.episode_range(2) == range(6, 10) and ds.episode_of(6) == 2
    item = ds[8]  # episode 2, frame 2 of 4
    assert (item["index"][0], item["frame_index"][0], item["task"]) == (17, 2, "task 0")
    assert read_counter(item[CAM]) == 202
    np.testing.assert_array_equal(item["action"], episodes[2]["action"][[2, 3, 3, 3, 3]].astype(np.float32))
    assert item["action_is_pad"].tolist() == [False, False, True, True, True]
    assert ds[5]["action_is_pad"].tolist() == [False, True, True, True, True]  # episode 0 ends at 6
    with pytest.raises(KeyError, match="no episode 1"):
        ds.episode_range(1)
    with pytest.raises(IndexError):
        ds[10]


def test_episode_selection_in_v21_and_embedded_image_layouts(v21_dataset, v30_image_dataset, counter):
    counter_frames, read_counter = counter
    ds = LeRobotDataset(v21_dataset, episodes=[1])
    assert len(ds) == 12 and ds.episode_range(1) == range(12)
    assert [read_counter(ds[k]["observation.images.top"]) for k in range(12)] == list(range(100, 112))
    images = LeRobotDataset(v30_image_dataset, episodes=[1])  # 5 + 4 frames in one file
    assert len(images) == 4 and images.column("frame_index")[:, 0].tolist() == [0, 1, 2, 3]
    for k in range(4):
        np.testing.assert_array_equal(images[k]["observation.images.front"], counter_frames([100 + k], 32)[0])


def test_episode_selection_reads_only_the_files_it_needs(v30_video_dataset, counter):
    _, read_counter = counter
    for holding_episodes_0_and_1 in (
        "videos/observation.images.front/chunk-000/file-000.mp4",
        "data/chunk-000/file-000.parquet",
    ):
        (v30_video_dataset / holding_episodes_0_and_1).unlink()
    ds = LeRobotDataset(v30_video_dataset, episodes=[2])
    assert len(ds) == 8
    assert [read_counter(ds[k]["observation.images.front"]) for k in range(8)] == list(range(200, 208))


def test_unknown_episodes_are_named(written):
    root, _ = written
    with pytest.raises(ValueError, match=r"episodes \[5, 9\] are not in .* 3 episodes"):
        LeRobotDataset(root, episodes=[1, 5, 9])
    with pytest.raises(ValueError, match="selects nothing"):
        LeRobotDataset(root, episodes=[])


def test_missing_and_non_dataset_directories_are_told_apart(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^no such directory: .*nonexistent$"):
        LeRobotDataset(tmp_path / "nonexistent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        FileNotFoundError, match=r"empty is not a LeRobot dataset: no meta/info\.json .*empty"
    ):
        LeRobotDataset(tmp_path / "empty")
    other = tmp_path / "other"
    (other / "data").mkdir(parents=True)
    (other / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"not a LeRobot dataset: .*\(found: data/, notes\.txt\)"):
        LeRobotDataset(other)
    with pytest.raises(ValueError, match="not a directory"):
        LeRobotDataset(other / "notes.txt")
    with pytest.raises(ValueError, match="no such directory"):
        validate_dataset(tmp_path / "nonexistent")
