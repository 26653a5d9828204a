"""Generate JAX reference artefacts from openpi's own (unmodified) Pi0 / Pi05 model code.

Run (one model at a time is fine too):

    OMP_NUM_THREADS=1 XLA_FLAGS="--xla_force_host_platform_device_count=1" OPENPI_REF=REF \
    PYTHONPATH=docs/interop/jax-check:OPENPI_CHECKOUT/src \
    python docs/interop/jax-check/make_reference.py --models pi0 pi05

Outputs per model NAME under REF/NAME/ (see README.md).
"""

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import sys
import time
import types

import openpi_ref_stubs  # next to this file; must come before any openpi import

openpi_ref_stubs.install()

import flax.nnx as nnx  # noqa: E402
from flax import traverse_util  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from openpi.models import model as _model  # noqa: E402
from openpi.models import pi0_config  # noqa: E402
import openpi.shared.nnx_utils as nnx_utils  # noqa: E402
import openpi.shared.normalize as _normalize  # noqa: E402
import openpi.training.checkpoints as _checkpoints  # noqa: E402
import openpi.training.utils as training_utils  # noqa: E402

ROOT = pathlib.Path(os.environ.get("OPENPI_REF", "openpi_ref"))  # where the artefacts go
STEP = 1000
BATCH = 2
NUM_STEPS = 10
PARAM_SEEDS = {"pi0": 1, "pi05": 2}

# Only changes anything on GPU/TPU (CPU float32 matmuls are always full precision); set so that a re-run on an
# accelerator still computes in true float32.
jax.config.update("jax_default_matmul_precision", "highest")

log = logging.getLogger("make_reference")


def make_config(name: str) -> pi0_config.Pi0Config:
    return pi0_config.Pi0Config(
        pi05=(name == "pi05"),
        paligemma_variant="dummy",
        action_expert_variant="dummy",
        action_dim=32,
        action_horizon=10,
        # max_token_len left at openpi's default (48 for pi0, 200 for pi05)
        # Pi0Config.dtype defaults to "bfloat16" (compute dtype only; params are created float32 either way).
        dtype="float32",
    )


# ----------------------------------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------------------------------
def _std_for(path: tuple[str, ...], shape: tuple[int, ...]) -> float:
    """std 0.1 for vector-like leaves (norm scales, biases, anything 1-d), std 0.02 for matrices / higher-rank kernels.

    Scanned layer stacks (PaliGemma/llm/layers/..., PaliGemma/img/Transformer/encoderblock/...) carry a leading layer
    axis, so e.g. a per-layer LayerNorm scale is (27, 1152); it is still treated as a "1-d" leaf by its name.
    """
    if len(shape) <= 1 or path[-1] in ("scale", "bias"):
        return 0.1
    return 0.02


