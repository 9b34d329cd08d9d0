"""Element types: derived properties, code tables against external oracles, validation."""

from __future__ import annotations

import math

import gfloat
import gfloat.formats
import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import mxcomm
from mxcomm.formats import FloatElement, IntElement
from mxcomm.formats.builtins import E2M1, E2M3, E3M2, E4M3, E5M2
from mxcomm.formats.element import code_values

# -- derived properties --------------------------------------------------------------

OCP_ELEMENTS = [
    # element, bits, max_normal, emax, min_normal, min_subnormal
    (E4M3, 8, 448.0, 8, 2.0**-6, 2.0**-9),
    (E5M2, 8, 57344.0, 15, 2.0**-14, 2.0**-16),
    (E3M2, 6, 28.0, 4, 2.0**-2, 2.0**-4),
    (E2M3, 6, 7.5, 2, 1.0, 0.125),
    (E2M1, 4, 6.0, 2, 1.0, 0.5),
]


@pytest.mark.parametrize("elem,bits,max_normal,emax,min_normal,min_subnormal", OCP_ELEMENTS, ids=str)
def test_ocp_element_properties(elem, bits, max_normal, emax, min_normal, min_subnormal) -> None:
    assert elem.bits == bits
    assert elem.max_normal == max_normal
    assert elem.emax == emax
    assert elem.min_normal == min_normal
    assert elem.min_subnormal == min_subnormal


@pytest.mark.parametrize("bits", range(2, 9))
def test_int_element_properties(bits: int) -> None:
    elem = IntElement(bits)
    assert elem.bits == bits
    assert elem.kmax == 2 ** (bits - 1) - 1
    assert elem.step == 2.0 ** -(bits - 2)
    assert elem.max_normal == (2 ** (bits - 1) - 1) / 2 ** (bits - 2)
    assert elem.emax == 0
    table = code_values(elem)
    # two's complement: code c >= 2**(bits-1) is c - 2**bits; the most negative code decodes too
    assert table[0] == 0.0
    assert table[1 << (bits - 1)] == -(2.0 ** (bits - 1)) * elem.step  # MXINT8's -2.0
    assert table[(1 << bits) - 1] == -elem.step
    assert max(table) == elem.max_normal


def test_mxint8_most_negative_code_is_minus_two() -> None:
    assert code_values(IntElement(8))[0x80] == -2.0


def test_default_bias_and_custom_bias() -> None:
    assert FloatElement(3, 2).bias == 3
    assert FloatElement(1, 1).bias == 0
    shifted = FloatElement(3, 2, bias=5)
    assert shifted.max_normal == FloatElement(3, 2).max_normal / 4
    assert shifted.min_subnormal == FloatElement(3, 2).min_subnormal / 4


def test_emax_and_max_normal_follow_special_values() -> None:
    # the same E4M3 bit budget with the three legal special-value choices
    assert FloatElement(4, 3).max_normal == 480.0
    assert FloatElement(4, 3, nan="all_ones").max_normal == 448.0
    assert FloatElement(4, 3, inf=True, nan="ieee").max_normal == 240.0
    assert FloatElement(5, 2, inf=True, nan="ieee").emax == 15
    assert FloatElement(5, 2).emax == 16


# -- code tables against external oracles ------------------------------------------


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal including NaN positions, inf signs and the sign of zero."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(
        np.all((a == b) & (np.signbit(a) == np.signbit(b)) | (np.isnan(a) & np.isnan(b)))
    )


@pytest.mark.parametrize(
    "elem,ml_dtype",
    [
        (E4M3, ml_dtypes.float8_e4m3fn),
        (E5M2, ml_dtypes.float8_e5m2),
        (E2M3, ml_dtypes.float6_e2m3fn),
        (E3M2, ml_dtypes.float6_e3m2fn),
        (E2M1, ml_dtypes.float4_e2m1fn),
    ],
    ids=lambda v: str(v) if isinstance(v, FloatElement) else "",
)
def test_ocp_code_tables_match_ml_dtypes(elem: FloatElement, ml_dtype) -> None:
    codes = np.arange(1 << elem.bits, dtype=np.uint8)
    oracle = codes.view(ml_dtype).astype(np.float64)
    assert _same(np.array(code_values(elem)), oracle)
    assert elem.max_normal == float(ml_dtypes.finfo(ml_dtype).max)


@pytest.mark.parametrize(
    "elem,torch_dtype", [(E4M3, torch.float8_e4m3fn), (E5M2, torch.float8_e5m2)], ids=["e4m3", "e5m2"]
)
def test_fp8_code_tables_match_torch(elem: FloatElement, torch_dtype: torch.dtype) -> None:
    oracle = torch.arange(256, dtype=torch.int64).to(torch.uint8).view(torch_dtype).to(torch.float64).numpy()
    assert _same(np.array(code_values(elem)), oracle)
    assert elem.max_normal == torch.finfo(torch_dtype).max


def test_ieee_half_and_bfloat16_as_elements() -> None:
    """16-bit elements: IEEE half and bfloat16 are E5M10 / E8M7 with IEEE specials."""
    half = FloatElement(5, 10, inf=True, nan="ieee")
    oracle = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)
    assert _same(np.array(code_values(half)), oracle)
    bf16 = FloatElement(8, 7, inf=True, nan="ieee")
    codes = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    assert _same(np.array(code_values(bf16)), codes.to(torch.float64).numpy())


