"""What the data-parallel workers of one job agree on, through the torch.distributed group Ray Train sets up.

Every worker must call these at the same points of training (they are collectives); in a job of one worker they
return the value given without talking to anyone.
"""

from __future__ import annotations

from typing import Any


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def any_worker(flag: bool) -> bool:
    """True when any worker says True (a cancel one worker saw must stop all of them at the same step)."""
    if world_size() == 1:
        return flag
    return bool(_all_reduce([int(flag)], "max")[0])


def summed(values: list[int]) -> list[int]:
    """The sum over all workers of each value (tokens each worker trained on)."""
    if world_size() == 1:
        return list(values)
    return [int(v) for v in _all_reduce(values, "sum")]


def _all_reduce(values: list[int], op: str) -> list[Any]:
    import torch
    import torch.distributed as dist

    # NCCL reduces CUDA tensors only; gloo (CPU workers) reduces CPU tensors.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor.tolist()
