"""``Packed``: an encoded tensor (codes bitstream + block scales + optional tensor scale)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mxcomm.errors import FormatError
from mxcomm.formats import BlockFormat, block_layout
from mxcomm.kernels import frame
from mxcomm.kernels.bitpack import packed_code_bytes
from mxcomm.kernels.dtypes import INPUT_DTYPES, SCALE_STORAGE_DTYPES


@dataclass(eq=False)
class Packed:
    """A tensor encoded in a block format (what :func:`~mxcomm.kernels.encode` returns).

    Serialise it with :meth:`to_bytes` (a self-describing frame) or
    :meth:`payload` (the bare bytes the collectives send).

    Attributes:
        format: The effective format (with any rounding / scale-mode override applied).
        shape: Shape of the encoded tensor.
        dtype: Dtype of the encoded tensor (what ``decode`` returns by default).
        axis: The (non-negative) dimension the blocks run along.
        codes: Flat uint8 LSB-first bitstream of all element codes in block order
            (blocked axis last, rows row-major, each row padded to whole blocks).
        scales: One scale per block in the same order.
        tensor_scale: 0-d float32 tensor for float scale types (``format.has_tensor_scale``:
            NVFP4's fixed one, or the automatic one, 1.0 unless the input needed it; None given
            for an automatic one means 1.0), None for e8m0 formats.
        backend: The codec backend that produced it (not serialised).
        clipped: From ``encode``: a 0-d int64 tensor, the number of blocks that clipped (see
            :attr:`clipped_blocks`); None where unknown (from a payload or a frame).

    Raises:
        FormatError: on construction, parts inconsistent with the format, shape and axis.
    """

    format: BlockFormat
    shape: torch.Size
    dtype: torch.dtype
    axis: int
    codes: torch.Tensor
    scales: torch.Tensor
    tensor_scale: torch.Tensor | None = None
    backend: str = "torch"
    clipped: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.shape = torch.Size(self.shape)
        if self.tensor_scale is None and isinstance(self.format, BlockFormat) and self.format.auto_tensor_scale:
            device = self.codes.device if isinstance(self.codes, torch.Tensor) else None
            self.tensor_scale = torch.ones((), dtype=torch.float32, device=device)
        validate_parts(self.format, self.shape, self.axis, self.dtype, self.codes, self.scales, self.tensor_scale)

    @property
    def clipped_blocks(self) -> int | None:
        """How many blocks clipped when this tensor was encoded: saturated (amax beyond
        ``max_normal`` times the largest scale) or flushed (scale clamped at the smallest one),
        as docs/semantics.md ("Range") defines them; 0 when the format held the input's range.

        None when unknown: a ``Packed`` rebuilt by ``from_payload`` / ``from_bytes`` (the count
        is not part of the bytes). Reading it synchronises with the device of a CUDA encoding.
        """
        return None if self.clipped is None else int(self.clipped)

    @property
    def layout(self):
        return block_layout(self.shape, self.axis, self.format.block_size)

    @property
    def device(self) -> torch.device:
        return self.codes.device

    @property
    def nbytes(self) -> int:
        """Payload bytes: codes + scales (+ 4 for the tensor scale); ``format.packed_nbytes``."""
        extra = 4 if self.tensor_scale is not None else 0
        return self.codes.numel() + self.scales.numel() * self.scales.element_size() + extra

    @property
    def logical_nbytes(self) -> int:
        """Bytes of the uncompressed tensor in its original dtype."""
        return self.shape.numel() * torch.empty((), dtype=self.dtype).element_size()

    @property
    def compression_ratio(self) -> float:
        return self.logical_nbytes / self.nbytes if self.nbytes else float("nan")

    # -- flat payload (what the collectives send) --------------------------------
    def payload(self) -> torch.Tensor:
        """One flat uint8 tensor of exactly ``format.packed_nbytes(shape, axis)`` bytes.

        Layout: codes | scale bytes (native little-endian) | tensor scale (4 bytes).
        """
        parts = [self.codes, self.scales.contiguous().view(torch.uint8).reshape(-1)]
        if self.tensor_scale is not None:
            parts.append(self.tensor_scale.reshape(1).to(torch.float32).view(torch.uint8))
        return torch.cat([p.to(self.codes.device) for p in parts])

    @classmethod
    def from_payload(
        cls,
        buf: torch.Tensor,
        fmt: BlockFormat,
        shape: tuple[int, ...] | torch.Size,
        dtype: torch.dtype,
        axis: int = -1,
        backend: str = "torch",
    ) -> Packed:
        """Inverse of ``payload()``: views into ``buf`` (no copy when contiguous)."""
        lay = block_layout(shape, axis, fmt.block_size)
        code_bytes = packed_code_bytes(lay.num_codes, fmt.element.bits)
        scale_dtype = SCALE_STORAGE_DTYPES[fmt.scale]
        scale_bytes = lay.num_blocks * fmt.scale_spec.nbytes
        expected = fmt.packed_nbytes(shape, axis)
        if not isinstance(buf, torch.Tensor) or buf.dtype != torch.uint8 or buf.dim() != 1:
            raise FormatError("payload must be a 1-D uint8 tensor")
        if buf.numel() != expected:
            raise FormatError(f"payload has {buf.numel()} bytes, format {fmt.name} needs {expected} for {tuple(shape)}")
        buf = buf.contiguous()
        codes = buf[:code_bytes]
        scales = _bytes_as(buf[code_bytes : code_bytes + scale_bytes], scale_dtype)
        tensor_scale = None
        if fmt.has_tensor_scale:
            tensor_scale = _bytes_as(buf[code_bytes + scale_bytes :], torch.float32).reshape(())
        return cls(fmt, torch.Size(shape), dtype, lay.axis, codes, scales, tensor_scale, backend)

    # -- self-describing frame -----------------------------------------------------
    def to_bytes(self) -> bytes:
        """Serialise to the versioned, self-describing, CRC32-checked frame (docs/wire-format.md).

        Returns:
            The frame: header (format description, shape, dtype, axis), payload and CRC32.
        """
        tscale = None if self.tensor_scale is None else float(self.tensor_scale)
        if tscale == 1.0 and self.format.auto_tensor_scale:
            tscale = None  # an unused automatic tensor scale is left out of the frame (docs/wire-format.md)
        return frame.frame_bytes(self.format, tuple(self.shape), self.dtype, self.axis, self.codes, self.scales, tscale)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Packed:
        """Parse a frame written by :meth:`to_bytes`.

        Args:
            data: The frame.

        Returns:
            The ``Packed`` (on the CPU, ``backend="torch"``); its format is rebuilt from the
            frame's description, so it need not be registered.

        Raises:
            FormatError: a malformed, truncated, corrupted (CRC mismatch) or unknown-version frame.
        """
        c = frame.parse_frame(data)
        return cls(c.format, torch.Size(c.shape), c.dtype, c.axis, c.codes, c.scales, c.tensor_scale, "torch")

    def __repr__(self) -> str:
        return (
            f"Packed(format={self.format.name!r}, shape={tuple(self.shape)}, dtype={self.dtype}, axis={self.axis}, "
            f"nbytes={self.nbytes}, backend={self.backend!r})"
        )


def _bytes_as(section: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """View uint8 bytes as ``dtype``; a section not aligned to the dtype's size is copied first
    (torch can only reinterpret at an aligned storage offset, e.g. NVFP4's tensor scale after
    9 bytes per block)."""
    size = torch.empty((), dtype=dtype).element_size()
    if section.storage_offset() % size:
        section = section.clone()
    return section.view(dtype)


def validate_parts(
    fmt: BlockFormat,
    shape: torch.Size,
    axis: int,
    dtype: torch.dtype,
    codes: torch.Tensor,
    scales: torch.Tensor,
    tensor_scale: torch.Tensor | None,
) -> None:
    """Check that the parts have exactly the sizes and dtypes ``fmt`` implies."""
    if not isinstance(fmt, BlockFormat):
        raise FormatError(f"format must be a BlockFormat, got {type(fmt).__name__}")
    if dtype not in INPUT_DTYPES:
        raise FormatError(f"dtype must be one of {INPUT_DTYPES}, got {dtype}")
    lay = block_layout(shape, axis, fmt.block_size)
    if axis != lay.axis:
        raise FormatError(f"axis must be normalised (non-negative), got {axis}")
    need_codes = packed_code_bytes(lay.num_codes, fmt.element.bits)
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8 or codes.dim() != 1 or codes.numel() != need_codes:
        raise FormatError(f"codes must be a 1-D uint8 tensor of {need_codes} bytes")
    scale_dtype = SCALE_STORAGE_DTYPES[fmt.scale]
    if (
        not isinstance(scales, torch.Tensor)
        or scales.dtype != scale_dtype
        or scales.dim() != 1
        or scales.numel() != lay.num_blocks
    ):
        raise FormatError(f"scales must be a 1-D {scale_dtype} tensor of {lay.num_blocks} entries")
    if fmt.has_tensor_scale:
        if not isinstance(tensor_scale, torch.Tensor) or tensor_scale.dtype != torch.float32 or tensor_scale.numel() != 1:
            raise FormatError(f"format {fmt.name} needs a float32 tensor_scale")
    elif tensor_scale is not None:
        raise FormatError(f"format {fmt.name} has no tensor scale")
