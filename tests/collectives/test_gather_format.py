"""Two-shot with its own gather format (``all_reduce(..., gather_fmt=...)``) on real gloo ranks.

The reduce-scatter phase runs in ``fmt``, the all-gather of the reduced chunks in
``gather_fmt``; chunks and segments align to both formats' blocks. Checked: every
rank ends with the same bits; the result is the one rebuilt here from the codec's
public pieces and the one of the single-process emulation; the bytes are the
planner's formula (and an independent reading of it); ranks that disagree on the
gather format all raise ``CollectiveMismatchError`` and the group stays usable;
``auto`` prices two-shot with the gather format.
"""

from __future__ import annotations

import math

import pytest
import torch

import mxcomm
import mxcomm.collectives
from mxcomm.bench.emulation import EmulatedReduction, emulated_all_reduce
from mxcomm.bench.synthetic import llm_activation
from mxcomm.collectives import CodecCost, CostModel
from mxcomm.collectives.planner import all_reduce_wire_bytes, gather_format
from mxcomm.collectives.torch_ops import functional_all_reduce, functional_all_reduce_with_outliers
from mxcomm.errors import CollectiveMismatchError, FormatError
from tests.collectives import reference as ref
from tests.collectives._harness import run_world

pytestmark = pytest.mark.multiprocess

WORLD = 3
SHAPE = (6, 200)  # 1200 elements: ragged last block, chunk and segment
SEGMENT = 256
SEED = 20241115
FP4, FP6 = mxcomm.get_format("mxfp4_e2m1"), mxcomm.get_format("mxfp6_e2m3")
B64 = mxcomm.get_format("fp4_e2m1_b64")  # blocks of 64: chunks align to lcm(32, 64)
ROT = FP4.with_options(rotation_seed=SEED)
# (label, fmt, gather_fmt, segment)
CASES = [
    ("plain", FP4, FP6, None),
    ("plain_segments", FP4, FP6, SEGMENT),
    ("mixed_blocks", FP4, B64, None),
    ("rotated", ROT, FP6, None),
    ("rotated_spelled", ROT, FP6.with_options(rotation_seed=SEED), None),  # the same call
    ("rotated_segments", ROT, FP6, SEGMENT),
    ("same_as_fmt", FP4, FP4, None),  # = no gather format
    ("no_gather", FP4, None, None),
]
CHANNELS = [3, 77]


def _input(rank: int) -> torch.Tensor:
    return llm_activation(*SHAPE, outlier_channels=2, seed=200 + rank, dtype=torch.bfloat16)


def _fast_link_slow_codec() -> CostModel:
    # a slow link and a free codec: two-shot (fewest bytes) is the fastest
    return CostModel(alpha=1e-6, beta=1e-6, default_codec=CodecCost(0.0, 0.0, 0.0), min_gain=0.0)


def _rank_body(rank: int, world: int) -> dict:
    res: dict = {}
    for label, fmt, gather, segment in CASES:
        x = _input(rank)
        with mxcomm.track_comm() as stats:
            mxcomm.all_reduce(x, fmt, algorithm="two_shot", gather_fmt=gather, segment_elems=segment)
        res[label] = {"out": x, "records": [r.as_dict() for r in stats.records]}
    # with outlier channels: the rest two-shot with the gather format
    x = _input(rank)
    mxcomm.collectives.all_reduce_with_outliers(x, FP4, CHANNELS, algorithm="two_shot", gather_fmt=FP6)
    res["outliers"] = x
    # the functional custom ops (what compiled code and mxcomm.tp run) carry the gather format
    res["functional"] = functional_all_reduce(_input(rank), FP4, algorithm="two_shot", gather_fmt=FP6)
    res["functional_outliers"] = functional_all_reduce_with_outliers(
        _input(rank), FP4, torch.tensor(CHANNELS), algorithm="two_shot", gather_fmt=FP6)
    # auto, priced with the gather format
    x = _input(rank)
    with mxcomm.track_comm() as stats:
        mxcomm.all_reduce(x, FP4, algorithm="auto", gather_fmt=FP6, model=_fast_link_slow_codec())
    res["auto"] = {"out": x, "records": [r.as_dict() for r in stats.records]}
    # rank 1 disagrees on the gather format: every rank raises, nothing else is exchanged
    x = _input(rank)
    try:
        mxcomm.all_reduce(x, FP4, algorithm="two_shot", gather_fmt=B64 if rank == 1 else FP6)
        res["mismatch"] = None
    except CollectiveMismatchError as exc:
        res["mismatch"] = str(exc)
    y = _input(rank)
    mxcomm.all_reduce(y, FP4, algorithm="two_shot", gather_fmt=FP6)  # the group is still usable
    res["after_mismatch"] = torch.equal(y, res["plain"]["out"])
    # a gather format rotated unlike the format: FormatError on the rank(s) passing it
    try:
        mxcomm.all_reduce(_input(rank), ROT, algorithm="two_shot", gather_fmt=FP6.with_options(rotation_seed=SEED + 1))
        res["bad_rotation"] = None
    except FormatError as exc:
        res["bad_rotation"] = str(exc)
    return res


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run_world(_rank_body, WORLD)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


