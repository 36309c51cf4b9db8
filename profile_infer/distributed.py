"""Data parallelism over user shards (torchrun). One process is world size 1.

Rank r owns the θ rows with ``row % world == r``. Global batches are the same in every
world size; each rank runs its part, and gradients of the shared parts (codebooks,
surrogate) and loss denominators are summed across ranks, so N processes follow the
same trajectory as one (up to float reduction order).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(device: torch.device) -> None:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_sum(t: torch.Tensor) -> torch.Tensor:
    if world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_sum_grads(params: list[torch.Tensor]) -> None:
    """Sum gradients of shared parameters across ranks.

    A missing gradient counts as zero in every world size (also 1), so the optimizer
    sees the same tensors whether or not this rank's part of a batch touched them.
    """
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        if world()[1] > 1:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def broadcast(t: torch.Tensor) -> torch.Tensor:
    if world()[1] > 1:
        dist.broadcast(t, src=0)
    return t


def gather_rows(local: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Reassemble a row-sharded host tensor (rank r holds rows r, r+W, …) on every rank."""
    rank, size = world()
    if size == 1:
        return local
    per = -(-n_rows // size)
    padded = torch.zeros((per, *local.shape[1:]), dtype=local.dtype)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    full = torch.stack(parts, dim=1).reshape(per * size, *local.shape[1:])
    return full[:n_rows]


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()
