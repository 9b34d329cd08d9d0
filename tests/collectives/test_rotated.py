"""Rotated formats through the collectives on real gloo ranks.

One-shot sums the decoded shards in the rotated domain and un-rotates once
(``decode_sum``); two-shot rotates every segment once, runs both phases on the
rotated data with the plain format and un-rotates once at the end. The
expected values are rebuilt here from the codec's public pieces, so the tests
pin the algorithm, not just "close to the sum".
"""

from __future__ import annotations

import pytest
import torch

import mxcomm
from mxcomm.bench.synthetic import llm_activation
from mxcomm.collectives.planner import all_reduce_wire_bytes, chunk_bounds, segment_bounds
from mxcomm.kernels.reference import saturating_cast
from mxcomm.kernels.rotation import rotate, unrotate
from tests.collectives._harness import run_world

pytestmark = pytest.mark.multiprocess

WORLD = 3
SHAPE = (6, 200)  # 1200 elements: the last block (and the last 128-element segment) ragged
ROTATED = mxcomm.get_format("mxfp4_e2m1").with_options(rotation_seed=20241115)
SEGMENT = 128  # several pipeline segments, the last one ragged
CASES = [("allgather", None), ("two_shot", None), ("two_shot", SEGMENT), ("allgather", SEGMENT)]


def _input(rank: int) -> torch.Tensor:
    # consistent outlier channels, the case rotation is for
    return llm_activation(*SHAPE, outlier_channels=2, seed=100 + rank, dtype=torch.bfloat16)


def _rank_body(rank: int, world: int) -> dict:
    result: dict = {}
    for algorithm, segment in CASES:
        for fmt in (ROTATED, ROTATED.with_options(rotation_seed=None)):
            x = _input(rank)
            with mxcomm.track_comm() as stats:
                mxcomm.all_reduce(x, fmt, algorithm=algorithm, segment_elems=segment, backend="torch")
            key = (algorithm, segment, fmt.rotation_seed is not None)
            result[key] = {"out": x, "records": [r.as_dict() for r in stats.records]}
    return result


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run_world(_rank_body, WORLD)


def _q(x: torch.Tensor, fmt: mxcomm.BlockFormat) -> torch.Tensor:
    return mxcomm.decode(mxcomm.encode(x, fmt, backend="torch"), dtype=torch.float32, backend="torch")


def _expected_two_shot(segment: int | None) -> torch.Tensor:
    """Rotate each segment (padded to whole blocks), two-shot it with the plain format, un-rotate."""
    plain, block, seed = ROTATED.with_options(rotation_seed=None), ROTATED.block_size, ROTATED.rotation_seed
    flats = [_input(r).reshape(-1) for r in range(WORLD)]
    numel = flats[0].numel()
    out = torch.empty(numel, dtype=torch.bfloat16)
    for s0, s1 in segment_bounds(numel, segment or 1 << 30):
        length = s1 - s0
        padded_len = -(-length // block) * block
        rotated = []
        for f in flats:
            p = torch.zeros(1, padded_len)
            p[0, :length] = f[s0:s1].float()
            rotated.append(rotate(p, seed, block)[0])
        summed = torch.empty(padded_len)
        for c, (a, b) in enumerate(chunk_bounds(padded_len, WORLD, block)):
            if b <= a:
                continue
            acc = torch.zeros(b - a)
            for j in range(WORLD):
                if j != c:
                    acc += _q(rotated[j][a:b], plain)
            acc += rotated[c][a:b]  # the owner's chunk enters exactly, last
            summed[a:b] = _q(acc, plain)
        out[s0:s1] = saturating_cast(unrotate(summed.view(1, -1), seed, block)[0, :length], torch.bfloat16)
    return out.view(SHAPE)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


@pytest.mark.parametrize("algorithm,segment", CASES)
@pytest.mark.parametrize("rotated", [True, False])
def test_bitwise_identical_on_every_rank(ranks, algorithm, segment, rotated) -> None:
    key = (algorithm, segment, rotated)
    for res in ranks[1:]:
        assert torch.equal(_bits(res[key]["out"]), _bits(ranks[0][key]["out"]))


def test_one_shot_is_decode_sum_of_rotated_shards(ranks) -> None:
    # the collectives encode the flattened tensor: blocks (and rotations) run across rows
    shards = [mxcomm.encode(_input(r).reshape(-1), ROTATED, backend="torch") for r in range(WORLD)]
    expected = mxcomm.decode_sum(shards, backend="torch").view(SHAPE)
    assert torch.equal(_bits(ranks[0][("allgather", None, True)]["out"]), _bits(expected))


@pytest.mark.parametrize("segment", [None, SEGMENT])
def test_two_shot_stays_rotated_through_both_phases(ranks, segment) -> None:
    assert torch.equal(_bits(ranks[1][("two_shot", segment, True)]["out"]), _bits(_expected_two_shot(segment)))


@pytest.mark.parametrize("algorithm", ["allgather", "two_shot"])
def test_rotation_lowers_the_error_on_outlier_channels(ranks, algorithm) -> None:
    exact = sum(_input(r).double() for r in range(WORLD))

    def err(rotated: bool) -> float:
        return float((ranks[0][(algorithm, None, rotated)]["out"].double() - exact).norm())

    assert err(True) < 0.85 * err(False)


@pytest.mark.parametrize("algorithm,segment", CASES)
def test_accounting_matches_the_formula(ranks, algorithm, segment) -> None:
    (rec,) = ranks[2][(algorithm, segment, True)]["records"]
    # segment None: the default segment length, larger than this tensor
    predicted = all_reduce_wire_bytes(algorithm, ROTATED, SHAPE[0] * SHAPE[1], 2, WORLD, segment or 1 << 30)
    assert rec["bytes_sent"] == predicted.sent
    assert rec["format"] == ROTATED.name and rec["algorithm"] == algorithm
