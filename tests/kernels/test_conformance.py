"""Backend conformance: every registered fast codec backend against the torch reference, at atol=0.

One suite, parametrized over the backends (``FAST_BACKENDS``: every registered backend but the
reference). Encodings are compared as whole payloads (codes | scales | tensor scale bytes) and
decoded tensors bit for bit, where any NaN equals any NaN (tests/kernels/exactness.py). The inputs
cover the microxcaling golden vectors, every element width, 0-d / empty / odd shapes, every axis,
ragged tails, NaN / Inf / -0 / subnormal / near-max values, every scale type and mode, every
rounding with several stochastic seeds, decode_sum, and rotated formats both where the backend
rotates in its kernels (fused) and where the front-end rotates around it.

Triton runs in its interpreter on CPU tensors without a GPU (tests/conftest.py sets
TRITON_INTERPRET=1), so sizes are small. A backend that cannot run is skipped locally and fails
the run where it is required (CI): see tests/conftest.py. What is specific to one backend (threads
and block ranges, tiling, ctypes entry points, compiled PTX) stays in that backend's test file.
"""

from __future__ import annotations

import logging
import math
import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mxcomm
from mxcomm.errors import FormatError
from mxcomm.formats import BlockFormat, FloatElement, IntElement, Rounding
from mxcomm.formats.block import E8M0_SCALE_MODES, SCALE_SPECS
from mxcomm.kernels import reference, registered_backends
from mxcomm.kernels.dispatch import fuses_rotation
from mxcomm.kernels.dtypes import SCALE_STORAGE_DTYPES
from mxcomm.kernels.rotation import rotate
from tests import golden
from tests.formats.strategies import SCALE_TYPES, block_formats
from tests.kernels.exactness import (
    DTYPES,
    REFERENCE,
    Codec,
    assert_same_values,
    awkward,
    backend_device,
    gen,
    mixed_input,
    rotated,
    to_device,
)
from tests.kernels.range_cases import BACKEND_MAGNITUDES, magnitude_tensor
from tests.kernels.test_reference_properties import make_values, tensors
from tests.profiles import CORE_EXAMPLES, examples

FAST_BACKENDS = [name for name in registered_backends() if name != REFERENCE]

pytestmark = [
    # Triton's interpreter (numpy) warns where float32 products overflow; the kernels saturate them
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]


def _codec_param(name: str):
    return pytest.param(Codec(name, backend_device(name)), marks=pytest.mark.requires_backend(name), id=name)


CODECS = [_codec_param(name) for name in FAST_BACKENDS]
ALL_CODECS = [_codec_param(name) for name in registered_backends()]


@pytest.mark.parametrize("codec", ALL_CODECS)
def test_backend_runs(codec: Codec) -> None:
    """Every registered backend runs here (the mark skips or, where it is required, fails this with
    the reason) and is the one that encodes when asked for by name."""
    assert codec.encode(torch.ones(2, 32), "mxfp4").backend == codec.name


# == the core property: random formats, random inputs with specials ===========================
SPECIALS = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.sampled_from([math.nan, math.inf, -math.inf])),
                    max_size=3)


@pytest.mark.parametrize("codec", CODECS)
@examples(CORE_EXAMPLES)
@given(fmt=block_formats(), data=tensors(), specials=SPECIALS, seed=st.integers(0, 2**31 - 1))
def test_random_formats_and_inputs(codec: Codec, fmt: BlockFormat, data, specials, seed: int) -> None:
    """Any format (rotated or not), any input dtype, shape and axis, NaN / Inf anywhere: the same
    bytes, the same values in every output dtype, the same decode_sum."""
    x, axis = data
    if specials:
        x = x.clone()
        flat = x.view(-1)
        for where, value in specials:
            flat[int(where * flat.numel())] = value
    want = codec.check(x, fmt, axis=axis, seed=seed)
    other = mxcomm.encode(x.flip(0), fmt, axis=axis, backend=REFERENCE, generator=gen(seed + 1))
    codec.check_decode_sum([want, other, want], dtypes=(None, torch.float32))


