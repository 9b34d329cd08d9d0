"""The kernel parameters of a block format: one definition for the native CPU and the Triton kernels.

Every format-dependent constant a kernel uses is a field of ``KernelParams``, computed once per
format by ``kernel_params(fmt)``. The two kernel families read the same values:

* the native CPU codec (``cpu_codec.cpp``) as ``struct Format``, declared in the generated header
  ``codec_params.h`` and passed from Python as the ctypes structure ``NativeParams``; both are
  generated from the fields below (``native=True``), in their order;
* the Triton kernels (``triton_kernels.py``) as ``tl.constexpr`` arguments named after the fields
  in upper case (``triton=True``; ``triton_constexprs``).

The header also carries the enum codes the C++ uses (``mxcomm.formats.enums`` and
``mxcomm.kernels.dtypes``) and the native ABI version. It is committed; regenerate it with::

    python -m mxcomm.kernels.params          # rewrites mxcomm/kernels/codec_params.h
    python -m mxcomm.kernels.params --check  # exit status 1 if the committed header is out of date

(``tests/kernels/test_native_build.py`` fails while it is out of date; a rebuilt library then
embeds the new header's hash, see ``native_build.py``.)
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mxcomm.errors import FormatError
from mxcomm.formats import BlockFormat, IntElement, Rounding, ScaleMode, ScaleType
from mxcomm.formats.element import cached_code_values
from mxcomm.kernels.dtypes import INPUT_DTYPES

HEADER_PATH = Path(__file__).with_name("codec_params.h")
# Version of the native library's C interface (the struct below and the mx_* signatures declared in
# cpu_backend.py); the library reports it (mx_abi_version) and the backend refuses another.
NATIVE_ABI_VERSION = 9

_CTYPES = {
    "int32_t": ctypes.c_int32,
    "uint32_t": ctypes.c_uint32,
    "uint64_t": ctypes.c_uint64,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
}


def _param(ctype: str, doc: str, *, native: bool = True, triton: bool = True) -> Any:
    """A KernelParams field: its C type, what it is, and which kernels take it."""
    assert ctype in _CTYPES, ctype
    return dataclasses.field(metadata={"ctype": ctype, "doc": doc, "native": native, "triton": triton})


@dataclass(frozen=True)
class KernelParams:
    """Every format-dependent constant of the codec kernels (see the module docstring)."""

    # -- element grid
    bits: int = _param("int32_t", "element code width")
    bits_pow2: int = _param("int32_t", "bits rounded up to a power of two (bit-packing tiles)", native=False)
    is_int: bool = _param("int32_t", "IntElement: two's complement codes (else sign-magnitude)")
    grid_mbits: int = _param("int32_t", "trailing mantissa bits of the rounding grid (int: bits - 1)")
    grid_emin: int = _param("int32_t", "binade of the grid's subnormals (int: 1, every value is subnormal)")
    max_code: int = _param("int32_t", "largest finite magnitude code (int: kmax)")
    emax: int = _param("int32_t", "element emax = floor(log2(max_normal))")
    max_normal: float = _param("double", "element max_normal (exactly a float32)")
    # -- e8m0 scale-mode thresholds: significand fractions in units of 2**-23, without the leading 1
    max_normal_frac: int = _param("int32_t", "rceil: fraction of max_normal's significand")
    even_frac: int = _param("int32_t", "even: a fraction >= this carries into the next binade")
    # -- policy codes (mxcomm.formats.enums)
    scale_type: int = _param("int32_t", "ScaleType code")
    scale_mode: int = _param("int32_t", "ScaleMode code")
    rounding: int = _param("int32_t", "Rounding code")
    # -- scale grid (float scale types; e8m0: unused)
    scale_mbits: int = _param("int32_t", "trailing mantissa bits of the stored scale")
    scale_emin: int = _param("int32_t", "binade of the stored scale's subnormals (1 - bias)")
    scale_max: float = _param("double", "largest finite scale", triton=False)
    scale_max_code: int = _param("int32_t", "grid code of scale_max (its storage bits)", native=False)
    scale_nan: int = _param("uint32_t", "stored bit pattern of a NaN block's scale (ScaleSpec.nan_bits)")
    tensor_scale: bool = _param("int32_t", "a float32 per-tensor scale multiplies every block scale")
    # -- decode
    table_has_inf: bool = _param("int32_t", "some element code decodes to +-inf", triton=False)
    table_max: float = _param("float", "largest finite |element value|", triton=False)
    # -- encode fast path
    float_rne: bool = _param("int32_t", "rne encodes may round with the FPU (see float_rne_exact)", triton=False)
    # -- geometry and rotation
    block_size: int = _param("int32_t", "elements per block", triton=False)
    rotate: bool = _param("int32_t", "random Hadamard rotation of every block (rotation_seed is set)")
    rotation_seed: int = _param("uint64_t", "seed of the rotation's signs (0 when not rotated)", triton=False)


FIELDS: tuple[dataclasses.Field, ...] = dataclasses.fields(KernelParams)
NATIVE_FIELDS = tuple(f for f in FIELDS if f.metadata["native"])
TRITON_FIELDS = tuple(f for f in FIELDS if f.metadata["triton"])


def _grid_code(value: float, mbits: int, emin: int) -> int:
    """Code of an exactly representable value >= 0 on a minifloat grid (its storage bit pattern)."""
    if value == 0:
        return 0
    binade = max(math.frexp(value)[1] - 1, emin)
    q = math.ldexp(value, mbits - binade)
    if q != int(q):  # pragma: no cover - the scale specs' max values lie on their grids
        raise FormatError(f"{value!r} is not on the grid (mbits={mbits}, emin={emin})")
    return ((binade - emin) << mbits) + int(q)


def float_rne_exact(fmt: BlockFormat, grid_mbits: int, grid_emin: int) -> bool:
    """Whether round-to-nearest-even encodes of ``fmt`` may round with the FPU (cpu_codec.cpp,
    element_codes_rne_fpu): the rounding constant 2**(binade + 23 - mbits) must stay a finite
    float32 for every binade up to emax + 1, and for power-of-two scales the float32 product
    x * 2**-e may only be inexact below 2**-126, which must then be at most half a grid step."""
    if fmt.element.emax + 1 + 23 - grid_mbits > 127:
        return False
    return not fmt.scale_spec.power_of_two or grid_emin - grid_mbits >= -125


@functools.cache
def kernel_params(fmt: BlockFormat) -> KernelParams:
    """The kernel parameters of ``fmt`` (cached per format)."""
    elem = fmt.element
    spec = fmt.scale_spec
    is_int = isinstance(elem, IntElement)
    if is_int:
        # Integers k * 2**-(bits-2) are the grid with bits-1 mantissa bits whose subnormal
        # binade (2**1) lies above every scaled value: the code is the rounded k.
        grid_mbits, grid_emin, max_code = elem.bits - 1, 1, elem.kmax
    else:
        grid_mbits, grid_emin, max_code = elem.mbits, elem.emin, elem.max_code_magnitude
    max_normal = float(elem.max_normal)
    frac = math.ldexp(max_normal, -elem.emax) - 1.0  # max_normal = (1 + frac) * 2**emax
    if not 0.0 <= frac < 1.0 or math.ldexp(frac, 23) != int(math.ldexp(frac, 23)):  # pragma: no cover
        raise FormatError(f"{fmt.name}: max_normal is not a float32 with exponent emax")
    values = cached_code_values(elem)
    scale_emin = 1 - spec.bias
    return KernelParams(
        bits=elem.bits,
        bits_pow2=1 << (elem.bits - 1).bit_length(),
        is_int=is_int,
        grid_mbits=grid_mbits,
        grid_emin=grid_emin,
        max_code=max_code,
        emax=elem.emax,
        max_normal=max_normal,
        max_normal_frac=int(math.ldexp(frac, 23)),
        # mode "even": amax rounded to precision_bits fraction bits reaches the next binade
        # (reference.e8m0_exponent): fraction >= 1 - 2**-(p+1)
        even_frac=(1 << 23) - (1 << (22 - elem.precision_bits)),
        scale_type=fmt.scale.code,
        scale_mode=fmt.scale_mode.code,
        rounding=fmt.rounding.code,
        scale_mbits=spec.mbits,
        scale_emin=scale_emin,
        scale_max=float(spec.max_value),
        scale_max_code=0 if spec.power_of_two else _grid_code(spec.max_value, spec.mbits, scale_emin),
        scale_nan=spec.nan_bits,
        tensor_scale=fmt.tensor_scale,
        table_has_inf=any(math.isinf(v) for v in values),
        table_max=max((abs(v) for v in values if math.isfinite(v)), default=0.0),
        float_rne=float_rne_exact(fmt, grid_mbits, grid_emin),
        block_size=fmt.block_size,
        rotate=fmt.rotation_seed is not None,
        rotation_seed=fmt.rotation_seed or 0,
    )


# -- the Triton kernels' view ---------------------------------------------------------------------
def triton_constexprs(params: KernelParams) -> dict[str, Any]:
    """The ``tl.constexpr`` arguments of the Triton encode kernel: every triton field, upper case."""
    return {f.name.upper(): getattr(params, f.name) for f in TRITON_FIELDS}


# -- the native codec's view ----------------------------------------------------------------------
class NativeParams(ctypes.Structure):
    """``struct Format`` of codec_params.h (generated from the same fields)."""

    _fields_ = [(f.name, _CTYPES[f.metadata["ctype"]]) for f in NATIVE_FIELDS]


def native_params(params: KernelParams) -> NativeParams:
    """The parameters as the native library's struct."""
    return NativeParams(**{f.name: getattr(params, f.name) for f in NATIVE_FIELDS})


