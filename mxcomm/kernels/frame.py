"""The self-describing frame of a Packed tensor (docs/wire-format.md).

All integers little-endian. Layout (version 1):

    magic   4s   b"MXCP"
    version u16  1
    flags   u16  0 (reserved, must be 0)
    -- format description --
    name_len u8, name (ASCII, [A-Za-z0-9_.-])
    elem_kind u8 (0 float, 1 int)
    ebits u8, mbits u8, bias i16, inf u8, nan u8 (0 none, 1 all_ones, 2 ieee)   [int: ebits=bits, rest 0]
    block_size u32, scale u8, scale_mode u8, rounding u8, tensor_scale u8, rotation u8, rotation_seed u64
    -- tensor --
    dtype u8 (0 fp32, 1 bf16, 2 fp16), ndim u8 (<= 32), axis u8, dims u64 * ndim
    -- section lengths --
    codes_len u64, scales_len u64, tensor_scale_len u8 (0 or 4)
    -- payload --
    codes, scales (native little-endian), tensor scale (float32)
    crc32 u32   over every byte before it

Every enumerated field is the member's stable ``code`` (``mxcomm.formats.enums``,
``mxcomm.kernels.dtypes``). ``parse_frame`` checks the CRC and every field and
length against the buffer before allocating anything; anything malformed raises
FormatError. ``Packed.to_bytes`` / ``Packed.from_bytes`` are the public entry
points; this module knows nothing of ``Packed`` itself.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import torch

from mxcomm.errors import FormatError
from mxcomm.formats import (
    BlockFormat,
    FloatElement,
    IntElement,
    NanEncoding,
    Rounding,
    ScaleMode,
    ScaleType,
    block_layout,
)
from mxcomm.kernels.bitpack import packed_code_bytes
from mxcomm.kernels.dtypes import SCALE_STORAGE_DTYPES, dtype_code, dtype_from_code

MAGIC = b"MXCP"
VERSION = 1
MAX_NDIM = 32
MAX_DIM = 1 << 48

_PREFIX = struct.Struct("<4sHH")
_ELEM = struct.Struct("<BBBhBB")
_BLOCK = struct.Struct("<IBBBBBQ")
_TENSOR = struct.Struct("<BBB")
_SECTIONS = struct.Struct("<QQB")
_CRC = struct.Struct("<I")


def format_description(fmt: BlockFormat) -> bytes:
    """The frame's format section: name, element and block description (canonical bytes of a format)."""
    name = fmt.name.encode("ascii")
    return bytes([len(name)]) + name + format_fields(fmt)


def format_fields(fmt: BlockFormat) -> bytes:
    """Everything that defines what ``fmt`` encodes, without its name, as the frame writes it."""
    el = fmt.element
    if isinstance(el, IntElement):
        elem = _ELEM.pack(1, el.bits, 0, 0, 0, 0)
    else:
        elem = _ELEM.pack(0, el.ebits, el.mbits, el.bias, int(el.inf), el.nan.code)
    block = _BLOCK.pack(
        fmt.block_size,
        fmt.scale.code,
        fmt.scale_mode.code,
        fmt.rounding.code,
        int(fmt.tensor_scale),
        int(fmt.rotation_seed is not None),
        fmt.rotation_seed or 0,
    )
    return elem + block


#: Length of ``format_fields``.
FORMAT_FIELDS_NBYTES = _ELEM.size + _BLOCK.size


def format_from_fields(name: str, fields: bytes | memoryview) -> BlockFormat:
    """Inverse of :func:`format_fields`: the format named ``name`` that ``fields`` describe.

    Raises:
        FormatError: ``fields`` of the wrong length or with an invalid field.
    """
    if len(fields) != FORMAT_FIELDS_NBYTES:
        raise FormatError(f"a format description has {FORMAT_FIELDS_NBYTES} bytes, got {len(fields)}")
    kind, p1, p2, bias, inf, nan = _ELEM.unpack(fields[: _ELEM.size])
    if kind == 0:
        if inf not in (0, 1):
            raise FormatError(f"format description has an invalid inf flag {inf}")
        element: FloatElement | IntElement = FloatElement(
            p1, p2, bias=bias, inf=bool(inf), nan=NanEncoding.from_code(nan, "frame nan encoding")
        )
    elif kind == 1:
        if (p2, bias, inf, nan) != (0, 0, 0, 0):
            raise FormatError("format description has non-zero reserved fields in an integer element")
        element = IntElement(p1)
    else:
        raise FormatError(f"format description has an invalid element kind {kind}")
    block_size, scale, mode, rounding, tscale_flag, rot_flag, rot_seed = _BLOCK.unpack(fields[_ELEM.size :])
    if tscale_flag not in (0, 1):
        raise FormatError(f"format description has an invalid tensor-scale flag {tscale_flag}")
    if rot_flag not in (0, 1) or (rot_flag == 0 and rot_seed != 0):
        raise FormatError(f"format description has an invalid rotation field ({rot_flag}, {rot_seed})")
    return BlockFormat(
        name,
        element,
        block_size,
        ScaleType.from_code(scale, "frame scale type"),
        ScaleMode.from_code(mode, "frame scale mode"),
        Rounding.from_code(rounding, "frame rounding"),
        tensor_scale=bool(tscale_flag),
        rotation_seed=rot_seed if rot_flag else None,
    )


