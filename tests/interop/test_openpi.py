"""Loading reference-named checkpoints: names, prefixes, tied heads, and clear failures."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from helpers import make_observation, randomize_
from vlaflow import VLA, preset
from vlaflow.interop.openpi import load_pytorch_checkpoint, load_reference_weights, reference_key

SPEC_NAMES = [  # from the reference's checkpoint layout (shared/spec/reference-model.md)
    "paligemma_with_expert.paligemma.model.vision_tower.vision_model.embeddings.patch_embedding.weight",
    "paligemma_with_expert.paligemma.model.vision_tower.vision_model.embeddings.position_embedding.weight",
    "paligemma_with_expert.paligemma.model.vision_tower.vision_model.encoder.layers.0.layer_norm1.bias",
    "paligemma_with_expert.paligemma.model.vision_tower.vision_model.encoder.layers.1.self_attn.out_proj.weight",
    "paligemma_with_expert.paligemma.model.vision_tower.vision_model.encoder.layers.2.mlp.fc2.bias",
    "paligemma_with_expert.paligemma.model.vision_tower.vision_model.post_layernorm.weight",
    "paligemma_with_expert.paligemma.model.multi_modal_projector.linear.weight",
    "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight",
    "paligemma_with_expert.paligemma.model.language_model.layers.3.self_attn.o_proj.weight",
    "paligemma_with_expert.paligemma.model.language_model.layers.0.mlp.gate_proj.weight",
    "paligemma_with_expert.paligemma.model.language_model.layers.0.input_layernorm.weight",
    "paligemma_with_expert.paligemma.model.language_model.norm.weight",
    "paligemma_with_expert.gemma_expert.model.layers.1.post_attention_layernorm.weight",
    "paligemma_with_expert.gemma_expert.model.norm.weight",
    "action_in_proj.weight",
    "action_time_mlp_out.bias",
    "state_proj.weight",
]
PI05_NAMES = [
    "paligemma_with_expert.gemma_expert.model.layers.0.input_layernorm.dense.weight",
    "paligemma_with_expert.gemma_expert.model.layers.3.post_attention_layernorm.dense.bias",
    "paligemma_with_expert.gemma_expert.model.norm.dense.weight",
    "paligemma_with_expert.paligemma.model.language_model.layers.0.post_attention_layernorm.weight",
    "time_mlp_in.weight",
    "time_mlp_out.bias",
]


@pytest.mark.parametrize("name,expected", [("pi0_tiny", SPEC_NAMES), ("pi05_tiny", PI05_NAMES)])
def test_our_names_map_onto_the_reference_layout(name, expected):
    keys = [reference_key(k) for k in VLA(preset(name)).state_dict()]
    assert len(set(keys)) == len(keys)
    assert set(expected) <= set(keys)
    assert all(re.match(r"^(paligemma_with_expert\.|action_|state_proj|time_mlp)", k) for k in keys)


def reference_checkpoint(model: VLA, path, *, prefix="", extra=None, drop=()):
    state = {prefix + reference_key(k): v.clone() for k, v in model.state_dict().items()}
    state = {k: v for k, v in state.items() if not any(d in k for d in drop)}
    state.update(extra or {})
    save_file(state, str(path))


@pytest.mark.parametrize("prefix", ["", "model."])
def test_synthetic_reference_checkpoint_round_trips(tmp_path, prefix):
    source = VLA(preset("pi05_tiny"))
    randomize_(source)
    embed = source.transformer.embed.weight
    head = {prefix + "paligemma_with_expert.paligemma.lm_head.weight": embed.clone()}
    head[prefix + "paligemma_with_expert.gemma_expert.lm_head.weight"] = torch.zeros(3, 64)
    reference_checkpoint(source, tmp_path / "model.safetensors", prefix=prefix, extra=head)
    with torch.device("meta"):
        loaded = VLA(source.config)
    load_reference_weights(loaded, tmp_path, dtype=torch.float32, device="cpu")
    for (k, a), b in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    obs = make_observation(source.config)
    noise = torch.randn(2, 50, 32)
    assert torch.equal(
        source.eval().sample_actions(obs, noise=noise), loaded.eval().sample_actions(obs, noise=noise)
    )


def test_wrong_variant_fails_naming_keys_and_shapes(tmp_path):
    reference_checkpoint(VLA(preset("pi0_tiny")), tmp_path / "model.safetensors")
    with pytest.raises(ValueError) as err:
        load_pytorch_checkpoint(
            tmp_path, pi05=False, paligemma_variant="dummy", action_expert_variant="dummy"
        )
    message = str(err.value)
    assert re.search(r"\d+ shape mismatches, first: \S+: checkpoint \[\d+(, \d+)*\] vs model \[", message)
    assert "action_in_proj.weight: checkpoint [64, 32] vs model [64, 32]" not in message


def test_pi0_checkpoint_into_pi05_model_lists_missing_and_unexpected(tmp_path):
    reference_checkpoint(VLA(preset("pi0_tiny")), tmp_path / "model.safetensors")
    with torch.device("meta"):
        model = VLA(preset("pi05_tiny"))
    with pytest.raises(ValueError) as err:
        load_reference_weights(model, tmp_path, dtype=torch.float32, device="cpu")
    message = str(err.value)
    assert (
        "missing keys" in message
        and "gemma_expert.model.layers.0.input_layernorm.dense.weight [192, 64]" in message
    )
    assert "unexpected keys" in message and "action_time_mlp_in.weight [64, 128]" in message


@pytest.mark.parametrize("stored", ["embedding", "head", "both"])
def test_either_name_of_the_tied_embedding_pair_loads(tmp_path, stored):
    source = VLA(preset("pi0_tiny"))
    randomize_(source)
    embed = source.transformer.embed.weight.detach().clone()
    extra = {"paligemma_with_expert.paligemma.lm_head.weight": embed} if stored != "embedding" else {}
    drop = ("language_model.embed_tokens",) if stored == "head" else ()
    reference_checkpoint(source, tmp_path / "model.safetensors", extra=extra, drop=drop)
    with torch.device("meta"):
        model = VLA(source.config)
    load_reference_weights(model, tmp_path, dtype=torch.float32, device="cpu")
    assert torch.equal(model.transformer.embed.weight, embed)


def test_a_checkpoint_without_the_embedding_is_refused_by_name(tmp_path):
    source = VLA(preset("pi0_tiny"))
    reference_checkpoint(source, tmp_path / "model.safetensors", drop=("language_model.embed_tokens",))
    with torch.device("meta"):
        model = VLA(source.config)
    with pytest.raises(
        ValueError,
        match=r"1 missing keys, first: \S+language_model\.embed_tokens\.weight "
        r"\[5112, 128\] \(or its tied paligemma_with_expert\.paligemma\.lm_head\.weight\)",
    ):
        load_reference_weights(model, tmp_path, dtype=torch.float32, device="cpu")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no safetensors checkpoint"):
        load_pytorch_checkpoint(tmp_path, pi05=True)


def test_bfloat16_checkpoints_load_as_float32(tmp_path):
    source = VLA(preset("pi0_tiny"))
    state = {reference_key(k): v.to(torch.bfloat16) for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    with torch.device("meta"):
        model = VLA(source.config)
    load_reference_weights(model, tmp_path, dtype=torch.float32, device="cpu")
    assert all(p.dtype == torch.float32 for p in model.parameters())
