"""Element types: the per-value part of a block format.

An element is a small frozen dataclass whose derived properties (bits, emax,
max normal, ...) follow from its fields, in the style of gfloat. The code
table of an element (``code_values``) is pure arithmetic and is what every
codec backend is checked against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union

from mxcomm.errors import FormatError
from mxcomm.formats.enums import NanEncoding

# Every element value must be exactly representable as a float32, because the
# decoders build their values in float32 (and the Triton kernels compute in it).
_FP32_MIN_SUBNORMAL_EXP = -149
_FP32_MAX_EXP = 127


@dataclass(frozen=True)
class FloatElement:
    """A sign | exponent | trailing-mantissa minifloat (OCP style).

    ``mbits`` counts the explicit trailing mantissa bits (E2M1 -> ``ebits=2,
    mbits=1``). Subnormals are always present (exponent field 0). ``bias``
    defaults to ``2**(ebits-1) - 1``.

    Special values (only three combinations are legal):

    * ``inf=False, nan="none"``: every code is finite; the top exponent field
      holds normal numbers (OCP FP6/FP4 and most custom formats).
    * ``inf=False, nan="all_ones"``: only S.1..1.1..1 is NaN (OCP E4M3).
    * ``inf=True, nan="ieee"``: the top exponent field is reserved, zero
      mantissa = inf, non-zero mantissa = NaN (E5M2, IEEE half).

    Attributes:
        ebits: Exponent bits, 1..8.
        mbits: Explicit trailing mantissa bits, 0..10 (at most 16 bits in all with the sign).
        bias: Exponent bias (default ``2**(ebits-1) - 1``).
        inf: Whether the top exponent field encodes infinities.
        nan: NaN encoding (:class:`~mxcomm.formats.NanEncoding`: ``"none"``, ``"all_ones"``, ``"ieee"``).

    Raises:
        FormatError: on construction, a field out of range, an illegal inf / NaN combination, or
            values float32 cannot hold.
    """

    ebits: int
    mbits: int
    bias: int | None = field(default=None, kw_only=True)
    inf: bool = field(default=False, kw_only=True)
    nan: NanEncoding = field(default=NanEncoding.NONE, kw_only=True)

    def __post_init__(self) -> None:
        for name in ("ebits", "mbits"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise FormatError(f"FloatElement.{name} must be an int, got {value!r}")
        if not 1 <= self.ebits <= 8:
            raise FormatError(f"FloatElement.ebits must be in 1..8, got {self.ebits}")
        if not 0 <= self.mbits <= 10:
            raise FormatError(f"FloatElement.mbits must be in 0..10, got {self.mbits}")
        if 1 + self.ebits + self.mbits > 16:
            raise FormatError(
                f"FloatElement E{self.ebits}M{self.mbits} is {1 + self.ebits + self.mbits} bits wide; "
                "at most 16 bits are supported"
            )
        if self.bias is None:
            object.__setattr__(self, "bias", 2 ** (self.ebits - 1) - 1)
        if not isinstance(self.bias, int) or isinstance(self.bias, bool):
            raise FormatError(f"FloatElement.bias must be an int or None, got {self.bias!r}")
        if not isinstance(self.inf, bool):
            raise FormatError(f"FloatElement.inf must be a bool, got {self.inf!r}")
        object.__setattr__(self, "nan", NanEncoding.parse(self.nan, "FloatElement.nan"))
        if (self.inf, self.nan) not in ((False, "none"), (False, "all_ones"), (True, "ieee")):
            raise FormatError(
                f"FloatElement(inf={self.inf}, nan={self.nan!r}) is not a legal combination; "
                "use inf=False with nan='none' or 'all_ones', or inf=True with nan='ieee'"
            )
        if self.max_code_exponent_field < 1:
            raise FormatError(f"{self!r} has no finite normal numbers")
        if self.emax > _FP32_MAX_EXP:
            raise FormatError(f"{self!r}: max normal 2**{self.emax}*... does not fit in float32")
        if self.emin - self.mbits < _FP32_MIN_SUBNORMAL_EXP:
            raise FormatError(
                f"{self!r}: smallest subnormal 2**{self.emin - self.mbits} is below float32's 2**-149"
            )

    # -- derived properties -------------------------------------------------
    @property
    def kind(self) -> str:
        return "float"

    @property
    def bits(self) -> int:
        """Width of one element code in bits (sign + exponent + mantissa)."""
        return 1 + self.ebits + self.mbits

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number (and scale of the subnormals)."""
        return 1 - self.bias  # type: ignore[operator]

    @property
    def max_code_magnitude(self) -> int:
        """The largest magnitude code (sign bit clear) that decodes to a finite value."""
        all_ones = (1 << (self.ebits + self.mbits)) - 1
        if self.nan == "all_ones":
            return all_ones - 1
        if self.nan == "ieee":
            return all_ones - (1 << self.mbits)  # top exponent field reserved
        return all_ones

    @property
    def max_code_exponent_field(self) -> int:
        return self.max_code_magnitude >> self.mbits

    @property
    def emax(self) -> int:
        """Unbiased exponent of the largest normal binade (floor(log2(max_normal)))."""
        return self.max_code_exponent_field - self.bias  # type: ignore[operator]

    @property
    def max_normal(self) -> float:
        return magnitude_value(self, self.max_code_magnitude)

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        return math.ldexp(1.0, self.emin - self.mbits)

    @property
    def precision_bits(self) -> int:
        """Fractional bits of the significand; used by the ``even`` scale mode."""
        return self.mbits

    def __str__(self) -> str:
        extra = ""
        if self.bias != 2 ** (self.ebits - 1) - 1:
            extra += f",bias={self.bias}"
        if self.nan != "none":
            extra += f",nan={self.nan}"
        return f"E{self.ebits}M{self.mbits}{extra}"


