"""Fixed cost per all-reduce call at the size of one TP reduction, on 3 gloo ranks over loopback.

A TP prefill of SmolLM2-135M runs 60 all-reduces of a (512 x 576) bf16 partial sum; on a fast
link each call's fixed cost -- the number of dependent gloo rounds it waits for -- matters
more than its bytes. This measures, in one run, milliseconds per call of:

* ``dist.all_reduce`` (the baseline every ratio is against) and mxcomm's ``none``, ``allgather``
  and ``two_shot`` paths with and without the descriptor exchange (``verify``);
* the two ways of all-gathering bytes on gloo: ``all_gather_into_tensor`` (a ring of n - 1
  dependent steps) and ``all_to_all_single`` of n copies (one round), which mxcomm's transport
  uses on gloo (mxcomm/collectives/transport.py), for the 88-byte descriptor and a payload.

No timing assertions; the ratios go to ``extra_info`` and the table is printed (docs/performance.md)::

    python -m pytest benchmarks/test_call_overhead.py --benchmark-only -s
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
import torch.distributed as dist

from mxcomm.bench.launch import run_ranks

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

WORLD = 3
CALLS, ROUNDS = 30, 5  # per round: CALLS back-to-back calls; the median of ROUNDS - 1 rounds (the first warms up)


def _timed(fn) -> float:  # noqa: ANN001
    """Median milliseconds per call of ``fn`` over rounds of back-to-back calls, ranks aligned by barriers."""
    per_call = []
    for _ in range(ROUNDS):
        dist.barrier()
        t = time.perf_counter()
        for _ in range(CALLS):
            fn()
        dist.barrier()
        per_call.append((time.perf_counter() - t) / CALLS * 1e3)
    return statistics.median(per_call[1:])


def _calls(rank: int, world: int) -> dict[str, float]:
    import mxcomm

    torch.set_num_threads(1)
    x = torch.randn(512, 576, generator=torch.Generator().manual_seed(rank)).to(torch.bfloat16)
    out: dict[str, float] = {"dist.all_reduce": _timed(lambda: dist.all_reduce(x.clone()))}
    for algorithm, fmt in (("none", None), ("allgather", "mxfp6_e2m3"), ("two_shot", "mxfp6_e2m3")):
        for verify in (True, False):
            out[f"mxcomm {algorithm}{'' if verify else ' verify=False'}"] = _timed(
                lambda a=algorithm, f=fmt, v=verify: mxcomm.all_reduce(x.clone(), f, algorithm=a, verify=v))
    for nbytes in (88, 98_304):  # the descriptor; a two-shot chunk of the partial above in mxfp6
        inp = torch.zeros(nbytes, dtype=torch.uint8)
        gathered = torch.empty(world * nbytes, dtype=torch.uint8)

        def copies_all_to_all(inp: torch.Tensor = inp, gathered: torch.Tensor = gathered) -> None:
            dist.all_to_all_single(gathered, inp.reshape(1, -1).expand(world, -1).contiguous().view(-1))

        out[f"all_gather_into_tensor {nbytes} B"] = _timed(lambda i=inp, g=gathered: dist.all_gather_into_tensor(g, i))
        out[f"all_to_all_single of copies {nbytes} B"] = _timed(copies_all_to_all)
    return out


def test_call_overhead_tp_sized_all_reduce(benchmark):
    results = benchmark.pedantic(lambda: run_ranks(_calls, WORLD, threads=1), rounds=1, iterations=1)
    ms = results[0]
    base = ms["dist.all_reduce"]
    print(f"\n{WORLD} gloo ranks, loopback, (512 x 576) bf16; ms per call (rank 0), ratio to dist.all_reduce")
    for name, value in ms.items():
        print(f"  {name:<42} {value:7.2f} ms  {value / base:5.2f}x")
        benchmark.extra_info[name] = {"ms": round(value, 3), "vs_dist_all_reduce": round(value / base, 3)}
    assert all(v > 0 for v in ms.values())