@pytest.mark.parametrize("codec", CODECS)
@examples(CORE_EXAMPLES // 2)
@given(fmt=block_formats(), rows=st.integers(1, 4), length=st.integers(1, 70), nparts=st.integers(1, 3),
       seed=st.integers(0, 2**31 - 1))
def test_decode_of_random_payloads(codec: Codec, fmt: BlockFormat, rows: int, length: int, nparts: int,
                                   seed: int) -> None:
    """Every code and scale bit pattern (NaN / inf codes and scales, subnormal scales, products that
    overflow, for rotated formats NaN and inf - inf through the butterflies) decodes like the
    reference, alone and summed."""
    g = gen(seed)
    n = fmt.packed_nbytes((rows, length))
    parts = [
        mxcomm.Packed.from_payload(torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g), fmt, (rows, length),
                                   torch.float32)
        for _ in range(nparts)
    ]
    codec.check_decode_sum(parts, dtypes=DTYPES)
    if nparts == 1:
        codec.check_decode(parts[0], dtypes=DTYPES)


# == the golden vectors ==========================================================================
def _golden_cases(codec: Codec) -> list[dict]:
    """All 460 cases; for Triton's interpreter (about 90 s for all on two cores) by default the edge,
    quirk, special and axis-0 inputs of every format and block size plus one randn / outliers /
    odd-shape / bf16 case per format (all of them with MXCOMM_TRITON_GOLDEN=all)."""
    cases = golden.cases()
    if codec.name != "triton" or codec.device.type == "cuda" or os.environ.get("MXCOMM_TRITON_GOLDEN") == "all":
        return cases
    keep = []
    for c in cases:
        kind = c["input"].split("/")[0]
        if kind in ("edge", "quirk", "axis0") or (kind == "special" and c["round"] == "even"):
            keep.append(c)
        elif c["round"] == "even" and c["block_size"] == 32:
            keep.append(c)
    return keep


GOLDEN = [
    pytest.param(p.values[0], case, marks=p.marks, id=f"{p.id}-{golden.case_id(case)}")
    for p in CODECS
    for case in _golden_cases(p.values[0])
]


@pytest.mark.parametrize("codec,case", GOLDEN)
def test_golden_case(codec: Codec, case: dict) -> None:
    fmt = golden.format_for(case)
    x = golden.input_for(case)
    want = codec.check_encode(x, fmt, axis=int(case["axis"]))
    y = mxcomm.decode(to_device(want, codec.device), backend=codec.name).cpu()
    expected = golden.expected_y(case)
    if x.dtype == torch.bfloat16:
        expected = expected.to(torch.bfloat16)
    assert golden.same_with_nan(y, expected)
    assert_same_values(y, mxcomm.decode(want, backend=REFERENCE))


# == formats: built-in, every element width, scale types and modes, roundings ====================
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("name", mxcomm.list_formats())
def test_builtin_formats(codec: Codec, name: str) -> None:
    fmt = mxcomm.get_format(name)
    for i, dtype in enumerate(DTYPES):
        # ragged rows (70 is no multiple of 16/32/64) with NaN / Inf / -0 / subnormals in some blocks
        codec.check(mixed_input((5, 70), dtype, seed=100 + i), fmt, dtypes=(None, torch.float32))
        # a clean tensor too (every element goes through the element rounding): rows of whole blocks
        # (the kernels' contiguous paths) and a transposed view of it
        clean = mixed_input((3, 4 * fmt.block_size), dtype, seed=200 + i, specials=False)
        codec.check(clean, fmt, dtypes=(None,))
        codec.check(clean.t(), fmt, axis=0, dtypes=(None,))


WIDTH_ELEMENTS = (
    [FloatElement(1, 0), FloatElement(1, 1)]
    + [FloatElement(min(5, w - 2), w - 1 - min(5, w - 2)) for w in range(4, 17)]
    + [FloatElement(8, 7, inf=True, nan="ieee"), FloatElement(5, 10), FloatElement(3, 3), FloatElement(2, 1, bias=3)]
    + [IntElement(b) for b in range(2, 9)]
)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("elem", WIDTH_ELEMENTS, ids=str)
def test_every_element_width(codec: Codec, elem) -> None:
    """Widths 2..16: whole-byte, nibble, 16-bit and straddling code packing; blocks that end
    mid-byte (the stream runs on across blocks) and whole-byte blocks."""
    for block in (32, 3, 5):
        fmt = BlockFormat("w", elem, block_size=block)
        codec.check(mixed_input((3, 3 * block + 1), torch.float32, seed=elem.bits + block), fmt,
                    dtypes=(torch.float32, torch.bfloat16))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("block_size", [1, 2, 5, 48, 100, 3000])
