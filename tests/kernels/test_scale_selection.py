"""Block-scale selection against an independent exact computation, on every backend.

The expected scales are computed here from docs/semantics.md ("Block scale X", "per-tensor scale")
with Python's exact arithmetic (``math.frexp`` on the float inputs, ``fractions.Fraction`` for
every quotient and rounding), not with any helper of the reference codec: the scale-type grids are
written out below from their IEEE / OCP definitions. Inputs are random bit patterns of the input
dtype, block by block of one kind: all zeros, subnormals, tiny, near the dtype's max, ordinary,
amax right at (or next to) a scale mode's threshold, huge and tiny mixed, NaN / Inf blocks; for every scale type and E8M0 mode, on the reference and
every fast backend.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mxcomm
from mxcomm.formats import BlockFormat, FloatElement, IntElement
from mxcomm.kernels import registered_backends
from tests.formats.strategies import _build, elements
from tests.kernels.exactness import DTYPES, Codec, backend_device
from tests.profiles import CORE_EXAMPLES, examples

CODECS = [pytest.param(Codec(n, backend_device(n)), marks=pytest.mark.requires_backend(n), id=n)
          for n in registered_backends()]

pytestmark = [
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

# -- the scale types' grids, from their definitions: (trailing mantissa bits, smallest normal
# exponent, largest finite value); every grid has subnormals below 2**emin
GRIDS = {
    "e4m3": (3, -6, Fraction(448)),  # OCP FP8 E4M3 (S.1111.111 is NaN): 1.75 * 2**8
    "fp16": (10, -14, Fraction(65504)),  # IEEE binary16: (2 - 2**-10) * 2**15
    "bf16": (7, -126, (2 - Fraction(1, 2**7)) * 2**127),
    "fp32": (23, -126, (2 - Fraction(1, 2**23)) * 2**127),
}
E8M0_MIN, E8M0_MAX = -127, 127
NAN = None  # the expected scale of a block holding NaN or Inf


def floor_log2(a: Fraction) -> int:
    """floor(log2(a)) for a > 0, exactly."""
    k = a.numerator.bit_length() - a.denominator.bit_length()
    return k if Fraction(2) ** k <= a else k - 1


def q64(numerator: Fraction, denominator: Fraction) -> Fraction:
    """The quotient as the spec takes it: computed in float64, round to nearest even (docs/semantics.md).
    (``float(Fraction)`` rounds correctly.) It differs from the exact quotient only where the
    denominator has more than 29 significant bits: an fp32 grid under a tensor scale."""
    return Fraction(float(numerator / denominator))


def round_up_on_grid(q: Fraction, scale: str) -> Fraction:
    """The smallest value of the scale type's grid that is >= q > 0, clamped to its largest value."""
    mbits, emin, largest = GRIDS[scale]
    step = Fraction(2) ** (max(floor_log2(q), emin) - mbits)
    return min(math.ceil(q / step) * step, largest)


def element_precision(elem: FloatElement | IntElement) -> int:
    """Fraction bits of the element's significand (docs/semantics.md: mbits; bits - 2 for ints)."""
    return elem.mbits if isinstance(elem, FloatElement) else elem.bits - 2


def expected_e8m0_exponent(amax: Fraction, elem: FloatElement | IntElement, mode: str) -> int:
    if amax == 0:
        return E8M0_MIN  # all-zero blocks: code 0x00
    max_normal = Fraction(elem.max_normal)
    emax = floor_log2(max_normal)
    f = floor_log2(amax)
    if mode == "floor":
        e = f - emax
    elif mode == "ceil":
        e = f + (amax != Fraction(2) ** f) - emax
    elif mode == "rceil":  # the smallest e with max_normal * 2**e >= amax
        r = amax / max_normal
        k = floor_log2(r)
        e = k + (r != Fraction(2) ** k)
    else:  # even: amax rounded half up to the element's precision, then floor
        p = element_precision(elem)
        significand = amax / Fraction(2) ** f
        rounded = math.floor(significand * 2**p + Fraction(1, 2))
        e = f + (rounded >= 2 ** (p + 1)) - emax
    return min(max(e, E8M0_MIN), E8M0_MAX)


