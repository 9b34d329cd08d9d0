"""Random Hadamard rotation: the transform, and rotated formats through the codec."""

from __future__ import annotations

import pytest
import torch

import mxcomm
from mxcomm.bench.metrics import sqnr_db
from mxcomm.bench.synthetic import llm_activation
from mxcomm.kernels.rotation import hadamard_blocks, rotate, rotation_signs, unrotate


@pytest.mark.parametrize("block", [2, 4, 16, 32, 128])
def test_hadamard_is_orthogonal_up_to_block(block: int) -> None:
    h = hadamard_blocks(torch.eye(block, dtype=torch.float64), block)
    assert torch.equal(h @ h.T, block * torch.eye(block, dtype=torch.float64))
    assert set(h.unique().tolist()) == {-1.0, 1.0}


def test_rotation_inverse_in_exact_arithmetic_and_fp32() -> None:
    x = torch.randn(5, 96, dtype=torch.float64)
    y = rotate(x, 7, 32)
    # float64 carries the +-1 sums exactly enough to see the identity to 1e-15
    assert torch.allclose(unrotate(y, 7, 32), x, rtol=0, atol=1e-14)
    x32 = x.float()
    back = unrotate(rotate(x32, 7, 32), 7, 32)
    assert (back - x32).abs().max() <= 32 * torch.finfo(torch.float32).eps * x32.abs().max()
    # orthogonal up to the 1/B normalisation: norms scale by 1/sqrt(B)
    assert torch.allclose(y.norm() * 32**0.5, x.norm(), rtol=1e-12)


def test_signs_are_a_function_of_the_seed() -> None:
    a = rotation_signs(123, 1000)
    assert torch.equal(a, rotation_signs(123, 1000))
    assert not torch.equal(a, rotation_signs(124, 1000))
    # prefixes agree: the sign of position j does not depend on the row length
    assert torch.equal(a[:100], rotation_signs(123, 100))
    assert 400 < int((a > 0).sum()) < 600


def _rotated(name: str, seed: int = 99) -> mxcomm.BlockFormat:
    return mxcomm.get_format(name).with_options(name=f"{name}_rht", rotation_seed=seed)


@pytest.mark.parametrize("name", ["mxfp4_e2m1", "int4", "fp5_e2m2", "mxfp8_e4m3"])
def test_rotation_improves_sqnr_on_outlier_activations(name: str) -> None:
    x = llm_activation(32, 512, outlier_channels=4, outlier_gain=50.0, dtype=torch.float32)
    plain = sqnr_db(x, mxcomm.quantize(x, name))
    rotated = sqnr_db(x, mxcomm.quantize(x, _rotated(name)))
    assert rotated > plain + 1.0


def test_rotated_roundtrip_shapes_axes_and_bytes() -> None:
    fmt = _rotated("mxfp4_e2m1")
    x = torch.randn(3, 70, 5, dtype=torch.bfloat16)
    p = mxcomm.encode(x, fmt, axis=1)
    assert p.nbytes == fmt.packed_nbytes(x.shape, axis=1)
    y = mxcomm.decode(p)
    assert y.shape == x.shape and y.dtype == x.dtype
    q = mxcomm.Packed.from_bytes(p.to_bytes())
    assert q.format == fmt
    assert torch.equal(mxcomm.decode(q), y)


def test_rotated_decode_sum_unrotates_once() -> None:
    fmt = _rotated("mxint8")
    shards = [torch.randn(4, 64) for _ in range(3)]
    packed = [mxcomm.encode(s, fmt) for s in shards]
    total = mxcomm.decode_sum(packed)
    separately = sum(mxcomm.decode(p) for p in packed)
    # same math in a different order: equal up to float32 rounding, close to the true sum
    assert torch.allclose(total, separately, rtol=0, atol=1e-5)
    assert sqnr_db(sum(shards), total) > 35


def test_nan_spreads_only_over_its_block() -> None:
    fmt = _rotated("mxfp8_e4m3")
    x = torch.randn(1, 96)
    x[0, 40] = float("nan")
    y = mxcomm.quantize(x, fmt)
    assert y[0, 32:64].isnan().all()
    assert torch.isfinite(y[0, :32]).all() and torch.isfinite(y[0, 64:]).all()


def test_rotation_needs_power_of_two_blocks() -> None:
    with pytest.raises(mxcomm.FormatError):
        mxcomm.BlockFormat("bad", mxcomm.IntElement(4), block_size=24, rotation_seed=1)
    with pytest.raises(mxcomm.FormatError):
        mxcomm.BlockFormat("bad", mxcomm.IntElement(4), rotation_seed=-1)
