"""Read openpi's JAX checkpoints: the orbax `params/` directory of pi0, pi0.5 and pi0-FAST.

openpi saves its parameters as one orbax PyTree (`params/`, next to `assets/` in a released
checkpoint, or inside a training step directory next to `train_state/`). Its Flax modules store
each Gemma stack with a leading layer axis (`nn.scan`), attention as einsum kernels
(`q_einsum` (L, N, D, H), `kv_einsum` (L, 2, K, D, H), or `qkv_einsum` (L, 3, N, D, H) when every
head has its own keys, `attn_vec_einsum` (L, N, H, D)), the gated MLP as `gating_einsum`
(L, 2, D, M) and `linear` (L, M, D); the action expert's copies carry a `_1` suffix. SigLIP's
encoder blocks are likewise stacked (`encoderblock`, kernels (L, in, out), attention kernels
(L, D, heads, head_dim)). Training checkpoints end every path in `value` (an `nnx.State`);
released ones do not.

Everything needed to rebuild the model is read from the tree's names and shapes (`detect`); the
arrays are then renamed and reshaped into the reference's PyTorch layout (`reference_tensors`),
the same names openpi's PyTorch port saves, and loaded through the path that reads those files.
What the weights do not fix (chunk length, prompt length) comes from arguments.

Reading orbax needs the optional extra `pip install "vlaflow[openpi]"` (orbax-checkpoint).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlaflow.interop.openpi_robots import RobotSettings
from vlaflow.models import VLA, GemmaConfig, SiglipConfig, VLAConfig
from vlaflow.models.config import REFERENCE_IMAGE_KEYS

EXTRA_HINT = 'reading openpi JAX checkpoints needs orbax: pip install "vlaflow[openpi]"'
_ORBAX_MARKERS = ("_METADATA", "manifest.ocdbt", "checkpoint")  # a PyTree item (not a step's own metadata)

DEFAULT_FAST_ACTION_DIM = 32  # openpi's Pi0FASTConfig defaults
DEFAULT_FAST_PROMPT_TOKENS = 250
MAX_REFERENCE_FAST_TOKENS = 256  # openpi's pi0-FAST decodes at most this many tokens
_PG = "paligemma_with_expert.paligemma.model."
_VISION = _PG + "vision_tower.vision_model."
_STACK_PREFIX = {0: _PG + "language_model.", 1: "paligemma_with_expert.gemma_expert.model."}
_PI05_HEADS = ("action_in_proj", "action_out_proj", "time_mlp_in", "time_mlp_out")
_PI0_HEADS = ("state_proj", "action_in_proj", "action_out_proj", "action_time_mlp_in", "action_time_mlp_out")


# ---------------------------------------------------------------------------- finding and reading


def is_orbax_checkpoint(path: str | Path) -> bool:
    """True for an orbax `params/` directory or a directory (checkpoint or training step) holding one."""
    try:
        params_directory(path)
    except FileNotFoundError:
        return False
    return True


def params_directory(path: str | Path) -> Path:
    """The orbax parameter directory at `path`: `path` itself, or its `params/`."""
    path = Path(path)
    for candidate in (path / "params", path):
        if candidate.is_dir() and any((candidate / marker).exists() for marker in _ORBAX_MARKERS):
            return candidate
    raise FileNotFoundError(
        f"no orbax parameter directory at {path} (expected {path}/params/ holding orbax's _METADATA, "
        "as openpi's checkpoints and training step directories have)"
    )


def _orbax() -> Any:
    try:
        import orbax.checkpoint as ocp
    except ImportError as error:
        raise ImportError(EXTRA_HINT) from error
    return ocp


def read_params(path: str | Path) -> dict[str, np.ndarray]:
    """Every parameter of an openpi JAX checkpoint as numpy, keyed by its `/`-joined path below
    `params` (the `value` leaf of training checkpoints dropped), in the dtype it was saved in."""
    ocp = _orbax()
    directory = params_directory(path).resolve()
    with ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(directory)
        tree = getattr(metadata, "item_metadata", metadata)  # orbax's metadata API changed across versions
        tree = getattr(tree, "tree", tree)
        if "params" not in tree:
            raise ValueError(f"{directory}: the orbax tree has no 'params' item (found {sorted(tree)})")
        item = {"params": tree["params"]}
        restore_args = _tree_map(lambda _: ocp.ArrayRestoreArgs(restore_type=np.ndarray), item)
        restored = checkpointer.restore(
            directory, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args)
        )
    flat = _flatten(restored["params"])
    if flat and all(key.endswith("/value") for key in flat):
        flat = {key.removesuffix("/value"): value for key, value in flat.items()}
    return flat


def _tree_map(fn: Callable[[Any], Any], tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {key: _tree_map(fn, value) for key, value in tree.items()}
    return fn(tree)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = np.asarray(value)
    return flat


# ---------------------------------------------------------------------------- what the tree holds


@dataclasses.dataclass(frozen=True)
class Detected:
    """What an openpi parameter tree is: family, sizes and dtype, read from its names and shapes."""

    family: str  # "pi0", "pi05" or "pi0_fast"
    vision: SiglipConfig
    vlm: GemmaConfig
    expert: GemmaConfig | None
    vocab_size: int
    action_dim: int | None  # None for pi0-FAST (it acts through tokens)
    dtype: str
    lora_pairs: int = 0  # LoRA pairs folded into their base weights

    def summary(self) -> str:
        def gemma(c: GemmaConfig) -> str:
            return (
                f"width {c.width}, depth {c.depth}, mlp {c.mlp_dim}, {c.num_heads} heads x {c.head_dim} "
                f"({c.num_kv_heads} key/value)"
            )

        v = self.vision
        lines = [
            f"family: {self.family}",
            f"vision: SigLIP {v.image_size}px, patch {v.patch_size}, width {v.width}, depth {v.depth}, "
            f"mlp {v.mlp_dim}, {v.num_heads} heads",
            f"language model: {gemma(self.vlm)}, vocabulary {self.vocab_size}",
        ]
        if self.expert is not None:
            lines.append(f"action expert: {gemma(self.expert)}")
        if self.action_dim is not None:
            lines.append(f"action dim: {self.action_dim}")
        lines.append(f"stored dtype: {self.dtype}")
        if self.lora_pairs:
            lines.append(f"LoRA: {self.lora_pairs} pairs folded into their base weights")
        return "\n".join(lines)

    def config(
        self,
        *,
        action_horizon: int,
        max_token_len: int | None,
        discrete_state_input: bool | None = None,
        action_dim: int | None = None,
        fast_vocab_size: int | None = None,
        image_keys: tuple[str, ...] | None = None,
    ) -> VLAConfig:
        """The model config; chunk length, prompt length, the state in the prompt and, for pi0-FAST,
        the action width and the FAST vocabulary (its tokenizer's) are not in the weights. pi0-FAST
        keeps openpi's layout: FAST ids on PaliGemma's `<loc>` ids, the state in a lower-cased prompt."""
        if self.family == "pi0_fast":
            if not fast_vocab_size:
                raise ValueError(
                    "a pi0-FAST checkpoint acts through its FAST tokenizer: give it (--fast-tokenizer DIR, "
                    "e.g. a local copy of physical-intelligence/fast)"
                )
            return VLAConfig(
                vision=self.vision,
                vlm=self.vlm,
                expert=None,
                pi05=True,  # the state is written into the prompt, as in openpi's pi0-FAST
                vocab_size=self.vocab_size,
                fast_vocab_size=fast_vocab_size,
                fast_ids="reference",
                action_dim=action_dim or DEFAULT_FAST_ACTION_DIM,
                action_horizon=action_horizon,
                max_token_len=max_token_len if max_token_len is not None else DEFAULT_FAST_PROMPT_TOKENS,
                image_keys=image_keys or REFERENCE_IMAGE_KEYS,
            )
        pi05 = self.family == "pi05"
        return VLAConfig(
            vision=self.vision,
            vlm=self.vlm,
            expert=self.expert,
            pi05=pi05,
            vocab_size=self.vocab_size,
            action_dim=self.action_dim or 32,
            action_horizon=action_horizon,
            max_token_len=max_token_len if max_token_len is not None else (200 if pi05 else 48),
            discrete_state_input=discrete_state_input,
        )


def _need(params: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    if key not in params:
        raise ValueError(f"not an openpi pi0 / pi0.5 / pi0-FAST parameter tree: no {key!r}")
    return params[key]


def _gemma(params: Mapping[str, np.ndarray], suffix: str) -> GemmaConfig:
    attn = "PaliGemma/llm/layers/attn/"
    if f"{attn}qkv_einsum{suffix}/w" in params:
        depth, _, heads, width, head_dim = params[f"{attn}qkv_einsum{suffix}/w"].shape
        kv_heads = heads
    else:
        depth, heads, width, head_dim = _need(params, f"{attn}q_einsum{suffix}/w").shape
        kv_heads = _need(params, f"{attn}kv_einsum{suffix}/w").shape[2]
    mlp_dim = _need(params, f"PaliGemma/llm/layers/mlp{suffix}/gating_einsum").shape[-1]
    return GemmaConfig(
        width=width, depth=depth, mlp_dim=mlp_dim, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim
    )


def merge_lora(params: Mapping[str, np.ndarray], scale: float = 1.0) -> tuple[dict[str, np.ndarray], int]:
    """The tree with openpi's LoRA pairs folded into their base weights, and how many pairs there were.

    An einsum kernel `w` (..., P, Q) with `lora_a` (..., P, r) and `lora_b` (..., r, Q) computes with
    `w + scale * lora_a @ lora_b` (`scale` is openpi's alpha / rank: 1 in its `gemma_2b_lora` and
    `gemma_300m_lora`); the MLP's `gating_einsum` and `linear` add their `_lora_a @ _lora_b`
    unscaled, as openpi's `FeedForward` does."""
    merged, pairs = dict(params), 0
    for key in [k for k in params if k.endswith("lora_a")]:
        if key.endswith("/lora_a"):
            base, factor = key.removesuffix("lora_a") + "w", scale
        else:
            base, factor = key.removesuffix("_lora_a"), 1.0
        b_key = key.removesuffix("a") + "b"
        if base not in merged or b_key not in merged:
            raise ValueError(f"LoRA array {key} without its base weight {base} or its partner {b_key}")
        weight = merged[base]
        delta = np.matmul(merged.pop(key).astype(np.float32), merged.pop(b_key).astype(np.float32))
        merged[base] = (weight.astype(np.float32) + factor * delta).astype(weight.dtype)
        pairs += 1
    return merged, pairs


def detect(params: Mapping[str, np.ndarray]) -> Detected:
    """Family and sizes of an openpi parameter tree (as `read_params` returns it)."""
    lora = sorted(k for k in params if k.endswith(("lora_a", "lora_b")))
    if lora:
        raise ValueError(
            f"the tree holds {len(lora)} LoRA arrays (first: {lora[0]}): fold them into the base weights "
            "first (merge_lora)"
        )
    block = "PaliGemma/img/Transformer/encoderblock/"
    patch, _, _, vision_width = _need(params, "PaliGemma/img/embedding/kernel").shape
    patches = _need(params, "PaliGemma/img/pos_embedding").shape[1]
    depth, _, vision_mlp = _need(params, block + "MlpBlock_0/Dense_0/kernel").shape
    vision_heads = _need(params, block + "MultiHeadDotProductAttention_0/query/kernel").shape[2]
    vision = SiglipConfig(
        image_size=round(patches**0.5) * patch,
        patch_size=patch,
        width=vision_width,
        depth=depth,
        mlp_dim=vision_mlp,
        num_heads=vision_heads,
    )
    vocab_size = _need(params, "PaliGemma/llm/embedder/input_embedding").shape[0]
    has_expert = "PaliGemma/llm/layers/mlp_1/gating_einsum" in params
    if not has_expert:
        family = "pi0_fast"
    elif "time_mlp_in/kernel" in params:
        family = "pi05"
    elif "state_proj/kernel" in params:
        family = "pi0"
    else:
        raise ValueError(
            "an action expert without pi0's state_proj or pi0.5's time_mlp_in: not a known family"
        )
    dtypes = sorted({str(v.dtype) for v in params.values()})
    return Detected(
        family=family,
        vision=vision,
        vlm=_gemma(params, ""),
        expert=_gemma(params, "_1") if has_expert else None,
        vocab_size=vocab_size,
        action_dim=_need(params, "action_in_proj/kernel").shape[0] if has_expert else None,
        dtype="/".join(dtypes),
    )


# ---------------------------------------------------------------------------- the reference layout


def _vision_tensors(params: Mapping[str, np.ndarray], vision: SiglipConfig) -> dict[str, np.ndarray]:
    img, block = "PaliGemma/img/", "PaliGemma/img/Transformer/encoderblock/"
    out = {
        _VISION + "embeddings.patch_embedding.weight": params[img + "embedding/kernel"].transpose(3, 2, 0, 1),
        _VISION + "embeddings.patch_embedding.bias": params[img + "embedding/bias"],
        _VISION + "embeddings.position_embedding.weight": params[img + "pos_embedding"].reshape(
            -1, vision.width
        ),
        _VISION + "post_layernorm.weight": params[img + "Transformer/encoder_norm/scale"],
        _VISION + "post_layernorm.bias": params[img + "Transformer/encoder_norm/bias"],
        _PG + "multi_modal_projector.linear.weight": params[img + "head/kernel"].T,
        _PG + "multi_modal_projector.linear.bias": params[img + "head/bias"],
    }
    attention = block + "MultiHeadDotProductAttention_0/"
    for i in range(vision.depth):
        layer = f"{_VISION}encoder.layers.{i}."
        for n, ours in ((0, "layer_norm1"), (1, "layer_norm2")):
            out[f"{layer}{ours}.weight"] = params[f"{block}LayerNorm_{n}/scale"][i]
            out[f"{layer}{ours}.bias"] = params[f"{block}LayerNorm_{n}/bias"][i]
        for n, ours in ((0, "fc1"), (1, "fc2")):
            out[f"{layer}mlp.{ours}.weight"] = params[f"{block}MlpBlock_0/Dense_{n}/kernel"][i].T
            out[f"{layer}mlp.{ours}.bias"] = params[f"{block}MlpBlock_0/Dense_{n}/bias"][i]
        for jax_name, ours in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            kernel = params[f"{attention}{jax_name}/kernel"][i]  # (D, heads, head_dim)
            out[f"{layer}self_attn.{ours}.weight"] = kernel.reshape(vision.width, -1).T
            out[f"{layer}self_attn.{ours}.bias"] = params[f"{attention}{jax_name}/bias"][i].reshape(-1)
        out_kernel = params[f"{attention}out/kernel"][i]  # (heads, head_dim, D)
        out[f"{layer}self_attn.out_proj.weight"] = out_kernel.reshape(-1, vision.width).T
        out[f"{layer}self_attn.out_proj.bias"] = params[f"{attention}out/bias"][i]
    return out


def _heads_first(kernel: np.ndarray) -> np.ndarray:
    """An einsum kernel (heads, D, head_dim) as a PyTorch projection weight (heads * head_dim, D)."""
    heads, width, head_dim = kernel.shape
    return kernel.transpose(0, 2, 1).reshape(heads * head_dim, width)


def _gemma_tensors(
    params: Mapping[str, np.ndarray], config: GemmaConfig, expert: int, adaptive: bool
) -> dict[str, np.ndarray]:
    """One Gemma stack (0: the VLM's language model, 1: the action expert) in the reference layout."""
    suffix = f"_{expert}" if expert else ""
    layers, prefix = "PaliGemma/llm/layers/", _STACK_PREFIX[expert]
    out: dict[str, np.ndarray] = {}
    for i in range(config.depth):
        layer = f"{prefix}layers.{i}."
        if f"{layers}attn/qkv_einsum{suffix}/w" in params:
            q, k, v = (params[f"{layers}attn/qkv_einsum{suffix}/w"][i, n] for n in range(3))
        else:
            q = params[f"{layers}attn/q_einsum{suffix}/w"][i]
            k, v = (params[f"{layers}attn/kv_einsum{suffix}/w"][i, n] for n in range(2))
        out[layer + "self_attn.q_proj.weight"] = _heads_first(q)
        out[layer + "self_attn.k_proj.weight"] = _heads_first(k)
        out[layer + "self_attn.v_proj.weight"] = _heads_first(v)
        attn_out = params[f"{layers}attn/attn_vec_einsum{suffix}/w"][i]  # (heads, head_dim, D)
        out[layer + "self_attn.o_proj.weight"] = attn_out.reshape(-1, config.width).T
        gating = params[f"{layers}mlp{suffix}/gating_einsum"][i]  # (2, D, M)
        out[layer + "mlp.gate_proj.weight"] = gating[0].T
        out[layer + "mlp.up_proj.weight"] = gating[1].T
        out[layer + "mlp.down_proj.weight"] = params[f"{layers}mlp{suffix}/linear"][i].T
        for jax_norm, ours in (
            ("pre_attention_norm", "input_layernorm"),
            ("pre_ffw_norm", "post_attention_layernorm"),
        ):
            norm = f"{layers}{jax_norm}{suffix}/"
            if adaptive:  # pi0.5's expert: scale, shift and gate from the time embedding
                out[f"{layer}{ours}.dense.weight"] = params[norm + "Dense_0/kernel"][i].T
                out[f"{layer}{ours}.dense.bias"] = params[norm + "Dense_0/bias"][i]
            else:
                out[f"{layer}{ours}.weight"] = params[norm + "scale"][i]
    final = f"PaliGemma/llm/final_norm{suffix}/"
    if adaptive:
        out[prefix + "norm.dense.weight"] = params[final + "Dense_0/kernel"].T
        out[prefix + "norm.dense.bias"] = params[final + "Dense_0/bias"]
    else:
        out[prefix + "norm.weight"] = params[final + "scale"]
    if expert == 0:
        out[prefix + "embed_tokens.weight"] = params["PaliGemma/llm/embedder/input_embedding"]
    return out


def reference_tensors(params: Mapping[str, np.ndarray], detected: Detected) -> dict[str, np.ndarray]:
    """The tree renamed and reshaped into the reference's PyTorch names (openpi's `model.safetensors`).

    Every array of the tree is used; one left over means a tree this reader does not understand."""
    pi05 = detected.family == "pi05"
    out = {**_vision_tensors(params, detected.vision), **_gemma_tensors(params, detected.vlm, 0, False)}
    if detected.expert is not None:
        out.update(_gemma_tensors(params, detected.expert, 1, adaptive=pi05))
        for head in _PI05_HEADS if pi05 else _PI0_HEADS:
            out[f"{head}.weight"] = params[f"{head}/kernel"].T
            out[f"{head}.bias"] = params[f"{head}/bias"]
    used = sum(v.size for v in out.values())
    stored = sum(v.size for v in params.values())
    if used != stored:
        raise ValueError(
            f"{stored - used} stored numbers are not mapped: a tree layout this reader does not know"
        )
    return out


def to_torch(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A numpy array (bfloat16 from ml_dtypes included) as a contiguous torch tensor of `dtype`."""
    if array.dtype.name == "bfloat16":
        tensor = torch.from_numpy(np.ascontiguousarray(array).view(np.uint16)).view(torch.bfloat16)
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.to(dtype)


def load_jax_checkpoint(
    path: str | Path,
    *,
    action_horizon: int | None = None,
    max_token_len: int | None = None,
    settings: Callable[[str], RobotSettings] | None = None,
    action_dim: int | None = None,
    fast_vocab_size: int | None = None,
    lora_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[VLA, Detected]:
    """A `VLA` with the weights of an openpi JAX checkpoint, and what was detected in it.
    `settings(family)`: what the model was trained with (a robot's, `Robot.settings`); an explicit
    `action_horizon` / `action_dim` wins over it. `action_dim` and `fast_vocab_size` (its FAST
    tokenizer's) matter only for pi0-FAST. LoRA pairs (openpi's low-memory fine-tunes) are folded into
    their base weights with `lora_scale` (alpha / rank)."""
    from vlaflow.interop.openpi import load_reference_tensors

    params, lora_pairs = merge_lora(read_params(path), lora_scale)
    detected = dataclasses.replace(detect(params), lora_pairs=lora_pairs)
    tensors = reference_tensors(params, detected)
    del params
    trained = settings(detected.family) if settings is not None else RobotSettings.default(detected.family)
    config = detected.config(
        action_horizon=action_horizon or trained.action_horizon,
        max_token_len=max_token_len,
        discrete_state_input=trained.discrete_state_input,
        action_dim=action_dim or trained.fast_action_dim,
        fast_vocab_size=fast_vocab_size,
        image_keys=trained.image_keys,
    )
    with torch.device("meta"):
        model = VLA(config)
    load_reference_tensors(
        model,
        {name: (tuple(array.shape), lambda a=array: to_torch(a, dtype)) for name, array in tensors.items()},
        source=str(params_directory(path)),
        device=device,
    )
    return model.eval(), detected
