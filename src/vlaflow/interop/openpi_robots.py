"""openpi's robots: the observations its example clients send and the actions they expect back.

Each `Robot` turns one client request (as openpi's `examples/libero`, `examples/droid` and
`examples/aloha_real` build it) into the observation a converted model's `Policy` takes (cameras by
model slot, the state vector, the prompt) and the policy's actions back into the robot's, as
openpi's `LiberoInputs/Outputs`, `DroidInputs/Outputs` and `AlohaInputs/Outputs` do:

- **libero**: `observation/image` (base camera) and `observation/wrist_image` (left wrist slot; the
  right wrist slot is left empty), `observation/state` (8), `prompt`; 7 actions per step.
- **droid**: `observation/exterior_image_1_left` (base) and `observation/wrist_image_left` (left
  wrist), the state is `observation/joint_position` (7) followed by `observation/gripper_position`
  (1, or a scalar); 8 actions per step.
- **aloha**: `images` {`cam_high` (base), `cam_left_wrist`, `cam_right_wrist`, and `cam_low`, which
  the model does not read}, each (3, H, W); `state` (14). With `adapt_to_pi` (openpi's default) the
  joints at 1, 2, 8, 9 are flipped and each gripper (6, 13) is converted from the ALOHA's linear
  finger position to the angle the model was trained on; on the way out the joints are flipped back
  and the grippers converted to the ALOHA's command range; 14 actions per step.

Images may come as uint8 or as floats in [0, 1] (scaled by 255), channels first or last. What the
reference's training configs for these robots fix besides (delta actions on the joints, chunk
length, the state in the prompt) is in `Robot.settings`, recorded when a checkpoint is
converted with `--robot`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from vlaflow.inference.schema import DEFAULT_STATE_KEY, RequestError

BASE, LEFT_WRIST, RIGHT_WRIST = "base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"
Layout = tuple[tuple[str, str | None], ...]
"""Model image slots in order and the camera filling each (None: a black image the model sees, as
openpi's pi0-FAST does; a camera the request lacks leaves its slot empty and masked)."""
PI0_LAYOUT: Layout = ((BASE, BASE), (LEFT_WRIST, LEFT_WRIST), (RIGHT_WRIST, RIGHT_WRIST))


def parse_image(key: str, image: Any) -> np.ndarray:
    """openpi's `_parse_image`: floats in [0, 1] to uint8, channels first to channels last."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or 3 not in (image.shape[0], image.shape[-1]):
        shown = (
            f"{image.dtype} array of shape {image.shape}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise RequestError(key, f"got {shown}", "an image (H, W, 3) or (3, H, W), uint8 or float in [0, 1]")
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise RequestError(key, "contains NaN or infinity", "float pixel values in [0, 1]")
        image = (255 * image).astype(np.uint8)
    if image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    return np.ascontiguousarray(image)


def _vector(key: str, value: Any, size: int | None = None) -> np.ndarray:
    array = np.asarray(value) if isinstance(value, np.ndarray | list | tuple | float | int) else None
    if array is None or array.dtype.kind not in "iuf" or array.ndim > 1 or (size and array.size != size):
        shown = f"{array.dtype} array of shape {array.shape}" if array is not None else type(value).__name__
        raise RequestError(key, f"got {shown}", f"float array of shape ({size},)" if size else "float array")
    return np.atleast_1d(array).astype(np.float64)


def _require(message: Mapping[str, Any], key: str) -> Any:
    if key not in message:
        shown = sorted(message)[:20]
        raise RequestError(key, f"missing (the request has keys {shown})", f"openpi's {key}")
    return message[key]


def _passthrough(message: Mapping[str, Any], used: set[str]) -> dict[str, Any]:
    """Keys a robot does not translate (prompt, real-time chunking's hints) keep their names."""
    return {k: v for k, v in message.items() if k not in used}


# ---------------------------------------------------------------------------- LIBERO and DROID


def _libero(message: Mapping[str, Any]) -> dict[str, Any]:
    used = {"observation/image", "observation/wrist_image", "observation/state"}
    return {
        BASE: parse_image("observation/image", _require(message, "observation/image")),
        LEFT_WRIST: parse_image("observation/wrist_image", _require(message, "observation/wrist_image")),
        DEFAULT_STATE_KEY: _vector("observation/state", _require(message, "observation/state"), 8),
        **_passthrough(message, used),
    }


def _droid(message: Mapping[str, Any]) -> dict[str, Any]:
    joints = _vector("observation/joint_position", _require(message, "observation/joint_position"), 7)
    gripper = _vector("observation/gripper_position", _require(message, "observation/gripper_position"), 1)
    used = {
        "observation/exterior_image_1_left",
        "observation/exterior_image_2_left",  # sent by some clients; the model does not read it
        "observation/wrist_image_left",
        "observation/joint_position",
        "observation/gripper_position",
    }
    return {
        BASE: parse_image(
            "observation/exterior_image_1_left", _require(message, "observation/exterior_image_1_left")
        ),
        LEFT_WRIST: parse_image(
            "observation/wrist_image_left", _require(message, "observation/wrist_image_left")
        ),
        DEFAULT_STATE_KEY: np.concatenate([joints, gripper]),
        **_passthrough(message, used),
    }


# ---------------------------------------------------------------------------- ALOHA

ALOHA_CAMERAS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")
JOINT_FLIP = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1, -1, 1, 1, 1, 1], dtype=np.float64)
"""ALOHA joint signs -> the convention the reference's models were trained with (and back)."""
GRIPPERS = [6, 13]


