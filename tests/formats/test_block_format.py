"""BlockFormat: defaults, derived sizes, validation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mxcomm
from mxcomm.formats import BlockFormat, FloatElement, IntElement, block_layout
from mxcomm.formats.block import SCALE_SPECS
from mxcomm.formats.builtins import E2M1, E4M3


def test_defaults() -> None:
    fmt = BlockFormat("t_defaults", E2M1)
    assert (fmt.block_size, fmt.scale, fmt.scale_mode, fmt.rounding, fmt.tensor_scale) == (
        32,
        "e8m0",
        "floor",
        "rne",
        False,
    )
    # float scale types default to (and only take) rceil
    assert BlockFormat("t_fp16", IntElement(4), scale="fp16").scale_mode == "rceil"


@pytest.mark.parametrize(
    "name,bits_per_element",
    [
        ("mxfp8_e4m3", 8.25),
        ("mxfp8_e5m2", 8.25),
        ("mxfp6_e3m2", 6.25),
        ("mxfp6_e2m3", 6.25),
        ("mxfp4_e2m1", 4.25),
        ("mxint8", 8.25),
        ("nvfp4", 4.5),
        ("int4_fp16", 4.5),
        ("fp4_e2m1_b16", 4.5),
        ("fp4_e2m1_b64", 4.125),
        ("fp3_e1m1", 3.25),
    ],
)
def test_bits_per_element(name: str, bits_per_element: float) -> None:
    fmt = mxcomm.get_format(name)
    assert fmt.bits_per_element == bits_per_element
    assert fmt.compression_vs(16) == 16 / bits_per_element
    assert fmt.compression_vs() == fmt.compression_vs(16)
    assert fmt.compression_vs(32) == 32 / bits_per_element


def test_packed_nbytes_hand_computed() -> None:
    mxfp4 = mxcomm.get_format("mxfp4")
    # 2 rows of 40 -> 2 blocks per row (padded to 64): 128 codes * 4 bits = 64 bytes + 4 scales
    assert mxfp4.packed_nbytes((2, 40)) == 64 + 4
    # blocks along dim 0: 3 rows (the other dims) of length 40
    assert mxfp4.packed_nbytes((40, 3), axis=0) == 3 * 2 * 32 // 2 + 6
    mxfp6 = mxcomm.get_format("mxfp6_e3m2")
    # 33 elements -> 2 blocks, 64 codes * 6 bits = 48 bytes + 2 scales
    assert mxfp6.packed_nbytes((33,)) == 48 + 2
    fp3 = mxcomm.get_format("fp3_e1m1")
    # 1 block of 32 3-bit codes = 12 bytes + 1 scale
    assert fp3.packed_nbytes((5,)) == 12 + 1
    nvfp4 = mxcomm.get_format("nvfp4")
    assert nvfp4.packed_nbytes((4, 16)) == 4 * 8 + 4 + 4  # codes + e4m3 scales + fp32 tensor scale
    int8_fp16 = mxcomm.get_format("int8_fp16")
    assert int8_fp16.packed_nbytes((64,)) == 64 + 2 * 2 + 4  # + its automatic tensor scale
    # 0-d tensors are one element; empty tensors are nothing (but keep the tensor scale)
    assert mxfp4.packed_nbytes(()) == 16 + 1
    assert mxfp4.packed_nbytes((0, 7)) == 0
    assert mxfp4.packed_nbytes((7, 0)) == 0
    assert nvfp4.packed_nbytes((0,)) == 4


@given(
    shape=st.lists(st.integers(0, 9), min_size=0, max_size=4),
    block_size=st.sampled_from([1, 3, 16, 32, 64]),
    bits=st.integers(2, 8),
    data=st.data(),
)
def test_packed_nbytes_formula(shape: list[int], block_size: int, bits: int, data: st.DataObject) -> None:
    fmt = BlockFormat("t_nbytes", IntElement(bits), block_size=block_size)
    ndim = max(len(shape), 1)
    axis = data.draw(st.integers(-ndim, ndim - 1))
    dims = shape if shape else [1]
    length = dims[axis]
    rows = math.prod(d for i, d in enumerate(dims) if i != axis % ndim)
    nblocks = rows * math.ceil(length / block_size)
    expected = math.ceil(nblocks * block_size * bits / 8) + nblocks
    assert fmt.packed_nbytes(shape, axis) == expected
    lay = block_layout(shape, axis, block_size)
    assert lay.num_blocks == nblocks and lay.numel == math.prod(dims)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(name="", element=E2M1),
        dict(name="has space", element=E2M1),
        dict(name="x" * 65, element=E2M1),
        dict(name=3, element=E2M1),
        dict(name="ok", element="e2m1"),
        dict(name="ok", element=None),
        dict(name="ok", element=E2M1, block_size=0),
        dict(name="ok", element=E2M1, block_size=-32),
        dict(name="ok", element=E2M1, block_size=(1 << 16) + 1),
        dict(name="ok", element=E2M1, block_size=32.0),
        dict(name="ok", element=E2M1, block_size=True),
        dict(name="ok", element=E2M1, scale="e5m2"),
        dict(name="ok", element=E2M1, scale=None),
        dict(name="ok", element=E2M1, scale_mode="round"),
        dict(name="ok", element=E2M1, scale="fp16", scale_mode="floor"),  # float scales: rceil only
        dict(name="ok", element=E2M1, scale="e4m3", scale_mode="even"),
        dict(name="ok", element=E2M1, rounding="nearest"),
        dict(name="ok", element=E2M1, rounding="even"),
        dict(name="ok", element=E2M1, rounding=None),
        dict(name="ok", element=E2M1, tensor_scale=True),  # e8m0 takes no tensor scale
        dict(name="ok", element=E2M1, scale="e4m3", tensor_scale=1),
    ],
)
def test_bad_block_format_fields(kwargs: dict) -> None:
    with pytest.raises(mxcomm.FormatError):
        BlockFormat(**kwargs)


def test_every_scale_type_and_mode_is_accepted() -> None:
    for scale, spec in SCALE_SPECS.items():
        modes = ("floor", "ceil", "rceil", "even") if spec.power_of_two else ("rceil",)
        for mode in modes:
            assert BlockFormat("t_ok", E4M3, scale=scale, scale_mode=mode).scale_mode == mode
    assert BlockFormat("t_ok", E2M1, 16, "e4m3", tensor_scale=True).tensor_scale
    assert BlockFormat("t_ok", E2M1, 1).block_size == 1
    assert BlockFormat("t_ok", E2M1, 1 << 16).block_size == 1 << 16


def test_with_options_validates_and_resets_scale_mode() -> None:
    fmt = mxcomm.get_format("mxfp4")
    away = fmt.with_options(rounding="away")
    assert away.rounding == "away" and away.element == fmt.element and fmt.rounding == "rne"
    fp16 = fmt.with_options(scale="fp16")  # floor is not legal for fp16: the default is re-derived
    assert fp16.scale_mode == "rceil"
    with pytest.raises(mxcomm.FormatError):
        fmt.with_options(scale_mode="bogus")
    with pytest.raises(mxcomm.FormatError):
        fmt.with_options(block_size=0)


def test_formats_compare_by_value() -> None:
    a = BlockFormat("t_eq", FloatElement(2, 2), 16)
    assert a == BlockFormat("t_eq", FloatElement(2, 2), 16)
    assert a != BlockFormat("t_eq", FloatElement(2, 2), 32)
    assert a != a.with_options(rounding="zero")
    assert hash(a) == hash(BlockFormat("t_eq", FloatElement(2, 2), 16))


def test_bad_shapes_and_axes() -> None:
    fmt = mxcomm.get_format("mxfp8_e4m3")
    with pytest.raises(mxcomm.FormatError):
        fmt.packed_nbytes((3, -1))
    with pytest.raises(mxcomm.FormatError):
        fmt.packed_nbytes((3, 4), axis=2)
    with pytest.raises(mxcomm.FormatError):
        fmt.packed_nbytes((3, 4), axis=-3)
    with pytest.raises(mxcomm.FormatError):
        fmt.packed_nbytes((3, 4), axis=1.0)  # type: ignore[arg-type]
    assert fmt.packed_nbytes((3, 4), axis=-2) == fmt.packed_nbytes((3, 4), axis=0)
    assert fmt.packed_nbytes((), axis=-1) == fmt.packed_nbytes((), axis=0) == 33
