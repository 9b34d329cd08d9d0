"""The torch reference codec: the readable specification of mxcomm's numerics.

Every step is exact: inputs (fp32/bf16/fp16) are widened to float64, where
power-of-two scaling, frexp and the rounding arithmetic below introduce no
error, so the result is the mathematically defined one of docs/semantics.md.
The only float32 roundings are the ones the semantics define (the division by
a non-power-of-two block scale, and the decode product); they are done in
float32 here exactly as the kernels do them.

Other backends (Triton, the fast CPU path) must reproduce these bytes exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mxcomm.errors import FormatError
from mxcomm.formats import BlockFormat, FloatElement, IntElement, ScaleType
from mxcomm.formats.block import E4M3_NAN, E8M0_BIAS, E8M0_NAN, SCALE_SPECS, ScaleSpec
from mxcomm.formats.element import cached_code_values
from mxcomm.kernels.bitpack import pack_codes, unpack_codes
from mxcomm.kernels.counter_rng import stochastic_bits
from mxcomm.kernels.dtypes import SCALE_STORAGE_DTYPES


@dataclass
class EncodedBlocks:
    """Raw codec output: bitstream, one scale per block, the tensor scale (float scale types) and,
    from an encode, how many blocks clipped (a 0-d int64 tensor on the codes' device, so that
    reading it is the caller's choice of when to synchronise; None where unknown, e.g. parts
    rebuilt from a payload)."""

    codes: torch.Tensor
    scales: torch.Tensor
    tensor_scale: torch.Tensor | None
    clipped: torch.Tensor | None = None


# -- exact helpers on float64 --------------------------------------------------
def floor_log2(a: torch.Tensor) -> torch.Tensor:
    """floor(log2(a)) for positive finite float64 a, exactly (from the exponent bits)."""
    _, exp = torch.frexp(a)
    return exp.to(torch.int64) - 1


def pow2(n: torch.Tensor) -> torch.Tensor:
    """2.0**n as float64 for integer n in [-1022, 1023], built from the exponent bits (exact)."""
    return ((n.to(torch.int64) + 1023) << 52).view(torch.float64)


def _significand(a: torch.Tensor) -> torch.Tensor:
    """a / 2**floor(log2(a)), in [1, 2) for positive a."""
    mant, _ = torch.frexp(a)
    return mant * 2.0


def round_integer_part(t: torch.Tensor, rounding: str, rand_bits: torch.Tensor | None) -> torch.Tensor:
    """Round non-negative float64 ``t`` to an integer (as float64) by ``rounding``.

    The fraction ``t - floor(t)`` is exact in float64 (``t`` has at most 24
    significant bits), so the decisions below are exact -- unlike
    ``floor(t + 0.5)``, which rounds 0.5 - tiny up.
    """
    whole = torch.floor(t)
    frac = t - whole
    if rounding == "rne":
        odd = torch.remainder(whole, 2.0) == 1.0
        up = (frac > 0.5) | ((frac == 0.5) & odd)
    elif rounding == "away":
        up = frac >= 0.5
    elif rounding == "zero":
        up = torch.zeros_like(frac, dtype=torch.bool)
    elif rounding == "up":  # internal: toward +inf, for rounding scales up
        up = frac > 0.0
    elif rounding == "stochastic":
        assert rand_bits is not None
        # Round up with probability frac (to within 2**-32): u = bits / 2**32 < frac.
        up = frac * 4294967296.0 > rand_bits.to(torch.float64)
    else:  # pragma: no cover - validated by BlockFormat
        raise AssertionError(rounding)
    return whole + up.to(torch.float64)


def float_grid_round(
    a: torch.Tensor, mbits: int, emin: int, rounding: str, rand_bits: torch.Tensor | None = None
) -> torch.Tensor:
    """Round magnitudes ``a`` >= 0 onto a minifloat grid; returns the unsaturated magnitude code.

    The grid has ``mbits`` trailing mantissa bits, subnormals below 2**emin and
    an unbounded exponent range; the caller saturates by clamping the code
    (codes are monotone in magnitude). Magnitude code = (E - emin) * 2**mbits + q
    where E is the binade used for rounding and q the rounded significand in
    units of 2**(E - mbits); this also covers the subnormals (E = emin) and a
    carry into the next binade.
    """
    safe = torch.where(a > 0, a, torch.ones_like(a))
    binade = torch.clamp(floor_log2(safe), min=emin)
    step = pow2(binade - mbits)
    q = round_integer_part(a / step, rounding, rand_bits)
    code = (binade - emin) * (1 << mbits) + q.to(torch.int64)
    return torch.where(a > 0, code, torch.zeros_like(code))


def float_grid_value(code_mag: torch.Tensor, mbits: int, emin: int) -> torch.Tensor:
    """Value (float64) of a magnitude code of an unbounded minifloat grid."""
    exp_field = code_mag >> mbits
    mant = code_mag & ((1 << mbits) - 1)
    normal = exp_field > 0
    significand = torch.where(normal, mant + (1 << mbits), mant).to(torch.float64)
    exponent = torch.where(normal, exp_field - 1, torch.zeros_like(exp_field)) + emin - mbits
    return significand * pow2(exponent)


# -- scales --------------------------------------------------------------------
def e8m0_exponent(amax: torch.Tensor, fmt: BlockFormat) -> torch.Tensor:
    """Unbiased shared exponent per block (int64, clamped to E8M0's [-127, 127])."""
    return torch.clamp(e8m0_exponent_unclamped(amax, fmt), -E8M0_BIAS, E8M0_BIAS)


def e8m0_exponent_unclamped(amax: torch.Tensor, fmt: BlockFormat) -> torch.Tensor:
    """The exponent the scale mode asks for (int64), before E8M0's clamp; -127 for amax == 0."""
    elem = fmt.element
    positive = amax > 0
    a = torch.where(positive, amax, torch.ones_like(amax))
    flog = floor_log2(a)
    mode = fmt.scale_mode
    if mode == "floor":
        e = flog - elem.emax
    elif mode == "ceil":
        e = flog + (_significand(a) != 1.0).to(torch.int64) - elem.emax
    elif mode == "rceil":
        # smallest e with max_normal * 2**e >= amax, from the significands exactly
        mn = elem.max_normal
        mn_exp = math.frexp(mn)[1] - 1
        mn_sig = mn / 2.0**mn_exp
        e = flog - mn_exp + (_significand(a) > mn_sig).to(torch.int64)
    elif mode == "even":
        # amax rounded (half up) to the element's precision first, then floor
        p = elem.precision_bits
        carry = _significand(a) >= 2.0 - 2.0 ** -(p + 1)
        e = flog + carry.to(torch.int64) - elem.emax
    else:  # pragma: no cover - validated by BlockFormat
        raise AssertionError(mode)
    return torch.where(positive, e, torch.full_like(e, -E8M0_BIAS))


# The smallest normal float32: an effective block multiplier below it is a float32 subnormal.
_FP32_MIN_NORMAL = 2.0**-126


def e8m0_clipped(amax: torch.Tensor, fmt: BlockFormat) -> torch.Tensor:
    """Which blocks of (finite) amax clip under an E8M0 scale (docs/semantics.md, "Range").

    Saturated: amax > max_normal * 2**127, beyond the largest scale. Flushed: the scale mode asks
    for an exponent below -127 and gets 2**-127, so the block lands lower on the element grid than
    its scale mode intends (losing precision, at worst flushing to zero). Zero blocks do not clip.
    """
    return e8m0_saturated(amax, fmt) | e8m0_flushed(amax, fmt)


def e8m0_saturated(amax: torch.Tensor, fmt: BlockFormat) -> torch.Tensor:
    return amax > fmt.element.max_normal * 2.0**E8M0_BIAS  # exact in float64


def e8m0_flushed(amax: torch.Tensor, fmt: BlockFormat) -> torch.Tensor:
    return (amax > 0) & (e8m0_exponent_unclamped(amax, fmt) < -E8M0_BIAS)


@dataclass
class FloatBlockScales:
    """The block scales of a float scale type under a tensor scale S (docs/semantics.md, step 3)."""

    block_scale: torch.Tensor  # float64, on the scale grid (0 for all-zero blocks)
    effective: torch.Tensor  # float32 X = fp32(s * S)
    clipped: torch.Tensor  # bool, per block (NaN blocks excluded by the caller)


def float_block_scales(amax: torch.Tensor, fmt: BlockFormat, tensor_scale: torch.Tensor) -> FloatBlockScales:
    """Block scales, effective multipliers and clipped blocks of (finite) amax under the 0-d float32 ``tensor_scale``.

    q = amax / (max_normal * S) in float64 (the denominator is exact: <= 35 significant bits);
    s = q rounded up onto the scale grid, clamped to its max; X = fp32(s * S). Saturated:
    q > scale_max (no scale reaches). Flushed: q below the smallest *normal* scale (a subnormal
    scale is rounded up by more than the in-range 2**-mbits) or X a float32 subnormal.
    """
    spec = fmt.scale_spec
    denom = fmt.element.max_normal * tensor_scale.to(torch.float64)
    positive = amax > 0
    q = torch.where(positive, amax / denom, torch.ones_like(amax))
    block_scale = torch.where(positive, round_up_to_scale(q, spec), torch.zeros_like(q))
    effective = (block_scale * tensor_scale.to(torch.float64)).to(torch.float32)  # one fp32 rounding (exact for S = 1)
    flushed = positive & ((q < 2.0 ** (1 - spec.bias)) | (effective < _FP32_MIN_NORMAL))
    saturated = positive & (q > spec.max_value)
    return FloatBlockScales(block_scale, effective, flushed | saturated)


def round_up_to_scale(q: torch.Tensor, spec: ScaleSpec) -> torch.Tensor:
    """Smallest value of the scale type's grid >= q (q > 0 float64), clamped to its max."""
    emin = 1 - spec.bias
    code = float_grid_round(q, spec.mbits, emin, "up")
    value = float_grid_value(code, spec.mbits, emin)
    return torch.clamp(value, max=spec.max_value)


def e4m3_codes(value: torch.Tensor) -> torch.Tensor:
    """Codes of exactly representable non-negative E4M3 values (float64 in)."""
    code = float_grid_round(value, 3, -6, "zero")  # exact values: rounding mode is irrelevant
    return code.to(torch.uint8)


def e4m3_values(codes: torch.Tensor) -> torch.Tensor:
    """float32 values of unsigned E4M3 scale codes (0x7F and above: NaN)."""
    table = torch.tensor(cached_code_values(FloatElement(4, 3, nan="all_ones")), dtype=torch.float32)
    return table.to(codes.device)[codes.to(torch.int64) & 0x7F].where(codes < E4M3_NAN, torch.nan)


_INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32}