def test_block_sizes(codec: Codec, block_size: int) -> None:
    """Tiny, odd, non-power-of-two and large blocks; ragged rows and rows of whole blocks."""
    rows = 1 if block_size >= 3000 else 3
    for elem, scale in [(FloatElement(3, 2), "e8m0"), (IntElement(5), "fp16"), (FloatElement(2, 1), "e4m3")]:
        fmt = BlockFormat("b", elem, block_size=block_size, scale=scale)
        codec.check(mixed_input((rows, 2 * block_size + block_size // 2 + 1), torch.bfloat16, seed=block_size), fmt,
                    dtypes=(None,))
        codec.check(mixed_input((rows, 2 * block_size), torch.float32, seed=block_size), fmt, dtypes=(None,))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("scale", ["e4m3", "fp16", "bf16", "fp32"])
@pytest.mark.parametrize("tensor_scale", [False, True])
def test_float_scale_types(codec: Codec, scale: str, tensor_scale: bool) -> None:
    for i, dtype in enumerate(DTYPES):
        for elem in (FloatElement(2, 1), FloatElement(4, 3, nan="all_ones"), IntElement(8)):
            fmt = BlockFormat("s", elem, block_size=16, scale=scale, tensor_scale=tensor_scale)
            codec.check(mixed_input((3, 37), dtype, seed=400 + i), fmt, dtypes=(None,))
        fmt = BlockFormat("r", FloatElement(2, 1), block_size=16, scale=scale, tensor_scale=tensor_scale,
                          rotation_seed=5)
        codec.check(mixed_input((3, 37), dtype, seed=450 + i), fmt, dtypes=(None,))


@pytest.mark.parametrize("codec", CODECS)
def test_scale_storage_and_nan_scale_bits(codec: Codec) -> None:
    """Scales are stored in the type the payload contract names, and a NaN block's scale is the
    type's one canonical NaN bit pattern (not whatever a float cast writes)."""
    for scale in SCALE_TYPES:
        fmt = BlockFormat("nan_scale", IntElement(4), block_size=2, scale=scale, tensor_scale=scale == "e4m3")
        x = torch.randn(3, 40, generator=gen(1))
        x[:, ::4] = math.nan  # the first block of every two
        p = codec.encode(x, fmt)
        assert p.scales.dtype == SCALE_STORAGE_DTYPES[scale]
        size = p.scales.element_size()
        bits = p.scales.cpu().view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[size]).to(torch.int64)
        assert bits.view(3, 20)[:, ::2].eq(SCALE_SPECS[scale].nan_bits).all()
        codec.check_encode(x, fmt)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("mode", E8M0_SCALE_MODES)
@pytest.mark.parametrize("name", ["mxfp4_e2m1", "mxfp8_e4m3", "mxint8", "int3"])
def test_e8m0_scale_modes_at_binade_edges(codec: Codec, name: str, mode: str) -> None:
    # significands right at and around the thresholds of ceil / rceil / even
    sig = torch.tensor([1.0, 1.5, 1.75, 1.875, 1.9375, 1.96875, 2 - 2**-10, 2 - 2**-23, 1 + 2**-23, 1.25])
    exps = torch.arange(-8, 8, dtype=torch.float64)
    x = (sig.double()[:, None] * torch.exp2(exps)[None, :]).reshape(-1)
    x = torch.cat([x, -x, torch.tensor([2.0**-126, 2.0**-149, 2.0**127 * 1.9])]).float()
    x = x[torch.randperm(x.numel(), generator=gen(3))].reshape(1, -1)
    codec.check(x, name, scale_mode=mode, dtypes=(None,))
    # one value per block: amax is that value, so every threshold decides a scale
    codec.check(x.reshape(-1, 1).expand(-1, 4).contiguous(), name, scale_mode=mode, dtypes=(None,))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("rounding", tuple(Rounding))
@pytest.mark.parametrize("name", ["mxfp4_e2m1", "mxfp6_e3m2", "mxint8", "nvfp4", "int4_fp16", "fp3_e2m0"])
def test_roundings(codec: Codec, name: str, rounding: str) -> None:
    for i, dtype in enumerate(DTYPES):
        codec.check(mixed_input((4, 40), dtype, seed=300 + i), name, rounding=rounding, seed=11 + i, dtypes=(None,))


@pytest.mark.parametrize("codec", CODECS)
def test_stochastic_rounding_follows_the_generator_seed(codec: Codec) -> None:
    """The same seed gives the reference's bytes (checked), another seed other codes, the same scales."""
    x = make_values("normal", (4, 128), 0, 3).to(torch.bfloat16)
    for name in ("mxfp4", "mxint8", "nvfp4", "fp3_e1m1", "int6_fp16"):
        a = codec.check_encode(x, name, rounding="stochastic", seed=11)
        b = codec.check_encode(x, name, rounding="stochastic", seed=12)
        assert not torch.equal(a.codes, b.codes)
        assert torch.equal(a.scales, b.scales)


@pytest.mark.parametrize("codec", CODECS)
def test_same_width_formats_give_their_own_bytes(codec: Codec) -> None:
    """Formats of the same width and block size, used in turn, each give their own (correct) bytes:
    nothing compiled or cached for one format leaks into another."""
    x = make_values("wide", (8, 256), 0, 7).to(torch.float32)
    four_bit = [
        mxcomm.get_format("mxfp4"),
        mxcomm.get_format("int4"),
        BlockFormat("e3m0", FloatElement(3, 0)),
        BlockFormat("e2m1_b3", FloatElement(2, 1, bias=3)),
        BlockFormat("e2m1_fp16", FloatElement(2, 1), scale="fp16"),
        mxcomm.get_format("mxfp4").with_options(scale_mode="even"),
        mxcomm.get_format("mxfp4").with_options(rounding="zero"),
    ]
    payloads = [codec.check_encode(x, fmt).payload() for _ in range(2) for fmt in four_bit]
    first = payloads[: len(four_bit)]
    assert all(torch.equal(a, b) for a, b in zip(first, payloads[len(four_bit):]))
    assert len({bytes(p.numpy()) for p in first}) == len(four_bit)


# == the range rule: built-in formats at every input magnitude (docs/semantics.md, "Range") =====
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("name", mxcomm.list_formats())
def test_builtin_formats_at_extreme_magnitudes(codec: Codec, name: str) -> None:
    """Payload (and the automatic tensor scale in it), clipped count and decoded values equal the
    reference's at magnitudes far outside a float scale's own range."""
    for dtype, magnitudes in BACKEND_MAGNITUDES.items():
        for i, m in enumerate(magnitudes):
            codec.check(magnitude_tensor(dtype, m, seed=i), name, dtypes=(None,))


# == special values and extreme magnitudes =====================================================
def _special_blocks(dtype: torch.dtype) -> torch.Tensor:
    x = make_values("normal", (6, 96), 0, 1).to(dtype)
    x[0, 3] = math.nan
    x[1, 40] = math.inf
    x[2, 70] = -math.inf
    x[3, :] = 0.0
    x[4, ::2] = -0.0
    x[5, 10] = torch.finfo(dtype).max
    x[5, 50] = torch.finfo(dtype).tiny / 4  # subnormal
    return x


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["mxfp4", "mxfp6_e3m2", "mxfp8_e4m3", "mxfp8_e5m2", "mxint8", "nvfp4", "int8_fp16"])
def test_nan_inf_zero_and_extreme_blocks(codec: Codec, name: str, dtype: torch.dtype) -> None:
    codec.check(_special_blocks(dtype), name)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["mxfp4", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxint8", "fp5_e3m1"])
def test_blocks_of_subnormal_inputs(codec: Codec, name: str, dtype: torch.dtype) -> None:
    """Blocks whose shared exponent clamps at -127 and whose elements are float32 subnormals (the
    kernels then normalise the inputs), in every scale mode and rounding."""
    x = make_values("wide", (4, 64), -136, 9).to(dtype)
    x[1] *= 2.0**-8
    x[2, :32] = make_values("dyadic", (32,), -140, 10).to(dtype)
    for mode in E8M0_SCALE_MODES:
        for rounding in Rounding:
            codec.check(x, name, scale_mode=mode, rounding=rounding, seed=3, dtypes=(None, torch.float16))


@pytest.mark.parametrize("codec", CODECS)
def test_tensor_scale_edge_cases(codec: Codec) -> None:
    # an all-zero tensor (S = 1), float32 subnormals (S and X underflow), huge values, a NaN block,
    # and block scale * tensor scale below float32's smallest subnormal (that block's codes are 0)
    tiny = 2.0**-149
    underflow = torch.zeros(2, 32)
    underflow[0, 0] = 2000 * tiny
    underflow[0, 16:19] = torch.tensor([tiny, -tiny, 2 * tiny])
    underflow[1] = make_values("normal", (32,), -140, 1).to(torch.float32)
    cases = [
        torch.zeros(2, 32),
        torch.tensor([[tiny, -tiny, 0.0, 2 * tiny] + [0.0] * 12]),
        torch.tensor([[3.0e38, -1.0, tiny] + [1e-30] * 13]),
        torch.tensor([[math.nan] + [1.0] * 15, [0.5] * 16]),
        underflow,
    ]
    for x in cases:
        codec.check(x, "nvfp4")


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("rotation_seed", [None, 0x0123_4567_89AB_CDEF])
def test_decode_sum_keeps_negative_zero_and_order(codec: Codec, rotation_seed: int | None) -> None:
    # element code -0 (sign bit, zero magnitude) in every shard: the sum stays -0.0; and
    # large + small - large in float32 depends on the order, which must be the list order
    # (for a rotated format: the order of the sum before the one inverse rotation)
    fmt = mxcomm.get_format("mxfp8_e4m3").with_options(rotation_seed=rotation_seed)
    shape = (1, 32)
    neg_zero = mxcomm.Packed.from_payload(
        torch.cat([torch.full((32,), 0x80, dtype=torch.uint8), torch.tensor([127], dtype=torch.uint8)]),
        fmt, shape, torch.float32,
    )
    codec.check_decode_sum([neg_zero] * 3)
    big = codec.check_encode(torch.full(shape, 2.0**30), fmt)
    small = codec.check_encode(torch.full(shape, 1.0), fmt)
    minus_big = codec.check_encode(torch.full(shape, -(2.0**30)), fmt)
    for order in ([big, small, minus_big], [big, minus_big, small], [small, big, minus_big]):
        codec.check_decode_sum(order)
    total = mxcomm.decode_sum([to_device(p, codec.device) for p in (big, small, minus_big)], backend=codec.name)
    assert float(total[0, 0]) == 0.0 if rotation_seed is None else math.isfinite(float(total[0, 0]))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp4_e2m1", "nvfp4", "int6_fp16", "fp7_e4m2"])
def test_decode_sum(codec: Codec, name: str) -> None:
    packed = [mxcomm.encode(mixed_input((4, 45), torch.bfloat16, seed=500 + i), name, backend=REFERENCE)
              for i in range(5)]
    for n in (1, 2, 5):
        codec.check_decode_sum(packed[:n], dtypes=DTYPES)


# == shapes, axes, strides =========================================================================
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("shape,axis", [((), 0), ((), -1), ((0,), 0), ((0, 5), 1), ((0, 5), 0), ((3, 0), 0),
                                        ((3, 0), 1), ((2, 0, 3), 1), ((1,), 0), ((1, 1), 0), ((7,), 0), ((33,), 0),
                                        ((2, 3, 5), 1)])
@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "fp3_e1m1", "int2"])
def test_zero_dim_empty_tiny_and_odd_shapes(codec: Codec, shape, axis: int, name: str) -> None:
    x = make_values("normal", shape, 0, 2).to(torch.float32) if math.prod(shape) else torch.zeros(shape)
    want = codec.check(x, name, axis=axis)
    y = mxcomm.decode(to_device(want, codec.device), backend=codec.name)
    assert y.shape == x.shape
    codec.check_decode_sum([want, want])


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("name", ["mxfp6_e3m2", "nvfp4", "int5", "fp5_e2m2_b16"])
def test_axes(codec: Codec, name: str) -> None:
    x = mixed_input((3, 5, 37), torch.bfloat16, seed=9)
    for axis in (0, 1, 2, -1, -2, -3):
        codec.check(x, name, axis=axis, dtypes=(None, torch.float16))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(codec: Codec, dtype: torch.dtype) -> None:
    base = make_values("outliers", (96, 40), 0, 4).to(dtype)
    for x in (base.t(), base[::2, 1::3], base.unsqueeze(0).expand(2, 96, 40)):
        assert not x.is_contiguous()
        for axis in (0, -1):
            codec.check(x, "mxfp4", axis=axis, dtypes=(None,))


