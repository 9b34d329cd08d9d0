"""The descriptor every rank sends before the payload of a compressed collective.

Payload buffers have fixed sizes computed locally from ``fmt.packed_nbytes``,
so ranks that disagree on format, dtype or shape would post exchanges of
different sizes, which can hang or return garbage. Every collective therefore
starts with an all-gather of one fixed-size descriptor per rank; each rank
checks all of them and, on any disagreement, every rank raises the same
``CollectiveMismatchError`` before a single payload byte is exchanged. All
ranks have then made the same sequence of process-group calls, so the group
stays usable.

Layout (80 bytes, little-endian)::

    magic 4s "MXC1" | version B | op B | requested algorithm B | planned algorithm B
    dtype B | ndim B | flags H | format fingerprint 8s | numel Q | shape crc32 I
    segment elements Q | format name 16s (truncated, for messages)
    measured call H | has times B | pad x | descriptor s f | payload s f | encode s f
    decode s f | wait s f

The last 24 bytes carry this rank's phase times of its previous measured
all-reduce on the group (:class:`CallTimes`): the descriptor is all-gathered
anyway, so every rank receives every rank's times and updates the same
estimate of the link and codec costs from the same numbers, with no extra
exchange (mxcomm/collectives/estimator.py). They are not compared.

A rank whose own arguments are invalid (unknown format, unsupported dtype,
wrong sizes, an unusable codec backend) still sends a descriptor, flagged
``FLAG_INVALID``: it then raises its own error (``FormatError``,
``BackendUnavailableError``) and every other rank a ``CollectiveMismatchError``
naming it, instead of leaving them blocked in the exchange.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mxcomm.collectives.algorithms import Algorithm
from mxcomm.errors import CollectiveMismatchError, FormatError
from mxcomm.formats import BlockFormat
from mxcomm.kernels.dtypes import INPUT_DTYPES, dtype_code
from mxcomm.kernels.frame import format_fields

MAGIC = b"MXC1"
VERSION = 3
DESCRIPTOR_NBYTES = 80
_STRUCT = struct.Struct("<4sBBBBBBH8sQIQ16sHBxfffff")
assert _STRUCT.size == DESCRIPTOR_NBYTES

OPS: dict[str, int] = {"all_reduce": 1, "all_gather": 2, "reduce_scatter": 3}
FLAG_INVALID = 1
FLAG_EXPLORE = 2  # the planned algorithm is an exploration of auto (rank 0's flag is followed)
_OP_NAMES = {v: k for k, v in OPS.items()}
_DTYPE_NAMES = {i: str(d).replace("torch.", "") for i, d in enumerate(INPUT_DTYPES)}
_NO_CODE = 255  # an algorithm or dtype field of an invalid descriptor


def format_fingerprint(fmt: BlockFormat) -> bytes:
    """8 bytes that identify what a format encodes, independent of its registered name.

    Two formats with equal fingerprints produce identical payloads for the same
    input, so a renamed copy of a format is not a mismatch.
    """
    # the frame's canonical description of the format, without the name
    return hashlib.blake2b(format_fields(fmt), digest_size=8).digest()


def shape_crc(shape: Sequence[int]) -> int:
    dims = struct.pack(f"<{len(shape)}q", *shape)
    return zlib.crc32(struct.pack("<B", len(shape)) + dims)


@dataclass(frozen=True)
class CallTimes:
    """One rank's phase times (seconds) of one measured all-reduce, as carried by a later descriptor.

    ``seq`` numbers the group's measured calls (mod 2^16), so ranks can tell that
    they report the same call. ``wait_s`` is the time spent blocked on payload
    exchanges; ``payload_s`` runs from the end of the descriptor exchange to the
    result (encode + decode + wait + the rest). Travels as float32.
    """

    seq: int
    descriptor_s: float
    payload_s: float
    encode_s: float
    decode_s: float
    wait_s: float


@dataclass(frozen=True)
class Descriptor:
    """What one rank is about to do, as sent on the wire."""

    op: str
    requested: str
    planned: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    fingerprint: bytes
    format_name: str
    segment_elems: int
    invalid: bool = False
    explored: bool = False
    times: CallTimes | None = None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def pack(self) -> bytes:
        t = self.times
        timing = (t.seq & 0xFFFF, 1, t.descriptor_s, t.payload_s, t.encode_s, t.decode_s, t.wait_s) if t else (
            0, 0, 0.0, 0.0, 0.0, 0.0, 0.0)
        return _STRUCT.pack(
            MAGIC,
            VERSION,
            OPS[self.op],
            _algorithm_code(self.requested),
            _algorithm_code(self.planned),
            dtype_code(self.dtype) if self.dtype in INPUT_DTYPES else _NO_CODE,
            min(len(self.shape), 255),
            (FLAG_INVALID if self.invalid else 0) | (FLAG_EXPLORE if self.explored else 0),
            self.fingerprint,
            self.numel,
            shape_crc(self.shape),
            self.segment_elems,
            self.format_name.encode()[:16],
            *timing,
        )

    def to_tensor(self, device: torch.device) -> torch.Tensor:
        return torch.frombuffer(bytearray(self.pack()), dtype=torch.uint8).to(device)


@dataclass(frozen=True)
class WireDescriptor:
    """A descriptor as received: the fields that can be compared (shape only as numel + crc)."""

    version: int
    op: int
    requested: int
    planned: int
    dtype: int
    ndim: int
    flags: int
    fingerprint: bytes
    numel: int
    shape_crc: int
    segment_elems: int
    format_name: str
    times: CallTimes | None = None

    @property
    def explored(self) -> bool:
        return bool(self.flags & FLAG_EXPLORE)

    @classmethod
    def unpack(cls, data: bytes) -> WireDescriptor:
        if len(data) != DESCRIPTOR_NBYTES:
            raise FormatError(f"descriptor must be {DESCRIPTOR_NBYTES} bytes, got {len(data)}")
        (magic, version, op, req, planned, dtype, ndim, flags, fp, numel, crc, seg, name,
         t_seq, t_has, *t_values) = _STRUCT.unpack(data)
        if magic != MAGIC:
            # Not an mxcomm descriptor at all: the peer is running a different collective.
            raise CollectiveMismatchError(
                f"received bytes {magic!r} where an mxcomm collective descriptor was expected: "
                "ranks are not running the same collective call"
            )
        times = CallTimes(t_seq, *t_values) if t_has else None
        return cls(version, op, req, planned, dtype, ndim, flags, fp, numel, crc, seg,
                   name.rstrip(b"\0").decode(errors="replace"), times)

    def describe(self) -> str:
        return (
            f"op={_OP_NAMES.get(self.op, self.op)} algorithm={_algorithm_label(self.requested)} "
            f"format={self.format_name}#{self.fingerprint.hex()} dtype={_DTYPE_NAMES.get(self.dtype, self.dtype)} "
            f"ndim={self.ndim} numel={self.numel} shape_crc={self.shape_crc:08x}"
        )


def check_descriptors(received: list[WireDescriptor], *, compare_format: bool) -> None:
    """Raise CollectiveMismatchError unless every rank's descriptor agrees with rank 0's.

    Every rank runs this on the same list, so every rank reaches the same verdict.
    """
    invalid = [r for r, d in enumerate(received) if d.flags & FLAG_INVALID]
    if invalid:
        raise CollectiveMismatchError(
            f"rank(s) {invalid} rejected their arguments to this collective (see the error raised there); "
            "no payload was exchanged"
        )
    ref = received[0]
    fields = ["version", "op", "requested", "dtype", "ndim", "numel", "shape_crc"]
    if compare_format:
        fields.append("fingerprint")
    bad = []
    for rank, d in enumerate(received[1:], start=1):
        diff = [f for f in fields if getattr(d, f) != getattr(ref, f)]
        if diff:
            bad.append((rank, diff, d))
    if bad:
        lines = [f"  rank 0: {ref.describe()}"]
        for rank, diff, d in bad:
            lines.append(f"  rank {rank}: {d.describe()}  (differs in {', '.join(diff)})")
        raise CollectiveMismatchError(
            "ranks disagree on a compressed collective; nothing was exchanged beyond the descriptors:\n"
            + "\n".join(lines)
        )


def _algorithm_code(name: str) -> int:
    try:
        return Algorithm.parse(name).code
    except FormatError:
        return _NO_CODE


def _algorithm_label(code: int) -> str:
    try:
        return Algorithm.from_code(code).value
    except FormatError:
        return str(code)


def algorithm_name(code: int) -> Algorithm:
    return Algorithm.from_code(code, "descriptor algorithm")
