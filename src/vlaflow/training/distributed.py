"""One process or many (torchrun): process group, DDP or FSDP2 wrapping, full state dicts.

Launch with `torchrun --nproc_per_node N -m vlaflow.cli train ...` (add `--nnodes`, `--node_rank`,
`--rdzv_endpoint` for several machines); without torchrun the trainer runs in one process. NCCL
on GPUs, gloo on CPUs. FSDP2 (`fully_shard`) shards every joint transformer layer and every
vision block, then the rest of the model; DDP replicates the model. Checkpoints always hold full
(unsharded) state with parameter names, so a run can resume with another strategy or world size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from vlaflow.models import VLA

Strategy = Literal["ddp", "fsdp"]
STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class Runtime:
    rank: int
    world: int
    device: torch.device
    threads: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_runtime(device: str | None = None) -> Runtime:
    """Join the torchrun process group if there is one; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(kind, local_rank) if kind == "cuda" else torch.device(kind)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(
        rank=dist.get_rank() if world > 1 else 0, world=world, device=dev, threads=pin_compute_threads()
    )


def pin_compute_threads() -> int:
    """Set this process's intra-op thread count explicitly, to the count it already has.

    Until `torch.set_num_threads` is called, MKL runs with dynamic threading: it may use fewer
    threads than asked (e.g. one per physical core on a machine whose CPUs are hyper-threads), and
    a matrix product split over another number of threads sums in another order. The explicit call
    turns that off and fixes MKL's, OpenMP's and oneDNN's count. Without it, a training step's
    numbers depended on whether data loading had called `set_num_threads` in the main process
    (num_workers=0 does, per sample) or not (worker processes): weights drifted apart by an ulp.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    return threads


def shut_down(runtime: Runtime) -> None:
    if runtime.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def parallelize(model: VLA, runtime: Runtime, strategy: Strategy) -> nn.Module:
    """The module to call for training steps (the model itself in a single process)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"distributed strategy must be one of {STRATEGIES}, got {strategy!r}")
    if runtime.world == 1:
        return model
    if strategy == "ddp":
        # The flow loss leaves the VLM's last-layer MLP unused: DDP must not wait for its gradients.
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    from torch.distributed.fsdp import fully_shard

    for block in model.vision.blocks:
        fully_shard(block)
    for layer in model.transformer.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def all_reduce_sum(value: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    if runtime.world > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


def _options(runtime: Runtime, *, save: bool) -> StateDictOptions:
    if save:
        return StateDictOptions(full_state_dict=True, cpu_offload=True)
    # Not strict: parameters that never received a gradient (the VLM's last-layer MLP under the
    # flow loss) have no optimizer state to restore.
    return StateDictOptions(full_state_dict=runtime.world > 1, strict=False)


def full_model_state(model: nn.Module, runtime: Runtime) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, unsharded, on the CPU (a collective under FSDP)."""
    return get_model_state_dict(model, options=_options(runtime, save=True))


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], runtime: Runtime) -> None:
    set_model_state_dict(model, state, options=_options(runtime, save=False))


def full_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, runtime: Runtime
) -> dict[str, Any]:
    """Optimizer state keyed by parameter name, unsharded (a collective under FSDP)."""
    return get_optimizer_state_dict(model, optimizer, options=_options(runtime, save=True))


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], runtime: Runtime
) -> None:
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=_options(runtime, save=False))
