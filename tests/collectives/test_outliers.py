"""Outlier channels on real gloo ranks: exact channels, compressed rest, honest accounting."""

from __future__ import annotations

import pytest
import torch

import mxcomm
from mxcomm.collectives.outliers import all_reduce_with_outliers, channel_index
from tests.collectives._harness import run_world

pytestmark = pytest.mark.multiprocess

WORLD = 3
SHAPE = (6, 96)
CHANNELS = [5, 40, 41, 90]
FMT = "mxfp4_e2m1"


def _input(rank: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(SHAPE, generator=g)
    x[:, CHANNELS] *= 300.0  # consistent outlier features
    return x.to(torch.bfloat16)


def _rank_body(rank: int, world: int) -> dict:
    result: dict = {}
    x = _input(rank)
    with mxcomm.track_comm() as stats:
        all_reduce_with_outliers(x, FMT, CHANNELS, algorithm="allgather")
    result["out"] = x
    result["records"] = [r.as_dict() for r in stats.records]
    result["summary"] = stats.summary()
    plain = _input(rank)
    mxcomm.all_reduce(plain, FMT, algorithm="allgather")
    result["plain"] = plain
    try:
        all_reduce_with_outliers(_input(rank), FMT, [SHAPE[-1]])
    except mxcomm.FormatError as e:
        result["bad_channel_error"] = str(e)
    return result


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run_world(_rank_body, WORLD)


def _exact_sum() -> torch.Tensor:
    return sum(_input(r).to(torch.float64) for r in range(WORLD))


def test_identical_on_every_rank(ranks) -> None:
    for res in ranks[1:]:
        assert torch.equal(res["out"].view(torch.int16), ranks[0]["out"].view(torch.int16))


def test_outlier_channels_are_exact_and_rest_is_the_compressed_sum(ranks) -> None:
    out = ranks[0]["out"]
    idx = torch.tensor(CHANNELS)
    # channels: fp32 sum of the bf16 partials in rank order, cast once
    expect = _input(0)[:, idx].float()
    for r in range(1, WORLD):
        expect += _input(r)[:, idx].float()
    assert torch.equal(out[:, idx], expect.to(torch.bfloat16))
    # the rest: exactly what mxcomm's one-shot gives for the zeroed partials
    rest = [_input(r).index_fill(-1, idx, 0) for r in range(WORLD)]
    expect_rest = mxcomm.decode_sum([mxcomm.encode(t, FMT) for t in rest])
    others = torch.ones(SHAPE[-1], dtype=torch.bool)
    others[idx] = False
    assert torch.equal(out[:, others], expect_rest[:, others])


def test_outliers_beat_plain_compression(ranks) -> None:
    exact = _exact_sum()
    err_outliers = (ranks[0]["out"].double() - exact).pow(2).sum()
    err_plain = (ranks[0]["plain"].double() - exact).pow(2).sum()
    assert err_outliers < 0.5 * err_plain


def test_accounting_counts_the_dense_channels(ranks) -> None:
    records = ranks[0]["records"]
    dense = [r for r in records if r["op"] == "outlier_channels"]
    compressed = [r for r in records if r["op"] == "all_reduce"]
    assert len(dense) == 1 and len(compressed) == 1
    dense_bytes = SHAPE[0] * len(CHANNELS) * 2  # bf16
    assert dense[0]["bytes_sent"] == (WORLD - 1) * dense_bytes
    assert dense[0]["logical_bytes"] == 0
    summary = ranks[0]["summary"]
    assert summary["bytes_sent"] == compressed[0]["bytes_sent"] + (WORLD - 1) * dense_bytes
    assert summary["ratio"] == pytest.approx(compressed[0]["logical_bytes"] / summary["bytes_sent"])


def test_bad_channel_raises_format_error(ranks) -> None:
    assert "outlier channels" in ranks[0]["bad_channel_error"]


def test_channel_index_sorts_and_dedups() -> None:
    assert channel_index([7, 3, 7], 8).tolist() == [3, 7]
    with pytest.raises(mxcomm.FormatError):
        channel_index([-1], 8)
