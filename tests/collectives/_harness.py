"""How the collective tests start their ranks: :func:`mxcomm.bench.launch.run_ranks`, one spawn per module.

Each test module runs all its scenarios back to back inside one group of
spawned gloo ranks (``body(rank, world_size) -> dict``) and its tests only
inspect the returned dicts.
"""

from __future__ import annotations

from collections.abc import Callable

from mxcomm.bench.launch import run_ranks

#: A hung collective fails the module after this long instead of blocking CI.
RANK_TIMEOUT_S = 120.0


def run_world(body: Callable[[int, int], dict], world_size: int) -> list[dict]:
    """``body(rank, world_size)`` on ``world_size`` gloo ranks with one torch thread each; each rank's dict."""
    return run_ranks(body, world_size, threads=1, timeout_s=RANK_TIMEOUT_S)
