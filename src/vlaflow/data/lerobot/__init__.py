"""LeRobot datasets on local disk: read v3.0 and v2.1, write v3.0, validate — without `lerobot`.

The on-disk layout is LeRobot's (see the project's lerobot-dataset-format spec): parquet files read
with pyarrow, mp4 files decoded with PyAV (`vlaflow.data.video`). The `lerobot` package pins its own
torch, so we read and write the format ourselves and check ourselves against the real layout.

One module per concern: `meta` (paths, constants, the meta/ files), `arrow` (parquet columns <->
numpy, embedded images), `reader` (`LeRobotDataset`), `stats` (LeRobot's dataset statistics),
`writer` (`LeRobotDatasetWriter`) and `validate` (`validate_dataset`).
"""

from vlaflow.data.lerobot.meta import (
    CAMERA_DTYPES,
    CODEBASE_VERSION,
    DATA_PATH,
    DEFAULT_FEATURES,
    EPISODES_DIR,
    EPISODES_PATH,
    INFO_PATH,
    LEGACY_EPISODES_PATH,
    LEGACY_EPISODES_STATS_PATH,
    LEGACY_TASKS_PATH,
    LEGACY_VERSIONS,
    NUMERIC_DTYPES,
    STATS_PATH,
    SUBTASK_INDEX,
    SUBTASKS_PATH,
    TASKS_PATH,
    TIMESTAMP_TOLERANCE_S,
    VIDEO_PATH,
    LeRobotMeta,
)
from vlaflow.data.lerobot.reader import LeRobotDataset
from vlaflow.data.lerobot.stats import QUANTILES, STAT_NAMES, aggregate_stats, column_stats
from vlaflow.data.lerobot.validate import LeRobotFormatWarning, validate_dataset
from vlaflow.data.lerobot.writer import LeRobotDatasetWriter

__all__ = [
    "CAMERA_DTYPES",
    "CODEBASE_VERSION",
    "DATA_PATH",
    "DEFAULT_FEATURES",
    "EPISODES_DIR",
    "EPISODES_PATH",
    "INFO_PATH",
    "LEGACY_EPISODES_PATH",
    "LEGACY_EPISODES_STATS_PATH",
    "LEGACY_TASKS_PATH",
    "LEGACY_VERSIONS",
    "NUMERIC_DTYPES",
    "QUANTILES",
    "STATS_PATH",
    "STAT_NAMES",
    "SUBTASKS_PATH",
    "SUBTASK_INDEX",
    "TASKS_PATH",
    "TIMESTAMP_TOLERANCE_S",
    "VIDEO_PATH",
    "LeRobotDataset",
    "LeRobotDatasetWriter",
    "LeRobotFormatWarning",
    "LeRobotMeta",
    "aggregate_stats",
    "column_stats",
    "validate_dataset",
]
