"""The planner's model, the byte formulas and the descriptor, without processes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mxcomm
from mxcomm.collectives import CodecCost, CostModel, plan_all_reduce, track_comm
from mxcomm.collectives.accounting import CommRecord, emit
from mxcomm.collectives.handshake import Descriptor, WireDescriptor, check_descriptors, format_fingerprint
from mxcomm.collectives.planner import all_gather_wire_bytes, all_reduce_wire_bytes, reduce_scatter_wire_bytes
from mxcomm.errors import CollectiveMismatchError
from tests.collectives import reference as ref

OCP = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8"]

models = st.builds(
    CostModel,
    alpha=st.floats(0, 1e-3),
    beta=st.floats(1e-12, 1e-7),
    default_codec=st.builds(CodecCost, st.floats(0, 1e-8), st.floats(0, 1e-8), st.floats(0, 1e-3)),
    min_gain=st.floats(0, 0.3),
)


@given(model=models, fmt=st.sampled_from(OCP), n=st.integers(2, 16), numel=st.integers(1, 1 << 26))
def test_one_shot_never_chosen_when_it_sends_more_than_ring(model, fmt, n, numel):
    # One-shot moves (n-1) P bytes against the ring's 2(n-1)/n S, with the same call latency and
    # codec work on top: it can only win when the compression ratio S/P exceeds n/2.
    f = mxcomm.get_format(fmt)
    plan = plan_all_reduce(model, f, numel, 2, n)
    ratio = numel * 2 / f.packed_nbytes((numel,))
    if ratio < n / 2:
        assert plan.algorithm != "allgather"


@given(model=models, fmt=st.sampled_from(OCP), n=st.integers(2, 8), numel=st.integers(0, 1 << 24))
def test_plan_is_the_cheapest_prediction(model, fmt, n, numel):
    f = mxcomm.get_format(fmt)
    plan = plan_all_reduce(model, f, numel, 2, n)
    p = plan.predicted
    if plan.algorithm == "none":
        if numel:
            assert min(p["allgather"], p["two_shot"]) > (1 - model.min_gain) * p["none"]
    else:
        assert p[plan.algorithm] == min(p["allgather"], p["two_shot"])
        assert p[plan.algorithm] <= (1 - model.min_gain) * p["none"]


@pytest.mark.parametrize("n", [2, 4, 8])
@pytest.mark.parametrize("fmt", ["mxfp4_e2m1", "mxfp8_e4m3"])
def test_size_gate(n, fmt):
    codec = CodecCost(2e-9, 1e-9, 200e-6)
    model = CostModel(alpha=50e-6, beta=8 / 1e9, default_codec=codec)
    gate = model.size_gate(fmt, 2, n)
    assert gate > 0
    f = mxcomm.get_format(fmt)
    for k in range(8, 31):
        nbytes = 1 << k
        alg = plan_all_reduce(model, f, nbytes // 2, 2, n).algorithm
        if nbytes < gate:
            assert alg == "none"
    assert plan_all_reduce(model, f, gate // 2, 2, n).algorithm != "none"
    # a faster link moves the gate up (bytes are worth less relative to codec time)
    faster = CostModel(alpha=50e-6, beta=8 / 10e9, default_codec=codec)
    assert faster.size_gate(fmt, 2, n) == -1 or faster.size_gate(fmt, 2, n) >= gate


def test_two_shot_preferred_at_four_ranks_with_low_ratio():
    # mxfp8 gives r ~ 1.94 < n/2 = 2 at n = 4: one-shot sends more than the ring, two-shot half as much
    model = CostModel(alpha=10e-6, beta=8 / 1e9, default_codec=CodecCost(1e-9, 1e-9, 20e-6))
    plan = plan_all_reduce(model, mxcomm.get_format("mxfp8_e4m3"), 1 << 23, 2, 4)
    assert plan.algorithm == "two_shot"
    assert plan.predicted["allgather"] > plan.predicted["none"]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("numel", [0, 1, 31, 33, 1000, 5000, 3 * ref.DEFAULT_SEGMENT + 5])
@pytest.mark.parametrize("fmt", ["mxfp4_e2m1", "nvfp4", "mxfp6_e3m2"])
def test_wire_byte_formulas(n, numel, fmt):
    f = mxcomm.get_format(fmt)
    segs = ref.segments(numel, None, f.block_size)
    w = all_reduce_wire_bytes("allgather", f, numel, 2, n, ref.DEFAULT_SEGMENT)
    assert w.sent == (n - 1) * (ref.DESCRIPTOR + sum(ref.packed(f, b - a) for a, b in segs))
    w = all_reduce_wire_bytes("two_shot", f, numel, 2, n, ref.DEFAULT_SEGMENT)
    slots = [ref.packed(f, ref.chunks(b - a, n, f.block_size)[0][1]) for a, b in segs]
    assert w.sent == (n - 1) * ref.DESCRIPTOR + 2 * (n - 1) * sum(slots)
    w = all_reduce_wire_bytes("none", None, numel, 2, n, ref.DEFAULT_SEGMENT)
    assert w.sent == (n - 1) * ref.DESCRIPTOR + 2 * (n - 1) * numel * 2 // n == w.received
    assert all_gather_wire_bytes(f, numel, 4, n).sent == (n - 1) * (ref.DESCRIPTOR + ref.packed(f, numel))
    assert reduce_scatter_wire_bytes(f, numel, 4, n).logical == (n - 1) * numel * 4


def _desc(**kw) -> Descriptor:
    base = dict(op="all_reduce", requested="two_shot", planned="two_shot", dtype=torch.bfloat16, shape=(3, 5),
                fingerprint=format_fingerprint(mxcomm.get_format("mxfp4")), format_name="mxfp4_e2m1",
                segment_elems=ref.DEFAULT_SEGMENT)
    base.update(kw)
    return Descriptor(**base)


def test_descriptor_roundtrip_and_checks():
    d = _desc()
    raw = d.pack()
    assert len(raw) == ref.DESCRIPTOR
    w = WireDescriptor.unpack(raw)
    assert w.numel == 15 and w.format_name == "mxfp4_e2m1" and w.segment_elems == ref.DEFAULT_SEGMENT
    check_descriptors([w, WireDescriptor.unpack(_desc(planned="allgather").pack())], compare_format=True)
    for other in (_desc(shape=(5, 3)), _desc(dtype=torch.float32), _desc(requested="allgather"),
                  _desc(fingerprint=format_fingerprint(mxcomm.get_format("nvfp4")))):
        with pytest.raises(CollectiveMismatchError, match="rank 1"):
            check_descriptors([w, WireDescriptor.unpack(other.pack())], compare_format=True)
    with pytest.raises(CollectiveMismatchError):
        WireDescriptor.unpack(b"\0" * ref.DESCRIPTOR)


def test_fingerprint_ignores_the_name_only():
    f = mxcomm.get_format("mxfp4_e2m1")
    assert format_fingerprint(f) == format_fingerprint(f.with_options(name="renamed"))
    assert format_fingerprint(f) != format_fingerprint(f.with_options(rounding="away"))
    fps = {format_fingerprint(mxcomm.get_format(n)) for n in mxcomm.list_formats()}
    assert len(fps) == len(mxcomm.list_formats())


def test_track_comm_summary_and_nesting():
    rec = CommRecord("all_reduce", "two_shot", "auto", "mxfp4_e2m1", 2, 10, "bfloat16", 100, 40, 40, 0.5)
    with track_comm() as outer:
        with track_comm() as inner:
            emit(rec, [outer, inner])
        emit(rec, [outer])
    assert len(inner.records) == 1 and len(outer.records) == 2
    s = outer.summary()
    assert s["logical_bytes"] == 200 and s["bytes_sent"] == 80 and s["ratio"] == 2.5
    assert s["algorithms"] == {"two_shot": 2} and rec.ratio == 2.5