@pytest.mark.parametrize("codec", CODECS)
def test_block_functions_take_strided_views(codec: Codec) -> None:
    """The backend's block functions read (rows, L) views with any strides."""
    be = codec.backend
    x2d = mixed_input((70, 9), torch.float16, seed=12, device=codec.device).t()  # stride (1, 9)
    assert not x2d.is_contiguous()
    for name in ("mxfp8_e4m3", "int4_fp16", "fp3_e1m1"):
        fmt = mxcomm.get_format(name)
        got = be.encode_blocks(x2d, fmt, None)
        want = reference.encode_blocks(x2d.cpu(), fmt, None)
        assert torch.equal(got.codes.cpu(), want.codes)
        assert torch.equal(got.scales.cpu().view(torch.uint8), want.scales.view(torch.uint8))


# == rotated formats ================================================================================
@pytest.mark.parametrize("codec", ALL_CODECS)
def test_rotated_formats_beyond_the_fused_limit_are_refused_by_the_block_functions(codec: Codec) -> None:
    """A rotated format the backend does not rotate itself (blocks above max_fused_rotation_block;
    every one for the reference) reaching its block functions directly would be encoded unrotated,
    silently: they refuse it (mxcomm.encode rotates around them instead)."""
    be = codec.backend
    block = max(32, 2 * be.max_fused_rotation_block)
    fmt = rotated("mxfp4", 3, block_size=block)
    assert not fuses_rotation(be, fmt)
    x = torch.randn(2, 2 * block, generator=gen(1)).to(codec.device)
    with pytest.raises(FormatError, match="rotat"):
        be.encode_blocks(x, fmt, None)
    parts = be.encode_blocks(x, fmt.with_options(rotation_seed=None), None)
    with pytest.raises(FormatError, match="rotat"):
        be.decode_blocks(parts, fmt, 2, 2 * block, torch.float32)
    with pytest.raises(FormatError, match="rotat"):
        be.decode_sum_blocks([parts], fmt, 2, 2 * block, torch.float32)


