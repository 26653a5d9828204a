"""Load openpi / LeRobot PyTorch checkpoints of pi0 and pi0.5.

openpi's PyTorch port saves `model.safetensors` with Hugging Face PaliGemma / Gemma names under
`paligemma_with_expert.`; LeRobot saves the same names under an extra `model.` prefix. Our own
parameter names are shorter; `reference_key` maps each of ours to the reference's, so loading is
"for every parameter we have, read its reference name", and anything missing, extra or
mis-shaped is reported by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from vlaflow.models import VLA, reference_config

_PG = "paligemma_with_expert.paligemma.model."
_VISION = _PG + "vision_tower.vision_model."
_STACKS = {"0": _PG + "language_model.", "1": "paligemma_with_expert.gemma_expert.model."}
_RULES = [
    (r"^vision\.patch_embed\.", _VISION + "embeddings.patch_embedding."),
    (r"^vision\.pos_embed$", _VISION + "embeddings.position_embedding.weight"),
    (r"^vision\.blocks\.(\d+)\.norm([12])\.", _VISION + r"encoder.layers.\1.layer_norm\2."),
    (r"^vision\.blocks\.(\d+)\.attn\.", _VISION + r"encoder.layers.\1.self_attn."),
    (r"^vision\.blocks\.(\d+)\.mlp\.", _VISION + r"encoder.layers.\1.mlp."),
    (r"^vision\.norm\.", _VISION + "post_layernorm."),
    (r"^vision_proj\.", _PG + "multi_modal_projector.linear."),
]
_GEMMA_RULES = [
    (r"^layers\.(\d+)\.([qkvo])_proj\.", r"layers.\1.self_attn.\2_proj."),
    (r"^layers\.(\d+)\.attn_norm\.", r"layers.\1.input_layernorm."),
    (r"^layers\.(\d+)\.mlp_norm\.", r"layers.\1.post_attention_layernorm."),
    (r"\.scale$", ".weight"),
    (r"\.modulation\.", ".dense."),
]
# Present in reference checkpoints, not needed by us: the action expert's head and embedding are
# never used.
_IGNORED = re.compile(r"^paligemma_with_expert\.gemma_expert\.(lm_head|model\.embed_tokens)\.")
# PaliGemma ties its LM head to the token embedding. `safetensors.torch.save_model` (how openpi and
# LeRobot save) keeps only one name of a tied pair, the alphabetically first: `lm_head`. Either name
# (or both) therefore stands for our embedding.
_EMBEDDING = _STACKS["0"] + "embed_tokens.weight"
_TIED_HEAD = "paligemma_with_expert.paligemma.lm_head.weight"


def reference_key(key: str) -> str:
    """The reference's name for one of our parameter names."""
    if key.startswith("transformer.embed."):
        return _STACKS["0"] + key.replace("transformer.embed.", "embed_tokens.")
    stack = re.match(r"^transformer\.(?:layers\.(\d+)\.experts\.(\d)|norms\.(\d))\.(.*)$", key)
    if stack:
        layer, expert, norm_of, inner = stack.groups()
        inner = f"layers.{layer}.{inner}" if layer is not None else f"norm.{inner}"
        for pattern, replacement in _GEMMA_RULES:
            inner = re.sub(pattern, replacement, inner)
        return _STACKS[expert if layer is not None else norm_of] + inner
    for pattern, replacement in _RULES:
        if re.search(pattern, key):
            return re.sub(pattern, replacement, key)
    return key  # the flow heads keep their names


def checkpoint_file(path: str | Path) -> Path:
    """`path` itself, or the `model.safetensors` inside a directory."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no safetensors checkpoint at {path}")
    return path


def load_reference_weights(
    model: VLA, path: str | Path, *, dtype: torch.dtype, device: str | torch.device
) -> None:
    """Fill `model` (possibly on the meta device) from a reference-named safetensors file.

    Tensors are read one at a time and assigned, so peak memory is about one model.
    """
    file = checkpoint_file(path)
    with safe_open(str(file), framework="pt", device="cpu") as f:
        stored_names = {stored.removeprefix("model."): stored for stored in f.keys()}  # noqa: SIM118
        if _TIED_HEAD in stored_names:
            head = stored_names.pop(_TIED_HEAD)
            stored_names.setdefault(_EMBEDDING, head)  # the embedding itself wins when both are stored
        tensors = {
            name: (tuple(f.get_slice(stored).get_shape()), lambda s=stored: f.get_tensor(s).to(dtype))
            for name, stored in stored_names.items()
        }
        load_reference_tensors(model, tensors, source=str(file), device=device, stored=stored_names)


StoredTensor = tuple[tuple[int, ...], Callable[[], torch.Tensor]]
"""A tensor's shape, and how to read it (called once, only when the shape fits)."""


def load_reference_tensors(
    model: VLA,
    tensors: Mapping[str, StoredTensor],
    *,
    source: str,
    device: str | torch.device,
    stored: Mapping[str, str] | None = None,
) -> None:
    """Fill `model` from tensors under the reference's names; anything missing, extra or mis-shaped
    is reported by name (`stored`: the name each was stored under, when it differs)."""
    stored = stored or {}
    wanted = {reference_key(k): (k, tuple(v.shape)) for k, v in model.state_dict().items()}
    state, seen, unexpected, mismatched = {}, set(), [], []
    for name, (stored_shape, read) in tensors.items():
        if _IGNORED.match(name):
            continue
        label = stored.get(name, name)
        if name not in wanted:
            unexpected.append(f"{label} {list(stored_shape)}")
            continue
        seen.add(name)
        ours, shape = wanted[name]
        if tuple(stored_shape) != shape:
            mismatched.append(f"{label}: checkpoint {list(stored_shape)} vs model {list(shape)}")
            continue
        state[ours] = read().to(device=device)
    missing = [
        f"{ref} {list(shape)}" + (f" (or its tied {_TIED_HEAD})" if ref == _EMBEDDING else "")
        for ref, (_, shape) in wanted.items()
        if ref not in seen
    ]
    if missing or unexpected or mismatched:
        problems = []
        for label, items in (
            ("shape mismatches", mismatched),
            ("missing keys", missing),
            ("unexpected keys", unexpected),
        ):
            if items:
                problems.append(f"{len(items)} {label}, first: " + "; ".join(items[:5]))
        raise ValueError(f"checkpoint {source} does not fit the model config: " + " | ".join(problems))
    model.load_state_dict(state, strict=True, assign=True)


def load_pytorch_checkpoint(
    path: str | Path,
    *,
    pi05: bool,
    paligemma_variant: str = "gemma_2b",
    action_expert_variant: str = "gemma_300m",
    action_horizon: int = 50,
    action_dim: int = 32,
    max_token_len: int | None = None,
    discrete_state_input: bool | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> VLA:
    """A `VLA` with the weights of an openpi or LeRobot pi0 / pi0.5 `model.safetensors`.

    The arguments mirror openpi's `Pi0Config`; `max_token_len` defaults to 48 (pi0) / 200 (pi0.5).
    """
    config = reference_config(
        pi05=pi05,
        paligemma_variant=paligemma_variant,
        action_expert_variant=action_expert_variant,
        action_horizon=action_horizon,
        action_dim=action_dim,
        max_token_len=max_token_len,
    ).replace(discrete_state_input=discrete_state_input)
    with torch.device("meta"):
        model = VLA(config)
    load_reference_weights(model, path, dtype=dtype, device=device)
    return model.eval()
