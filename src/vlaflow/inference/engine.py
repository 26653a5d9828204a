"""The sampling engine: `VLA.sample_actions` with everything that does not depend on the noisy
actions hoisted out of the denoising loop, compiled, and on CUDA replayed as CUDA graphs.

Three stages, each a function of the previous one's tensors:

* vision: SigLIP over every camera plus the prompt embedding;
* prefix: the VLM over the prefix into a KV cache sized for the suffix too, the suffix's mask
  (additive) and RoPE tables, and the time conditioning of every Euler step at once (pi0.5's
  time MLP and the modulation of every adaptive norm; pi0's time features). Time does not
  depend on the observation, so each step's condition is one row broadcast over the batch;
* denoise: the Euler steps, each one expert pass against the cache; nothing is read back to the
  host between steps.

`compile=True` wraps the vision and prefix stages and the Euler step in `torch.compile`.
`cuda_graph=True` (CUDA only) captures each stage as a CUDA graph over static input buffers,
the denoising stage being the whole loop; the graphs are captured again for a new batch size or
image layout (each input shape keeps its own graphs).

The numbers are the eager path's: the same modules run the same operations, except that
batching the time conditioning changes float rounding (float32 results agree to ~1e-6).

`DecodingEngine` does the same for text and FAST tokens (`VLA.generate`): its one-token step
(`VLA.decode_step`, one shape at every step) is compiled and, on CUDA, replayed as a CUDA graph;
the prompt's prefill and the choice of each token stay eager.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from vlaflow.models import VLA, Observation
from vlaflow.models.mixture import KVCache
from vlaflow.models.vla import Decoding, Generation, Prefix, StepCondition

STAGES = ("vision", "prefix", "denoise")


def has_native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matmuls run natively (faster than float32) on `device`: CUDA GPUs of
    compute capability 8.0 or more; x86 CPUs with AVX512-BF16 or AMX (read from /proc/cpuinfo)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_dtype(model: VLA, device: torch.device) -> torch.dtype:
    """The engine's default compute dtype: bfloat16 (the reference's inference precision, through
    `VLA.set_compute_dtype`) where the hardware runs it natively and, on a CPU, where the layers
    are wide enough to gain from it (the tiny presets' 64-128-wide layers ran no faster in bf16);
    float32 elsewhere."""
    wide = max(model.config.vision.width, model.config.vlm.width) >= 512
    native = has_native_bf16(device) and (device.type == "cuda" or wide)
    return torch.bfloat16 if native else torch.float32


def policy_options(device: torch.device) -> dict[str, bool]:
    """How `Policy` runs both engines: compiled and replayed as CUDA graphs on a GPU; uncompiled on
    a CPU, where compiling takes minutes and gains less than that over an evaluation. (The
    compiled decoding step decodes pi0fast_tiny 2.5x faster on a CPU, but compiles for ~30 s per
    batch size and token budget: ~165 chunks at batch 1 to break even, and a server batches
    whatever arrives, so batch sizes vary.)"""
    return {"compile": device.type == "cuda", "cuda_graph": device.type == "cuda"}


@dataclass
class _Graphs:
    """One input shape's static inputs, captured graphs and their output tensors."""

    obs: Observation
    noise: Tensor
    graphs: dict[str, torch.cuda.CUDAGraph] = field(default_factory=dict)
    outputs: dict[str, object] = field(default_factory=dict)


class SamplingEngine:
    """Actions (B, H, action_dim) float32 from observations and noise, as `VLA.sample_actions`.

    `dtype`: "auto" casts the model (in place, `VLA.set_compute_dtype`) to `auto_dtype`, a dtype
    casts it to that; None leaves it as it is. `compile` wraps the stages in `torch.compile`;
    `cuda_graph` replays them as CUDA graphs (CUDA only).
    """

    def __init__(
        self,
        model: VLA,
        *,
        num_steps: int = 10,
        compile: bool = True,
        cuda_graph: bool = False,
        dtype: torch.dtype | str | None = "auto",
    ):
        if not model.has_expert:
            raise ValueError("the sampling engine needs a model with an action expert (FAST models decode)")
        device = next(model.parameters()).device
        if cuda_graph and device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs the model on a CUDA device, not {device}")
        if dtype == "auto":
            dtype = auto_dtype(model, device)
        if dtype is not None and model.dtype != dtype:
            model.set_compute_dtype(dtype)
        self.model = model.eval()
        self.device, self.num_steps, self.cuda_graph = device, num_steps, cuda_graph
        self.times, self.dt = VLA.euler_times(num_steps, device)

        def wrap(fn: Callable) -> Callable:
            # dynamic=False: a new batch size compiles a new graph, as a CUDA graph needs anyway.
            return torch.compile(fn, dynamic=False) if compile else fn

        self._vision = wrap(self._vision_stage)
        self._prefix = wrap(self._prefix_stage)
        self._step = wrap(self._euler_step)
        self._captured: dict[tuple, _Graphs] = {}

    # ---- the three stages (plain functions of tensors, so they compile and capture) ----------

    def _vision_stage(self, obs: Observation) -> Tensor:
        return self.model.embed_prefix(obs)[0]

    def _prefix_stage(self, embedded: Tensor, obs: Observation) -> tuple[Prefix, list[StepCondition]]:
        m = self.model
        prefix = m.fill_cache(embedded, m.prefix_segments(obs), obs.state)
        every = m.condition(self.times)
        steps = [
            StepCondition(
                every.features[k : k + 1].clone(),
                None if every.modulations is None else every.modulations[:, k : k + 1].clone(),
            )
            for k in range(self.num_steps)
        ]
        return prefix, steps

    def _euler_step(self, prefix: Prefix, x: Tensor, condition: StepCondition) -> Tensor:
        return x + self.dt * self.model.conditioned_velocity(prefix, x, condition)

    def _denoise_stage(self, prefixed: tuple[Prefix, list[StepCondition]], noise: Tensor) -> Tensor:
        prefix, steps = prefixed
        x = noise.float()
        for condition in steps:
            x = self._step(prefix, x, condition)
        return x

    # ---- running ------------------------------------------------------------------------------

    def stages(self, obs: Observation, noise: Tensor) -> list[tuple[str, Callable[[], object]]]:
        """The three stages as thunks to call in order (the benchmark times each); the last
        returns the actions. Checks the inputs first."""
        self._check(obs, noise)
        if self.cuda_graph:
            return self._graph_stages(obs, noise)
        out: dict[str, object] = {}

        def vision() -> object:
            out["vision"] = self._vision(obs)
            return out["vision"]

        def prefix() -> object:
            out["prefix"] = self._prefix(out["vision"], obs)
            return out["prefix"]

        def denoise() -> Tensor:
            return self._denoise_stage(out["prefix"], noise)

        return list(zip(STAGES, (vision, prefix, denoise), strict=True))

    @torch.no_grad()
    def sample(self, obs: Observation, noise: Tensor) -> Tensor:
        """Actions (B, H, action_dim) float32 for a batch of observations and its noise."""
        actions = None
        for _, run in self.stages(obs, noise):
            actions = run()
        return actions.clone() if self.cuda_graph else actions

    __call__ = sample

    def _check(self, obs: Observation, noise: Tensor) -> None:
        obs.check(self.model.config)
        c = self.model.config
        shape = (obs.batch_size, c.action_horizon, c.action_dim)
        if tuple(noise.shape) != shape:
            raise ValueError(
                f"noise: expected {shape} (B, action_horizon, action_dim), got {tuple(noise.shape)}"
            )

    # ---- CUDA graphs --------------------------------------------------------------------------

    def _graph_stages(self, obs: Observation, noise: Tensor) -> list[tuple[str, Callable[[], object]]]:
        key = (
            obs.batch_size,
            tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(obs.images.items())),
            tuple(sorted(obs.image_masks)),
            obs.tokenized_prompt.dtype,
        )
        g = self._captured.get(key)
        if g is None:
            g = self._captured[key] = self._capture(obs, noise)
        else:
            _copy_observation(g.obs, obs)
            g.noise.copy_(noise)

        def replay(name: str) -> Callable[[], object]:
            def run() -> object:
                g.graphs[name].replay()
                return g.outputs[name]

            return run

        return [(name, replay(name)) for name in STAGES]

    def _capture(self, obs: Observation, noise: Tensor) -> _Graphs:
        """Static copies of the inputs, then each stage warmed up on a side stream (compiling it)
        and captured; each later stage reads the previous graph's output tensors."""
        g = _Graphs(obs=_clone_observation(obs), noise=noise.detach().clone())
        calls = {
            "vision": lambda: self._vision(g.obs),
            "prefix": lambda: self._prefix(g.outputs["vision"], g.obs),
            "denoise": lambda: self._denoise_stage(g.outputs["prefix"], g.noise),
        }
        with torch.no_grad():
            for name in STAGES:
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    for _ in range(2):
                        g.outputs[name] = calls[name]()
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    g.outputs[name] = calls[name]()
                g.graphs[name] = graph
        return g


