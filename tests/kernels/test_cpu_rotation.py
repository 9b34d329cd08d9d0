"""Rotated formats (``rotation_seed``) on the fast CPU backend against the torch reference.

The cpu backend rotates blocks of up to ``cpu_backend.ROTATION_MAX_BLOCK`` elements inside its
kernels (``mxcomm.kernels.dispatch.fuses_rotation``); the torch backend gets them rotated by the API front-end. Both
must give the same bytes (codes, scales, tensor scale) and the same decoded values, bit for bit
(any NaN equals any NaN), for every layout the kernels special-case: the paired 4/8-bit encode
and decode paths of blocks of 16, 32 and 64, the general loops of other widths and block sizes,
ragged rows, the row sign table and per-block hashed signs, several threads.
"""

from __future__ import annotations

import ctypes
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mxcomm
from mxcomm.errors import FormatError
from mxcomm.formats import BlockFormat, FloatElement, IntElement
from mxcomm.kernels import backend_status, cpu_backend, reference
from mxcomm.kernels.counter_rng import seed_key, stochastic_bits
from mxcomm.kernels.dispatch import fuses_rotation, resolve_backend
from mxcomm.kernels.rotation import hadamard_blocks_reference, rotate
from tests.kernels.test_cpu_backend import (
    assert_same_packed,
    assert_same_values,
    check_random_payloads_decode,
    split_into_ranges,
)
from tests.kernels.test_reference_properties import make_values

_STATUS = backend_status("cpu", "cpu")
pytestmark = pytest.mark.skipif(_STATUS is not None, reason=f"cpu backend cannot run here: {_STATUS}")

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FORMATS = ("mxfp4", "int4", "fp5_e2m2", "mxfp8_e4m3", "nvfp4", "int4_b64", "fp4_e2m1_b16", "int6_fp16")
ROTATION_SEEDS = (0, 1234, 2**63 + 5, 2**64 - 1)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rotated(name: str | BlockFormat, seed: int = 1234, **options) -> BlockFormat:
    return mxcomm.get_format(name).with_options(rotation_seed=seed, **options)


def encode_both(x: torch.Tensor, fmt: BlockFormat, *, axis: int = -1, seed: int = 0, **options):
    got = mxcomm.encode(x, fmt, axis=axis, backend="cpu", generator=_gen(seed), **options)
    want = mxcomm.encode(x, fmt, axis=axis, backend="torch", generator=_gen(seed), **options)
    assert_same_packed(got, want)
    return got, want


def check_decodes(got: mxcomm.Packed, want: mxcomm.Packed, dtypes=DTYPES) -> None:
    for dtype in dtypes:
        assert_same_values(mxcomm.decode(got, dtype=dtype, backend="cpu"), mxcomm.decode(want, dtype=dtype, backend="torch"))


def check_decode_sum(parts: list[mxcomm.Packed], dtypes=DTYPES) -> None:
    for dtype in dtypes:
        want = mxcomm.decode_sum(parts, dtype=dtype, backend="torch")
        assert_same_values(mxcomm.decode_sum(parts, dtype=dtype, backend="cpu"), want)