@pytest.mark.parametrize("codec", CODECS)
def test_rotation_path_fused_and_front_end(codec: Codec, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """Blocks up to max_fused_rotation_block: the backend gets the rotated format itself and the
    unpadded rows, and its block functions equal the reference on rotated rows. Larger blocks: the
    front-end rotates and hands it the plain format. Both give the reference's bytes and values."""
    be = codec.backend
    limit = be.max_fused_rotation_block
    assert limit >= 32, "a fast backend fuses the rotation of at least the OCP block size"
    seen: list[BlockFormat] = []
    original = type(be).encode_blocks

    def spy(self, x2d, f, seed):
        seen.append(f)
        return original(self, x2d, f, seed)

    monkeypatch.setattr(type(be), "encode_blocks", spy)
    caplog.set_level(logging.DEBUG, logger="mxcomm.kernels")

    fused = rotated("mxfp4")
    assert fuses_rotation(be, fused) and not fuses_rotation(be, mxcomm.get_format("mxfp4"))
    want = codec.check(mixed_input((3, 70), torch.float32, 1), fused)
    codec.check_decode_sum([want, want])
    assert seen == [fused]
    messages = [r.getMessage() for r in caplog.records if f"via {codec.name}" in r.getMessage()]
    assert {m.split()[0] for m in messages} == {"encode", "decode", "decode_sum"}, messages
    assert all("rotation fused in the backend" in m for m in messages), messages
    x = make_values("normal", (3, 64), 0, 2).float().to(codec.device)
    parts = original(be, x, fused, None)
    direct = reference.encode_blocks(rotate(x.cpu(), 1234, 32), fused.with_options(rotation_seed=None))
    assert torch.equal(parts.codes.cpu(), direct.codes) and torch.equal(parts.scales.cpu(), direct.scales)

    seen.clear()
    caplog.clear()
    front = mxcomm.BlockFormat("big", IntElement(4), block_size=2 * limit, rotation_seed=3)
    assert not fuses_rotation(be, front)
    want = codec.check(awkward((2, 3 * front.block_size - 100), torch.bfloat16, 3), front, dtypes=(None,))
    codec.check_decode_sum([want, want], dtypes=(torch.float32,))
    assert seen == [front.with_options(rotation_seed=None)]
    messages = [r.getMessage() for r in caplog.records if f"via {codec.name}" in r.getMessage()]
    assert {m.split()[0] for m in messages} == {"encode", "decode", "decode_sum"}, messages
    assert all("rotation in the front-end" in m for m in messages), messages


ROTATED_FORMATS = ("mxfp4", "int4", "fp5_e2m2", "mxfp8_e4m3", "nvfp4", "int4_b64", "fp4_e2m1_b16", "int6_fp16")
ROTATION_SEEDS = (0, 1234, 2**63 + 5, 2**64 - 1)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ROTATED_FORMATS)
def test_rotated_formats(codec: Codec, name: str, dtype: torch.dtype) -> None:
    """Ragged and whole rows with special values, one long row and many short ones, every rotation
    seed word pattern; alone and summed (the sum is un-rotated once)."""
    for shape, seed in (((7, 200), 1234), ((1, 2048), 2**64 - 1), ((16, 128), 0)):
        fmt = rotated(name, seed)
        want = codec.check(awkward(shape, dtype, seed=shape[1]), fmt)
        shards = [want] + [mxcomm.encode(awkward(shape, dtype, seed=s), fmt, backend=REFERENCE) for s in (5, 6, 7)]
        for count in (2, 4):
            codec.check_decode_sum(shards[:count], dtypes=(dtype, torch.float32))
    clean = mixed_input((2, 2 * fmt.block_size), dtype, seed=20, specials=False)
    codec.check(clean.t(), rotated(name), axis=0, dtypes=(None,))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("block", [2**k for k in range(1, 12)])