def _mean_std_sharp_attn(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[float, float]:
    """Supplementary 'sharp_attn' variant (NOT the spec in the brief): identical to the spec rule except
    - SigLIP LayerNorm scales are 1 + N(0, 0.1) (instead of N(0, 0.1)), and
    - attention query/key projections get a larger std (SigLIP query/key kernels 0.04; Gemma q_einsum*, kv_einsum*
      0.18), so attention logits are O(1) and the attention pattern (q/k layout, RoPE, masks) is visible in the output.
    """
    name = "/".join(path)
    if path[-1] == "scale" and path[1] == "img":
        return 1.0, 0.1
    if path[1] == "img" and path[-2] in ("query", "key") and path[-1] == "kernel":
        return 0.0, 0.04
    if path[1] == "llm" and (path[-2].startswith("q_einsum") or path[-2].startswith("kv_einsum")):
        return 0.0, 0.18
    del name
    return 0.0, _std_for(path, shape)


VARIANT = "spec"


def randomize_params(pure: dict, seed: int) -> dict:
    """Replace every leaf by N(0, std) draws from np.random.default_rng(seed).

    Leaves are visited in sorted order of their flattened key-path tuple; each leaf gets
    (rng.standard_normal(shape) * std).astype(leaf.dtype)   [float64 draws, so no exact zeros after the cast].
    """
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(pure)
    out = {}
    for path in sorted(flat):
        leaf = flat[path]
        shape = tuple(leaf.shape)
        mean, std = (0.0, _std_for(path, shape)) if VARIANT == "spec" else _mean_std_sharp_attn(path, shape)
        out[path] = (rng.standard_normal(shape) * std + mean).astype(leaf.dtype)
    return traverse_util.unflatten_dict(out)


def check_params_distinct(pure: dict) -> None:
    flat = traverse_util.flatten_dict(pure)
    firsts = {}
    for path, v in flat.items():
        a = np.asarray(v)
        assert np.count_nonzero(a == 0) == 0, f"exact zeros in {path}"
        key = tuple(np.asarray(a.reshape(-1)[:4], np.float64).tolist())
        assert key not in firsts, f"{path} looks identical to {firsts[key]}"
        firsts[key] = path
        assert float(np.std(a)) > 0, f"constant leaf {path}"


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------------
class _FakeDataLoader:
    """Only provides what `openpi.training.checkpoints.save_state` uses (data_config().norm_stats / asset_id)."""

    def __init__(self, action_dim: int):
        ones = np.ones(action_dim, np.float32)
        ns = _normalize.NormStats(mean=0 * ones, std=ones, q01=-ones, q99=ones)
        self._cfg = types.SimpleNamespace(norm_stats={"state": ns, "actions": ns}, asset_id="openpi_ref_dummy")

    def data_config(self):
        return self._cfg


def save_train_run(model: nnx.Module, config, out_dir: pathlib.Path) -> pathlib.Path:
    """Save exactly through openpi.training.checkpoints (initialize_checkpoint_dir + save_state)."""
    mngr, _ = _checkpoints.initialize_checkpoint_dir(out_dir, keep_period=None, overwrite=True, resume=False)
    params = nnx.state(model)
    # Real training uses an AdamW optimizer; its state lives only in the `train_state` item, which is irrelevant for
    # the converter, so a stateless optimizer keeps that item tiny. ema_decay=None -> `params` item = state.params
    # (with EMA, openpi would put ema_params there instead; same structure).
    tx = optax.identity()
    state = training_utils.TrainState(
        step=STEP,
        params=params,
        model_def=nnx.graphdef(model),
        opt_state=tx.init(params),
        tx=tx,
        ema_decay=None,
        ema_params=None,
    )
    _checkpoints.save_state(mngr, state, _FakeDataLoader(config.action_dim), STEP)
    mngr.wait_until_finished()
    mngr.close()
    return out_dir / str(STEP) / "params"


def save_released(pure: dict, path: pathlib.Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(path, {"params": pure})


def _flat_np(tree) -> dict:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


RESTORE_NOTES: list[str] = []


@contextlib.contextmanager
def orbax_metadata_compat():
    """openpi's restore_params does `ckptr.metadata(path)["params"]` (written against orbax-checkpoint 0.11.x, where
    the PyTree metadata was returned directly). With orbax-checkpoint 0.12.x, `Checkpointer.metadata` returns a
    `StepMetadata` object, which is not subscriptable -> TypeError. This shim (orbax side only; openpi's function body
    runs unchanged) makes `metadata()` return `StepMetadata.item_metadata` (the tree) again.
    """
    orig = ocp.Checkpointer.metadata

    def metadata(self, directory):
        md = orig(self, directory)
        return getattr(md, "item_metadata", md)

    ocp.Checkpointer.metadata = metadata
    try:
        yield
    finally:
        ocp.Checkpointer.metadata = orig


def openpi_restore_params(path, **kwargs):
    try:
        return _model.restore_params(path, **kwargs)
    except TypeError as e:
        msg = f"openpi restore_params({path}) without shim: TypeError: {e}; retried with orbax_metadata_compat shim"
        log.warning(msg)
        if msg not in RESTORE_NOTES:
            RESTORE_NOTES.append(msg)
        with orbax_metadata_compat():
            return _model.restore_params(path, **kwargs)


def check_restore(path: pathlib.Path, expected_pure: dict, *, cast=None) -> dict:
    restored = openpi_restore_params(path, restore_type=np.ndarray)
    exp = _flat_np(expected_pure)
    got = traverse_util.flatten_dict(restored)
    assert set(exp) == set(got), f"key mismatch: {set(exp) ^ set(got)}"
    for k in exp:
        e = exp[k] if cast is None else np.asarray(jnp.asarray(exp[k]).astype(cast))
        g = got[k]
        assert isinstance(g, np.ndarray), (k, type(g))
        assert g.shape == e.shape and g.dtype == e.dtype, (k, g.shape, e.shape, g.dtype, e.dtype)
        assert np.array_equal(g.view(np.uint8), e.view(np.uint8)), f"value mismatch at {k}"
    log.info("restore_params OK: %s (%d leaves)", path, len(exp))
    return restored


def write_tree(name: str, paths: dict[str, pathlib.Path]) -> None:
    lines = []
    for label, p in paths.items():
        with ocp.PyTreeCheckpointer() as ckptr:
            md = ckptr.metadata(p)
        tree = md.item_metadata.tree if hasattr(md, "item_metadata") else md
        flat = traverse_util.flatten_dict(dict(tree))
        lines.append(f"# {label}: {p}")
        lines.append(f"# {len(flat)} leaves; key path as stored (joined with '/'), shape, dtype")
        for k in sorted(flat):
            m = flat[k]
            lines.append(f"{'/'.join(map(str, k))}\t{tuple(m.shape)}\t{np.dtype(m.dtype).name}")
        lines.append("")
    (ROOT / name / "tree.txt").write_text("\n".join(lines))


# ----------------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------------
def make_inputs(config) -> dict[str, np.ndarray]:
    L = config.max_token_len
    arrs = {}
    rng = np.random.default_rng(3)
    for key in _model.IMAGE_KEYS:  # base_0_rgb, left_wrist_0_rgb, right_wrist_0_rgb, drawn in that order
        arrs[f"image_{key}"] = rng.uniform(-1.0, 1.0, size=(BATCH, 224, 224, 3)).astype(np.float32)
    for key in _model.IMAGE_KEYS:
        arrs[f"image_mask_{key}"] = np.ones((BATCH,), dtype=bool)
    arrs["image_mask_right_wrist_0_rgb"][1] = False
    arrs["state"] = np.random.default_rng(4).standard_normal((BATCH, config.action_dim)).astype(np.float32)
    tok = np.random.default_rng(5).integers(2, 1000, size=(BATCH, L)).astype(np.int32)
    mask = np.zeros((BATCH, L), dtype=bool)
    mask[0, :7] = True
    mask[1, :12] = True
    tok = np.where(mask, tok, 0).astype(np.int32)
    arrs["tokenized_prompt"] = tok
    arrs["tokenized_prompt_mask"] = mask
    arrs["noise"] = (
        np.random.default_rng(6).standard_normal((BATCH, config.action_horizon, config.action_dim)).astype(np.float32)
    )
    arrs["loss_actions"] = (
        np.random.default_rng(8).standard_normal((BATCH, config.action_horizon, config.action_dim)).astype(np.float32)
    )
    return arrs


def make_observation(arrs) -> _model.Observation:
    return _model.Observation(
        images={k: jnp.asarray(arrs[f"image_{k}"]) for k in _model.IMAGE_KEYS},
        image_masks={k: jnp.asarray(arrs[f"image_mask_{k}"]) for k in _model.IMAGE_KEYS},
        state=jnp.asarray(arrs["state"]),
        tokenized_prompt=jnp.asarray(arrs["tokenized_prompt"]),
        tokenized_prompt_mask=jnp.asarray(arrs["tokenized_prompt_mask"]),
    )


def run_sample(model, obs, noise) -> np.ndarray:
    # openpi's Policy does exactly this: model.eval(); nnx_utils.module_jit(model.sample_actions)
    model.eval()
    sample = nnx_utils.module_jit(model.sample_actions)
    out = sample(jax.random.key(0), obs, num_steps=NUM_STEPS, noise=jnp.asarray(noise))
    return np.asarray(jax.block_until_ready(out))


def run_loss(model, obs, actions, rng):
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, rng, obs, actions):
        m = nnx.merge(graphdef, state)
        return m.compute_loss(rng, obs, actions, train=False)

    return np.asarray(jax.block_until_ready(f(state, rng, obs, jnp.asarray(actions))))


def loss_noise_time(rng, actions_shape):
    """Same draws as Pi0.compute_loss (src/openpi/models/pi0.py)."""
    _preprocess_rng, noise_rng, time_rng = jax.random.split(rng, 3)
    batch_shape = actions_shape[:-2]
    noise = jax.random.normal(noise_rng, actions_shape)
    t = jax.random.beta(time_rng, 1.5, 1, batch_shape) * 0.999 + 0.001
    return np.asarray(noise), np.asarray(t)


def run_debug(model, obs, x_t, t: float) -> dict[str, np.ndarray]:
    """Intermediate tensors (computed with openpi's own methods) to localise converter mismatches.

    prefix_*: Pi0.embed_prefix on the preprocessed observation (image tokens of the 3 cameras in IMAGE_KEYS order,
    256 each, then the language embeddings). v_t: the velocity of the first denoising step (x_t=noise, time=1.0),
    computed exactly as the body of Pi0.sample_actions' `step` does, so actions_after_step1 = noise + (-1/10) * v_t.
    """
    from openpi.models.pi0 import make_attn_mask  # noqa: PLC0415

    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, obs, x_t):
        self = nnx.merge(graphdef, state)
        obs = _model.preprocess_observation(None, obs, train=False)
        prefix_tokens, prefix_mask, prefix_ar_mask = self.embed_prefix(obs)
        prefix_attn_mask = make_attn_mask(prefix_mask, prefix_ar_mask)
        positions = jnp.cumsum(prefix_mask, axis=1) - 1
        (prefix_out, _), kv_cache = self.PaliGemma.llm([prefix_tokens, None], mask=prefix_attn_mask, positions=positions)
        bsz = x_t.shape[0]
        suffix_tokens, suffix_mask, suffix_ar_mask, adarms_cond = self.embed_suffix(
            obs, x_t, jnp.broadcast_to(jnp.float32(t), bsz)
        )
        suffix_attn_mask = make_attn_mask(suffix_mask, suffix_ar_mask)
        pam = jnp.broadcast_to(prefix_mask[:, None, :], (bsz, suffix_tokens.shape[1], prefix_mask.shape[1]))
        full_attn_mask = jnp.concatenate([pam, suffix_attn_mask], axis=-1)
        spos = jnp.sum(prefix_mask, axis=-1)[:, None] + jnp.cumsum(suffix_mask, axis=-1) - 1
        (_, suffix_out), _ = self.PaliGemma.llm(
            [None, suffix_tokens], mask=full_attn_mask, positions=spos, kv_cache=kv_cache, adarms_cond=[None, adarms_cond]
        )
        v_t = self.action_out_proj(suffix_out[:, -self.action_horizon :])
        d = {
            "prefix_tokens": prefix_tokens,
            "prefix_mask": prefix_mask,
            "prefix_ar_mask": prefix_ar_mask,
            "prefix_out": prefix_out,
            "suffix_tokens": suffix_tokens,
            "suffix_out": suffix_out,
            "v_t": v_t,
        }
        if adarms_cond is not None:
            d["adarms_cond"] = adarms_cond
        return d

    d = jax.block_until_ready(f(state, obs, jnp.asarray(x_t)))
    return {k: np.asarray(v) for k, v in d.items()}


