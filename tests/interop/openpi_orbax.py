"""Tiny openpi JAX checkpoints, written with orbax the way openpi writes them.

`jax_tree` lays a model's numbers out the way openpi's Flax modules hold them (names, nesting, the
leading layer axis of `nn.scan`, einsum kernels), written from the modules' own einsum equations:
`BTD,NDH->BTNH` (q), `BSD,2KDH->2BSKH` (k, v), `BTNH,NHD->BTD` (attention output), `x @ w[0]`,
`x @ w[1]`, `h @ linear` (gated MLP), SigLIP's `DenseGeneral` kernels (D, heads, head_dim) and
(heads, head_dim, D), and Flax `Dense` / `Conv` kernels (in, out) / (h, w, in, out).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from vlaflow import VLA
from vlaflow.interop.openpi_jax import Detected
from vlaflow.models import GemmaConfig, SiglipConfig
from vlaflow.pretrained import load_pretrained


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().numpy().copy()


def _dense(linear: torch.nn.Linear) -> dict[str, np.ndarray]:
    return {"kernel": _np(linear.weight).T, "bias": _np(linear.bias)}


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    return np.stack(arrays)


def _siglip(model: VLA) -> dict:
    v, c = model.vision, model.config.vision
    heads, head_dim = c.num_heads, c.width // c.num_heads
    blocks = list(v.blocks)

    def per_head_in(linear):  # y[b,t,n,h] = sum_d x[b,t,d] k[d,n,h] + bias[n,h]
        return _np(linear.weight).T.reshape(c.width, heads, head_dim), _np(linear.bias).reshape(
            heads, head_dim
        )

    attention = {}
    for jax_name, ours in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        kernels, biases = zip(*(per_head_in(getattr(b.attn, ours)) for b in blocks), strict=True)
        attention[jax_name] = {"kernel": _stack(list(kernels)), "bias": _stack(list(biases))}
    attention["out"] = {  # y[b,t,d] = sum_{n,h} x[b,t,n,h] k[n,h,d]
        "kernel": _stack([_np(b.attn.out_proj.weight).T.reshape(heads, head_dim, c.width) for b in blocks]),
        "bias": _stack([_np(b.attn.out_proj.bias) for b in blocks]),
    }
    block = {
        "LayerNorm_0": {
            "scale": _stack([_np(b.norm1.weight) for b in blocks]),
            "bias": _stack([_np(b.norm1.bias) for b in blocks]),
        },
        "LayerNorm_1": {
            "scale": _stack([_np(b.norm2.weight) for b in blocks]),
            "bias": _stack([_np(b.norm2.bias) for b in blocks]),
        },
        "MlpBlock_0": {
            f"Dense_{n}": {
                k: _stack([_dense(getattr(b.mlp, fc))[k] for b in blocks]) for k in ("kernel", "bias")
            }
            for n, fc in ((0, "fc1"), (1, "fc2"))
        },
        "MultiHeadDotProductAttention_0": attention,
    }
    return {
        "embedding": {
            "kernel": _np(v.patch_embed.weight).transpose(2, 3, 1, 0),
            "bias": _np(v.patch_embed.bias),
        },
        "pos_embedding": _np(v.pos_embed)[None],
        "Transformer": {
            "encoderblock": block,
            "encoder_norm": {"scale": _np(v.norm.weight), "bias": _np(v.norm.bias)},
        },
        "head": _dense(model.vision_proj),
    }


def _gemma_layers(model: VLA, expert: int, suffix: str) -> dict:
    config = (model.config.vlm, model.config.expert)[expert]
    n, k, h, d = config.num_heads, config.num_kv_heads, config.head_dim, config.width
    stack = [layer.experts[expert] for layer in model.transformer.layers]

    def heads(linear, count):  # (count*h, d) -> (count, d, h): w[n,d,h] = W[n*h + h', d]
        return _np(linear.weight).reshape(count, h, d).transpose(0, 2, 1)

    layers: dict = {
        "attn": {
            f"q_einsum{suffix}": {"w": _stack([heads(e.q_proj, n) for e in stack])},
            f"kv_einsum{suffix}": {
                "w": _stack([np.stack([heads(e.k_proj, k), heads(e.v_proj, k)]) for e in stack])
            },
            f"attn_vec_einsum{suffix}": {
                "w": _stack([_np(e.o_proj.weight).T.reshape(n, h, d) for e in stack])
            },
        },
        f"mlp{suffix}": {
            "gating_einsum": _stack(
                [np.stack([_np(e.mlp.gate_proj.weight).T, _np(e.mlp.up_proj.weight).T]) for e in stack]
            ),
            "linear": _stack([_np(e.mlp.down_proj.weight).T for e in stack]),
        },
    }
    for jax_norm, ours in (("pre_attention_norm", "attn_norm"), ("pre_ffw_norm", "mlp_norm")):
        norms = [getattr(e, ours) for e in stack]
        if getattr(norms[0], "modulation", None) is not None:
            layers[f"{jax_norm}{suffix}"] = {
                "Dense_0": {k: _stack([_dense(m.modulation)[k] for m in norms]) for k in ("kernel", "bias")}
            }
        else:
            layers[f"{jax_norm}{suffix}"] = {"scale": _stack([_np(m.scale) for m in norms])}
    return layers


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge(out[key], value) if key in out and isinstance(value, dict) else value
    return out


def jax_tree(model: VLA) -> dict:
    """The model's parameters as openpi's JAX `params` tree (a pure dict of numpy arrays)."""
    llm: dict = {"embedder": {"input_embedding": _np(model.transformer.embed.weight)}}
    llm["layers"] = _gemma_layers(model, 0, "")
    llm["final_norm"] = {"scale": _np(model.transformer.norms[0].scale)}
    tree: dict = {"PaliGemma": {"llm": llm, "img": _siglip(model)}}
    if model.config.expert is not None:
        llm["layers"] = _merge(llm["layers"], _gemma_layers(model, 1, "_1"))
        final = model.transformer.norms[1]
        llm["final_norm_1"] = (
            {"Dense_0": _dense(final.modulation)}
            if getattr(final, "modulation", None) is not None
            else {"scale": _np(final.scale)}
        )
        heads = ("action_in_proj", "action_out_proj")
        heads += (
            ("time_mlp_in", "time_mlp_out")
            if model.config.pi05
            else ("state_proj", "action_time_mlp_in", "action_time_mlp_out")
        )
        tree.update({name: _dense(getattr(model, name)) for name in heads})
    return tree


def _flat(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}/") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _worker(*args: str) -> None:
    """orbax runs in a child process (`orbax_worker.py`): JAX's threads must not start in pytest's."""
    worker = Path(__file__).with_name("orbax_worker.py")
    result = subprocess.run([sys.executable, str(worker), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"orbax worker {args[0]} failed:\n{result.stderr[-3000:]}")


def save_released(tree: dict, checkpoint: Path, dtype: str | None = None) -> Path:
    """`checkpoint/params/` as openpi's released checkpoints hold it (`{"params": pure dict}`),
    written with `ocp.PyTreeCheckpointer`; `dtype="bfloat16"` stores every array in bf16."""
    checkpoint.mkdir(parents=True, exist_ok=True)
    np.savez(checkpoint / "tree.npz", **_flat(tree))
    _worker("save-released", str(checkpoint / "tree.npz"), str(checkpoint), *([dtype] if dtype else []))
    (checkpoint / "tree.npz").unlink()
    return checkpoint


def save_training_step(tree: dict, run: Path, step: int) -> Path:
    """`run/<step>/params/` as openpi's training writes it (a CheckpointManager item `params` holding
    `{"params": nnx State}`, every leaf under `value`, next to `train_state`)."""
    run.mkdir(parents=True, exist_ok=True)
    np.savez(run / "tree.npz", **_flat(tree))
    _worker("save-step", str(run / "tree.npz"), str(run), str(step))
    (run / "tree.npz").unlink()
    return run / str(step)


def convert(checkpoint: Path, out: Path, **options) -> tuple[VLA, Detected, dict[str, np.ndarray]]:
    """`load_jax_checkpoint(checkpoint, **options)` in a child process (`robot=NAME` for a robot's
    settings): the model, what was detected, and `read_params`' arrays (as float32)."""
    _worker("convert", str(checkpoint), str(out), json.dumps(options))
    raw = json.loads((out / "detected.json").read_text())
    detected = Detected(
        **{
            **raw,
            "vision": SiglipConfig(**raw["vision"]),
            "vlm": GemmaConfig(**raw["vlm"]),
            "expert": GemmaConfig(**raw["expert"]) if raw["expert"] else None,
        }
    )
    return load_pretrained(out).model.eval(), detected, dict(np.load(out / "params.npz"))


def run_convert(checkpoint: Path, *options: str) -> subprocess.CompletedProcess:
    """`vlaflow convert CHECKPOINT OPTIONS...` as a user runs it (its own process)."""
    command = [sys.executable, "-m", "vlaflow.cli", "convert", str(checkpoint), *options]
    return subprocess.run(command, capture_output=True, text=True, check=False)