def _linear(x: np.ndarray, low: float, high: float) -> np.ndarray:
    return (x - low) / (high - low)


def _unlinear(x: np.ndarray, low: float, high: float) -> np.ndarray:
    return x * (high - low) + low


def gripper_to_angular(value: np.ndarray) -> np.ndarray:
    """ALOHA gripper (normalized finger position) -> the normalized angle the models use: finger
    position in metres, then the horn angle of a crank (arm 0.036 m, horn 0.022 m), normalized."""
    position = _unlinear(value, 0.01844, 0.05800)
    cosine = (0.022**2 + position**2 - 0.036**2) / (2 * 0.022 * position)
    return _linear(np.arcsin(np.clip(cosine, -1.0, 1.0)), 0.5476, 1.6296)


def gripper_from_angular(value: np.ndarray) -> np.ndarray:
    """The models' gripper action -> the ALOHA's gripper command range."""
    return _linear(value + 0.5476, -0.6213, 1.4910)


def _aloha(message: Mapping[str, Any]) -> dict[str, Any]:
    images = _require(message, "images")
    if not isinstance(images, Mapping):
        raise RequestError(
            "images", f"got {type(images).__name__}", f"a map of cameras among {ALOHA_CAMERAS}"
        )
    unknown = sorted(set(images) - set(ALOHA_CAMERAS))
    if unknown:
        raise RequestError(f"images/{unknown[0]}", "not an ALOHA camera", f"cameras among {ALOHA_CAMERAS}")
    for camera in ("cam_high", "cam_left_wrist", "cam_right_wrist"):  # cam_low is sent, not read
        if camera not in images:
            raise RequestError(
                f"images/{camera}", f"missing (the request has {sorted(images)})", "(3, H, W) uint8"
            )
    state = _vector("state", _require(message, "state"), 14) * JOINT_FLIP
    state[GRIPPERS] = gripper_to_angular(state[GRIPPERS])
    return {
        BASE: parse_image("images/cam_high", images["cam_high"]),
        LEFT_WRIST: parse_image("images/cam_left_wrist", images["cam_left_wrist"]),
        RIGHT_WRIST: parse_image("images/cam_right_wrist", images["cam_right_wrist"]),
        DEFAULT_STATE_KEY: state,
        **_passthrough(message, {"images", "state"}),
    }


def _aloha_actions(actions: np.ndarray) -> np.ndarray:
    actions = actions[..., :14] * JOINT_FLIP
    actions[..., GRIPPERS] = gripper_from_angular(actions[..., GRIPPERS])
    return actions.astype(np.float32)


# ---------------------------------------------------------------------------- the robots


