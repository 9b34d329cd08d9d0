"""Hypothesis strategies for formats, shared by the formats and kernels tests."""

from __future__ import annotations

from hypothesis import assume
from hypothesis import strategies as st

import mxcomm
from mxcomm.formats import BlockFormat, FloatElement, IntElement, Rounding, ScaleMode, ScaleType


def _build(factory, *args, **kwargs):
    try:
        return factory(*args, **kwargs)
    except mxcomm.FormatError:
        assume(False)
        raise AssertionError("unreachable") from None


@st.composite
def float_elements(draw: st.DrawFn, max_bits: int = 16, bias_spread: int = 12) -> FloatElement:
    """Random legal FloatElements (ebits 1..8, mbits 0..10, any special-value choice, shifted biases)."""
    ebits = draw(st.integers(1, min(8, max_bits - 1)))
    mbits = draw(st.integers(0, min(10, max_bits - 1 - ebits)))
    inf, nan = draw(st.sampled_from([(False, "none"), (False, "all_ones"), (True, "ieee")]))
    default_bias = 2 ** (ebits - 1) - 1
    bias = draw(st.one_of(st.none(), st.integers(default_bias - bias_spread, default_bias + bias_spread)))
    return _build(FloatElement, ebits, mbits, bias=bias, inf=inf, nan=nan)


def int_elements() -> st.SearchStrategy[IntElement]:
    return st.integers(2, 8).map(IntElement)


def elements(max_bits: int = 16) -> st.SearchStrategy[FloatElement | IntElement]:
    return st.one_of(float_elements(max_bits), int_elements())


def builtin_formats() -> st.SearchStrategy[BlockFormat]:
    return st.sampled_from(mxcomm.list_formats()).map(mxcomm.get_format)


def e8m0_builtin_formats() -> st.SearchStrategy[BlockFormat]:
    return builtin_formats().filter(lambda f: f.scale == "e8m0")


SCALE_TYPES = tuple(ScaleType)
BLOCK_SIZES = (1, 2, 3, 7, 8, 16, 32, 33, 48, 64, 100, 256, 2500)


@st.composite
def block_formats(draw: st.DrawFn, *, rotation: bool = True) -> BlockFormat:
    """Any format the codec takes: a built-in one or a custom one (any element, block size, scale
    type, tensor scale), with any rounding and scale mode, and (``rotation``) maybe a rotation."""
    if draw(st.booleans()):
        fmt = draw(builtin_formats())
    else:
        elem = draw(elements())
        scale = draw(st.sampled_from(SCALE_TYPES))
        block = draw(st.one_of(st.sampled_from(BLOCK_SIZES), st.integers(1, 100)))
        tensor_scale = scale != ScaleType.E8M0 and draw(st.booleans())
        fmt = _build(BlockFormat, "hyp", elem, block, scale, tensor_scale=tensor_scale)
    rounding = draw(st.sampled_from(tuple(Rounding)))
    mode = draw(st.sampled_from(tuple(ScaleMode))) if fmt.scale == ScaleType.E8M0 else ScaleMode.RCEIL
    fmt = fmt.with_options(rounding=rounding, scale_mode=mode)
    power_of_two = fmt.block_size >= 2 and fmt.block_size & (fmt.block_size - 1) == 0
    if rotation and power_of_two and draw(st.booleans()):
        fmt = fmt.with_options(rotation_seed=draw(st.integers(0, 2**64 - 1)))
    return fmt
