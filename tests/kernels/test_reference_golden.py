"""External oracle: the microxcaling golden vectors (tests/data/golden/README.md).

Every one of the 460 cases is checked three ways against the torch reference:
the dequantized tensor (spec-exact target), the E8M0 scale bytes and the
element codes unpacked from mxcomm's bitstream.
"""

from __future__ import annotations

import pytest
import torch

import mxcomm
from mxcomm.formats.element import code_values
from mxcomm.kernels.bitpack import unpack_codes
from tests import golden

CASES = golden.cases()


def _blocked_view(t: torch.Tensor, axis: int, block_size: int) -> torch.Tensor:
    """(…, L) with ``axis`` moved last, rows padded to whole blocks: (num_blocks, block_size)."""
    moved = t.movedim(axis, -1)
    length = moved.shape[-1]
    rows = moved.reshape(-1, length)
    pad = (-length) % block_size
    if pad:
        rows = torch.cat([rows, rows.new_zeros(rows.shape[0], pad)], dim=1)
    return rows.reshape(-1, block_size)


def _code_of_value(fmt: mxcomm.BlockFormat) -> dict[float, int]:
    """Value -> code for the finite codes of the element, +0 for zero."""
    table: dict[float, int] = {}
    for code, value in enumerate(code_values(fmt.element)):
        if value == value and abs(value) != float("inf") and value not in table:
            table[value] = code
    table[0.0] = 0
    return table


def test_golden_file_has_all_cases() -> None:
    assert len(CASES) == 460
    assert len({golden.case_id(c) for c in CASES}) == 460


@pytest.mark.parametrize("case", CASES, ids=[golden.case_id(c) for c in CASES])
def test_golden_case(case: dict) -> None:
    fmt = golden.format_for(case)
    x = golden.input_for(case)
    axis = int(case["axis"])
    packed = mxcomm.encode(x, fmt, axis=axis, backend="torch")

    # 1. dequantized values (NaN == NaN, +-inf never expected: see README artefact 1)
    y = mxcomm.decode(packed, backend="torch")
    assert y.dtype == x.dtype and y.shape == x.shape
    expected = golden.expected_y(case)
    if x.dtype == torch.bfloat16:
        # microxcaling ran on x.float(); the bf16 output is that value rounded once
        expected = expected.to(torch.bfloat16)
    assert golden.same_with_nan(y, expected), _first_difference(y, expected)

    # 2. E8M0 scale bytes, block order = shared_exp with `axis` moved last
    exp = golden.expected_shared_exp(case).movedim(axis, -1).reshape(-1)
    scales = packed.scales.to(torch.int64)
    assert scales.shape == exp.shape
    nan_block = exp.isnan()
    assert torch.equal(scales[nan_block], torch.full_like(scales[nan_block], 0xFF))
    blocks = _blocked_view(x.float(), axis, fmt.block_size)
    all_zero = (blocks == 0).all(dim=1)
    check = ~nan_block & ~all_zero  # README note 4: the scale of an all-zero block is unspecified
    assert torch.equal(scales[check], exp[check].to(torch.int64) + 127)
    assert torch.equal(scales[all_zero], torch.zeros_like(scales[all_zero]))  # mxcomm's documented choice

    # 3. element codes, in block order
    bits = fmt.element.bits
    codes = unpack_codes(packed.codes, bits, packed.layout.num_codes).view(-1, fmt.block_size)
    expected_codes = _blocked_view(case["elem_codes"].to(torch.int64), axis, fmt.block_size).clone()
    sign_bit = 1 << (bits - 1)
    if isinstance(fmt.element, mxcomm.FloatElement):
        lookup = _code_of_value(fmt)
        zero_magnitude = (expected_codes & (sign_bit - 1)) == 0
        expected_codes[zero_magnitude] = 0  # -0 is encoded as +0
        # Where microxcaling's value is a float32 artefact, the exact value's code is the target.
        exact_y = _blocked_view(expected.float(), axis, fmt.block_size)
        micro_y = _blocked_view(case["y"], axis, fmt.block_size)
        differs = (exact_y != micro_y) & ~exact_y.isnan()
        scale = torch.exp2(golden.expected_shared_exp(case).movedim(axis, -1).reshape(-1, 1).double())
        for r, c in differs.nonzero().tolist():
            expected_codes[r, c] = lookup[float(exact_y[r, c].double() / scale[r, 0])]
    else:
        exact_y = _blocked_view(expected.float(), axis, fmt.block_size)
        micro_y = _blocked_view(case["y"], axis, fmt.block_size)
        step = fmt.element.step
        scale = torch.exp2(golden.expected_shared_exp(case).movedim(axis, -1).reshape(-1, 1).double())
        for r, c in ((exact_y != micro_y) & ~exact_y.isnan()).nonzero().tolist():
            k = round(float(exact_y[r, c].double() / scale[r, 0]) / step)
            expected_codes[r, c] = k % (1 << bits)
    # Blocks whose exact shared exponent differs from microxcaling's are quantized at another
    # scale there; their codes are not comparable (their values were checked above).
    quirk = torch.zeros(case["shared_exp"].numel(), dtype=torch.bool)
    quirk[case["shared_exp_mismatch_vs_exact_idx"]] = True
    comparable = ~quirk.view(case["shared_exp"].shape).movedim(axis, -1).reshape(-1)
    if "quirk" in case["input"]:
        assert int(quirk.sum()) > 0  # the quirk inputs do exercise the artefacts
    assert torch.equal(codes[comparable], expected_codes[comparable])


def _first_difference(a: torch.Tensor, b: torch.Tensor) -> str:
    a, b = a.float().reshape(-1), b.float().reshape(-1)
    bad = ~((a == b) | (a.isnan() & b.isnan()))
    idx = bad.nonzero()
    if not idx.numel():
        return "equal"
    i = int(idx[0])
    return f"{int(bad.sum())} differ; first at flat {i}: got {a[i].item()!r}, expected {b[i].item()!r}"
