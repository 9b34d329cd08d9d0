"""Wire-byte formulas, the alpha-beta cost model and the ``auto`` planner (pure functions).

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
  own chunk, re-encode, all-gather: ``2 alpha + (n-1) (P_chunk + G_chunk) beta
  + enc((n-1)N/n) + dec((n-1)N/n) + enc'(N/n) + dec'(N)``; the all-gather phase
  is in the gather format (``G``, ``enc'``, ``dec'``), which is the format itself
  unless a ``gather_fmt`` is given (:func:`gather_format`)

with ``S`` the logical bytes, ``N`` the element count, ``P`` the packed bytes
(``fmt.packed_nbytes``). Every algorithm, ``none`` included, is preceded by
the same descriptor all-gather, which therefore drops out of the comparison.
When a message is cut into pipeline segments, communication of one segment
overlaps the codec work of the others: the compressed time becomes
``latency + max(comm, codec) + codec / segments`` (the first encode and last
decode cannot overlap anything). ``CostModel.overhead`` adds a learned fixed cost per
segment and ``CostModel.beta_scale`` a per-algorithm factor on ``beta``.

Where the constants come from -- defaults, :func:`calibrate`, or learned online from
the group's own calls -- is mxcomm/collectives/estimator.py's business.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from mxcomm.collectives.algorithms import ALL_REDUCE_ALGORITHMS, COMPRESSED
from mxcomm.collectives.handshake import DESCRIPTOR_NBYTES
from mxcomm.errors import FormatError
from mxcomm.formats import BlockFormat, get_format

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


def gather_format(fmt: BlockFormat, gather_fmt: BlockFormat | None) -> BlockFormat:
    """The format of two-shot's all-gather phase: ``gather_fmt``, or ``fmt`` itself when None.

    A rotated ``fmt`` rotates the whole two-shot once: both phases run in the
    rotated domain and the sum is un-rotated once at the end. The gather format
    then quantizes rotated blocks, so it must block like ``fmt`` and carry no
    rotation or exactly ``fmt``'s; it is returned with ``fmt``'s rotation (the
    canonical form, whose fingerprint the handshake compares: both spellings of
    the same call agree). A rotation of the gather phase alone is not offered.

    Raises:
        FormatError: ``gather_fmt`` is rotated unlike ``fmt``, or blocks unlike a rotated ``fmt``.
    """
    if gather_fmt is None:
        return fmt
    seed = fmt.rotation_seed
    if gather_fmt.rotation_seed is not None and gather_fmt.rotation_seed != seed:
        raise FormatError(
            f"gather format {gather_fmt.name!r} is rotated, but two-shot rotates once, with the format's own "
            f"rotation ({fmt.name!r}): give the gather format no rotation or exactly the format's"
        )
    if seed is not None and gather_fmt.block_size != fmt.block_size:
        raise FormatError(
            f"gather format {gather_fmt.name!r} has blocks of {gather_fmt.block_size}, but the rotated format "
            f"{fmt.name!r} rotates blocks of {fmt.block_size}, the domain both phases quantize in"
        )
    return gather_fmt if gather_fmt.rotation_seed == seed else gather_fmt.with_options(rotation_seed=seed)


def pair_codec_name(fmt: BlockFormat, gather_fmt: BlockFormat) -> str:
    """The :attr:`CostModel.codec` key of a two-shot whose phases use ``fmt`` and ``gather_fmt`` (learned as one)."""
    return f"{fmt.name}+{gather_format(fmt, gather_fmt).name}"


def two_shot_block(fmt: BlockFormat, gather_fmt: BlockFormat | None = None) -> int:
    """Alignment of two-shot chunks and segments: whole blocks of both phases' formats (their lcm)."""
    g = gather_format(fmt, gather_fmt)
    return math.lcm(fmt.block_size, g.block_size)


def two_shot_slot_nbytes(fmt: BlockFormat, length: int, world_size: int, block: int | None = None) -> int:
    """Fixed slot size of one two-shot chunk in ``fmt``: the payload of a full chunk (shorter ones are
    zero-padded). ``block``: the chunks' alignment (default ``fmt.block_size``; see :func:`two_shot_block`)."""
    return payload_nbytes(fmt, chunk_elems(length, world_size, block or fmt.block_size))


@dataclass(frozen=True)
class WireBytes:
    logical: int
    sent: int
    received: int


def all_reduce_logical_bytes(numel: int, elem_size: int, world_size: int) -> int:
    """What a bandwidth-optimal (ring) uncompressed all-reduce sends per rank: 2(n-1)/n S (floored)."""
    return 2 * (world_size - 1) * numel * elem_size // world_size