def block_amaxes(x: torch.Tensor, block: int) -> list[Fraction | None]:
    """Per block (rows of x, padded to whole blocks): the exact max |x|, None for a NaN / Inf block."""
    out: list[Fraction | None] = []
    for row in x.to(torch.float64).tolist():
        for b in range(0, len(row), block):
            values = row[b : b + block]
            out.append(None if any(not math.isfinite(v) for v in values) else max(Fraction(abs(v)) for v in values))
    return out


def finite_amax(x: torch.Tensor) -> Fraction:
    return max((Fraction(abs(v)) for v in x.to(torch.float64).reshape(-1).tolist() if math.isfinite(v)),
               default=Fraction(0))


def stored_scale_values(p: mxcomm.Packed) -> list[Fraction | None]:
    """The stored block scales as exact values (None where the stored scale is NaN)."""
    s = p.scales.cpu()
    if p.format.scale == "e4m3":
        s = s.view(torch.float8_e4m3fn)
    return [None if math.isnan(v) else Fraction(v) for v in s.to(torch.float64).tolist()]


# -- inputs -----------------------------------------------------------------------------------
_BITS = {torch.float32: (8, 23, torch.int32), torch.bfloat16: (8, 7, torch.int16), torch.float16: (5, 10, torch.int16)}
KINDS = ("zero", "subnormal", "tiny", "near_max", "ordinary", "threshold", "huge_and_tiny", "nan", "inf")


def thresholds(elem: FloatElement | IntElement, mode: str) -> list[float]:
    """Significands where scale mode ``mode`` changes its choice: 1 (floor, ceil), max_normal's
    (rceil, and the float scale types), 2 - 2**-(p+1) (even)."""
    max_normal = Fraction(elem.max_normal)
    return {"floor": [1.0], "ceil": [1.0], "rceil": [float(max_normal / Fraction(2) ** floor_log2(max_normal))],
            "even": [2.0 - 2.0 ** -(element_precision(elem) + 1)]}[mode]


