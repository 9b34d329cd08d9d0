"""``CostModel.predict`` against the formulas of docs/collectives.md ("Planner"), written out here.

For ``n`` ranks, ``N`` elements of ``b`` bytes, ``k`` pipeline segments, packed bytes ``P(m)`` of
``m`` elements and two-shot slot bytes ``P_c(m)`` (the payload of ceil(m/n) elements rounded up to
whole blocks), codec costs ``enc(m, calls) = calls * call_s + m * encode_s_per_elem`` (``dec``
alike), one codec call per segment and chunk:

* none:      ``alpha + 2(n-1)/n N b beta``
* allgather: ``alpha + (n-1) sum_seg P beta + enc(N, k) + dec(nN, k)``
* two_shot:  ``2 alpha + 2(n-1) sum_seg P_c beta + enc((n-1)N/n, (n-1)k) + dec((n-1)N/n, k)
  + enc(N/n, k) + dec(N, nk)``

and with k > 1 segments a compressed prediction is ``latency + max(comm, codec) + codec / k``.
The payload sizes are derived here from the format's definition (codes of whole blocks, one scale
per block, 4 bytes of tensor scale), not from ``packed_nbytes``. Element counts are multiples of
``n`` and of the block size, where the documented (n-1)N/n and N/n are whole numbers.
"""

from __future__ import annotations

import math

import pytest

import mxcomm
from mxcomm.collectives import CodecCost, CostModel, plan_all_reduce
from mxcomm.collectives.algorithms import COMPRESSED

SCALE_BYTES = {"e8m0": 1, "e4m3": 1, "fp16": 2, "bf16": 2, "fp32": 4}


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def packed_bytes(fmt: mxcomm.BlockFormat, m: int) -> int:
    """P(m): the payload of m elements, from the format's definition."""
    blocks = ceil_div(m, fmt.block_size)
    code_bytes = ceil_div(blocks * fmt.block_size * fmt.element.bits, 8)
    return code_bytes + blocks * SCALE_BYTES[fmt.scale] + (4 if fmt.has_tensor_scale else 0)


def slot_bytes(fmt: mxcomm.BlockFormat, m: int, n: int) -> int:
    """P_c(m): a two-shot chunk's slot, the payload of ceil(m/n) elements rounded up to whole blocks."""
    chunk = ceil_div(ceil_div(m, n), fmt.block_size) * fmt.block_size
    return packed_bytes(fmt, chunk)


def segment_sizes(numel: int, segment: int) -> list[int]:
    return [min(segment, numel - s) for s in range(0, numel, segment)]


def documented_prediction(model: CostModel, algorithm: str, fmt: mxcomm.BlockFormat, numel: int, elem_size: int,
                          n: int, segment: int) -> float:
    alpha, beta, c = model.alpha, model.beta, model.codec_for(fmt)

    def enc(m: float, calls: int) -> float:
        return calls * c.call_s + m * c.encode_s_per_elem

    def dec(m: float, calls: int) -> float:
        return calls * c.call_s + m * c.decode_s_per_elem

    if algorithm == "none":
        return alpha + 2 * (n - 1) / n * numel * elem_size * beta
    sizes = segment_sizes(numel, segment)
    k = len(sizes)
    if algorithm == "allgather":
        latency = alpha
        comm = (n - 1) * sum(packed_bytes(fmt, m) for m in sizes) * beta
        codec = enc(numel, k) + dec(n * numel, k)
    else:
        latency = 2 * alpha
        comm = 2 * (n - 1) * sum(slot_bytes(fmt, m, n) for m in sizes) * beta
        others, own = (n - 1) * numel / n, numel / n
        codec = enc(others, (n - 1) * k) + dec(others, k) + enc(own, k) + dec(numel, n * k)
    if k == 1:
        return latency + comm + codec
    return latency + max(comm, codec) + codec / k


MODELS = {
    "default": CostModel(),
    "slow_link": CostModel(alpha=200e-6, beta=8 / 1e8, default_codec=CodecCost(3e-9, 2e-9, 30e-6)),
    "fast_link_slow_codec": CostModel(alpha=5e-6, beta=8 / 100e9, default_codec=CodecCost(2e-8, 1e-8, 300e-6)),
    "per_format_codec": CostModel(alpha=20e-6, beta=8 / 10e9).with_codec("mxfp4", CodecCost(1e-9, 4e-9, 10e-6)),
}


@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS.keys())
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "mxfp8_e4m3", "int8_fp16", "mxfp6_e3m2"])
@pytest.mark.parametrize("n", [2, 3, 4, 8])
@pytest.mark.parametrize("algorithm", ["none", "allgather", "two_shot"])
@pytest.mark.parametrize(
    "blocks_per_rank,segment",
    [(1, 1 << 20), (96, 1 << 20), (4096, 1 << 20), (8192, 1 << 16), (3000, 12_288)],
    ids=["one-block", "small", "one-segment", "many-segments", "uneven-segments"],
)
def test_predict_matches_the_documented_formulas(model, fmt, n, algorithm, blocks_per_rank, segment) -> None:
    f = mxcomm.get_format(fmt)
    numel = n * blocks_per_rank * f.block_size
    for elem_size in (2, 4):
        want = documented_prediction(model, algorithm, f, numel, elem_size, n, segment)
        got = model.predict(algorithm, f, numel, elem_size, n, segment)
        assert math.isclose(got, want, rel_tol=1e-12, abs_tol=0.0), (got, want)


def test_one_rank_sends_nothing() -> None:
    model = MODELS["slow_link"]
    f = mxcomm.get_format("mxfp4")
    assert model.predict("none", f, 1 << 24, 2, 1) == 0.0
    for numel in (0, 1, 1 << 24):
        assert plan_all_reduce(model, f, numel, 2, 1).algorithm == "none"


@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS.keys())
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "mxfp8_e4m3"])
@pytest.mark.parametrize("n", [2, 4, 8])
def test_tiny_messages_stay_uncompressed(model, fmt, n) -> None:
    """A handful of elements: the codec's per-call cost and the second call latency dwarf the bytes."""
    f = mxcomm.get_format(fmt)
    for numel in (0, 1, 16, f.block_size * n):
        plan = plan_all_reduce(model, f, numel, 2, n)
        assert plan.algorithm == "none", plan.reason


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "mxfp8_e4m3"])
@pytest.mark.parametrize("n", [2, 4, 8])
def test_huge_messages_on_a_slow_link_are_compressed(fmt, n) -> None:
    """256 MiB of bf16 over 100 Mbit/s per rank: seconds of transfer against milliseconds of codec."""
    f = mxcomm.get_format(fmt)
    plan = plan_all_reduce(MODELS["slow_link"], f, 1 << 27, 2, n)
    assert plan.algorithm in COMPRESSED, plan.reason
    ratio = 2 * (1 << 27) / f.packed_nbytes((1 << 27,))
    # the wire time dominates: the prediction is close to the uncompressed one over the byte ratio
    assert plan.predicted[plan.algorithm] < 1.1 / ratio * plan.predicted["none"]
