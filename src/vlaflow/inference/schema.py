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
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlaflow.data.lerobot import LeRobotMeta

PROMPT_KEY = "prompt"
DEFAULT_STATE_KEY = "observation.state"
# The reference's LIBERO example client: its names by model image slot, state and prompt.
LIBERO_SLOT_KEYS = {"base_0_rgb": "observation/image", "left_wrist_0_rgb": "observation/wrist_image"}
LIBERO_STATE_KEY = "observation/state"
LIBERO = "libero"
IMAGE_EXPECTED = "uint8 array of shape (H, W, 3)"
MAX_KEYS_SHOWN = 20


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


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__


@dataclass(frozen=True)
class ServingSpec:
    """The request format of one checkpoint: its training cameras, state and prompt, and the key
    map that renames a client's keys to them."""

    cameras: tuple[str, ...]
    state_key: str
    state_dim: int
    key_map: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = self.feature_names
        unknown = {k: v for k, v in self.key_map.items() if v not in known}
        if unknown:
            raise ValueError(f"key map {unknown}: targets must be among {list(known)}")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return (*self.cameras, self.state_key, PROMPT_KEY)

    def client_name(self, feature: str) -> str:
        """The key a client sends for `feature`: its first alias in the key map, else itself."""
        return next((alias for alias, target in self.key_map.items() if target == feature), feature)

    def observation_spec(self) -> dict[str, dict[str, Any]]:
        """Each key a request must hold, as the client names it: dtype and shape (None: any size)."""
        spec = {self.client_name(c): {"dtype": "uint8", "shape": [None, None, 3]} for c in self.cameras}
        spec[self.client_name(self.state_key)] = {"dtype": "float32", "shape": [self.state_dim]}
        spec[self.client_name(PROMPT_KEY)] = {"dtype": "str", "shape": []}
        return spec

    def expected(self, feature: str) -> str:
        if feature in self.cameras:
            return IMAGE_EXPECTED
        return f"float array of shape ({self.state_dim},)" if feature == self.state_key else "a string"

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
        features = self._features(message)
        images = {}
        for camera in self.cameras:
            key, image = features[camera]
            ok = isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            if not ok or image.shape[2] != 3 or 0 in image.shape:
                raise RequestError(key, f"got {_describe(image)}", IMAGE_EXPECTED)
            images[camera] = image
        key, raw_state = features[self.state_key]
        state = _numbers(raw_state)
        if state is None or state.shape != (self.state_dim,):
            raise RequestError(key, f"got {_describe(raw_state)}", self.expected(self.state_key))
        if not np.isfinite(state).all():
            raise RequestError(
                key, "contains NaN or infinity", f"finite numbers, {self.expected(self.state_key)}"
            )
        key, prompt = features[PROMPT_KEY]
        if not isinstance(prompt, str):
            raise RequestError(key, f"got {_describe(prompt)}", self.expected(PROMPT_KEY))
        return Request(
            observation={"images": images, "state": state.astype(np.float32), "prompt": prompt},
            signature=tuple((camera, images[camera].shape) for camera in self.cameras),
        )

    @classmethod
    def from_metadata(
        cls,
        metadata: Mapping[str, Any],
        *,
        cameras: Mapping[str, str],
        state_dim: int,
        source: str | None = None,
        key_map: str | Mapping[str, str] | None = None,
    ) -> ServingSpec:
        """The spec of a training checkpoint, from its metadata (`cameras`: model slot -> dataset
        camera, as the policy's statistics record them). `key_map`: a mapping, JSON text, a .json
        file, or "libero" (the reference's LIBERO client); by default the one stored in the
        checkpoint."""
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
        return cls(cameras=tuple(cameras.values()), state_key=state_key, state_dim=state_dim, key_map=key_map)


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