# ----------------------------------------------------------------------------------------------------------------------
def process(name: str, *, skip_extra: bool) -> None:
    t0 = time.time()
    RESTORE_NOTES.clear()
    out = ROOT / name
    out.mkdir(parents=True, exist_ok=True)
    config = make_config(name)
    log.info("[%s] config: %s", name, config)

    # 1. create with openpi, then overwrite every parameter.
    model = config.create(jax.random.key(0))
    graphdef, state = nnx.split(model)
    pure0 = state.to_pure_dict()
    rand = randomize_params(pure0, PARAM_SEEDS[name])
    del pure0
    check_params_distinct(rand)
    state.replace_by_pure_dict(jax.tree.map(jnp.asarray, rand))
    nnx.update(model, state)
    pure = nnx.state(model).to_pure_dict()
    for k, v in _flat_np(pure).items():  # the model really holds the randomised values
        assert np.array_equal(v, traverse_util.flatten_dict(rand)[k]), k
    del rand
    log.info("[%s] model created + randomised (%.0fs)", name, time.time() - t0)

    # 2. checkpoints
    released = out / "released" / "params"
    save_released(pure, released)
    check_restore(released, pure)
    tree_paths = {"released": released}
    if VARIANT == "spec":
        train_params = save_train_run(model, config, out / "train_run")
        check_restore(train_params, pure)
        tree_paths = {"train_run (openpi training save_state)": train_params, **tree_paths}
    # 3. bf16 copy (pi05 only)
    if name == "pi05" and VARIANT == "spec":
        released_bf16 = out / "released_bf16" / "params"
        pure_bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, pure)
        save_released(pure_bf16, released_bf16)
        del pure_bf16
        check_restore(released_bf16, pure, cast=jnp.bfloat16)
        tree_paths["released_bf16"] = released_bf16
    write_tree(name, tree_paths)
    log.info("[%s] checkpoints written (%.0fs)", name, time.time() - t0)

    # 4. forward passes (float32)
    arrs = make_inputs(config)
    obs = make_observation(arrs)
    actions = run_sample(model, obs, arrs["noise"])
    assert actions.shape == (BATCH, config.action_horizon, config.action_dim) and actions.dtype == np.float32
    assert np.all(np.isfinite(actions))
    log.info("[%s] sample_actions done (%.0fs) |a|=%.4f", name, time.time() - t0, float(np.abs(actions).mean()))

    loss_rng = jax.random.key(7)
    loss = run_loss(model, obs, arrs["loss_actions"], loss_rng)
    ln, lt = loss_noise_time(loss_rng, arrs["loss_actions"].shape)
    log.info("[%s] compute_loss done (%.0fs) loss=%s", name, time.time() - t0, loss.mean())

    io = dict(arrs)
    io["actions"] = actions
    io["num_steps"] = np.asarray(NUM_STEPS, np.int32)
    io["loss"] = loss
    io["loss_noise"] = ln.astype(np.float32)
    io["loss_time"] = lt.astype(np.float32)
    io["loss_rng_key_data"] = np.asarray(jax.random.key_data(loss_rng))
    np.savez(out / "io.npz", **io)

    if not skip_extra:
        dbg = run_debug(model, obs, arrs["noise"], 1.0)
        # sanity: first Euler step from the debug velocity; full loop is checked against actions by openpi itself.
        dbg["x_after_step1"] = arrs["noise"] + (-1.0 / NUM_STEPS) * dbg["v_t"]
        np.savez(out / "debug.npz", **dbg)
        log.info("[%s] debug tensors done (%.0fs)", name, time.time() - t0)

        # Reload the released checkpoint through openpi's own loading path and make sure it reproduces `actions`.
        del model, graphdef, state
        params = openpi_restore_params(released, restore_type=np.ndarray)
        model2 = config.load(params)
        actions2 = run_sample(model2, obs, arrs["noise"])
        diff = float(np.max(np.abs(actions2 - actions)))
        log.info("[%s] reload(released)+sample max|diff| = %g", name, diff)
        assert diff <= 1e-5, diff
        del model2, params
        if name == "pi05" and VARIANT == "spec":
            # Reference for the bf16 checkpoint: bf16 weights upcast to float32, float32 compute.
            params = openpi_restore_params(out / "released_bf16" / "params", restore_type=np.ndarray, dtype=np.float32)
            model3 = config.load(params)
            a3 = run_sample(model3, obs, arrs["noise"])
            np.savez(out / "io_bf16_weights.npz", actions=a3)
            log.info(
                "[%s] bf16-weights actions: max|diff| vs f32 weights = %g", name, float(np.max(np.abs(a3 - actions)))
            )
            del model3, params

    summary = {
        "config": {k: str(v) for k, v in dataclasses.asdict(config).items()},
        "max_token_len": config.max_token_len,
        "param_seed": PARAM_SEEDS[name],
        "param_variant": VARIANT,
        "actions_abs_mean": float(np.abs(actions).mean()),
        "loss_mean": float(loss.mean()),
        "seconds": time.time() - t0,
        "restore_notes": RESTORE_NOTES,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("[%s] done in %.0fs", name, time.time() - t0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["pi0", "pi05"], choices=["pi0", "pi05"])
    p.add_argument("--skip-extra", action="store_true", help="skip debug.npz / reload checks / bf16-weight actions")
    p.add_argument(
        "--variant",
        default="spec",
        choices=["spec", "sharp_attn"],
        help="spec: the requested parameter recipe, outputs in REF/NAME. sharp_attn: supplementary recipe "
        "(see _mean_std_sharp_attn), outputs in REF/sharp_attn/NAME (released/ only, no train_run/bf16)",
    )
    args = p.parse_args()
    global ROOT, VARIANT  # noqa: PLW0603
    VARIANT = args.variant
    if VARIANT != "spec":
        ROOT = ROOT / VARIANT
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stdout, force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)
    log.info("jax %s devices %s, OMP_NUM_THREADS=%s", jax.__version__, jax.devices(), os.environ.get("OMP_NUM_THREADS"))
    for name in args.models:
        process(name, skip_extra=args.skip_extra)


if __name__ == "__main__":
    main()
