"""The descriptor every rank sends before the payload of a compressed collective.

Payload buffers have fixed sizes computed locally from ``fmt.packed_nbytes``,
so ranks that disagree on format, dtype or shape would post exchanges of
different sizes, which can hang or return garbage. Every collective therefore
starts with an all-gather of one fixed-size descriptor per rank; each rank
checks all of them and, on any disagreement, every rank raises the same
``CollectiveMismatchError`` before a single payload byte is exchanged. All
ranks have then made the same sequence of process-group calls, so the group
stays usable.

Layout (88 bytes, little-endian; version 4)::

    magic 4s "MXC1" | version B | op B | requested algorithm B | planned algorithm B
    dtype B | ndim B | flags H | format fingerprint 8s | gather format fingerprint 8s
    numel Q | shape crc32 I | segment elements Q | format name 16s (truncated, for messages)
    measured call H | has times B | pad x | descriptor s f | payload s f | encode s f
    decode s f | wait s f

The gather format fingerprint is that of two-shot's all-gather phase
(``all_reduce(..., gather_fmt=...)``); a call without one sends the format's
own fingerprint there (the gather phase then runs in the format), so the two
spellings of the same call agree. It is compared like the format's. Version 3
(80 bytes) had no such field.

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

Received descriptors are untrusted input: a wrong magic or version, unknown
op, algorithm, dtype or flag codes, or a plan that contradicts the request
(``parse_descriptors``, ``check_plan``) raise ``CollectiveMismatchError`` naming
the rank. Every rank parses the same gathered bytes, so every rank reaches the
same verdict; nothing is allocated from a received size.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from mxcomm.collectives.algorithms import ALL_REDUCE_ALGORITHMS, COMPRESSED, REQUESTABLE, Algorithm
from mxcomm.collectives.transport import DESCRIPTOR_PHASE, Transport
from mxcomm.errors import CollectiveMismatchError, FormatError, MxcommError
from mxcomm.formats import BlockFormat
from mxcomm.kernels.dtypes import INPUT_DTYPES, dtype_code
from mxcomm.kernels.frame import format_fields

MAGIC = b"MXC1"
VERSION = 4
DESCRIPTOR_NBYTES = 88
_STRUCT = struct.Struct("<4sBBBBBBH8s8sQIQ16sHBxfffff")
assert _STRUCT.size == DESCRIPTOR_NBYTES

OPS: dict[str, int] = {"all_reduce": 1, "all_gather": 2, "reduce_scatter": 3, "outlier_channels": 4}
FLAG_INVALID = 1
FLAG_EXPLORE = 2  # the planned algorithm is an exploration of auto (rank 0's flag is followed)
FLAG_STRICT = 4  # strict=True: the call ends with the range check (every rank must agree)
_KNOWN_FLAGS = FLAG_INVALID | FLAG_EXPLORE | FLAG_STRICT
_OP_NAMES = {v: k for k, v in OPS.items()}
_DTYPE_NAMES = {i: str(d).replace("torch.", "") for i, d in enumerate(INPUT_DTYPES)}
_NO_CODE = 255  # an algorithm or dtype field of an invalid descriptor
_ALGORITHM_CODES = frozenset(a.code for a in Algorithm)


def format_fingerprint(fmt: BlockFormat) -> bytes:
    """8 bytes that identify what a format encodes, independent of its registered name.

    Two formats with equal fingerprints produce identical payloads for the same
    input, so a renamed copy of a format is not a mismatch.
    """
    # the frame's canonical description of the format, without the name
    return hashlib.blake2b(format_fields(fmt), digest_size=8).digest()


def pair_fingerprint(fingerprint: bytes, gather_fingerprint: bytes) -> bytes:
    """8 bytes identifying a two-shot call's pair of formats (the format, then the gather format)."""
    return hashlib.blake2b(fingerprint + gather_fingerprint, digest_size=8).digest()


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

    def plausible(self) -> bool:
        """Finite, non-negative times below a day: anything else (a corrupted or hostile peer) is not learnt from."""
        values = (self.descriptor_s, self.payload_s, self.encode_s, self.decode_s, self.wait_s)
        return all(math.isfinite(v) and 0.0 <= v < 86400.0 for v in values)


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
    strict: bool = False
    gather_fingerprint: bytes | None = None  # None: the format's own (no separate gather format)

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
            (FLAG_INVALID if self.invalid else 0) | (FLAG_EXPLORE if self.explored else 0)
            | (FLAG_STRICT if self.strict else 0),
            self.fingerprint,
            self.fingerprint if self.gather_fingerprint is None else self.gather_fingerprint,
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
    gather_fingerprint: bytes
    numel: int
    shape_crc: int
    segment_elems: int
    format_name: str
    times: CallTimes | None = None

    @property
    def explored(self) -> bool:
        return bool(self.flags & FLAG_EXPLORE)

    @property
    def strict(self) -> bool:
        return bool(self.flags & FLAG_STRICT)

    @classmethod
    def unpack(cls, data: bytes) -> WireDescriptor:
        if len(data) != DESCRIPTOR_NBYTES:
            raise FormatError(f"descriptor must be {DESCRIPTOR_NBYTES} bytes, got {len(data)}")
        (magic, version, op, req, planned, dtype, ndim, flags, fp, gather_fp, numel, crc, seg, name,
         t_seq, t_has, *t_values) = _STRUCT.unpack(data)
        if magic != MAGIC:
            # Not an mxcomm descriptor at all: the peer is running a different collective.
            raise CollectiveMismatchError(
                f"received bytes {magic!r} where an mxcomm collective descriptor was expected: "
                "ranks are not running the same collective call"
            )
        times = CallTimes(t_seq, *t_values) if t_has else None
        return cls(version, op, req, planned, dtype, ndim, flags, fp, gather_fp, numel, crc, seg,
                   name.rstrip(b"\0").decode(errors="replace"), times)

    def problems(self) -> list[str]:
        """What makes this descriptor unusable as a peer's statement (empty: well formed).

        A descriptor flagged invalid carries placeholder fields; only its header is checked.
        """
        if self.version != VERSION:
            return [f"descriptor version {self.version} (this mxcomm speaks {VERSION}: ranks run different versions)"]
        found = []
        if self.op not in _OP_NAMES:
            found.append(f"unknown op code {self.op}")
        if self.flags & ~_KNOWN_FLAGS:
            found.append(f"unknown flags 0x{self.flags:04x}")
        if self.flags & FLAG_INVALID:
            return found
        for what, code in (("requested algorithm", self.requested), ("planned algorithm", self.planned)):
            if code not in _ALGORITHM_CODES:
                found.append(f"unknown {what} code {code}")
        if self.dtype not in _DTYPE_NAMES:
            found.append(f"unknown dtype code {self.dtype}")
        return found

    def describe(self) -> str:
        # an outlier_channels descriptor carries its channel set where the others carry the format
        what = "channels" if self.op == OPS["outlier_channels"] else "format"
        gather = "" if self.gather_fingerprint == self.fingerprint else f" gather_format=#{self.gather_fingerprint.hex()}"
        return (
            f"op={_OP_NAMES.get(self.op, self.op)} algorithm={_algorithm_label(self.requested)} "
            f"{what}={self.format_name}#{self.fingerprint.hex()}{gather} "
            f"dtype={_DTYPE_NAMES.get(self.dtype, self.dtype)} "
            f"ndim={self.ndim} numel={self.numel} shape_crc={self.shape_crc:08x}" + (" strict" if self.strict else "")
        )


def parse_descriptors(raw: bytes, n: int) -> list[WireDescriptor]:
    """The ``n`` descriptors of an all-gather's output; CollectiveMismatchError naming any malformed one."""
    received, bad = [], []
    for rank in range(n):
        try:
            d = WireDescriptor.unpack(raw[rank * DESCRIPTOR_NBYTES : (rank + 1) * DESCRIPTOR_NBYTES])
        except CollectiveMismatchError as e:
            bad.append(f"  rank {rank}: {e}")
            continue
        received.append(d)
        bad.extend(f"  rank {rank}: {p}" for p in d.problems())
    if bad:
        raise CollectiveMismatchError(
            "malformed collective descriptor(s); nothing was exchanged beyond the descriptors:\n" + "\n".join(bad)
        )
    return received


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
    fields = ["version", "op", "requested", "dtype", "ndim", "numel", "shape_crc", "strict"]
    if compare_format:
        fields += ["fingerprint", "gather_fingerprint"]
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


# What each op may request and run (all_reduce: any planned algorithm, the requested one unless auto).
_PLANS: dict[str, tuple[tuple[Algorithm, ...], tuple[Algorithm, ...]]] = {
    "all_reduce": (REQUESTABLE, ALL_REDUCE_ALGORITHMS),
    "all_gather": ((Algorithm.ALLGATHER,), (Algorithm.ALLGATHER,)),
    "reduce_scatter": ((Algorithm.ALL_TO_ALL,), (Algorithm.ALL_TO_ALL,)),
    "outlier_channels": (REQUESTABLE, REQUESTABLE),
}


