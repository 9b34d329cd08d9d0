"""The self-describing frame: Packed.to_bytes / Packed.from_bytes (docs/wire-format.md).

Round trips for built-in and random custom formats, the documented byte
layout, and hostile input: every bit flip, every truncation, field mutations
with a recomputed CRC (so validation itself is exercised, not only the CRC),
and lengths that would make a naive reader allocate huge buffers. Every
failure must be a mxcomm.FormatError.
"""

from __future__ import annotations

import math
import struct
import zlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mxcomm
from mxcomm.formats import BlockFormat, FloatElement, IntElement
from tests.formats.strategies import builtin_formats, elements
from tests.profiles import examples

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _same_packed(a: mxcomm.Packed, b: mxcomm.Packed) -> None:
    assert a.format == b.format
    assert a.shape == b.shape and a.dtype == b.dtype and a.axis == b.axis
    assert torch.equal(a.codes, b.codes)
    assert a.scales.dtype == b.scales.dtype
    assert torch.equal(a.scales.view(torch.uint8), b.scales.view(torch.uint8))  # bitwise (NaN scales)
    if a.tensor_scale is None:
        assert b.tensor_scale is None
    else:
        assert float(a.tensor_scale) == float(b.tensor_scale)
    assert a.nbytes == b.nbytes


def _crc_fixed(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _refresh_crc(frame: bytes | bytearray) -> bytes:
    return _crc_fixed(bytes(frame[:-4]))


@st.composite
def block_formats(draw: st.DrawFn) -> BlockFormat:
    elem = draw(elements(max_bits=16))
    block_size = draw(st.sampled_from([1, 2, 3, 16, 32, 64, 100]))
    scale = draw(st.sampled_from(["e8m0", "e4m3", "fp16", "bf16", "fp32"]))
    mode = draw(st.sampled_from(["floor", "ceil", "rceil", "even"])) if scale == "e8m0" else "rceil"
    rounding = draw(st.sampled_from(["rne", "away", "zero", "stochastic"]))
    tensor_scale = scale != "e8m0" and draw(st.booleans())
    rotation = None
    if block_size >= 2 and block_size & (block_size - 1) == 0 and draw(st.booleans()):
        rotation = draw(st.integers(0, 2**64 - 1))
    name = draw(st.text("abcXYZ019_.-", min_size=1, max_size=64))
    return BlockFormat(
        name, elem, block_size, scale, mode, rounding, tensor_scale=tensor_scale, rotation_seed=rotation
    )


@st.composite
def packed_tensors(draw: st.DrawFn, formats=None) -> mxcomm.Packed:
    fmt = draw(formats if formats is not None else st.one_of(builtin_formats(), block_formats()))
    dims = draw(st.lists(st.integers(0, 20), min_size=0, max_size=3))
    ndim = max(len(dims), 1)
    axis = draw(st.integers(-ndim, ndim - 1))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(dims, generator=g) * 2.0 ** draw(st.integers(-10, 10))).to(dtype)
    if x.numel() and draw(st.booleans()):
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    return mxcomm.encode(x, fmt, axis=axis, generator=g, backend="torch")


@given(p=packed_tensors())
def test_roundtrip(p: mxcomm.Packed) -> None:
    frame = p.to_bytes()
    assert isinstance(frame, bytes)
    q = mxcomm.Packed.from_bytes(frame)
    _same_packed(p, q)
    assert q.to_bytes() == frame
    y, z = mxcomm.decode(p, backend="torch"), mxcomm.decode(q, backend="torch")
    assert torch.equal(y.isnan(), z.isnan()) and torch.equal(y.nan_to_num(), z.nan_to_num())
    assert mxcomm.Packed.from_bytes(bytearray(frame)).to_bytes() == frame
    assert mxcomm.Packed.from_bytes(memoryview(frame)).to_bytes() == frame
    # the frame is the payload plus a bounded header
    assert len(frame) - p.nbytes <= 4 + 2 + 2 + 1 + 64 + 7 + 17 + 3 + 8 * len(p.shape) + 17 + 4


def test_custom_format_decodes_without_the_registry() -> None:
    fmt = BlockFormat("wire_custom_e3m4_b24", FloatElement(3, 4, bias=5, nan="all_ones"), 24, "bf16", rounding="away")
    x = torch.randn(5, 50)
    p = mxcomm.encode(x, fmt, axis=0)
    with pytest.raises(mxcomm.FormatError):
        mxcomm.get_format(fmt.name)
    q = mxcomm.Packed.from_bytes(p.to_bytes())
    assert q.format == fmt
    assert torch.equal(mxcomm.decode(q), mxcomm.decode(p))


def test_documented_layout() -> None:
    """Rebuild the frame of a known tensor from docs/wire-format.md, field by field."""
    x = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -0.25]], dtype=torch.bfloat16)
    fmt = BlockFormat("doc_fmt", FloatElement(3, 2), 2, "fp16", rounding="zero")
    p = mxcomm.encode(x, fmt, axis=0)
    codes = bytes(p.codes.tolist())
    scales = p.scales.numpy().astype("<f2").tobytes()
    body = b"".join(
        [
            b"MXCP",
            struct.pack("<HH", 1, 0),
            struct.pack("<B", 7) + b"doc_fmt",
            struct.pack("<BBBhBB", 0, 3, 2, 3, 0, 0),  # float, E3M2, bias 3, no inf, nan none
            struct.pack("<IBBBBBQ", 2, 2, 2, 2, 0, 0, 0),  # block 2, fp16, rceil, zero, no tensor scale, no rotation
            struct.pack("<BBB", 1, 2, 0),  # bfloat16, 2 dims, axis 0
            struct.pack("<QQ", 2, 3),
            struct.pack("<QQB", len(codes), len(scales), 0),
            codes,
            scales,
        ]
    )
    assert p.to_bytes() == _crc_fixed(body)
    int_fmt = BlockFormat("doc_int", IntElement(5), 4, "e4m3", tensor_scale=True, rotation_seed=7)
    q = mxcomm.encode(torch.ones(4), int_fmt)
    frame = q.to_bytes()
    head = 8 + 1 + 7
    assert frame[head : head + 7] == struct.pack("<BBBhBB", 1, 5, 0, 0, 0, 0)
    assert frame[head + 7 : head + 24] == struct.pack("<IBBBBBQ", 4, 1, 2, 0, 1, 1, 7)
    assert frame[-8:-4] == struct.pack("<f", float(q.tensor_scale))


# -- hostile input ------------------------------------------------------------------------


def _small_frames() -> list[bytes]:
    xs = torch.tensor([[1.0, -2.0, 0.5, 7.0], [3.0, 0.0, -0.25, math.nan]])
    return [
        mxcomm.encode(xs, "mxfp4").to_bytes(),
        mxcomm.encode(xs, "nvfp4").to_bytes(),
        mxcomm.encode(xs.to(torch.float16), "int4_fp16", axis=0).to_bytes(),
        mxcomm.encode(torch.tensor(2.5), "mxint8").to_bytes(),
        mxcomm.encode(torch.empty(0, 3), "mxfp6_e3m2").to_bytes(),
    ]


def _expect_format_error(data) -> None:
    try:
        mxcomm.Packed.from_bytes(data)
    except mxcomm.FormatError:
        return
    except Exception as exc:  # any other type is a failure, reported with its type
        raise AssertionError(f"from_bytes raised {type(exc).__name__}: {exc}") from exc
    raise AssertionError("from_bytes accepted a corrupted frame")


@pytest.mark.parametrize("frame_index", range(5))
def test_every_single_bit_flip_is_rejected(frame_index: int) -> None:
    frame = _small_frames()[frame_index]
    for byte in range(len(frame)):
        for bit in range(8):
            bad = bytearray(frame)
            bad[byte] ^= 1 << bit
            _expect_format_error(bytes(bad))


