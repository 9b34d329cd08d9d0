"""Random Hadamard rotation of blocks (outlier spreading before quantization).

A rotated format multiplies every block of ``B`` (a power of two) elements by
``H D / B`` before it is quantized, where ``H`` is the unnormalised Walsh-Hadamard
matrix (entries +-1) and ``D`` a diagonal of random signs, one per position
along the blocked axis, derived from the format's ``rotation_seed`` with the
counter hash of ``mxcomm.kernels.counter_rng``. ``H H = B I``, so the inverse is
``D H``. One outlier then spreads over its whole block instead of setting the
block's scale alone. Because the transform is linear, a sum of rotated shards
can be un-rotated once, after the sum (``decode_sum``).

The forward transform divides by ``B`` (a power of two, exact) so magnitudes
never grow and cannot overflow float32.

The numerics are fixed: the signs are applied as one exact product, the
transform runs stage by stage (h = 1, 2, 4, ...; stage h maps each pair at
distance h to ``(a + b, a - b)``, one rounding each), then the ``1/B`` (or the
sign) product. Every backend reproduces exactly this order. The implementation
below only avoids work: the signs are cached, and the stages write into two
preallocated buffers in turn instead of allocating three tensors per stage.
"""

from __future__ import annotations

import functools

import torch

from mxcomm.kernels.counter_rng import stochastic_bits

# Signs of rows up to this many positions are cached (4 bytes each, a few entries):
# encode/decode of the same shape and seed then hashes them once per process.
SIGN_CACHE_MAX_LENGTH = 1 << 20
SIGN_CACHE_ENTRIES = 8


def rotation_signs(seed: int, length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 +-1 for positions 0 .. length-1 along the blocked axis (a fresh tensor)."""
    bits = stochastic_bits(length, seed, device)
    return (1 - 2 * (bits & 1)).to(torch.float32)


@functools.lru_cache(maxsize=SIGN_CACHE_ENTRIES)
def _cached_signs(seed: int, length: int, device: torch.device) -> torch.Tensor:
    return rotation_signs(seed, length, device)


def _signs(seed: int, length: int, device: torch.device) -> torch.Tensor:
    """``rotation_signs``, shared between calls: read it, never write to it."""
    if length <= SIGN_CACHE_MAX_LENGTH:
        return _cached_signs(seed, length, torch.device(device))
    return rotation_signs(seed, length, device)


def _butterflies(x: torch.Tensor, block: int, *, overwrite: bool) -> torch.Tensor:
    """All stages of the unnormalised Walsh-Hadamard transform of every length-``block`` run
    of ``x`` in memory order; returns a contiguous flat tensor. ``x`` is only read unless
    ``overwrite`` (then its storage may serve as a stage buffer and be returned)."""
    flat = x.reshape(-1)
    if block == 1:
        return flat if overwrite else flat.clone()
    buffers = [torch.empty_like(flat), flat if overwrite else None]
    src, h, turn = flat, 1, 0
    while h < block:
        if buffers[turn] is None:
            buffers[turn] = torch.empty_like(flat)
        dst = buffers[turn]
        pairs, out = src.view(-1, 2, h), dst.view(-1, 2, h)
        # every element is read once and written once; the outputs go to the other buffer,
        # so no element is overwritten before both of its butterfly partners have read it
        torch.add(pairs[:, 0], pairs[:, 1], out=out[:, 0])
        torch.sub(pairs[:, 0], pairs[:, 1], out=out[:, 1])
        src, h, turn = dst, h * 2, 1 - turn
    return src


def hadamard_blocks_reference(x: torch.Tensor, block: int) -> torch.Tensor:
    """``hadamard_blocks`` spelled out plainly (new tensors every stage): the statement of
    the numerics that tests compare the buffered version with, bit for bit."""
    rows, length = x.shape
    y = x.reshape(rows * (length // block), block)
    h = 1
    while h < block:
        pairs = y.view(-1, block // (2 * h), 2, h)
        a, b = pairs[:, :, 0, :], pairs[:, :, 1, :]
        y = torch.stack((a + b, a - b), dim=2).reshape(-1, block)
        h *= 2
    return y.reshape(rows, length)


def hadamard_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """Unnormalised fast Walsh-Hadamard transform of each length-``block`` run of dim -1."""
    rows, length = x.shape
    return _butterflies(x, block, overwrite=False).view(rows, length)


def rotate(x2d: torch.Tensor, seed: int, block: int) -> torch.Tensor:
    """(rows, L) float32, L a multiple of ``block``: H D x / block."""
    rows, length = x2d.shape
    signed = (x2d * _signs(seed, length, x2d.device)).contiguous()  # fresh: the stages may reuse it
    return _butterflies(signed, block, overwrite=True).view(rows, length).mul_(1.0 / block)


def unrotate(y2d: torch.Tensor, seed: int, block: int) -> torch.Tensor:
    """Inverse of ``rotate``: D H y."""
    rows, length = y2d.shape
    signs = _signs(seed, length, y2d.device)
    h = _butterflies(y2d, block, overwrite=False).view(rows, length)  # a fresh tensor
    if torch.result_type(h, signs) != h.dtype:  # e.g. a bfloat16 y: the product is float32
        return h * signs
    return h.mul_(signs)
