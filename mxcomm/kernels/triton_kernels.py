"""Triton kernels of the mxcomm codec (one generic family; every format parameter is a constexpr).

Importing this module imports Triton; ``mxcomm.kernels.triton_backend`` is the
only importer and is itself loaded lazily by the dispatch. The numerics are
those of ``mxcomm/kernels/reference.py`` (docs/semantics.md), reproduced
bit for bit with integer arithmetic on float bit patterns:

* every input is first turned into its float32 bit pattern ``u`` (bf16 by a
  shift, fp16 by an exact conversion), so exponents come from the bits and
  nothing is ever flushed to zero;
* a value ``|x| * 2**-e`` is ``M * 2**(Ex - e)`` with an integer significand
  ``M``; rounding it onto a grid of step ``2**s`` is a right shift of ``M``
  whose dropped bits decide the rounding exactly (``_round_shift*``);
* the only float operations are the ones the semantics define (an IEEE
  float32 division for float scale types, one float32 product when decoding,
  float32 additions in ``decode_sum``) plus exact float64 scale arithmetic.
  The backend launches every kernel with ``enable_fp_fusion=False`` so that a
  product and a sum never become one fused multiply-add.

Kernels:

* ``encode_kernel``: (rows, L) strided input -> packed code bytes + one scale
  per block. ``FUSED`` (power-of-two blocks that fit one tile): a program owns
  ``NB`` whole blocks held in registers. Otherwise a program owns a
  byte-aligned group of blocks, writes their scales first and then streams
  over its elements in chunks, reading each element's block scale back.
* ``decode_kernel``: codes + scales of ``n_shards`` encoded tensors ->
  sum over shards of ``element * X`` (float32, shard order), cast once. With
  one shard it is ``decode``; with n it is the fused ``decode_sum``.
* ``amax_kernel``: per-program max |x| over finite values (for the NVFP4
  tensor scale); ``rotated_amax_kernel`` the same over rotated blocks.
* ``random_bits_kernel``: the stochastic-rounding words, exposed for testing
  the hash against ``mxcomm.kernels.counter_rng``.

``ROTATE`` (a constexpr of the encode / decode kernels; FUSED tiling, whole
blocks in one tile) fuses the random Hadamard rotation of
``mxcomm/kernels/rotation.py``: the encoder quantizes ``H D x / B`` of each
zero-padded block, the decoder stores ``D H (sum of shards)``. Signs come from
the same counter hash (under the rotation seed) and the butterflies run in the
reference's stage order, so every float32 operation matches it one for one.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mxcomm.formats import Rounding, ScaleMode, ScaleType
from mxcomm.kernels.dtypes import dtype_code

# -- the stable codes of mxcomm.formats.enums / mxcomm.kernels.dtypes, as globals the kernels read --
# (Triton lets @jit functions read module globals that are tl.constexpr.) Format parameters arrive
# as constexpr arguments named after the fields of mxcomm.kernels.params.KernelParams.
DT_FP32 = tl.constexpr(dtype_code(torch.float32))
DT_BF16 = tl.constexpr(dtype_code(torch.bfloat16))
DT_FP16 = tl.constexpr(dtype_code(torch.float16))
SC_E8M0, SC_E4M3 = tl.constexpr(ScaleType.E8M0.code), tl.constexpr(ScaleType.E4M3.code)
SC_FP16, SC_BF16, SC_FP32 = (tl.constexpr(ScaleType.FP16.code), tl.constexpr(ScaleType.BF16.code),
                             tl.constexpr(ScaleType.FP32.code))
MODE_FLOOR, MODE_CEIL = tl.constexpr(ScaleMode.FLOOR.code), tl.constexpr(ScaleMode.CEIL.code)
MODE_RCEIL, MODE_EVEN = tl.constexpr(ScaleMode.RCEIL.code), tl.constexpr(ScaleMode.EVEN.code)
RND_RNE, RND_AWAY = tl.constexpr(Rounding.RNE.code), tl.constexpr(Rounding.AWAY.code)
RND_ZERO, RND_STOCHASTIC = tl.constexpr(Rounding.ZERO.code), tl.constexpr(Rounding.STOCHASTIC.code)
RND_UP = tl.constexpr(max(r.code for r in Rounding) + 1)  # internal: toward +inf, for rounding scales up


# -- bit-level helpers ----------------------------------------------------------------
@triton.jit
def _fp32_bits(raw, IN_KIND: tl.constexpr):
    """float32 bit pattern (int32) of loaded raw input bits (int32 fp32, int16 bf16/fp16)."""
    if IN_KIND == DT_FP32:
        u = raw
    elif IN_KIND == DT_BF16:
        # bf16 is the top half of a float32: exact, subnormals included
        u = (raw.to(tl.int32) & 0xFFFF) << 16
    else:
        # fp16 -> fp32 is exact and never produces a float32 subnormal
        u = raw.to(tl.float16, bitcast=True).to(tl.float32).to(tl.int32, bitcast=True)
    return u


@triton.jit
def _floor_log2_small(n):
    """floor(log2(n)) for int32 0 < n < 2**24 (exact: the int -> float32 conversion is exact)."""
    return ((n.to(tl.float32).to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127


@triton.jit
def _mix32(x):
    """lowbias32 on uint32 (same constants as mxcomm.kernels.counter_rng.mix32)."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _random_bits(i, key, seed_lo, seed_hi, LARGE_INDEX: tl.constexpr):
    """The random word (uint32) of padded element index ``i`` (int64)."""
    lo = i.to(tl.uint32)
    if LARGE_INDEX:
        hi = (i >> 32).to(tl.uint32)
        k = _mix32(seed_lo.to(tl.uint32, bitcast=True) ^ _mix32(seed_hi.to(tl.uint32, bitcast=True) ^ hi))
    else:
        k = key.to(tl.uint32, bitcast=True)
    return _mix32(k ^ lo)


