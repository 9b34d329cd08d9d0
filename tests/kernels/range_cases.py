"""Input magnitudes for the range rule (docs/semantics.md, "Range"), shared by the range tests and
the backend conformance suite.

``magnitude_tensor(dtype, m)``: a (2, 96) Gaussian tensor whose amax is ``m`` (rounded to ``dtype``).
``MAGNITUDES[dtype]``: float32 1e-30..1e30; bfloat16 1e-30..1e38; float16 its whole range
(subnormal inputs to its max). Every built-in format keeps its in-range accuracy there. Below
``max_normal * 2**-126`` a block's float32 multiplier would be subnormal (E8M0: its scale below
2**-127), so blocks of bfloat16 / float32 amax under ~1e-35 clip in every format and are counted:
``CLIPPING`` holds such magnitudes. At the top, an E8M0 format saturates above ``max_normal * 2**127``
(1.7e38 for int2).
"""

from __future__ import annotations

import torch

MAGNITUDES: dict[torch.dtype, list[float]] = {
    torch.float32: [10.0**k for k in range(-30, 31, 4)] + [1e6, 1e-20],
    torch.bfloat16: [10.0**k for k in range(-30, 37, 6)] + [1e38],
    torch.float16: [1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e3, 1e4, 6e4],
}

CLIPPING: dict[torch.dtype, float] = {torch.bfloat16: 1e-38, torch.float32: 1e-40}

# the subset every fast backend is compared on at atol=0 (Triton's interpreter is slow)
BACKEND_MAGNITUDES: dict[torch.dtype, list[float]] = {
    torch.float32: [1e-30, 1e-20, 1e6, 1e30],
    torch.bfloat16: [1e-38, 1e-20, 1e6, 3e38],
    torch.float16: [1e-6, 6e4],
}


def magnitude_tensor(dtype: torch.dtype, m: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 96, generator=g, dtype=torch.float64)
    x = x / x.abs().max() * m
    return x.to(dtype)


def relative_error(y: torch.Tensor, x: torch.Tensor) -> float:
    """||y - x|| / ||x|| in float64."""
    x64, y64 = x.to(torch.float64), y.to(torch.float64)
    return float((y64 - x64).norm() / x64.norm())
