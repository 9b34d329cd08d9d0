"""The codec as torch custom ops: ``torch.ops.mxcomm.encode`` / ``decode`` / ``decode_sum`` / ``quantize``.

Registered with ``torch.library`` (``define`` + ``impl`` for
``CompositeExplicitAutograd``, one kernel for every device, + ``register_fake``).
Each op has a fake (meta) implementation that derives the output shapes and
dtypes from the format and the symbolic input shape, so the ops trace under
FakeTensor, ``torch.compile`` (as one opaque node each, dynamic shapes included)
and ``torch.export``; the real implementations are the eager codec (backend
dispatch, front-end rotation) and never run during tracing.

Schemas::

    mxcomm::encode(Tensor x, str fmt, int axis, Tensor? seed, str backend)
        -> (Tensor codes, Tensor scales, Tensor tensor_scale)
    mxcomm::decode(Tensor codes, Tensor scales, Tensor? tensor_scale, str fmt, SymInt[] shape, int axis,
                   ScalarType dtype, str backend) -> Tensor
    mxcomm::decode_sum(Tensor[] codes, Tensor[] scales, Tensor[] tensor_scales, str fmt, SymInt[] shape,
                       int axis, ScalarType dtype, str backend) -> Tensor
    mxcomm::quantize(Tensor x, str fmt, int axis, Tensor? seed, str backend) -> Tensor

* ``fmt`` is a *format spec*, a string that identifies the format completely:
  ``"<name>:<hex>"`` where ``<hex>`` is ``mxcomm.kernels.frame.format_fields``
  (element, block size, scale type and mode, rounding, tensor scale, rotation
  seed: the frame's canonical description). :func:`format_spec` writes it,
  :func:`format_from_spec` reads it (both cached), so unregistered and rotated
  formats cross the op boundary as exactly as registered ones.
* ``axis`` is non-negative (``mxcomm.encode`` normalises it); ``tensor_scale``
  is a 0-d float32 tensor for formats with a tensor scale and an empty ``(0,)``
  tensor otherwise (``decode_sum`` takes an empty list then).
* ``seed`` is a one-element int64 tensor drawn by the caller for stochastic
  rounding (None otherwise), so a compiled graph draws a new seed per call
  instead of baking one in.
* ``backend`` is resolved when the op runs (``"auto"``, ``MXCOMM_BACKEND``).

Outputs are always fresh, contiguous tensors (never views of an input). The
Python API (``mxcomm.encode`` / ``decode`` / ``decode_sum`` / ``quantize`` and
:class:`~mxcomm.kernels.Packed`) is a thin layer over these ops; its eager
behaviour and bytes are those of the ops.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import ParamSpec, TypeVar

import torch

from mxcomm.errors import FormatError, MxcommError
from mxcomm.formats import BlockFormat, block_layout, get_format
from mxcomm.kernels.bitpack import packed_code_bytes
from mxcomm.kernels.dispatch import CodecBackend, fuses_rotation, resolve_backend
from mxcomm.kernels.dtypes import SCALE_STORAGE_DTYPES
from mxcomm.kernels.frame import format_fields, format_from_fields
from mxcomm.kernels.reference import EncodedBlocks, saturating_cast
from mxcomm.kernels.rotation import rotate, unrotate

log = logging.getLogger("mxcomm.kernels")

P = ParamSpec("P")
R = TypeVar("R")

NAMESPACE = "mxcomm"
SPEC_SEPARATOR = ":"


# -- format specs -----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1024)
def format_spec(fmt: BlockFormat) -> str:
    """The string that identifies ``fmt`` completely across an op boundary: ``"<name>:<hex fields>"``."""
    if not isinstance(fmt, BlockFormat):
        raise FormatError(f"format_spec takes a BlockFormat, got {type(fmt).__name__}")
    return f"{fmt.name}{SPEC_SEPARATOR}{format_fields(fmt).hex()}"


@functools.lru_cache(maxsize=1024)
def format_from_spec(spec: str) -> BlockFormat:
    """The format a :func:`format_spec` string describes.

    Raises:
        FormatError: a malformed spec.
    """
    name, sep, fields = spec.partition(SPEC_SEPARATOR) if isinstance(spec, str) else ("", "", "")
    try:
        raw = bytes.fromhex(fields)
    except ValueError:
        raw = b""
    if not sep or not raw:
        raise FormatError(f"not a mxcomm format spec: {spec!r}")
    fmt = format_from_fields(name, raw)
    try:
        registered = get_format(name)
    except FormatError:
        return fmt
    return registered if registered == fmt else fmt


def canonical_format(fmt: BlockFormat) -> BlockFormat:
    """One object per distinct format: the registered one if ``fmt`` equals it, else one cached per spec.

    ``torch.compile`` guards a format it read by object identity, so a compiled model whose format
    is rebuilt equal (``with_options(...)`` returns a new object) or switched back would otherwise
    recompile every time.
    """
    return format_from_spec(format_spec(fmt))


# -- helpers for code that torch.compile traces ---------------------------------------------------
def constant_when_traced(fn: Callable[P, R]) -> Callable[P, R]:
    """``torch.compiler.assume_constant_result(fn)``: Dynamo calls ``fn`` once while tracing and
    uses its result as a constant (guarded on the arguments' sources).

    Sets the marker that decorator sets instead of calling it: it would import Dynamo when mxcomm
    is imported (seconds, and Triton with it, before a test can set ``TRITON_INTERPRET``).
    tests/kernels/test_torch_ops.py checks that the marker is still the one torch uses.
    """
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


def opaque_to_dynamo(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn``, never traced by Dynamo: an op's real implementation.

    The dispatcher calls an op's Python kernel from whatever frame runs the op; when that frame
    runs in eager after a graph break of a ``torch.compile``d function, Dynamo would otherwise
    compile the kernel's own frames (and trace into ctypes calls, raw pointers and locks: that is
    how a compiled TP model got NaN logits, see docs/kernels.md). Dynamo is only looked up once it
    is loaded: importing it costs seconds, and nothing compiles before it is.
    """
    disabled: Callable[P, R] | None = None

    @functools.wraps(fn)
    def kernel(*args: P.args, **kwargs: P.kwargs) -> R:
        nonlocal disabled
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        if disabled is None:
            disabled = sys.modules["torch._dynamo"].disable(fn, recursive=True)
        return disabled(*args, **kwargs)

    return kernel


# -- profiler ranges --------------------------------------------------------------------------------
def profile_range(name: str) -> AbstractContextManager[object]:
    """``torch.profiler.record_function(name)`` while a profiler runs, else a no-op.

    (An unconditional ``record_function`` costs about 10 us per range even with
    no profiler attached, more than a small all-reduce's encode.)
    """
    if torch.autograd._profiler_enabled():
        return torch.profiler.record_function(name)
    return nullcontext()


# -- shapes (SymInt-friendly: plain arithmetic, no int() casts) --------------------------------------
def _blocked(shape: Sequence[int | torch.SymInt], axis: int) -> tuple[int | torch.SymInt, int | torch.SymInt]:
    """(rows, length) of a tensor of ``shape`` blocked along the (normalised) ``axis``."""
    if len(shape) == 0:
        return 1, 1
    rows: int | torch.SymInt = 1
    for i, d in enumerate(shape):
        if i != axis:
            rows = rows * d
    return rows, shape[axis]


def encoded_sizes(fmt: BlockFormat, shape: Sequence[int | torch.SymInt], axis: int):
    """(code bytes, number of blocks) of ``shape`` encoded along ``axis`` (symbolic shapes welcome)."""
    rows, length = _blocked(shape, axis)
    num_blocks = rows * ((length + fmt.block_size - 1) // fmt.block_size)
    return packed_code_bytes(num_blocks * fmt.block_size, fmt.element.bits), num_blocks


# -- the eager codec (what the ops run) --------------------------------------------------------------
def _plain(fmt: BlockFormat) -> BlockFormat:
    return fmt.with_options(rotation_seed=None)


def _rotates_in_front_end(be: CodecBackend, fmt: BlockFormat) -> bool:
    """Whether the front-end must rotate / un-rotate around backend ``be`` for ``fmt``: a rotated
    format the backend does not rotate in its kernels (``CodecBackend.max_fused_rotation_block``)."""
    return fmt.rotation_seed is not None and not fuses_rotation(be, fmt)


# debug-log suffix by (format rotated, rotation in the front-end)
_NOTE = {(False, False): "", (True, False): " (rotation fused in the backend)", (True, True): " (rotation in the front-end)"}


def _unrotated(rotated: torch.Tensor, fmt: BlockFormat, length: int, dtype: torch.dtype) -> torch.Tensor:
    """Front-end inverse: un-rotate the float32 padded rows, crop the padding, cast (saturating)."""
    assert fmt.rotation_seed is not None
    return saturating_cast(unrotate(rotated, fmt.rotation_seed, fmt.block_size)[:, :length], dtype)


def _moved_shape(shape: Sequence[int], axis: int) -> list[int]:
    dims = list(shape)
    if not dims:
        return [1]
    return dims[:axis] + dims[axis + 1 :] + [dims[axis]]


def _restore(y2d: torch.Tensor, shape: Sequence[int], axis: int) -> torch.Tensor:
    if len(shape) == 0:
        return y2d.reshape(())
    moved = y2d.reshape(_moved_shape(shape, axis))
    return moved.movedim(-1, axis).contiguous()


def _seed_value(seed: torch.Tensor | None) -> int | None:
    return None if seed is None else int(seed.reshape(-1)[0].item())


def encode_parts(
    x: torch.Tensor, fmt: BlockFormat, axis: int, seed: int | None, backend: str
) -> tuple[EncodedBlocks, CodecBackend]:
    """Encode ``x`` (blocks along ``axis``) with ``backend``: the parts and the backend that ran."""
    lay = block_layout(x.shape, axis, fmt.block_size)
    be = resolve_backend(backend, x.device)
    x2d = x.reshape(1, 1) if x.dim() == 0 else x.movedim(lay.axis, -1).reshape(lay.rows, lay.length)
    front_end = _rotates_in_front_end(be, fmt)
    if front_end:
        # Rotation runs here for backends that do not fuse it: pad to whole blocks,
        # rotate in float32, and hand the backend the plain (unrotated) format.
        padded = x2d.new_zeros((lay.rows, lay.padded_length), dtype=torch.float32)
        padded[:, : lay.length] = x2d
        parts = be.encode_blocks(rotate(padded, fmt.rotation_seed, fmt.block_size), _plain(fmt), seed)
    else:
        # A fusing backend gets the rotated format and the unpadded rows: its kernels
        # pad, rotate and encode, byte-identical to the path above.
        parts = be.encode_blocks(x2d, fmt, seed)
    log.debug("encode %s %s %s on %s via %s%s", fmt.name, tuple(x.shape), x.dtype, x.device, be.name,
              _NOTE[fmt.rotation_seed is not None, front_end])
    return parts, be


def decode_sum_parts(
    parts: Sequence[EncodedBlocks], fmt: BlockFormat, shape: Sequence[int], axis: int, dtype: torch.dtype,
    backend: str,
) -> torch.Tensor:
    """``sum_i decode(parts[i])`` in float32 in list order, cast once to ``dtype``, of ``shape``."""
    lay = block_layout(shape, axis, fmt.block_size)
    be = resolve_backend(backend, parts[0].codes.device)
    front_end = _rotates_in_front_end(be, fmt)
    if front_end:
        # Sum in the rotated domain (linear), un-rotate once.
        rotated = be.decode_sum_blocks(list(parts), _plain(fmt), lay.rows, lay.padded_length, torch.float32)
        y2d = _unrotated(rotated, fmt, lay.length, dtype)
    else:
        y2d = be.decode_sum_blocks(list(parts), fmt, lay.rows, lay.length, dtype)
    log.debug("decode%s of %d %s %s on %s via %s%s", "" if len(parts) == 1 else "_sum", len(parts), fmt.name,
              tuple(shape), parts[0].codes.device, be.name, _NOTE[fmt.rotation_seed is not None, front_end])
    return _restore(y2d, lay.shape, lay.axis)


def _tensor_scale_or_empty(parts: EncodedBlocks, like: torch.Tensor) -> torch.Tensor:
    if parts.tensor_scale is not None:
        return parts.tensor_scale.reshape(()).to(torch.float32)
    return like.new_empty((0,), dtype=torch.float32)


def _optional_scale(t: torch.Tensor | None) -> torch.Tensor | None:
    return t if t is not None and t.numel() else None


# -- op definitions --------------------------------------------------------------------------------
def _define(name: str, schema: str, impl, fake) -> None:  # noqa: ANN001
    qualname = f"{NAMESPACE}::{name}"
    torch.library.define(qualname, schema)
    torch.library.impl(qualname, "CompositeExplicitAutograd", opaque_to_dynamo(impl))
    torch.library.register_fake(qualname, fake)


def _encode_impl(x: torch.Tensor, fmt: str, axis: int, seed: torch.Tensor | None, backend: str):
    parts, _ = encode_parts(x, format_from_spec(fmt), axis, _seed_value(seed), backend)
    return parts.codes, parts.scales, _tensor_scale_or_empty(parts, x)


def _encode_fake(x: torch.Tensor, fmt: str, axis: int, seed: torch.Tensor | None, backend: str):
    f = format_from_spec(fmt)
    code_bytes, num_blocks = encoded_sizes(f, x.shape, axis)
    codes = x.new_empty((code_bytes,), dtype=torch.uint8)
    scales = x.new_empty((num_blocks,), dtype=SCALE_STORAGE_DTYPES[f.scale])
    tensor_scale = x.new_empty(() if f.tensor_scale else (0,), dtype=torch.float32)
    return codes, scales, tensor_scale


def _decode_impl(codes, scales, tensor_scale, fmt, shape, axis, dtype, backend):  # noqa: ANN001
    parts = EncodedBlocks(codes, scales, _optional_scale(tensor_scale))
    return decode_sum_parts([parts], format_from_spec(fmt), shape, axis, dtype, backend)


def _decode_fake(codes, scales, tensor_scale, fmt, shape, axis, dtype, backend):  # noqa: ANN001
    return codes.new_empty(shape, dtype=dtype)


def _decode_sum_impl(codes, scales, tensor_scales, fmt, shape, axis, dtype, backend):  # noqa: ANN001
    if not codes or len(scales) != len(codes) or len(tensor_scales) not in (0, len(codes)):
        raise FormatError(
            f"decode_sum takes as many codes ({len(codes)}, at least one) as scales ({len(scales)}) "
            f"and tensor scales ({len(tensor_scales)}, or none)"
        )
    ts = list(tensor_scales) or [None] * len(codes)
    parts = [EncodedBlocks(c, s, _optional_scale(t)) for c, s, t in zip(codes, scales, ts)]
    return decode_sum_parts(parts, format_from_spec(fmt), shape, axis, dtype, backend)


def _decode_sum_fake(codes, scales, tensor_scales, fmt, shape, axis, dtype, backend):  # noqa: ANN001
    return codes[0].new_empty(shape, dtype=dtype)


def _quantize_impl(x: torch.Tensor, fmt: str, axis: int, seed: torch.Tensor | None, backend: str):
    f = format_from_spec(fmt)
    parts, _ = encode_parts(x, f, axis, _seed_value(seed), backend)
    return decode_sum_parts([parts], f, x.shape, axis, x.dtype, backend)


def _quantize_fake(x: torch.Tensor, fmt: str, axis: int, seed: torch.Tensor | None, backend: str):
    return x.new_empty(x.shape)  # contiguous, like the real output (never x's strides)


_define("encode", "(Tensor x, str fmt, int axis, Tensor? seed, str backend) -> (Tensor, Tensor, Tensor)",
        _encode_impl, _encode_fake)
_define("decode", "(Tensor codes, Tensor scales, Tensor? tensor_scale, str fmt, SymInt[] shape, int axis, "
        "ScalarType dtype, str backend) -> Tensor", _decode_impl, _decode_fake)
_define("decode_sum", "(Tensor[] codes, Tensor[] scales, Tensor[] tensor_scales, str fmt, SymInt[] shape, "
        "int axis, ScalarType dtype, str backend) -> Tensor", _decode_sum_impl, _decode_sum_fake)
_define("quantize", "(Tensor x, str fmt, int axis, Tensor? seed, str backend) -> Tensor",
        _quantize_impl, _quantize_fake)


# -- errors at run time ----------------------------------------------------------------------------
# Dynamo reports an exception raised while it traces with fullgraph=True as its own Unsupported
# error; code that must raise mxcomm's documented exception from compiled code defers it into the
# graph instead, as this op, which raises it when the graph runs.
def error_type(name: str) -> type[MxcommError]:
    """The mxcomm exception class called ``name`` (``MxcommError`` if there is none)."""
    pending: list[type[MxcommError]] = [MxcommError]
    while pending:
        cls = pending.pop()
        if cls.__name__ == name:
            return cls
        pending += cls.__subclasses__()
    return MxcommError


def _raise_impl(x: torch.Tensor, error: str, message: str) -> torch.Tensor:
    raise error_type(error)(message)


def _raise_fake(x: torch.Tensor, error: str, message: str) -> torch.Tensor:
    return x.new_empty(x.shape)


_define("raise_error", "(Tensor x, str error, str message) -> Tensor", _raise_impl, _raise_fake)
raise_error_op = torch.ops.mxcomm.raise_error.default
torch.fx.node.has_side_effect(raise_error_op)  # never dropped for an unused result


def deferred_error(like: torch.Tensor, exc: MxcommError) -> torch.Tensor:
    """A contiguous tensor of ``like``'s shape and dtype whose computation raises ``exc`` (its type
    and message) when the graph runs: how traced code raises a documented mxcomm error."""
    return raise_error_op(like, type(exc).__name__, str(exc))


encode_op = torch.ops.mxcomm.encode.default
decode_op = torch.ops.mxcomm.decode.default
decode_sum_op = torch.ops.mxcomm.decode_sum.default
quantize_op = torch.ops.mxcomm.quantize.default