@triton.jit
def _round_shift32(M, sh, ROUNDING: tl.constexpr):
    """Round M * 2**-sh to an integer (rne / away / zero) for int32 M < 2**24.

    Shifts of 25 or more leave a fraction below one half, so they are clamped
    there; a negative ``sh`` is an exact left shift.
    """
    shr = tl.minimum(tl.maximum(sh, 0), 25)
    shl = tl.minimum(tl.maximum(-sh, 0), 24)
    whole = M >> shr
    rem = M - (whole << shr)
    half = (1 << shr) >> 1
    if ROUNDING == RND_RNE:
        up = (shr > 0) & ((rem > half) | ((rem == half) & ((whole & 1) == 1)))
        whole = whole + up.to(tl.int32)
    elif ROUNDING == RND_AWAY:
        up = (shr > 0) & (rem >= half)
        whole = whole + up.to(tl.int32)
    return whole << shl


@triton.jit
def _round_shift64(M, sh, rand, ROUNDING: tl.constexpr):
    """Round M * 2**-sh to an integer for int64 0 <= M < 2**53, any rounding mode.

    The dropped bits are summarised as F = floor(frac * 2**32) and a sticky bit
    S (frac * 2**32 not an integer); every decision of the reference is a
    comparison of (F, S) with an integer: 2**31 for the halfway point, the
    random word for stochastic rounding.
    """
    sh = sh.to(tl.int64)
    shr = tl.minimum(tl.maximum(sh, 0), 62)
    shl = tl.minimum(tl.maximum(-sh, 0), 62)
    whole = M >> shr
    rem = M - (whole << shr)
    fl = tl.minimum(tl.maximum(32 - sh, 0), 32)
    fr = tl.minimum(tl.maximum(sh - 32, 0), 62)
    F = (rem << fl) >> fr
    one = tl.full(fr.shape, 1, tl.int64)
    S = (rem & ((one << fr) - 1)) != 0
    HALF: tl.constexpr = 2147483648
    if ROUNDING == RND_RNE:
        up = (F > HALF) | ((F == HALF) & (S | ((whole & 1) == 1)))
    elif ROUNDING == RND_AWAY:
        up = F >= HALF
    elif ROUNDING == RND_STOCHASTIC:
        r = rand.to(tl.int64)
        up = (F > r) | ((F == r) & S)
    elif ROUNDING == RND_UP:
        up = (F > 0) | S
    else:
        up = F < 0  # toward zero: never up
    return (whole + up.to(tl.int64)) << shl


@triton.jit
def _element_codes(
    u,
    e,
    rand,
    IS_INT: tl.constexpr,
    BITS: tl.constexpr,
    GRID_MBITS: tl.constexpr,
    GRID_EMIN: tl.constexpr,
    MAX_CODE: tl.constexpr,
    ROUNDING: tl.constexpr,
):
    """Element codes (int32) of the finite values with float32 bits ``u``, scaled by 2**-e.

    The element grid has GRID_MBITS mantissa bits and subnormal binade GRID_EMIN (KernelParams;
    an integer element is the grid whose subnormal binade holds every value in range).
    """
    mag = u & 0x7FFFFFFF
    neg = u < 0
    ef = mag >> 23
    mf = mag & 0x7FFFFF
    M = tl.where(ef > 0, mf | 0x800000, mf)
    Ex = tl.maximum(ef, 1) - 150  # |x| = M * 2**Ex
    if IS_INT:
        # k = round(|x| * 2**-e / step): the grid's subnormal binade, step 2**(GRID_EMIN - GRID_MBITS).
        # A negative shift means a normal |x| * 2**-e >= 2**23 (e.g. a huge input under a float
        # scale clamped at its max): far above KMAX, so shift by 0 and let the clamp saturate --
        # the left shift would overflow the integer and wrap.
        sh = tl.maximum(GRID_EMIN + e - Ex - GRID_MBITS, 0)
        if ROUNDING == RND_STOCHASTIC:
            q = _round_shift64(M.to(tl.int64), sh, rand, ROUNDING).to(tl.int32)
        else:
            q = _round_shift32(M, sh, ROUNDING)
        q = tl.minimum(q, MAX_CODE)
        code = tl.where(neg & (q > 0), (1 << BITS) - q, q)
    else:
        flog = tl.where(ef > 0, ef - 127, _floor_log2_small(tl.maximum(mf, 1)) - 149)
        binade = tl.maximum(flog - e, GRID_EMIN)
        sh = binade + e - Ex - GRID_MBITS  # step 2**(binade - GRID_MBITS) of the element grid
        if ROUNDING == RND_STOCHASTIC:
            q = _round_shift64(M.to(tl.int64), sh, rand, ROUNDING).to(tl.int32)
        else:
            q = _round_shift32(M, sh, ROUNDING)
        code = ((binade - GRID_EMIN) << GRID_MBITS) + q
        code = tl.minimum(code, MAX_CODE)
        code = tl.where(neg & (code > 0), code | (1 << (BITS - 1)), code)
    return tl.where(mag == 0, 0, code)


