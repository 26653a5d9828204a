"""What a policy server expects in a request, and how it tells a client what was wrong.

By default a request uses the training dataset's own feature names (`observation.images.<camera>`,
`observation.state`, `prompt`); a key map (client name -> dataset name, from the command line or
the checkpoint's `metadata.serving.key_map`) accepts other conventions, such as the reference's
LIBERO-style `observation/image`. Nested maps are addressed by `/`-joined paths, so
`{"observation": {"image": ...}}` and `{"observation/image": ...}` are the same request.

A bad request raises `RequestError`, whose `reply()` is the error frame the server sends back:

    {"error": {"field": "observation.state", "message": "...", "expected": "float array of shape (8,)"}}

`field` is the key as the client named it, or "frame" for problems with the frame as a whole
(text frame, undecodable bytes, not a map, too large); it is None (and `expected` too) when the
request was fine but inference failed.

Optional keys (also renamable by the key map): `prev_actions`, a finite float array (L, action_dim)
with 1 <= L <= action_horizon (the previous chunk's not-yet-executed actions, robot units), and
`inference_delay`, an int d with 0 <= d < action_horizon and d <= L (0 when left out), the hints of
real-time chunking (`vlaflow.inference.rtc`; a server without RTC checks and ignores them);
`inference_delay` without `prev_actions` is an error. `subtask`, a non-empty string, is required
when the server runs in oracle mode (`subtask_required`) and ignored otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlaflow.data.lerobot import LeRobotMeta
from vlaflow.inference import DELAY_KEY, PREV_ACTIONS_KEY, SUBTASK_KEY

PROMPT_KEY = "prompt"
DEFAULT_STATE_KEY = "observation.state"
# The reference's LIBERO example client: its names by model image slot, state and prompt.
LIBERO_SLOT_KEYS = {"base_0_rgb": "observation/image", "left_wrist_0_rgb": "observation/wrist_image"}
LIBERO_STATE_KEY = "observation/state"
LIBERO = "libero"
MAX_ASPECT = 8
"""Longest side over shortest side of a camera image (16:9 is 1.8; the model pads to a square)."""
IMAGE_EXPECTED = f"uint8 array of shape (H, W, 3), H and W >= 1 and at most {MAX_ASPECT}x apart"
MAX_KEYS_SHOWN = 20
HINT_KEYS = (PREV_ACTIONS_KEY, DELAY_KEY, SUBTASK_KEY)


class RequestError(ValueError):
    """A request the server cannot use: which field, what was wrong, what was expected."""

    def __init__(self, field: str | None, message: str, expected: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.field, self.message, self.expected = field, message, expected

    def reply(self) -> dict[str, Any]:
        return {"error": {"field": self.field, "message": self.message, "expected": self.expected}}


@dataclass(frozen=True)
class Request:
    """A valid request as `Policy.infer_batch` takes it; requests with equal `signature` (the same
    cameras at the same sizes) can share one batch."""

    observation: dict[str, Any]
    signature: tuple[tuple[str, tuple[int, ...]], ...]


def _flatten(message: Mapping[Any, Any]) -> dict[str, Any]:
    """`/`-joined key paths -> leaf values (iterative: a client may nest maps arbitrarily deep)."""
    flat: dict[str, Any] = {}
    todo = [("", message)]
    while todo:
        prefix, mapping = todo.pop()
        for key, value in mapping.items():
            if not isinstance(key, str):
                raise RequestError("frame", f"map keys must be strings, got {key!r}", "string keys")
            if isinstance(value, Mapping):
                todo.append((f"{prefix}{key}/", value))
            else:
                flat[f"{prefix}{key}"] = value
    return flat


def _numbers(value: Any) -> np.ndarray | None:
    """`value` as an array if it is an array or a (rectangular) list of numbers."""
    if not isinstance(value, np.ndarray | list | tuple):
        return None
    try:
        array = np.asarray(value)
    except ValueError:  # ragged lists
        return None
    return array if array.dtype.kind in "iuf" else None


def _finite_float32(key: str, values: np.ndarray, expected: str) -> np.ndarray:
    """`values` as float32, checked after the cast: a finite float64 beyond float32's range (about
    3.4e38) would otherwise become infinity inside the model."""
    if not np.isfinite(values).all():
        raise RequestError(key, "contains NaN or infinity", expected)
    with np.errstate(over="ignore"):
        cast = values.astype(np.float32)
    if not np.isfinite(cast).all():
        raise RequestError(key, "overflows float32 (a magnitude above 3.4e38)", expected)
    return cast


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__


@dataclass(frozen=True)
class ServingSpec:
    """The request format of one checkpoint: its training cameras, state and prompt, and the key
    map that renames a client's keys to them; `action_dim` / `action_horizon` bound the shape of
    `prev_actions` (None: unchecked), and `subtask_required` (oracle mode) makes `subtask` required.
    `adapt` first turns another convention's request into these keys (one of openpi's robots,
    `vlaflow.interop.openpi_robots`); `default_prompt` is used when a request carries none (as
    openpi's `InjectDefaultPrompt`)."""

    cameras: tuple[str, ...]
    state_key: str
    state_dim: int
    key_map: Mapping[str, str] = field(default_factory=dict)
    action_dim: int | None = None
    action_horizon: int | None = None
    subtask_required: bool = False
    adapt: Callable[[Any], Any] | None = None
    default_prompt: str | None = None

    def __post_init__(self) -> None:
        known = (*self.feature_names, *HINT_KEYS)
        unknown = {k: v for k, v in self.key_map.items() if v not in known}
        if unknown:
            raise ValueError(f"key map {unknown}: targets must be among {list(known)}")

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The keys every request must hold."""
        return (*self.cameras, self.state_key, PROMPT_KEY, *((SUBTASK_KEY,) if self.subtask_required else ()))

    def client_name(self, feature: str) -> str:
        """The key a client sends for `feature`: its first alias in the key map, else itself."""
        return next((alias for alias, target in self.key_map.items() if target == feature), feature)

    def observation_spec(self) -> dict[str, dict[str, Any]]:
        """Each key a request must hold, as the client names it: dtype and shape (None: any size)."""
        spec = {self.client_name(c): {"dtype": "uint8", "shape": [None, None, 3]} for c in self.cameras}
        spec[self.client_name(self.state_key)] = {"dtype": "float32", "shape": [self.state_dim]}
        spec[self.client_name(PROMPT_KEY)] = {"dtype": "str", "shape": []}
        if self.subtask_required:
            spec[self.client_name(SUBTASK_KEY)] = {"dtype": "str", "shape": []}
        return spec

    def optional_spec(self) -> dict[str, dict[str, Any]]:
        """The optional keys a request may hold (real-time chunking's hints), as the client names them."""
        return {
            self.client_name(PREV_ACTIONS_KEY): {"dtype": "float32", "shape": [None, self.action_dim]},
            self.client_name(DELAY_KEY): {"dtype": "int", "shape": []},
        }

    def expected(self, feature: str, prev_rows: int | None = None) -> str:
        """What `feature` must be (`prev_rows`: the rows of the request's prev_actions)."""
        if feature in self.cameras:
            return IMAGE_EXPECTED
        if feature == self.state_key:
            return f"float array of shape ({self.state_dim},)"
        if feature == PREV_ACTIONS_KEY:
            rows = "L" if self.action_horizon is None else f"L, 1 <= L <= {self.action_horizon}"
            columns = "action_dim" if self.action_dim is None else str(self.action_dim)
            return f"finite float array of shape (L, {columns}) ({rows})"
        if feature == DELAY_KEY:
            bounds = [f"d <= {prev_rows} (the rows of {self.client_name(PREV_ACTIONS_KEY)})"]
            if self.action_horizon is not None:
                bounds.insert(0, f"d < {self.action_horizon}")
            return f"an int d >= 0 with {' and '.join(bounds)}"
        if feature == SUBTASK_KEY:
            return "a non-empty string (the subtask in force: this server runs in oracle mode)"
        return "a string"

    def _features(self, message: Any) -> dict[str, tuple[str, Any]]:
        """Dataset feature name -> (the client's key, value)."""
        if not isinstance(message, Mapping):
            raise RequestError("frame", f"got {_describe(message)}", "a msgpack map of observation keys")
        flat = _flatten(message)
        features: dict[str, tuple[str, Any]] = {}
        for key, value in flat.items():
            name = self.key_map.get(key, key)
            if name in features:
                raise RequestError(key, f"given twice (also as {features[name][0]!r})", "one of the two")
            features[name] = (key, value)
        missing = next((f for f in self.feature_names if f not in features), None)
        if missing is not None:
            keys = sorted(flat)
            shown = f"{keys[:MAX_KEYS_SHOWN]}{' ...' if len(keys) > MAX_KEYS_SHOWN else ''}"
            raise RequestError(
                self.client_name(missing), f"missing (the request has keys {shown})", self.expected(missing)
            )
        return features

    def parse(self, message: Any) -> Request:
        """The observation in a decoded request frame; RequestError names the first problem."""
        if self.adapt is not None:
            message = self.adapt(message)
        if self.default_prompt is not None and isinstance(message, Mapping) and PROMPT_KEY not in message:
            message = {**message, PROMPT_KEY: self.default_prompt}
        features = self._features(message)
        images = {}
        for camera in self.cameras:
            key, image = features[camera]
            ok = isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            if not ok or image.shape[2] != 3 or 0 in image.shape:
                raise RequestError(key, f"got {_describe(image)}", IMAGE_EXPECTED)
            height, width = image.shape[:2]
            if max(height, width) > MAX_ASPECT * min(height, width):
                raise RequestError(key, f"got an image of {height} x {width} pixels", IMAGE_EXPECTED)
            images[camera] = image
        key, raw_state = features[self.state_key]
        state = _numbers(raw_state)
        if state is None or state.shape != (self.state_dim,):
            raise RequestError(key, f"got {_describe(raw_state)}", self.expected(self.state_key))
        state = _finite_float32(key, state, f"finite numbers, {self.expected(self.state_key)}")
        key, prompt = features[PROMPT_KEY]
        if not isinstance(prompt, str):
            raise RequestError(key, f"got {_describe(prompt)}", self.expected(PROMPT_KEY))
        observation = {"images": images, "state": state, "prompt": prompt}
        return Request(
            observation={**observation, **self._hints(features)},
            signature=tuple((camera, images[camera].shape) for camera in self.cameras),
        )

    def _hints(self, features: dict[str, tuple[str, Any]]) -> dict[str, Any]:
        """The request's optional keys, checked: real-time chunking's hints and the subtask."""
        hints: dict[str, Any] = {}
        if PREV_ACTIONS_KEY in features:
            key, raw = features[PREV_ACTIONS_KEY]
            prev = _numbers(raw)
            ok = prev is not None and prev.ndim == 2 and len(prev) >= 1
            ok = ok and (self.action_horizon is None or len(prev) <= self.action_horizon)
            ok = ok and (self.action_dim is None or prev.shape[1] == self.action_dim)
            if not ok:
                raise RequestError(key, f"got {_describe(raw)}", self.expected(PREV_ACTIONS_KEY))
            hints[PREV_ACTIONS_KEY] = _finite_float32(key, prev, self.expected(PREV_ACTIONS_KEY))
        if DELAY_KEY in features:
            key, delay = features[DELAY_KEY]
            if PREV_ACTIONS_KEY not in hints:
                raise RequestError(
                    key,
                    f"given without {self.client_name(PREV_ACTIONS_KEY)!r}",
                    f"{self.client_name(PREV_ACTIONS_KEY)} alongside it (the actions the delay executes)",
                )
            rows = len(hints[PREV_ACTIONS_KEY])
            limit = rows if self.action_horizon is None else min(rows, self.action_horizon - 1)
            integer = isinstance(delay, int | np.integer) and not isinstance(delay, bool | np.bool_)
            if not integer or not 0 <= delay <= limit:
                shown = delay if integer else _describe(delay)
                raise RequestError(key, f"got {shown}", self.expected(DELAY_KEY, rows))
            hints[DELAY_KEY] = int(delay)
        if SUBTASK_KEY in features:
            key, subtask = features[SUBTASK_KEY]
            if not isinstance(subtask, str) or not subtask.strip():
                shown = repr(subtask) if isinstance(subtask, str) else _describe(subtask)
                raise RequestError(key, f"got {shown}", self.expected(SUBTASK_KEY))
            hints[SUBTASK_KEY] = subtask
        return hints

    @classmethod
    def from_metadata(
        cls,
        metadata: Mapping[str, Any],
        *,
        cameras: Mapping[str, str],
        state_dim: int,
        source: str | None = None,
        key_map: str | Mapping[str, str] | None = None,
        **options: Any,
    ) -> ServingSpec:
        """The spec of a training checkpoint, from its metadata (`cameras`: model slot -> dataset
        camera, as the policy's statistics record them). `key_map`: a mapping, JSON text, a .json
        file, or "libero" (the reference's LIBERO client); by default the one stored in the
        checkpoint. `options`: the other fields (`action_dim`, `action_horizon`, `subtask_required`)."""
        state_key = _source_config(metadata, source).get("state_key", DEFAULT_STATE_KEY)
        if key_map is None:
            key_map = metadata.get("serving", {}).get("key_map", {})
        elif key_map == LIBERO:
            key_map = {
                **{LIBERO_SLOT_KEYS[s]: c for s, c in cameras.items() if s in LIBERO_SLOT_KEYS},
                LIBERO_STATE_KEY: state_key,
            }
        elif isinstance(key_map, str):
            key_map = _read_key_map(key_map)
        return cls(
            cameras=tuple(cameras.values()),
            state_key=state_key,
            state_dim=state_dim,
            key_map=key_map,
            **options,
        )


def _read_key_map(text: str) -> dict[str, str]:
    """A key map from JSON text or from a file whose name ends in .json."""
    try:
        key_map = json.loads(Path(text).read_text() if text.endswith(".json") else text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"key map {text!r}: expected a JSON object (client key -> dataset key), a .json file, "
            f"or {LIBERO!r} ({error})"
        ) from error
    if not isinstance(key_map, dict) or not all(isinstance(v, str) for v in key_map.values()):
        raise ValueError(f"key map {text!r}: expected a JSON object of client key -> dataset key")
    return key_map


def _source_config(metadata: Mapping[str, Any], source: str | None) -> dict[str, Any]:
    """The training settings of the served source (empty when the checkpoint lacks them)."""
    datasets = metadata.get("train_config", {}).get("datasets", [])
    name = source or next(iter(metadata.get("norm_stats", {})), None)
    return next((d for d in datasets if Path(d.get("path", "")).name == name), {})


def control_hz(metadata: Mapping[str, Any], source: str | None = None) -> float | None:
    """The robot's control frequency, if known: `metadata.serving.control_hz`, else the training
    dataset's fps when that dataset is still where training read it."""
    if "control_hz" in metadata.get("serving", {}):
        return float(metadata["serving"]["control_hz"])
    path = _source_config(metadata, source).get("path")
    try:
        return float(LeRobotMeta(path).fps) if path else None
    except (OSError, ValueError, KeyError):
        return None
