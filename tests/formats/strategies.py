"""Hypothesis strategies for formats, shared by the formats and kernels tests."""

from __future__ import annotations

from hypothesis import assume
from hypothesis import strategies as st

import mxcomm
from mxcomm.formats import BlockFormat, FloatElement, IntElement


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
