"""Public codec entry points: encode, decode, quantize, decode_sum.

Each is a thin layer over its torch custom op (``mxcomm.kernels.torch_ops``):
argument checks, format resolution and the :class:`Packed` container live here,
the codec itself runs inside the op.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mxcomm.errors import ArgumentTypeError, FormatError, MxcommError
from mxcomm.formats import BlockFormat, Rounding, get_format
from mxcomm.formats.block import normalize_axis
from mxcomm.kernels.dispatch import resolve_backend
from mxcomm.kernels.dtypes import INPUT_DTYPES
from mxcomm.kernels.packed import Packed
from mxcomm.kernels.torch_ops import (
    constant_when_traced,
    decode_op,
    decode_sum_op,
    deferred_error,
    encode_op,
    format_spec,
    quantize_op,
)


def effective_format(fmt: str | BlockFormat, rounding: str | None = None, scale_mode: str | None = None) -> BlockFormat:
    """``fmt`` resolved from the registry, with rounding / scale-mode overrides applied."""
    base = get_format(fmt)
    changes: dict[str, object] = {}
    if rounding is not None:
        changes["rounding"] = Rounding.parse(rounding, "rounding")
    if scale_mode is not None:
        changes["scale_mode"] = scale_mode
    return base.with_options(**changes) if changes else base


def _draw_seed(generator: torch.Generator | None) -> torch.Tensor:
    # One 62-bit seed per encode call (a one-element int64 tensor, so that a compiled graph draws a
    # new one per call); the counter-based hash derives every element's random word from it
    # (mxcomm.kernels.counter_rng).
    if generator is not None and not isinstance(generator, torch.Generator):
        raise FormatError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return torch.randint(0, 2**62, (1,), generator=generator, device="cpu")


def _check_input(x: object, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f"{what} takes a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in INPUT_DTYPES:
        raise FormatError(f"{what} takes float32, bfloat16 or float16 tensors, got {x.dtype}")
    return x


# -- resolution under torch.compile ----------------------------------------------------------------
# Dynamo cannot trace the registry's lock nor build a BlockFormat, and an exception raised inside a
# constant (assume_constant_result) function reaches the caller wrapped in a Dynamo error. So while
# compiling, the format is resolved by constant functions that return the error message instead of
# raising, and the (traceable) caller raises the documented FormatError itself (quantize defers it
# into the graph: deferred_error).


@constant_when_traced
def _resolution_error(fmt: str | BlockFormat, rounding: str | None, scale_mode: str | None) -> str:
    try:
        effective_format(fmt, rounding, scale_mode)
    except FormatError as exc:
        return str(exc)
    return ""


@constant_when_traced
def _constant_format(fmt: str | BlockFormat, rounding: str | None, scale_mode: str | None) -> BlockFormat:
    return effective_format(fmt, rounding, scale_mode)


@constant_when_traced
def _constant_spec(fmt: str | BlockFormat, rounding: str | None, scale_mode: str | None) -> str:
    return format_spec(effective_format(fmt, rounding, scale_mode))


def _resolve(fmt: str | BlockFormat, rounding: str | None = None, scale_mode: str | None = None) -> tuple[BlockFormat, str]:
    """The effective format and its op spec (resolved once, when a compiled graph is traced)."""
    if not torch.compiler.is_compiling():
        f = effective_format(fmt, rounding, scale_mode)
        return f, format_spec(f)
    error = _resolution_error(fmt, rounding, scale_mode)
    if error:
        raise FormatError(error)
    return _constant_format(fmt, rounding, scale_mode), _constant_spec(fmt, rounding, scale_mode)


def _backend_name(backend: str, device: torch.device) -> str:
    """The backend that will run (recorded in ``Packed.backend``); an unusable one raises here, eagerly.
    While compiling the op resolves it when it runs, and ``Packed.backend`` is the requested name."""
    if torch.compiler.is_compiling():
        return backend
    return resolve_backend(backend, device).name


def encode(
    x: torch.Tensor,
    fmt: str | BlockFormat,
    *,
    axis: int = -1,
    rounding: str | None = None,
    scale_mode: str | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
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

    Returns:
        The :class:`~mxcomm.kernels.Packed` encoding (``decode`` inverts it up to quantization).

    Raises:
        ArgumentTypeError: ``x`` is not a ``torch.Tensor``.
        FormatError: ``x`` is not float32/bfloat16/float16, an unknown format, a bad ``axis``,
            ``rounding`` or ``scale_mode``.
        BackendUnavailableError: the requested backend cannot run on ``x``'s device.
    """
    _check_input(x, "encode")
    f, spec = _resolve(fmt, rounding, scale_mode)
    ax = normalize_axis(axis, x.dim())
    seed = _draw_seed(generator) if f.rounding == "stochastic" else None
    name = _backend_name(backend, x.device)
    codes, scales, tensor_scale = encode_op(x, spec, ax, seed, backend)
    return Packed(f, x.shape, x.dtype, ax, codes, scales, tensor_scale if f.tensor_scale else None, name)


def _out_dtype(dtype: torch.dtype | None, default: torch.dtype) -> torch.dtype:
    out = default if dtype is None else dtype
    if out not in INPUT_DTYPES:
        raise FormatError(f"decode produces float32, bfloat16 or float16, got {out}")
    return out


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
    _backend_name(backend, p.device)
    return decode_op(p.codes, p.scales, p.tensor_scale, _spec_of(p.format), list(p.shape), p.axis, out, backend)


def quantize(
    x: torch.Tensor,
    fmt: str | BlockFormat,
    *,
    axis: int = -1,
    rounding: str | None = None,
    scale_mode: str | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Fake-quantize: ``decode(encode(x, fmt, ...))`` in ``x``'s dtype.

    Inside ``torch.compile`` this is one ``mxcomm::quantize`` op (no graph break, dynamic shapes
    welcome), and bad arguments raise the errors below when the compiled graph runs.

    Args:
        x, fmt, axis, rounding, scale_mode, generator, backend: as for :func:`encode`.

    Returns:
        A tensor of ``x``'s shape and dtype holding the values the format can represent.

    Raises:
        FormatError: as :func:`encode`.
        BackendUnavailableError: as :func:`encode`.
    """
    if torch.compiler.is_compiling() and isinstance(x, torch.Tensor):
        try:
            return _quantize(x, fmt, axis, rounding, scale_mode, generator, backend)
        except MxcommError as exc:  # raised when the graph runs, as in eager (see deferred_error)
            return deferred_error(x, exc)
    return _quantize(x, fmt, axis, rounding, scale_mode, generator, backend)


def _quantize(
    x: torch.Tensor, fmt: str | BlockFormat, axis: int, rounding: str | None, scale_mode: str | None,
    generator: torch.Generator | None, backend: str,
) -> torch.Tensor:
    _check_input(x, "quantize")
    f, spec = _resolve(fmt, rounding, scale_mode)
    ax = normalize_axis(axis, x.dim())
    seed = _draw_seed(generator) if f.rounding == "stochastic" else None
    _backend_name(backend, x.device)
    return quantize_op(x, spec, ax, seed, backend)


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
    _backend_name(backend, first.device)
    tensor_scales = [p.tensor_scale for p in items] if first.format.tensor_scale else []
    return decode_sum_op(
        [p.codes for p in items], [p.scales for p in items], tensor_scales, _spec_of(first.format),
        list(first.shape), first.axis, out, backend,
    )


def _spec_of(fmt: BlockFormat) -> str:
    return _constant_spec(fmt, None, None) if torch.compiler.is_compiling() else format_spec(fmt)
