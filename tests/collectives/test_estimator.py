"""The learned estimate behind ``auto``, driven in one process with injected phase times.

``_World`` plays the collective's part: it plans with a :class:`GroupEstimate`,
counts the call, derives the phase times a *true* model says the call took,
and feeds them back the way ranks do (through a packed descriptor, as float32).
Every number the estimator sees is controlled, so the assertions are about
decisions, never about wall-clock speed.
"""

from __future__ import annotations

import math

import pytest
import torch

import mxcomm
from mxcomm.collectives import CodecCost, CostModel
from mxcomm.collectives.estimator import (
    EXPLORE_EVERY,
    STALE_AFTER,
    WINDOW,
    CallMeta,
    GroupEstimate,
)
from mxcomm.collectives.handshake import CallTimes, Descriptor, WireDescriptor, format_fingerprint
from mxcomm.collectives.planner import EXCHANGES, all_reduce_wire_bytes, codec_work
from tests.collectives import reference as ref

FMT = mxcomm.get_format("mxfp4_e2m1")
N = 3
CODEC = CodecCost(2e-9, 1e-9, 50e-6)
SLOW = 8 / 100e6  # seconds per byte: 100 Mbit/s
FAST = 8 / 100e9


def _wire(times: CallTimes | None) -> WireDescriptor:
    d = Descriptor("all_reduce", "auto", "none", torch.bfloat16, (1,), b"\0" * 8, "x", 1, times=times)
    return WireDescriptor.unpack(d.pack())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1e-3, 1e9])
def test_implausible_times_from_a_peer_are_dropped_by_everyone(bad):
    est = GroupEstimate(CostModel())
    meta = CallMeta("none", FMT, format_fingerprint(FMT), FMT.name, 1 << 16, 2, N, 1 << 20)
    est.record(meta, CallTimes(0, 1e-4, 1e-3, 0, 0, 1e-3))
    mine = est.take_pending()
    hostile = CallTimes(mine.seq, 1e-4, 1e-3, 0, 0, bad)  # a corrupted or hostile peer's report
    est.absorb([_wire(mine), _wire(hostile), _wire(mine)])
    assert est.view().dropped == 1 and est.alpha.count == 0
    assert all(math.isfinite(v) for v in (est.model().alpha, est.model().beta))


class _World:
    """One group's estimate and a true link + codec; ``call()`` runs one all-reduce the way ops does."""

    def __init__(self, estimate: GroupEstimate, beta: float, alpha: float = 100e-6, codec: CodecCost = CODEC,
                 ring_factor: float = 1.0) -> None:
        self.estimate, self.beta, self.alpha, self.codec, self.ring_factor = estimate, beta, alpha, codec, ring_factor
        self.algorithms: list[str] = []
        self.explored: list[bool] = []
        self.reasons: list[str] = []

    def true_times(self, alg: str, numel: int) -> CallTimes:
        wire = all_reduce_wire_bytes(alg, FMT, numel, 2, N, 1 << 20)
        nbytes = wire.sent - (N - 1) * ref.DESCRIPTOR
        wait = EXCHANGES[alg] * self.alpha + nbytes * self.beta * (self.ring_factor if alg == "none" else 1.0)
        enc = dec = 0.0
        if alg != "none":
            w = codec_work(alg, numel, N, 1)
            enc, dec = self.codec.encode(w.encode_elems, w.encode_calls), self.codec.decode(w.decode_elems,
                                                                                             w.decode_calls)
        return CallTimes(0, self.alpha, enc + dec + wait, enc, dec, wait)

    def call(self, numel: int, algorithm: str = "auto", verify: bool = True) -> str:
        est = self.estimate
        sent = est.take_pending() if verify else None
        plan = est.plan(FMT, numel, 2, N, explore=verify) if algorithm == "auto" else None
        alg = plan.algorithm if plan else algorithm
        if verify:
            est.absorb([_wire(sent)] * N)  # every rank reports the same times
            fp = format_fingerprint(FMT)
            est.note_run(fp, FMT.name, 2, numel, alg, bool(plan and plan.explored))
            est.record(CallMeta(alg, FMT, fp, FMT.name, numel, 2, N, 1 << 20), self.true_times(alg, numel))
        self.algorithms.append(alg)
        self.explored.append(bool(plan and plan.explored))
        self.reasons.append(plan.reason if plan else "requested")
        return alg