def all_reduce_wire_bytes(
    algorithm: str, fmt: BlockFormat | None, numel: int, elem_size: int, world_size: int, segment_elems: int,
    gather_fmt: BlockFormat | None = None,
) -> WireBytes:
    """Per-rank bytes of one ``all_reduce`` call, descriptor included (two-shot's all-gather in ``gather_fmt``)."""
    n = world_size
    logical = all_reduce_logical_bytes(numel, elem_size, n)
    desc = (n - 1) * DESCRIPTOR_NBYTES
    if algorithm == "none":
        return WireBytes(logical, desc + logical, desc + logical)
    assert fmt is not None
    body = 0
    gather = gather_format(fmt, gather_fmt)
    block = two_shot_block(fmt, gather_fmt)
    for s0, s1 in segment_bounds(numel, segment_elems):
        if algorithm == "allgather":
            body += (n - 1) * payload_nbytes(fmt, s1 - s0)
        elif algorithm == "two_shot":
            body += (n - 1) * (two_shot_slot_nbytes(fmt, s1 - s0, n, block)
                               + two_shot_slot_nbytes(gather, s1 - s0, n, block))
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
        call_s: Fixed seconds per encode call, and per decode call unless ``decode_call_s`` is set.
        decode_call_s: Fixed seconds per decode call (None: ``call_s``).
    """

    encode_s_per_elem: float
    decode_s_per_elem: float
    call_s: float = 50e-6
    decode_call_s: float | None = None

    def encode(self, numel: int, calls: int = 1) -> float:
        return calls * self.call_s + numel * self.encode_s_per_elem

    def decode(self, numel: int, calls: int = 1) -> float:
        call_s = self.call_s if self.decode_call_s is None else self.decode_call_s
        return calls * call_s + numel * self.decode_s_per_elem


#: Exchanges (latencies) of one call of each all-reduce algorithm: pipeline segments are posted back
#: to back, so their latencies overlap, and only two-shot's second phase waits for the first.
EXCHANGES: dict[str, int] = {"none": 1, "allgather": 1, "two_shot": 2}


@dataclass(frozen=True)
class CodecWork:
    """Encode and decode calls and elements of one compressed all-reduce (every rank does about the same)."""

    encode_calls: int
    encode_elems: int
    decode_calls: int
    decode_elems: int


def codec_phases(algorithm: str, numel: int, world_size: int, segments: int) -> tuple[CodecWork, ...]:
    """The codec work of each exchange phase (one-shot: one phase; two-shot: the reduce-scatter's in the
    format, then the all-gather's in the gather format).

    Raises:
        FormatError: ``algorithm`` is not a compressed all-reduce algorithm.
    """
    n, seg = world_size, max(1, segments)
    if algorithm == "allgather":
        # one encode per segment; one decode_sum of n shards per segment
        return (CodecWork(seg, numel, seg, n * numel),)
    if algorithm == "two_shot":
        others = numel - numel // n  # the own chunk is neither encoded nor decoded in the first exchange
        # phase 1: n-1 chunk encodes and one decode_sum per segment; phase 2: one re-encode and n chunk decodes
        return CodecWork((n - 1) * seg, others, seg, others), CodecWork(seg, -(-numel // n), n * seg, numel)
    raise FormatError(f"unknown compressed algorithm {algorithm!r}")


def codec_work(algorithm: str, numel: int, world_size: int, segments: int) -> CodecWork:
    """The codec work the planner prices, and the estimator divides measured codec time by (all phases).

    Raises:
        FormatError: ``algorithm`` is not a compressed all-reduce algorithm.
    """
    phases = codec_phases(algorithm, numel, world_size, segments)
    return CodecWork(*(sum(getattr(p, f) for p in phases) for f in
                       ("encode_calls", "encode_elems", "decode_calls", "decode_elems")))


@dataclass(frozen=True)
class CostModel:
    """Constants of the planner's alpha-beta model (what ``algorithm="auto"`` decides with).

    ``auto`` uses the group's learned estimate (mxcomm/collectives/estimator.py), which
    starts from a model like this one (the defaults, :func:`calibrate`'s, or one given to
    :func:`set_cost_model`) and replaces its constants by what the group's own calls
    measured; :func:`cost_model` shows it.

    Attributes:
        alpha: Latency of one collective call in seconds (not of one ring step: on gloo
            over loopback a tiny all-reduce, 2(n-1) ring steps, and a tiny all-gather,
            n-1 steps, take the same time within noise -- the cost is waking the ranks
            up, not the steps; docs/collectives.md).
        beta: Seconds per byte one rank sends while all ranks send (as the uncompressed
            ring all-reduce moves them).
        default_codec: Codec cost of formats not in ``codec``.
        codec: Per-format codec costs, by format name. A two-shot whose gather format differs
            from its format is priced phase by phase with each format's cost, or as a whole with
            the pair's entry (:func:`pair_codec_name`, ``"<fmt>+<gather>"``) when there is one
            (the estimator learns such calls as a pair: their codec time is not split by phase).
        min_gain: A compressed algorithm is chosen only if it is predicted at least this
            fraction faster than ``none`` (the model is approximate, and losing to the
            baseline is worse than missing a small win).
        source: Where the numbers came from (``"default"``, ``"calibrated"``, ``"given"``,
            ``"learned ..."``).
        overhead: Seconds per pipeline segment an algorithm spends besides codec calls and
            waiting for exchanges (buffer allocation, copies, Python), by algorithm name (0 if absent).
        beta_scale: Per-byte cost of an algorithm's exchanges relative to ``beta``, by
            algorithm name (1 if absent): the payload all-gathers / all-to-alls may move bytes
            more or less efficiently than the process group's ring all-reduce.
    """

    alpha: float = 50e-6
    beta: float = 8 / 10e9
    default_codec: CodecCost = field(default_factory=lambda: CodecCost(6e-9, 6e-9, 100e-6))
    codec: dict[str, CodecCost] = field(default_factory=dict)
    min_gain: float = 0.1
    source: str = "default"
    overhead: dict[str, float] = field(default_factory=dict)
    beta_scale: dict[str, float] = field(default_factory=dict)

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
        gather_fmt: BlockFormat | None = None,
    ) -> float:
        """Predicted seconds of one ``all_reduce`` (the descriptor exchange excluded: every algorithm pays it).

        Args:
            algorithm: ``"none"``, ``"allgather"`` or ``"two_shot"``.
            fmt: The format.
            numel: Elements of the tensor.
            elem_size: Bytes per element of the tensor's dtype.
            world_size: Ranks in the group.
            segment_elems: Pipeline segment length.
            gather_fmt: Format of two-shot's all-gather phase (None: ``fmt``), priced with its own codec cost.

        Returns:
            Seconds.

        Raises:
            FormatError: unknown ``algorithm``, or a ``gather_fmt`` rotated unlike ``fmt``.
        """
        n = world_size
        if n == 1 and algorithm == "none":
            return 0.0
        if algorithm not in EXCHANGES:
            raise FormatError(f"unknown algorithm {algorithm!r}")
        wire = all_reduce_wire_bytes(algorithm, fmt, numel, elem_size, n, segment_elems, gather_fmt)
        comm = (wire.sent - (n - 1) * DESCRIPTOR_NBYTES) * self.beta * self.beta_scale.get(algorithm, 1.0)
        latency = EXCHANGES[algorithm] * self.alpha
        if algorithm == "none":
            return latency + comm + self.overhead.get(algorithm, 0.0)
        segments = max(1, len(segment_bounds(numel, segment_elems)))
        gather = gather_format(fmt, gather_fmt)
        pair = self.codec.get(pair_codec_name(fmt, gather)) if algorithm == "two_shot" and gather != fmt else None
        if pair is not None:
            priced = [(pair, codec_work(algorithm, numel, n, segments))]
        else:
            priced = [(self.codec_for(f), work)
                      for f, work in zip((fmt, gather), codec_phases(algorithm, numel, n, segments))]
        codec = sum(cc.encode(w.encode_elems, w.encode_calls) + cc.decode(w.decode_elems, w.decode_calls)
                    for cc, w in priced)
        overhead = segments * self.overhead.get(algorithm, 0.0)
        if segments == 1:
            return latency + comm + codec + overhead
        return latency + max(comm, codec) + codec / segments + overhead

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
    """The planner's verdict: the algorithm, its segment length, why, and every algorithm's predicted seconds.

    ``explored`` is True when ``auto`` runs the algorithm to measure it, not because it is
    predicted fastest (docs/collectives.md, *Exploration*).
    """

    algorithm: str
    segment_elems: int
    reason: str
    predicted: dict[str, float]
    explored: bool = False


def plan_all_reduce(
    model: CostModel, fmt: BlockFormat, numel: int, elem_size: int, world_size: int,
    gather_fmt: BlockFormat | None = None,
) -> Plan:
    """The planner: the fastest predicted algorithm; compression only when it wins by ``model.min_gain``.

    Args:
        model: The cost model.
        fmt: The format.
        numel: Elements of the tensor.
        elem_size: Bytes per element of the tensor's dtype.
        world_size: Ranks in the group.
        gather_fmt: Format of two-shot's all-gather phase (None: ``fmt``): two-shot is priced with it.

    Returns:
        The :class:`Plan` (``none`` for a single rank or an empty tensor).
    """
    seg = DEFAULT_SEGMENT_ELEMS
    predicted = {a: model.predict(a, fmt, numel, elem_size, world_size, seg, gather_fmt)
                 for a in ALL_REDUCE_ALGORITHMS}
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
