"""Block formats: an element type, a block size and a shared scale type."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from mxcomm.errors import FormatError
from mxcomm.formats.element import Element, FloatElement, IntElement
from mxcomm.formats.enums import Rounding, ScaleMode, ScaleType

E8M0_SCALE_MODES: tuple[ScaleMode, ...] = tuple(ScaleMode)
FLOAT_SCALE_MODES: tuple[ScaleMode, ...] = (ScaleMode.RCEIL,)
MAX_BLOCK_SIZE = 1 << 16
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass(frozen=True)
class ScaleSpec:
    """How one shared block scale is stored.

    Float scale types are described as a minifloat grid (``ebits``, ``mbits``,
    ``bias``) so that the codec can round a real scale *up* onto that grid
    exactly; ``max_value`` is the largest finite scale.
    """

    name: ScaleType
    bits: int
    power_of_two: bool
    ebits: int = 0
    mbits: int = 0
    bias: int = 0
    max_value: float = 0.0
    nan_bits: int = 0  # the stored bit pattern of a NaN block's scale (every backend writes exactly this)

    @property
    def nbytes(self) -> int:
        return self.bits // 8

    @property
    def min_subnormal(self) -> float:
        return math.ldexp(1.0, 1 - self.bias - self.mbits)


SCALE_SPECS: dict[ScaleType, ScaleSpec] = {
    # OCP E8M0: unsigned power of two 2**(code-127); code 0xFF is NaN.
    ScaleType.E8M0: ScaleSpec(ScaleType.E8M0, 8, True, nan_bits=0xFF),
    # Unsigned use of FP8 E4M3 (sign bit always 0); 0x7F is NaN.
    ScaleType.E4M3: ScaleSpec(ScaleType.E4M3, 8, False, 4, 3, 7, 448.0, nan_bits=0x7F),
    # IEEE types: the canonical quiet NaN. (torch's own float->bf16 cast writes 0x7FC0 or 0xFFFF
    # depending on vectorisation, so the codecs write these bits explicitly.)
    ScaleType.FP16: ScaleSpec(ScaleType.FP16, 16, False, 5, 10, 15, 65504.0, nan_bits=0x7E00),
    ScaleType.BF16: ScaleSpec(ScaleType.BF16, 16, False, 8, 7, 127, math.ldexp(255.0, 120), nan_bits=0x7FC0),
    ScaleType.FP32: ScaleSpec(
        ScaleType.FP32, 32, False, 8, 23, 127, math.ldexp(float(2**24 - 1), 104), nan_bits=0x7FC00000
    ),
}
E8M0_BIAS = 127
E8M0_NAN = SCALE_SPECS[ScaleType.E8M0].nan_bits
E4M3_NAN = SCALE_SPECS[ScaleType.E4M3].nan_bits


@dataclass(frozen=True)
class BlockFormat:
    """A block-scaled format: ``block_size`` consecutive elements share a scale.

    Immutable; :meth:`with_options` makes a modified copy. Register it with
    :func:`~mxcomm.formats.register_format` to use it by name.

    Attributes:
        name: 1-64 characters of ``[A-Za-z0-9_.-]``.
        element: The element type, a :class:`FloatElement` or :class:`IntElement`.
        block_size: Elements per block, 1..65536.
        scale: Scale type (:class:`~mxcomm.formats.ScaleType`: ``"e8m0"``, ``"e4m3"``, ``"fp16"``,
            ``"bf16"``, ``"fp32"``).
        scale_mode: How a block's scale is chosen (:class:`~mxcomm.formats.ScaleMode`); defaults
            to ``"floor"`` (OCP MX v1.0) for e8m0 scales and to ``"rceil"`` (amax / max_normal
            rounded *up* onto the scale grid, so no element clips) for float scale types, the
            only mode they support.
        rounding: Element rounding (:class:`~mxcomm.formats.Rounding`), ``"rne"`` by default.
        tensor_scale: Always apply a float32 per-tensor scale computed from the tensor's amax
            (NVFP4's two-level recipe); only float scale types take it. Float scale types
            without it get an *automatic* tensor scale instead: 1 (the single-level encoding)
            unless some block would clip, see :attr:`auto_tensor_scale`.
        rotation_seed: An int turns on a random Hadamard rotation of every block before it is
            quantized (docs/semantics.md, "Rotation"); needs a power-of-two block size.

    Raises:
        FormatError: on construction, any field out of its range or an unsupported combination.
    """

    name: str
    element: Element
    block_size: int = 32
    scale: ScaleType = ScaleType.E8M0
    scale_mode: ScaleMode | None = None
    rounding: Rounding = Rounding.RNE
    tensor_scale: bool = field(default=False, kw_only=True)
    rotation_seed: int | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise FormatError(
                f"format name must be 1-64 characters of [A-Za-z0-9_.-], got {self.name!r}"
            )
        if not isinstance(self.element, (FloatElement, IntElement)):
            raise FormatError(
                f"element must be a FloatElement or IntElement, got {type(self.element).__name__}"
            )
        if (
            not isinstance(self.block_size, int)
            or isinstance(self.block_size, bool)
            or not 1 <= self.block_size <= MAX_BLOCK_SIZE
        ):
            raise FormatError(f"block_size must be an int in 1..{MAX_BLOCK_SIZE}, got {self.block_size!r}")
        object.__setattr__(self, "scale", ScaleType.parse(self.scale, "scale"))
        spec = SCALE_SPECS[self.scale]
        if self.scale_mode is None:
            object.__setattr__(self, "scale_mode", ScaleMode.FLOOR if spec.power_of_two else ScaleMode.RCEIL)
        object.__setattr__(self, "scale_mode", ScaleMode.parse(self.scale_mode, "scale_mode"))
        allowed = E8M0_SCALE_MODES if spec.power_of_two else FLOAT_SCALE_MODES
        if self.scale_mode not in allowed:
            raise FormatError(
                f"scale type {self.scale!r} supports scale_mode {tuple(m.value for m in allowed)}, "
                f"got {self.scale_mode!r}"
            )
        object.__setattr__(self, "rounding", Rounding.parse(self.rounding, "rounding"))
        if not isinstance(self.tensor_scale, bool):
            raise FormatError(f"tensor_scale must be a bool, got {self.tensor_scale!r}")
        if self.tensor_scale and spec.power_of_two:
            raise FormatError("tensor_scale=True needs a float scale type (e4m3, fp16, bf16, fp32)")
        if self.rotation_seed is not None:
            if (
                not isinstance(self.rotation_seed, int)
                or isinstance(self.rotation_seed, bool)
                or not 0 <= self.rotation_seed < 2**64
            ):
                raise FormatError(f"rotation_seed must be None or an int in [0, 2**64), got {self.rotation_seed!r}")
            if self.block_size < 2 or self.block_size & (self.block_size - 1):
                raise FormatError(f"a rotated format needs a power-of-two block size >= 2, got {self.block_size}")

    # -- derived properties -------------------------------------------------
    @property
    def scale_spec(self) -> ScaleSpec:
        return SCALE_SPECS[self.scale]

    @property
    def element_bits(self) -> int:
        return self.element.bits

    @property
    def scale_bits(self) -> int:
        return self.scale_spec.bits

    @property
    def has_tensor_scale(self) -> bool:
        """Whether an encoding carries a float32 per-tensor scale: every float scale type does
        (fixed with ``tensor_scale=True``, else automatic); e8m0 formats never do."""
        return not self.scale_spec.power_of_two

    @property
    def auto_tensor_scale(self) -> bool:
        """Whether the tensor scale is automatic: a float scale type without ``tensor_scale=True``.

        Its tensor scale is 1 -- the plain single-level encoding -- unless encoding with 1 would
        clip a block (saturate it or flush it, docs/semantics.md "Range"); then it is the
        NVFP4-style scale from the tensor's amax, so any finite input magnitude keeps the
        format's in-range accuracy. The payload always reserves its 4 bytes.
        """
        return self.has_tensor_scale and not self.tensor_scale

    @property
    def bits_per_element(self) -> float:
        """Element bits plus the block scale's bits spread over the block.

        The per-tensor scale (4 bytes per tensor) is not included; it is in
        ``packed_nbytes``.
        """
        return self.element.bits + self.scale_bits / self.block_size

    def compression_vs(self, bits: int = 16) -> float:
        """Asymptotic compression ratio against a ``bits``-wide dtype (bf16 by default)."""
        return bits / self.bits_per_element

    def with_options(self, **changes: object) -> BlockFormat:
        """A copy with some fields changed (validated like a new format).

        Changing ``rotation_seed`` (without an explicit ``name``) also renames:
        a rotated format is ``<plain name>.rot<seed>``, so planner costs and
        accounting never mix it with the plain format (``rotated_name``).
        Changing ``scale`` without ``scale_mode`` resets the mode to the new scale type's default.

        Args:
            **changes: Field name -> new value.

        Returns:
            The new format (not registered).

        Raises:
            FormatError: an invalid field value or combination.
        """
        if "rotation_seed" in changes and "name" not in changes and changes["rotation_seed"] != self.rotation_seed:
            changes = {**changes, "name": rotated_name(plain_name(self.name), changes["rotation_seed"])}  # type: ignore[arg-type]
        values = {
            "name": self.name,
            "element": self.element,
            "block_size": self.block_size,
            "scale": self.scale,
            "scale_mode": self.scale_mode,
            "rounding": self.rounding,
            "tensor_scale": self.tensor_scale,
            "rotation_seed": self.rotation_seed,
        }
        if "scale" in changes and "scale_mode" not in changes:
            values["scale_mode"] = None
        values.update(changes)
        return BlockFormat(**values)  # type: ignore[arg-type]

    def layout(self, shape: Sequence[int], axis: int = -1) -> BlockLayout:
        """How a tensor of ``shape`` splits into blocks along ``axis`` (see :func:`block_layout`)."""
        return block_layout(shape, axis, self.block_size)

    def packed_nbytes(self, shape: Sequence[int], axis: int = -1) -> int:
        """Exact payload bytes of an encoded tensor: codes + scales (+ 4 for the tensor scale of a
        float scale type, fixed or automatic).

        Args:
            shape: Shape of the tensor.
            axis: The dimension blocks run along.

        Returns:
            ``Packed.nbytes`` of its encoding (what the collectives send per tensor).

        Raises:
            FormatError: ``axis`` out of range.
        """
        lay = self.layout(shape, axis)
        code_bytes = (lay.num_codes * self.element.bits + 7) // 8
        scale_bytes = lay.num_blocks * self.scale_spec.nbytes
        tensor_bytes = 4 if self.has_tensor_scale else 0
        return code_bytes + scale_bytes + tensor_bytes

    def describe(self) -> str:
        mode = "" if self.scale_mode == ("floor" if self.scale == "e8m0" else "rceil") else f" {self.scale_mode}"
        tensor = " +fp32 tensor scale" if self.tensor_scale else (" +auto tensor scale" if self.auto_tensor_scale else "")
        rotation = f" +hadamard(seed={self.rotation_seed})" if self.rotation_seed is not None else ""
        return f"{self.element} x{self.block_size} {self.scale}{mode}{tensor}{rotation} {self.rounding}"


ROTATION_SUFFIX = ".rot"


def plain_name(name: str) -> str:
    """``name`` without a rotation suffix (``"mxfp4_e2m1.rot7"`` -> ``"mxfp4_e2m1"``)."""
    base, sep, seed = name.rpartition(ROTATION_SUFFIX)
    return base if sep and seed.isdigit() else name


def rotated_name(plain: str, seed: int | None) -> str:
    """The name of the rotated variant of format ``plain`` (``plain`` itself for ``seed=None``)."""
    return plain if seed is None else f"{plain}{ROTATION_SUFFIX}{seed}"


@dataclass(frozen=True)
class BlockLayout:
    """Geometry of a tensor cut into blocks along one axis.

    ``rows`` is the product of the other dimensions, ``length`` the size of the
    blocked axis, ``blocks_per_row`` = ceil(length / block_size).
    """

    shape: tuple[int, ...]
    axis: int
    rows: int
    length: int
    block_size: int

    @property
    def blocks_per_row(self) -> int:
        return -(-self.length // self.block_size)

    @property
    def padded_length(self) -> int:
        return self.blocks_per_row * self.block_size

    @property
    def num_blocks(self) -> int:
        return self.rows * self.blocks_per_row

    @property
    def num_codes(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def numel(self) -> int:
        return self.rows * self.length


def normalize_axis(axis: int, ndim: int) -> int:
    """Non-negative axis; a 0-d tensor is treated as shape (1,) with axis 0."""
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise FormatError(f"axis must be an int, got {axis!r}")
    n = max(ndim, 1)
    if not -n <= axis < n:
        raise FormatError(f"axis {axis} is out of range for a {ndim}-d tensor")
    return axis % n


def block_layout(shape: Sequence[int], axis: int, block_size: int) -> BlockLayout:
    """How a tensor of ``shape`` splits into blocks of ``block_size`` along ``axis``.

    Args:
        shape: Shape of the tensor (a 0-d tensor is one element on axis 0).
        axis: The blocked dimension (negative counts from the end).
        block_size: Elements per block.

    Returns:
        The :class:`BlockLayout` (rows, blocked length, blocks, padding).

    Raises:
        FormatError: a negative dimension or ``axis`` out of range.
    """
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise FormatError(f"shape {dims} has a negative dimension")
    ax = normalize_axis(axis, len(dims))
    if not dims:
        return BlockLayout((), 0, 1, 1, block_size)
    length = dims[ax]
    rows = math.prod(d for i, d in enumerate(dims) if i != ax)
    return BlockLayout(dims, ax, rows, length, block_size)