def _gfloat_format(elem: FloatElement) -> gfloat.FormatInfo:
    specials = {
        "none": dict(domain=gfloat.Domain.Finite, num_high_nans=0),
        "all_ones": dict(domain=gfloat.Domain.Finite, num_high_nans=1),
        "ieee": dict(domain=gfloat.Domain.Extended, num_high_nans=(1 << elem.mbits) - 1),
    }[elem.nan]
    return gfloat.FormatInfo(
        f"e{elem.ebits}m{elem.mbits}",
        k=elem.bits,
        precision=elem.mbits + 1,
        bias=elem.bias,
        is_signed=True,
        has_nz=True,
        has_subnormals=True,
        is_twos_complement=False,
        **specials,
    )


def test_gfloat_oracle_agrees_on_ocp_formats() -> None:
    """The mapping to gfloat's FormatInfo reproduces gfloat's own OCP descriptions."""
    pairs = [
        (E4M3, gfloat.formats.format_info_ocp_e4m3),
        (E5M2, gfloat.formats.format_info_ocp_e5m2),
        (E3M2, gfloat.formats.format_info_ocp_e3m2),
        (E2M3, gfloat.formats.format_info_ocp_e2m3),
        (E2M1, gfloat.formats.format_info_ocp_e2m1),
    ]
    for elem, fi in pairs:
        ours = [gfloat.decode_float(_gfloat_format(elem), c).fval for c in range(1 << elem.bits)]
        theirs = [gfloat.decode_float(fi, c).fval for c in range(1 << elem.bits)]
        assert _same(np.array(ours), np.array(theirs))
        assert _same(np.array(code_values(elem)), np.array(theirs))


@st.composite
def float_elements(draw: st.DrawFn, max_bits: int = 16) -> FloatElement:
    ebits = draw(st.integers(1, 8))
    mbits = draw(st.integers(0, min(10, max_bits - 1 - ebits)))
    assume(mbits >= 0)
    inf, nan = draw(st.sampled_from([(False, "none"), (False, "all_ones"), (True, "ieee")]))
    default_bias = 2 ** (ebits - 1) - 1
    bias = draw(st.one_of(st.none(), st.integers(default_bias - 12, default_bias + 12)))
    try:
        return FloatElement(ebits, mbits, bias=bias, inf=inf, nan=nan)
    except mxcomm.FormatError:
        assume(False)
        raise AssertionError("unreachable") from None


@given(float_elements(max_bits=11))
def test_custom_float_code_tables_match_gfloat(elem: FloatElement) -> None:
    fi = _gfloat_format(elem)
    theirs = np.array([gfloat.decode_float(fi, c).fval for c in range(1 << elem.bits)])
    ours = np.array(code_values(elem))
    assert _same(ours, theirs)
    finite = theirs[np.isfinite(theirs)]
    assert elem.max_normal == finite.max()
    assert elem.min_subnormal == finite[finite > 0].min()
    assert elem.emax == math.frexp(elem.max_normal)[1] - 1


# -- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,kwargs",
    [
        ((0, 2), {}),  # ebits 0
        ((9, 2), {}),  # ebits 9
        ((2, 11), {}),  # mbits 11
        ((2, -1), {}),
        ((6, 10), {}),  # 17 bits wide
        ((8, 8), {}),  # 17 bits wide
        ((2.0, 1), {}),  # non-int
        ((2, 1.0), {}),
        ((True, 1), {}),  # bool is not an int here
        ((2, 1), {"bias": 1.5}),
        ((2, 1), {"bias": "1"}),
        ((2, 1), {"bias": True}),
        ((2, 1), {"inf": True}),  # inf needs nan="ieee"
        ((2, 1), {"inf": True, "nan": "none"}),
        ((2, 1), {"inf": True, "nan": "all_ones"}),
        ((2, 1), {"nan": "ieee"}),  # ieee NaNs need inf=True
        ((2, 1), {"nan": "sometimes"}),
        ((2, 1), {"inf": 1, "nan": "ieee"}),
        ((1, 1), {"inf": True, "nan": "ieee"}),  # no finite normal binade left
        ((8, 7), {}),  # max normal 2**128 * ... does not fit float32
        ((3, 2), {"bias": 200}),  # subnormals below float32's range
        ((3, 2), {"bias": -200}),  # max normal above float32's range
    ],
)
def test_illegal_float_elements(args: tuple, kwargs: dict) -> None:
    with pytest.raises(mxcomm.FormatError):
        FloatElement(*args, **kwargs)


@pytest.mark.parametrize("bits", [0, 1, 9, 16, -4, 4.0, True, "4", None])
def test_illegal_int_elements(bits: object) -> None:
    with pytest.raises(mxcomm.FormatError):
        IntElement(bits)  # type: ignore[arg-type]


def test_format_error_is_a_value_error() -> None:
    assert issubclass(mxcomm.FormatError, ValueError)
    assert issubclass(mxcomm.FormatError, mxcomm.MxcommError)


def test_legal_extremes_are_accepted() -> None:
    for ebits in range(1, 8):
        FloatElement(ebits, 0)
    # an 8-bit exponent needs its top binade reserved to stay inside float32 (docs/semantics.md)
    FloatElement(8, 0, nan="all_ones")  # top code NaN: max 2**127
    FloatElement(8, 1, nan="all_ones", bias=128)
    FloatElement(5, 10)  # 16 bits
    FloatElement(8, 7, inf=True, nan="ieee")  # bfloat16-like
    FloatElement(2, 10, nan="all_ones")
    IntElement(2)
    IntElement(8)


def test_elements_are_hashable_and_compare_by_value() -> None:
    assert FloatElement(2, 1) == E2M1
    assert hash(FloatElement(2, 1)) == hash(E2M1)
    assert FloatElement(2, 1, bias=1) == E2M1  # the default bias made explicit
    assert FloatElement(2, 1, bias=2) != E2M1
    assert IntElement(4) == IntElement(4) != IntElement(5)
