"""Compressed all-reduce between real gloo ranks over a tc-shaped loopback (root only).

Each benchmark runs one sweep (a fresh network namespace per rate, removed
afterwards) and stores the per-algorithm latencies, speedups over
dist.all_reduce in the same run and ideal (byte-ratio) speedups in
``extra_info``. The full table is produced by ``mxcomm bench-collective``
(docs/performance.md). Checks here are about correctness only -- identical
bytes on all ranks, and accounting equal to what the shaped link carried --
never about timing.

    python -m pytest benchmarks/test_collectives_slowlink.py --benchmark-only -s
"""

from __future__ import annotations

import pytest

from mxcomm.bench.slowlink import (
    SlowLinkUnavailable,
    SweepConfig,
    check_environment,
    format_table,
    run_sweep,
    summarize,
)

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


@pytest.fixture(scope="module", autouse=True)
def _needs_root_and_tc():
    try:
        check_environment()
    except SlowLinkUnavailable as e:
        pytest.skip(str(e))


def _run(benchmark, cfg: SweepConfig) -> list[dict]:
    rows = benchmark.pedantic(lambda: run_sweep(cfg, progress=print), rounds=1, iterations=1)
    summary = summarize(rows)
    print("\n" + format_table(summary))
    for s in summary:
        key = f"{s['rate']}/n{s['world_size']}/{s['nbytes'] >> 10}KiB/{s['format']}"
        benchmark.extra_info[key] = {
            "ms": s["ms"], "speedup_vs_dist": s["speedup"], "ideal": s["ideal"], "best": s.get("best"),
            "fraction_of_ideal": s.get("efficiency"), "auto_ran": s["ran"].get("auto"),
        }
        assert s["identical"], f"{key}: ranks ended with different bytes"
    for r in rows:
        # every byte the accounting claims crossed the shaped link, plus protocol headers and barriers
        if r["bytes_sent"] and r["qdisc_bytes_per_iter"]:
            measured = r["qdisc_bytes_per_iter"] / (r["world_size"] * r["bytes_sent"])
            assert 0.99 < measured < 1.10, (r["algorithm"], measured)
    return rows


def test_slowlink_1gbit_16mib_mxfp4(benchmark):
    """The issue's target point: 1 Gbit/s, 16 MiB bf16, mxfp4, 2 and 4 ranks."""
    _run(benchmark, SweepConfig(rates=["1gbit"], world_sizes=[2, 4], sizes_mib=[16], formats=["mxfp4_e2m1"]))


def test_slowlink_sizes_mxfp8_10gbit(benchmark):
    """Where compression stops paying: a fast link, small to large messages, mxfp8."""
    _run(benchmark, SweepConfig(rates=["10gbit"], world_sizes=[2], sizes_mib=[0.25, 4, 16],
                                formats=["mxfp8_e4m3"]))
