"""torchrun and Slurm-task support: rank from the environment, every collective guarded so one process needs no group."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def setup() -> torch.device:
    """Join the process group when launched by torchrun (or as Slurm tasks, see :mod:`benchmark.launch`); pick
    this process's device. A process that sees one GPU uses it whatever its local rank: clusters that bind
    one GPU per task show each task only its own (``cuda:LOCAL_RANK`` would not exist for rank >= 1)."""
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank() if torch.cuda.device_count() > 1 else 0)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size() > 1 and not initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def barrier() -> None:
    if initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` concatenated along dim 0 in rank order, without gradient (CIRKD's
    ``concat_all_gather``); the tensor itself in a single process."""
    if not initialized() or dist.get_world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def average_gradients(parameters) -> None:
    """Average the gradients of the student and the method's modules across processes, in one flat
    all-reduce (no DDP wrapper: hooks, attributes like ``aux_weight`` and state-dict keys stay the model's own)."""
    if not initialized():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    for grad, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        grad.copy_(synced)


def broadcast_object(value):
    if not initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
