"""mxcomm.bench.launch.run_ranks: ranks whose collectives diverge fail at once, naming both collectives."""

from __future__ import annotations

import pytest
import torch

from mxcomm.bench.launch import run_ranks

pytestmark = pytest.mark.multiprocess


def _diverging(rank: int, world: int) -> None:
    import torch.distributed as dist

    import mxcomm.collectives as C

    t = torch.ones(64)
    if rank == 0:
        dist.all_reduce(t)  # a collective on one rank only (a rank-gated code path)
    C.all_reduce(t, "mxfp8_e4m3", algorithm="allgather")


def test_check_collectives_names_the_diverging_collectives():
    # without the check the ranks block until the timeout and fail with a backend error that names neither call
    with pytest.raises(torch.multiprocessing.ProcessRaisedException, match="mismatch between collectives"):
        run_ranks(_diverging, 2, threads=1, timeout_s=60, check_collectives=True)
