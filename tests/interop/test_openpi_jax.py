"""openpi JAX checkpoints (orbax `params/`), written in the tests the way openpi writes them."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
from openpi_orbax import convert, jax_tree, run_convert, save_released, save_training_step

from helpers import make_observation, randomize_
from vlaflow import VLA, preset
from vlaflow.interop.openpi_jax import detect, is_orbax_checkpoint

if importlib.util.find_spec("orbax") is None:  # not imported here: JAX must not start in pytest's process
    pytest.skip("needs orbax-checkpoint (vlaflow[openpi])", allow_module_level=True)


def _source(name: str, seed: int = 0) -> VLA:
    torch.manual_seed(seed)
    model = VLA(preset(name))
    randomize_(model)
    return model.eval()


def _same_actions(a: VLA, b: VLA, atol: float = 0.0) -> None:
    obs = make_observation(a.config)
    noise = torch.randn(
        2, a.config.action_horizon, a.config.action_dim, generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(
        a.sample_actions(obs, noise=noise), b.sample_actions(obs, noise=noise), rtol=0, atol=atol
    )


@pytest.mark.parametrize("name", ["pi0_tiny", "pi05_tiny"])
def test_released_checkpoint_converts_to_the_same_model(tmp_path, name):
    source = _source(name)
    save_released(jax_tree(source), tmp_path / "ckpt")
    loaded, detected, _ = convert(
        tmp_path / "ckpt",
        tmp_path / "out",
        action_horizon=source.config.action_horizon,
        max_token_len=source.config.max_token_len,
    )
    assert detected.family == ("pi05" if source.config.pi05 else "pi0")
    assert (detected.vision, detected.vlm, detected.expert) == (
        source.config.vision,
        source.config.vlm,
        source.config.expert,
    )
    assert detected.vocab_size == source.config.vocab_size and detected.dtype == "float32"
    for (key, a), b in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    _same_actions(source, loaded)


def test_einsum_kernels_compute_what_openpi_computes(tmp_path):
    """The JAX arrays, used with openpi's own einsum equations, give what the converted modules give."""
    source = _source("pi05_tiny")
    tree = jax_tree(source)
    save_released(tree, tmp_path / "ckpt")
    loaded, _, params = convert(tmp_path / "ckpt", tmp_path / "out", action_horizon=50, max_token_len=64)
    x = np.random.default_rng(0).normal(size=(2, 5, 128)).astype(np.float32)
    xt = torch.from_numpy(x)
    layer = loaded.transformer.layers[1].experts[0]
    q = np.einsum("BTD,NDH->BTNH", x, params["PaliGemma/llm/layers/attn/q_einsum/w"][1])
    k, v = np.einsum("BSD,CKDH->CBSKH", x, params["PaliGemma/llm/layers/attn/kv_einsum/w"][1])
    with torch.no_grad():
        np.testing.assert_allclose(layer.q_proj(xt).numpy().reshape(q.shape), q, atol=1e-5)
        np.testing.assert_allclose(layer.k_proj(xt).numpy().reshape(k.shape), k, atol=1e-5)
        np.testing.assert_allclose(layer.v_proj(xt).numpy().reshape(v.shape), v, atol=1e-5)
        heads = np.random.default_rng(1).normal(size=q.shape).astype(np.float32)
        out = np.einsum("BTNH,NHD->BTD", heads, params["PaliGemma/llm/layers/attn/attn_vec_einsum/w"][1])
        torch.testing.assert_close(
            layer.o_proj(torch.from_numpy(heads).flatten(2)), torch.from_numpy(out), atol=1e-5, rtol=0
        )
        gating = params["PaliGemma/llm/layers/mlp/gating_einsum"][1]
        torch.testing.assert_close(
            layer.mlp.gate_proj(xt), torch.from_numpy(x @ gating[0]), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(layer.mlp.up_proj(xt), torch.from_numpy(x @ gating[1]), atol=1e-5, rtol=0)
        image = np.random.default_rng(2).normal(size=(1, 112, 112, 3)).astype(np.float32)
        kernel = params["PaliGemma/img/embedding/kernel"]  # (p, p, in, out), NHWC
        p = kernel.shape[0]
        patches = image.reshape(1, 8, p, 8, p, 3).transpose(0, 1, 3, 2, 4, 5)
        expected = np.einsum("bijpqc,pqcd->bijd", patches, kernel) + params["PaliGemma/img/embedding/bias"]
        ours = loaded.vision.patch_embed(torch.from_numpy(image).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        torch.testing.assert_close(ours, torch.from_numpy(expected), atol=1e-4, rtol=0)


def test_training_step_directory_with_nnx_state_values(tmp_path):
    source = _source("pi0_tiny", seed=3)
    step = save_training_step(jax_tree(source), tmp_path / "run", 1000)
    assert is_orbax_checkpoint(step) and (step / "train_state").is_dir()
    loaded, detected, params = convert(step, tmp_path / "out", action_horizon=50, max_token_len=48)
    assert all(not k.endswith("value") for k in params)
    assert detected.family == "pi0"
    _same_actions(source, loaded)


def test_bfloat16_checkpoint(tmp_path):
    source = _source("pi05_tiny", seed=4)
    save_released(jax_tree(source), tmp_path / "ckpt", dtype="bfloat16")
    loaded, detected, _ = convert(tmp_path / "ckpt", tmp_path / "out", action_horizon=50, max_token_len=64)
    assert detected.dtype == "bfloat16"
    for (key, a), b in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a.to(torch.bfloat16).float(), rtol=0, atol=0, msg=key)


def test_pi0_fast_tree_is_detected_without_an_expert(tmp_path):
    source = _source("pi0fast_tiny")
    tree = jax_tree(source)
    assert "action_in_proj" not in tree
    detected = detect({k: v for k, v in _flat(tree).items()})
    assert detected.family == "pi0_fast" and detected.expert is None and detected.action_dim is None


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_unknown_or_partial_trees_fail_naming_what_is_missing(tmp_path):
    tree = _flat(jax_tree(_source("pi0_tiny")))
    del tree["state_proj/kernel"]
    with pytest.raises(ValueError, match="state_proj"):
        detect(tree)
    with pytest.raises(ValueError, match="PaliGemma/img/embedding/kernel"):
        detect({"PaliGemma/llm/embedder/input_embedding": np.zeros((3, 4))})
    lora = _flat(jax_tree(_source("pi0_tiny")))
    lora["PaliGemma/llm/layers/attn/q_einsum/lora_a"] = np.zeros((1,))
    with pytest.raises(ValueError, match="LoRA"):
        detect(lora)


def test_convert_command_prints_what_it_found(tmp_path):
    source = _source("pi05_tiny", seed=5)
    save_released(jax_tree(source), tmp_path / "ckpt")
    result = run_convert(
        tmp_path / "ckpt",
        "--output",
        str(tmp_path / "out"),
        "--action-horizon",
        "50",
        "--max-token-len",
        "64",
    )
    assert result.returncode == 0, result.stderr
    assert "openpi JAX checkpoint" in result.stdout and "family: pi05" in result.stdout
    assert "stored dtype: float32" in result.stdout and "width 64, depth 4" in result.stdout
    from vlaflow.pretrained import load_pretrained

    _same_actions(source, load_pretrained(tmp_path / "out").model.eval())


# ---------------------------------------------------------------------------- openpi's norm stats

STATE = {"mean": [0.1, -0.2, 0.3], "std": [1.0, 2.0, 0.5], "q01": [-1.0, -3.0, 0.0], "q99": [1.0, 5.0, 0.5]}
ACTIONS = {"mean": [0.0, 1.0], "std": [0.25, 4.0], "q01": [-0.5, -7.0], "q99": [0.5, 9.0]}


def _write_assets(checkpoint, asset_id="my_robot", stats=None):
    import json

    directory = checkpoint / "assets" / asset_id
    directory.mkdir(parents=True)
    (directory / "norm_stats.json").write_text(
        json.dumps({"norm_stats": stats or {"state": STATE, "actions": ACTIONS}})
    )


@pytest.mark.parametrize("name,mode", [("pi05_tiny", "quantile"), ("pi0_tiny", "zscore")])
def test_norm_stats_make_the_converted_model_a_policy(tmp_path, name, mode):
    from vlaflow.inference.policy import Policy
    from vlaflow.interop.openpi_norm import find_norm_stats, openpi_metadata
    from vlaflow.pretrained import save_pretrained
    from vlaflow.tokenizers import EmbeddedTokenizer

    source = _source(name, seed=6)
    save_released(jax_tree(source), tmp_path / "ckpt")
    _write_assets(tmp_path / "ckpt")
    model, detected, _ = convert(tmp_path / "ckpt", tmp_path / "conv", action_horizon=50, max_token_len=64)
    file, asset_id = find_norm_stats(tmp_path / "ckpt")
    assert asset_id == "my_robot"
    metadata = openpi_metadata(
        file, asset_id, family=detected.family, action_horizon=50, image_keys=model.config.image_keys
    )
    save_pretrained(tmp_path / "out", model, tokenizer=EmbeddedTokenizer(), metadata=metadata)
    policy = Policy.load(tmp_path / "out", num_steps=2)
    assert policy.action_dim == 2 and policy.stats.state.dim == 3
    state, action = np.array([0.5, 1.0, 0.25]), np.array([0.5, -0.5])
    if mode == "quantile":  # openpi: (x - q01) / (q99 - q01 + 1e-6) * 2 - 1 and back
        expected_state = [
            (0.5 + 1) / (2 + 1e-6) * 2 - 1,
            (1 + 3) / (8 + 1e-6) * 2 - 1,
            0.25 / (0.5 + 1e-6) * 2 - 1,
        ]
        expected_action = [(0.5 + 1) / 2 * (1 + 1e-6) - 0.5, (-0.5 + 1) / 2 * (16 + 1e-6) - 7]
    else:  # openpi: (x - mean) / (std + 1e-6) and back
        expected_state = [(0.5 - 0.1) / (1 + 1e-6), (1 + 0.2) / (2 + 1e-6), (0.25 - 0.3) / (0.5 + 1e-6)]
        expected_action = [0.5 * (0.25 + 1e-6), -0.5 * (4 + 1e-6) + 1]
    np.testing.assert_allclose(policy.state_norm.normalize(state), expected_state, rtol=1e-6)
    np.testing.assert_allclose(policy.action_norm.unnormalize(action), expected_action, rtol=1e-6)
    images = {k: np.zeros((112, 112, 3), np.uint8) for k in model.config.image_keys}
    actions = policy.act({"images": images, "state": state.astype(np.float32), "prompt": "pick"})["actions"]
    assert actions.shape == (50, 2) and np.isfinite(actions).all()


def test_convert_reads_the_assets_beside_params_and_names_bad_files(tmp_path):
    from vlaflow.pretrained import read_config

    save_released(jax_tree(_source("pi05_tiny", seed=7)), tmp_path / "ckpt")
    _write_assets(tmp_path / "ckpt")
    command = ("--max-token-len", "64")
    result = run_convert(tmp_path / "ckpt", *command, "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "normalization: quantile, statistics of 'my_robot'" in result.stdout
    metadata = read_config(tmp_path / "out")["metadata"]
    assert metadata["normalization"] == "quantile" and metadata["openpi_family"] == "pi05"
    assert metadata["norm_stats"]["my_robot"]["state"]["q99"] == STATE["q99"]
    assert metadata["norm_stats"]["my_robot"]["state"]["min"] == [None] * 3  # openpi keeps none
    _write_assets(tmp_path / "ckpt", "other", {"state": {"mean": [0.0], "std": [1.0]}, "actions": ACTIONS})
    result = run_convert(tmp_path / "ckpt", *command, "--output", str(tmp_path / "o2"))
    assert result.returncode == 2 and "choose one with --asset-id" in result.stderr
    result = run_convert(tmp_path / "ckpt", *command, "--output", str(tmp_path / "o3"), "--asset-id", "other")
    assert result.returncode == 2 and "norm_stats.state lacks ['q01', 'q99']" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------- pi0-FAST from openpi


def _pi0_fast_checkpoint(tmp_path):
    """A tiny pi0-FAST orbax checkpoint (openpi's layout: FAST ids on the text vocabulary's last
    ids, no rows of their own), its FAST tokenizer and 7-dim statistics."""
    from vlaflow.tokenizers import FastTokenizer

    source = _source("pi0fast_tiny", seed=9)
    source = VLA(source.config.replace(fast_ids="reference"))
    randomize_(source)
    save_released(jax_tree(source), tmp_path / "ckpt")
    _write_assets(tmp_path / "ckpt")
    t = np.linspace(0, 1, 10)[None, :, None]
    rng = np.random.default_rng(0)
    chunks = np.sin(2 * np.pi * (t * rng.uniform(0.5, 2, (300, 1, 2)) + rng.uniform(0, 1, (300, 1, 2))))
    fast = FastTokenizer.fit(chunks, vocab_size=200)
    fast.save(tmp_path / "fast")
    return source.eval(), fast


def test_pi0_fast_converts_with_the_reference_id_layout_and_decodes_with_it(tmp_path):
    from vlaflow.inference.policy import Policy
    from vlaflow.interop.openpi_norm import find_norm_stats, openpi_metadata
    from vlaflow.models.vla import Generation
    from vlaflow.pretrained import FAST_TOKENIZER_DIR, save_pretrained
    from vlaflow.tokenizers import EmbeddedTokenizer, FastIdRange

    source, fast = _pi0_fast_checkpoint(tmp_path)
    model, detected, _ = convert(
        tmp_path / "ckpt",
        tmp_path / "conv",
        action_horizon=10,
        action_dim=2,
        fast_vocab_size=fast.vocab_size,
        max_token_len=64,
    )
    assert detected.family == "pi0_fast" and model.config.fast_ids == "reference" and model.config.pi05
    assert model.config.embedding_rows == source.config.vocab_size
    for (key, a), b in zip(source.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    file, asset = find_norm_stats(tmp_path / "ckpt")
    metadata = openpi_metadata(
        file, asset, family="pi0_fast", action_horizon=10, image_keys=model.config.image_keys
    )
    save_pretrained(tmp_path / "out", model, tokenizer=EmbeddedTokenizer(), metadata=metadata)
    fast.save(tmp_path / "out" / FAST_TOKENIZER_DIR)
    policy = Policy.load(tmp_path / "out", num_steps=2)

    chunk = np.sin(np.linspace(0, 3, 20)).reshape(10, 2)
    fast_ids = fast.encode(chunk)[0]
    vlm_ids = FastIdRange.for_model(model.config).to_vlm(fast_ids)
    assert all(i == model.config.vocab_size - 1 - 128 - k for i, k in zip(vlm_ids, fast_ids, strict=True))
    bar = EmbeddedTokenizer().encode("|")
    tokens = torch.tensor([vlm_ids + bar])
    policy.decoder.generate = lambda *a, **k: Generation(
        tokens=tokens, lengths=torch.tensor([tokens.shape[1]])
    )
    images = {k: np.zeros((112, 112, 3), np.uint8) for k in model.config.image_keys}
    actions = policy.act({"images": images, "state": np.zeros(3, np.float32), "prompt": "Pick"})["actions"]
    expected = policy.action_norm.unnormalize(fast.decode([fast_ids])[0][0])
    np.testing.assert_allclose(actions, expected, rtol=1e-5, atol=1e-6)
    assert policy.fast_failures == 0


def test_convert_pi0_fast_needs_its_tokenizer_and_records_it(tmp_path):
    _, fast = _pi0_fast_checkpoint(tmp_path)
    command = ("--max-token-len", "64")
    result = run_convert(tmp_path / "ckpt", *command, "--output", str(tmp_path / "o1"))
    assert result.returncode == 2 and "--fast-tokenizer" in result.stderr
    result = run_convert(
        tmp_path / "ckpt",
        *command,
        "--output",
        str(tmp_path / "o2"),
        "--fast-tokenizer",
        str(tmp_path / "fast"),
        "--action-horizon",
        "10",
        "--action-dim",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert (
        "family: pi0_fast" in result.stdout
        and f"vocabulary {fast.vocab_size}, chunks 10 x 2" in result.stdout
    )
    from vlaflow.pretrained import read_config

    config = read_config(tmp_path / "o2")
    assert config["model"]["fast_ids"] == "reference" and (tmp_path / "o2" / "fast_tokenizer").is_dir()


def test_jax_never_started_in_the_test_process():
    """orbax (and JAX with its threads) runs in child processes only: later tests fork. (Other
    packages may import jax; its threads start with its first backend.)"""
    if "jax" in sys.modules:
        from jax._src import xla_bridge

        assert not xla_bridge._backends


def test_lora_fine_tunes_are_folded_into_their_base_weights(tmp_path):
    """openpi's low-memory fine-tunes store LoRA pairs next to the base weights: einsum kernels
    compute with w + (alpha / rank) * lora_a @ lora_b, the MLP with w + a @ b (unscaled)."""
    source = _source("pi05_tiny", seed=11)
    tree = jax_tree(source)
    rng = np.random.default_rng(0)
    attn, mlp = tree["PaliGemma"]["llm"]["layers"]["attn"], tree["PaliGemma"]["llm"]["layers"]["mlp_1"]
    for node, key, scale in ((attn["q_einsum"], "w", 2.0), (attn["kv_einsum_1"], "w", 2.0)):
        w = node[key]
        a = rng.normal(0, 0.1, (*w.shape[:-1], 4)).astype(np.float32)
        b = rng.normal(0, 0.1, (*w.shape[:-2], 4, w.shape[-1])).astype(np.float32)
        node[key], node["lora_a"], node["lora_b"] = w - scale * (a @ b), a, b
    for key in ("gating_einsum", "linear"):
        w = mlp[key]
        a = rng.normal(0, 0.1, (*w.shape[:-1], 4)).astype(np.float32)
        b = rng.normal(0, 0.1, (*w.shape[:-2], 4, w.shape[-1])).astype(np.float32)
        mlp[key], mlp[f"{key}_lora_a"], mlp[f"{key}_lora_b"] = w - a @ b, a, b
    save_released(tree, tmp_path / "ckpt")
    loaded, detected, _ = convert(tmp_path / "ckpt", tmp_path / "out", max_token_len=64, lora_scale=2.0)
    assert detected.lora_pairs == 4
    for (key, a), b in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=key)


def test_without_orbax_the_error_names_the_extra(tmp_path, monkeypatch):
    from vlaflow.interop.openpi_jax import read_params

    source = _source("pi0_tiny", seed=12)
    save_released(jax_tree(source), tmp_path / "ckpt")
    monkeypatch.setitem(sys.modules, "orbax", None)  # as if orbax-checkpoint were not installed
    monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)
    with pytest.raises(ImportError, match=r'pip install "vlaflow\[openpi\]"'):
        read_params(tmp_path / "ckpt")