@dataclass
class _StepGraph:
    """One decoding shape's captured step: static copies of a generation's state, of the token and
    slot fed, the logits the graph writes, and the generation whose state the copies hold."""

    decoding: Decoding
    token: Tensor
    slot: Tensor
    graph: torch.cuda.CUDAGraph | None = None
    logits: Tensor | None = None
    source: Decoding | None = None


class DecodingEngine:
    """Tokens as `VLA.generate` decodes them, through a compiled one-token step.

    `compile` wraps `VLA.decode_step` in `torch.compile` (one graph per batch size and cache
    capacity, i.e. prompt layout plus tokens to decode: every step of a generation shares it);
    `cuda_graph` (CUDA only) captures the step per such shape over static copies of the
    generation's state, which a new generation's first step copies in (its prefilled cache: one
    device copy per generation). The model keeps its dtype. Float32 logits agree with the eager
    step's to ~1e-6, so the chosen tokens are the same (tested, greedy and sampled).

    `VLA.generate`'s check after each token whether every sample has ended stays: on a CPU it
    reads host memory, and on a GPU it idles the device for about a launch per token, less than
    the whole steps that checking less often would run past the last end.
    """

    def __init__(self, model: VLA, *, compile: bool = True, cuda_graph: bool = False):
        device = next(model.parameters()).device
        if cuda_graph and device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs the model on a CUDA device, not {device}")
        self.model = model.eval()
        # dynamic=False: a new shape compiles a new graph, as a CUDA graph needs anyway.
        self._step = torch.compile(model.decode_step, dynamic=False) if compile else model.decode_step
        self.cuda_graph = cuda_graph
        self._captured: dict[tuple, _StepGraph] = {}

    @torch.no_grad()
    def step(self, decoding: Decoding, token: Tensor, slot: Tensor) -> Tensor:
        """One decoding step (a `vla.DecodeStep`): the next-token logits (B, V) float32."""
        if not self.cuda_graph:
            return self._step(decoding, token, slot)
        key = (tuple(decoding.prompt.shape), decoding.cache.keys[0].dtype)
        g = self._captured.get(key)
        if g is None:
            g = self._captured[key] = self._capture(decoding, token, slot)
        else:
            if g.source is not decoding:
                _copy_decoding(g.decoding, decoding)
            g.token.copy_(token)
            g.slot.copy_(slot)
            g.graph.replay()
        g.source = decoding
        return g.logits.clone()  # the next replay overwrites the graph's own

    def generate(self, obs: Observation, **options: object) -> Generation:
        """`VLA.generate(obs, **options)` through this engine's step."""
        return self.model.generate(obs, step=self.step, **options)

    __call__ = generate

    def _capture(self, decoding: Decoding, token: Tensor, slot: Tensor) -> _StepGraph:
        """Static copies of the inputs, the step warmed up on a side stream (compiling it; each
        run writes the same keys and values at the same slot) and captured; the captured step's
        logits are those of these inputs."""
        g = _StepGraph(_clone_decoding(decoding), token.clone(), slot.clone())
        side = torch.cuda.Stream(token.device)
        side.wait_stream(torch.cuda.current_stream(token.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                g.logits = self._step(g.decoding, g.token, g.slot)
        torch.cuda.current_stream(token.device).wait_stream(side)
        g.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g.graph):
            g.logits = self._step(g.decoding, g.token, g.slot)
        g.graph.replay()
        return g


def _clone_decoding(d: Decoding) -> Decoding:
    return Decoding(
        KVCache([k.clone() for k in d.cache.keys], [v.clone() for v in d.cache.values]),
        d.prompt.clone(),
        d.slots.clone(),
        d.position_offset.clone(),
    )


def _copy_decoding(static: Decoding, d: Decoding) -> None:
    mine, theirs = static.cache, d.cache
    for a, b in zip(mine.keys + mine.values, theirs.keys + theirs.values, strict=True):
        a.copy_(b)
    static.prompt.copy_(d.prompt)
    static.slots.copy_(d.slots)
    static.position_offset.copy_(d.position_offset)


def _clone_observation(obs: Observation) -> Observation:
    return Observation(
        images={k: v.detach().clone() for k, v in obs.images.items()},
        image_masks={k: v.detach().clone() for k, v in obs.image_masks.items()},
        state=obs.state.detach().clone(),
        tokenized_prompt=obs.tokenized_prompt.detach().clone(),
        tokenized_prompt_mask=obs.tokenized_prompt_mask.detach().clone(),
    )


def _copy_observation(static: Observation, obs: Observation) -> None:
    for k, v in obs.images.items():
        static.images[k].copy_(v)
    for k, v in obs.image_masks.items():
        static.image_masks[k].copy_(v)
    static.state.copy_(obs.state)
    static.tokenized_prompt.copy_(obs.tokenized_prompt)
    static.tokenized_prompt_mask.copy_(obs.tokenized_prompt_mask)