def random_blocks(dtype: torch.dtype, kinds: list[str], block: int, center: float, seed: int,
                  edges: list[float] = (1.0,)) -> torch.Tensor:
    """(1, len(kinds) * block) of random bit patterns of ``dtype``, block i of kind ``kinds[i]``;
    ``center`` in [0, 1) places the ordinary blocks' exponents in the dtype's range. A threshold
    block's amax is one of the significands ``edges`` (times a power of two), rounded to the
    dtype, or the float next to it on either side; its other elements are smaller."""
    ebits, mbits, int_dtype = _BITS[dtype]
    top = 2**ebits - 2  # the largest exponent field of a finite value
    bias = 2 ** (ebits - 1) - 1
    g = torch.Generator().manual_seed(seed)
    n = block

    def fields(lo: int, hi: int) -> torch.Tensor:
        return torch.randint(lo, hi + 1, (n,), generator=g)

    def pick(options) -> float:
        return options[int(torch.randint(0, len(options), (1,), generator=g))]

    around_center = (max(1, int(center * top) - 3), min(top - 1, int(center * top) + 3))
    rows = []
    for kind in kinds:
        exp_field = {
            "zero": torch.zeros(n, dtype=torch.int64),
            "subnormal": torch.zeros(n, dtype=torch.int64),
            "tiny": fields(0, 3),
            "near_max": fields(top - 2, top),
            "ordinary": fields(*around_center),
            "threshold": fields(*around_center),
            "huge_and_tiny": torch.where(torch.rand(n, generator=g) < 0.5, fields(top - 1, top), fields(0, 2)),
            "nan": fields(1, top),
            "inf": fields(1, top),
        }[kind]
        mant = torch.randint(0, 2**mbits, (n,), generator=g)
        if kind == "zero":
            mant = torch.zeros(n, dtype=torch.int64)
        sign = torch.randint(0, 2, (n,), generator=g)
        bits = (sign << (ebits + mbits)) | (exp_field << mbits) | mant
        if kind in ("nan", "inf"):
            i = int(torch.randint(0, n, (1,), generator=g))
            bits[i] = ((2**ebits - 1) << mbits) | (1 << (mbits - 1) if kind == "nan" else 0)
        if kind not in ("zero", "subnormal", "nan", "inf"):
            bits[torch.rand(n, generator=g) < 0.2] = 0  # some zeros inside
        width = 1 << (ebits + mbits + 1)
        bits = torch.where(bits >= width // 2, bits - width, bits)  # as signed integers of that width
        row = bits.to(int_dtype).view(dtype)
        if kind == "threshold":
            amax = torch.tensor(math.ldexp(pick(edges), int(exp_field[0]) - bias), dtype=dtype)
            amax = (amax.view(int_dtype) + int(pick([-1, 0, 0, 1]))).view(dtype)  # or a neighbour
            others = torch.rand(n, generator=g, dtype=torch.float64) * float(amax) * (1 - 2 * sign.double())
            row = others.to(dtype)
            row[int(torch.randint(0, n, (1,), generator=g))] = amax * pick([1.0, -1.0])
        rows.append(row)
    return torch.cat(rows).reshape(1, -1)


@st.composite
def block_inputs(draw: st.DrawFn, block: int, elem: FloatElement | IntElement, mode: str) -> torch.Tensor:
    dtype = draw(st.sampled_from(DTYPES))
    kinds = draw(st.lists(st.sampled_from(KINDS), max_size=5)) + ["threshold"]  # one amax at the threshold
    kinds = draw(st.permutations(kinds))
    x = random_blocks(dtype, kinds, block, draw(st.floats(0, 1, exclude_max=True)), draw(st.integers(0, 2**31 - 1)),
                      thresholds(elem, mode))
    ragged = draw(st.integers(0, block - 1))  # the last block padded with zeros
    return x[:, : x.shape[1] - ragged] if ragged < x.shape[1] else x


OCP_ELEMENTS = [FloatElement(2, 1), FloatElement(3, 2), FloatElement(2, 3), FloatElement(4, 3, nan="all_ones"),
                FloatElement(5, 2, inf=True, nan="ieee"), IntElement(8), IntElement(4)]
ELEMENTS = st.one_of(st.sampled_from(OCP_ELEMENTS), elements())


# -- E8M0 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", CODECS)
@examples(CORE_EXAMPLES)
@given(elem=ELEMENTS, mode=st.sampled_from(["floor", "ceil", "rceil", "even"]),
       block=st.sampled_from([1, 4, 16, 32]), data=st.data())
def test_e8m0_scales(codec: Codec, elem, mode: str, block: int, data) -> None:
    x = data.draw(block_inputs(block, elem, mode))
    fmt = _build(BlockFormat, "e8", elem, block_size=block, scale_mode=mode)
    p = codec.encode(x, fmt)
    want = [0xFF if a is NAN else expected_e8m0_exponent(a, elem, mode) + 127 for a in block_amaxes(x, block)]
    assert p.scales.cpu().tolist() == want


# -- float scale types, with and without a tensor scale -------------------------------------------
@pytest.mark.parametrize("codec", CODECS)
@examples(CORE_EXAMPLES)
@given(elem=ELEMENTS, scale=st.sampled_from(sorted(GRIDS)), tensor_scale=st.booleans(),
       block=st.sampled_from([1, 4, 16, 32]), data=st.data())
def test_float_scales(codec: Codec, elem, scale: str, tensor_scale: bool, block: int, data) -> None:
    x = data.draw(block_inputs(block, elem, "rceil"))
    fmt = _build(BlockFormat, "fs", elem, block_size=block, scale=scale, tensor_scale=tensor_scale)
    p = codec.encode(x, fmt)
    max_normal = Fraction(elem.max_normal)
    denominator = max_normal
    if tensor_scale:
        # S = amax_tensor / (max_normal * scale_max) rounded up onto float32, 1 for an all-zero tensor
        amax_t = finite_amax(x)
        s_tensor = round_up_on_grid(q64(amax_t, max_normal * GRIDS[scale][2]), "fp32") if amax_t else Fraction(1)
        assert Fraction(float(p.tensor_scale)) == s_tensor
        denominator = max_normal * s_tensor
    else:
        assert p.tensor_scale is None
    want = [a if a is NAN else (round_up_on_grid(q64(a, denominator), scale) if a else Fraction(0))
            for a in block_amaxes(x, block)]
    assert stored_scale_values(p) == want


# -- named extremes -----------------------------------------------------------------------------
def _extreme_rows(dtype: torch.dtype) -> torch.Tensor:
    """Blocks of 8: zeros, the smallest subnormal, subnormals, the dtype's max, just below it, huge
    and tiny together, 2**k exactly, just below and just above, amaxes inside and in the middle of
    a binade (ceil/rceil/even edges), and a NaN block."""
    info = torch.finfo(dtype)
    smallest = info.smallest_normal * 2.0 ** -{torch.float32: 23, torch.bfloat16: 7, torch.float16: 10}[dtype]
    below_max = float(torch.tensor(info.max, dtype=dtype).view(_BITS[dtype][2]).sub(1).view(dtype))
    blocks = [
        [0.0] * 8,
        [-0.0, smallest] + [0.0] * 6,
        [smallest * k for k in (1, 3, 7, -5, 100, 2, -1, 0)],
        [info.max, -1.0] + [0.0] * 6,
        [below_max, below_max / 2] + [1.0] * 6,
        [info.max, smallest, -smallest, 1e-3, 0.0, info.max / 3, -info.max, 2 * smallest],
        [8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.0, -8.0],
        [8.0 - 2.0 ** -{torch.float32: 20, torch.bfloat16: 4, torch.float16: 7}[dtype], 1.0] + [0.0] * 6,
        [5.0, 3.0, 1.0] + [0.0] * 5,  # significands 1.25 and 1.5: inside a binade, at its middle
        [3.0, -1.5, 0.75] + [0.0] * 5,
        [1.0 + 2.0 ** -{torch.float32: 23, torch.bfloat16: 7, torch.float16: 10}[dtype], 0.5] + [0.0] * 6,
        [math.nan, 1.0] + [2.0] * 6,
    ]
    return torch.tensor(blocks, dtype=torch.float64).reshape(1, -1).to(dtype)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_named_extremes(codec: Codec, dtype: torch.dtype) -> None:
    x = _extreme_rows(dtype)
    amaxes = block_amaxes(x, 8)
    for elem in OCP_ELEMENTS:
        for mode in ("floor", "ceil", "rceil", "even"):
            p = codec.encode(x, BlockFormat("e8", elem, block_size=8, scale_mode=mode))
            want = [0xFF if a is NAN else expected_e8m0_exponent(a, elem, mode) + 127 for a in amaxes]
            assert p.scales.cpu().tolist() == want, (elem, mode)
        for scale in GRIDS:
            p = codec.encode(x, BlockFormat("fs", elem, block_size=8, scale=scale))
            want = [a if a is NAN else (round_up_on_grid(a / Fraction(elem.max_normal), scale) if a else Fraction(0))
                    for a in amaxes]
            assert stored_scale_values(p) == want, (elem, scale)


@pytest.mark.parametrize("codec", CODECS)
def test_tensor_scaled_fp32_block_scale_rounds_the_float64_quotient_up(codec: Codec) -> None:
    """A constructed block whose exact quotient lies 4e-17 (relative) above an fp32 grid value: the
    quotient is the float64 one (docs/semantics.md), which lands on the grid value itself."""
    elem = FloatElement(5, 10)  # max_normal 131008 = 2047 * 2**6
    x = torch.tensor([[0.0021418605465441942, 0.0, 5.758262286717525e37, 0.0]], dtype=torch.float32)
    p = codec.encode(x, BlockFormat("t", elem, block_size=2, scale="fp32", tensor_scale=True))
    s_tensor = round_up_on_grid(q64(finite_amax(x), Fraction(elem.max_normal) * GRIDS["fp32"][2]), "fp32")
    assert Fraction(float(p.tensor_scale)) == s_tensor
    amax = Fraction(float(x[0, 0]))
    exact = amax / (Fraction(elem.max_normal) * s_tensor)
    assert q64(amax, Fraction(elem.max_normal) * s_tensor) != exact  # the case this test is about
    assert stored_scale_values(p)[0] == round_up_on_grid(q64(amax, Fraction(elem.max_normal) * s_tensor), "fp32")