@triton.jit
def _e8m0_exponent(
    amax,
    SCALE_MODE: tl.constexpr,
    EMAX: tl.constexpr,
    MAX_NORMAL_FRAC: tl.constexpr,
    EVEN_FRAC: tl.constexpr,
):
    """Shared exponent e (int32, in [-127, 127]) of blocks with finite amax bits ``amax``."""
    ef = amax >> 23
    mf = amax & 0x7FFFFF
    p = _floor_log2_small(tl.maximum(mf, 1))
    flog = tl.where(ef > 0, ef - 127, p - 149)
    # fraction of the significand in units of 2**-23 (without the leading one, like the thresholds)
    frac = tl.where(ef > 0, mf, (mf << tl.minimum(tl.maximum(23 - p, 0), 23)) & 0x7FFFFF)
    if SCALE_MODE == MODE_FLOOR:
        e = flog - EMAX
    elif SCALE_MODE == MODE_CEIL:
        e = flog + (frac != 0).to(tl.int32) - EMAX
    elif SCALE_MODE == MODE_RCEIL:
        e = flog - EMAX + (frac > MAX_NORMAL_FRAC).to(tl.int32)
    else:
        e = flog + (frac >= EVEN_FRAC).to(tl.int32) - EMAX
    e = tl.where(amax > 0, e, -127)
    return tl.minimum(tl.maximum(e, -127), 127)


@triton.jit
def _float_scale_code(
    amax,
    ts64,
    MAX_NORMAL: tl.constexpr,
    TENSOR_SCALE: tl.constexpr,
    SCALE_MBITS: tl.constexpr,
    SCALE_EMIN: tl.constexpr,
    SCALE_MAX_CODE: tl.constexpr,
):
    """Grid code of amax / (max_normal [* S]) rounded up onto the scale grid (0 for amax == 0), and
    whether that quotient q lies off the grid's normal range (q < 2**emin or q > scale_max: part of
    a clipped block, reference.float_block_scales).

    The quotient is the float64 one of the reference (IEEE division); the
    round-up is exact integer arithmetic on its bits. The code of a float
    scale grid is also its storage bit pattern (e4m3/fp16/bf16/fp32).
    """
    a64 = amax.to(tl.float32, bitcast=True).to(tl.float64)
    if TENSOR_SCALE:
        denom = ts64 * MAX_NORMAL
    else:
        denom = MAX_NORMAL
    q = tl.where(amax > 0, a64 / denom, 1.0)
    qb = q.to(tl.int64, bitcast=True)
    eq = ((qb >> 52) & 0x7FF).to(tl.int32)
    Mq = (qb & 0xFFFFFFFFFFFFF) | 0x10000000000000
    binade = tl.maximum(eq - 1023, SCALE_EMIN)
    sh = binade - SCALE_MBITS - (eq - 1075)
    whole = _round_shift64(Mq, sh, 0, RND_UP)
    code = ((binade - SCALE_EMIN).to(tl.int64) << SCALE_MBITS) + whole
    # scale_max is a grid point: q > scale_max iff q rounds up past its code
    off_grid = (amax > 0) & ((eq - 1023 < SCALE_EMIN) | (code > SCALE_MAX_CODE))
    code = tl.minimum(code, SCALE_MAX_CODE).to(tl.int32)
    return tl.where(amax > 0, code, 0), off_grid


@triton.jit
def _clipped_blocks(
    amax,
    nan_blk,
    valid_g,
    off_grid,
    X,
    SCALE_TYPE: tl.constexpr,
    E8M0_FLUSH_BELOW: tl.constexpr,
    E8M0_SATURATE_ABOVE: tl.constexpr,
):
    """How many of these blocks clipped (docs/semantics.md "Range"; reference.e8m0_clipped and
    float_block_scales): e8m0 by the amax thresholds of params.e8m0_clip_thresholds; float scales
    when q is off the scale grid's normal range or X = fp32(s * S) is a float32 subnormal."""
    if SCALE_TYPE == SC_E8M0:
        clip = ((amax > 0) & (amax < E8M0_FLUSH_BELOW)) | (amax > E8M0_SATURATE_ABOVE)
    else:
        clip = off_grid | ((amax > 0) & (X < 1.1754943508222875e-38))  # 2**-126
    return tl.sum(tl.where(clip & valid_g & (~nan_blk), 1, 0), axis=0)


@triton.jit
def _float_scale_value(code, SCALE_TYPE: tl.constexpr, SCALE_MBITS: tl.constexpr, SCALE_EMIN: tl.constexpr):
    """float32 value of a finite float-scale grid code (int32)."""
    if SCALE_TYPE == SC_BF16 or SCALE_TYPE == SC_FP32:
        # bf16 / fp32: the code is (the top of) a float32 bit pattern
        x = (code << (23 - SCALE_MBITS)).to(tl.float32, bitcast=True)
    else:
        ef = code >> SCALE_MBITS
        mant = code & ((1 << SCALE_MBITS) - 1)
        # exponent ef - 1 + SCALE_EMIN (ef >= 1), as a float32 exponent field
        normal = (((ef + SCALE_EMIN + 126) << 23) | (mant << (23 - SCALE_MBITS))).to(tl.float32, bitcast=True)
        # subnormal units 2**-24 (fp16) / 2**-9 (e4m3) are float32 normals: exact
        sub_unit: tl.constexpr = 2.0 ** (SCALE_EMIN - SCALE_MBITS)
        x = tl.where(ef > 0, normal, mant.to(tl.float32) * sub_unit)
    return x


@triton.jit
def _with_tensor_scale(x, ts64, TENSOR_SCALE: tl.constexpr):
    """X = fp32(s * S): the float64 product is exact, so this is one float32 rounding."""
    if TENSOR_SCALE:
        x = (x.to(tl.float64) * ts64).to(tl.float32)
    return x


