"""Rotated formats (``rotation_seed``) on the fast CPU backend: what is specific to it.

The cpu backend rotates blocks of up to ``cpu_backend.ROTATION_MAX_BLOCK`` elements inside its
kernels (``mxcomm.kernels.dispatch.fuses_rotation``). Its conformance with the torch reference on
rotated formats (every layout, block size, rounding, special value, the fused and the front-end
path) is tests/kernels/test_conformance.py; here: the ctypes parameters, several threads with the
row sign table and per-block hashed signs, and row positions past 2**32 through the ctypes entry
points.
"""

from __future__ import annotations

import ctypes

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mxcomm
from mxcomm.formats import BlockFormat, FloatElement, IntElement
from mxcomm.kernels import cpu_backend, reference
from mxcomm.kernels.counter_rng import seed_key, stochastic_bits
from mxcomm.kernels.dispatch import fuses_rotation, resolve_backend
from mxcomm.kernels.rotation import hadamard_blocks_reference
from tests.kernels.exactness import DTYPES, assert_same_values, awkward, rotated
from tests.kernels.test_cpu_backend import assert_same_packed, check_random_payloads_decode, split_into_ranges
from tests.kernels.test_reference_properties import make_values
from tests.profiles import examples

pytestmark = pytest.mark.requires_backend("cpu")


# -- the parameters handed to the kernels --------------------------------------------------------
def test_fuses_rotation_up_to_the_block_limit() -> None:
    be = resolve_backend("cpu", torch.device("cpu"))
    assert fuses_rotation(be, rotated("mxfp4"))
    assert fuses_rotation(be, rotated("int4", block_size=cpu_backend.ROTATION_MAX_BLOCK))
    assert not fuses_rotation(be, rotated("int4", block_size=2 * cpu_backend.ROTATION_MAX_BLOCK))
    assert not fuses_rotation(be, mxcomm.get_format("mxfp4"))  # nothing to rotate
    assert cpu_backend.cpu_format(rotated("mxfp4", 7)).rotate == 1
    assert cpu_backend.cpu_format(rotated("mxfp4", 2**64 - 1)).rotation_seed == 2**64 - 1
    assert cpu_backend.cpu_format(mxcomm.get_format("mxfp4")).rotate == 0


# -- threads -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "fp5_e2m2", "mxfp8_e4m3"])
def test_several_threads(name: str) -> None:
    """The default split of a 1M-element tensor into ranges on 3 threads, and small inputs cut into
    many ranges (some covering less than two rows: hashed signs, some more: the sign table)."""
    fmt = rotated(name, 2**64 - 1)
    x = make_values("outliers", (256, 4096), 5, 8).to(torch.bfloat16)
    with split_into_ranges(3, min_task_elements=cpu_backend.MIN_TASK_ELEMENTS):
        got = mxcomm.encode(x, fmt, backend="cpu")
        ranges = cpu_backend.block_ranges(got.layout.num_blocks, fmt.block_size, fmt.element.bits)
        assert len(ranges) > 1
        y = mxcomm.decode(got, backend="cpu")
        s = mxcomm.decode_sum([got, got], dtype=torch.float32, backend="cpu")
    want = mxcomm.encode(x, fmt, backend="torch")
    assert_same_packed(got, want)
    assert_same_values(y, mxcomm.decode(want, backend="torch"))
    assert_same_values(s, mxcomm.decode_sum([want, want], dtype=torch.float32, backend="torch"))
    for shape in ((9, 130), (1, 2000), (40, 64)):
        x = awkward(shape, torch.float16, 6)
        with split_into_ranges(2):
            got = mxcomm.encode(x, fmt, backend="cpu")
            ys = [mxcomm.decode_sum([got, got, got], dtype=d, backend="cpu") for d in DTYPES]
        want = mxcomm.encode(x, fmt, backend="torch")
        assert_same_packed(got, want)
        for y, d in zip(ys, DTYPES):
            assert_same_values(y, mxcomm.decode_sum([want, want, want], dtype=d, backend="torch"))


