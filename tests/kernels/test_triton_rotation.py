"""The random Hadamard rotation fused into the Triton kernels, against the torch reference.

For a rotated format the Triton backend gets the format itself (not the plain
one) and rotates inside its encode kernel / un-rotates inside its decode and
decode_sum kernels; the reference rotates in the front-end (mxcomm.kernels.api).
Payload bytes and decoded values must be identical (any NaN == any NaN).
Runs in Triton's interpreter without a GPU, like tests/kernels/test_triton.py,
whose helpers (and TRITON_INTERPRET set-up) it shares.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import logging  # noqa: E402
import math  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("triton", reason="Triton is not installed (pip install 'mxcomm[triton]')")

import mxcomm  # noqa: E402
from mxcomm.formats import FloatElement, IntElement  # noqa: E402
from mxcomm.kernels import backend_status, resolve_backend  # noqa: E402
from mxcomm.kernels.dispatch import fuses_rotation  # noqa: E402
from tests.kernels.test_triton import (  # noqa: E402
    DEVICE,
    DTYPES,
    _gen,
    _to_device,
    assert_same_decode,
    assert_same_encoding,
    assert_same_values,
    mixed_input,
)

_STATUS = backend_status("triton", DEVICE)
pytestmark = [
    pytest.mark.skipif(_STATUS is not None, reason=f"Triton backend cannot run on {DEVICE}: {_STATUS}"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

SEED = 0x0123_4567_89AB_CDEF  # both 32-bit seed words non-zero


def rotated(name: str | mxcomm.BlockFormat, seed: int = SEED, **options) -> mxcomm.BlockFormat:
    return mxcomm.get_format(name).with_options(rotation_seed=seed, **options)


def assert_same_decode_sum(packed: list[mxcomm.Packed], dtype: torch.dtype | None = None) -> None:
    got = mxcomm.decode_sum([_to_device(p) for p in packed], dtype=dtype, backend="triton")
    assert_same_values(got, mxcomm.decode_sum(packed, dtype=dtype, backend="torch"))


# -- which path ran ----------------------------------------------------------------------
def test_backend_gets_the_rotated_format(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    backend = resolve_backend("triton", DEVICE)
    fmt = rotated("mxfp4")
    assert fuses_rotation(backend, fmt) and not fuses_rotation(backend, mxcomm.get_format("mxfp4"))
    seen: list[mxcomm.BlockFormat] = []
    original = type(backend).encode_blocks

    def spy(self, x2d, f, seed):
        seen.append(f)
        return original(self, x2d, f, seed)

    monkeypatch.setattr(type(backend), "encode_blocks", spy)
    caplog.set_level(logging.DEBUG, logger="mxcomm.kernels")
    x = mixed_input((2, 40), torch.float32, 1, specials=False)
    p = mxcomm.encode(x, fmt, backend="triton")
    mxcomm.decode(p, backend="triton")
    mxcomm.decode_sum([p, p], backend="triton")
    assert seen == [fmt]  # the rotated format itself, and the unpadded rows
    fused = [r.getMessage() for r in caplog.records if "rotation fused in the backend" in r.getMessage()]
    assert len(fused) == 3, [r.getMessage() for r in caplog.records]
    caplog.clear()
    mxcomm.encode(x.cpu(), fmt, backend="torch")
    assert any("rotation in the front-end" in r.getMessage() for r in caplog.records)


def test_blocks_larger_than_a_tile_are_rotated_in_the_front_end(caplog: pytest.LogCaptureFixture) -> None:
    """Blocks above the kernels' 2048-element tile: the front-end rotates, the kernels encode plain."""
    fmt = mxcomm.BlockFormat("big", IntElement(4), block_size=4096, rotation_seed=3)
    backend = resolve_backend("triton", DEVICE)
    assert not fuses_rotation(backend, fmt)
    with pytest.raises(mxcomm.FormatError, match="front-end"):
        backend.encode_blocks(torch.ones(1, 8, device=DEVICE), fmt, None)
    caplog.set_level(logging.DEBUG, logger="mxcomm.kernels")
    ref = assert_same_encoding(mixed_input((1, 4100), torch.float32, 2, specials=False), fmt)
    assert any("rotation in the front-end" in r.getMessage() for r in caplog.records)
    assert_same_decode(ref)


