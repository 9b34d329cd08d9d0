"""The codec's policy enums, each with the stable integer code every implementation uses.

One definition serves the whole package: the torch reference, the CPU kernels
(whose C++ header ``mxcomm/kernels/codec_params.h`` is generated from these
codes, and checked by a test), the Triton kernels, the ``to_bytes`` frame and the
collective handshake. A code is part of the wire format: never renumber one.

Members are ``str`` subclasses whose value is the user-facing spelling, so
``fmt.rounding == "rne"`` holds and a plain string is accepted wherever a
member is (``Rounding.parse("rne")``); ``member.code`` is the integer.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

from mxcomm.errors import FormatError

E = TypeVar("E", bound="CodedEnum")


class CodedEnum(str, Enum):
    """A string-valued enum whose members carry a stable integer ``code``."""

    code: int

    def __new__(cls, value: str, code: int) -> CodedEnum:
        member = str.__new__(cls, value)
        member._value_ = value
        member.code = code
        return member

    # print and format as the plain value ("rne"), as the strings they replace did
    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str(self), spec)

    def __repr__(self) -> str:
        return repr(self.value)

    @classmethod
    def parse(cls: type[E], value: Any, what: str | None = None) -> E:
        """The member spelled ``value`` (a member or its string); anything else raises FormatError."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls(value)
            except ValueError:
                pass
        names = tuple(m.value for m in cls)
        raise FormatError(f"{what or cls.__name__} must be one of {names}, got {value!r}")

    @classmethod
    def from_code(cls: type[E], code: int, what: str | None = None) -> E:
        """The member with integer ``code``; an unknown code raises FormatError."""
        for member in cls:
            if member.code == code:
                return member
        raise FormatError(f"invalid {what or cls.__name__} code {code}")


class Rounding(CodedEnum):
    """How an element is rounded onto its grid."""

    RNE = "rne", 0  # round to nearest, ties to even
    AWAY = "away", 1  # round to nearest, ties away from zero
    ZERO = "zero", 2  # toward zero (truncate)
    STOCHASTIC = "stochastic", 3  # up with probability equal to the fraction (counter-based hash)


class ScaleMode(CodedEnum):
    """How a power-of-two (E8M0) block scale is chosen from the block's amax (docs/semantics.md)."""

    FLOOR = "floor", 0  # OCP MX v1.0: floor(log2(amax)) - emax
    CEIL = "ceil", 1
    RCEIL = "rceil", 2  # the smallest scale with max_normal * scale >= amax (nothing clips)
    EVEN = "even", 3  # amax rounded to the element's precision first, then floor


class ScaleType(CodedEnum):
    """How one block scale is stored."""

    E8M0 = "e8m0", 0
    E4M3 = "e4m3", 1
    FP16 = "fp16", 2
    BF16 = "bf16", 3
    FP32 = "fp32", 4


class NanEncoding(CodedEnum):
    """Which codes of a float element are NaN."""

    NONE = "none", 0  # every code is finite
    ALL_ONES = "all_ones", 1  # only S.1..1.1..1 (OCP E4M3)
    IEEE = "ieee", 2  # top exponent field reserved: inf and NaN (E5M2)


__all__ = ["CodedEnum", "NanEncoding", "Rounding", "ScaleMode", "ScaleType"]
