"""One process or many: torchrun's environment, the device, and the few collectives we need.

Under `torchrun --nproc_per_node N` every process sees RANK / WORLD_SIZE / LOCAL_RANK and joins
the process group (NCCL on GPUs, gloo on CPU). Run plainly, the same code is a world of one and
no collective is ever called. Only the main process (rank 0) writes checkpoints and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local_rank}"
    torch_device = torch.device(device)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch_device.type == "cuda" else "gloo",
                                device_id=torch_device if torch_device.type == "cuda" else None)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=torch_device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """True on every rank when any rank says True: all ranks stop (e.g. on SIGTERM) at one step."""
    if not ctx.distributed:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def mean_across_ranks(ctx: DistContext, metrics: dict[str, float]) -> dict[str, float]:
    """Average logged numbers over ranks so the main process logs the global batch's values."""
    if not ctx.distributed or not metrics:
        return metrics
    keys = sorted(metrics)
    tensor = torch.tensor([float(metrics[k]) for k in keys], device=ctx.device, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return {k: v / ctx.world_size for k, v in zip(keys, tensor.tolist())}


def per_rank_batch_size(ctx: DistContext, global_batch: int, field: str) -> int:
    if global_batch % ctx.world_size:
        from miipher2.train.config import ConfigError

        raise ConfigError(f"{field}: global batch {global_batch} is not divisible by {ctx.world_size} processes")
    return global_batch // ctx.world_size