@pytest.mark.parametrize("frame_index", range(5))
def test_every_truncation_and_extension_is_rejected(frame_index: int) -> None:
    frame = _small_frames()[frame_index]
    for n in range(len(frame)):
        _expect_format_error(frame[:n])
    for tail in (b"\x00", b"\xff" * 7, frame):
        _expect_format_error(frame + tail)
        _expect_format_error(_refresh_crc(frame[:-4] + tail + b"\x00\x00\x00\x00"))  # CRC fixed up


@pytest.mark.parametrize("frame_index", range(5))
def test_every_header_byte_mutation_with_a_valid_crc(frame_index: int) -> None:
    """Change each header byte (CRC recomputed): FormatError, or a frame that is valid in every respect."""
    frame = _small_frames()[frame_index]
    original = mxcomm.Packed.from_bytes(frame)
    header_len = len(frame) - 4 - original.nbytes
    for pos in range(header_len):
        for value in {0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF, frame[pos] ^ 0x04}:
            if value == frame[pos]:
                continue
            bad = bytearray(frame)
            bad[pos] = value
            _check_mutant(_refresh_crc(bad))


def _check_mutant(data: bytes) -> None:
    try:
        q = mxcomm.Packed.from_bytes(data)
    except mxcomm.FormatError:
        return
    except Exception as exc:
        raise AssertionError(f"from_bytes raised {type(exc).__name__}: {exc}") from exc
    # accepted: it must be a genuine frame of what it describes
    assert q.to_bytes() == data
    y = mxcomm.decode(q, backend="torch")
    assert y.shape == q.shape and y.dtype == q.dtype


@examples(150)
@given(
    frame_index=st.integers(0, 4),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    fix_crc=st.booleans(),
)
def test_random_mutations(frame_index: int, edits: list[tuple[int, int]], fix_crc: bool) -> None:
    frame = bytearray(_small_frames()[frame_index])
    for pos, value in edits:
        frame[pos % len(frame)] = value
    data = _refresh_crc(frame) if fix_crc else bytes(frame)
    if data == _small_frames()[frame_index]:
        return
    if fix_crc:
        _check_mutant(data)
    else:
        _expect_format_error(data)


@given(data=st.binary(max_size=200))
def test_arbitrary_bytes(data: bytes) -> None:
    _check_mutant(data)
    _check_mutant(b"MXCP\x01\x00\x00\x00" + data)
    _check_mutant(_crc_fixed(b"MXCP\x01\x00\x00\x00" + data))


def _frame_with(
    dims: tuple[int, ...], codes_len: int, scales_len: int, payload: bytes = b"", name: bytes = b"mxfp4"
) -> bytes:
    body = b"".join(
        [
            b"MXCP",
            struct.pack("<HH", 1, 0),
            struct.pack("<B", len(name)) + name,
            struct.pack("<BBBhBB", 0, 2, 1, 1, 0, 0),
            struct.pack("<IBBBBBQ", 32, 0, 0, 0, 0, 0, 0),
            struct.pack("<BBB", 0, len(dims), 0),
            struct.pack(f"<{len(dims)}Q", *dims),
            struct.pack("<QQB", codes_len, scales_len, 0),
            payload,
        ]
    )
    return _crc_fixed(body)


def test_consistent_but_huge_lengths_do_not_allocate() -> None:
    # the description is self-consistent but the buffer lacks the bytes: rejected before allocating
    n = 1 << 40
    _expect_format_error(_frame_with((n,), n // 2, n // 32))
    _expect_format_error(_frame_with((1 << 48, 1 << 48), 1 << 63, 1 << 63))
    _expect_format_error(_frame_with((1 << 60,), 2**64 - 1, 2**64 - 1))
    _expect_format_error(_frame_with((32,), 16, 1, b"\x00" * 16))  # one scale byte missing
    mxcomm.Packed.from_bytes(_frame_with((32,), 16, 1, b"\x00" * 17))  # the control frame is valid


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, 0.0, -0.0, 1e-45 * 0])
def test_invalid_tensor_scales_are_rejected(value: float) -> None:
    p = mxcomm.encode(torch.ones(16), "nvfp4")
    frame = bytearray(p.to_bytes())
    frame[-8:-4] = struct.pack("<f", value)
    _expect_format_error(_refresh_crc(frame))


