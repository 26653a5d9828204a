"""Optional: how strongly do the reference `actions` react to typical converter mapping mistakes?

Loads <name>/released/params, applies one deliberate mistake at a time, re-runs openpi's sample_actions with the
io.npz inputs, prints max|Δactions|. Usage (same env as make_reference.py): python check_sensitivity.py [--root=REF/sharp_attn] pi0 pi05
"""

import sys

import make_reference as mr  # installs the stubs

import flax.nnx as nnx
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np


def mistakes(name):
    sg = ("PaliGemma", "img", "Transformer", "encoderblock")
    ll = ("PaliGemma", "llm", "layers")

    def swap_qk_siglip_layer13(f):
        q, k = sg + ("MultiHeadDotProductAttention_0", "query", "kernel"), sg + ("MultiHeadDotProductAttention_0", "key", "kernel")
        f[q], f[k] = f[q].copy(), f[k].copy()
        f[q][13], f[k][13] = f[k][13].copy(), f[q][13].copy()

    def swap_ln_scale_bias_siglip_final(f):
        s, b = ("PaliGemma", "img", "Transformer", "encoder_norm", "scale"), ("PaliGemma", "img", "Transformer", "encoder_norm", "bias")
        f[s], f[b] = f[b].copy(), f[s].copy()

    def swap_kv_gemma_layer2(f):
        p = ll + ("attn", "kv_einsum", "w")
        f[p] = f[p].copy(); f[p][2] = f[p][2][::-1].copy()

    def swap_kv_expert_layer2(f):
        p = ll + ("attn", "kv_einsum_1", "w")
        f[p] = f[p].copy(); f[p][2] = f[p][2][::-1].copy()

    def gating_swapped_expert_layer0(f):
        p = ll + ("mlp_1", "gating_einsum")
        f[p] = f[p].copy(); f[p][0] = f[p][0][::-1].copy()

    def negate(p, layer):
        def fn(f):
            f[p] = f[p].copy(); f[p][layer] = -f[p][layer]
        return fn

    out = {
        "siglip layer13 query<->key": swap_qk_siglip_layer13,
        "siglip layer26 query kernel negated": negate(sg + ("MultiHeadDotProductAttention_0", "query", "kernel"), 26),
        "paligemma layer1 q negated": negate(ll + ("attn", "q_einsum", "w"), 1),
        "expert layer1 q negated": negate(ll + ("attn", "q_einsum_1", "w"), 1),
        "siglip encoder_norm scale<->bias": swap_ln_scale_bias_siglip_final,
        "paligemma layer2 k<->v": swap_kv_gemma_layer2,
        "expert layer2 k<->v": swap_kv_expert_layer2,
        "expert layer0 gate<->up": gating_swapped_expert_layer0,
    }
    if name == "pi05":
        def adarms_chunks(f):
            for kk in (ll + ("pre_attention_norm_1", "Dense_0", "kernel"), ll + ("pre_attention_norm_1", "Dense_0", "bias")):
                a = f[kk].copy(); w = a.shape[-1] // 3
                a[..., :w], a[..., w:2 * w] = f[kk][..., w:2 * w], f[kk][..., :w]
                f[kk] = a
        out["expert adaRMS (pre_attn) scale<->shift chunks"] = adarms_chunks
    return out


def main(names):
    for name in names:
        config = mr.make_config(name)
        io = np.load(mr.ROOT / name / "io.npz")
        obs = mr.make_observation(io)
        params = mr.openpi_restore_params(mr.ROOT / name / "released" / "params", restore_type=np.ndarray)
        model = config.load(params)
        graphdef, state = nnx.split(model)
        f = jax.jit(lambda st, o, n: nnx.merge(graphdef, st).sample_actions(jax.random.key(0), o, num_steps=10, noise=n))
        base = np.asarray(f(state, obs, jnp.asarray(io["noise"])))
        print(name, "baseline max|Δ| vs io.npz actions:", float(np.abs(base - io["actions"]).max()), flush=True)
        flat0 = traverse_util.flatten_dict(params)
        for label, fn in mistakes(name).items():
            flat = dict(flat0)
            fn(flat)
            st = nnx.state(config.load(traverse_util.unflatten_dict(flat)))
            a = np.asarray(f(st, obs, jnp.asarray(io["noise"])))
            print(f"{name}: {label:45s} max|Δactions| = {float(np.abs(a - base).max()):.3e}", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0].startswith("--root="):
        import pathlib
        mr.ROOT = pathlib.Path(args.pop(0).split("=", 1)[1])
    main(args or ["pi0", "pi05"])