@dataclasses.dataclass(frozen=True)
class Robot:
    """One of openpi's robots: its requests in, its actions out, and the reference's settings."""

    name: str
    slots: tuple[str, ...]  # the cameras it sends, named by the pi0 / pi0.5 slot they fill
    state_dim: int
    action_dim: int
    inputs: Callable[[Mapping[str, Any]], dict[str, Any]]
    outputs: Callable[[np.ndarray], np.ndarray] = lambda actions: actions
    # delta actions on these dimensions in the reference's training configs, per model family
    delta_action_mask: Mapping[str, tuple[bool, ...]] = dataclasses.field(default_factory=dict)
    action_horizon: Mapping[str, int] = dataclasses.field(default_factory=dict)  # per family
    discrete_state_input: Mapping[str, bool] = dataclasses.field(default_factory=dict)  # per family
    fast_action_dim: int | None = None  # pi0-FAST's action width in the reference's configs
    fast_layout: Layout | None = None  # pi0-FAST's slots in the reference's configs

    def layout(self, fast: bool) -> Layout:
        """How the robot's cameras fill the model's slots (pi0-FAST: as the reference's FAST configs)."""
        if fast and self.fast_layout is not None:
            return self.fast_layout
        return tuple((slot, camera) for slot, camera in PI0_LAYOUT if camera in self.slots)

    def request(self, message: Any, fast: bool = False) -> dict[str, Any]:
        """The client's request as the policy server's own keys (cameras by slot, state, prompt)."""
        if not isinstance(message, Mapping):
            raise RequestError(
                "frame", f"got {type(message).__name__}", f"a map as openpi's {self.name} client sends"
            )
        features = self.inputs(_flat_one_level(message))
        cameras = {camera: features.pop(camera) for camera in self.slots}
        black = np.zeros_like(cameras[BASE])
        images = {slot: black if camera is None else cameras[camera] for slot, camera in self.layout(fast)}
        return {**images, **features}

    def settings(self, family: str) -> RobotSettings:
        """What the reference's training configs for this robot fix for a model family."""
        return RobotSettings(
            action_horizon=self.action_horizon.get(family, RobotSettings.default(family).action_horizon),
            delta_action_mask=self.delta_action_mask.get(family),
            discrete_state_input=self.discrete_state_input.get(family),
            fast_action_dim=self.fast_action_dim,
            image_keys=tuple(slot for slot, _ in self.fast_layout)
            if family == "pi0_fast" and self.fast_layout
            else None,
        )


DEFAULT_ACTION_HORIZON = 50  # openpi's Pi0Config default
DEFAULT_FAST_ACTION_HORIZON = 32  # openpi's Pi0FASTConfig default


@dataclasses.dataclass(frozen=True)
class RobotSettings:
    """Chunk length, delta actions (True: relative to the state) and the state in the prompt (None:
    the family's default) of a model trained for one robot; nothing of it is in the weights."""

    action_horizon: int = DEFAULT_ACTION_HORIZON
    delta_action_mask: tuple[bool, ...] | None = None
    discrete_state_input: bool | None = None
    fast_action_dim: int | None = None
    image_keys: tuple[str, ...] | None = None  # the model's slots, where not openpi's usual three

    @classmethod
    def default(cls, family: str) -> RobotSettings:
        """openpi's defaults for a family without a robot: 32 actions per chunk for pi0-FAST, else 50."""
        return cls(
            action_horizon=DEFAULT_FAST_ACTION_HORIZON if family == "pi0_fast" else DEFAULT_ACTION_HORIZON
        )


def _flat_one_level(message: Mapping[str, Any]) -> dict[str, Any]:
    """`{"observation": {"image": x}}` and `{"observation/image": x}` are the same request (as in
    the server's own schema); ALOHA's `images` map is kept whole."""
    flat: dict[str, Any] = {}
    for key, value in message.items():
        if isinstance(value, Mapping) and key == "observation":
            flat.update({f"{key}/{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


_LIBERO_DELTA = (True,) * 6 + (False,)
_ALOHA_DELTA = ((True,) * 6 + (False,)) * 2
ROBOTS: dict[str, Robot] = {
    robot.name: robot
    for robot in (
        Robot(
            "libero",
            (BASE, LEFT_WRIST),
            state_dim=8,
            action_dim=7,
            inputs=_libero,
            delta_action_mask={"pi0": _LIBERO_DELTA, "pi0_fast": _LIBERO_DELTA},
            action_horizon={"pi05": 10, "pi0_fast": 10},
            discrete_state_input={"pi05": False},
            fast_action_dim=7,
            fast_layout=((BASE, BASE), (LEFT_WRIST, LEFT_WRIST), (RIGHT_WRIST, None)),
        ),
        Robot(
            "droid",
            (BASE, LEFT_WRIST),
            state_dim=8,
            action_dim=8,
            inputs=_droid,
            action_horizon={"pi0": 10, "pi0_fast": 10, "pi05": 15},
            fast_action_dim=8,
            fast_layout=((BASE, BASE), ("base_1_rgb", None), ("wrist_0_rgb", LEFT_WRIST)),
        ),
        Robot(
            "aloha",
            (BASE, LEFT_WRIST, RIGHT_WRIST),
            state_dim=14,
            action_dim=14,
            inputs=_aloha,
            outputs=_aloha_actions,
            delta_action_mask={family: _ALOHA_DELTA for family in ("pi0", "pi05", "pi0_fast")},
        ),
    )
}
ROBOT_NAMES = tuple(ROBOTS)


def robot(name: str) -> Robot:
    if name not in ROBOTS:
        raise ValueError(f"robot {name!r}: expected one of {ROBOT_NAMES}")
    return ROBOTS[name]