def canonical_nan_where(scales: torch.Tensor, nan_block: torch.Tensor, spec: ScaleSpec) -> torch.Tensor:
    """``scales`` (a float scale type) with the type's canonical NaN bit pattern at the NaN blocks."""
    bits = scales.view(_INT_VIEW[scales.dtype]).clone()
    nan_bits = spec.nan_bits
    if nan_bits >= 1 << (8 * scales.element_size() - 1):  # pragma: no cover - all patterns are positive
        nan_bits -= 1 << (8 * scales.element_size())
    bits[nan_block] = nan_bits
    return bits.view(scales.dtype)


def tensor_scale_from_amax(amax: torch.Tensor, fmt: BlockFormat) -> torch.Tensor:
    """The per-tensor float32 scale of a two-level format, from the tensor's finite amax.

    S = amax / (max_normal * scale_max), rounded *up* onto the float32 grid, so
    that every block scale amax_block / (max_normal * S) fits the scale type;
    1 for an all-zero tensor. ``amax`` is a one-element float32/float64 tensor
    on any device; nothing synchronises with the host. Every backend calls this
    one function (docs/semantics.md, "Tensor scale").
    """
    a = amax.reshape(1).to(torch.float64)
    positive = a > 0
    q = torch.where(positive, a / (fmt.element.max_normal * fmt.scale_spec.max_value), torch.ones_like(a))
    s = round_up_to_scale(q, SCALE_SPECS[ScaleType.FP32])
    return torch.where(positive, s, torch.ones_like(s)).to(torch.float32).reshape(())


