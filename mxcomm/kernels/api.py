"""Public codec entry points: encode, decode, quantize, decode_sum."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from mxcomm.errors import ArgumentTypeError, FormatError, RangeError
from mxcomm.formats import BlockFormat, Rounding, block_layout, get_format
from mxcomm.kernels.dispatch import CodecBackend, fuses_rotation, resolve_backend
from mxcomm.kernels.dtypes import INPUT_DTYPES
from mxcomm.kernels.packed import Packed
from mxcomm.kernels.reference import EncodedBlocks, saturating_cast
from mxcomm.kernels.rotation import rotate, unrotate

log = logging.getLogger("mxcomm.kernels")


def effective_format(fmt: str | BlockFormat, rounding: str | None = None, scale_mode: str | None = None) -> BlockFormat:
    """``fmt`` resolved from the registry, with rounding / scale-mode overrides applied."""
    base = get_format(fmt)
    changes: dict[str, object] = {}
    if rounding is not None:
        changes["rounding"] = Rounding.parse(rounding, "rounding")
    if scale_mode is not None:
        changes["scale_mode"] = scale_mode
    return base.with_options(**changes) if changes else base


def _draw_seed(generator: torch.Generator | None) -> int:
    # One 62-bit seed per encode call; the counter-based hash derives every
    # element's random word from it (mxcomm.kernels.counter_rng).
    if generator is not None and not isinstance(generator, torch.Generator):
        raise FormatError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return int(torch.randint(0, 2**62, (1,), generator=generator, device="cpu").item())


def _moved_shape(shape: Sequence[int], axis: int) -> list[int]:
    dims = list(shape)
    if not dims:
        return [1]
    return dims[:axis] + dims[axis + 1 :] + [dims[axis]]


def encode(
    x: torch.Tensor,
    fmt: str | BlockFormat,
    *,
    axis: int = -1,
    rounding: str | None = None,
    scale_mode: str | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    strict: bool = False,
) -> Packed:
    """Encode ``x`` in block format ``fmt``: bit-packed codes, per-block scales (and a tensor scale).

    Args:
        x: float32, bfloat16 or float16 tensor of any shape (a 0-dim tensor is one block).
        fmt: Format name (or alias) or :class:`~mxcomm.formats.BlockFormat`.
        axis: The dimension blocks of ``fmt.block_size`` run along; its last block is zero-padded.
        rounding: Overrides the format's rounding (a :class:`~mxcomm.formats.Rounding` value).
        scale_mode: Overrides the format's scale mode (a :class:`~mxcomm.formats.ScaleMode` value).
        generator: Stochastic rounding draws one seed from it (torch's default generator when None).
        backend: Codec backend (``"auto"``, ``"torch"``, ``"cpu"``, ``"triton"``); every backend
            produces the same bytes.
        strict: Raise :class:`~mxcomm.RangeError` instead of returning an encoding in which some
            block clipped (``Packed.clipped_blocks > 0``: the format cannot hold the input's range;
            docs/semantics.md, "Range"). Reads the count, so a CUDA encode synchronises.

    Returns:
        The :class:`~mxcomm.kernels.Packed` encoding (``decode`` inverts it up to quantization);
        ``clipped_blocks`` says how many blocks clipped.

    Raises:
        ArgumentTypeError: ``x`` is not a ``torch.Tensor``.
        FormatError: ``x`` is not float32/bfloat16/float16, an unknown format, a bad ``axis``,
            ``rounding`` or ``scale_mode``.
        BackendUnavailableError: the requested backend cannot run on ``x``'s device.
        RangeError: ``strict=True`` and some block clipped.
    """
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f"encode takes a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in INPUT_DTYPES:
        raise FormatError(f"encode takes float32, bfloat16 or float16 tensors, got {x.dtype}")
    f = effective_format(fmt, rounding, scale_mode)
    lay = block_layout(x.shape, axis, f.block_size)
    seed = _draw_seed(generator) if f.rounding == "stochastic" else None
    be = resolve_backend(backend, x.device)
    x2d = x.reshape(1, 1) if x.dim() == 0 else x.movedim(lay.axis, -1).reshape(lay.rows, lay.length)
    front_end = _rotates_in_front_end(be, f)
    if front_end:
        # Rotation runs here for backends that do not fuse it: pad to whole blocks,
        # rotate in float32, and hand the backend the plain (unrotated) format.
        padded = x2d.new_zeros((lay.rows, lay.padded_length), dtype=torch.float32)
        padded[:, : lay.length] = x2d
        parts = be.encode_blocks(rotate(padded, f.rotation_seed, f.block_size), _plain(f), seed)
    else:
        # A fusing backend gets the rotated format and the unpadded rows: its kernels
        # pad, rotate and encode, byte-identical to the path above.
        parts = be.encode_blocks(x2d, f, seed)
    log.debug("encode %s %s %s on %s via %s%s", f.name, tuple(x.shape), x.dtype, x.device, be.name,
              _NOTE[f.rotation_seed is not None, front_end])
    p = Packed(f, x.shape, x.dtype, lay.axis, parts.codes, parts.scales, parts.tensor_scale, be.name, parts.clipped)
    if strict:
        check_range(p)
    return p


def check_range(p: Packed, what: str = "encode") -> None:
    """Raise RangeError if some block of ``p`` clipped (``strict=True``)."""
    clipped = p.clipped_blocks
    if clipped:
        raise RangeError(
            f"{what}: {clipped} of {p.layout.num_blocks} blocks of the {tuple(p.shape)} {p.dtype} tensor clipped in "
            f"{p.format.name} (saturated or flushed: the format cannot hold this input's range, docs/semantics.md "
            "'Range'); strict=True refuses the encoding",
            clipped_blocks=clipped,
        )


def _plain(fmt: BlockFormat) -> BlockFormat:
    return fmt.with_options(rotation_seed=None)


def _rotates_in_front_end(be: CodecBackend, fmt: BlockFormat) -> bool:
    """Whether this module must rotate / un-rotate around backend ``be`` for ``fmt``: a rotated
    format the backend does not rotate in its kernels (``CodecBackend.max_fused_rotation_block``)."""
    return fmt.rotation_seed is not None and not fuses_rotation(be, fmt)


# debug-log suffix by (format rotated, rotation in the front-end)
_NOTE = {(False, False): "", (True, False): " (rotation fused in the backend)", (True, True): " (rotation in the front-end)"}


def _unrotated(rotated: torch.Tensor, fmt: BlockFormat, length: int, dtype: torch.dtype) -> torch.Tensor:
    """Front-end inverse: un-rotate the float32 padded rows, crop the padding, cast (saturating)."""
    assert fmt.rotation_seed is not None
    return saturating_cast(unrotate(rotated, fmt.rotation_seed, fmt.block_size)[:, :length], dtype)


def _parts(p: Packed) -> EncodedBlocks:
    return EncodedBlocks(p.codes, p.scales, p.tensor_scale)


def _out_dtype(dtype: torch.dtype | None, default: torch.dtype) -> torch.dtype:
    out = default if dtype is None else dtype
    if out not in INPUT_DTYPES:
        raise FormatError(f"decode produces float32, bfloat16 or float16, got {out}")
    return out


def _restore(y2d: torch.Tensor, p: Packed) -> torch.Tensor:
    if len(p.shape) == 0:
        return y2d.reshape(())
    moved = y2d.reshape(_moved_shape(p.shape, p.axis))
    return moved.movedim(-1, p.axis).contiguous()


def decode(p: Packed, *, dtype: torch.dtype | None = None, backend: str = "auto") -> torch.Tensor:
    """Decode ``p`` to a tensor of its original shape.

    Args:
        p: The encoding.
        dtype: float32, bfloat16 or float16 (default: ``p.dtype``, the encoded tensor's);
            values are cast once, saturating to the dtype's finite range.
        backend: Codec backend; every backend produces the same values.

    Returns:
        The decoded tensor, of ``p.shape`` on ``p``'s device.

    Raises:
        ArgumentTypeError: ``p`` is not a :class:`~mxcomm.kernels.Packed`.
        FormatError: an unsupported ``dtype``.
        BackendUnavailableError: the requested backend cannot run on ``p``'s device.
    """
    if not isinstance(p, Packed):
        raise ArgumentTypeError(f"decode takes a mxcomm.Packed, got {type(p).__name__}")
    out = _out_dtype(dtype, p.dtype)
    lay = p.layout
    be = resolve_backend(backend, p.device)
    f = p.format
    front_end = _rotates_in_front_end(be, f)
    if front_end:
        rotated = be.decode_blocks(_parts(p), _plain(f), lay.rows, lay.padded_length, torch.float32)
        y2d = _unrotated(rotated, f, lay.length, out)
    else:
        y2d = be.decode_blocks(_parts(p), f, lay.rows, lay.length, out)
    log.debug("decode %s %s on %s via %s%s", f.name, tuple(p.shape), p.device, be.name,
              _NOTE[f.rotation_seed is not None, front_end])
    return _restore(y2d, p)


def quantize(
    x: torch.Tensor,
    fmt: str | BlockFormat,
    *,
    axis: int = -1,
    rounding: str | None = None,
    scale_mode: str | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    strict: bool = False,
) -> torch.Tensor:
    """Fake-quantize: ``decode(encode(x, fmt, ...))`` in ``x``'s dtype.

    Args:
        x, fmt, axis, rounding, scale_mode, generator, backend, strict: as for :func:`encode`.

    Returns:
        A tensor of ``x``'s shape and dtype holding the values the format can represent.

    Raises:
        FormatError: as :func:`encode`.
        BackendUnavailableError: as :func:`encode`.
        RangeError: as :func:`encode`.
    """
    p = encode(x, fmt, axis=axis, rounding=rounding, scale_mode=scale_mode, generator=generator, backend=backend,
               strict=strict)
    return decode(p, backend=backend)


def decode_sum(
    packed_list: Sequence[Packed], *, dtype: torch.dtype | None = None, backend: str = "auto"
) -> torch.Tensor:
    """``sum_i decode(packed_list[i])``, accumulated in float32 in list order, cast once.

    Bit-identical to decoding each to float32 and adding them left to right (a
    rotated format is summed in the rotated domain and un-rotated once).

    Args:
        packed_list: Encodings sharing format, shape, axis and device.
        dtype: Output dtype (default: the first entry's ``dtype``).
        backend: Codec backend; every backend produces the same values.

    Returns:
        The sum, of the entries' shape.

    Raises:
        ArgumentTypeError: not a sequence, or an entry that is not a ``Packed``.
        FormatError: an empty list, entries that differ in format, shape, axis or device, or an
            unsupported ``dtype``.
        BackendUnavailableError: the requested backend cannot run on the entries' device.
    """
    try:
        items = list(packed_list)
    except TypeError:  # e.g. a single Packed instead of a list of them
        raise ArgumentTypeError(f"decode_sum takes a sequence of mxcomm.Packed, got {type(packed_list).__name__}") from None
    if not items:
        raise FormatError("decode_sum needs at least one Packed")
    first = items[0]
    for i, p in enumerate(items):
        if not isinstance(p, Packed):
            raise ArgumentTypeError(f"decode_sum item {i} is a {type(p).__name__}, not a mxcomm.Packed")
        if p.format != first.format or p.shape != first.shape or p.axis != first.axis:
            raise FormatError(
                f"decode_sum item {i} ({p.format.name}, {tuple(p.shape)}, axis {p.axis}) does not match "
                f"item 0 ({first.format.name}, {tuple(first.shape)}, axis {first.axis})"
            )
        if p.device != first.device:
            raise FormatError(f"decode_sum item {i} is on {p.device}, item 0 on {first.device}")
    out = _out_dtype(dtype, first.dtype)
    lay = first.layout
    be = resolve_backend(backend, first.device)
    f = first.format
    front_end = _rotates_in_front_end(be, f)
    if front_end:
        # Sum in the rotated domain (linear), un-rotate once.
        rotated = be.decode_sum_blocks([_parts(p) for p in items], _plain(f), lay.rows, lay.padded_length, torch.float32)
        y2d = _unrotated(rotated, f, lay.length, out)
    else:
        y2d = be.decode_sum_blocks([_parts(p) for p in items], f, lay.rows, lay.length, out)
    log.debug(
        "decode_sum of %d %s %s on %s via %s%s",
        len(items), f.name, tuple(first.shape), first.device, be.name, _NOTE[f.rotation_seed is not None, front_end],
    )
    return _restore(y2d, first)
