"""Start a group of spawned ranks with an initialised process group, and collect what they return.

The one way mxcomm's tests, benchmarks and ``mxcomm eval`` start local ranks;
``torchrun`` works too (the library itself never assumes how ranks were started).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _result_path(directory: str, rank: int) -> Path:
    return Path(directory) / f"rank{rank}.pt"


def _rank_entry(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    port: int,
    backend: str,
    threads: int | None,
    timeout_s: float,
    check_collectives: bool,
    results_dir: str,
    args: tuple[Any, ...],
) -> None:
    # gloo must use the loopback device: that is the (possibly shaped) link under test.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # torchrun's environment, which libraries read (transformers' from_pretrained(tp_plan="auto") takes
    # its TP size from WORLD_SIZE and finds the process group already initialised)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if threads is not None:
        torch.set_num_threads(threads)
    if check_collectives:
        # torch.distributed read TORCH_DISTRIBUTED_DEBUG when it was imported (before this runs): set the level too
        os.environ["TORCH_DISTRIBUTED_DEBUG"] = "DETAIL"
        dist.set_debug_level(dist.DebugLevel.DETAIL)
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    try:
        result = fn(rank, world_size, *args)
        # written before the barrier: once every rank passed it, every result is on disk
        torch.save(result, _result_path(results_dir, rank))
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
    check_collectives: bool = False,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes.

    ``fn`` must be importable (module level). A process group over loopback is
    initialised before ``fn`` runs and destroyed after it returns; the ranks see
    torchrun's environment variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
    ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). The
    rendezvous is on 127.0.0.1: the launcher and the ranks share one network
    namespace (a shaped one, for the TTFT benchmark).

    Args:
        fn: The rank body; its return value must be ``torch.save``-able.
        world_size: Number of ranks.
        args: Extra positional arguments of ``fn``.
        backend: ``torch.distributed`` backend of the group.
        threads: ``torch.set_num_threads`` in every rank (None: torch's default).
        timeout_s: Timeout of the rendezvous and of every collective.
        check_collectives: Before every collective, compare its kind, shapes and dtypes across the
            ranks (torch's ``TORCH_DISTRIBUTED_DEBUG=DETAIL``): ranks that issue different collectives
            (a code path taken on some ranks only) fail at once with a message naming both, instead of
            blocking until ``timeout_s``. Costs one small all-gather per collective: a test aid.

    Returns:
        What ``fn`` returned on each rank, indexed by rank.

    Raises:
        TPPlanError: ``world_size < 1``.
        torch.multiprocessing.ProcessRaisedException: a rank raised (the others are
            terminated; the message carries the rank's traceback).
    """
    if world_size < 1:
        # imported here only: every spawned rank imports this module, and mxcomm.tp (DTensor) costs ~1 s
        from mxcomm.tp.style import TPPlanError

        raise TPPlanError(f"world_size must be >= 1, got {world_size}")
    # The parent owns the rendezvous store on an OS-assigned port: no port race.
    store = dist.TCPStore(
        "127.0.0.1", 0, world_size + 1, is_master=True, wait_for_workers=False,
        timeout=timedelta(seconds=timeout_s),
    )
    with tempfile.TemporaryDirectory(prefix="mxcomm-ranks-") as results_dir:
        mp.start_processes(
            _rank_entry,
            args=(fn, world_size, store.port, backend, threads, timeout_s, check_collectives, results_dir, args),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
        return [torch.load(_result_path(results_dir, r), weights_only=False) for r in range(world_size)]