@triton.jit
def _load_block_x(
    scale_ptrs,
    mask,
    ts64,
    SCALE_TYPE: tl.constexpr,
    SCALE_MBITS: tl.constexpr,
    SCALE_EMIN: tl.constexpr,
    SCALE_NAN: tl.constexpr,
    TENSOR_SCALE: tl.constexpr,
):
    """The float32 multiplier X of each block from stored scale bits (NaN for NaN scales).

    Scales are passed as integer views: uint8 (e8m0, e4m3), int16 (fp16, bf16), int32 (fp32).
    """
    if SCALE_TYPE == SC_E8M0:
        c = tl.load(scale_ptrs, mask=mask, other=0).to(tl.int32)
        bits = tl.where(c == 0, 0x400000, c << 23)  # 2**-127 is a float32 subnormal
        x = tl.where(c == SCALE_NAN, float("nan"), bits.to(tl.float32, bitcast=True))
    elif SCALE_TYPE == SC_E4M3:
        c = tl.load(scale_ptrs, mask=mask, other=0).to(tl.int32)
        x = _float_scale_value(c & 0x7F, SCALE_TYPE, SCALE_MBITS, SCALE_EMIN)
        # the NaN code, and codes with the (unused) sign bit set
        x = tl.where(c >= SCALE_NAN, float("nan"), x)
    elif SCALE_TYPE == SC_FP16:
        x = tl.load(scale_ptrs, mask=mask, other=0).to(tl.float16, bitcast=True).to(tl.float32)
    elif SCALE_TYPE == SC_BF16:
        b = tl.load(scale_ptrs, mask=mask, other=0).to(tl.int32) & 0xFFFF
        x = (b << 16).to(tl.float32, bitcast=True)
    else:
        x = tl.load(scale_ptrs, mask=mask, other=0).to(tl.float32, bitcast=True)
    return _with_tensor_scale(x, ts64, TENSOR_SCALE)


@triton.jit
def _element_offsets(g, k, nbpr, L, stride_r, stride_c, BS: tl.constexpr, CONTIG: tl.constexpr):
    """Memory offset of element k of block g, and whether it lies inside its row (not padding).

    ``CONTIG``: rows are whole blocks and the tensor is contiguous, so block g's
    element k is simply at g * BS + k (no division by the blocks per row).
    """
    if CONTIG:
        off = g * BS + k
        inside = k < BS
    else:
        r = g // nbpr
        col = (g - r * nbpr) * BS + k
        off = r * stride_r + col * stride_c
        inside = col < L
    return off, inside


