"""Distribution, activation checkpointing and compilation, applied to a pure model from outside.

Under `torchrun` every process joins a process group (NCCL on GPUs, gloo on CPU) and the transformer is
sharded with FSDP2 (`fully_shard`): each block is its own unit, then the root, so only one block's full
weights are materialised at a time. Activation checkpointing and `torch.compile` wrap each block's
forward in place, which keeps parameter names (and so checkpoints and exports) unchanged.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if launched by torchrun; pick the device."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def shutdown_distributed(clean: bool = True) -> None:
    """Leave the process group before the interpreter exits.

    Left to interpreter teardown, gloo's worker threads are destroyed in no set order and a rank can
    abort ("terminate called without an active exception") after its work is done. After a failure
    there is no barrier: the other ranks may never reach it.
    """
    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each transformer block in the backward pass instead of storing its activations."""
    for block in model.transformer_blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def apply_compile(model: nn.Module) -> None:
    """torch.compile each block (same code for every block, so one compilation is reused)."""
    for block in model.transformer_blocks:
        block.compile()


def apply_fsdp(model: nn.Module, param_dtype: torch.dtype | None = None, mesh=None) -> nn.Module:
    """FSDP2: shard each block, then the root (embeddings, final layer). Parameters stay fp32 (the master
    weights the optimiser updates); `param_dtype` (bf16 on GPUs) is what each gathered block computes in;
    gradients are reduced in fp32. `mesh`: the device mesh (default: all ranks of the process group)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.transformer_blocks:
        fully_shard(block, mp_policy=policy, mesh=mesh)
    fully_shard(model, mp_policy=policy, mesh=mesh)
    return model


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly FSDP-sharded) parameter; a collective when sharded."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def node_mesh(info: DistInfo, scope: str = "node"):
    """The mesh to shard a frozen model over: all ranks ("all"), or each node's ranks, replicated across
    nodes ("node": HSDP, so its all-gathers stay on the node's NVLink)."""
    from torch.distributed.device_mesh import init_device_mesh

    local = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
    if scope == "all" or local >= info.world_size or info.world_size % local:
        return init_device_mesh(info.device.type, (info.world_size,))
    return init_device_mesh(info.device.type, (info.world_size // local, local), mesh_dim_names=("replicate", "shard"))


def shard_frozen(model: nn.Module, blocks: nn.ModuleList, mesh, param_dtype: torch.dtype | None = None) -> nn.Module:
    """FSDP2 for a frozen model (the text encoder): each block, then the root. It never trains, so nothing is
    reduced; each forward gathers one block at a time, and the shards move to the mesh's device."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model
