"""Fuzzing the descriptor handshake: whatever a peer sends, every rank gets a verdict, never a crash.

The handshake's verdict is a function of the gathered bytes only (every rank
parses the same all-gather output), so a fake transport that hands ``agree``
adversarial bytes stands for any rank. Malformed, truncated-looking or
hostile descriptors must raise ``CollectiveMismatchError`` (or ``FormatError``)
-- never another exception, a hang or an allocation sized by a received
field -- and whatever is accepted must be a plan every rank can run.
(tests/collectives/test_handles.py sends corrupted descriptors between real ranks.)
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mxcomm
from mxcomm.collectives import handshake
from mxcomm.collectives.algorithms import ALL_REDUCE_ALGORITHMS, COMPRESSED, Algorithm
from mxcomm.collectives.handshake import (
    DESCRIPTOR_NBYTES,
    MAGIC,
    VERSION,
    Descriptor,
    WireDescriptor,
    agree,
    format_fingerprint,
    invalid_descriptor,
    parse_descriptors,
)
from mxcomm.errors import CollectiveMismatchError, FormatError

_CPU = torch.device("cpu")


class _Exchange:
    def wait(self) -> None:
        pass


class _FakeTransport:
    """Hands back ``gathered`` as the descriptor all-gather's output, whatever this rank sent."""

    def __init__(self, gathered: bytes) -> None:
        self.n = len(gathered) // DESCRIPTOR_NBYTES
        self.gathered = gathered

    def all_gather(self, out: torch.Tensor, inp: torch.Tensor, phase: str) -> _Exchange:
        out.copy_(torch.frombuffer(bytearray(self.gathered), dtype=torch.uint8))
        return _Exchange()


_FMT = mxcomm.get_format("mxfp4_e2m1")
_CALLS = [
    Descriptor("all_reduce", "two_shot", "two_shot", torch.bfloat16, (37, 129), format_fingerprint(_FMT), _FMT.name,
               4096),
    Descriptor("all_reduce", "auto", "allgather", torch.float32, (1000,), format_fingerprint(_FMT), _FMT.name, 1024),
    Descriptor("all_reduce", "none", "none", torch.float16, (8, 8), b"\0" * 8, "", 0),
    Descriptor("all_gather", "allgather", "allgather", torch.bfloat16, (7, 45), format_fingerprint(_FMT), _FMT.name, 0),
    Descriptor("reduce_scatter", "all_to_all", "all_to_all", torch.float32, (64,), format_fingerprint(_FMT),
               _FMT.name, 0),
    Descriptor("outlier_channels", "auto", "auto", torch.bfloat16, (6, 96), b"\1" * 8, "4 channels", 4),
]


def _verdict(gathered: bytes, local: Descriptor) -> WireDescriptor | Exception:
    try:
        return agree(local, None, _CPU, _FakeTransport(gathered), verify=True)  # type: ignore[arg-type]
    except (CollectiveMismatchError, FormatError) as e:
        return e


def _check_accepted(agreed: WireDescriptor, gathered: bytes) -> None:
    """What ``agree`` accepts is a well-formed, runnable plan that every rank's descriptor agrees with."""
    assert agreed.problems() == []
    requested, planned = Algorithm.from_code(agreed.requested), Algorithm.from_code(agreed.planned)
    if agreed.op == 1:  # all_reduce
        assert planned in ALL_REDUCE_ALGORITHMS
        assert requested in (Algorithm.AUTO, planned)
        if planned in COMPRESSED:
            assert agreed.segment_elems >= 1
    else:
        assert requested == planned
    for i in range(len(gathered) // DESCRIPTOR_NBYTES):
        other = WireDescriptor.unpack(gathered[i * DESCRIPTOR_NBYTES : (i + 1) * DESCRIPTOR_NBYTES])
        for field in ("version", "op", "requested", "dtype", "ndim", "numel", "shape_crc"):
            assert getattr(other, field) == getattr(agreed, field)


@given(
    call=st.sampled_from(range(len(_CALLS))),
    n=st.integers(1, 4),
    edits=st.lists(st.tuples(st.integers(0, 3), st.integers(0, DESCRIPTOR_NBYTES - 1), st.integers(0, 255)),
                   max_size=6),
)
def test_mutated_descriptors_get_a_verdict(call, n, edits):
    local = _CALLS[call]
    gathered = bytearray(local.pack() * n)
    for rank, offset, value in edits:
        gathered[(rank % n) * DESCRIPTOR_NBYTES + offset] = value
    verdict = _verdict(bytes(gathered), local)
    if isinstance(verdict, WireDescriptor):
        _check_accepted(verdict, bytes(gathered))
    # the same bytes give the same verdict, whichever rank's local call judges them
    again = _verdict(bytes(gathered), _CALLS[(call + 1) % len(_CALLS)])
    assert type(again) is type(verdict) and str(again) == str(verdict)


@given(n=st.integers(1, 4), data=st.data())
def test_garbage_descriptors_get_a_verdict(n, data):
    gathered = data.draw(st.binary(min_size=n * DESCRIPTOR_NBYTES, max_size=n * DESCRIPTOR_NBYTES))
    if data.draw(st.booleans()):  # keep the magic and version, so the fields behind them are reached
        size = DESCRIPTOR_NBYTES
        gathered = b"".join(MAGIC + bytes([VERSION]) + gathered[i * size + 5 : (i + 1) * size] for i in range(n))
    verdict = _verdict(gathered, _CALLS[0])
    if isinstance(verdict, WireDescriptor):
        _check_accepted(verdict, gathered)
    else:
        assert isinstance(verdict, CollectiveMismatchError)


_FIELDS = handshake._STRUCT  # the descriptor's fields, in order


@pytest.mark.parametrize("field, value, message", [
    (1, VERSION + 1, f"descriptor version {VERSION + 1}"),
    (2, 200, "unknown op code 200"),
    (3, 99, "unknown requested algorithm code 99"),
    (4, 77, "unknown planned algorithm code 77"),
    (5, 9, "unknown dtype code 9"),
    (7, 0x8001, "unknown flags"),
])
def test_malformed_fields_are_named(field, value, message):
    good = list(_FIELDS.unpack(_CALLS[0].pack()))
    bad = list(good)
    bad[field] = value
    gathered = _FIELDS.pack(*good) + _FIELDS.pack(*bad)
    with pytest.raises(CollectiveMismatchError, match=f"rank 1: {message}"):
        parse_descriptors(gathered, 2)


@pytest.mark.parametrize("planned, segment, message", [
    ("allgather", 4096, "requested two_shot but planned allgather"),
    ("two_shot", 0, "segment length 0"),
    ("all_to_all", 4096, "cannot request two_shot and run all_to_all"),
])
def test_an_impossible_plan_from_rank0_is_rejected(planned, segment, message):
    d = _CALLS[0]
    rank0 = Descriptor(d.op, d.requested, planned, d.dtype, d.shape, d.fingerprint, d.format_name, segment)
    verdict = _verdict(rank0.pack() + d.pack(), d)
    assert isinstance(verdict, CollectiveMismatchError) and message in str(verdict)


def test_huge_fields_allocate_nothing():
    # the only buffer is n x DESCRIPTOR_NBYTES: received sizes are compared, never used to allocate
    d = _CALLS[1]
    fields = list(_FIELDS.unpack(d.pack()))
    fields[10] = 2**64 - 1  # numel
    fields[12] = 2**64 - 1  # segment elements
    verdict = _verdict(_FIELDS.pack(*fields) * 3, d)
    assert isinstance(verdict, WireDescriptor) and verdict.numel == 2**64 - 1  # consistent, so accepted
    assert isinstance(_verdict(d.pack() + _FIELDS.pack(*fields), d), CollectiveMismatchError)


def test_a_different_gather_format_is_a_mismatch():
    d = _CALLS[0]
    other = Descriptor(d.op, d.requested, d.planned, d.dtype, d.shape, d.fingerprint, d.format_name,
                       d.segment_elems, gather_fingerprint=format_fingerprint(mxcomm.get_format("mxfp6_e2m3")))
    # no gather format = the format's own: the same call
    same = Descriptor(d.op, d.requested, d.planned, d.dtype, d.shape, d.fingerprint, d.format_name,
                      d.segment_elems, gather_fingerprint=d.fingerprint)
    assert isinstance(_verdict(d.pack() + same.pack(), d), WireDescriptor)
    verdict = _verdict(d.pack() + other.pack(), d)
    assert isinstance(verdict, CollectiveMismatchError) and "gather_fingerprint" in str(verdict)


def test_an_invalid_rank_is_named_and_its_placeholder_fields_are_not_judged():
    bad = invalid_descriptor("all_reduce", "two_shot")
    verdict = _verdict(_CALLS[0].pack() + bad.pack() + _CALLS[0].pack(), _CALLS[0])
    assert isinstance(verdict, CollectiveMismatchError) and "rank(s) [1] rejected their arguments" in str(verdict)


def test_a_wrong_length_is_a_format_error():
    with pytest.raises(FormatError):
        WireDescriptor.unpack(b"\0" * 63)
