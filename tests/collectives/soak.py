"""Soak: thousands of compressed collectives of random sizes, formats, dtypes and algorithms on gloo ranks.

Every rank draws the same sequence of calls from one seed (so all issue the
same collectives) and its own deterministic inputs; each call's result is
checked against the float64 sum of every rank's input (regenerated locally)
within the format's bound (tests/collectives/reference.py) -- call ``i`` by
rank ``i % n``, which spreads the reference work -- and fingerprinted, so the
parent can check that every rank got the same bytes. Resident memory, threads
and open file descriptors are sampled after a warm-up and at the end.

CI runs a short soak (tests/collectives/test_soak.py); the long one on demand::

    PYTHONPATH=. python benchmarks/soak.py --calls 10000
"""

from __future__ import annotations

import gc
import hashlib
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field

import torch

import mxcomm
from mxcomm.bench.launch import run_ranks
from tests.collectives import reference as ref

FORMATS = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4_e2m1", "mxint8", "nvfp4", "int4_fp16"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
KINDS = ["allgather", "two_shot", "auto", "all_gather_into_tensor", "reduce_scatter_tensor"]


@dataclass
class SoakReport:
    """What one soak run found (see :func:`check`)."""

    calls: int
    world: int
    seconds: float
    by_kind: dict[str, int]
    mismatched_calls: list[int] = field(default_factory=list)  # results not bitwise identical across ranks
    out_of_bound: list[str] = field(default_factory=list)  # "call i (kind fmt dtype numel): excess"
    rss_growth_mb: list[float] = field(default_factory=list)  # per rank, after warm-up to the end
    thread_growth: list[int] = field(default_factory=list)
    fd_growth: list[int] = field(default_factory=list)


def _draw(rng: random.Random, i: int) -> dict:
    numel = int(math.exp(rng.uniform(0, math.log(rng.choice([256, 4096, 65536])))))
    return dict(i=i, kind=rng.choice(KINDS), fmt=rng.choice(FORMATS), dtype=rng.choice(DTYPES), numel=numel,
                async_op=rng.random() < 0.3, segment=rng.choice([None, None, 512, 4096]))


def _input(seed: int, i: int, rank: int, numel: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + i * 17 + rank)
    x = torch.randn(numel, generator=g, dtype=torch.float64)
    x = x * torch.exp2(torch.randint(-8, 6, (numel,), generator=g).to(torch.float64))
    return x.to(dtype)


def _resources() -> tuple[float, int, int]:
    gc.collect()
    with open("/proc/self/statm") as f:
        rss_pages = int(f.read().split()[1])
    return rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**20, len(os.listdir("/proc/self/task")), \
        len(os.listdir("/proc/self/fd"))


def _run_call(c: dict, rank: int, n: int, seed: int) -> tuple[torch.Tensor, str]:
    """Issue call ``c``; (this rank's result, the algorithm that ran)."""
    x = _input(seed, c["i"], rank, c["numel"], c["dtype"])
    kind = c["kind"]
    with mxcomm.track_comm() as stats:
        if kind in ("allgather", "two_shot", "auto"):
            out = x
            h = mxcomm.all_reduce(x, c["fmt"], algorithm=kind, segment_elems=c["segment"], async_op=c["async_op"])
        elif kind == "all_gather_into_tensor":
            out = torch.empty(n * c["numel"], dtype=c["dtype"])
            h = mxcomm.all_gather_into_tensor(out, x, c["fmt"], async_op=c["async_op"])
        else:
            m = c["numel"]
            out = torch.empty(m, dtype=c["dtype"])
            full = torch.cat([_input(seed, c["i"] * 7 + j, rank, m, c["dtype"]) for j in range(n)])
            h = mxcomm.reduce_scatter_tensor(out, full, c["fmt"], async_op=c["async_op"])
        if h is not None:
            h.wait()
    return out, stats.records[0].algorithm


