"""The range rule (docs/semantics.md, "Range"; docs/reliability.md, "Numeric range").

* Every built-in format keeps its in-range accuracy at any magnitude of ``range_cases.MAGNITUDES``
  (float-scale formats through their automatic tensor scale), with no clipped block.
* ``Packed.clipped_blocks`` equals an independent count from the block amaxes.
* ``strict=True`` raises ``mxcomm.RangeError`` exactly when some block clipped.

Backends against the reference at these magnitudes: tests/kernels/test_conformance.py
(``test_builtin_formats_at_extreme_magnitudes``); collectives: tests/collectives/test_range_strict.py.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

import mxcomm
from mxcomm.formats import BlockFormat, FloatElement, IntElement
from tests.kernels.range_cases import CLIPPING, MAGNITUDES, magnitude_tensor, relative_error

BACKEND = "torch"
BUILTINS = mxcomm.list_formats()


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_formats_keep_their_accuracy_at_every_magnitude(name: str) -> None:
    fmt = mxcomm.get_format(name)
    for dtype, magnitudes in MAGNITUDES.items():
        base = magnitude_tensor(dtype, 1.0)
        in_range = relative_error(mxcomm.quantize(base, fmt, backend=BACKEND), base)
        for m in magnitudes:
            x = magnitude_tensor(dtype, m)
            p = mxcomm.encode(x, fmt, backend=BACKEND)
            assert p.clipped_blocks == 0, (dtype, m)
            err = relative_error(mxcomm.decode(p), x)
            # the same Gaussian at another magnitude: the same error up to the input's own rounding
            assert err <= 1.25 * in_range + 2.0**-7, (dtype, m, err, in_range)
            if fmt.auto_tensor_scale and m == 1.0:
                assert float(p.tensor_scale) == 1.0  # in range: the single-level encoding, nothing extra


@pytest.mark.parametrize("name", ["int4_fp16", "int8_fp16", "mxfp8_e5m2", "nvfp4"])
def test_below_a_float32_multiplier_blocks_clip_and_are_counted(name: str) -> None:
    for dtype, m in CLIPPING.items():
        x = magnitude_tensor(dtype, m)
        p = mxcomm.encode(x, name, backend=BACKEND)
        assert p.clipped_blocks == independent_clipped_count(x, mxcomm.get_format(name), p) > 0
        with pytest.raises(mxcomm.RangeError) as info:
            mxcomm.encode(x, name, backend=BACKEND, strict=True)
        assert info.value.clipped_blocks == p.clipped_blocks


def test_the_automatic_tensor_scale_is_in_the_frame_only_when_used() -> None:
    small, big = magnitude_tensor(torch.bfloat16, 1.0), magnitude_tensor(torch.bfloat16, 1e6)
    a, b = mxcomm.encode(small, "int6_fp16"), mxcomm.encode(big, "int6_fp16")
    assert float(a.tensor_scale) == 1.0 and float(b.tensor_scale) != 1.0
    # the frame leaves a tensor scale of 1 out: 4 bytes fewer, and it reads back bit-exact
    assert len(b.to_bytes()) == len(a.to_bytes()) + 4
    for p in (a, b):
        q = mxcomm.Packed.from_bytes(p.to_bytes())
        assert torch.equal(mxcomm.decode(q), mxcomm.decode(p)) and float(q.tensor_scale) == float(p.tensor_scale)


# -- clipped counts against an independent computation ------------------------------------------
def _block_amaxes(x: torch.Tensor, block: int) -> list[Fraction | None]:
    """Per block (last axis, ragged tail zero-padded): the exact finite amax, None for a NaN/Inf block."""
    rows = x.to(torch.float64).reshape(-1, x.shape[-1]).tolist()
    out: list[Fraction | None] = []
    for row in rows:
        for b0 in range(0, len(row), block):
            vals = row[b0 : b0 + block]
            out.append(None if any(not math.isfinite(v) for v in vals) else max(Fraction(abs(v)) for v in vals))
    return out


def _float_grid_round_up(q: Fraction, mbits: int, emin: int, largest: Fraction) -> Fraction:
    k = q.numerator.bit_length() - q.denominator.bit_length()
    k = k if Fraction(2) ** k <= q else k - 1
    step = Fraction(2) ** (max(k, emin) - mbits)
    return min(-(-q // step) * step, largest)


def _fp32(v: Fraction) -> Fraction:
    return Fraction(float(torch.tensor(float(v), dtype=torch.float64).to(torch.float32)))


def independent_clipped_count(x: torch.Tensor, fmt: BlockFormat, p: mxcomm.Packed) -> int:
    """The spec's rule from exact arithmetic: an E8M0 block clips when its amax needs an exponent
    outside [-127, 127] (rceil/floor ... as the scale mode asks, here through floor(log2)); a float
    scale block when amax / (max_normal * S) is off the scale grid's normal range or
    fp32(s * S) < 2**-126 (S: the encoding's tensor scale)."""
    elem = fmt.element
    max_normal = Fraction(elem.max_normal)
    count = 0
    for a in _block_amaxes(x, fmt.block_size):
        if a is None or a == 0:
            continue
        if fmt.scale == "e8m0":
            assert fmt.scale_mode == "floor"
            k = a.numerator.bit_length() - a.denominator.bit_length()
            k = k if Fraction(2) ** k <= a else k - 1
            e = k - elem.emax
            count += e < -127 or a > max_normal * Fraction(2) ** 127
        else:
            spec = fmt.scale_spec
            s_tensor = Fraction(float(p.tensor_scale))
            q = Fraction(float(a / (max_normal * s_tensor)))  # the float64 quotient (docs/semantics.md)
            emin = 1 - spec.bias
            largest = Fraction(spec.max_value)
            s = _float_grid_round_up(q, spec.mbits, emin, largest)
            count += q < Fraction(2) ** emin or q > largest or _fp32(s * s_tensor) < Fraction(2) ** -126
    return count


USER_FORMATS = [
    BlockFormat("u_fp16_int4", IntElement(4), block_size=16, scale="fp16"),
    BlockFormat("u_e4m3_fp4", FloatElement(2, 1), block_size=8, scale="e4m3"),
    BlockFormat("u_e8m0_fp8", FloatElement(4, 3, nan="all_ones"), block_size=32, scale_mode="floor"),
]


@pytest.mark.parametrize("fmt", USER_FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_clipped_count_matches_an_independent_count(fmt: BlockFormat, dtype: torch.dtype) -> None:
    # blocks 12 decades apart in one tensor: more than an fp16 / e4m3 scale spans, so even the
    # automatic tensor scale cannot hold them all; plus zeros, NaN and float32-subnormal blocks
    g = torch.Generator().manual_seed(1)
    decades = torch.tensor([1e-37, 1e-30, 1e-12, 1e-6, 1.0, 1e6, 1e12, 1e30], dtype=torch.float64)
    x = torch.randn(8, 4 * fmt.block_size, generator=g, dtype=torch.float64) * decades[:, None]
    x[2, : fmt.block_size] = 0.0
    x[3, 1] = math.nan
    x = x.to(dtype)
    for backend in ("torch", "cpu"):
        p = mxcomm.encode(x, fmt, backend=backend)
        assert p.clipped_blocks == independent_clipped_count(x, fmt, p) > 0, backend
        with pytest.raises(mxcomm.RangeError):
            mxcomm.quantize(x, fmt, backend=backend, strict=True)
    held = mxcomm.encode(x[4:5], fmt, strict=True)  # one magnitude: nothing clips, strict passes
    assert held.clipped_blocks == 0


def test_range_error_is_an_mxcomm_error() -> None:
    assert issubclass(mxcomm.RangeError, mxcomm.MxcommError)
    p = mxcomm.Packed.from_payload(mxcomm.encode(torch.ones(64), "int4_fp16").payload(), mxcomm.get_format("int4_fp16"), (64,),
                                   torch.float32)
    assert p.clipped_blocks is None  # not part of the bytes
