"""The Triton codec backend: launches the kernels of ``triton_kernels.py``.

Loaded lazily by the dispatch (``register_backend("triton", ...)`` in
``mxcomm/kernels/__init__.py``); importing this module imports Triton.

Where it runs (``TritonBackend.availability``):

* CUDA tensors: whenever Triton imports (compiled kernels);
* CPU tensors: only under Triton's interpreter, i.e. when ``TRITON_INTERPRET=1``
  was set before the kernels were first loaded (that is how CI tests the
  kernels without a GPU). Otherwise an explicit ``backend="triton"`` raises
  ``BackendUnavailableError`` with the reason.

Every format parameter becomes a ``tl.constexpr``: the fields of
``mxcomm.kernels.params.KernelParams`` (the same values the native CPU codec
gets), in upper case, so each format compiles to its own specialised kernel of
one generic family.

Rotated formats (``rotation_seed``) with blocks of at most ``TILE`` elements are
rotated inside the kernels (``TritonBackend.max_fused_rotation_block``): the encoder
rotates each block in registers before quantizing it, the decoder un-rotates
the (summed) float32 blocks before the output cast. ``mxcomm.kernels.api``
then hands such formats to this backend unchanged.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import torch
import triton

from mxcomm.errors import FormatError
from mxcomm.formats import BlockFormat
from mxcomm.formats.element import cached_code_values
from mxcomm.kernels import triton_kernels as K
from mxcomm.kernels.bitpack import packed_code_bytes
from mxcomm.kernels.counter_rng import MASK32, seed_key
from mxcomm.kernels.dispatch import check_rotation
from mxcomm.kernels.dtypes import INPUT_DTYPES, SCALE_STORAGE_DTYPES, dtype_code
from mxcomm.kernels.params import kernel_params, triton_constexprs
from mxcomm.kernels.reference import EncodedBlocks, tensor_scale_from_amax

# Elements per program (encode and decode tiles, encode streaming chunks).
TILE = 2048
NUM_WARPS = 4
# No fused multiply-add anywhere: decode_sum's products and sums are rounded separately,
# exactly like the reference.
LAUNCH_OPTIONS: dict[str, Any] = {"num_warps": NUM_WARPS, "enable_fp_fusion": False}

_BITS_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
_SCALE_BITS_VIEW = {
    "e8m0": torch.uint8,
    "e4m3": torch.uint8,
    "fp16": torch.int16,
    "bf16": torch.int16,
    "fp32": torch.int32,
}


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


# The format constexprs of decode_kernel (a subset of triton_constexprs: decode needs no rounding).
DECODE_PARAMS = ("BITS", "SCALE_TYPE", "SCALE_MBITS", "SCALE_EMIN", "SCALE_NAN", "TENSOR_SCALE", "ROTATE")


@functools.cache
def format_constexprs(fmt: BlockFormat) -> dict[str, Any]:
    """The compile-time constants that specialise the encode kernel for ``fmt`` (its KernelParams)."""
    return triton_constexprs(kernel_params(fmt))


@functools.cache
def encode_tiling(block_size: int, bits: int) -> dict[str, Any]:
    """Tile shape of the encoder for a block size (see triton_kernels.encode_kernel)."""
    if _is_pow2(block_size) and block_size <= TILE:
        nb = TILE // block_size
        return {"BS": block_size, "NB": nb, "FUSED": True, "NB1": nb, "KC": block_size, "CH": 8}
    # Blocks per byte-aligned group: a program must start and end on a byte boundary.
    group = 8 // math.gcd(block_size * bits, 8)
    bsp = _next_pow2(block_size)
    if bsp <= TILE:
        kc, nb1 = bsp, TILE // bsp
    else:
        kc, nb1 = TILE, 1
    nb = max(group, nb1)
    ch = max(8, min(TILE, _next_pow2(nb * block_size)))
    return {"BS": block_size, "NB": nb, "FUSED": False, "NB1": nb1, "KC": kc, "CH": ch}


@functools.cache
def decode_tiling(block_size: int) -> dict[str, Any]:
    bsp = _next_pow2(block_size)
    if bsp <= TILE:
        return {"BS": block_size, "NB": TILE // bsp, "KC": bsp}
    return {"BS": block_size, "NB": 1, "KC": TILE}


def _int32(v: int) -> int:
    """A uint32 as the int32 with the same bits (keeps the kernel argument type fixed)."""
    v &= MASK32
    return v - (1 << 32) if v >= 1 << 31 else v


def _shard_base(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """A base tensor and the element stride between shards, without a copy when possible.

    Shards that are equally spaced views of one buffer (what an all-gather
    produces) are read in place; anything else is stacked.
    """
    first = tensors[0]
    if len(tensors) == 1:
        return first, 0
    esz = first.element_size()
    same_buffer = all(
        t.dtype == first.dtype
        and t.numel() == first.numel()
        and t.device == first.device
        and t.is_contiguous()
        and t.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        for t in tensors
    )
    if same_buffer:
        steps = {b.data_ptr() - a.data_ptr() for a, b in zip(tensors, tensors[1:])}
        if len(steps) == 1:
            step = steps.pop()
            if step % esz == 0:
                return first, step // esz
    return torch.stack([t.reshape(-1) for t in tensors]), first.numel()


def rotation_args(fmt: BlockFormat, padded_length: int) -> tuple[list[int], dict[str, Any]]:
    """Runtime arguments (hash key, seed words) and constexpr (ROT_LARGE) of the kernels' rotation
    (ROTATE itself is a format constexpr)."""
    if fmt.rotation_seed is None:
        return [0, 0, 0], {"ROT_LARGE": False}
    if fmt.block_size > TILE:
        raise FormatError(f"the Triton kernels rotate blocks of at most {TILE} elements, {fmt.name} has {fmt.block_size}")
    seed = fmt.rotation_seed
    args = [_int32(seed_key(seed, 0)), _int32(seed), _int32(seed >> 32)]
    return args, {"ROT_LARGE": padded_length > (1 << 32)}


def _whole_contiguous_rows(x_bits: torch.Tensor, bs: int) -> bool:
    """Rows of whole blocks in a contiguous tensor: element k of block g lies at g * bs + k."""
    rows, length = x_bits.shape
    return (
        length % bs == 0
        and (x_bits.stride(1) == 1 or length == 1)
        and (x_bits.stride(0) == length or rows == 1)
    )


def encode_programs(fmt: BlockFormat, total_blocks: int) -> int:
    """Programs (grid size) of ``encode_kernel`` over ``total_blocks`` blocks: each writes one clipped count."""
    return triton.cdiv(total_blocks, encode_tiling(fmt.block_size, fmt.element.bits)["NB"])


def encode_launch(
    x_bits: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    ts: torch.Tensor,
    clipped: torch.Tensor,
    fmt: BlockFormat,
    in_kind: int,
    key: int = 0,
    seed_lo: int = 0,
    seed_hi: int = 0,
) -> tuple[tuple[int], list[Any], dict[str, Any]]:
    """Grid, positional arguments and constexprs of ``encode_kernel`` (also used to compile it ahead of time).

    ``clipped``: int32, one entry per program (:func:`encode_programs`), each its blocks' clipped count.
    """
    rows, length = x_bits.shape
    bs = fmt.block_size
    nbpr = -(-length // bs)
    total_blocks = rows * nbpr
    tiling = encode_tiling(bs, fmt.element.bits)
    rot_args, rot_constexprs = rotation_args(fmt, nbpr * bs)
    grid = (encode_programs(fmt, total_blocks),)
    args = [
        x_bits,
        codes,
        scales.view(_SCALE_BITS_VIEW[fmt.scale]),
        ts,
        clipped,
        x_bits.stride(0),
        x_bits.stride(1),
        length,
        nbpr,
        total_blocks,
        codes.numel(),
        key,
        seed_lo,
        seed_hi,
        *rot_args,
    ]
    constexprs = {
        "IN_KIND": in_kind,
        "LARGE_INDEX": total_blocks * bs > (1 << 32),
        "CONTIG": _whole_contiguous_rows(x_bits, bs),
        **format_constexprs(fmt),
        **tiling,
        **rot_constexprs,
    }
    return grid, args, constexprs


def decode_launch(
    codes: torch.Tensor,
    scales: torch.Tensor,
    ts: torch.Tensor,
    table: torch.Tensor,
    out: torch.Tensor,
    n_shards: int,
    code_stride: int,
    scale_stride: int,
    fmt: BlockFormat,
) -> tuple[tuple[int], list[Any], dict[str, Any]]:
    """Grid, positional arguments and constexprs of ``decode_kernel``."""
    rows, length = out.shape
    bs = fmt.block_size
    nbpr = -(-length // bs)
    total_blocks = rows * nbpr
    tiling = decode_tiling(bs)
    rot_args, rot_constexprs = rotation_args(fmt, nbpr * bs)
    grid = (triton.cdiv(total_blocks, tiling["NB"]),)
    args = [
        codes,
        scales.view(_SCALE_BITS_VIEW[fmt.scale]),
        ts,
        table,
        out.view(torch.int16) if out.dtype == torch.bfloat16 else out,
        n_shards,
        code_stride,
        scale_stride,
        length,
        nbpr,
        total_blocks,
        packed_code_bytes(total_blocks * bs, fmt.element.bits),
        *rot_args,
    ]
    format_cx = format_constexprs(fmt)
    constexprs = {
        **{name: format_cx[name] for name in DECODE_PARAMS},
        "OUT_KIND": dtype_code(out.dtype),
        "CONTIG": length % bs == 0,
        **tiling,
        **rot_constexprs,
    }
    return grid, args, constexprs


class TritonBackend:
    """mxcomm's Triton kernels as a dispatch backend."""

    name = "triton"
    max_fused_rotation_block = TILE

    def __init__(self) -> None:
        from triton.runtime.interpreter import InterpretedFunction

        # Triton decides at import whether @triton.jit functions are interpreted.
        self.interpreted = isinstance(K.encode_kernel, InterpretedFunction)
        self._tables: dict[tuple[Any, torch.device], torch.Tensor] = {}

    # -- availability ----------------------------------------------------------------
    def availability(self, device: torch.device) -> str | None:
        device = torch.device(device)
        if device.type == "cuda":
            if not self.interpreted and not torch.cuda.is_available():
                return "torch.cuda is not available"
            return None
        if device.type == "cpu":
            if os.environ.get("TRITON_INTERPRET") != "1":
                return "Triton runs on CPU tensors only in its interpreter: set TRITON_INTERPRET=1 before first use"
            if not self.interpreted:
                return (
                    "TRITON_INTERPRET=1 was set after mxcomm's Triton kernels had been loaded in compiled mode; "
                    "set it before first use"
                )
            return None
        return f"Triton kernels run on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), not on {device.type}"

    # -- encode ----------------------------------------------------------------------
    def encode_blocks(self, x2d: torch.Tensor, fmt: BlockFormat, seed: int | None) -> EncodedBlocks:
        if x2d.dim() != 2 or x2d.dtype not in INPUT_DTYPES:
            raise FormatError(f"encode_blocks takes a 2-D float32/bfloat16/float16 tensor, got {x2d.dtype} {x2d.dim()}-D")
        check_rotation(self, fmt)
        rows, length = x2d.shape
        bs = fmt.block_size
        bits = fmt.element.bits
        nbpr = -(-length // bs)
        total_blocks = rows * nbpr
        total_codes = total_blocks * bs
        n_code_bytes = packed_code_bytes(total_codes, bits)
        dev = x2d.device
        codes = torch.empty(n_code_bytes, dtype=torch.uint8, device=dev)
        scales = torch.empty(total_blocks, dtype=SCALE_STORAGE_DTYPES[fmt.scale], device=dev)
        if total_blocks == 0:
            tensor_scale = torch.ones((), dtype=torch.float32, device=dev) if fmt.has_tensor_scale else None
            return EncodedBlocks(codes, scales, tensor_scale, torch.zeros((), dtype=torch.int64, device=dev))
        x_bits = x2d.view(_BITS_VIEW[x2d.dtype])
        in_kind = dtype_code(x2d.dtype)
        if fmt.rounding == "stochastic":
            if seed is None:
                raise FormatError("stochastic rounding needs a seed")
            key, seed_lo, seed_hi = _int32(seed_key(seed, 0)), _int32(seed), _int32(seed >> 32)
        else:
            key = seed_lo = seed_hi = 0

        def run(tensor_scale: torch.Tensor | None) -> torch.Tensor:
            clipped_parts = torch.empty(encode_programs(fmt, total_blocks), dtype=torch.int32, device=dev)
            grid, args, constexprs = encode_launch(
                x_bits, codes, scales, tensor_scale if tensor_scale is not None else codes, clipped_parts,
                fmt, in_kind, key, seed_lo, seed_hi,
            )
            with _on_device(dev):
                K.encode_kernel[grid](*args, **constexprs, **LAUNCH_OPTIONS)
            return clipped_parts.sum(dtype=torch.int64)

        # a fixed tensor scale comes from the amax first; an automatic one is 1 unless that clips
        if fmt.tensor_scale:
            tensor_scale = self._tensor_scale(x_bits, in_kind, fmt)
        elif fmt.auto_tensor_scale:
            tensor_scale = torch.ones((), dtype=torch.float32, device=dev)
        else:
            tensor_scale = None
        clipped = run(tensor_scale)
        # (reading the count synchronises a CUDA device: only formats with an automatic tensor scale do)
        if fmt.auto_tensor_scale and int(clipped) > 0:
            # the input's range needs the automatic tensor scale: encode again under it
            tensor_scale = self._tensor_scale(x_bits, in_kind, fmt)
            clipped = run(tensor_scale)
        return EncodedBlocks(codes, scales, tensor_scale, clipped)

    def _tensor_scale(self, x_bits: torch.Tensor, in_kind: int, fmt: BlockFormat) -> torch.Tensor:
        """S = amax / (max_normal * scale_max) rounded up to float32 (1 for an all-zero tensor).

        The amax is a kernel (of the rotated blocks for a rotated format); the
        rounding of the one scalar reuses the reference's exact float64 helper
        (no host synchronisation).
        """
        rows, length = x_bits.shape
        if fmt.rotation_seed is not None:
            parts = self._rotated_amax_parts(x_bits, in_kind, fmt)
        else:
            tr, tc = 16, 128
            n_col_tiles = triton.cdiv(length, tc)
            n_prog = triton.cdiv(rows, tr) * n_col_tiles
            parts = torch.empty(n_prog, dtype=torch.int32, device=x_bits.device)
            with _on_device(x_bits.device):
                K.amax_kernel[(n_prog,)](
                    x_bits, parts, x_bits.stride(0), x_bits.stride(1), rows, length, n_col_tiles,
                    IN_KIND=in_kind, TR=tr, TC=tc, **LAUNCH_OPTIONS,
                )
        return tensor_scale_from_amax(parts.amax().view(torch.float32), fmt)

    def _rotated_amax_parts(self, x_bits: torch.Tensor, in_kind: int, fmt: BlockFormat) -> torch.Tensor:
        rows, length = x_bits.shape
        bs = fmt.block_size
        nbpr = -(-length // bs)
        total_blocks = rows * nbpr
        nb = encode_tiling(bs, fmt.element.bits)["NB"]
        n_prog = triton.cdiv(total_blocks, nb)
        rot_args, rot_constexprs = rotation_args(fmt, nbpr * bs)
        parts = torch.empty(n_prog, dtype=torch.int32, device=x_bits.device)
        with _on_device(x_bits.device):
            K.rotated_amax_kernel[(n_prog,)](
                x_bits, parts, x_bits.stride(0), x_bits.stride(1), length, nbpr, total_blocks, *rot_args,
                IN_KIND=in_kind, BS=bs, NB=nb, CONTIG=_whole_contiguous_rows(x_bits, bs), ROT_LARGE=rot_constexprs["ROT_LARGE"],
                **LAUNCH_OPTIONS,
            )
        return parts

    # -- decode ----------------------------------------------------------------------
    def decode_blocks(
        self, parts: EncodedBlocks, fmt: BlockFormat, rows: int, length: int, dtype: torch.dtype
    ) -> torch.Tensor:
        return self.decode_sum_blocks([parts], fmt, rows, length, dtype)

    def decode_sum_blocks(
        self, parts: list[EncodedBlocks], fmt: BlockFormat, rows: int, length: int, dtype: torch.dtype
    ) -> torch.Tensor:
        if not parts:
            raise FormatError("decode_sum needs at least one encoded tensor")
        check_rotation(self, fmt)
        bs = fmt.block_size
        bits = fmt.element.bits
        nbpr = -(-length // bs) if length else 0
        total_blocks = rows * nbpr
        n_code_bytes = packed_code_bytes(total_blocks * bs, bits)
        dev = parts[0].codes.device
        for i, p in enumerate(parts):
            if p.codes.numel() != n_code_bytes or p.scales.numel() != total_blocks or p.codes.device != dev:
                raise FormatError(
                    f"encoded part {i} has {p.codes.numel()} code bytes / {p.scales.numel()} scales on "
                    f"{p.codes.device}; ({rows}, {length}) in {fmt.name} needs {n_code_bytes} / {total_blocks} on {dev}"
                )
            if fmt.has_tensor_scale and p.tensor_scale is None:
                raise FormatError(f"encoded part {i} lacks the tensor scale of {fmt.name}")
        out = torch.empty((rows, length), dtype=dtype, device=dev)
        if dtype not in INPUT_DTYPES:
            raise FormatError(f"decode produces float32, bfloat16 or float16, got {dtype}")
        if out.numel() == 0:
            return out
        codes, code_stride = _shard_base([p.codes for p in parts])
        scales, scale_stride = _shard_base([p.scales for p in parts])
        if fmt.has_tensor_scale:
            ts = torch.stack([p.tensor_scale.reshape(()).to(torch.float32) for p in parts])
        else:
            ts = codes  # unused pointer
        grid, args, constexprs = decode_launch(
            codes, scales, ts, self._table(fmt, dev), out, len(parts), code_stride, scale_stride, fmt
        )
        with _on_device(dev):
            K.decode_kernel[grid](*args, **constexprs, **LAUNCH_OPTIONS)
        return out

    def _table(self, fmt: BlockFormat, device: torch.device) -> torch.Tensor:
        """float32 value of every element code (the reference's code table), cached per device."""
        key = (fmt.element, device)
        table = self._tables.get(key)
        if table is None:
            table = torch.tensor(cached_code_values(fmt.element), dtype=torch.float32, device=device)
            self._tables[key] = table
        return table


class _on_device:
    """``torch.cuda.device(dev)`` for CUDA tensors (Triton launches on the current device)."""

    def __init__(self, device: torch.device) -> None:
        self._ctx = torch.cuda.device(device) if device.type == "cuda" else None

    def __enter__(self) -> None:
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


def load() -> TritonBackend:
    """Loader registered with the dispatch (imports Triton)."""
    return TritonBackend()