def _q(x: torch.Tensor, fmt: mxcomm.BlockFormat) -> torch.Tensor:
    return mxcomm.decode(mxcomm.encode(x, fmt), dtype=torch.float32)


@pytest.mark.parametrize("label", [c[0] for c in CASES] + ["auto"])
def test_bitwise_identical_on_every_rank(ranks, label) -> None:
    for r in ranks[1:]:
        assert torch.equal(_bits(r[label]["out"]), _bits(ranks[0][label]["out"]))


@pytest.mark.parametrize("label,fmt,gather,segment", CASES)
def test_equals_the_emulation(ranks, label, fmt, gather, segment) -> None:
    parts = [_input(r) for r in range(WORLD)]
    expected = emulated_all_reduce(parts, fmt, "two_shot", gather_fmt=gather, segment_elems=segment or 1 << 20)
    assert torch.equal(_bits(ranks[0][label]["out"]), _bits(expected))


def test_phases_use_their_formats() -> None:
    """The plain case rebuilt from the codec: chunks of others decoded in fmt, the own added, re-encoded in gather."""
    flats = [_input(r).reshape(-1) for r in range(WORLD)]
    parts = [_input(r) for r in range(WORLD)]
    numel = flats[0].numel()
    out = torch.empty(numel, dtype=torch.bfloat16)
    for owner, (a, b) in enumerate(ref.chunks(numel, WORLD, 32)):
        acc = torch.zeros(b - a)
        for j in range(WORLD):
            if j != owner:
                acc += _q(flats[j][a:b], FP4)
        acc += flats[owner][a:b].float()
        out[a:b] = mxcomm.decode(mxcomm.encode(acc, FP6), dtype=torch.bfloat16)
    got = emulated_all_reduce(parts, FP4, "two_shot", gather_fmt=FP6)
    assert torch.equal(_bits(got.reshape(-1)), _bits(out))
    # and a finer gather format is more accurate than re-encoding in the format itself
    exact = sum(p.double() for p in parts)
    assert (got.double() - exact).norm() < (emulated_all_reduce(parts, FP4, "two_shot").double() - exact).norm()


def test_the_same_call_spelled_twice_agrees(ranks) -> None:
    assert torch.equal(ranks[0]["rotated"]["out"], ranks[0]["rotated_spelled"]["out"])
    assert torch.equal(ranks[0]["same_as_fmt"]["out"], ranks[0]["no_gather"]["out"])
    assert ranks[0]["same_as_fmt"]["records"][0]["gather_format"] == ""


def _independent_bytes(fmt: mxcomm.BlockFormat, gather: mxcomm.BlockFormat, segment: int | None) -> int:
    block = math.lcm(fmt.block_size, gather.block_size)
    total = (WORLD - 1) * ref.DESCRIPTOR
    for a, b in ref.segments(SHAPE[0] * SHAPE[1], segment, block):
        chunk = math.ceil(math.ceil((b - a) / WORLD) / block) * block
        total += (WORLD - 1) * (ref.packed(fmt, chunk) + ref.packed(gather, chunk))
    return total


@pytest.mark.parametrize("label,fmt,gather,segment", [c for c in CASES if c[2] is not None])
def test_bytes_are_exactly_the_formula(ranks, label, fmt, gather, segment) -> None:
    for r in ranks:
        (rec,) = r[label]["records"]
        predicted = all_reduce_wire_bytes("two_shot", fmt, SHAPE[0] * SHAPE[1], 2, WORLD, segment or 1 << 20, gather)
        assert rec["bytes_sent"] == rec["bytes_received"] == predicted.sent == _independent_bytes(fmt, gather, segment)
        # the gather phase's format as it ran (with the format's rotation); none when it is the format itself
        assert rec["gather_format"] == ("" if label == "same_as_fmt" else gather_format(fmt, gather).name)


def test_outlier_channels_with_a_gather_format(ranks) -> None:
    parts = [_input(r) for r in range(WORLD)]
    expected = EmulatedReduction(FP4, "two_shot", gather_fmt=FP6)(parts, torch.tensor(CHANNELS))
    for r in ranks:
        assert torch.equal(_bits(r["outliers"]), _bits(expected))


def test_the_functional_ops_carry_the_gather_format(ranks) -> None:
    for r in ranks:
        assert torch.equal(_bits(r["functional"]), _bits(ranks[0]["plain"]["out"]))
        assert torch.equal(_bits(r["functional_outliers"]), _bits(r["outliers"]))


def test_auto_prices_two_shot_with_the_gather_format(ranks) -> None:
    (rec,) = ranks[0]["auto"]["records"]
    assert rec["algorithm"] == "two_shot" and rec["gather_format"] == FP6.name
    assert torch.equal(ranks[0]["auto"]["out"], ranks[0]["plain"]["out"])


def test_a_disagreement_on_the_gather_format_raises_on_every_rank(ranks) -> None:
    for r in ranks:
        assert r["mismatch"] is not None and "gather_fingerprint" in r["mismatch"]
        assert r["after_mismatch"]


def test_a_gather_format_rotated_unlike_the_format_is_refused(ranks) -> None:
    for r in ranks:
        assert r["bad_rotation"] is not None and "rotated" in r["bad_rotation"]
