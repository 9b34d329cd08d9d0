"""Start a group of spawned ranks with an initialised process group.

Used by the tensor-parallel tests and by ``mxcomm eval``; ``torchrun`` works
too (the library itself never assumes how ranks were started).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mxcomm.tp.style import TPPlanError


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
    # gloo must use the loopback device: that is the (possibly shaped) link under test.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if threads is not None:
        torch.set_num_threads(threads)
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
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
    traceback (``torch.multiprocessing.ProcessRaisedException``). The
    rendezvous is on 127.0.0.1: the launcher and the ranks share one network
    namespace (a shaped one, for the TTFT benchmark).
    ``threads`` sets ``torch.set_num_threads`` in every rank.
    """
    if world_size < 1:
        raise TPPlanError(f"world_size must be >= 1, got {world_size}")
    # The parent owns the rendezvous store on an OS-assigned port: no port race.
    store = dist.TCPStore(
        "127.0.0.1", 0, world_size + 1, is_master=True, wait_for_workers=False,
        timeout=timedelta(seconds=timeout_s),
    )
    mp.start_processes(
        _rank_entry,
        args=(fn, world_size, store.port, backend, threads, timeout_s, args),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )
