"""Scale selection and rounding on hand-computed examples.

E8M0 scale modes (floor / ceil / rceil / even) around powers of two, the
clamps, the float-scale (fp16) path, NVFP4's two-level scales and the
rounding modes at exact ties.
"""

from __future__ import annotations

import pytest
import torch

import mxcomm
from mxcomm.kernels.bitpack import unpack_codes

BACKEND = "torch"
BELOW_4 = 4.0 - 2.0**-22  # the float32 just below 4 (float32 log2 rounds it to 2.0)


def _scale_exp(x: list[float], fmt: str, mode: str) -> int:
    p = mxcomm.encode(torch.tensor(x, dtype=torch.float32), fmt, scale_mode=mode, backend=BACKEND)
    assert p.scales.numel() == 1
    return int(p.scales[0]) - 127


# mxfp4 (E2M1): emax 2, max_normal 6 = 1.5 * 2**2, 1 mantissa bit (even: carry when significand >= 1.75)
# mxfp8_e4m3: emax 8, max_normal 448 = 1.75 * 2**8, 3 mantissa bits (even: carry when >= 1.9375)
# mxint8: emax 0, max_normal 127/64 = 1.984375, precision 6 bits (even: carry when >= 2 - 2**-7)
SCALE_CASES = [
    # fmt, amax, floor, ceil, rceil, even
    ("mxfp4", 4.0, 0, 0, 0, 0),
    ("mxfp4", BELOW_4, -1, 0, 0, 0),
    ("mxfp4", 3.5, -1, 0, 0, 0),
    ("mxfp4", 3.4, -1, 0, 0, -1),
    ("mxfp4", 3.0, -1, 0, -1, -1),
    ("mxfp4", 6.0, 0, 1, 0, 0),
    ("mxfp4", 6.5, 0, 1, 1, 0),
    ("mxfp4", 1.0, -2, -2, -2, -2),
    ("mxfp8_e4m3", 448.0, 0, 1, 0, 0),
    ("mxfp8_e4m3", 480.0, 0, 1, 1, 0),
    ("mxfp8_e4m3", 500.0, 0, 1, 1, 1),
    ("mxfp8_e4m3", 256.0, 0, 0, 0, 0),
    ("mxfp8_e4m3", 256.0 - 2.0**-16, -1, 0, 0, 0),
    ("mxint8", 1.0, 0, 0, 0, 0),
    ("mxint8", 1.984375, 0, 1, 0, 0),
    ("mxint8", 1.99, 0, 1, 1, 0),
    ("mxint8", 1.995, 0, 1, 1, 1),
    ("mxint8", 2.0 - 2.0**-23, 0, 1, 1, 1),
    ("mxfp6_e2m3", 2.0**-100, -102, -102, -102, -102),
]


@pytest.mark.parametrize("fmt,amax,floor,ceil,rceil,even", SCALE_CASES)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_e8m0_scale_modes(fmt: str, amax: float, floor: int, ceil: int, rceil: int, even: int, sign: float) -> None:
    x = [0.0, sign * amax, 0.5 * amax]
    assert _scale_exp(x, fmt, "floor") == floor
    assert _scale_exp(x, fmt, "ceil") == ceil
    assert _scale_exp(x, fmt, "rceil") == rceil
    assert _scale_exp(x, fmt, "even") == even


def test_floor_is_not_fooled_by_float32_log2() -> None:
    # float32 log2 of the float just below 2**40 rounds to exactly 40.0 (microxcaling's artefact 1)
    below = 2.0**40 - 2.0**16
    assert float(torch.log2(torch.tensor(below))) == 40.0
    assert _scale_exp([below], "mxfp4", "floor") == 39 - 2
    assert _scale_exp([BELOW_4], "mxfp4", "floor") == -1
    y = mxcomm.quantize(torch.tensor([BELOW_4]), "mxfp4", backend=BACKEND)
    # BELOW_4 / 2**-1 = 7.99... is above E2M1's max 6: it clips to 6 * 2**-1, as OCP floor scaling does
    assert float(y) == 3.0


def test_e8m0_clamps() -> None:
    tiny = 2.0**-149
    assert _scale_exp([tiny], "mxfp4", "floor") == -127  # 2**-151 clamped up to 2**-127
    y = mxcomm.quantize(torch.tensor([tiny, -3 * tiny]), "mxfp4", backend=BACKEND)
    assert y.tolist() == [0.0, 0.0]  # far below half the smallest element at scale 2**-127
    big = 1.5 * 2.0**127
    assert _scale_exp([big], "mxint8", "floor") == 127
    assert _scale_exp([big], "mxint8", "ceil") == 127  # ceil would be 128: clamped to E8M0's max
    y = mxcomm.quantize(torch.tensor([big]), "mxint8", scale_mode="ceil", backend=BACKEND)
    assert float(y) == 1.5 * 2.0**127  # 1.5 is on the INT8 grid at scale 2**127