# -- positions past 2**32 ------------------------------------------------------------------------
@pytest.mark.parametrize("block", [32, 4])
def test_signs_of_positions_past_2_to_32(block: int) -> None:
    """Row positions >= 2**32 hash their signs with another key. Blocks k..k+n-1 of one very long
    row, around position 2**32, are encoded and decoded by calling the kernels with pointers shifted
    by k blocks (no 2**32-element tensor needed) and compared with the reference transform of the
    same blocks with signs taken from position k * block on."""
    n = 4
    k = 2**32 // block - n // 2
    fmt = rotated("mxfp8_e4m3", 2**64 - 1, block_size=block)
    plain = fmt.with_options(rotation_seed=None)
    x = make_values("normal", (n * block,), 7, 3).to(torch.float32)
    signs = (1 - 2 * (stochastic_bits(n * block, fmt.rotation_seed, start=k * block) & 1)).to(torch.float32)
    want = reference.encode_blocks(hadamard_blocks_reference((x * signs).reshape(1, -1), block) * (1.0 / block), plain)

    lib = cpu_backend.load().library()
    params = ctypes.byref(cpu_backend.cpu_format(fmt))
    codes = torch.zeros(n * block, dtype=torch.uint8)
    scales = torch.zeros(n, dtype=torch.uint8)
    clipped = ctypes.c_int64(-1)
    status = lib.mx_encode(
        params, 0, x.data_ptr() - k * block * 4, (k + n) * block, k + n, k, k + n, 1.0, 0,
        codes.data_ptr() - k * block, scales.data_ptr() - k, ctypes.byref(clipped),
    )
    assert status == 0 and clipped.value == int(want.clipped)
    assert torch.equal(codes, want.codes) and torch.equal(scales, want.scales)

    out = torch.empty(n * block, dtype=torch.float32)
    table = cpu_backend._code_table(fmt.element)
    status = lib.mx_decode(
        params, 0, 1, (ctypes.c_void_p * 1)(codes.data_ptr() - k * block), (ctypes.c_void_p * 1)(scales.data_ptr() - k),
        (ctypes.c_float * 1)(1.0), table.data_ptr(), (k + n) * block, k + n, k, k + n, out.data_ptr() - k * block * 4,
    )
    assert status == 0
    decoded = reference.decode_blocks(want, plain, 1, n * block, torch.float32)
    expected = hadamard_blocks_reference(decoded, block).reshape(-1) * signs
    assert_same_values(out, expected)
    assert seed_key(fmt.rotation_seed, 0) != seed_key(fmt.rotation_seed, 1)  # the key really changes


# -- the decoder on arbitrary payloads ----------------------------------------------------------
ELEMENTS = [FloatElement(2, 1), FloatElement(4, 3), FloatElement(5, 2, inf=True, nan="ieee"), FloatElement(2, 2),
            IntElement(4), IntElement(6), FloatElement(1, 1)]


@examples(60)
@given(elem=st.sampled_from(ELEMENTS), block=st.sampled_from([2, 4, 8, 16, 32, 64, 128]),
       scale=st.sampled_from(["e8m0", "e4m3", "bf16"]), rows=st.integers(1, 4), length=st.integers(1, 150),
       nparts=st.integers(1, 3), seed=st.integers(0, 2**31 - 1), rot_seed=st.integers(0, 2**64 - 1),
       threads=st.sampled_from([1, 2]))
def test_decode_of_random_payloads(elem, block, scale, rows, length, nparts, seed, rot_seed, threads) -> None:
    """Every code and scale bit pattern (NaN/inf codes and scales, subnormal scales, overflowing
    products and sums) decodes like the reference, alone and summed."""
    fmt = BlockFormat("rnd", elem, block, scale, tensor_scale=scale == "e4m3" and seed % 2 == 0, rotation_seed=rot_seed)
    check_random_payloads_decode(fmt, rows, length, nparts, seed, threads)
