"""Multi-process data parallel (torchrun / accelerate launch): the few helpers the loop needs.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; we initialise the default
process group from them (gloo on CPU, nccl on GPU). Every rank trains; only
rank 0 reports telemetry and writes files.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def launched() -> bool:
    """True when started by torchrun / accelerate with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> None:
    if launched() and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def gather_lists(items: list[Any]) -> list[Any]:
    """Concatenate a list from every rank (on every rank)."""
    if not active():
        return list(items)
    parts: list[list[Any]] = [[] for _ in range(world_size())]
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def broadcast_flag(flag: bool) -> bool:
    """True on every rank if it is true on any (e.g. a stop request seen by one process)."""
    if not active():
        return flag
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
