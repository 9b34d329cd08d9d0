"""Counter-based random bits for stochastic rounding.

Every backend derives the random word of element i (its index in the padded
block order) from the seed with the same integer hash, so stochastic rounding
is reproducible and comparable across backends. The hash is Chris Wellons'
``lowbias32`` integer finaliser (a bijection on 32-bit words):

    bits(i) = mix32(mix32(seed_lo ^ mix32(seed_hi ^ i_hi)) ^ i_lo)

(everything mod 2**32; i_hi/i_lo are the high and low 32 bits of i).
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
MIX_MUL1 = 0x7FEB352D
MIX_MUL2 = 0x846CA68B


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # (x * c) mod 2**32 without int64 overflow: split x into 16-bit halves.
    lo = (x & 0xFFFF) * c
    hi = (((x >> 16) * c) & 0xFFFF) << 16
    return (lo + hi) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, MIX_MUL1)
    x = x ^ (x >> 15)
    x = _mul32(x, MIX_MUL2)
    return x ^ (x >> 16)


def mix32_int(x: int) -> int:
    x &= MASK32
    x ^= x >> 16
    x = (x * MIX_MUL1) & MASK32
    x ^= x >> 15
    x = (x * MIX_MUL2) & MASK32
    return x ^ (x >> 16)


def seed_key(seed: int, index_hi: int = 0) -> int:
    """The per-seed 32-bit key that is xor-ed into the low index word."""
    seed_lo, seed_hi = seed & MASK32, (seed >> 32) & MASK32
    return mix32_int(seed_lo ^ mix32_int(seed_hi ^ index_hi))


def stochastic_bits(n: int, seed: int | None, device: torch.device | str = "cpu", start: int = 0) -> torch.Tensor:
    """Random uint32 words (as int64) for element indices start .. start+n-1."""
    if seed is None:
        raise ValueError("stochastic rounding needs a seed")
    idx = torch.arange(start, start + n, dtype=torch.int64, device=device)
    hi = idx >> 32
    lo = idx & MASK32
    if n == 0 or int(hi[-1]) == int(hi[0]):
        key = torch.full_like(lo, seed_key(seed, int(hi[0]) if n else 0))
    else:
        keys = torch.tensor([seed_key(seed, h) for h in range(int(hi[0]), int(hi[-1]) + 1)], device=device)
        key = keys[hi - hi[0]]
    return mix32(key ^ lo)