def test_learns_the_true_constants_from_two_message_sizes():
    world = _World(GroupEstimate(CostModel()), SLOW)
    for _ in range(3):  # warm-ups first: they teach alpha only
        world.call(1 << 16, "two_shot")
        world.call(1 << 16, "none")
        world.call(1 << 14, "allgather")
    for _ in range(WINDOW):
        world.call(1 << 16, "two_shot")
        world.call(1 << 16, "none")
        world.call(1 << 14, "allgather")
    m = world.estimate.model_for(FMT)
    assert m.alpha == pytest.approx(100e-6, rel=1e-6)
    assert m.beta == pytest.approx(SLOW, rel=1e-3)
    cc = m.codec_for(FMT)
    # two call sizes (two_shot's chunks, allgather's whole tensor) pin the line down
    assert cc.encode_s_per_elem == pytest.approx(2e-9, rel=1e-3)
    assert cc.decode_s_per_elem == pytest.approx(1e-9, rel=1e-3)
    assert cc.call_s == pytest.approx(50e-6, rel=1e-3) and cc.decode(0) == pytest.approx(50e-6, rel=1e-3)
    view = world.estimate.view()
    assert view.warmups == 3 and view.dropped == 0 and view.samples["beta"] > 0
    # every compressed call but the two warm-ups and the last one (its times travel with the next call)
    assert view.codec_samples == {FMT.name: 2 * (2 * (3 + WINDOW) - 3)}


def test_one_size_scales_the_seed_line_through_the_measurement():
    seed = CostModel(default_codec=CodecCost(6e-9, 6e-9, 100e-6))
    world = _World(GroupEstimate(seed), SLOW)
    for _ in range(3):  # a warm-up, a measured call, and the call that delivers its times
        world.call(1 << 16, "two_shot")
    cc = world.estimate.model_for(FMT).codec_for(FMT)
    w = codec_work("two_shot", 1 << 16, N, 1)
    # the measured size is predicted exactly ...
    assert cc.encode(w.encode_elems, w.encode_calls) == pytest.approx(CODEC.encode(w.encode_elems, w.encode_calls))
    # ... and both terms stay positive (the seed's call cost alone would exceed the measurement)
    assert cc.encode_s_per_elem > 0 and cc.call_s > 0


def test_converges_from_a_model_that_says_fast_on_a_slow_link():
    world = _World(GroupEstimate(CostModel()), SLOW)  # the default model: a 10 Gbit/s link
    assert world.call(1 << 16) == "none"
    for _ in range(40):
        world.call(1 << 16)
    assert world.algorithms[0] == "none"
    assert set(world.algorithms[-30:]) == {"two_shot"}
    assert "estimate: alpha" in world.reasons[-1] and "[" in world.reasons[-1]


def test_converges_from_a_model_that_says_slow_on_a_fast_link():
    slow_seed = CostModel(beta=SLOW, default_codec=CODEC, source="given")
    world = _World(GroupEstimate(slow_seed), FAST)
    assert world.call(1 << 16) != "none"
    for _ in range(40):
        world.call(1 << 16)
    assert set(world.algorithms[-30:]) == {"none"}


@pytest.mark.parametrize("first,then,expect", [(SLOW, FAST, "none"), (FAST, SLOW, "two_shot")])
def test_adapts_after_the_link_changes(first, then, expect):
    world = _World(GroupEstimate(CostModel()), first)
    for _ in range(60):
        world.call(1 << 16)
    before = world.algorithms[-1]
    assert before != expect
    world.beta = then
    for _ in range(40):
        world.call(1 << 16)
    switched = next(i for i, a in enumerate(world.algorithms[60:]) if a == expect)
    assert switched <= 15  # calls after the change
    assert set(world.algorithms[-20:]) == {expect}


def test_tiny_messages_stay_uncompressed_even_on_a_slow_link():
    world = _World(GroupEstimate(CostModel()), SLOW)
    for _ in range(30):
        world.call(1 << 16)  # learn the slow link and the codec on prefill-sized messages
    assert world.algorithms[-1] == "two_shot"
    for _ in range(300):
        world.call(576)  # one token of a hidden size of 576: the latency dominates
    planned = {a for a, e in zip(world.algorithms[-300:], world.explored[-300:]) if not e}
    assert planned == {"none"}
    # allgather is predicted within EXPLORE_STALE of none here (one exchange, two codec calls): it is
    # re-checked once when the class is new and once per STALE_AFTER calls, never more
    assert sum(world.explored[-300:]) <= 1 + 300 // STALE_AFTER


