"""The transport: how payload bytes cross the process group, and how many of them do.

A :class:`Transport` posts the byte exchanges of one collective call on a
``torch.distributed`` process group and counts what this rank sends and
receives (the numbers ``track_comm`` records). Only ``all_gather_into_tensor``
and ``all_to_all_single`` on uint8 buffers are used (plus ``all_reduce`` for the
uncompressed path), which gloo and NCCL both provide.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def all_gather_bytes(out: torch.Tensor, inp: torch.Tensor, group: ProcessGroup | None = None, async_op: bool = False):
    """``all_gather_into_tensor`` under whichever name this torch has."""
    return _all_gather_single(out, inp, group=group, async_op=async_op)


def group_device(group: ProcessGroup | None = None) -> torch.device:
    """Where a group's communication buffers must live (CUDA for NCCL, else CPU)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Transport:
    """Posts byte exchanges on ``group`` and counts what this rank sends and receives.

    The rank's own slot of an all-gather or all-to-all is a local copy and is
    not counted.
    """

    def __init__(self, group: ProcessGroup | None, world_size: int) -> None:
        self.group = group
        self.n = world_size
        self.sent = 0
        self.received = 0

    def all_gather(self, out: torch.Tensor, inp: torch.Tensor, async_op: bool = True):
        self.sent += (self.n - 1) * inp.numel()
        self.received += (self.n - 1) * inp.numel()
        return all_gather_bytes(out, inp, self.group, async_op)

    def all_to_all(self, out: torch.Tensor, inp: torch.Tensor, async_op: bool = True):
        slot = inp.numel() // self.n
        self.sent += (self.n - 1) * slot
        self.received += (self.n - 1) * slot
        return dist.all_to_all_single(out, inp, group=self.group, async_op=async_op)