def awkward(shape: tuple[int, int], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Outlier-heavy activations with NaN, +-inf, signed zeros, the dtype's max and subnormals
    (rows 0-4 of a row of at least 64 elements), the rest untouched."""
    x = make_values("outliers", shape, 0, seed).to(dtype)
    rows, length = shape
    if rows >= 5 and length >= 64:
        info = torch.finfo(dtype)
        x[0, 3] = math.nan
        x[1, length - 1] = math.inf  # in the last (maybe ragged) block
        x[2, 40] = -math.inf
        x[3, :32] = 0.0
        x[3, 33:64:2] = -0.0
        x[4, 10] = info.max
        x[4, 12] = -info.max
        x[4, 50:60] = info.tiny / 4  # subnormals
        x[4, 60:64] = -info.tiny * 3
    return x


# -- the hook and its limit ----------------------------------------------------------------------
def test_fuses_rotation_up_to_the_block_limit() -> None:
    be = resolve_backend("cpu", torch.device("cpu"))
    assert fuses_rotation(be, rotated("mxfp4"))
    assert fuses_rotation(be, rotated("int4", block_size=cpu_backend.ROTATION_MAX_BLOCK))
    assert not fuses_rotation(be, rotated("int4", block_size=2 * cpu_backend.ROTATION_MAX_BLOCK))
    assert not fuses_rotation(be, mxcomm.get_format("mxfp4"))  # nothing to rotate
    assert cpu_backend.cpu_format(rotated("mxfp4", 7)).rotate == 1
    assert cpu_backend.cpu_format(rotated("mxfp4", 2**64 - 1)).rotation_seed == 2**64 - 1
    assert cpu_backend.cpu_format(mxcomm.get_format("mxfp4")).rotate == 0


def test_fused_formats_are_taken_directly_and_larger_blocks_refused() -> None:
    be = resolve_backend("cpu", torch.device("cpu"))
    fmt = rotated("mxfp4")
    x = make_values("normal", (3, 64), 0, 2).float()
    parts = be.encode_blocks(x, fmt, None)
    want = reference.encode_blocks(rotate(x, 1234, 32), fmt.with_options(rotation_seed=None))
    assert torch.equal(parts.codes, want.codes) and torch.equal(parts.scales, want.scales)
    big = rotated("int4", block_size=2 * cpu_backend.ROTATION_MAX_BLOCK)
    with pytest.raises(FormatError, match="rotat"):
        be.encode_blocks(torch.randn(2, big.block_size), big, None)
    plain_parts = be.encode_blocks(torch.randn(2, big.block_size), big.with_options(rotation_seed=None), None)
    with pytest.raises(FormatError, match="rotat"):
        be.decode_sum_blocks([plain_parts], big, 2, big.block_size, torch.float32)
    with pytest.raises(FormatError, match="rotat"):
        be.decode_blocks(plain_parts, big, 2, big.block_size, torch.float32)


def test_larger_blocks_are_rotated_by_the_front_end_and_still_match() -> None:
    fmt = rotated("int4", block_size=2 * cpu_backend.ROTATION_MAX_BLOCK)
    x = awkward((5, 3 * fmt.block_size - 100), torch.bfloat16, 3)
    got, want = encode_both(x, fmt)
    assert got.backend == "cpu"
    check_decodes(got, want, dtypes=(torch.bfloat16,))


# -- every listed format, every input dtype ------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", FORMATS)
def test_formats_match_the_reference(name: str, dtype: torch.dtype) -> None:
    """Ragged and whole rows, special values, hashed signs (one long row) and the row sign table
    (many short rows), alone and summed."""
    for shape, seed in (((7, 200), 1234), ((1, 4096), 2**64 - 1), ((64, 256), 0)):
        fmt = rotated(name, seed)
        x = awkward(shape, dtype, seed=shape[1])
        got, want = encode_both(x, fmt)
        check_decodes(got, want)
        shards = [want] + [mxcomm.encode(awkward(shape, dtype, seed=s), fmt, backend="cpu") for s in (5, 6, 7)]
        for count in (2, 3, 4):
            check_decode_sum(shards[:count], dtypes=(dtype, torch.float32))


@pytest.mark.parametrize("name", ["mxfp4", "mxfp8_e4m3", "int6_fp16", "nvfp4"])
def test_axis_0(name: str) -> None:
    x = awkward((100, 48), torch.bfloat16, 4)
    got, want = encode_both(x, rotated(name), axis=0)
    assert got.axis == 0
    check_decodes(got, want)


@pytest.mark.parametrize("block", [2**k for k in range(1, 12)])
@pytest.mark.parametrize("name", ["int4", "mxfp8_e4m3", "fp5_e2m2", "fp3_e1m1", "nvfp4"])
def test_block_sizes(name: str, block: int) -> None:
    """Every power of two the kernels rotate: in-vector stages only (2-8), the paired paths (16-64),
    the buffered stages (128 and up); byte-aligned or not (fp5 / fp3 blocks of 2 and 4)."""
    fmt = rotated(name, seed=block * 977 + 1, block_size=block)
    x = awkward((5, 3 * block + block // 2 + 1), torch.bfloat16, block)
    got, want = encode_both(x, fmt)
    check_decodes(got, want, dtypes=(torch.float32, torch.bfloat16))
    check_decode_sum([want, mxcomm.encode(x.flip(1), fmt, backend="torch"), got], dtypes=(torch.float16,))


@pytest.mark.parametrize("rounding", ["stochastic", "away", "zero"])
@pytest.mark.parametrize("name", ["mxfp4", "mxfp8_e4m3", "int4_b64", "fp5_e2m2", "nvfp4"])
def test_roundings(name: str, rounding: str) -> None:
    x = awkward((6, 300), torch.float32, 9)
    for rot_seed, gen_seed in ((1, 11), (2**64 - 1, 12), (2**63 + 5, 13)):
        got, want = encode_both(x, rotated(name, rot_seed), seed=gen_seed, rounding=rounding)
        check_decodes(got, want, dtypes=(torch.bfloat16,))
    if rounding == "stochastic":
        a, _ = encode_both(x, rotated(name, 1), seed=11, rounding=rounding)
        b, _ = encode_both(x, rotated(name, 1), seed=12, rounding=rounding)
        assert not torch.equal(a.codes, b.codes)


def test_rotation_seed_changes_the_codes() -> None:
    x = make_values("outliers", (4, 256), 1, 4).float()
    codes = {s: mxcomm.encode(x, rotated("mxfp4", s), backend="cpu").codes for s in ROTATION_SEEDS}
    assert len({bytes(c.numpy()) for c in codes.values()}) == len(ROTATION_SEEDS)


# -- special values the rotation itself makes ----------------------------------------------------
@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "int6_fp16", "mxfp8_e4m3"])
def test_sums_that_overflow_inside_the_rotation(name: str) -> None:
    """float32 inputs near the max overflow to inf in the butterflies (a NaN block whose other
    elements stay finite: the tensor scale's amax still sees them), cancellations give zeros."""
    x = make_values("normal", (4, 64), 2, 1).to(torch.float32)
    big = torch.finfo(torch.float32).max
    x[0, 0], x[0, 1] = big, big  # a + b overflows at the first stage
    x[1, 0], x[1, 16] = big, -big  # a - b overflows at stage 16
    x[2, :32] = 1.5  # every difference cancels to +-0
    x[3, 32:] = big / 2
    got, want = encode_both(x, rotated(name))
    check_decodes(got, want)


@pytest.mark.parametrize("out", [torch.float16, torch.bfloat16])
def test_outputs_near_the_dtype_max_saturate_like_the_reference(out: torch.dtype) -> None:
    """Un-rotated values just above the output type's max (rounded-up scales) saturate."""
    fmt = rotated("mxfp8_e4m3", scale_mode="ceil")
    big = torch.finfo(out).max
    for scale in (0.999, 1.0, 1.001):
        x = make_values("normal", (8, 64), 3, 1).to(torch.float32).clamp(-1, 1) * big * scale
        x[:, ::7] = big * scale
        got, want = encode_both(x, fmt)
        check_decodes(got, want, dtypes=(out,))
        check_decode_sum([got, want], dtypes=(out,))


@pytest.mark.parametrize("mode", ["floor", "ceil", "even", "rceil"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["mxfp4", "mxfp8_e4m3", "mxfp8_e5m2", "int4", "fp4_e2m1_b16", "int4_b64", "fp5_e2m2"])
def test_blocks_of_tiny_and_subnormal_inputs(name: str, dtype: torch.dtype, mode: str) -> None:
    """Blocks whose rotated values are float32 subnormals (scale exponents so small that the
    element codes need the normalising path), around the smallest normal, and mixed."""
    tiny = torch.finfo(dtype).tiny
    x = make_values("normal", (6, 128), 0, 1).to(torch.float32)
    x[0] *= tiny / 64
    x[1] *= tiny
    x[2] *= tiny * 2.0**-10
    x[3, :64] *= tiny * 8
    x[3, 64:] *= tiny / 8
    x[4] *= tiny * 2.0**12
    x[5, ::3] = tiny / 2
    got, want = encode_both(x.to(dtype), rotated(name, scale_mode=mode))
    check_decodes(got, want)


@pytest.mark.parametrize("block", [8, 16, 32, 64, 128])
@pytest.mark.parametrize(
    "elem,scale",
    [(FloatElement(2, 1), "e8m0"), (FloatElement(4, 3, nan="all_ones"), "e8m0"), (IntElement(4), "e8m0"),
     (IntElement(8), "e8m0"), (FloatElement(5, 2, inf=True, nan="ieee"), "e8m0"), (FloatElement(2, 1), "e4m3")],
)
def test_decoded_products_beyond_float32_saturate_before_the_rotation(elem, scale: str, block: int) -> None:
    """Scales near the top of their range make element * scale overflow float32: the product
    saturates at +-max before the sums (which may then still overflow, or cancel)."""
    tensor_scale = scale == "e4m3"
    fmt = BlockFormat("big", elem, block, scale, tensor_scale=tensor_scale, rotation_seed=99)
    rows, length = 3, 3 * block - 5
    lay = fmt.layout((rows, length))
    g = _gen(block + elem.bits)
    codes = torch.randint(0, 256, ((lay.num_codes * elem.bits + 7) // 8,), dtype=torch.uint8, generator=g)
    top = [0xFE, 0xFD, 0xFC, 0x80] if scale == "e8m0" else [0x7E, 0x7D, 0x70, 0x38]
    scales = torch.tensor(top * lay.num_blocks, dtype=torch.uint8)[: lay.num_blocks]
    tail = [torch.tensor([2.0**118], dtype=torch.float32).view(torch.uint8)] if tensor_scale else []
    p = mxcomm.Packed.from_payload(torch.cat([codes, scales, *tail]), fmt, (rows, length), torch.float32)
    q = mxcomm.Packed.from_payload(torch.cat([codes.flip(0), scales, *tail]), fmt, (rows, length), torch.float32)
    check_decodes(p, p)
    check_decode_sum([p, q])
    check_decode_sum([q, p, q])


@pytest.mark.parametrize("shape", [(0, 64), (3, 0), (1, 1), (2, 3)])
def test_empty_and_tiny_shapes(shape: tuple[int, int]) -> None:
    x = make_values("normal", shape, 4, 1).float()
    got, want = encode_both(x, rotated("mxfp4"))
    check_decodes(got, want)


# -- threads -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "fp5_e2m2", "mxfp8_e4m3"])
def test_several_threads(name: str) -> None:
    """The default split of a 1M-element tensor into ranges on 3 threads, and small inputs cut into
    many ranges (some covering less than two rows: hashed signs, some more: the sign table)."""
    fmt = rotated(name, 2**64 - 1)
    x = make_values("outliers", (256, 4096), 5, 8).to(torch.bfloat16)
    with split_into_ranges(3, min_task_elements=cpu_backend.MIN_TASK_ELEMENTS):
        got = mxcomm.encode(x, fmt, backend="cpu")
        ranges = cpu_backend.block_ranges(got.layout.num_blocks, fmt.block_size, fmt.element.bits)
        assert len(ranges) > 1
        y = mxcomm.decode(got, backend="cpu")
        s = mxcomm.decode_sum([got, got], dtype=torch.float32, backend="cpu")
    want = mxcomm.encode(x, fmt, backend="torch")
    assert_same_packed(got, want)
    assert_same_values(y, mxcomm.decode(want, backend="torch"))
    assert_same_values(s, mxcomm.decode_sum([want, want], dtype=torch.float32, backend="torch"))
    for shape in ((9, 130), (1, 2000), (40, 64)):
        x = awkward(shape, torch.float16, 6)
        with split_into_ranges(2):
            got = mxcomm.encode(x, fmt, backend="cpu")
            ys = [mxcomm.decode_sum([got, got, got], dtype=d, backend="cpu") for d in DTYPES]
        want = mxcomm.encode(x, fmt, backend="torch")
        assert_same_packed(got, want)
        for y, d in zip(ys, DTYPES):
            assert_same_values(y, mxcomm.decode_sum([want, want, want], dtype=d, backend="torch"))


# -- positions past 2**32 ------------------------------------------------------------------------
@pytest.mark.parametrize("block", [32, 4])
def test_signs_of_positions_past_2_to_32(block: int) -> None:
    """Row positions >= 2**32 hash their signs with another key. Blocks k..k+n-1 of one very long
    row, around position 2**32, are encoded and decoded by calling the kernels with pointers shifted
    by k blocks (no 2**32-element tensor needed) and compared with the reference transform of the
    same blocks with signs taken from position k * block on."""
    n = 4
    k = 2**32 // block - n // 2
    fmt = rotated("mxfp8_e4m3", 2**64 - 1, block_size=block)
    plain = fmt.with_options(rotation_seed=None)
    x = make_values("normal", (n * block,), 7, 3).to(torch.float32)
    signs = (1 - 2 * (stochastic_bits(n * block, fmt.rotation_seed, start=k * block) & 1)).to(torch.float32)
    want = reference.encode_blocks(hadamard_blocks_reference((x * signs).reshape(1, -1), block) * (1.0 / block), plain)

    lib = cpu_backend.load().library()
    params = ctypes.byref(cpu_backend.cpu_format(fmt))
    codes = torch.zeros(n * block, dtype=torch.uint8)
    scales = torch.zeros(n, dtype=torch.uint8)
    status = lib.mx_encode(
        params, 0, x.data_ptr() - k * block * 4, (k + n) * block, k + n, k, k + n, 1.0, 0,
        codes.data_ptr() - k * block, scales.data_ptr() - k,
    )
    assert status == 0
    assert torch.equal(codes, want.codes) and torch.equal(scales, want.scales)

    out = torch.empty(n * block, dtype=torch.float32)
    table = cpu_backend._code_table(fmt.element)
    status = lib.mx_decode(
        params, 0, 1, (ctypes.c_void_p * 1)(codes.data_ptr() - k * block), (ctypes.c_void_p * 1)(scales.data_ptr() - k),
        (ctypes.c_float * 1)(1.0), table.data_ptr(), (k + n) * block, k + n, k, k + n, out.data_ptr() - k * block * 4,
    )
    assert status == 0
    decoded = reference.decode_blocks(want, plain, 1, n * block, torch.float32)
    expected = hadamard_blocks_reference(decoded, block).reshape(-1) * signs
    assert_same_values(out, expected)
    assert seed_key(fmt.rotation_seed, 0) != seed_key(fmt.rotation_seed, 1)  # the key really changes


# -- the decoder on arbitrary payloads ----------------------------------------------------------
ELEMENTS = [FloatElement(2, 1), FloatElement(4, 3), FloatElement(5, 2, inf=True, nan="ieee"), FloatElement(2, 2),
            IntElement(4), IntElement(6), FloatElement(1, 1)]


@settings(max_examples=60, deadline=None)
@given(elem=st.sampled_from(ELEMENTS), block=st.sampled_from([2, 4, 8, 16, 32, 64, 128]),
       scale=st.sampled_from(["e8m0", "e4m3", "bf16"]), rows=st.integers(1, 4), length=st.integers(1, 150),
       nparts=st.integers(1, 3), seed=st.integers(0, 2**31 - 1), rot_seed=st.integers(0, 2**64 - 1),
       threads=st.sampled_from([1, 2]))
def test_decode_of_random_payloads(elem, block, scale, rows, length, nparts, seed, rot_seed, threads) -> None:
    """Every code and scale bit pattern (NaN/inf codes and scales, subnormal scales, overflowing
    products and sums) decodes like the reference, alone and summed."""
    fmt = BlockFormat("rnd", elem, block, scale, tensor_scale=scale == "e4m3" and seed % 2 == 0, rotation_seed=rot_seed)
    check_random_payloads_decode(fmt, rows, length, nparts, seed, threads)