# -- encode ----------------------------------------------------------------------
def _blocks(x2d: torch.Tensor, block_size: int) -> torch.Tensor:
    """(rows, L) -> (rows * nblocks, block_size) float64, zero-padded at row ends."""
    rows, length = x2d.shape
    nblocks = -(-length // block_size)
    padded = torch.zeros(rows, nblocks * block_size, dtype=torch.float64, device=x2d.device)
    padded[:, :length] = x2d.to(torch.float64)
    return padded.view(rows * nblocks, block_size)


def encode_blocks(x2d: torch.Tensor, fmt: BlockFormat, seed: int | None = None) -> EncodedBlocks:
    """Encode a (rows, L) float tensor, blocks running along dim 1."""
    elem = fmt.element
    blocks = _blocks(x2d, fmt.block_size)
    finite = torch.isfinite(blocks)
    nan_block = ~finite.all(dim=1)
    mag = torch.where(finite, blocks.abs(), torch.zeros_like(blocks))
    amax = mag.amax(dim=1) if blocks.numel() else mag.new_zeros(blocks.shape[0])
    spec = fmt.scale_spec
    tensor_scale = None

    if spec.power_of_two:
        e = e8m0_exponent(amax, fmt)
        scale_codes = torch.where(nan_block, torch.full_like(e, E8M0_NAN), e + E8M0_BIAS).to(torch.uint8)
        # x * 2**-e is exact in float64
        scaled = torch.where(finite, blocks, torch.zeros_like(blocks)) * pow2(-e).unsqueeze(1)
        stored_scales = scale_codes
        clipped = e8m0_clipped(amax, fmt)
    else:
        amax_t = amax.max() if amax.numel() else amax.new_zeros(())
        if fmt.tensor_scale:
            tensor_scale = tensor_scale_from_amax(amax_t, fmt)
        else:
            # automatic: S = 1 (the single-level encoding) unless some block clips with it
            one = torch.ones((), dtype=torch.float32, device=blocks.device)
            clips_at_one = (float_block_scales(amax, fmt, one).clipped & ~nan_block).any()
            tensor_scale = torch.where(clips_at_one, tensor_scale_from_amax(amax_t, fmt), one)
        scales = float_block_scales(amax, fmt, tensor_scale)
        block_scale, effective = scales.block_scale, scales.effective
        clipped = scales.clipped
        positive = amax > 0
        # The element value is the float32 quotient x / X (IEEE division, RNE).
        x32 = torch.where(finite, blocks, torch.zeros_like(blocks)).to(torch.float32)
        # s * S can underflow float32 to 0 (tiny blocks of a tiny tensor): such a block decodes
        # to 0 whatever its codes, so they are 0 rather than the codes of x / 0.
        usable = positive & (effective > 0)
        divisor = torch.where(usable, effective, torch.ones_like(effective)).unsqueeze(1)
        scaled = torch.where(usable.unsqueeze(1), x32 / divisor, torch.zeros_like(x32)).to(torch.float64)
        if fmt.scale == "e4m3":
            stored_scales = torch.where(nan_block, torch.full_like(amax, E4M3_NAN, dtype=torch.uint8), e4m3_codes(block_scale))
        else:
            stored = block_scale.to(SCALE_STORAGE_DTYPES[fmt.scale])
            stored_scales = canonical_nan_where(stored, nan_block, spec)

    codes = element_codes(scaled.reshape(-1), elem, fmt.rounding, seed)
    codes = torch.where(nan_block.repeat_interleave(fmt.block_size), torch.zeros_like(codes), codes)
    clipped_count = (clipped & ~nan_block).sum()
    return EncodedBlocks(pack_codes(codes, elem.bits), stored_scales, tensor_scale, clipped_count)


def element_codes(v: torch.Tensor, elem: FloatElement | IntElement, rounding: str, seed: int | None) -> torch.Tensor:
    """Element codes (int64) of scaled float64 values ``v`` (saturating, +0 for zero)."""
    a = v.abs()
    rand = stochastic_bits(v.numel(), seed, v.device) if rounding == "stochastic" else None
    if isinstance(elem, IntElement):
        k = torch.clamp(round_integer_part(a / elem.step, rounding, rand), max=elem.kmax).to(torch.int64)
        negative = (v < 0) & (k > 0)
        return torch.where(negative, (1 << elem.bits) - k, k)
    code = float_grid_round(a, elem.mbits, elem.emin, rounding, rand)
    code = torch.clamp(code, max=elem.max_code_magnitude)
    negative = (v < 0) & (code > 0)
    return torch.where(negative, code | (1 << (elem.bits - 1)), code)


# -- decode ----------------------------------------------------------------------
def block_scale_fp32(scales: torch.Tensor, tensor_scale: torch.Tensor | None, fmt: BlockFormat) -> torch.Tensor:
    """The float32 multiplier X of every block (NaN for NaN blocks)."""
    if fmt.scale == "e8m0":
        e = scales.to(torch.int64) - E8M0_BIAS
        x = pow2(e).to(torch.float32)  # exact: 2**-127 is a float32 subnormal
        return torch.where(scales == E8M0_NAN, torch.full_like(x, math.nan), x)
    x = e4m3_values(scales) if fmt.scale == "e4m3" else scales.to(torch.float32)
    if tensor_scale is not None:
        x = (x.to(torch.float64) * tensor_scale.to(torch.float64)).to(torch.float32)
    return x


def decode_blocks_fp32(
    codes: torch.Tensor,
    scales: torch.Tensor,
    tensor_scale: torch.Tensor | None,
    fmt: BlockFormat,
    rows: int,
    length: int,
) -> torch.Tensor:
    """Decode to a float32 (rows, length) tensor: value = element * X in float32."""
    bs = fmt.block_size
    nblocks = -(-length // bs) if length else 0
    num_codes = rows * nblocks * bs
    idx = unpack_codes(codes, fmt.element.bits, num_codes)
    table = torch.tensor(cached_code_values(fmt.element), dtype=torch.float32, device=codes.device)
    values = table[idx].view(rows * nblocks, bs)
    x = block_scale_fp32(scales, tensor_scale, fmt).unsqueeze(1)
    product = values * x
    # A finite element times a finite scale can exceed float32's range (ceil/rceil/even
    # scale modes round the scale up): saturate, so a finite input never decodes to inf.
    product = torch.where(values.isinf(), product, product.clamp(-_FP32_MAX, _FP32_MAX))
    out = product.view(rows, nblocks * bs)
    return out[:, :length]


_FP32_MAX = torch.finfo(torch.float32).max


def saturating_cast(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast float32 ``y`` to ``dtype`` (round to nearest even), finite values saturating at +-max.

    fp16 outputs in particular overflow long before float32 does: a value
    quantized with a rounded-up scale may lie just above the dtype's largest
    finite value. Inf and NaN pass through unchanged.
    """
    big = torch.finfo(dtype).max
    return torch.where(y.isfinite(), y.clamp(-big, big), y).to(dtype)


def decode_blocks(parts: EncodedBlocks, fmt: BlockFormat, rows: int, length: int, dtype: torch.dtype) -> torch.Tensor:
    return saturating_cast(decode_blocks_fp32(parts.codes, parts.scales, parts.tensor_scale, fmt, rows, length), dtype)


def decode_sum_blocks(
    parts: list[EncodedBlocks], fmt: BlockFormat, rows: int, length: int, dtype: torch.dtype
) -> torch.Tensor:
    """sum_i decode_fp32(parts[i]) in list order, accumulated in float32, cast once."""
    acc = decode_blocks_fp32(parts[0].codes, parts[0].scales, parts[0].tensor_scale, fmt, rows, length).clone()
    for p in parts[1:]:
        acc += decode_blocks_fp32(p.codes, p.scales, p.tensor_scale, fmt, rows, length)
    return saturating_cast(acc, dtype)


def _reject_rotated(fmt: BlockFormat) -> None:
    # The front-end (mxcomm.encode) hands this backend plain formats only (max_fused_rotation_block = 0);
    # a rotated one reaching it directly would be encoded unrotated, silently.
    if fmt.rotation_seed is not None:
        raise FormatError(
            f"the torch backend's block functions take unrotated formats; {fmt.name} carries a rotation, "
            "which mxcomm.encode/decode/decode_sum apply around them"
        )


class ReferenceBackend:
    """The torch reference as a dispatch backend (runs on any device torch supports)."""

    name = "torch"
    max_fused_rotation_block = 0  # the front-end rotates around this backend

    def availability(self, device: torch.device) -> str | None:
        return None

    def encode_blocks(self, x2d: torch.Tensor, fmt: BlockFormat, seed: int | None) -> EncodedBlocks:
        _reject_rotated(fmt)
        return encode_blocks(x2d, fmt, seed)

    def decode_blocks(
        self, parts: EncodedBlocks, fmt: BlockFormat, rows: int, length: int, dtype: torch.dtype
    ) -> torch.Tensor:
        _reject_rotated(fmt)
        return decode_blocks(parts, fmt, rows, length, dtype)

    def decode_sum_blocks(
        self, parts: list[EncodedBlocks], fmt: BlockFormat, rows: int, length: int, dtype: torch.dtype
    ) -> torch.Tensor:
        _reject_rotated(fmt)
        return decode_sum_blocks(parts, fmt, rows, length, dtype)
