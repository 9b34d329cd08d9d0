"""The buffered rotation (cached signs, two stage buffers) against the plainly spelled-out
transform: bit for bit, special values and signed zeros included."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mxcomm.kernels import rotation
from mxcomm.kernels.rotation import hadamard_blocks, hadamard_blocks_reference, rotate, rotation_signs, unrotate
from tests.profiles import examples

BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16}


def _straight_rotate(x: torch.Tensor, seed: int, block: int) -> torch.Tensor:
    return hadamard_blocks_reference(x * rotation_signs(seed, x.shape[1], x.device), block) * (1.0 / block)


def _straight_unrotate(y: torch.Tensor, seed: int, block: int) -> torch.Tensor:
    return hadamard_blocks_reference(y, block) * rotation_signs(seed, y.shape[1], y.device)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(BITS[a.dtype]), b.view(BITS[b.dtype]))


def _awkward(rows: int, length: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Wide dynamic range (sums round), cancellations to +-0, subnormals, inf and nan."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, length, generator=g, dtype=torch.float64)
    x = (x * torch.rand(rows, length, generator=g, dtype=torch.float64).pow(12) * 1e4).to(dtype)
    if x.numel() == 0:
        return x
    tiny = torch.finfo(dtype).tiny
    specials = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), tiny / 8, -tiny / 8, 1.0, -1.0])
    flat = x.view(-1)
    picks = torch.randint(0, flat.numel(), (min(64, flat.numel()),), generator=g)
    flat[picks] = specials[torch.arange(picks.numel()) % specials.numel()].to(dtype)
    # around the smallest normal: here dividing by B before the sums would round differently
    near_tiny = torch.randn(rows, length // 2 - length // 4, generator=g, dtype=torch.float64) * 4 * tiny
    x[:, length // 4 : length // 2] = near_tiny.to(dtype)
    x[:, : length // 4 : 2] = -0.0
    x[:, 1 : length // 4 : 2] = 0.0
    x[0, -2:] = torch.tensor([1.0, 1.0], dtype=dtype)  # a + b and a - b with exact zero results
    return x


CASES = [
    (3, 96, 32),
    (64, 4096, 32),
    (1, 1 << 15, 32),  # one long row, as the rotated all-reduce rotates flat segments
    (7, 256, 16),
    (5, 64, 2),
    (2, 512, 128),
    (3, 1024, 1024),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("rows", "length", "block"), CASES)
def test_buffered_rotation_is_bit_identical_to_the_plain_one(
    rows: int, length: int, block: int, dtype: torch.dtype
) -> None:
    x = _awkward(rows, length, dtype, seed=rows * 7919 + length)
    before = x.clone()
    for seed in (0, 2**63 + 5):
        assert _same_bits(rotate(x, seed, block), _straight_rotate(x, seed, block))
        assert _same_bits(unrotate(x, seed, block), _straight_unrotate(x, seed, block))
    assert _same_bits(hadamard_blocks(x, block), hadamard_blocks_reference(x, block))
    assert _same_bits(x, before)  # inputs are never written


def test_non_contiguous_empty_and_bfloat16_inputs() -> None:
    x = _awkward(32, 64, torch.float32, seed=3)
    xt = x.T.contiguous().T
    assert not xt.is_contiguous()
    assert _same_bits(rotate(xt, 5, 32), _straight_rotate(x, 5, 32))
    assert _same_bits(unrotate(xt, 5, 32), _straight_unrotate(x, 5, 32))
    for shape in [(0, 64), (4, 0)]:
        empty = torch.zeros(shape)
        assert rotate(empty, 1, 32).shape == shape and unrotate(empty, 1, 32).shape == shape
    yb = torch.randn(4, 64).bfloat16()  # the product with the float32 signs promotes, as before
    assert _same_bits(unrotate(yb, 3, 32), _straight_unrotate(yb, 3, 32))


@examples(40)
@given(
    log_block=st.integers(1, 7),
    rows=st.integers(1, 4),
    blocks=st.integers(1, 4),
    seed=st.integers(0, 2**64 - 1),
    data=st.data(),
)
def test_rotation_matches_plain_on_arbitrary_floats(log_block: int, rows: int, blocks: int, seed: int, data) -> None:
    block = 1 << log_block
    n = rows * blocks * block
    values = data.draw(st.lists(st.floats(width=32), min_size=n, max_size=n))
    x = torch.tensor(values, dtype=torch.float32).view(rows, blocks * block)
    assert _same_bits(rotate(x, seed, block), _straight_rotate(x, seed, block))
    assert _same_bits(unrotate(x, seed, block), _straight_unrotate(x, seed, block))


def test_sign_cache_is_shared_read_only_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    rotation._cached_signs.cache_clear()
    x = torch.randn(2, 128)
    rotate(x, 11, 32)
    unrotate(x, 11, 32)
    info = rotation._cached_signs.cache_info()
    assert info.misses == 1 and info.hits == 1  # hashed once for both directions
    # the shared tensor still holds the signs after rotate and unrotate used it
    assert torch.equal(rotation._signs(11, 128, x.device), rotation_signs(11, 128))
    # rows longer than the cache limit are hashed per call, with the same result
    monkeypatch.setattr(rotation, "SIGN_CACHE_MAX_LENGTH", 64)
    assert _same_bits(rotate(x, 12, 32), _straight_rotate(x, 12, 32))
    assert rotation._cached_signs.cache_info().currsize == 1