# -- formats, dtypes, ragged rows, NaN/Inf blocks --------------------------------------------
FORMATS = ["mxfp4_e2m1", "int4", "fp5_e2m2", "mxfp8_e4m3", "nvfp4", "int4_b64", "fp4_e2m1_b16", "int6_fp16"]


@pytest.mark.parametrize("name", FORMATS)
def test_formats_bytes_and_values(name: str) -> None:
    fmt = rotated(name)
    for i, dtype in enumerate(DTYPES):
        # ragged rows (70 is no multiple of 16/32/64) with NaN / +-Inf / subnormals / -0 in some blocks
        x = mixed_input((3, 70), dtype, seed=10 + i)
        ref = assert_same_encoding(x, fmt)
        assert_same_decode(ref)
        assert_same_decode(ref, dtype=torch.float16 if dtype != torch.float16 else torch.float32)
        # rows of whole blocks (the contiguous fast path) and a transposed view of them
        clean = mixed_input((2, 2 * fmt.block_size), dtype, seed=20 + i, specials=False)
        assert_same_decode(assert_same_encoding(clean, fmt))
        assert_same_decode(assert_same_encoding(clean.t(), fmt, axis=0))
    shards = [assert_same_encoding(mixed_input((3, 70), torch.bfloat16, seed=30 + s), fmt) for s in range(3)]
    for dtype in DTYPES:
        assert_same_decode_sum(shards, dtype)


@pytest.mark.parametrize("name", ["mxfp4_e2m1", "int4", "nvfp4", "fp5_e2m2_b16"])
def test_stochastic_rounding(name: str) -> None:
    fmt = rotated(name, rounding="stochastic")
    for i, dtype in enumerate(DTYPES):
        x = mixed_input((3, 50), dtype, seed=40 + i)
        a = assert_same_encoding(x, fmt, seed=1 + i)
        assert_same_decode(a)
        b = assert_same_encoding(x, fmt, seed=100 + i)
        assert not torch.equal(a.codes, b.codes)  # the rounding seed matters...
        assert_same_decode_sum([a, b])


def test_rotation_seed_is_honoured() -> None:
    x = mixed_input((2, 64), torch.float32, seed=3, specials=False)
    payloads = set()
    for seed in (0, 1, SEED, 2**64 - 1):
        ref = assert_same_encoding(x, rotated("mxfp8_e4m3", seed))
        assert_same_decode(ref)
        payloads.add(bytes(ref.payload().tolist()))
    assert len(payloads) == 4


# -- block sizes, scale types, axes -----------------------------------------------------------
@pytest.mark.parametrize("block_size", [2, 16, 32, 64, 256, 2048])
def test_block_sizes(block_size: int) -> None:
    length = 2 * block_size + block_size // 2 + 1 if block_size > 2 else 7  # ragged last block
    rows = 1 if block_size == 2048 else 3
    for elem, scale in [(FloatElement(4, 3), "e8m0"), (IntElement(8), "fp16"), (FloatElement(2, 1), "e4m3")]:
        fmt = mxcomm.BlockFormat("r", elem, block_size=block_size, scale=scale, rotation_seed=SEED)
        # float32 inputs: full 24-bit significands, so every butterfly sum rounds
        ref = assert_same_encoding(mixed_input((rows, length), torch.float32, seed=block_size), fmt)
        assert_same_decode(ref)
        assert_same_decode_sum([ref, ref])


@pytest.mark.parametrize("scale", ["e4m3", "bf16", "fp32"])
def test_float_scales_with_tensor_scale(scale: str) -> None:
    fmt = mxcomm.BlockFormat("t", FloatElement(2, 1), block_size=16, scale=scale, tensor_scale=True, rotation_seed=5)
    for i, dtype in enumerate(DTYPES):
        ref = assert_same_encoding(mixed_input((3, 37), dtype, seed=50 + i), fmt)
        assert_same_decode(ref)


def test_axes() -> None:
    x = mixed_input((3, 5, 37), torch.bfloat16, seed=9)
    for name in ("mxfp6_e3m2", "nvfp4"):
        fmt = rotated(name)
        for axis in (0, 1, -1):
            ref = assert_same_encoding(x, fmt, axis=axis)
            assert_same_decode(ref)
            assert_same_decode_sum([ref, ref, ref], torch.float32)


