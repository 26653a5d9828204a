"""openpi's robots served unchanged: frames shaped exactly as openpi's LIBERO, DROID and ALOHA
example clients build them, sent with openpi's own client (`openpi-client`), against a model
converted from an orbax checkpoint with the robot's norm_stats.json."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from openpi_orbax import convert, jax_tree, run_convert, save_released

from helpers import randomize_
from vlaflow import VLA, preset
from vlaflow.inference.policy import Policy
from vlaflow.inference.server import ServerConfig, server_for_policy
from vlaflow.interop.openpi_norm import openpi_metadata
from vlaflow.interop.openpi_robots import JOINT_FLIP, gripper_from_angular, gripper_to_angular, robot
from vlaflow.pretrained import read_config, save_pretrained
from vlaflow.tokenizers import EmbeddedTokenizer

if importlib.util.find_spec("orbax") is None:  # not imported here: JAX must not start in pytest's process
    pytest.skip("needs orbax-checkpoint (vlaflow[openpi])", allow_module_level=True)
websocket_client_policy = pytest.importorskip("openpi_client.websocket_client_policy")


def _stats(dim: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    low = rng.uniform(-1, 0, dim)
    return {
        "mean": rng.normal(size=dim).tolist(),
        "std": rng.uniform(0.5, 2, dim).tolist(),
        "q01": low.tolist(),
        "q99": (low + rng.uniform(0.5, 2, dim)).tolist(),
    }


def converted(tmp_path, name: str, robot_name: str) -> tuple[Policy, dict]:
    """A tiny `name` model written as an openpi orbax checkpoint with `robot_name`'s statistics,
    converted as `vlaflow convert --robot` converts it."""
    torch.manual_seed(0)
    source = VLA(preset(name))
    randomize_(source)
    ckpt = tmp_path / "ckpt"
    save_released(jax_tree(source), ckpt)
    r = robot(robot_name)
    (ckpt / "assets" / robot_name).mkdir(parents=True)
    stats = {"state": _stats(r.state_dim, 1), "actions": _stats(r.action_dim, 2)}
    (ckpt / "assets" / robot_name / "norm_stats.json").write_text(json.dumps({"norm_stats": stats}))
    model, detected, _ = convert(ckpt, tmp_path / "conv", max_token_len=64, robot=robot_name)
    metadata = openpi_metadata(
        ckpt / "assets" / robot_name / "norm_stats.json",
        robot_name,
        family=detected.family,
        action_horizon=model.config.action_horizon,
        image_keys=model.config.image_keys,
        delta_action_mask=r.settings(detected.family).delta_action_mask,
    ) | {"robot": robot_name}
    save_pretrained(tmp_path / "out", model, tokenizer=EmbeddedTokenizer(), metadata=metadata)
    return Policy.load(tmp_path / "out", num_steps=2), read_config(tmp_path / "out")["metadata"]


def _image(seed: int, chw: bool = False) -> np.ndarray:
    image = np.random.default_rng(seed).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    return image.transpose(2, 0, 1).copy() if chw else image


def _serve_and_ask(policy, metadata, requests, **options):
    server = server_for_policy(
        policy, metadata, config=ServerConfig(port=0), robot=robot(metadata["robot"]), **options
    )
    with server.in_background() as port:
        client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", port)
        replies = []
        for request in requests:
            policy.generator.manual_seed(0)
            replies.append(client.infer(request))
        return client.get_server_metadata(), replies


def test_libero_client(tmp_path):
    policy, metadata = converted(tmp_path, "pi05_tiny", "libero")
    assert policy.model.config.action_horizon == 10 and policy.model.config.discrete_state_input is False
    assert policy.stats.delta_action_mask is None  # the reference's pi05_libero: absolute actions
    state = np.random.default_rng(3).normal(size=8)  # eef position, axis-angle, gripper qpos
    element = {  # examples/libero/main.py
        "observation/image": _image(1),
        "observation/wrist_image": _image(2),
        "observation/state": state,
        "prompt": "put the bowl on the plate",
    }
    bad = {**element, "observation/state": np.zeros(5)}
    server_metadata, (reply, error) = _serve_and_ask(policy, metadata, [element, bad])
    policy.generator.manual_seed(0)
    expected = policy.act(
        {
            "images": {"base_0_rgb": _image(1), "left_wrist_0_rgb": _image(2)},
            "state": state.astype(np.float32),
            "prompt": "put the bowl on the plate",
        }
    )["actions"]
    assert server_metadata["robot"] == "libero" and reply["actions"].shape == (10, 7)
    np.testing.assert_allclose(reply["actions"], expected, rtol=1e-5, atol=1e-6)
    assert error["error"]["field"] == "observation/state" and "(8,)" in error["error"]["expected"]


def test_libero_pi0_predicts_joint_deltas_as_the_reference_trained_it(tmp_path):
    policy, _ = converted(tmp_path, "pi0_tiny", "libero")
    assert policy.stats.delta_action_mask == (True,) * 6 + (False,)
    assert policy.model.config.action_horizon == 50


def test_droid_client(tmp_path):
    policy, metadata = converted(tmp_path, "pi05_tiny", "droid")
    assert policy.model.config.action_horizon == 15
    joints = np.random.default_rng(4).normal(size=7)
    request = {  # examples/droid/main.py
        "observation/exterior_image_1_left": _image(5),
        "observation/wrist_image_left": _image(6),
        "observation/joint_position": joints,
        "observation/gripper_position": np.array([0.25]),
        "prompt": "wipe the table",
    }
    scalar_gripper = {**request, "observation/gripper_position": 0.25}
    bad = {**request, "observation/joint_position": np.zeros(6)}
    _, (reply, reply_scalar, error) = _serve_and_ask(policy, metadata, [request, scalar_gripper, bad])
    policy.generator.manual_seed(0)
    state = np.concatenate([joints, [0.25]]).astype(np.float32)
    expected = policy.act(
        {
            "images": {"base_0_rgb": _image(5), "left_wrist_0_rgb": _image(6)},
            "state": state,
            "prompt": "wipe the table",
        }
    )["actions"]
    assert reply["actions"].shape == (15, 8)
    np.testing.assert_allclose(reply["actions"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reply_scalar["actions"], expected, rtol=1e-5, atol=1e-6)
    assert error["error"]["field"] == "observation/joint_position"


def test_aloha_gripper_conversions_by_hand():
    # openpi's aloha_policy: linear finger position (normalized) -> horn angle (normalized) and back
    value = np.array([0.3])
    metres = 0.3 * (0.05800 - 0.01844) + 0.01844
    angle = np.arcsin((0.022**2 + metres**2 - 0.036**2) / (2 * 0.022 * metres))
    np.testing.assert_allclose(gripper_to_angular(value), (angle - 0.5476) / (1.6296 - 0.5476))
    np.testing.assert_allclose(
        gripper_from_angular(np.array([0.2])), (0.2 + 0.5476 + 0.6213) / (1.4910 + 0.6213)
    )


def test_aloha_client(tmp_path):
    policy, metadata = converted(tmp_path, "pi0_tiny", "aloha")
    assert policy.stats.delta_action_mask == ((True,) * 6 + (False,)) * 2
    qpos = np.random.default_rng(7).uniform(0.1, 0.9, 14)
    images = {
        name: _image(10 + i, chw=True)
        for i, name in enumerate(("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"))
    }
    observation = {"state": qpos, "images": images}  # examples/aloha_real/env.py: no prompt
    missing = {"state": qpos, "images": {k: v for k, v in images.items() if k != "cam_left_wrist"}}
    unknown = {"state": qpos, "images": {**images, "cam_extra": images["cam_high"]}}
    _, (reply, missing_reply, unknown_reply) = _serve_and_ask(
        policy, metadata, [observation, missing, unknown], default_prompt="fold the towel"
    )
    decoded = qpos * JOINT_FLIP
    decoded[[6, 13]] = gripper_to_angular(decoded[[6, 13]])
    policy.generator.manual_seed(0)
    model_actions = policy.act(
        {
            "images": {
                "base_0_rgb": images["cam_high"].transpose(1, 2, 0),
                "left_wrist_0_rgb": images["cam_left_wrist"].transpose(1, 2, 0),
                "right_wrist_0_rgb": images["cam_right_wrist"].transpose(1, 2, 0),
            },
            "state": decoded.astype(np.float32),
            "prompt": "fold the towel",
        }
    )["actions"]
    expected = model_actions * JOINT_FLIP
    expected[:, [6, 13]] = gripper_from_angular(expected[:, [6, 13]])
    assert reply["actions"].shape == (50, 14)
    np.testing.assert_allclose(reply["actions"], expected, rtol=1e-5, atol=1e-5)
    assert missing_reply["error"]["field"] == "images/cam_left_wrist"
    assert unknown_reply["error"]["field"] == "images/cam_extra"


def test_a_robot_needs_statistics_of_its_widths(tmp_path):
    policy, metadata = converted(tmp_path, "pi05_tiny", "droid")
    with pytest.raises(ValueError, match="openpi's aloha client sends a state of 14"):
        server_for_policy(policy, metadata, robot=robot("aloha"))


def test_convert_robot_records_the_reference_settings(tmp_path):
    torch.manual_seed(0)
    source = VLA(preset("pi05_tiny"))
    save_released(jax_tree(source), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "assets" / "physical-intelligence" / "libero").mkdir(parents=True)
    stats = {"state": _stats(8, 1), "actions": _stats(7, 2)}
    (tmp_path / "ckpt" / "assets" / "physical-intelligence" / "libero" / "norm_stats.json").write_text(
        json.dumps({"norm_stats": stats})
    )
    result = run_convert(
        tmp_path / "ckpt", "--output", str(tmp_path / "out"), "--robot", "libero", "--max-token-len", "64"
    )
    assert result.returncode == 0, result.stderr
    assert "action horizon: 10" in result.stdout and "state in the prompt: False" in result.stdout
    config = read_config(tmp_path / "out")
    assert config["metadata"]["robot"] == "libero"
    assert config["model"]["discrete_state_input"] is False and config["model"]["action_horizon"] == 10


def test_openpi_pi0_fast_fills_the_slots_as_the_reference_fast_configs():
    """openpi's pi0-FAST: LIBERO shows a black right-wrist image (not masked); DROID uses a base, a
    black second base and a wrist slot. pi0 / pi0.5 leave the missing camera's slot masked."""
    libero = {
        "observation/image": _image(1),
        "observation/wrist_image": _image(2),
        "observation/state": np.zeros(8),
        "prompt": "x",
    }
    plain = robot("libero").request(libero)
    assert "right_wrist_0_rgb" not in plain and np.array_equal(plain["base_0_rgb"], _image(1))
    fast = robot("libero").request(libero, fast=True)
    assert [k for k in fast if k.endswith("rgb")] == ["base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"]
    assert not fast["right_wrist_0_rgb"].any() and fast["right_wrist_0_rgb"].shape == (224, 224, 3)
    droid = {
        "observation/exterior_image_1_left": _image(3),
        "observation/wrist_image_left": _image(4),
        "observation/joint_position": np.zeros(7),
        "observation/gripper_position": np.zeros(1),
        "prompt": "x",
    }
    fast = robot("droid").request(droid, fast=True)
    assert [k for k in fast if k.endswith("rgb")] == ["base_0_rgb", "base_1_rgb", "wrist_0_rgb"]
    assert np.array_equal(fast["wrist_0_rgb"], _image(4)) and not fast["base_1_rgb"].any()
    settings = robot("droid").settings("pi0_fast")
    assert settings.image_keys == ("base_0_rgb", "base_1_rgb", "wrist_0_rgb")
    assert (settings.action_horizon, settings.fast_action_dim) == (10, 8)
    assert robot("droid").settings("pi05").image_keys is None