@dataclass(frozen=True)
class IntElement:
    """Symmetric two's-complement integer element: value = k * 2**-(bits-2).

    The encoder uses k in [-(2**(bits-1)-1), 2**(bits-1)-1]; the decoder also
    accepts the most negative code (OCP MXINT8 allows -2.0).

    Attributes:
        bits: Code width, 2..8.

    Raises:
        FormatError: on construction, ``bits`` out of range.
    """

    bits: int

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool):
            raise FormatError(f"IntElement.bits must be an int, got {self.bits!r}")
        if not 2 <= self.bits <= 8:
            raise FormatError(f"IntElement.bits must be in 2..8, got {self.bits}")

    @property
    def kind(self) -> str:
        return "int"

    @property
    def kmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def step(self) -> float:
        return math.ldexp(1.0, -(self.bits - 2))

    @property
    def emax(self) -> int:
        return 0

    @property
    def max_normal(self) -> float:
        return self.kmax * self.step

    @property
    def precision_bits(self) -> int:
        return self.bits - 2

    def __str__(self) -> str:
        return f"INT{self.bits}"


Element = Union[FloatElement, IntElement]


def magnitude_value(elem: FloatElement, code_mag: int) -> float:
    """Value of a float element code with the sign bit clear (may be inf/nan)."""
    exp_field = code_mag >> elem.mbits
    mant = code_mag & ((1 << elem.mbits) - 1)
    top = (1 << elem.ebits) - 1
    if elem.nan == "ieee" and exp_field == top:
        return math.inf if mant == 0 else math.nan
    if elem.nan == "all_ones" and code_mag == (1 << (elem.ebits + elem.mbits)) - 1:
        return math.nan
    if exp_field == 0:
        return math.ldexp(mant, elem.emin - elem.mbits)
    return math.ldexp((1 << elem.mbits) + mant, exp_field - elem.bias - elem.mbits)  # type: ignore[operator]


def code_values(elem: Element) -> list[float]:
    """The value of every code 0 .. 2**bits - 1, as exact Python floats."""
    n = 1 << elem.bits
    if isinstance(elem, IntElement):
        half = n >> 1
        return [(c - n if c >= half else c) * elem.step for c in range(n)]
    sign_bit = 1 << (elem.bits - 1)
    out = []
    for c in range(n):
        v = magnitude_value(elem, c & (sign_bit - 1))
        out.append(-v if c & sign_bit else v)
    return out


class _CodeTableCache:
    """Per-element cache of ``code_values`` (formats are hashable)."""

    def __init__(self) -> None:
        self._tables: dict[Element, list[float]] = {}

    def __call__(self, elem: Element) -> list[float]:
        table = self._tables.get(elem)
        if table is None:
            table = self._tables[elem] = code_values(elem)
        return table


cached_code_values = _CodeTableCache()

__all__ = [
    "Element",
    "FloatElement",
    "IntElement",
    "NanEncoding",
    "cached_code_values",
    "code_values",
    "magnitude_value",
]