@pytest.mark.parametrize(
    "bad",
    ["MXCP", None, 5, [77, 88], torch.zeros(30, dtype=torch.uint8), bytearray(), b""],
    ids=lambda v: type(v).__name__,
)
def test_non_bytes_and_empty_inputs(bad: object) -> None:
    _expect_format_error(bad)


def test_field_values_out_of_range() -> None:
    frame = mxcomm.encode(torch.ones(3, 5), BlockFormat("f", FloatElement(2, 1), 4, "bf16")).to_bytes()
    name_end = 8 + 1 + 1
    elem, block, tensor = name_end, name_end + 7, name_end + 24

    def patched(offset: int, fmt: str, *values: int) -> bytes:
        data = bytearray(frame)
        struct.pack_into(fmt, data, offset, *values)
        return _refresh_crc(data)

    cases = [
        patched(4, "<H", 2),  # version
        patched(6, "<H", 1),  # flags
        patched(8, "<B", 0),  # empty name
        patched(9, "<B", ord(" ")),  # illegal name character
        patched(9, "<B", 0xC3),  # non-ASCII
        patched(elem, "<B", 2),  # element kind
        patched(elem + 1, "<B", 0),  # ebits 0
        patched(elem + 1, "<B", 9),  # ebits 9
        patched(elem + 2, "<B", 11),  # mbits 11
        patched(elem + 3, "<h", -300),  # bias: max normal far beyond float32
        patched(elem + 5, "<B", 2),  # inf flag
        patched(elem + 5, "<B", 1),  # inf without nan="ieee"
        patched(elem + 6, "<B", 3),  # nan code
        patched(block, "<I", 0),  # block size 0
        patched(block, "<I", (1 << 16) + 1),
        patched(block + 4, "<B", 5),  # scale type
        patched(block + 5, "<B", 0),  # floor is not a float-scale mode
        patched(block + 5, "<B", 4),  # scale mode
        patched(block + 6, "<B", 4),  # rounding
        patched(block + 7, "<B", 2),  # tensor-scale flag
        patched(block + 8, "<B", 2),  # rotation flag
        patched(block + 9, "<Q", 5),  # rotation seed without rotation
        patched(block + 8, "<B", 1),  # rotation with block 4 is legal, but the lengths ... stay; see below
        patched(tensor, "<B", 3),  # dtype
        patched(tensor + 1, "<B", 33),  # ndim
        patched(tensor + 2, "<B", 2),  # axis out of range
        patched(tensor + 3, "<Q", 4),  # a dim that no longer matches the section lengths
    ]
    for data in cases[:22] + cases[23:]:
        _expect_format_error(data)
    _check_mutant(cases[22])  # a rotated variant of the same payload is a legal frame

    int_frame = mxcomm.encode(torch.ones(4), "mxint8").to_bytes()
    e = 8 + 1 + len("mxint8")
    for offset, value in ((e + 1, 1), (e + 1, 9), (e + 2, 1), (e + 5, 1), (e + 6, 1)):
        data = bytearray(int_frame)
        data[offset] = value
        _expect_format_error(_refresh_crc(data))
    data = bytearray(int_frame)
    struct.pack_into("<h", data, e + 3, 1)  # integer elements carry bias 0
    _expect_format_error(_refresh_crc(data))


def test_non_contiguous_memoryview_is_read_or_rejected_cleanly() -> None:
    frame = mxcomm.encode(torch.ones(4), "mxfp4").to_bytes()
    doubled = bytes(b for byte in frame for b in (byte, 0))
    try:
        q = mxcomm.Packed.from_bytes(memoryview(doubled)[::2])  # the frame's bytes, strided
    except mxcomm.FormatError:
        return
    assert q.to_bytes() == frame