def test_droid_client_against_a_converted_pi0_fast(tmp_path):
    from vlaflow.pretrained import FAST_TOKENIZER_DIR
    from vlaflow.tokenizers import FastTokenizer

    torch.manual_seed(0)
    source = VLA(preset("pi0fast_tiny").replace(fast_ids="reference"))
    randomize_(source)
    save_released(jax_tree(source), tmp_path / "ckpt")
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 10)[None, :, None]
    fast = FastTokenizer.fit(np.sin(2 * np.pi * (t + rng.uniform(0, 1, (200, 1, 8)))), vocab_size=200)
    model, _, _ = convert(
        tmp_path / "ckpt", tmp_path / "conv", max_token_len=64, robot="droid", fast_vocab_size=fast.vocab_size
    )
    assert model.config.image_keys == ("base_0_rgb", "base_1_rgb", "wrist_0_rgb")
    assert (model.config.action_horizon, model.config.action_dim) == (10, 8)
    (tmp_path / "stats").mkdir()
    stats = {"state": _stats(8, 1), "actions": _stats(8, 2)}
    (tmp_path / "stats" / "norm_stats.json").write_text(json.dumps({"norm_stats": stats}))
    metadata = openpi_metadata(
        tmp_path / "stats" / "norm_stats.json",
        "droid",
        family="pi0_fast",
        action_horizon=10,
        image_keys=model.config.image_keys,
    ) | {"robot": "droid"}
    save_pretrained(tmp_path / "out", model, tokenizer=EmbeddedTokenizer(), metadata=metadata)
    fast.save(tmp_path / "out" / FAST_TOKENIZER_DIR)
    policy = Policy.load(tmp_path / "out")
    request = {
        "observation/exterior_image_1_left": _image(5),
        "observation/wrist_image_left": _image(6),
        "observation/joint_position": np.zeros(7),
        "observation/gripper_position": np.zeros(1),
        "prompt": "wipe the table",
    }
    _, (reply,) = _serve_and_ask(policy, metadata, [request])
    assert reply["actions"].shape == (10, 8) and np.isfinite(reply["actions"]).all()