@pytest.mark.parametrize("shape", [(), (1,), (0, 5), (4, 0)])
def test_small_and_empty_shapes(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=_gen(1)).to(DEVICE)
    for name in ("mxfp4", "nvfp4"):
        ref = assert_same_encoding(x, rotated(name))
        y = mxcomm.decode(_to_device(ref), backend="triton")
        assert y.shape == x.shape
        assert_same_values(y, mxcomm.decode(ref, backend="torch"))


# -- float32 edge cases of the butterflies ----------------------------------------------------
def test_overflow_subnormals_and_saturation() -> None:
    """Butterfly sums that overflow float32 (-> NaN block), products with 1/B that round into the
    subnormals, and decoded values above the fp16 / bf16 range (saturating casts)."""
    big = torch.full((1, 32), 3.0e38)
    big[0, 1::2] = -3.0e38  # + and - halves: some butterfly sums overflow, others cancel
    tiny = torch.tensor([[2.0**-149, -(2.0**-149), 3 * 2.0**-149, 2.0**-127] * 8])
    huge = torch.randn(2, 64, generator=_gen(4)) * 1.0e5
    for name in ("mxfp8_e4m3", "int4", "nvfp4", "mxint8"):
        fmt = rotated(name)
        for x in (big, tiny, huge, torch.cat([big, tiny]), torch.zeros(2, 32)):
            ref = assert_same_encoding(x.to(DEVICE), fmt)
            for dtype in DTYPES:
                assert_same_decode(ref, dtype)
    y = mxcomm.decode(_to_device(assert_same_encoding(huge.to(DEVICE), rotated("mxint8"))), dtype=torch.float16,
                      backend="triton")
    assert bool(y.isfinite().all()) and float(y.abs().max()) == 65504.0


@pytest.mark.parametrize("name", ["mxfp8_e5m2", "mxfp4_e2m1", "nvfp4", "int5"])
def test_decode_of_arbitrary_payloads(name: str) -> None:
    """Random bytes: inf/NaN element codes, NaN scales -- NaN and inf - inf spread through the butterflies."""
    fmt = rotated(name)
    shape = (3, 50)
    buf = torch.randint(0, 256, (fmt.packed_nbytes(shape),), generator=_gen(7), dtype=torch.uint8)
    if fmt.tensor_scale:
        buf[-4:] = torch.tensor([0.75], dtype=torch.float32).view(torch.uint8)
    packed = [mxcomm.Packed.from_payload(buf, fmt, shape, dtype) for dtype in DTYPES]
    for p in packed:
        assert_same_decode(p)
    other = torch.randint(0, 256, buf.shape, generator=_gen(8), dtype=torch.uint8)
    if fmt.tensor_scale:
        other[-4:] = buf[-4:]
    assert_same_decode_sum([packed[0], mxcomm.Packed.from_payload(other, fmt, shape, torch.float32)])


# -- decode_sum --------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 4])
def test_decode_sum_of_gathered_shards(n: int) -> None:
    """Shards read in place from one all-gathered buffer; the sum is un-rotated once, in list order."""
    fmt = rotated("mxfp6_e2m3")
    shape = (3, 45)
    refs = [mxcomm.encode(mixed_input(shape, torch.float32, seed=60 + i), fmt, backend="torch") for i in range(n)]
    gathered = torch.stack([p.payload() for p in refs]).to(DEVICE)
    views = [mxcomm.Packed.from_payload(gathered[i], fmt, shape, torch.float32) for i in range(n)]
    for dtype in DTYPES:
        got = mxcomm.decode_sum(views, dtype=dtype, backend="triton")
        assert_same_values(got, mxcomm.decode_sum(refs, dtype=dtype, backend="torch"))
    assert_same_decode_sum(refs[::-1])


def test_decode_sum_cancellation_keeps_order() -> None:
    # big + small - big in float32 depends on the order of the shards, before the inverse rotation
    fmt = rotated("mxfp8_e4m3")
    shape = (1, 32)
    big = mxcomm.encode(torch.full(shape, 2.0**30), fmt, backend="torch")
    small = mxcomm.encode(torch.linspace(-1, 1, 32).reshape(shape), fmt, backend="torch")
    minus_big = mxcomm.encode(torch.full(shape, -(2.0**30)), fmt, backend="torch")
    for order in ([big, small, minus_big], [big, minus_big, small], [small, big, minus_big]):
        assert_same_decode_sum(order)
    assert math.isfinite(float(mxcomm.decode_sum([_to_device(p) for p in (big, minus_big)], backend="triton")[0, 0]))
