"""LeRobot 0.4.4's subtask convention (a per-frame `subtask_index` + meta/subtasks.parquet, read back as
`item["subtask"]`), written by our writer and as LeRobot's `add_features` tool leaves a dataset."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlaflow.data.lerobot import LeRobotDataset, LeRobotDatasetWriter, LeRobotFormatWarning, validate_dataset

FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [2]},
    "action": {"dtype": "float32", "shape": [2]},
}
SUBTASKS = ["reach the cup", "grasp the cup", "lift the cup"]


def frames(length: int) -> dict:
    k = np.arange(length, dtype=np.float32)
    return {"observation.state": np.stack([k, -k], 1), "action": np.stack([k, k], 1)}


def episode_subtasks(e: int, length: int) -> list[str]:
    """Episode e walks through SUBTASKS from subtask e % 3 on, a new one every 3 frames."""
    return [SUBTASKS[min(e % 3 + k // 3, 2)] for k in range(length)]


@pytest.fixture
def with_subtasks(tmp_path: Path) -> Path:
    root = tmp_path / "subtasks"
    with LeRobotDatasetWriter(root, fps=10, features=FEATURES, subtasks=True) as writer:
        for e, length in enumerate([7, 5, 4]):
            writer.add_episode(frames(length), task=f"task {e % 2}", subtasks=episode_subtasks(e, length))
    return root


def test_writer_writes_subtasks_in_lerobots_convention(with_subtasks):
    root = with_subtasks
    info = json.loads((root / "meta/info.json").read_text())
    assert info["features"]["subtask_index"] == {"dtype": "int64", "shape": [1], "names": None}
    table = pq.read_table(root / "meta/subtasks.parquet")
    assert table.column_names == ["subtask_index", "subtask"]
    assert table.column("subtask_index").to_pylist() == [0, 1, 2]  # row k is subtask k (LeRobot: .iloc)
    assert table.column("subtask").to_pylist() == SUBTASKS  # in order of first use
    pandas = json.loads(table.schema.metadata[b"pandas"])
    assert pandas["index_columns"] == ["subtask"]  # pd.read_parquet makes the texts the index
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    assert tasks.column("task").to_pylist() == ["task 0", "task 1"]

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every feature has its stats
        validate_dataset(root)
    ds = LeRobotDataset(root)
    expected = [s for e, n in enumerate([7, 5, 4]) for s in episode_subtasks(e, n)]
    assert [ds[i]["subtask"] for i in range(len(ds))] == expected
    assert ds.meta.subtasks == SUBTASKS
    item = ds[8]  # episode 1, frame 1: its first subtask is SUBTASKS[1]
    assert item["subtask"] == "grasp the cup" and item["task"] == "task 1"
    assert item["subtask_index"].dtype == np.int64 and item["subtask_index"].tolist() == [1]
    assert "subtask_index" in ds.meta.stats
    held_out = LeRobotDataset(root, episodes=[2])
    assert [held_out[i]["subtask"] for i in range(4)] == episode_subtasks(2, 4)


def test_a_dataset_without_the_convention_has_no_subtask(tmp_path):
    root = tmp_path / "plain"
    with LeRobotDatasetWriter(root, fps=10, features=FEATURES) as writer:
        writer.add_episode(frames(3), task="t")
    assert not (root / "meta/subtasks.parquet").exists()
    ds = LeRobotDataset(root)
    assert ds.meta.subtasks is None and "subtask" not in ds[0] and "subtask_index" not in ds[0]


@pytest.mark.parametrize(
    ("make", "call", "message"),
    [
        (dict(subtasks=True), dict(), r"subtasks=True: pass subtasks="),
        (dict(), dict(subtasks=["a"] * 3), "needs a writer made with subtasks=True"),
        (dict(subtasks=True), dict(subtasks=["a", "b"]), r"subtasks: expected 3 str values"),
        (dict(subtasks=True), dict(subtasks=["a", 2, "b"]), r"subtasks: expected 3 str values"),
    ],
)
def test_writer_checks_the_subtasks(tmp_path, make, call, message):
    writer = LeRobotDatasetWriter(tmp_path / "bad", fps=10, features=FEATURES, **make)
    with pytest.raises(ValueError, match=message):
        writer.add_episode(frames(3), task="t", **call)
    writer.abort()


def test_writer_keeps_the_convention_s_names_to_itself(tmp_path):
    with pytest.raises(ValueError, match="'subtask_index' is written by the writer itself"):
        LeRobotDatasetWriter(
            tmp_path / "a", fps=10, features={"subtask_index": {"dtype": "int64", "shape": [1]}}
        )
    with pytest.raises(ValueError, match="'subtask' would hide the subtask texts"):
        LeRobotDatasetWriter(tmp_path / "b", fps=10, features={"subtask": {"dtype": "string"}}, subtasks=True)


def write_subtasks_like_pandas(path: Path, texts: list[str], index_name: str | None) -> None:
    """meta/subtasks.parquet as `pd.DataFrame({"subtask_index": ...}, index=texts).to_parquet()`
    writes it: the index after the columns, named `index_name` or `__index_level_0__`."""
    stored = index_name or "__index_level_0__"
    pandas = {
        "index_columns": [stored],
        "column_indexes": [],
        "columns": [
            {"name": "subtask_index", "field_name": "subtask_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": index_name, "field_name": stored, "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None},
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }  # fmt: skip
    schema = pa.schema([("subtask_index", pa.int64()), (stored, pa.string())])
    table = pa.table(
        [list(range(len(texts))), texts], schema=schema.with_metadata({"pandas": json.dumps(pandas)})
    )
    pq.write_table(table, path)


def add_subtasks_like_add_features(
    root: Path, values: np.ndarray, column_type: pa.DataType, names: bool
) -> None:
    """What LeRobot's `add_features` (lerobot/datasets/dataset_tools.py) leaves: the column appended to
    every data file, the feature entry in info.json, no entry in meta/stats.json."""
    start = 0
    for path in sorted((root / "data").glob("chunk-*/file-*.parquet")):
        table = pq.read_table(path)
        part = values[start : start + table.num_rows]
        start += table.num_rows
        column = (
            pa.array(part)
            if column_type == pa.int64()
            else pa.FixedSizeListArray.from_arrays(pa.array(part), 1)
        )
        pq.write_table(table.append_column("subtask_index", column), path)
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["subtask_index"] = {"dtype": "int64", "shape": [1], **({"names": None} if names else {})}
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))


@pytest.mark.parametrize(
    ("column_type", "names", "index_name"),
    [
        (pa.int64(), True, "subtask"),  # datasets `Value("int64")`: a scalar column
        (pa.list_(pa.int64(), 1), False, "subtask"),  # `Sequence(length=1)`, feature without "names"
        (pa.int64(), True, None),  # a frame whose index was never named
    ],
)
def test_a_dataset_annotated_with_lerobots_add_features_validates_and_reads_subtasks(
    tmp_path, column_type, names, index_name
):
    root = tmp_path / "annotated"
    with LeRobotDatasetWriter(root, fps=10, features=FEATURES, data_files_size_in_mb=1e-4) as writer:
        for length in (6, 5):  # two data files
            writer.add_episode(frames(length), task="pick up the cup")
    values = np.array([0, 0, 1, 1, 2, 2, 0, 1, 1, 2, 2], dtype=np.int64)
    add_subtasks_like_add_features(root, values, column_type, names)
    write_subtasks_like_pandas(root / "meta/subtasks.parquet", SUBTASKS, index_name)

    with pytest.warns(LeRobotFormatWarning, match="stats: no entry for feature 'subtask_index'"):
        validate_dataset(root)
    ds = LeRobotDataset(root)
    assert [ds[i]["subtask"] for i in range(len(ds))] == [SUBTASKS[v] for v in values]
    assert ds[3]["subtask_index"].tolist() == [1] and ds[3]["task"] == "pick up the cup"


def test_subtask_indices_must_be_rows_of_subtasks_parquet(with_subtasks):
    root = with_subtasks
    write_subtasks_like_pandas(root / "meta/subtasks.parquet", SUBTASKS[:2], "subtask")
    with pytest.raises(ValueError, match=r"column 'subtask_index': values outside 0\.\.1"):
        validate_dataset(root)
    with pytest.raises(
        ValueError, match=r"frame \d+ has subtask_index 2, not a row of meta/subtasks\.parquet"
    ):
        LeRobotDataset(root)


def test_subtasks_parquet_rows_must_be_in_index_order(with_subtasks):
    root = with_subtasks  # LeRobot reads subtask k from row k, whatever the subtask_index column says
    path = root / "meta/subtasks.parquet"
    table = pq.read_table(path)
    pq.write_table(table.take([1, 0, 2]), path)
    with pytest.raises(ValueError, match=r"subtasks\.parquet: rows must be in subtask_index order"):
        validate_dataset(root)