@pytest.mark.parametrize("name", ["int4", "mxfp8_e4m3", "fp5_e2m2", "fp3_e1m1", "nvfp4"])
def test_rotated_block_sizes(codec: Codec, name: str, block: int) -> None:
    """Every power of two a fast backend rotates itself (in-vector stages only, the paired paths of
    16-64, buffered stages from 128), byte-aligned or not, ragged rows with special values; float32
    inputs (full significands: every butterfly sum rounds) and bf16 ones."""
    fmt = rotated(name, seed=block * 977 + 1, block_size=block)
    rows = 1 if block >= 1024 else 5
    dtype = torch.float32 if block.bit_length() % 2 else torch.bfloat16
    x = awkward((rows, 2 * block + block // 2 + 1), dtype, block)
    want = codec.check(x, fmt, dtypes=(torch.float32, torch.bfloat16))
    codec.check_decode_sum([want, mxcomm.encode(x.flip(1), fmt, backend=REFERENCE), want], dtypes=(torch.float16,))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("rounding", ["stochastic", "away", "zero"])
@pytest.mark.parametrize("name", ["mxfp4", "mxfp8_e4m3", "int4_b64", "fp5_e2m2", "nvfp4"])
def test_rotated_roundings_and_seeds(codec: Codec, name: str, rounding: str) -> None:
    x = awkward((6, 100), torch.float32, 9)
    for rot_seed, gen_seed in ((1, 11), (2**64 - 1, 12), (2**63 + 5, 13)):
        codec.check(x, rotated(name, rot_seed), seed=gen_seed, rounding=rounding, dtypes=(torch.bfloat16,))
    if rounding == "stochastic":
        a = codec.check_encode(x, rotated(name, 1), seed=11, rounding=rounding)
        b = codec.check_encode(x, rotated(name, 1), seed=12, rounding=rounding)
        assert not torch.equal(a.codes, b.codes)


@pytest.mark.parametrize("codec", CODECS)
def test_rotation_seed_changes_the_codes(codec: Codec) -> None:
    x = make_values("outliers", (4, 256), 1, 4).float()
    payloads = {bytes(codec.check_encode(x, rotated("mxfp8_e4m3", s)).payload().numpy()) for s in ROTATION_SEEDS}
    assert len(payloads) == len(ROTATION_SEEDS)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "int6_fp16", "mxfp8_e4m3", "mxint8"])