@pytest.mark.parametrize("beta,planned", [(4.2e-9, "none"), (7e-9, "allgather")])
def test_exploration_share_is_bounded(beta, planned):
    # links where none and two_shot are within 25%: the stale rule keeps re-checking the other one
    world = _World(GroupEstimate(CostModel()), beta)
    calls = 3000
    for i in range(1, calls + 1):
        world.call(1 << 16)
        # an exploration that was an algorithm's first run (a warm-up) is repeated once for free
        free = sum(e and "repeating it, free" in r for e, r in zip(world.explored, world.reasons))
        assert sum(world.explored) - free <= 1 + i // EXPLORE_EVERY
        assert free <= 3  # once per algorithm (and format)
    # once learned, each of the two algorithms not planned is re-checked at most once per STALE_AFTER calls
    steady = sum(world.explored[200:])
    assert 2 <= steady <= 2 * (-(-(calls - 200) // STALE_AFTER) + 1)
    assert world.algorithms[-1] == planned


def test_beta_scale_separates_the_ring_from_the_payload_exchanges():
    # the ring all-reduce moves bytes 1.3x slower than the payload exchanges (TCP on big messages)
    world = _World(GroupEstimate(CostModel()), SLOW, ring_factor=1.3)
    for _ in range(2):
        world.call(1 << 16, "two_shot")
    for _ in range(2 * WINDOW):
        world.call(1 << 16, "none")
        world.call(1 << 16, "two_shot")
    m = world.estimate.model()
    assert m.beta == pytest.approx(1.3 * SLOW, rel=1e-3)
    assert m.beta_scale["two_shot"] == pytest.approx(1 / 1.3, rel=1e-3)


def test_reports_of_different_calls_are_dropped_by_everyone():
    est = GroupEstimate(CostModel())
    meta = CallMeta("none", FMT, format_fingerprint(FMT), FMT.name, 1 << 16, 2, N, 1 << 20)
    est.record(meta, CallTimes(0, 1e-4, 1e-3, 0, 0, 1e-3))
    mine = est.take_pending()
    other = CallTimes((mine.seq + 1) & 0xFFFF, 1e-4, 1e-3, 0, 0, 1e-3)
    est.absorb([_wire(mine), _wire(other), _wire(mine)])
    assert est.view().dropped == 1 and est.alpha.count == 0
    est.record(meta, CallTimes(0, 1e-4, 1e-3, 0, 0, 1e-3))
    est.absorb([_wire(est.take_pending()), _wire(None), _wire(None)])
    assert est.view().dropped == 2 and est.alpha.count == 0


def test_verify_false_neither_learns_nor_explores():
    world = _World(GroupEstimate(CostModel()), SLOW)
    for _ in range(10):
        world.call(1 << 16)
    before = world.estimate.view()
    for _ in range(50):
        world.call(1 << 16, verify=False)
    after = world.estimate.view()
    assert after == before
    assert not any(world.explored[10:])
    assert len(set(world.algorithms[10:])) == 1


def test_frozen_estimate_plans_with_the_seed():
    seed = CostModel(beta=SLOW, default_codec=CODEC, source="given")
    world = _World(GroupEstimate(seed, learn=False), FAST)
    for _ in range(30):
        world.call(1 << 16)
    assert set(world.algorithms) == {"two_shot"} and not any(world.explored)
    assert world.estimate.model() == seed


def test_describe_shows_constants_counts_and_classes():
    world = _World(GroupEstimate(CostModel()), SLOW)
    for _ in range(20):
        world.call(1 << 16)
    text = world.estimate.view().describe()
    assert "alpha" in text and "beta" in text and "codec mxfp4_e2m1" in text
    assert "class mxfp4_e2m1 x2B numel 65536-65536: 20 calls" in text


def test_swap_estimates_keeps_each_side_apart():
    from mxcomm.collectives import get_cost_model, set_cost_model
    from mxcomm.collectives.estimator import swap_estimates

    outer = swap_estimates({})
    try:
        set_cost_model(CostModel(source="given"))
        mine = swap_estimates({})
        assert get_cost_model().source == "default"  # a fresh side starts from the defaults
        fresh = swap_estimates(mine)
        assert get_cost_model().source == "given"  # and the first side kept its own
        assert swap_estimates(fresh) is mine
    finally:
        swap_estimates(outer)
