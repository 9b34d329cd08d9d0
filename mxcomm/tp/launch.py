"""Start a group of spawned ranks with an initialised process group.

Used by the tensor-parallel tests and by ``mxcomm eval``; ``torchrun`` works
too (the library itself never assumes how ranks were started).
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mxcomm.tp.style import TPPlanError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (for the rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _rank_entry(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    port: int,
    backend: str,
    threads: int | None,
    timeout_s: float,
    args: tuple[Any, ...],
) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    # gloo must use the loopback device: that is the (possibly shaped) link under test.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if threads is not None:
        torch.set_num_threads(threads)
    dist.init_process_group(
        backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s)
    )
    try:
        fn(rank, world_size, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_ranks(
    fn: Callable[..., Any],
    world_size: int,
    args: tuple[Any, ...] = (),
    *,
    backend: str = "gloo",
    threads: int | None = None,
    timeout_s: float = 600.0,
) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes.

    ``fn`` must be importable (module level). A process group over loopback is
    initialised before ``fn`` runs and destroyed after it returns. An exception
    in any rank terminates the others and is re-raised here with the rank's
    traceback (``torch.multiprocessing.ProcessRaisedException``).
    ``threads`` sets ``torch.set_num_threads`` in every rank.
    """
    if world_size < 1:
        raise TPPlanError(f"world_size must be >= 1, got {world_size}")
    port = free_port()
    mp.start_processes(
        _rank_entry,
        args=(fn, world_size, port, backend, threads, timeout_s, args),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )
