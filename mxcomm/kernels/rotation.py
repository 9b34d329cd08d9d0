"""Random Hadamard rotation of blocks (outlier spreading before quantization).

A rotated format multiplies every block of ``B`` (a power of two) elements by
``H D / B`` before it is quantized, where ``H`` is the unnormalised Walsh-Hadamard
matrix (entries +-1) and ``D`` a diagonal of random signs, one per position
along the blocked axis, derived from the format's ``rotation_seed`` with the
counter hash of ``mxcomm.kernels.random``. ``H H = B I``, so the inverse is
``D H``. One outlier then spreads over its whole block instead of setting the
block's scale alone. Because the transform is linear, a sum of rotated shards
can be un-rotated once, after the sum (``decode_sum``).

The forward transform divides by ``B`` (a power of two, exact) so magnitudes
never grow and cannot overflow float32.
"""

from __future__ import annotations

import torch

from mxcomm.kernels.random import stochastic_bits


def rotation_signs(seed: int, length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 +-1 for positions 0 .. length-1 along the blocked axis."""
    bits = stochastic_bits(length, seed, device)
    return (1 - 2 * (bits & 1)).to(torch.float32)


def hadamard_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """Unnormalised fast Walsh-Hadamard transform of each length-``block`` run of dim -1."""
    rows, length = x.shape
    y = x.reshape(rows * (length // block), block)
    h = 1
    while h < block:
        pairs = y.view(-1, block // (2 * h), 2, h)
        a, b = pairs[:, :, 0, :], pairs[:, :, 1, :]
        y = torch.stack((a + b, a - b), dim=2).reshape(-1, block)
        h *= 2
    return y.reshape(rows, length)


def rotate(x2d: torch.Tensor, seed: int, block: int) -> torch.Tensor:
    """(rows, L) float32, L a multiple of ``block``: H D x / block."""
    signs = rotation_signs(seed, x2d.shape[1], x2d.device)
    return hadamard_blocks(x2d * signs, block) * (1.0 / block)


def unrotate(y2d: torch.Tensor, seed: int, block: int) -> torch.Tensor:
    """Inverse of ``rotate``: D H y."""
    signs = rotation_signs(seed, y2d.shape[1], y2d.device)
    return hadamard_blocks(y2d, block) * signs
