"""LSB-first bitstream packing of 1..16-bit codes (docs/wire-format.md)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mxcomm
from mxcomm.kernels.bitpack import pack_codes, packed_code_bytes, unpack_codes


def _reference_pack(codes: list[int], bits: int) -> bytes:
    """The layout spelled out: code i at stream bits [i*b, (i+1)*b), bit j = bit j%8 of byte j//8."""
    out = bytearray((len(codes) * bits + 7) // 8)
    for i, code in enumerate(codes):
        for k in range(bits):
            if code >> k & 1:
                j = i * bits + k
                out[j // 8] |= 1 << (j % 8)
    return bytes(out)


@given(bits=st.integers(1, 16), data=st.data())
def test_pack_unpack_roundtrip(bits: int, data: st.DataObject) -> None:
    codes = data.draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=100))
    t = torch.tensor(codes, dtype=torch.int64)
    packed = pack_codes(t, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == packed_code_bytes(len(codes), bits) == (len(codes) * bits + 7) // 8
    assert bytes(packed.tolist()) == _reference_pack(codes, bits)
    assert unpack_codes(packed, bits, len(codes)).tolist() == codes


@given(bits=st.integers(1, 16), data=st.data())
def test_unpack_of_any_bytes_repacks_identically(bits: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 60))
    raw = data.draw(st.binary(min_size=packed_code_bytes(n, bits), max_size=packed_code_bytes(n, bits)))
    stream = torch.tensor(list(raw), dtype=torch.uint8)
    codes = unpack_codes(stream, bits, n)
    assert bool((codes >= 0).all()) and bool((codes < (1 << bits)).all())
    repacked = pack_codes(codes, bits)
    # identical except the zero padding bits of the last byte
    used = n * bits
    if used % 8:
        mask = (1 << (used % 8)) - 1
        raw = raw[:-1] + bytes([raw[-1] & mask])
    assert bytes(repacked.tolist()) == raw


def test_nibble_order_matches_torchao() -> None:
    # 4-bit: element 2i in the low nibble of byte i (PyTorch float4_e2m1fn_x2 layout)
    packed = pack_codes(torch.tensor([0x1, 0x2, 0x3, 0xF, 0x7]), 4)
    assert packed.tolist() == [0x21, 0xF3, 0x07]


@pytest.mark.parametrize(
    "bits,codes,expected",
    [
        (1, [1, 0, 1, 1, 0, 0, 0, 0, 1], [0b00001101, 0b1]),
        (2, [3, 0, 1, 2], [0b10010011]),
        (3, [0b101, 0b011, 0b111], [0b11011101, 0b1]),  # 101 | 011<<3 | 111<<6
        (6, [0x3F, 0x01], [0x7F, 0x0]),  # 111111 then 000001 -> bits 0..5 set, bit 6 set
        (8, [0xAB, 0x01], [0xAB, 0x01]),
        (12, [0xABC, 0x123], [0xBC, 0x3A, 0x12]),
        (16, [0xBEEF], [0xEF, 0xBE]),  # 16-bit codes are little-endian
    ],
)
def test_hand_packed_streams(bits: int, codes: list[int], expected: list[int]) -> None:
    assert pack_codes(torch.tensor(codes), bits).tolist() == expected
    assert unpack_codes(torch.tensor(expected, dtype=torch.uint8), bits, len(codes)).tolist() == codes


def test_codes_of_an_encoded_tensor_are_the_bitstream() -> None:
    # mxfp6_e3m2 (bias 3, emax 4) at scale 1 (amax 16): 16 = 0b0_111_00, 1.0 = 0b0_011_00, -0.25 = 0b1_001_00
    x = torch.tensor([16.0, 1.0, -0.25, 100.0])
    p = mxcomm.encode(x, "mxfp6_e3m2", backend="torch")
    assert int(p.scales[0]) == 127 + 2  # amax 100 -> floor(log2 100) - 4 = 2: scale 4
    p = mxcomm.encode(x[:3], "mxfp6_e3m2", backend="torch")
    assert int(p.scales[0]) == 127
    expected = [0b0_111_00, 0b0_011_00, 0b1_001_00] + [0] * 29
    assert p.codes.tolist() == _packed_list(expected, 6)


def _packed_list(codes: list[int], bits: int) -> list[int]:
    return list(_reference_pack(codes, bits))


@pytest.mark.parametrize("bits", [0, 17, -1])
def test_bad_widths(bits: int) -> None:
    with pytest.raises(mxcomm.FormatError):
        pack_codes(torch.tensor([0]), bits)
    with pytest.raises(mxcomm.FormatError):
        unpack_codes(torch.zeros(4, dtype=torch.uint8), bits, 1)


def test_unpack_checks_the_stream() -> None:
    with pytest.raises(mxcomm.FormatError):
        unpack_codes(torch.zeros(3, dtype=torch.uint8), 4, 8)  # needs 4 bytes
    with pytest.raises(mxcomm.FormatError):
        unpack_codes(torch.zeros(4, dtype=torch.int32), 4, 8)
    with pytest.raises(mxcomm.FormatError):
        unpack_codes(torch.zeros(2, 2, dtype=torch.uint8), 4, 8)
