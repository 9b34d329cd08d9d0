"""Built-in formats, registered on import of mxcomm.

Naming (docs/formats.md):

* ``mx<kind><bits>_<elem>``: the OCP MX v1.0 formats exactly as the spec
  defines them (block 32, E8M0 scale, floor scale mode, RNE).
* ``nvfp4``: NVIDIA's two-level FP4 (E2M1, block 16, E4M3 block scales,
  one float32 tensor scale).
* ``fp<bits>_e<E>m<M>`` / ``int<bits>``: custom block formats of the paper's
  design space, block 32, E8M0 scale unless a suffix says otherwise:
  ``_b<N>`` a block size other than 32, ``_<scale>`` a scale type other than
  e8m0 (``_fp16``, ``_bf16``, ``_e4m3``).
"""

from __future__ import annotations

from mxcomm.formats.block import BlockFormat
from mxcomm.formats.element import FloatElement, IntElement
from mxcomm.formats.registry import register_alias, register_format

E4M3 = FloatElement(4, 3, nan="all_ones")
E5M2 = FloatElement(5, 2, inf=True, nan="ieee")
E3M2 = FloatElement(3, 2)
E2M3 = FloatElement(2, 3)
E2M1 = FloatElement(2, 1)

OCP_FORMATS: tuple[BlockFormat, ...] = (
    BlockFormat("mxfp8_e4m3", E4M3),
    BlockFormat("mxfp8_e5m2", E5M2),
    BlockFormat("mxfp6_e3m2", E3M2),
    BlockFormat("mxfp6_e2m3", E2M3),
    BlockFormat("mxfp4_e2m1", E2M1),
    BlockFormat("mxint8", IntElement(8)),
)

NVFP4 = BlockFormat("nvfp4", E2M1, block_size=16, scale="e4m3", tensor_scale=True)


def custom_name(element: FloatElement | IntElement, block_size: int = 32, scale: str = "e8m0") -> str:
    """The systematic name of a custom block format (see module docstring)."""
    if isinstance(element, IntElement):
        base = f"int{element.bits}"
    else:
        base = f"fp{element.bits}_e{element.ebits}m{element.mbits}"
    if block_size != 32:
        base += f"_b{block_size}"
    if scale != "e8m0":
        base += f"_{scale}"
    return base


def _custom(element: FloatElement | IntElement, block_size: int = 32, scale: str = "e8m0") -> BlockFormat:
    return BlockFormat(custom_name(element, block_size, scale), element, block_size, scale)  # type: ignore[arg-type]


CUSTOM_FORMATS: tuple[BlockFormat, ...] = (
    # minifloats of every width from 3 to 7 bits (OCP FP4/FP6 style: no inf/NaN)
    _custom(FloatElement(1, 1)),
    _custom(FloatElement(2, 0)),
    _custom(FloatElement(2, 2)),
    _custom(FloatElement(3, 1)),
    _custom(FloatElement(3, 3)),
    _custom(FloatElement(4, 2)),
    # symmetric integers with a power-of-two scale
    _custom(IntElement(2)),
    _custom(IntElement(3)),
    _custom(IntElement(4)),
    _custom(IntElement(5)),
    _custom(IntElement(6)),
    # integers with a float16 block scale (finer than a power of two)
    _custom(IntElement(4), scale="fp16"),
    _custom(IntElement(6), scale="fp16"),
    _custom(IntElement(8), scale="fp16"),
    # block-size variants of the 4- and 5-bit candidates
    _custom(E2M1, 16),
    _custom(E2M1, 64),
    _custom(FloatElement(2, 2), 16),
    _custom(IntElement(4), 16),
    _custom(IntElement(4), 64),
)


def register_builtins() -> None:
    for fmt in (*OCP_FORMATS, NVFP4, *CUSTOM_FORMATS):
        register_format(fmt, overwrite=True)
    register_alias("mxfp4", "mxfp4_e2m1")
