"""FSDP2 sharding, activation checkpointing and small collectives; no process management (torchrun does that).

`apply_fsdp` follows torchtitan: `fully_shard` every transformer block, then the root. `WanModel` calls each
block through `Block.forward`, so FSDP2's per-block all-gather / reduce-scatter hooks and the checkpoint
wrapper see every block call. Forward inputs are never cast by FSDP (timesteps and RoPE stay fp32); the model
casts latents and text to the parameter dtype itself.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def initialized(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_dist(device: Optional[torch.device] = None) -> DistInfo:
    """Read the process group set up by training.run (or none: one process)."""
    import os

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
    else:
        rank, world, local = 0, 1, 0
    if device is None:
        device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    return DistInfo(rank, world, local, device)


def device_mesh(info: DistInfo, replicate: int = 1):
    """1-D mesh (FSDP over all ranks) or 2-D (replicate, shard) mesh, which `fully_shard` treats as HSDP."""
    from torch.distributed.device_mesh import init_device_mesh
    if replicate > 1:
        return init_device_mesh(info.device.type, (replicate, info.world_size // replicate),
                                mesh_dim_names=("dp_replicate", "dp_shard"))
    return init_device_mesh(info.device.type, (info.world_size,), mesh_dim_names=("dp_shard",))


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Wrap every transformer block with PyTorch's non-reentrant checkpoint wrapper (before sharding)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    for i, blk in enumerate(model.blocks):
        model.blocks[i] = checkpoint_wrapper(blk, checkpoint_impl=CheckpointImpl.NO_REENTRANT)


def apply_fsdp(model: nn.Module, mesh, *, param_dtype: Optional[torch.dtype] = None,
               reduce_dtype: Optional[torch.dtype] = torch.float32, reshard_after_forward: bool = True) -> nn.Module:
    """fully_shard each block, then the root (which keeps the embeddings and the head)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype, cast_forward_inputs=False)
    for blk in model.blocks:
        fully_shard(blk, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    return model


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> float:
    """Global L2 norm over all ranks (DTensor-aware); clips in place when max_norm > 0. Returns the norm."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"), foreach=True)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def all_reduce_(t: Tensor, op: str = "sum") -> Tensor:
    """In-place all_reduce (sum / max / min) when a group exists; CPU tensors on NCCL go through the GPU."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        tmp = t.cuda()
        dist.all_reduce(tmp, op=ops[op])
        t.copy_(tmp.cpu())
    else:
        dist.all_reduce(t, op=ops[op])
    return t


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any rank (e.g. a SIGTERM seen by one worker)."""
    return bool(all_reduce_(torch.tensor([float(flag)]), "max").item())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def full_tensor(t: Tensor) -> Tensor:
    """The whole tensor of a (possibly sharded) DTensor; a collective on every rank."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20     # KiB -> GiB (Linux)
