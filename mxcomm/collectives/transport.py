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

from mxcomm.kernels.torch_ops import profile_range

#: The profiler range of posting an exchange and of waiting for it (torch.profiler traces).
TRANSFER_RANGE = "mxcomm::transfer"

_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def all_gather_bytes(out: torch.Tensor, inp: torch.Tensor, group: ProcessGroup | None = None, async_op: bool = False):
    """``all_gather_into_tensor`` under whichever name this torch has."""
    return _all_gather_single(out, inp, group=group, async_op=async_op)


def group_device(group: ProcessGroup | None = None) -> torch.device:
    """Where a group's communication buffers must live (CUDA for NCCL, else CPU)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _ProfiledWork:
    """A posted exchange whose ``wait()`` shows in profiler traces as :data:`TRANSFER_RANGE`."""

    def __init__(self, work) -> None:  # noqa: ANN001
        self.work = work

    def wait(self, *args, **kwargs):  # noqa: ANN002, ANN003
        with profile_range(TRANSFER_RANGE):
            return self.work.wait(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.work, name)


def _profiled(work):  # noqa: ANN001
    return work if work is None or not torch.autograd._profiler_enabled() else _ProfiledWork(work)


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
        with profile_range(TRANSFER_RANGE):
            return _profiled(all_gather_bytes(out, inp, self.group, async_op))

    def all_to_all(self, out: torch.Tensor, inp: torch.Tensor, async_op: bool = True):
        slot = inp.numel() // self.n
        self.sent += (self.n - 1) * slot
        self.received += (self.n - 1) * slot
        with profile_range(TRANSFER_RANGE):
            return _profiled(dist.all_to_all_single(out, inp, group=self.group, async_op=async_op))