def _excess(c: dict, out: torch.Tensor, algorithm: str, rank: int, n: int, seed: int) -> float:
    """How far ``out`` exceeds the format's bound around the float64 reference (<= 0: within)."""
    fmt = mxcomm.get_format(c["fmt"])
    m, dt = c["numel"], c["dtype"]
    if c["kind"] == "all_gather_into_tensor":
        xs = [_input(seed, c["i"], r, m, dt) for r in range(n)]
        exact = torch.cat([x.to(torch.float64) for x in xs])
        bound = torch.cat([ref.all_gather_bound(x, fmt) for x in xs])
    elif c["kind"] == "reduce_scatter_tensor":
        chunks = [_input(seed, c["i"] * 7 + rank, r, m, dt) for r in range(n)]
        exact, bound = ref.reduce_scatter_bound(chunks, fmt)
    else:
        xs = [_input(seed, c["i"], r, m, dt) for r in range(n)]
        exact, bound = ref.all_reduce_bound(xs, fmt, algorithm)
    return float(((out.to(torch.float64) - exact).abs() - bound).max())


def soak_rank(rank: int, n: int, calls: int, seed: int) -> dict:
    """The body of one rank: run ``calls`` collectives; fingerprints, bound violations, resource samples."""
    rng = random.Random(seed)
    warmup = min(calls // 10, 200)
    fingerprints: list[bytes | None] = []
    out_of_bound: list[str] = []
    by_kind: dict[str, int] = {}
    start = _resources()
    for i in range(calls):
        if i == warmup:
            start = _resources()  # after the caches (codec tables, planner) have filled
        c = _draw(rng, i)
        out, algorithm = _run_call(c, rank, n, seed)
        by_kind[c["kind"]] = by_kind.get(c["kind"], 0) + 1
        # reduce_scatter: each rank owns another chunk, nothing to compare across ranks
        same_everywhere = c["kind"] != "reduce_scatter_tensor"
        fingerprints.append(hashlib.blake2b(out.view(torch.uint8).numpy().tobytes(), digest_size=8).digest()
                            if same_everywhere else None)
        if i % n == rank:
            excess = _excess(c, out, algorithm, rank, n, seed)
            if not excess <= 0:
                out_of_bound.append(f"call {i} ({c['kind']}->{algorithm} {c['fmt']} {c['dtype']} "
                                    f"numel={c['numel']}) on rank {rank}: exceeds the bound by {excess:.3g}")
    end = _resources()
    return dict(fingerprints=fingerprints, out_of_bound=out_of_bound, by_kind=by_kind,
                rss_growth_mb=end[0] - start[0], thread_growth=end[1] - start[1], fd_growth=end[2] - start[2])


def run_soak(calls: int, world: int = 3, seed: int = 0) -> SoakReport:
    """``calls`` random collectives on ``world`` gloo ranks; the findings (not yet judged: see :func:`check`)."""
    t0 = time.perf_counter()
    ranks = run_ranks(soak_rank, world, (calls, seed), threads=1, timeout_s=120.0)
    seconds = time.perf_counter() - t0
    first = ranks[0]["fingerprints"]
    mismatched = [i for i, fp in enumerate(first) if any(r["fingerprints"][i] != fp for r in ranks[1:])]
    return SoakReport(
        calls=calls, world=world, seconds=seconds, by_kind=ranks[0]["by_kind"], mismatched_calls=mismatched,
        out_of_bound=[m for r in ranks for m in r["out_of_bound"]],
        rss_growth_mb=[r["rss_growth_mb"] for r in ranks], thread_growth=[r["thread_growth"] for r in ranks],
        fd_growth=[r["fd_growth"] for r in ranks],
    )


#: Resident-memory growth allowed after the warm-up (the allocator keeps freed arenas).
MAX_RSS_GROWTH_MB = 50.0


def check(report: SoakReport) -> list[str]:
    """Every way ``report`` falls short; empty when the soak passed."""
    problems = []
    if report.mismatched_calls:
        problems.append(f"results differ across ranks in calls {report.mismatched_calls[:20]}")
    problems += report.out_of_bound[:20]
    if max(report.rss_growth_mb) >= MAX_RSS_GROWTH_MB:
        problems.append(f"resident memory grew by {report.rss_growth_mb} MB")
    if any(report.thread_growth) or any(report.fd_growth):
        problems.append(f"threads {report.thread_growth} / file descriptors {report.fd_growth} leaked")
    return problems


def as_dict(report: SoakReport) -> dict:
    return asdict(report)
