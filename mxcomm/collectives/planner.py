"""Wire-byte formulas, the alpha-beta cost model, the ``auto`` planner and ``calibrate``.

The same functions compute the bytes a call puts on the wire (for the
accounting) and the bytes the planner prices, so the planner can never price
a different exchange than the one that runs.

Model (one rank's view; every rank sends at the same time, so ``beta`` is
seconds per byte *per rank* under that load -- on a shared link it already
includes the sharing; ``alpha`` is the latency of one collective call, see
``CostModel``):

* ``none``      ring all-reduce: ``alpha + 2(n-1)/n S beta``
* ``allgather`` encode once, all-gather, decode n shards:
  ``alpha + (n-1) P beta + enc(N) + dec(n N)``
* ``two_shot``  all-to-all of the n-1 chunks other ranks own, decode-sum plus the
  own chunk, re-encode, all-gather: ``2 alpha + 2(n-1) P_chunk beta
  + enc((n-1)N/n) + dec((n-1)N/n) + enc(N/n) + dec(N)``

with ``S`` the logical bytes, ``N`` the element count, ``P`` the packed bytes
(``fmt.packed_nbytes``). Every algorithm, ``none`` included, is preceded by
the same descriptor all-gather, which therefore drops out of the comparison.
When a message is cut into pipeline segments, communication of one segment
overlaps the codec work of the others: the compressed time becomes
``latency + max(comm, codec) + codec / segments`` (the first encode and last
decode cannot overlap anything).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from mxcomm.collectives.algorithms import ALL_REDUCE_ALGORITHMS, COMPRESSED
from mxcomm.collectives.handshake import DESCRIPTOR_NBYTES
from mxcomm.collectives.transport import all_gather_bytes, group_device
from mxcomm.errors import ArgumentTypeError, FormatError
from mxcomm.formats import BlockFormat, get_format
from mxcomm.kernels import Packed, decode_sum, encode

log = logging.getLogger("mxcomm.collectives")


# Pipeline segment (elements) for large compressed all-reduces. Big enough that
# per-call codec overhead stays small, small enough that a 16 MiB bf16 message
# is cut into pieces whose transfers overlap the codec work of the others
# (1M and 2M elements measured alike at 1 Gbit/s; 8M, i.e. no pipelining, was
# 1.3-1.8x slower: docs/performance.md).
DEFAULT_SEGMENT_ELEMS = 1 << 20


# -- exact wire bytes ------------------------------------------------------------------------------


def segment_bounds(numel: int, segment_elems: int) -> list[tuple[int, int]]:
    """[start, stop) of each pipeline segment of a flat tensor of ``numel`` elements."""
    if numel == 0:
        return []
    seg = max(1, segment_elems)
    return [(s, min(numel, s + seg)) for s in range(0, numel, seg)]


def chunk_elems(length: int, world_size: int, block_size: int) -> int:
    """Elements per two-shot chunk: ceil(length / n) rounded up to whole blocks.

    Chunks start on block boundaries, so only the last non-empty chunk has a
    partial block, and a chunk's blocks are the flat tensor's blocks.
    """
    per_rank = -(-length // world_size)
    return -(-per_rank // block_size) * block_size


def chunk_bounds(length: int, world_size: int, block_size: int) -> list[tuple[int, int]]:
    c = chunk_elems(length, world_size, block_size)
    return [(min(length, r * c), min(length, (r + 1) * c)) for r in range(world_size)]


def payload_nbytes(fmt: BlockFormat, numel: int) -> int:
    """Bytes of the payload of a flat tensor of ``numel`` elements (0 for an empty one)."""
    return fmt.packed_nbytes((numel,)) if numel > 0 else 0


def two_shot_slot_nbytes(fmt: BlockFormat, length: int, world_size: int) -> int:
    """Fixed slot size of one two-shot chunk: the payload of a full chunk (shorter ones are zero-padded)."""
    return payload_nbytes(fmt, chunk_elems(length, world_size, fmt.block_size))


@dataclass(frozen=True)
class WireBytes:
    logical: int
    sent: int
    received: int


def all_reduce_logical_bytes(numel: int, elem_size: int, world_size: int) -> int:
    """What a bandwidth-optimal (ring) uncompressed all-reduce sends per rank: 2(n-1)/n S (floored)."""
    return 2 * (world_size - 1) * numel * elem_size // world_size


def all_reduce_wire_bytes(
    algorithm: str, fmt: BlockFormat | None, numel: int, elem_size: int, world_size: int, segment_elems: int
) -> WireBytes:
    """Per-rank bytes of one ``all_reduce`` call, descriptor included."""
    n = world_size
    logical = all_reduce_logical_bytes(numel, elem_size, n)
    desc = (n - 1) * DESCRIPTOR_NBYTES
    if algorithm == "none":
        return WireBytes(logical, desc + logical, desc + logical)
    assert fmt is not None
    body = 0
    for s0, s1 in segment_bounds(numel, segment_elems):
        if algorithm == "allgather":
            body += (n - 1) * payload_nbytes(fmt, s1 - s0)
        elif algorithm == "two_shot":
            body += 2 * (n - 1) * two_shot_slot_nbytes(fmt, s1 - s0, n)
        else:
            raise FormatError(f"unknown all_reduce algorithm {algorithm!r}")
    return WireBytes(logical, desc + body, desc + body)


def all_gather_wire_bytes(fmt: BlockFormat, numel: int, elem_size: int, world_size: int) -> WireBytes:
    n = world_size
    sent = (n - 1) * (DESCRIPTOR_NBYTES + payload_nbytes(fmt, numel))
    return WireBytes((n - 1) * numel * elem_size, sent, sent)


def reduce_scatter_wire_bytes(fmt: BlockFormat, out_numel: int, elem_size: int, world_size: int) -> WireBytes:
    n = world_size
    sent = (n - 1) * (DESCRIPTOR_NBYTES + payload_nbytes(fmt, out_numel))
    return WireBytes((n - 1) * out_numel * elem_size, sent, sent)


# -- cost model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodecCost:
    """Seconds of codec work: ``call_s`` per encode/decode call plus a per-element cost.

    Attributes:
        encode_s_per_elem: Seconds per element encoded.
        decode_s_per_elem: Seconds per element decoded (and summed, as ``decode_sum`` does).
        call_s: Fixed seconds per encode or decode call.
    """

    encode_s_per_elem: float
    decode_s_per_elem: float
    call_s: float = 50e-6

    def encode(self, numel: int, calls: int = 1) -> float:
        return calls * self.call_s + numel * self.encode_s_per_elem

    def decode(self, numel: int, calls: int = 1) -> float:
        return calls * self.call_s + numel * self.decode_s_per_elem


@dataclass(frozen=True)
class CostModel:
    """Constants of the planner's alpha-beta model (what ``algorithm="auto"`` decides with).

    Build one by hand, or measure one on the live group with :func:`calibrate`;
    :func:`set_cost_model` installs it for a group.

    Attributes:
        alpha: Latency of one collective call in seconds (not of one ring step: on gloo
            over loopback a tiny all-reduce, 2(n-1) ring steps, and a tiny all-gather,
            n-1 steps, take the same time within noise -- the cost is waking the ranks
            up, not the steps; docs/collectives.md).
        beta: Seconds per byte one rank sends while all ranks send.
        default_codec: Codec cost of formats not in ``codec``.
        codec: Per-format codec costs, by format name.
        min_gain: A compressed algorithm is chosen only if it is predicted at least this
            fraction faster than ``none`` (the model is approximate, and losing to the
            baseline is worse than missing a small win).
        source: Where the numbers came from (``"default"``, ``"calibrated"``, ``"given"``).
    """

    alpha: float = 50e-6
    beta: float = 8 / 10e9
    default_codec: CodecCost = field(default_factory=lambda: CodecCost(6e-9, 6e-9, 100e-6))
    codec: dict[str, CodecCost] = field(default_factory=dict)
    min_gain: float = 0.1
    source: str = "default"

    def codec_for(self, fmt: BlockFormat) -> CodecCost:
        """The codec cost of ``fmt`` (``default_codec`` unless ``codec`` has its name)."""
        return self.codec.get(fmt.name, self.default_codec)

    def with_codec(self, fmt: BlockFormat | str, cost: CodecCost) -> CostModel:
        """A copy of this model with ``cost`` as the codec cost of ``fmt``.

        Raises:
            FormatError: ``fmt`` is not a format.
        """
        name = get_format(fmt).name
        return replace(self, codec={**self.codec, name: cost})

    def predict(
        self,
        algorithm: str,
        fmt: BlockFormat,
        numel: int,
        elem_size: int,
        world_size: int,
        segment_elems: int = DEFAULT_SEGMENT_ELEMS,
    ) -> float:
        """Predicted seconds of one ``all_reduce`` (the descriptor exchange excluded: every algorithm pays it).

        Args:
            algorithm: ``"none"``, ``"allgather"`` or ``"two_shot"``.
            fmt: The format.
            numel: Elements of the tensor.
            elem_size: Bytes per element of the tensor's dtype.
            world_size: Ranks in the group.
            segment_elems: Pipeline segment length.

        Returns:
            Seconds.

        Raises:
            FormatError: unknown ``algorithm``.
        """
        n = world_size
        if n == 1 and algorithm == "none":
            return 0.0
        wire = all_reduce_wire_bytes(algorithm, fmt, numel, elem_size, n, segment_elems)
        comm = (wire.sent - (n - 1) * DESCRIPTOR_NBYTES) * self.beta
        segments = max(1, len(segment_bounds(numel, segment_elems)))
        if algorithm == "none":
            return self.alpha + comm
        cc = self.codec_for(fmt)
        # Segments are posted back to back, so their latencies overlap: one per phase.
        if algorithm == "allgather":
            latency = self.alpha
            codec = cc.encode(numel, segments) + cc.decode(n * numel, segments)
        elif algorithm == "two_shot":
            latency = 2 * self.alpha
            # the own chunk is neither encoded nor decoded in the first exchange
            others = numel - numel // n
            codec = (
                cc.encode(others, (n - 1) * segments)
                + cc.decode(others, segments)
                + cc.encode(-(-numel // n), segments)
                + cc.decode(numel, n * segments)
            )
        else:
            raise FormatError(f"unknown algorithm {algorithm!r}")
        if segments == 1:
            return latency + comm + codec
        return latency + max(comm, codec) + codec / segments

    def size_gate(self, fmt: BlockFormat | str, elem_size: int, world_size: int) -> int:
        """Smallest message (logical bytes, a power of two up to 1 GiB) from which ``auto`` compresses.

        Returns:
            The size in bytes, or -1 when ``auto`` never compresses in that range.
        """
        f = get_format(fmt)
        for k in range(8, 31):
            nbytes = 1 << k
            if plan_all_reduce(self, f, nbytes // elem_size, elem_size, world_size).algorithm != "none":
                return nbytes
        return -1


@dataclass(frozen=True)
class Plan:
    """The planner's verdict: the algorithm, its segment length, why, and every algorithm's predicted seconds."""

    algorithm: str
    segment_elems: int
    reason: str
    predicted: dict[str, float]


def plan_all_reduce(
    model: CostModel, fmt: BlockFormat, numel: int, elem_size: int, world_size: int
) -> Plan:
    """The planner: the fastest predicted algorithm; compression only when it wins by ``model.min_gain``.

    Args:
        model: The cost model.
        fmt: The format.
        numel: Elements of the tensor.
        elem_size: Bytes per element of the tensor's dtype.
        world_size: Ranks in the group.

    Returns:
        The :class:`Plan` (``none`` for a single rank or an empty tensor).
    """
    seg = DEFAULT_SEGMENT_ELEMS
    predicted = {a: model.predict(a, fmt, numel, elem_size, world_size, seg) for a in ALL_REDUCE_ALGORITHMS}
    if world_size == 1 or numel == 0:
        return Plan("none", seg, "nothing to exchange", predicted)
    best = min(COMPRESSED, key=lambda a: predicted[a])
    base = predicted["none"]
    shown = ", ".join(f"{a} {t * 1e3:.3g} ms" for a, t in predicted.items())
    if predicted[best] <= (1.0 - model.min_gain) * base:
        return Plan(best, seg, f"model ({model.source}): {shown}", predicted)
    return Plan(
        "none", seg, f"model ({model.source}) predicts no gain of {model.min_gain:.0%}: {shown}", predicted
    )


# -- installed models and calibration --------------------------------------------------------------

_models: dict[object, CostModel] = {}


def _group_key(group: ProcessGroup | None) -> object:
    return "default" if group is None or group is dist.group.WORLD else group


def set_cost_model(model: CostModel, group: ProcessGroup | None = None) -> None:
    """Install ``model`` as the one ``algorithm="auto"`` uses for ``group``.

    Every rank must install the same model (as :func:`calibrate` does), or
    rank 0's plan overrides the others' (see docs/collectives.md).

    Args:
        model: The cost model.
        group: The process group (None: the default group).

    Raises:
        ArgumentTypeError: ``model`` is not a :class:`CostModel`.
    """
    if not isinstance(model, CostModel):
        raise ArgumentTypeError(f"set_cost_model takes a CostModel, got {type(model).__name__}")
    _models[_group_key(group)] = model


def get_cost_model(group: ProcessGroup | None = None) -> CostModel:
    """The model ``algorithm="auto"`` uses for ``group``.

    Args:
        group: The process group (None: the default group).

    Returns:
        The model installed for ``group``, else the default group's, else ``CostModel()``.
    """
    return _models.get(_group_key(group)) or _models.get("default") or CostModel()


def _timed(fn, reps: int) -> float:
    # the median, like the link probes: the planner should price typical, not best-case, costs
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _agree_max(values: Sequence[float], group: ProcessGroup | None, device: torch.device) -> list[float]:
    # Every rank must install the same model (the planner runs on every rank), and the
    # slowest rank is what a collective waits for: take the maximum over ranks.
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t.tolist()


def measure_codec(
    fmt: BlockFormat | str,
    *,
    dtype: torch.dtype = torch.bfloat16,
    numel: int = 1 << 20,
    device: torch.device | str = "cpu",
    backend: str = "auto",
    reps: int = 5,
) -> CodecCost:
    """Time encode / decode_sum of this process's codec for ``fmt`` (median of ``reps``).

    Args:
        fmt: The format.
        dtype: Dtype of the timed tensor.
        numel: Elements of the timed tensor.
        device: Where the tensor lives.
        backend: Codec backend.
        reps: Repetitions per timing.

    Returns:
        The measured :class:`CodecCost`.
    """
    f = get_format(fmt)
    gen = torch.Generator(device="cpu").manual_seed(0)
    big = torch.randn(numel, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
    small = big[: f.block_size * 8].clone()
    p_big = encode(big, f, backend=backend)
    p_small = encode(small, f, backend=backend)
    payload = p_big.payload()
    as_wire = Packed.from_payload(payload, f, (numel,), dtype, backend=p_big.backend)
    t_enc_small = _timed(lambda: encode(small, f, backend=backend), reps)
    t_dec_small = _timed(lambda: decode_sum([p_small, p_small], backend=backend), reps)
    t_enc = _timed(lambda: encode(big, f, backend=backend), reps)
    t_dec = _timed(lambda: decode_sum([as_wire, as_wire], backend=backend), reps)
    call_s = max(0.0, min(t_enc_small, t_dec_small / 2))
    return CodecCost(
        encode_s_per_elem=max(t_enc - call_s, 0.0) / numel,
        decode_s_per_elem=max(t_dec - call_s, 0.0) / (2 * numel),
        call_s=call_s,
    )


def calibrate(
    group: ProcessGroup | None = None,
    *,
    formats: Sequence[BlockFormat | str] = ("mxfp4_e2m1",),
    dtype: torch.dtype = torch.bfloat16,
    backend: str = "auto",
    min_gain: float = 0.1,
    install: bool = True,
    max_probe_bytes: int = 8 << 20,
    codec_probe_elems: int = 1 << 20,
) -> CostModel:
    """Measure alpha, beta and the codec costs on the live group; every rank gets the same model.

    Collective: every rank of ``group`` must call it. alpha and beta come from
    timing uint8 all-gathers of a tiny and a large buffer (the large one grows
    until it takes ~50 ms or reaches ``max_probe_bytes`` per rank; each time is
    a median). Codec costs, on ``codec_probe_elems`` elements, are timed on all
    ranks at once, since they share the CPU the way a collective does. Each
    constant is the maximum over ranks.

    Args:
        group: The process group (None: the default group).
        formats: Formats whose codec costs are measured.
        dtype: Dtype of the codec probe.
        backend: Codec backend timed.
        min_gain: ``min_gain`` of the returned model.
        install: Make the model the one ``algorithm="auto"`` uses for ``group``.
        max_probe_bytes: Largest all-gather probe per rank.
        codec_probe_elems: Elements of the codec probe.

    Returns:
        The calibrated :class:`CostModel` (``source="calibrated"``), the same on every rank.

    Raises:
        FormatError: an entry of ``formats`` is not a format.
    """
    n = dist.get_world_size(group)
    device = group_device(group)
    fmts = [get_format(f) for f in formats]

    def gather_time(nbytes: int, reps: int) -> float:
        # median of individually timed all-gathers: robust to the odd scheduling hiccup
        inp = torch.zeros(nbytes, dtype=torch.uint8, device=device)
        out = torch.empty(n * nbytes, dtype=torch.uint8, device=device)
        all_gather_bytes(out, inp, group)  # warm up connections and buffers
        dist.barrier(group=group)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            all_gather_bytes(out, inp, group)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    small_b = 64
    t_small = gather_time(small_b, 9)
    big_b = 256 << 10
    t_big = gather_time(big_b, 3)
    while t_big < 0.05 and big_b < max_probe_bytes:
        big_b = min(big_b * 4, max_probe_bytes)
        t_big = gather_time(big_b, 3)
    # t(B) = alpha + (n-1) B beta for an all-gather of B bytes per rank
    sent = max(n - 1, 1)
    beta = max((t_big - t_small) / (sent * (big_b - small_b)), 1e-13)
    alpha = max(t_small - sent * small_b * beta, 0.0)

    local: list[float] = [alpha, beta]
    for f in fmts:
        dist.barrier(group=group)
        c = measure_codec(f, dtype=dtype, numel=codec_probe_elems, device=device, backend=backend)
        local += [c.encode_s_per_elem, c.decode_s_per_elem, c.call_s]
    agreed = _agree_max(local, group, device)
    codec = {}
    for i, f in enumerate(fmts):
        e, d, c = agreed[2 + 3 * i : 5 + 3 * i]
        codec[f.name] = CodecCost(e, d, c)
    default_codec = max(codec.values(), key=lambda c: c.encode_s_per_elem) if codec else CostModel().default_codec
    model = CostModel(
        alpha=agreed[0], beta=agreed[1], default_codec=default_codec, codec=codec,
        min_gain=min_gain, source="calibrated",
    )
    log.info(
        "calibrated n=%d: alpha %.1f us, beta %.3g s/B (%.3g Gbit/s per rank), codec %s",
        n, model.alpha * 1e6, model.beta, 8e-9 / model.beta, codec,
    )
    if install:
        set_cost_model(model, group)
    return model
