"""The public codec API: shapes, axes, dtypes, sizes, decode_sum, payloads and bad input.

These go through the default backend ("auto"), which for CPU tensors must be
the fast CPU backend where it can run: every test that compares ``auto`` with
the torch reference asserts (``Packed.backend``) that it ran the backend the
``auto_backend`` fixture expects (tests/conftest.py), so a silent fallback
cannot turn a comparison into the reference against itself. Conformance of
each backend with the reference on every input is test_conformance.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mxcomm
from mxcomm.formats import BlockFormat, FloatElement
from mxcomm.kernels.bitpack import unpack_codes
from tests.formats.strategies import builtin_formats

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FORMATS = mxcomm.list_formats()


def _x(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 3).to(dtype)


def _reference(x: torch.Tensor, fmt, axis: int = -1) -> torch.Tensor:
    return mxcomm.quantize(x, fmt, axis=axis, backend="torch")


def _auto_quantize(x: torch.Tensor, fmt, expected_backend: str, **options) -> torch.Tensor:
    """``mxcomm.quantize`` through ``auto``, checking which backend encoded."""
    p = mxcomm.encode(x, fmt, **options)
    assert p.backend == expected_backend
    return mxcomm.decode(p)


# -- shapes, axes, dtypes ------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_decode_returns_shape_and_dtype(fmt: str, dtype: torch.dtype, auto_backend: str) -> None:
    x = _x((3, 5, 37), dtype)
    p = mxcomm.encode(x, fmt)
    assert p.backend == auto_backend
    assert p.shape == x.shape and p.dtype == dtype and p.axis == 2
    assert p.format == mxcomm.get_format(fmt)
    y = mxcomm.decode(p)
    assert y.shape == x.shape and y.dtype == dtype and y.is_contiguous()
    assert torch.equal(y, _reference(x, fmt))
    assert torch.equal(mxcomm.quantize(x, fmt), y)
    for out in DTYPES:  # dtype override: the same float32 values, cast once
        z = mxcomm.decode(p, dtype=out)
        assert z.dtype == out
        assert torch.equal(z, mxcomm.decode(p, dtype=torch.float32).to(out))


@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp4", "mxint8", "nvfp4", "int4_fp16", "fp3_e1m1"])
@pytest.mark.parametrize("axis", [0, 1, 2, -2, -3])
def test_axis_is_the_same_as_moving_it_last(fmt: str, axis: int, auto_backend: str) -> None:
    x = _x((20, 6, 34), seed=1)
    y = _auto_quantize(x, fmt, auto_backend, axis=axis)
    expected = _reference(x.movedim(axis, -1).contiguous(), fmt).movedim(-1, axis)
    assert torch.equal(y, expected)
    p = mxcomm.encode(x, fmt, axis=axis)
    assert p.axis == axis % 3
    assert p.nbytes == mxcomm.get_format(fmt).packed_nbytes(x.shape, axis)


@pytest.mark.parametrize("fmt", ["mxfp8_e5m2", "mxfp6_e2m3", "mxint8", "nvfp4", "int6_fp16"])
def test_non_contiguous_inputs(fmt: str, auto_backend: str) -> None:
    base = _x((12, 80), seed=2)
    views = [base.t(), base[:, ::3], base[::2, 5:70], base.flip(0).t()[2:, 1::2]]
    for view in views:
        assert torch.equal(_auto_quantize(view, fmt, auto_backend), _reference(view.contiguous(), fmt))
        assert torch.equal(_auto_quantize(view, fmt, auto_backend, axis=0),
                           _reference(view.contiguous(), fmt, axis=0))
    expanded = torch.tensor([1.5, -2.0, 0.25]).expand(4, 3)  # stride 0
    assert torch.equal(_auto_quantize(expanded, fmt, auto_backend), _reference(expanded.contiguous(), fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_zero_dim_and_single_element(fmt: str, auto_backend: str) -> None:
    for x in (torch.tensor(-1.75), torch.tensor([3.0]), torch.tensor([[0.5]])):
        p = mxcomm.encode(x, fmt)
        assert p.backend == auto_backend
        y = mxcomm.decode(p)
        assert y.shape == x.shape
        assert p.nbytes == mxcomm.get_format(fmt).packed_nbytes(x.shape)
        assert p.layout.num_blocks == 1
        # a lone value is the block max: it decodes within the element's relative precision
        assert math.isclose(float(y), float(x), rel_tol=0.5)
        assert torch.equal(y.reshape(1), mxcomm.quantize(x.reshape(1), fmt))


@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp6_e3m2", "nvfp4", "int8_fp16", "fp3_e2m0"])
@pytest.mark.parametrize("shape", [(0,), (0, 5), (5, 0), (2, 0, 3), (0, 0)], ids=str)
def test_empty_tensors(fmt: str, shape: tuple[int, ...]) -> None:
    f = mxcomm.get_format(fmt)
    for axis in range(-len(shape), len(shape)):
        x = torch.empty(shape, dtype=torch.bfloat16)
        p = mxcomm.encode(x, fmt, axis=axis)
        assert p.codes.numel() == 0 and p.scales.numel() == 0
        assert p.nbytes == f.packed_nbytes(shape, axis) == (4 if f.has_tensor_scale else 0)
        assert p.clipped_blocks == 0
        y = mxcomm.decode(p)
        assert y.shape == shape and y.dtype == torch.bfloat16
        assert mxcomm.decode_sum([p, p]).shape == shape


@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp6_e2m3", "mxfp4", "mxint8", "nvfp4", "int4_fp16", "fp5_e2m2"])
def test_ragged_tail_is_padded_encoded_and_dropped(fmt: str, auto_backend: str) -> None:
    f = mxcomm.get_format(fmt)
    length = 2 * f.block_size + 5
    x = _x((3, length), seed=3)
    p = mxcomm.encode(x, fmt)
    assert p.backend == auto_backend
    assert p.layout.blocks_per_row == 3 and p.scales.numel() == 9
    assert p.nbytes == f.packed_nbytes(x.shape) == math.ceil(9 * f.block_size * f.element.bits / 8) + 9 * (
        f.scale_bits // 8
    ) + (4 if f.has_tensor_scale else 0)
    codes = unpack_codes(p.codes, f.element.bits, p.layout.num_codes).view(3, 3 * f.block_size)
    assert bool((codes[:, length:] == 0).all())  # the padding is encoded, as +0
    y = mxcomm.decode(p)
    assert y.shape == x.shape
    # the padded tensor quantizes to the same values (padding zeros never change a block's scale)
    padded = torch.cat([x, torch.zeros(3, 3 * f.block_size - length)], dim=1)
    assert torch.equal(mxcomm.quantize(padded, fmt)[:, :length], y)


@pytest.mark.parametrize("fmt", FORMATS)
def test_zeros_and_negative_zero(fmt: str) -> None:
    f = mxcomm.get_format(fmt)
    x = torch.zeros(2, 2 * f.block_size)
    x[1, f.block_size :] = -0.0  # a block of negative zeros
    x[0, f.block_size] = 1.0  # one non-zero block holding +-0
    x[0, f.block_size + 1] = -0.0
    p = mxcomm.encode(x, fmt)
    y = mxcomm.decode(p)
    assert torch.equal(y, torch.where(x == 1.0, y, torch.zeros_like(y)))
    assert not bool(y[x != 1.0].signbit().any())  # -0.0 decodes as +0.0: it was encoded as +0
    codes = unpack_codes(p.codes, f.element.bits, p.layout.num_codes).view(4, f.block_size)
    assert bool((codes[[0, 2, 3]] == 0).all())
    assert int(codes[1, 1]) == 0
    if f.scale == "e8m0":
        assert float(y[0, f.block_size]) == 1.0  # a power of two is exact at a power-of-two scale
        assert p.scales[[0, 2, 3]].tolist() == [0, 0, 0]  # documented: all-zero blocks get code 0x00


# -- sizes -------------------------------------------------------------------------------


@given(
    fmt=builtin_formats(),
    dims=st.lists(st.integers(0, 40), min_size=0, max_size=3),
    dtype=st.sampled_from(DTYPES),
    data=st.data(),
)
def test_nbytes_identity(fmt: BlockFormat, dims: list[int], dtype: torch.dtype, data: st.DataObject) -> None:
    ndim = max(len(dims), 1)
    axis = data.draw(st.integers(-ndim, ndim - 1))
    x = torch.randn(dims).to(dtype)
    p = mxcomm.encode(x, fmt, axis=axis)
    extra = 4 if fmt.has_tensor_scale else 0  # every float scale type: a fixed or an automatic tensor scale
    assert p.nbytes == fmt.packed_nbytes(tuple(dims), axis) == p.codes.numel() + p.scales.nbytes + extra
    assert (p.tensor_scale is not None) == fmt.has_tensor_scale
    payload = p.payload()
    assert payload.dtype == torch.uint8 and payload.numel() == p.nbytes
    q = mxcomm.Packed.from_payload(payload, p.format, p.shape, p.dtype, axis)
    assert torch.equal(mxcomm.decode(q), mxcomm.decode(p))
    if x.numel():
        assert p.compression_ratio == p.logical_nbytes / p.nbytes


@pytest.mark.parametrize("fmt", ["nvfp4", "int4_fp16", "mxfp6_e3m2", "fp3_e1m1"])
@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_payload_roundtrip_at_any_byte_offset(fmt: str, offset: int) -> None:
    # a received payload may start anywhere inside a larger buffer; NVFP4's tensor scale follows
    # 9 bytes per block, so it is rarely 4-byte aligned
    for shape in [(1, 16), (3, 16), (2, 33), (5,)]:
        x = _x(shape, seed=offset)
        p = mxcomm.encode(x, fmt)
        buf = torch.cat([torch.full((offset,), 0xAA, dtype=torch.uint8), p.payload()])[offset:]
        q = mxcomm.Packed.from_payload(buf, mxcomm.get_format(fmt), shape, torch.float32)
        assert torch.equal(mxcomm.decode(q), mxcomm.decode(p))


def test_from_payload_rejects_bad_buffers() -> None:
    fmt = mxcomm.get_format("mxfp4")
    p = mxcomm.encode(_x((2, 64)), fmt)
    buf = p.payload()
    for bad in (buf[:-1], torch.cat([buf, buf[:1]]), buf.to(torch.int32), buf.view(2, -1), buf.numpy()):
        with pytest.raises(mxcomm.FormatError):
            mxcomm.Packed.from_payload(bad, fmt, (2, 64), torch.float32)  # type: ignore[arg-type]


# -- decode_sum ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp4", "mxint8", "nvfp4", "int6_fp16"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_decode_sum_is_the_left_to_right_float32_sum(fmt: str, dtype: torch.dtype, auto_backend: str) -> None:
    parts = [mxcomm.encode(_x((4, 50), dtype, seed=s), fmt, axis=0) for s in range(4)]
    assert {p.backend for p in parts} == {auto_backend}
    total = mxcomm.decode_sum(parts)
    assert total.dtype == dtype and total.shape == (4, 50)
    acc = mxcomm.decode(parts[0], dtype=torch.float32)
    for q in parts[1:]:
        acc = acc + mxcomm.decode(q, dtype=torch.float32)
    assert torch.equal(total, acc.to(dtype))
    assert torch.equal(mxcomm.decode_sum(parts, dtype=torch.float32), acc)
    assert torch.equal(mxcomm.decode_sum(parts[:1]), mxcomm.decode(parts[0]))
    assert torch.equal(mxcomm.decode_sum(tuple(parts)), total)


def test_decode_sum_of_nan_block_is_nan_only_there() -> None:
    a = torch.ones(2, 32)
    b = torch.ones(2, 32)
    b[1, 3] = math.inf
    total = mxcomm.decode_sum([mxcomm.encode(a, "mxfp8_e4m3"), mxcomm.encode(b, "mxfp8_e4m3")])
    assert bool((total[0] == 2.0).all()) and bool(total[1].isnan().all())


def test_decode_sum_mismatches() -> None:
    x = _x((4, 64))
    p = mxcomm.encode(x, "mxfp4")
    bad = [
        mxcomm.encode(x, "mxfp6_e3m2"),  # format
        mxcomm.encode(x, "mxfp4", rounding="away"),  # effective format
        mxcomm.encode(x[:2], "mxfp4"),  # shape
        mxcomm.encode(x.t().contiguous(), "mxfp4", axis=0),  # axis
    ]
    for other in bad:
        with pytest.raises(mxcomm.FormatError):
            mxcomm.decode_sum([p, other])
    for other in ("not a packed", None):
        with pytest.raises(mxcomm.ArgumentTypeError):
            mxcomm.decode_sum([p, other])  # type: ignore[list-item]
    with pytest.raises(mxcomm.FormatError):
        mxcomm.decode_sum([])
    for packed_list in (p, None, 5):
        with pytest.raises(mxcomm.ArgumentTypeError):
            mxcomm.decode_sum(packed_list)  # type: ignore[arg-type]
    with pytest.raises(mxcomm.FormatError):
        mxcomm.decode_sum([p, p], dtype=torch.float64)


def test_decode_sum_takes_the_first_dtype() -> None:
    a = mxcomm.encode(_x((2, 32), torch.float16), "mxint8")
    b = mxcomm.encode(_x((2, 32), torch.bfloat16, seed=1), "mxint8")
    total = mxcomm.decode_sum([a, b])
    assert total.dtype == torch.float16
    expected = mxcomm.decode(a, dtype=torch.float32) + mxcomm.decode(b, dtype=torch.float32)
    assert torch.equal(total, expected.to(torch.float16))


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x",
    [
        torch.arange(8),
        torch.arange(8, dtype=torch.int32),
        torch.ones(8, dtype=torch.bool),
        torch.ones(8, dtype=torch.uint8),
        torch.ones(8, dtype=torch.float64),
        torch.ones(8, dtype=torch.complex64),
        torch.ones(8).to(torch.float8_e4m3fn),
        [1.0, 2.0],
        1.0,
        None,
        "x",
    ],
    ids=lambda v: str(v.dtype) if isinstance(v, torch.Tensor) else type(v).__name__,
)
def test_encode_rejects_non_float_inputs(x: object) -> None:
    # a tensor of another dtype is a FormatError, anything that is not a tensor an ArgumentTypeError
    expected = mxcomm.FormatError if isinstance(x, torch.Tensor) else mxcomm.ArgumentTypeError
    with pytest.raises(expected):
        mxcomm.encode(x, "mxfp4")  # type: ignore[arg-type]
    with pytest.raises(expected):
        mxcomm.quantize(x, "mxfp4")  # type: ignore[arg-type]


def test_encode_rejects_bad_arguments() -> None:
    x = _x((4, 32))
    with pytest.raises(mxcomm.FormatError, match="known formats"):
        mxcomm.encode(x, "mxfp9")
    for fmt in (None, 4, FloatElement(2, 1)):
        with pytest.raises(mxcomm.FormatError):
            mxcomm.encode(x, fmt)  # type: ignore[arg-type]
    for axis in (2, -3, 1.0, "0", None, True):
        with pytest.raises(mxcomm.FormatError):
            mxcomm.encode(x, "mxfp4", axis=axis)  # type: ignore[arg-type]
    for rounding in ("nearest", "even", "RNE", 1):
        with pytest.raises(mxcomm.FormatError):
            mxcomm.encode(x, "mxfp4", rounding=rounding)  # type: ignore[arg-type]
    for mode in ("round", "FLOOR"):
        with pytest.raises(mxcomm.FormatError):
            mxcomm.encode(x, "mxfp4", scale_mode=mode)
    with pytest.raises(mxcomm.FormatError):
        mxcomm.encode(x, "nvfp4", scale_mode="floor")  # float scales take rceil only
    with pytest.raises(mxcomm.FormatError):
        mxcomm.encode(x, "mxfp4", rounding="stochastic", generator=42)  # type: ignore[arg-type]
    with pytest.raises(mxcomm.BackendUnavailableError):
        mxcomm.encode(x, "mxfp4", backend="no_such_backend")


def test_decode_rejects_bad_arguments() -> None:
    p = mxcomm.encode(_x((2, 32)), "mxfp4")
    for dtype in (torch.float64, torch.int32, torch.float8_e4m3fn, "float32", None.__class__):
        with pytest.raises(mxcomm.FormatError):
            mxcomm.decode(p, dtype=dtype)  # type: ignore[arg-type]
    for not_packed in (p.codes, p.payload(), b"bytes", None):
        with pytest.raises(mxcomm.ArgumentTypeError):
            mxcomm.decode(not_packed)  # type: ignore[arg-type]


def test_packed_validates_its_parts() -> None:
    p = mxcomm.encode(_x((2, 40)), "nvfp4")
    fmt = p.format
    good = dict(
        format=fmt, shape=p.shape, dtype=p.dtype, axis=1, codes=p.codes, scales=p.scales, tensor_scale=p.tensor_scale
    )
    mxcomm.Packed(**good)
    bad_changes = [
        dict(codes=p.codes[:-1]),
        dict(codes=p.codes.to(torch.int16)),
        dict(scales=p.scales[:-1]),
        dict(scales=p.scales.to(torch.float16)),
        dict(tensor_scale=None),
        dict(tensor_scale=torch.tensor(1.0, dtype=torch.float64)),
        dict(dtype=torch.float64),
        dict(axis=-1),  # must be normalised
        dict(axis=2),
        dict(shape=(2, 49)),  # one more block per row
        dict(format="nvfp4"),
    ]
    for change in bad_changes:
        with pytest.raises(mxcomm.FormatError):
            mxcomm.Packed(**{**good, **change})
    e8 = mxcomm.encode(_x((2, 40)), "mxfp4")
    with pytest.raises(mxcomm.FormatError):
        mxcomm.Packed(e8.format, e8.shape, e8.dtype, 1, e8.codes, e8.scales, torch.tensor(1.0))


def test_custom_formats_work_unregistered(auto_backend: str) -> None:
    fmt = BlockFormat("unregistered_e3m1_b8", FloatElement(3, 1), block_size=8, rounding="away")
    x = _x((3, 20))
    p = mxcomm.encode(x, fmt)
    assert p.backend == auto_backend
    assert p.format == fmt
    assert torch.equal(mxcomm.decode(p), _reference(x, fmt))
    with pytest.raises(mxcomm.FormatError):
        mxcomm.get_format("unregistered_e3m1_b8")


def test_backend_is_recorded() -> None:
    p = mxcomm.encode(_x((2, 32)), "mxfp4", backend="torch")
    assert p.backend == "torch"
    assert "mxfp4" in repr(p)