def test_rotated_sums_that_overflow_or_cancel(codec: Codec, name: str) -> None:
    """float32 inputs near the max overflow to inf in the butterflies (a NaN block whose other
    elements stay finite: the tensor scale's amax still sees them), cancellations give zeros,
    products with 1/B round into the subnormals."""
    x = make_values("normal", (6, 64), 2, 1).to(torch.float32)
    big = torch.finfo(torch.float32).max
    x[0, 0], x[0, 1] = big, big  # a + b overflows at the first stage
    x[1, 0], x[1, 16] = big, -big  # a - b overflows at stage 16
    x[2, :32] = 1.5  # every difference cancels to +-0
    x[3, 32:] = big / 2
    x[4] = torch.tensor([2.0**-149, -(2.0**-149), 3 * 2.0**-149, 2.0**-127] * 16)
    x[5, 1::2] = -x[5, ::2]
    codec.check(x, rotated(name))
    codec.check(torch.zeros(2, 32), rotated(name))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("out", [torch.float16, torch.bfloat16])
def test_rotated_outputs_near_the_dtype_max_saturate(codec: Codec, out: torch.dtype) -> None:
    """Un-rotated values just above the output type's max (rounded-up scales) saturate."""
    fmt = rotated("mxfp8_e4m3", scale_mode="ceil")
    big = torch.finfo(out).max
    for scale in (0.999, 1.0, 1.001):
        x = make_values("normal", (8, 64), 3, 1).to(torch.float32).clamp(-1, 1) * big * scale
        x[:, ::7] = big * scale
        want = codec.check(x, fmt, dtypes=(out,))
        codec.check_decode_sum([want, want], dtypes=(out,))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["mxfp4", "mxfp8_e4m3", "mxfp8_e5m2", "int4", "fp4_e2m1_b16", "int4_b64", "fp5_e2m2"])