@triton.jit
def _pack_store(
    codes, out_ptr, byte_base, byte_limit, N: tl.constexpr, BITS: tl.constexpr, BITS_POW2: tl.constexpr
):
    """Store N consecutive codes (int32, N a multiple of 8) as an LSB-first bitstream.

    ``byte_base`` is the (byte-aligned) position of the first code's first
    bit; bytes at or past ``byte_limit`` are not written.
    """
    if BITS == 8:
        idx = byte_base + tl.arange(0, N)
        tl.store(out_ptr + idx, codes.to(tl.uint8), mask=idx < byte_limit)
    elif BITS == 1 or BITS == 2 or BITS == 4:
        PER: tl.constexpr = 8 // BITS
        grouped = tl.reshape(codes, [N // PER, PER])
        shifts = tl.arange(0, PER) * BITS
        byte = tl.sum(grouped << shifts[None, :], axis=1)
        idx = byte_base + tl.arange(0, N // PER)
        tl.store(out_ptr + idx, byte.to(tl.uint8), mask=idx < byte_limit)
    elif BITS == 16:
        pairs = tl.join(codes & 0xFF, (codes >> 8) & 0xFF)
        idx = byte_base + tl.arange(0, 2 * N)
        tl.store(out_ptr + idx, tl.reshape(pairs, [2 * N]).to(tl.uint8), mask=idx < byte_limit)
    else:
        # 8 codes fill exactly BITS bytes; gather them as two words of 4 codes
        # (4 * BITS <= 60 bits) and cut the group's bytes out of them.
        NG: tl.constexpr = N // 8
        c8 = tl.reshape(codes, [NG, 8]).to(tl.int64)
        j = tl.arange(0, 8)
        shift = tl.where(j < 4, j, j - 4) * BITS
        placed = c8 << shift[None, :]
        lo = tl.sum(tl.where((j < 4)[None, :], placed, 0), axis=1)
        hi = tl.sum(tl.where((j >= 4)[None, :], placed, 0), axis=1)
        m = tl.arange(0, BITS_POW2)
        d = 4 * BITS - 8 * m  # where hi's bit 0 lands relative to byte m
        from_lo = lo[:, None] >> tl.minimum(8 * m, 63)[None, :]
        from_hi = tl.where(
            (d >= 0)[None, :],
            hi[:, None] << tl.minimum(tl.maximum(d, 0), 63)[None, :],
            hi[:, None] >> tl.minimum(tl.maximum(-d, 0), 63)[None, :],
        )
        byte = (from_lo | from_hi) & 0xFF
        idx = byte_base + (tl.arange(0, NG) * BITS).to(tl.int64)[:, None] + m[None, :]
        tl.store(out_ptr + idx, byte.to(tl.uint8), mask=(m < BITS)[None, :] & (idx < byte_limit))


@triton.jit
def _unpack(codes_ptr, i, mask, n_bytes, BITS: tl.constexpr):
    """Codes (int32) at element indices ``i`` (int64) of an LSB-first bitstream."""
    if BITS == 8:
        code = tl.load(codes_ptr + i, mask=mask, other=0).to(tl.int32)
    else:
        bit = i * BITS
        byte = bit >> 3
        off = (bit & 7).to(tl.int32)
        w = tl.load(codes_ptr + byte, mask=mask, other=0).to(tl.int32)
        if BITS != 1 and BITS != 2 and BITS != 4:  # the code may straddle bytes
            w = w | (tl.load(codes_ptr + byte + 1, mask=mask & (byte + 1 < n_bytes), other=0).to(tl.int32) << 8)
            if BITS > 9:
                w = w | (tl.load(codes_ptr + byte + 2, mask=mask & (byte + 2 < n_bytes), other=0).to(tl.int32) << 16)
        code = (w >> off) & ((1 << BITS) - 1)
    return code


@triton.jit
def _decoded(v, X):
    """element * X in float32; a finite element times a scale saturates at +-float32 max
    instead of overflowing (reference.decode_blocks_fp32). NaN stays NaN."""
    p = v * X
    overflow = (tl.abs(p) == float("inf")) & (tl.abs(v) != float("inf"))
    return tl.where(overflow, tl.where(p > 0, 3.4028234663852886e38, -3.4028234663852886e38), p)


@triton.jit
def _cast_out(v, OUT_KIND: tl.constexpr):
    """float32 -> output storage, finite values saturating at the dtype's max (reference.saturating_cast):
    fp32 as is, fp16 by conversion (RNE), bf16 as RNE int16 bits.

    bf16 is rounded on the bits because Triton's interpreter truncates
    float32 -> bfloat16 casts; NaN becomes 0x7FC0 like torch's conversion.
    """
    if OUT_KIND == DT_FP32:
        out = v
    elif OUT_KIND == DT_FP16:
        big: tl.constexpr = 65504.0
        finite = (v == v) & (v != float("inf")) & (v != float("-inf"))
        v = tl.where(finite & (v > big), big, tl.where(finite & (v < -big), -big, v))
        out = v.to(tl.float16)
    else:
        big_bf16: tl.constexpr = 3.3895313892515355e38  # 0x7F7F0000
        finite = (v == v) & (v != float("inf")) & (v != float("-inf"))
        v = tl.where(finite & (v > big_bf16), big_bf16, tl.where(finite & (v < -big_bf16), -big_bf16, v))
        b = v.to(tl.int32, bitcast=True)
        mag = b & 0x7FFFFFFF
        r = ((mag + 0x7FFF + ((mag >> 16) & 1)) >> 16) | ((b >> 16) & 0x8000)
        out = tl.where(mag > 0x7F800000, 0x7FC0, r).to(tl.int16)
    return out


# -- random Hadamard rotation (mxcomm.kernels.rotation) ----------------------------------
@triton.jit
def _hadamard(y, NB: tl.constexpr, BS: tl.constexpr):
    """Unnormalised fast Walsh-Hadamard transform of each row of the float32 [NB, BS] tile.

    Stage by stage like ``rotation.hadamard_blocks`` (h = 1, 2, 4, ...): in every
    group of 2h the element at t becomes a + b and the one at h + t becomes a - b.
    Each output of a stage is one float32 add or sub of the same two operands as
    in the reference, so the result is bit-identical (no dot product, no reassociation).
    """
    for s in tl.static_range(16):  # h = 1 << s (constexprs cannot be reassigned in the loop)
        if (1 << s) < BS:
            # [groups, 2, h] -> [groups, h, 2]: the pair (a, b) becomes the minor dimension
            pairs = tl.permute(tl.reshape(y, [NB * BS // (2 << s), 2, 1 << s]), (0, 2, 1))
            a, b = tl.split(pairs)
            y = tl.reshape(tl.permute(tl.join(a + b, a - b), (0, 2, 1)), [NB, BS])
    return y


@triton.jit
def _rotation_signs(g, k, nbpr, rkey, rseed_lo, rseed_hi, BS: tl.constexpr, ROT_LARGE: tl.constexpr):
    """float32 +-1 of element k of block g: bit 0 of the counter hash of its position along the
    (padded) row, under the rotation seed (``rotation.rotation_signs``)."""
    col = (g % nbpr) * BS + k
    bits = _random_bits(col, rkey, rseed_lo, rseed_hi, ROT_LARGE)
    return tl.where((bits & 1) != 0, -1.0, 1.0)


@triton.jit
def _rotated_bits(
    x_ptr, off, m, g, k, nbpr, rkey, rseed_lo, rseed_hi,
    IN_KIND: tl.constexpr, NB: tl.constexpr, BS: tl.constexpr, ROT_LARGE: tl.constexpr,
):
    """float32 bits (int32) of H D x / BS for the [NB, BS] tile of blocks ``g``.

    Positions outside ``m`` (the ragged row end) are the reference's zero padding:
    they are rotated too.
    """
    x = _fp32_bits(tl.load(x_ptr + off, mask=m, other=0), IN_KIND).to(tl.float32, bitcast=True)
    signs = _rotation_signs(g, k, nbpr, rkey, rseed_lo, rseed_hi, BS, ROT_LARGE)
    # 1/BS is a power of two: one float32 rounding, as in the reference's multiply
    y = _hadamard(x * signs, NB, BS) * (1.0 / BS)
    return y.to(tl.int32, bitcast=True)


# -- kernels ------------------------------------------------------------------------
@triton.jit(do_not_specialize=["key", "seed_lo", "seed_hi", "rkey", "rseed_lo", "rseed_hi"])
def encode_kernel(
    x_ptr,
    codes_ptr,
    scales_ptr,
    ts_ptr,
    clip_ptr,
    stride_r,
    stride_c,
    L,
    nbpr,
    total_blocks,
    n_code_bytes,
    key,
    seed_lo,
    seed_hi,
    rkey,
    rseed_lo,
    rseed_hi,
    IN_KIND: tl.constexpr,
    # the format: mxcomm.kernels.params.KernelParams (triton_constexprs)
    BITS: tl.constexpr,
    BITS_POW2: tl.constexpr,
    IS_INT: tl.constexpr,
    GRID_MBITS: tl.constexpr,
    GRID_EMIN: tl.constexpr,
    MAX_CODE: tl.constexpr,
    EMAX: tl.constexpr,
    MAX_NORMAL: tl.constexpr,
    MAX_NORMAL_FRAC: tl.constexpr,
    EVEN_FRAC: tl.constexpr,
    SCALE_TYPE: tl.constexpr,
    SCALE_MODE: tl.constexpr,
    ROUNDING: tl.constexpr,
    SCALE_MBITS: tl.constexpr,
    SCALE_EMIN: tl.constexpr,
    SCALE_MAX_CODE: tl.constexpr,
    SCALE_NAN: tl.constexpr,
    TENSOR_SCALE: tl.constexpr,
    ROTATE: tl.constexpr,
    E8M0_FLUSH_BELOW: tl.constexpr,
    E8M0_SATURATE_ABOVE: tl.constexpr,
    # the launch
    LARGE_INDEX: tl.constexpr,
    CONTIG: tl.constexpr,
    BS: tl.constexpr,
    NB: tl.constexpr,
    FUSED: tl.constexpr,
    NB1: tl.constexpr,
    KC: tl.constexpr,
    CH: tl.constexpr,
    ROT_LARGE: tl.constexpr,
):
    # ROTATE is only launched with the FUSED tiling (whole power-of-two blocks in registers)
    tl.static_assert(FUSED or not ROTATE)
    pid = tl.program_id(0).to(tl.int64)
    g0 = pid * NB
    if TENSOR_SCALE:
        ts64 = tl.load(ts_ptr).to(tl.float64)
    else:
        ts64 = 1.0
    if FUSED:
        # NB whole power-of-two blocks in registers: load, scale, round, pack.
        g = g0 + tl.arange(0, NB)
        k = tl.arange(0, BS)
        valid_g = g < total_blocks
        off, inside = _element_offsets(g[:, None], k[None, :], nbpr, L, stride_r, stride_c, BS, CONTIG)
        if ROTATE:
            # the rotated padding is encoded like real elements (the reference rotates padded rows)
            u = _rotated_bits(
                x_ptr, off, valid_g[:, None] & inside, g[:, None], k[None, :], nbpr, rkey, rseed_lo, rseed_hi,
                IN_KIND, NB, BS, ROT_LARGE,
            )
            m = valid_g[:, None] & (k < BS)[None, :]
        else:
            m = valid_g[:, None] & inside
            raw = tl.load(x_ptr + off, mask=m, other=0)
            u = _fp32_bits(raw, IN_KIND)
        finite = ((u >> 23) & 0xFF) != 0xFF
        amax = tl.max(tl.where(m & finite, u & 0x7FFFFFFF, 0), axis=1)
        nan_blk = tl.max(tl.where(m & (~finite), 1, 0), axis=1) > 0
        if ROUNDING == RND_STOCHASTIC:
            rand = _random_bits(g[:, None] * BS + k[None, :], key, seed_lo, seed_hi, LARGE_INDEX)
        else:
            rand = 0
        if SCALE_TYPE == SC_E8M0:
            e = _e8m0_exponent(amax, SCALE_MODE, EMAX, MAX_NORMAL_FRAC, EVEN_FRAC)
            tl.store(scales_ptr + g, tl.where(nan_blk, SCALE_NAN, e + 127).to(tl.uint8), mask=valid_g)
            codes = _element_codes(u, e[:, None], rand, IS_INT, BITS, GRID_MBITS, GRID_EMIN, MAX_CODE, ROUNDING)
            dead = nan_blk
            clipped = _clipped_blocks(amax, nan_blk, valid_g, nan_blk, 1.0, SCALE_TYPE, E8M0_FLUSH_BELOW,
                                      E8M0_SATURATE_ABOVE)
        else:
            scode, off_grid = _float_scale_code(
                amax, ts64, MAX_NORMAL, TENSOR_SCALE, SCALE_MBITS, SCALE_EMIN, SCALE_MAX_CODE
            )
            tl.store(scales_ptr + g, tl.where(nan_blk, SCALE_NAN, scode).to(scales_ptr.dtype.element_ty), mask=valid_g)
            X = _with_tensor_scale(_float_scale_value(scode, SCALE_TYPE, SCALE_MBITS, SCALE_EMIN), ts64, TENSOR_SCALE)
            dead = nan_blk | (X == 0.0)
            clipped = _clipped_blocks(amax, nan_blk, valid_g, off_grid, X, SCALE_TYPE, E8M0_FLUSH_BELOW,
                                      E8M0_SATURATE_ABOVE)
            xs = tl.where(finite, u, 0).to(tl.float32, bitcast=True)
            y = tl.math.div_rn(xs, tl.where(X == 0.0, 1.0, X)[:, None])
            codes = _element_codes(
                y.to(tl.int32, bitcast=True), 0, rand, IS_INT, BITS, GRID_MBITS, GRID_EMIN, MAX_CODE, ROUNDING
            )
        tl.store(clip_ptr + pid, clipped)
        codes = tl.where(m & (~dead)[:, None], codes, 0)
        # written as pid * constant so the compiler sees the alignment (vector stores)
        prog_bytes: tl.constexpr = NB * BS * BITS // 8
        _pack_store(tl.reshape(codes, [NB * BS]), codes_ptr, pid * prog_bytes, n_code_bytes, NB * BS, BITS, BITS_POW2)
    else:
        # Phase 1: the scales of this program's NB blocks (NB1 blocks x KC elements at a time).
        clipped = tl.sum(tl.zeros([NB1], dtype=tl.int32), axis=0)  # a 0-d int32 (loop-carried)
        for gb in range(0, NB, NB1):
            g = g0 + gb + tl.arange(0, NB1)
            valid_g = g < total_blocks
            amax_acc = tl.zeros([NB1, KC], tl.int32)
            nan_acc = tl.zeros([NB1, KC], tl.int32)
            for kc in range(0, BS, KC):
                k = kc + tl.arange(0, KC)
                off, inside = _element_offsets(g[:, None], k[None, :], nbpr, L, stride_r, stride_c, BS, CONTIG)
                m = valid_g[:, None] & (k < BS)[None, :] & inside
                raw = tl.load(x_ptr + off, mask=m, other=0)
                u = _fp32_bits(raw, IN_KIND)
                finite = ((u >> 23) & 0xFF) != 0xFF
                amax_acc = tl.maximum(amax_acc, tl.where(m & finite, u & 0x7FFFFFFF, 0))
                nan_acc = tl.maximum(nan_acc, tl.where(m & (~finite), 1, 0))
            amax = tl.max(amax_acc, axis=1)
            nan_blk = tl.max(nan_acc, axis=1) > 0
            if SCALE_TYPE == SC_E8M0:
                e = _e8m0_exponent(amax, SCALE_MODE, EMAX, MAX_NORMAL_FRAC, EVEN_FRAC)
                tl.store(scales_ptr + g, tl.where(nan_blk, SCALE_NAN, e + 127).to(tl.uint8), mask=valid_g)
                clipped += _clipped_blocks(amax, nan_blk, valid_g, nan_blk, 1.0, SCALE_TYPE, E8M0_FLUSH_BELOW,
                                           E8M0_SATURATE_ABOVE)
            else:
                scode, off_grid = _float_scale_code(
                    amax, ts64, MAX_NORMAL, TENSOR_SCALE, SCALE_MBITS, SCALE_EMIN, SCALE_MAX_CODE
                )
                tl.store(
                    scales_ptr + g, tl.where(nan_blk, SCALE_NAN, scode).to(scales_ptr.dtype.element_ty), mask=valid_g
                )
                X = _with_tensor_scale(
                    _float_scale_value(scode, SCALE_TYPE, SCALE_MBITS, SCALE_EMIN), ts64, TENSOR_SCALE
                )
                clipped += _clipped_blocks(amax, nan_blk, valid_g, off_grid, X, SCALE_TYPE, E8M0_FLUSH_BELOW,
                                           E8M0_SATURATE_ABOVE)
        tl.store(clip_ptr + pid, clipped)
        # The scales written above are read back by other threads of this program.
        tl.debug_barrier()
        # Phase 2: stream over the program's NB * BS elements (byte-aligned: NB is a
        # multiple of the blocks per byte-aligned group), CH codes per step.
        prog_codes: tl.constexpr = NB * BS
        prog_bytes: tl.constexpr = NB * BS * BITS // 8
        byte_end = tl.minimum((pid + 1) * prog_bytes, n_code_bytes)
        for c0 in range(0, prog_codes, CH):
            il = c0 + tl.arange(0, CH)
            i = g0 * BS + il
            g = i // BS
            k = i - g * BS
            in_prog = (il < prog_codes) & (g < total_blocks)
            off, inside = _element_offsets(g, k, nbpr, L, stride_r, stride_c, BS, CONTIG)
            m = in_prog & inside
            raw = tl.load(x_ptr + off, mask=m, other=0)
            u = _fp32_bits(raw, IN_KIND)
            if ROUNDING == RND_STOCHASTIC:
                rand = _random_bits(i, key, seed_lo, seed_hi, LARGE_INDEX)
            else:
                rand = 0
            if SCALE_TYPE == SC_E8M0:
                c = tl.load(scales_ptr + g, mask=in_prog, other=0).to(tl.int32)
                codes = _element_codes(u, c - 127, rand, IS_INT, BITS, GRID_MBITS, GRID_EMIN, MAX_CODE, ROUNDING)
                dead = c == SCALE_NAN
            else:
                X = _load_block_x(
                    scales_ptr + g, in_prog, ts64, SCALE_TYPE, SCALE_MBITS, SCALE_EMIN, SCALE_NAN, TENSOR_SCALE
                )
                dead = (X != X) | (X == 0.0)
                # a finite block holds only finite values; NaN blocks are zeroed below
                xs = tl.where(((u >> 23) & 0xFF) != 0xFF, u, 0).to(tl.float32, bitcast=True)
                y = tl.math.div_rn(xs, tl.where(dead, 1.0, X))
                codes = _element_codes(
                    y.to(tl.int32, bitcast=True), 0, rand, IS_INT, BITS, GRID_MBITS, GRID_EMIN, MAX_CODE, ROUNDING
                )
            codes = tl.where(m & (~dead), codes, 0)
            _pack_store(codes, codes_ptr, pid * prog_bytes + (c0 // 8) * BITS, byte_end, CH, BITS, BITS_POW2)


@triton.jit(do_not_specialize=["rkey", "rseed_lo", "rseed_hi"])
def decode_kernel(
    codes_ptr,
    scales_ptr,
    ts_ptr,
    table_ptr,
    out_ptr,
    n_shards,
    code_stride,
    scale_stride,
    L,
    nbpr,
    total_blocks,
    n_code_bytes,
    rkey,
    rseed_lo,
    rseed_hi,
    # the format (triton_backend.DECODE_PARAMS of mxcomm.kernels.params.KernelParams)
    BITS: tl.constexpr,
    SCALE_TYPE: tl.constexpr,
    SCALE_MBITS: tl.constexpr,
    SCALE_EMIN: tl.constexpr,
    SCALE_NAN: tl.constexpr,
    TENSOR_SCALE: tl.constexpr,
    ROTATE: tl.constexpr,
    # the launch
    BS: tl.constexpr,
    NB: tl.constexpr,
    KC: tl.constexpr,
    OUT_KIND: tl.constexpr,
    CONTIG: tl.constexpr,
    ROT_LARGE: tl.constexpr,
):
    # un-rotating needs whole blocks in one tile
    tl.static_assert(KC == BS or not ROTATE)
    pid = tl.program_id(0).to(tl.int64)
    g = pid * NB + tl.arange(0, NB)
    valid_g = g < total_blocks
    for kc in range(0, BS, KC):
        k = kc + tl.arange(0, KC)
        # the output is a contiguous (rows, L) tensor
        off, inside = _element_offsets(g[:, None], k[None, :], nbpr, L, L, 1, BS, CONTIG)
        m = valid_g[:, None] & (k < BS)[None, :] & inside
        if ROTATE:
            lm = valid_g[:, None] & (k < BS)[None, :]  # the padding's codes take part in the inverse
        else:
            lm = m
        i = g[:, None] * BS + k[None, :]
        # shard 0 starts the sum (not 0.0 + ..., which would turn -0.0 into +0.0)
        if TENSOR_SCALE:
            ts64 = tl.load(ts_ptr).to(tl.float64)
        else:
            ts64 = 1.0
        X = _load_block_x(scales_ptr + g, valid_g, ts64, SCALE_TYPE, SCALE_MBITS, SCALE_EMIN, SCALE_NAN, TENSOR_SCALE)
        code = _unpack(codes_ptr, i, lm, n_code_bytes, BITS)
        acc = _decoded(tl.load(table_ptr + code, mask=lm, other=0.0), X[:, None])
        for s in range(1, n_shards):
            if TENSOR_SCALE:
                ts64 = tl.load(ts_ptr + s).to(tl.float64)
            X = _load_block_x(
                scales_ptr + s * scale_stride + g, valid_g, ts64, SCALE_TYPE, SCALE_MBITS, SCALE_EMIN, SCALE_NAN,
                TENSOR_SCALE,
            )
            code = _unpack(codes_ptr + s * code_stride, i, lm, n_code_bytes, BITS)
            acc = acc + _decoded(tl.load(table_ptr + code, mask=lm, other=0.0), X[:, None])
        if ROTATE:
            # the sum is un-rotated once (the transform is linear): D H acc
            acc = _hadamard(acc, NB, BS) * _rotation_signs(
                g[:, None], k[None, :], nbpr, rkey, rseed_lo, rseed_hi, BS, ROT_LARGE
            )
        tl.store(out_ptr + off, _cast_out(acc, OUT_KIND), mask=m)


@triton.jit
def amax_kernel(x_ptr, part_ptr, stride_r, stride_c, rows, L, n_col_tiles, IN_KIND: tl.constexpr,
                TR: tl.constexpr, TC: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    pr = pid // n_col_tiles
    r = pr * TR + tl.arange(0, TR)
    c = (pid - pr * n_col_tiles) * TC + tl.arange(0, TC)
    m = (r < rows)[:, None] & (c < L)[None, :]
    raw = tl.load(x_ptr + r[:, None] * stride_r + c[None, :] * stride_c, mask=m, other=0)
    u = _fp32_bits(raw, IN_KIND)
    finite = ((u >> 23) & 0xFF) != 0xFF
    mag = tl.where(m & finite, u & 0x7FFFFFFF, 0)
    tl.store(part_ptr + pid, tl.max(tl.max(mag, axis=1), axis=0))


@triton.jit(do_not_specialize=["rkey", "rseed_lo", "rseed_hi"])
def rotated_amax_kernel(
    x_ptr, part_ptr, stride_r, stride_c, L, nbpr, total_blocks, rkey, rseed_lo, rseed_hi,
    IN_KIND: tl.constexpr, BS: tl.constexpr, NB: tl.constexpr, CONTIG: tl.constexpr, ROT_LARGE: tl.constexpr,
):
    """Per-program max |y| over finite values of the rotated blocks y (padding included)."""
    pid = tl.program_id(0).to(tl.int64)
    g = pid * NB + tl.arange(0, NB)
    k = tl.arange(0, BS)
    valid_g = g < total_blocks
    off, inside = _element_offsets(g[:, None], k[None, :], nbpr, L, stride_r, stride_c, BS, CONTIG)
    u = _rotated_bits(
        x_ptr, off, valid_g[:, None] & inside, g[:, None], k[None, :], nbpr, rkey, rseed_lo, rseed_hi,
        IN_KIND, NB, BS, ROT_LARGE,
    )
    finite = ((u >> 23) & 0xFF) != 0xFF
    mag = tl.where(valid_g[:, None] & finite, u & 0x7FFFFFFF, 0)
    tl.store(part_ptr + pid, tl.max(tl.max(mag, axis=1), axis=0))


@triton.jit(do_not_specialize=["key", "seed_lo", "seed_hi"])
def random_bits_kernel(out_ptr, start, n, key, seed_lo, seed_hi, LARGE_INDEX: tl.constexpr, BLOCK: tl.constexpr):
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    bits = _random_bits(start + o, key, seed_lo, seed_hi, LARGE_INDEX)
    tl.store(out_ptr + o, bits.to(tl.int64), mask=o < n)
