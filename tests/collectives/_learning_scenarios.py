"""Rank side of tests/collectives/test_auto_learning.py: ``auto`` learning on real gloo ranks.

Each scenario runs on a process group of its own (so it starts from a fresh
estimate) and, except ``real_clock``, on an emulated link: the collectives run
for real, but their phase times come from injected costs on a virtual clock
(:class:`mxcomm.collectives.timing.EmulatedLink`), so the decisions are the
same on every machine and under any load.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist

from mxcomm.collectives import (
    CodecCost,
    CostModel,
    all_gather_into_tensor,
    all_reduce,
    cost_model,
    set_cost_model,
    track_comm,
)
from mxcomm.collectives.timing import EmulatedLink, emulate_link

FMT = "mxfp4_e2m1"
PREFILL = 1 << 16  # elements of a prefill-sized message (128 KiB of bf16)
DECODE = 576  # one token of SmolLM2's hidden size
SLOW = 8 / 100e6  # seconds per byte: 100 Mbit/s
FAST = 8 / 100e9
SLOW_SEED = CostModel(beta=SLOW, default_codec=CodecCost(2e-9, 1e-9, 50e-6), source="given")


def _link(beta: float) -> EmulatedLink:
    return EmulatedLink(alpha=100e-6, beta=beta, encode_s_per_elem=2e-9, decode_s_per_elem=1e-9, call_s=50e-6)


def _calls(group, rank: int, sizes: list[int], *, link: EmulatedLink | None = None, change: dict | None = None,
           verify: bool = True) -> list[dict]:
    out = []
    g = torch.Generator().manual_seed(1234 + rank)
    for i, numel in enumerate(sizes):
        if change and i == change["at"] and link is not None:
            link.beta = change["beta"]
        x = torch.randn(numel, generator=g).to(torch.bfloat16)
        with track_comm() as stats:
            all_reduce(x, FMT, group=group, verify=verify)
        (rec,) = stats.records
        out.append({"algorithm": rec.algorithm, "explored": rec.reason.startswith("exploring"),
                    "free": "repeating it, free" in rec.reason,
                    "digest": hashlib.sha256(x.view(torch.int16).numpy().tobytes()).hexdigest()})
    return out


def _emulated(group, rank: int, beta: float, sizes: list[int], change: dict | None = None) -> dict:
    with emulate_link(_link(beta)) as link:
        calls = _calls(group, rank, sizes, link=link, change=change)
    return {"calls": calls, "view": cost_model(group).describe()}


def learning_suite(rank: int, n: int) -> dict:
    res = {}

    def group():
        return dist.new_group(list(range(n)))

    res["slow_link_default_model"] = _emulated(group(), rank, SLOW, [PREFILL] * 30)
    g = group()
    set_cost_model(SLOW_SEED, g)
    res["fast_link_slow_model"] = _emulated(g, rank, FAST, [PREFILL] * 30)
    res["slow_to_fast"] = _emulated(group(), rank, SLOW, [PREFILL] * 50, change={"at": 25, "beta": FAST})
    res["fast_to_slow"] = _emulated(group(), rank, FAST, [PREFILL] * 50, change={"at": 25, "beta": SLOW})
    res["decode_after_prefill"] = _emulated(group(), rank, SLOW, [PREFILL] * 20 + [DECODE] * 40)

    # verify=False: no descriptor, so nothing is learned and nothing explored
    g = group()
    with emulate_link(_link(SLOW)):
        learned = _calls(g, rank, [PREFILL] * 12)
        before = cost_model(g)
        unverified = _calls(g, rank, [PREFILL] * 10, verify=False)
        after = cost_model(g)
    res["verify_false"] = {"learned": learned, "unverified": unverified, "unchanged": before == after,
                           "view": after.describe()}

    # the times of an all-reduce ride on whatever collective comes next on the group; async calls are not measured
    g = group()
    with emulate_link(_link(SLOW)):
        for _ in range(4):
            all_reduce(torch.ones(PREFILL, dtype=torch.bfloat16), FMT, group=g, algorithm="two_shot")
            out = torch.empty(n * 64)
            all_gather_into_tensor(out, torch.ones(64), FMT, group=g)
        mixed = cost_model(g)
        all_reduce(torch.ones(PREFILL, dtype=torch.bfloat16), FMT, group=g, async_op=True).wait()
        all_reduce(torch.ones(64), FMT, group=g)
        after_async = cost_model(g)
    res["mixed_ops"] = {"calls": mixed.calls, "warmups": mixed.warmups, "dropped": mixed.dropped,
                        "calls_after_async": after_async.calls, "warmups_after_async": after_async.warmups}

    # the real clock: whatever this machine measures, every rank holds the same estimate
    g = group()
    res["real_clock"] = {"calls": _calls(g, rank, [PREFILL] * 8 + [DECODE] * 4), "view": cost_model(g).describe(),
                         "learned": cost_model(g).calls}
    return res