def check_plan(agreed: WireDescriptor) -> None:
    """Raise CollectiveMismatchError unless rank 0's plan (which every rank runs) fits its request.

    The planned algorithm and the segment length are taken from rank 0 without
    comparison, so they are checked here (on every rank, with the same verdict).
    """
    op = _OP_NAMES[agreed.op]
    requestable, runnable = _PLANS[op]
    requested, planned = Algorithm.from_code(agreed.requested), Algorithm.from_code(agreed.planned)
    problem = None
    if requested not in requestable or planned not in runnable:
        problem = f"{op} cannot request {requested.value} and run {planned.value}"
    elif requested != Algorithm.AUTO and planned != requested:
        problem = f"requested {requested.value} but planned {planned.value}"
    elif op == "all_reduce" and planned in COMPRESSED and agreed.segment_elems < 1:
        problem = f"segment length {agreed.segment_elems}"
    if problem:
        raise CollectiveMismatchError(f"rank 0 sent an impossible plan ({problem}): {agreed.describe()}")


def exchange_descriptors(desc: Descriptor, device: torch.device, transport: Transport) -> list[WireDescriptor]:
    """All-gather every rank's descriptor (the call's first exchange) and parse them."""
    inp = desc.to_tensor(device)
    out = torch.empty(transport.n * DESCRIPTOR_NBYTES, dtype=torch.uint8, device=device)
    transport.all_gather(out, inp, DESCRIPTOR_PHASE).wait()
    return parse_descriptors(out.cpu().numpy().tobytes(), transport.n)


def agree(
    desc: Descriptor,
    local_error: MxcommError | None,
    device: torch.device,
    transport: Transport,
    verify: bool,
    *,
    timed: Callable[[], AbstractContextManager[object]] = nullcontext,
    on_received: Callable[[list[WireDescriptor]], None] | None = None,
) -> WireDescriptor:
    """Exchange descriptors; raise on every rank unless all agree. Returns rank 0's descriptor.

    ``local_error`` is this rank's own argument error (``desc`` is then flagged
    invalid): it is raised here, after the exchange, so the other ranks learn of it.
    With ``verify=False`` nothing is exchanged and the local descriptor is used:
    the caller vouches that all ranks agree (a disagreement is then undefined
    behaviour: wrong results or a hang until the group timeout, as with plain
    torch.distributed). ``timed`` wraps the exchange (the call's timer), ``on_received`` sees every
    parsed descriptor before any verdict (the online cost estimate learns from them).
    """
    if not verify:
        if local_error is not None:
            raise local_error
        return WireDescriptor.unpack(desc.pack())
    with timed():
        received = exchange_descriptors(desc, device, transport)
    if on_received is not None:
        on_received(received)
    if local_error is not None:
        raise local_error
    # a verdict from the gathered bytes alone, so that every rank reaches the same one
    check_descriptors(received, compare_format=received[0].requested != Algorithm.NONE.code)
    check_plan(received[0])
    return received[0]


def invalid_descriptor(op: str, requested: str) -> Descriptor:
    """The descriptor a rank sends when its own arguments are invalid (flagged; placeholder fields)."""
    return Descriptor(op, requested if requested in tuple(Algorithm) else "none", "none", torch.float32, (), b"\0" * 8,
                      "", 0, invalid=True)


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