def test_rotated_blocks_of_tiny_and_subnormal_inputs(codec: Codec, name: str, dtype: torch.dtype) -> None:
    """Blocks whose rotated values are float32 subnormals (scale exponents so small that the element
    codes need the normalising path), around the smallest normal, and mixed; every scale mode."""
    tiny = torch.finfo(dtype).tiny
    x = make_values("normal", (6, 128), 0, 1).to(torch.float32)
    x[0] *= tiny / 64
    x[1] *= tiny
    x[2] *= tiny * 2.0**-10
    x[3, :64] *= tiny * 8
    x[3, 64:] *= tiny / 8
    x[4] *= tiny * 2.0**12
    x[5, ::3] = tiny / 2
    for mode in E8M0_SCALE_MODES:
        codec.check(x.to(dtype), rotated(name, scale_mode=mode), dtypes=(None, torch.float32))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("block", [8, 16, 32, 64, 128])
@pytest.mark.parametrize(
    "elem,scale",
    [(FloatElement(2, 1), "e8m0"), (FloatElement(4, 3, nan="all_ones"), "e8m0"), (IntElement(4), "e8m0"),
     (IntElement(8), "e8m0"), (FloatElement(5, 2, inf=True, nan="ieee"), "e8m0"), (FloatElement(2, 1), "e4m3")],
)
def test_rotated_decoded_products_beyond_float32_saturate_before_the_rotation(codec: Codec, elem, scale: str,
                                                                               block: int) -> None:
    """Scales near the top of their range make element * scale overflow float32: the product
    saturates at +-max before the sums (which may then still overflow, or cancel)."""
    tensor_scale = scale == "e4m3"
    fmt = BlockFormat("big", elem, block, scale, tensor_scale=tensor_scale, rotation_seed=99)
    rows, length = 3, 3 * block - 5
    lay = fmt.layout((rows, length))
    g = gen(block + elem.bits)
    codes = torch.randint(0, 256, ((lay.num_codes * elem.bits + 7) // 8,), dtype=torch.uint8, generator=g)
    top = [0xFE, 0xFD, 0xFC, 0x80] if scale == "e8m0" else [0x7E, 0x7D, 0x70, 0x38]
    scales = torch.tensor(top * lay.num_blocks, dtype=torch.uint8)[: lay.num_blocks]
    tail = [torch.tensor([2.0**118], dtype=torch.float32).view(torch.uint8)] if tensor_scale else []
    p = mxcomm.Packed.from_payload(torch.cat([codes, scales, *tail]), fmt, (rows, length), torch.float32)
    q = mxcomm.Packed.from_payload(torch.cat([codes.flip(0), scales, *tail]), fmt, (rows, length), torch.float32)
    codec.check_decode(p, dtypes=DTYPES)
    codec.check_decode_sum([p, q], dtypes=DTYPES)
    codec.check_decode_sum([q, p, q], dtypes=(torch.float32,))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("shape,axis", [((), 0), ((1,), 0), ((0, 64), 1), ((3, 0), 1), ((4, 0), 0), ((1, 1), 0),
                                        ((2, 3), 1), ((3, 5, 37), 1), ((3, 5, 37), 0)])
@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "mxfp6_e3m2"])
def test_rotated_shapes_and_axes(codec: Codec, shape, axis: int, name: str) -> None:
    x = mixed_input(shape, torch.bfloat16, seed=4) if shape else torch.tensor(1.5)
    want = codec.check(x, rotated(name), axis=axis)
    codec.check_decode_sum([want, want, want], dtypes=(torch.float32,))