def test_overflowing_products_saturate_instead_of_becoming_inf() -> None:
    # ceil / rceil / even round the scale up, so element * X can exceed the dtype's max
    fp32_max = torch.finfo(torch.float32).max
    for mode in ("ceil", "rceil", "even"):
        y = mxcomm.quantize(torch.tensor([fp32_max]), "mxfp8_e4m3", scale_mode=mode, backend=BACKEND)
        assert float(y) == fp32_max  # 256 * 2**120 = 2**128 saturates
    half_max = torch.tensor([65504.0], dtype=torch.float16)
    for mode in ("ceil", "rceil", "even"):
        y = mxcomm.quantize(half_max, "mxfp8_e4m3", scale_mode=mode, backend=BACKEND)
        assert float(y) == 65504.0  # 256 * 2**8 = 65536 is not a float16
    y = mxcomm.quantize(half_max, "int8_fp16", backend=BACKEND)
    assert float(y) == 65504.0  # 127/64 * 33024 = 65532 rounds to inf in float16
    # decoding to a narrower dtype saturates the same way
    p = mxcomm.encode(torch.tensor([1e6]), "mxfp8_e4m3", backend=BACKEND)
    assert float(mxcomm.decode(p, dtype=torch.float16)) == 65504.0


# -- rounding modes at exact ties ------------------------------------------------------

TIES = [6.0, 2.5, -2.5, 0.25, 0.75, 5.0, -5.0, 1.25, 0.2]  # mxfp4 at scale 1 (amax 6)
TIE_RESULTS = {
    "rne": [6.0, 2.0, -2.0, 0.0, 1.0, 4.0, -4.0, 1.0, 0.0],
    "away": [6.0, 3.0, -3.0, 0.5, 1.0, 6.0, -6.0, 1.5, 0.0],
    "zero": [6.0, 2.0, -2.0, 0.0, 0.5, 4.0, -4.0, 1.0, 0.0],
}


@pytest.mark.parametrize("rounding", sorted(TIE_RESULTS))
def test_rounding_modes_at_ties(rounding: str) -> None:
    y = mxcomm.quantize(torch.tensor(TIES), "mxfp4", rounding=rounding, backend=BACKEND)
    assert y.tolist() == TIE_RESULTS[rounding]


def test_rounding_just_off_a_tie_is_not_a_tie() -> None:
    # 0.25 (half the smallest subnormal 0.5) -+ one float32 ulp
    below, above = 0.25 - 2.0**-26, 0.25 + 2.0**-25
    for rounding in ("rne", "away"):
        y = mxcomm.quantize(torch.tensor([6.0, below, above]), "mxfp4", rounding=rounding, backend=BACKEND)
        assert y.tolist() == [6.0, 0.0, 0.5]


def test_int_rounding_ties() -> None:
    # mxint8 at scale 1 (amax 1.5): step 1/64; ties at (k + 1/2)/64
    x = torch.tensor([1.5, 0.5 / 64, 1.5 / 64, -2.5 / 64, 3.0])
    p = mxcomm.encode(x, "mxint8", backend=BACKEND)
    assert int(p.scales[0]) == 127 + 1  # 3.0 sets the scale: 2**1
    x = torch.tensor([1.5, 0.5 / 64, 1.5 / 64, -2.5 / 64, 127 / 64])
    assert mxcomm.quantize(x, "mxint8", backend=BACKEND).tolist() == [1.5, 0.0, 2 / 64, -2 / 64, 127 / 64]
    assert mxcomm.quantize(x, "mxint8", rounding="away", backend=BACKEND).tolist() == [
        1.5, 1 / 64, 2 / 64, -3 / 64, 127 / 64,
    ]  # fmt: skip
    codes = unpack_codes(mxcomm.encode(x, "mxint8", rounding="away", backend=BACKEND).codes, 8, 32)[:5]
    assert codes.tolist() == [96, 1, 2, 256 - 3, 127]


# -- float scale types -------------------------------------------------------------------


