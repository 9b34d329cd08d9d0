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
    # invalid arguments on one rank only, or ranks that disagree: every rank raises at once
    one_rank = {
        "bad_channel": lambda: all_reduce_with_outliers(_input(rank), FMT, [SHAPE[-1]] if rank == 1 else CHANNELS),
        "float_channels": lambda: all_reduce_with_outliers(_input(rank), FMT, [1.5] if rank == 2 else CHANNELS),
        "not_a_tensor": lambda: all_reduce_with_outliers([1.0] if rank == 0 else _input(rank), FMT, CHANNELS),
        "other_channels": lambda: all_reduce_with_outliers(_input(rank), FMT, CHANNELS[:-1] if rank == 2 else CHANNELS),
        "other_shape": lambda: all_reduce_with_outliers(_input(rank)[: 5 if rank == 1 else 6], FMT, CHANNELS),
    }
    for name, call in one_rank.items():
        try:
            call()
            result[f"one_rank:{name}"] = None
        except mxcomm.MxcommError as e:
            result[f"one_rank:{name}"] = type(e).__name__
    after = _input(rank)
    all_reduce_with_outliers(after, FMT, CHANNELS, algorithm="allgather")
    result["after"] = after
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
    # the channel exchange and its handshake descriptor
    assert dense[0]["bytes_sent"] == (WORLD - 1) * (mxcomm.collectives.DESCRIPTOR_NBYTES + dense_bytes)
    assert dense[0]["logical_bytes"] == 0
    summary = ranks[0]["summary"]
    assert summary["bytes_sent"] == compressed[0]["bytes_sent"] + dense[0]["bytes_sent"]
    assert summary["ratio"] == pytest.approx(compressed[0]["logical_bytes"] / summary["bytes_sent"])


def test_bad_channel_raises_format_error(ranks) -> None:
    assert "outlier channels" in ranks[0]["bad_channel_error"]


@pytest.mark.parametrize("name, bad_rank, raised", [
    ("bad_channel", 1, "FormatError"), ("float_channels", 2, "FormatError"), ("not_a_tensor", 0, "ArgumentTypeError"),
    ("other_channels", None, None), ("other_shape", None, None),
])
def test_bad_arguments_on_one_rank_raise_on_every_rank(ranks, name, bad_rank, raised) -> None:
    # before: the rank at fault raised alone and the others waited in the channel exchange until the timeout
    for r, res in enumerate(ranks):
        expected = raised if r == bad_rank else "CollectiveMismatchError"
        assert res[f"one_rank:{name}"] == expected, f"rank {r}"
    for res in ranks:  # and the group still works
        assert torch.equal(res["after"].view(torch.int16), ranks[0]["out"].view(torch.int16))


def test_channel_index_sorts_and_dedups() -> None:
    assert channel_index([7, 3, 7], 8).tolist() == [3, 7]
    with pytest.raises(mxcomm.FormatError):
        channel_index([-1], 8)
    for not_integers in ([1.5], ["a"], torch.tensor([1.0]), torch.tensor([True])):
        with pytest.raises(mxcomm.FormatError, match="integers|ints"):
            channel_index(not_integers, 8)
    assert channel_index(torch.tensor([5, 1], dtype=torch.int32), 8).tolist() == [1, 5]
