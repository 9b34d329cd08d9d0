"""Exhaustive code tables through the codec.

For every built-in format (and random custom ones) a tensor holding every
finite element value at a pinned block scale is encoded: each code must come
back as itself (-0 canonicalised to +0) and decode to its exact value. Then
every code, NaN and inf codes included, is decoded directly.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import mxcomm
from mxcomm.formats import BlockFormat, FloatElement, IntElement
from mxcomm.formats.element import code_values
from mxcomm.kernels.bitpack import pack_codes, unpack_codes
from tests.formats.strategies import elements

BACKEND = "torch"


def _pins(fmt: BlockFormat) -> list[float]:
    """Block scales X at which the code table is exercised (each exactly on the scale grid)."""
    if fmt.scale == "e8m0":
        return [1.0, 2.0**-20, 2.0**40]
    if fmt.tensor_scale:
        return [448.0, 448.0 * 2.0**-10]  # tensor scale 2**k, block scale 448
    return [0.75, 2.0**-3]


def _finite_codes(elem: FloatElement | IntElement) -> tuple[list[int], list[float]]:
    """Every code the encoder can produce: finite values, not the most negative integer code."""
    codes, values = [], []
    for code, value in enumerate(code_values(elem)):
        if isinstance(elem, IntElement) and code == 1 << (elem.bits - 1):
            continue  # decode-only (MXINT8's -2.0): the encoder is symmetric and saturates there
        if math.isfinite(value):
            codes.append(code)
            values.append(value)
    return codes, values


def _canonical(code: int, value: float) -> int:
    return 0 if value == 0.0 else code  # -0 encodes as +0


def _table_tensor(fmt: BlockFormat, values: list[float], pin: float) -> torch.Tensor:
    """(rows, block_size) float64: every row starts with max_normal (pins the scale) then table values."""
    per_row = fmt.block_size - 1
    assert per_row >= 1
    rows = -(-len(values) // per_row)
    body = torch.zeros(rows * per_row, dtype=torch.float64)
    body[: len(values)] = torch.tensor(values, dtype=torch.float64)
    body = body.view(rows, per_row)
    lead = torch.full((rows, 1), fmt.element.max_normal, dtype=torch.float64)
    lead[1::2] = -fmt.element.max_normal  # a negative block max pins the scale just the same
    return torch.cat([lead, body], dim=1) * pin


def _check_code_table(fmt: BlockFormat, pin: float, *, in_hypothesis: bool = False) -> None:
    elem = fmt.element
    codes, values = _finite_codes(elem)
    x64 = _table_tensor(fmt, values, pin)
    x = x64.to(torch.float32)
    exact = torch.equal(x.to(torch.float64), x64)  # the pinned values are exact float32 numbers
    if in_hypothesis:
        assume(exact)
    assert exact
    packed = mxcomm.encode(x, fmt, backend=BACKEND)

    # the scale is the pinned one in every block
    scale_of_block = _scale_values(packed)
    assert torch.equal(scale_of_block, torch.full_like(scale_of_block, pin))

    # every code re-encodes to itself
    got = unpack_codes(packed.codes, elem.bits, packed.layout.num_codes).view(x.shape)
    expected_body = torch.zeros(len(got) * (fmt.block_size - 1), dtype=torch.int64)
    expected_body[: len(codes)] = torch.tensor([_canonical(c, v) for c, v in zip(codes, values)])
    got_body = got[:, 1:].reshape(-1)
    assert torch.equal(got_body, expected_body), _first_bad(got_body, expected_body, values)
    max_code = torch.tensor([code_values(elem).index(elem.max_normal)])
    assert torch.equal(got[0::2, 0], max_code.expand(got[0::2, 0].shape))

    # and decodes to its exact value
    y = mxcomm.decode(packed, backend=BACKEND)
    assert torch.equal(y.to(torch.float64), x64)
    assert not y.isnan().any() and not y.isinf().any()


def _scale_values(packed: mxcomm.Packed) -> torch.Tensor:
    """The float64 block scale X of every block, read back from the stored scales."""
    fmt = packed.format
    s = packed.scales
    if fmt.scale == "e8m0":
        return torch.exp2(s.to(torch.float64) - 127)
    if fmt.scale == "e4m3":
        x = s.view(torch.float8_e4m3fn).to(torch.float64)
    else:
        x = s.to(torch.float64)
    if packed.tensor_scale is not None:
        x = x * packed.tensor_scale.to(torch.float64)
    return x


def _first_bad(got: torch.Tensor, expected: torch.Tensor, values: list[float]) -> str:
    bad = (got != expected).nonzero()
    i = int(bad[0])
    value = values[i] if i < len(values) else "padding"
    return f"{len(bad)} codes differ; first: value {value}: got code {int(got[i])}, expected {int(expected[i])}"


FORMATS = mxcomm.list_formats()


@pytest.mark.parametrize("name", FORMATS)
def test_builtin_code_table_roundtrip(name: str) -> None:
    fmt = mxcomm.get_format(name)
    for pin in _pins(fmt):
        _check_code_table(fmt, pin)


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp4_e2m1", "mxint8", "fp3_e2m0"])
@pytest.mark.parametrize("rounding", ["away", "zero", "stochastic"])
def test_code_table_is_fixed_by_every_rounding(name: str, rounding: str) -> None:
    # grid values have no fraction: no rounding mode may move them
    fmt = mxcomm.get_format(name).with_options(rounding=rounding)
    _check_code_table(fmt, 1.0)


@given(
    elem=elements(max_bits=16),
    block_size=st.sampled_from([2, 16, 32, 64, 257]),
    scale=st.sampled_from(["e8m0", "e8m0-rceil", "fp16", "bf16", "fp32", "e4m3", "e4m3+tensor", "fp16+tensor"]),
    pin_exp=st.integers(-12, 12),
)
def test_custom_code_table_roundtrip(elem, block_size: int, scale: str, pin_exp: int) -> None:
    kind, _, extra = scale.partition("+")
    kind, _, mode = kind.partition("-")
    fmt = BlockFormat(
        "t_custom_table", elem, block_size, kind, mode or None, tensor_scale=extra == "tensor"  # type: ignore[arg-type]
    )
    if fmt.scale == "e8m0":
        pin = 2.0**pin_exp
    elif fmt.tensor_scale:
        pin = fmt.scale_spec.max_value * 2.0**pin_exp
    else:
        pin = 0.75 * 2.0**pin_exp
    if fmt.scale != "e8m0":
        storage = {"e4m3": torch.float8_e4m3fn, "fp16": torch.float16, "bf16": torch.bfloat16}.get(fmt.scale)
        block_pin = fmt.scale_spec.max_value if fmt.tensor_scale else pin
        # a subnormal block scale clips, and then the automatic tensor scale would replace the pin
        assume(fmt.tensor_scale or pin >= 2.0 ** (1 - fmt.scale_spec.bias))
        assume(storage is None or float(torch.tensor(block_pin).to(storage).double()) == block_pin)
    _check_code_table(fmt, pin, in_hypothesis=True)


# -- decoding every code directly --------------------------------------------------


def _decode_all_codes(fmt: BlockFormat, scale_code: int) -> torch.Tensor:
    n = 1 << fmt.element.bits
    rows = -(-n // fmt.block_size)
    codes = torch.zeros(rows * fmt.block_size, dtype=torch.int64)
    codes[:n] = torch.arange(n)
    packed = mxcomm.Packed(
        fmt,
        (rows * fmt.block_size,),
        torch.float32,
        0,
        pack_codes(codes, fmt.element.bits),
        torch.full((rows,), scale_code, dtype=torch.uint8),
    )
    return mxcomm.decode(packed, backend=BACKEND)[:n]


@pytest.mark.parametrize("name", [n for n in FORMATS if mxcomm.get_format(n).scale == "e8m0"])
@pytest.mark.parametrize("scale_exp", [0, -7, 30])
def test_every_code_decodes_to_its_value(name: str, scale_exp: int) -> None:
    fmt = mxcomm.get_format(name)
    y = _decode_all_codes(fmt, 127 + scale_exp).to(torch.float64)
    table = torch.tensor(code_values(fmt.element), dtype=torch.float64) * 2.0**scale_exp
    same = (y == table) | (y.isnan() & table.isnan())
    assert bool(same.all())
    finite = ~table.isnan()
    assert torch.equal(y[finite].signbit(), table[finite].signbit())  # -0 decodes as -0
    if isinstance(fmt.element, IntElement):
        assert float(y[1 << (fmt.element.bits - 1)]) == -2.0 * 2.0**scale_exp  # most negative code


def test_nan_scale_decodes_every_code_to_nan() -> None:
    y = _decode_all_codes(mxcomm.get_format("mxfp6_e2m3"), 0xFF)
    assert bool(y.isnan().all())


def test_e8m0_scale_codes_match_torch_float8_e8m0fnu() -> None:
    fmt = BlockFormat("t_e8m0", IntElement(2), block_size=1)
    one = pack_codes(torch.full((256,), 1), 2)  # INT2 code 1 = 1.0 in every block
    packed = mxcomm.Packed(fmt, (256,), torch.float32, 0, one, torch.arange(256, dtype=torch.int64).to(torch.uint8))
    y = mxcomm.decode(packed, backend=BACKEND).to(torch.float64)
    oracle = torch.arange(256, dtype=torch.int64).to(torch.uint8).view(torch.float8_e8m0fnu).to(torch.float64)
    same = (y == oracle) | (y.isnan() & oracle.isnan())
    assert bool(same.all())