def frame_bytes(
    fmt: BlockFormat,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    axis: int,
    codes: torch.Tensor,
    scales: torch.Tensor,
    tensor_scale: float | None,
) -> bytes:
    """The frame of an encoded tensor's parts (``codes`` uint8, ``scales`` in their storage dtype)."""
    code_bytes = codes.cpu().contiguous().numpy().tobytes()
    scale_bytes = scales.cpu().contiguous().view(torch.uint8).numpy().tobytes()
    tscale = b"" if tensor_scale is None else struct.pack("<f", tensor_scale)
    parts = [
        _PREFIX.pack(MAGIC, VERSION, 0),
        format_description(fmt),
        _TENSOR.pack(dtype_code(dtype), len(shape), axis),
        struct.pack(f"<{len(shape)}Q", *shape),
        _SECTIONS.pack(len(code_bytes), len(scale_bytes), len(tscale)),
        code_bytes,
        scale_bytes,
        tscale,
    ]
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


@dataclass(frozen=True)
class FrameContents:
    """What a frame holds: the format, the tensor's description and the encoded parts."""

    format: BlockFormat
    shape: tuple[int, ...]
    dtype: torch.dtype
    axis: int
    codes: torch.Tensor
    scales: torch.Tensor
    tensor_scale: torch.Tensor | None


class _Reader:
    """Bounds-checked cursor over the frame body."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise FormatError(f"frame truncated while reading {what}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, st: struct.Struct, what: str) -> tuple:
        return st.unpack(self.take(st.size, what))


def parse_frame(data: bytes | bytearray | memoryview) -> FrameContents:
    """Parse and check a frame written by ``frame_bytes``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FormatError(f"from_bytes takes bytes, got {type(data).__name__}")
    buf = memoryview(data)
    if not buf.c_contiguous:
        buf = memoryview(buf.tobytes())
    if buf.format != "B" or buf.ndim != 1:
        buf = buf.cast("B")
    if len(buf) < _PREFIX.size + _CRC.size:
        raise FormatError(f"frame of {len(buf)} bytes is too short")
    magic, version, flags = _PREFIX.unpack(buf[: _PREFIX.size])
    if magic != MAGIC:
        raise FormatError(f"not a mxcomm frame (magic {bytes(magic)!r})")
    if version != VERSION:
        raise FormatError(f"unsupported frame version {version} (this mxcomm reads {VERSION})")
    if flags != 0:
        raise FormatError(f"frame has unknown flags {flags:#x}")
    body = buf[: len(buf) - _CRC.size]
    (crc,) = _CRC.unpack(buf[len(buf) - _CRC.size :])
    if zlib.crc32(body) != crc:
        raise FormatError("frame CRC32 mismatch: the data is corrupted")

    r = _Reader(body)
    r.take(_PREFIX.size, "prefix")
    (name_len,) = r.unpack(struct.Struct("<B"), "name length")
    try:
        name = bytes(r.take(name_len, "format name")).decode("ascii")
    except UnicodeDecodeError as exc:
        raise FormatError("frame has a non-ASCII format name") from exc
    fmt = format_from_fields(name, r.take(FORMAT_FIELDS_NBYTES, "format description"))
    dtype_index, ndim, axis = r.unpack(_TENSOR, "tensor description")
    dtype = dtype_from_code(dtype_index)
    if ndim > MAX_NDIM:
        raise FormatError(f"frame has {ndim} dimensions (at most {MAX_NDIM})")
    dims = struct.unpack(f"<{ndim}Q", r.take(8 * ndim, "shape"))
    if any(d > MAX_DIM for d in dims):
        raise FormatError(f"frame has an implausible shape {dims}")
    if axis >= max(ndim, 1):
        raise FormatError(f"frame axis {axis} is out of range for {ndim} dimensions")
    codes_len, scales_len, tscale_len = r.unpack(_SECTIONS, "section lengths")

    # Every length must follow from the description before anything is allocated.
    lay = block_layout(dims, axis, fmt.block_size)
    want_codes = packed_code_bytes(lay.num_codes, fmt.element.bits)
    want_scales = lay.num_blocks * fmt.scale_spec.nbytes
    want_tscale = 4 if fmt.tensor_scale else 0
    if (codes_len, scales_len, tscale_len) != (want_codes, want_scales, want_tscale):
        raise FormatError(
            f"frame section lengths ({codes_len}, {scales_len}, {tscale_len}) do not match the description "
            f"({want_codes}, {want_scales}, {want_tscale})"
        )
    if r.pos + codes_len + scales_len + tscale_len != len(body):
        raise FormatError(
            f"frame holds {len(body) - r.pos} payload bytes, the description needs {codes_len + scales_len + tscale_len}"
        )
    codes = _tensor_from(r.take(codes_len, "codes"), torch.uint8)
    scales = _tensor_from(r.take(scales_len, "scales"), torch.uint8).view(SCALE_STORAGE_DTYPES[fmt.scale])
    tensor_scale = None
    if tscale_len:
        (value,) = struct.unpack("<f", r.take(4, "tensor scale"))
        if not (math.isfinite(value) and value > 0):
            raise FormatError(f"frame has an invalid tensor scale {value}")
        tensor_scale = torch.tensor(value, dtype=torch.float32)
    return FrameContents(fmt, tuple(dims), dtype, axis, codes, scales, tensor_scale)


def _tensor_from(view: memoryview, dtype: torch.dtype) -> torch.Tensor:
    if len(view) == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(view), dtype=dtype)