def test_fp16_scale_hand_computed() -> None:
    # int4_fp16: k * 0.25, |k| <= 7, max_normal 1.75. amax 1 -> X = 1/1.75 = 0.571428... rounded UP
    # onto the fp16 grid (step 2**-11 in [0.5, 1)): 1171 * 2**-11 = 0.57177734375.
    x = torch.tensor([1.0, 0.3, -0.5, 0.0])
    p = mxcomm.encode(x, "int4_fp16", backend=BACKEND)
    assert p.scales.dtype == torch.float16
    assert float(p.scales[0]) == 1171 * 2.0**-11
    scale = 1171 * 2.0**-11
    # x / X = 1.7489..., 0.5246..., -0.8744... -> k = 7, 2, -3 (steps of 0.25)
    codes = unpack_codes(p.codes, 4, 32)[:4]
    assert codes.tolist() == [7, 2, 16 - 3, 0]
    y = mxcomm.decode(p)
    assert y.tolist() == [1.75 * scale, 0.5 * scale, -0.75 * scale, 0.0]
    assert 1.75 * scale > 1.0  # the scale was rounded up: the max element may exceed amax slightly


def test_fp16_scale_beyond_fp16_max_takes_the_automatic_tensor_scale() -> None:
    # 3e38 / 127 is beyond the largest fp16 scale: with S = 1 the block would saturate
    x = torch.tensor([3e38, -1.0])
    p = mxcomm.encode(x, "int8_fp16", backend=BACKEND)
    assert p.clipped_blocks == 0 and float(p.tensor_scale) > 1.0
    y = mxcomm.decode(p)
    assert abs(float(y[0]) - 3e38) <= 3e38 * 2.0**-9  # the max element keeps int8's precision
    assert float(y[1]) == 0.0  # -1 is below the block's step: quantization, not clipping


def test_zero_block_float_scale_is_zero() -> None:
    p = mxcomm.encode(torch.zeros(40), "int6_fp16", backend=BACKEND)
    assert p.scales.tolist() == [0.0, 0.0]
    assert bool((p.codes == 0).all())


def test_nvfp4_hand_computed() -> None:
    # amax over the tensor 168 = 6 * 448 * 2**-4 -> tensor scale S = 2**-4 exactly.
    # block 0: amax 168 -> s = 168 / (6 S) = 448 -> X = 28: 168 -> 6, 20 -> 0.714 -> 0.5, -45 -> -1.607 -> -1.5
    # block 1: amax 3 -> s = 8 -> X = 0.5: 3 -> 6, 1.1 -> 2.2 -> 2, 0.26 -> 0.52 -> 0.5
    # block 2: amax 1.3 -> s = 3.4667 rounded up on E4M3 (step 0.25 in [2, 4)) = 3.5 -> X = 0.21875:
    #          1.3 -> 5.94 -> 6, 0.7 -> 3.2 -> 3, -0.33 -> -1.51 -> -1.5
    x = torch.zeros(48)
    x[0:3] = torch.tensor([168.0, 20.0, -45.0])
    x[16:19] = torch.tensor([3.0, 1.1, 0.26])
    x[32:35] = torch.tensor([1.3, 0.7, -0.33])
    p = mxcomm.encode(x, "nvfp4", backend=BACKEND)
    assert float(p.tensor_scale) == 2.0**-4
    assert p.scales.tolist() == [0x7E, 0x50, 0x46]  # E4M3 448, 8, 3.5
    codes = unpack_codes(p.codes, 4, 48).view(3, 16)[:, :3]
    assert codes.tolist() == [[7, 1, 8 | 3], [7, 4, 1], [7, 5, 8 | 3]]
    y = mxcomm.decode(p).view(3, 16)[:, :3]
    assert y.tolist() == [[168.0, 14.0, -42.0], [3.0, 1.0, 0.25], [1.3125, 0.65625, -0.328125]]
    assert p.nbytes == 24 + 3 + 4


def test_nvfp4_tensor_scale_of_zero_tensor_is_one() -> None:
    p = mxcomm.encode(torch.zeros(16), "nvfp4", backend=BACKEND)
    assert float(p.tensor_scale) == 1.0
    assert p.scales.tolist() == [0]
    assert mxcomm.decode(p).tolist() == [0.0] * 16


def test_nvfp4_tiny_tensor_decodes_finite() -> None:
    # S = 2**-149 (the smallest float32); block 1's s * S underflows float32 to 0
    x = torch.zeros(32)
    x[0] = 2.0**-140
    x[16], x[17] = 2.0**-149, -(2.0**-149)
    p = mxcomm.encode(x, "nvfp4", backend=BACKEND)
    y = mxcomm.decode(p)
    assert bool(y.isfinite().all())
    assert unpack_codes(p.codes, 4, 32)[16:].tolist() == [0] * 16  # nothing encoded against a zero scale
    assert float(y[0]) > 0.0
