"""Test-side references: the algorithms' defined results from the codec primitives, error bounds, byte formulas.

Written independently of mxcomm.collectives (no imports from it) so that the
tests compare the implementation against a second reading of the spec.
"""

from __future__ import annotations

import math

import torch

import mxcomm
from mxcomm.formats import BlockFormat
from mxcomm.formats.element import code_values

DESCRIPTOR = 88  # bytes of the handshake descriptor (docs/collectives.md)
DEFAULT_SEGMENT = 1 << 20


def segments(numel: int, seg: int | None, block: int) -> list[tuple[int, int]]:
    s = DEFAULT_SEGMENT if seg is None else seg
    s = -(-s // block) * block
    return [(a, min(numel, a + s)) for a in range(0, numel, s)]


def chunks(length: int, n: int, block: int) -> list[tuple[int, int]]:
    c = math.ceil(math.ceil(length / n) / block) * block
    return [(min(length, r * c), min(length, (r + 1) * c)) for r in range(n)]


def packed(fmt: BlockFormat, numel: int) -> int:
    return fmt.packed_nbytes((numel,)) if numel else 0


def one_shot(inputs: list[torch.Tensor], fmt: BlockFormat, seg: int | None) -> torch.Tensor:
    flat = [x.reshape(-1) for x in inputs]
    out = torch.empty_like(flat[0])
    for a, b in segments(out.numel(), seg, fmt.block_size):
        out[a:b] = mxcomm.decode_sum([mxcomm.encode(x[a:b], fmt) for x in flat], dtype=out.dtype)
    return out.view(inputs[0].shape)


def two_shot(inputs: list[torch.Tensor], fmt: BlockFormat, seg: int | None) -> torch.Tensor:
    flat = [x.reshape(-1) for x in inputs]
    n = len(flat)
    out = torch.empty_like(flat[0])
    for a, b in segments(out.numel(), seg, fmt.block_size):
        for c0, c1 in chunks(b - a, n, fmt.block_size):
            if c1 > c0:
                # owner r: the other ranks' chunks quantized (rank order, fp32), its own added exactly
                r = [rr for rr, (q0, q1) in enumerate(chunks(b - a, n, fmt.block_size)) if (q0, q1) == (c0, c1)][0]
                reduced = own_exact_sum([x[a + c0 : a + c1] for x in flat], r, fmt)
                out[a + c0 : a + c1] = mxcomm.decode(mxcomm.encode(reduced, fmt), dtype=out.dtype)
    return out.view(inputs[0].shape)


def own_exact_sum(parts: list[torch.Tensor], owner: int, fmt: BlockFormat) -> torch.Tensor:
    """fp32 sum of decode(encode(part)) over the ranks but ``owner`` (rank order), plus the owner's part exactly."""
    others = [mxcomm.encode(p, fmt) for j, p in enumerate(parts) if j != owner]
    own = parts[owner].to(torch.float32)
    return mxcomm.decode_sum(others, dtype=torch.float32) + own if others else own


def _half_gap_and_clip(fmt: BlockFormat) -> tuple[float, float]:
    """Largest half-gap between neighbouring element values, and the clipping gap of floor scaling."""
    vals = sorted({abs(v) for v in code_values(fmt.element) if math.isfinite(v)})
    half_gap = max(b - a for a, b in zip(vals, vals[1:])) / 2
    clip = max(0.0, 2.0 ** (fmt.element.emax + 1) - fmt.element.max_normal)
    return half_gap, clip


def quantization_bound(x: torch.Tensor, fmt: BlockFormat) -> torch.Tensor:
    """Per-element bound on |decode(encode(x)) - x| for a flat tensor, from the format's definition alone.

    e8m0 floor scale: scale = 2**(floor(log2 amax) - emax), so amax / scale < 2**(emax+1) and an element
    is off by at most scale * max(half gap, 2**(emax+1) - max_normal) (rounding or clipping). Other scale
    modes do not clip; their scale is at most twice amax / max_normal (e8m0) or amax / max_normal rounded
    up on the scale grid (float scales, times the tensor scale), floored at the grid's smallest scale.
    A 1e-6 relative slack covers the float32 division of the float-scale encoders.
    """
    x64 = x.reshape(-1).to(torch.float64)
    bs = fmt.block_size
    nb = -(-x64.numel() // bs)
    padded = torch.zeros(nb * bs, dtype=torch.float64)
    padded[: x64.numel()] = x64.abs()
    amax = padded.view(nb, bs).amax(dim=1)
    half_gap, clip = _half_gap_and_clip(fmt)
    elem = fmt.element
    spec = fmt.scale_spec
    if spec.power_of_two:
        if fmt.scale_mode == "floor":
            scale = torch.exp2(torch.floor(torch.log2(amax.clamp_min(1e-300))) - elem.emax)
            err = scale * max(half_gap, clip)
        else:
            scale = 2 * amax / min(2.0**elem.emax, elem.max_normal)
            err = scale * half_gap
    else:
        ts = 1.0
        if fmt.tensor_scale:
            ts = float(amax.max()) / (elem.max_normal * spec.max_value) * (1 + 2.0**-23) if nb else 1.0
        q = amax / (elem.max_normal * ts)
        scale = ts * torch.maximum(q * (1 + 2.0**-spec.mbits), torch.full_like(q, spec.min_subnormal))
        err = scale * half_gap
    err = torch.where(amax > 0, err, torch.zeros_like(err))
    per_elem = err.repeat_interleave(bs)[: x64.numel()]
    return per_elem + 1e-6 * x64.abs()


def unit_roundoff(dtype: torch.dtype) -> float:
    return {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[dtype]


def all_reduce_bound(xs: list[torch.Tensor], fmt: BlockFormat, algorithm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(float64 exact sum, per-element bound on |result - exact|) of a compressed all-reduce of flat ``xs``.

    Each rank's partial is quantized once (one-shot) and summed in float32; two-shot
    re-quantizes the sum; the result is cast to the inputs' dtype.
    """
    n = len(xs)
    exact = torch.stack([x.to(torch.float64) for x in xs]).sum(0)
    per_rank = sum(quantization_bound(x, fmt) for x in xs)
    mags = sum(x.to(torch.float64).abs() for x in xs) + per_rank
    bound = per_rank + n * 2.0**-24 * mags  # float32 accumulation
    if algorithm == "two_shot":
        bound = bound + quantization_bound(exact.abs() + bound, fmt)
    return exact, bound + unit_roundoff(xs[0].dtype) * (exact.abs() + bound)


def all_gather_bound(x: torch.Tensor, fmt: BlockFormat) -> torch.Tensor:
    """Bound on |decoded entry - x| of an all-gathered flat ``x``: one quantization and the cast back."""
    bound = quantization_bound(x, fmt) * (1 + 1e-5)
    return bound + unit_roundoff(x.dtype) * (x.to(torch.float64).abs() + bound)


def reduce_scatter_bound(chunks: list[torch.Tensor], fmt: BlockFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """(float64 exact sum, bound) of the reduce-scattered chunk summed from every rank's flat ``chunks``."""
    exact = sum(c.to(torch.float64) for c in chunks)
    bound = sum(quantization_bound(c, fmt) for c in chunks) * (1 + 1e-5)
    return exact, bound + unit_roundoff(chunks[0].dtype) * (exact.abs() + bound)
