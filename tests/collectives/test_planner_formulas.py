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
With a gather format ``g`` two-shot sends ``(n-1) sum_seg (P_c + G_c)`` (chunks rounded to whole blocks
of both formats) and prices the all-gather phase's ``enc(N/n, k) + dec(N, nk)`` with ``g``'s codec
cost -- or the whole codec work with the pair's (``"<fmt>+<gather>"``) when the model has one.
The payload sizes are derived here from the format's definition (codes of whole blocks, one scale
per block, 4 bytes of tensor scale), not from ``packed_nbytes``. Element counts are multiples of
``n`` and of the block size, where the documented (n-1)N/n and N/n are whole numbers.
"""

from __future__ import annotations

import math
from dataclasses import replace

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


def slot_bytes(fmt: mxcomm.BlockFormat, m: int, n: int, block: int | None = None) -> int:
    """P_c(m): a two-shot chunk's slot, the payload of ceil(m/n) elements rounded up to whole blocks."""
    block = block or fmt.block_size
    chunk = ceil_div(ceil_div(m, n), block) * block
    return packed_bytes(fmt, chunk)


def segment_sizes(numel: int, segment: int) -> list[int]:
    return [min(segment, numel - s) for s in range(0, numel, segment)]


def documented_prediction(model: CostModel, algorithm: str, fmt: mxcomm.BlockFormat, numel: int, elem_size: int,
                          n: int, segment: int, gather: mxcomm.BlockFormat | None = None) -> float:
    alpha, beta = model.alpha, model.beta
    g = gather or fmt
    pair = model.codec.get(f"{fmt.name}+{g.name}") if gather is not None else None

    def enc(m: float, calls: int, f: mxcomm.BlockFormat = fmt) -> float:
        c = pair or model.codec_for(f)
        return calls * c.call_s + m * c.encode_s_per_elem

    def dec(m: float, calls: int, f: mxcomm.BlockFormat = fmt) -> float:
        c = pair or model.codec_for(f)
        return calls * (c.call_s if c.decode_call_s is None else c.decode_call_s) + m * c.decode_s_per_elem

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
        block = math.lcm(fmt.block_size, g.block_size)
        comm = (n - 1) * sum(slot_bytes(fmt, m, n, block) + slot_bytes(g, m, n, block) for m in sizes) * beta
        others, own = (n - 1) * numel / n, numel / n
        codec = enc(others, (n - 1) * k) + dec(others, k) + enc(own, k, g) + dec(numel, n * k, g)
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


GATHER_MODEL = (CostModel(alpha=20e-6, beta=8 / 1e9).with_codec("mxfp4", CodecCost(1e-9, 4e-9, 10e-6))
                .with_codec("mxfp6_e2m3", CodecCost(3e-9, 5e-9, 20e-6, 7e-6)))


@pytest.mark.parametrize("fmt,gather", [("mxfp4", "mxfp6_e2m3"), ("mxfp4", "fp4_e2m1_b64"), ("nvfp4", "mxint8")])
@pytest.mark.parametrize("n", [2, 3, 8])
@pytest.mark.parametrize("blocks_per_rank,segment", [(1, 1 << 20), (4096, 1 << 20), (3000, 12_288)])
@pytest.mark.parametrize("pair", [False, True])
def test_two_shot_with_a_gather_format(fmt, gather, n, blocks_per_rank, segment, pair) -> None:
    f, g = mxcomm.get_format(fmt), mxcomm.get_format(gather)
    model = GATHER_MODEL
    if pair:  # a pair the estimator learnt as one: priced as a whole
        model = replace(model, codec={**model.codec, f"{f.name}+{g.name}": CodecCost(8e-9, 9e-9, 40e-6)})
    numel = n * blocks_per_rank * 64
    block = math.lcm(f.block_size, g.block_size)
    seg = ceil_div(segment, block) * block  # as all_reduce rounds it
    want = documented_prediction(model, "two_shot", f, numel, 2, n, seg, g)
    got = model.predict("two_shot", f, numel, 2, n, seg, g)
    assert math.isclose(got, want, rel_tol=1e-12, abs_tol=0.0), (got, want)
    # the format itself as the gather format is no gather format
    assert model.predict("two_shot", f, numel, 2, n, seg, f) == model.predict("two_shot", f, numel, 2, n, seg)
    # auto weighs two-shot with the gather format
    plan = plan_all_reduce(model, f, numel, 2, n, g)
    assert plan.predicted["two_shot"] == model.predict("two_shot", f, numel, 2, n, 1 << 20, g)
    assert plan.predicted["allgather"] == model.predict("allgather", f, numel, 2, n, 1 << 20)


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