# Enum codes the C++ uses: (C prefix, what, {member name: code}).
def _enum_blocks() -> list[tuple[str, str, dict[str, int]]]:
    short = {"float32": "FP32", "bfloat16": "BF16", "float16": "FP16"}
    dtypes = {short[str(d).removeprefix("torch.")]: code for code, d in enumerate(INPUT_DTYPES)}
    return [
        ("RND", "Rounding (mxcomm.formats.enums)", {m.name: m.code for m in Rounding}),
        ("SC", "ScaleType (mxcomm.formats.enums)", {m.name: m.code for m in ScaleType}),
        ("MODE", "ScaleMode (mxcomm.formats.enums)", {m.name: m.code for m in ScaleMode}),
        ("DT", "input / output dtypes (mxcomm.kernels.dtypes.INPUT_DTYPES)", dtypes),
    ]


def render_header() -> str:
    """The text of codec_params.h."""
    lines = [
        "// GENERATED by `python -m mxcomm.kernels.params` from mxcomm/kernels/params.py: do not edit.",
        "// The kernel parameters and enum codes of the native CPU codec (cpu_codec.cpp).",
        "#pragma once",
        "",
        "#include <cstdint>",
        "",
        f"#define MX_ABI_VERSION {NATIVE_ABI_VERSION}",
        "",
    ]
    for prefix, what, members in _enum_blocks():
        body = ", ".join(f"{prefix}_{name} = {code}" for name, code in members.items())
        lines += [f"// {what}", f"enum {{ {body} }};"]
    lines += ["", "// Every format-dependent constant (KernelParams); passed by pointer from Python (ctypes).", "struct Format {"]
    width = max(len(f"{f.metadata['ctype']} {f.name};") for f in NATIVE_FIELDS)
    for f in NATIVE_FIELDS:
        decl = f"{f.metadata['ctype']} {f.name};"
        lines.append(f"    {decl:<{width}}  // {f.metadata['doc']}")
    lines += ["};", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render_header()
    current = HEADER_PATH.read_text() if HEADER_PATH.exists() else None
    if args == ["--check"]:
        if current != text:
            print(f"{HEADER_PATH} is out of date: run python -m mxcomm.kernels.params", file=sys.stderr)
            return 1
        return 0
    if args:
        print("usage: python -m mxcomm.kernels.params [--check]", file=sys.stderr)
        return 2
    if current != text:
        HEADER_PATH.write_text(text)
        print(f"wrote {HEADER_PATH} (rebuild the native codec: python setup.py build_ext --inplace)")
    return 0


__all__ = [
    "FIELDS", "HEADER_PATH", "KernelParams", "NATIVE_ABI_VERSION", "NativeParams", "float_rne_exact",
    "kernel_params", "native_params", "render_header", "triton_constexprs",
]

if __name__ == "__main__":
    raise SystemExit(main())
