"""The group's cost estimate, learned from its own calls, and ``auto``'s exploration rule.

Every measured all-reduce (synchronous, ``verify=True``) times its phases on
every rank (mxcomm/collectives/timing.py). The next descriptor exchange on
the group carries those times from every rank to every rank
(mxcomm/collectives/handshake.py), and each rank folds the same n records
into its :class:`GroupEstimate` with the same arithmetic: the estimates are
identical on all ranks, with no exchange of their own. From one call:

* **alpha** <- the descriptor exchange, the fastest rank's time (the rank that
  arrived last waited for nobody: its time is the latency);
* **codec costs** of the format <- encode and decode seconds, the slowest
  rank's, per call of the size the planner prices
  (:func:`~mxcomm.collectives.planner.codec_work`); a line ``call_s +
  elements x per_elem`` through the sizes seen (see ``_CodecKind``);
* **overhead** of the algorithm <- the payload phase minus codec and waits,
  per segment, the slowest rank's;
* **beta** <- the transfer the model implies: waits minus the exchanges'
  latencies for one segment (the fastest rank's waits: the others also waited
  for the slowest encoder), or, pipelined, the payload phase minus overhead,
  latencies and the codec share that cannot overlap. A transfer below half a
  latency (lost in the latency's noise), or hidden by the codec work of a
  pipelined call, only bounds beta from above: the estimate is pulled down to
  the bound when above it (how a link that got faster is seen while ``auto``
  compresses).
  Compressed exchanges may move bytes more or less efficiently than the ring
  all-reduce: ``beta_scale`` of an algorithm is learned from its transfers
  measured within ``PAIR_WITHIN`` calls of a ring measurement, and beta itself
  is kept in ring terms, so a link change seen by any algorithm moves all.

Each constant is the median of its last ``WINDOW`` samples (robust to the odd
hiccup, and a changed link takes over after ``WINDOW // 2 + 1`` samples); the
first call of every (algorithm, format) is a warm-up (lazy initialisation,
first-use compilation) and teaches only alpha. Constants without samples keep
the seed's value (the defaults, :func:`calibrate`'s, or
:func:`set_cost_model`'s).

Exploration (``auto`` runs an algorithm the model does not pick, to measure
it): messages are grouped into size classes (format, element size, numel's
power of two). A class starts with one exploration credit, earns one every
``EXPLORE_EVERY`` calls and holds at most ``EXPLORE_BURST``; an exploration that was an
algorithm's first run on the group (a warm-up, which teaches nothing) is
repeated on the class's next call for free. A call explores when a credit is
there and another algorithm's prediction is

* within ``EXPLORE_UNMEASURED`` times the planned one's while it rests on
  constants never measured (the format's codec costs; for ``none``, the
  link), or within ``EXPLORE_UNTRIED`` times while the algorithm itself was
  never measured with the format (past its warm-up), or
* within ``EXPLORE_STALE`` times while the algorithm has not run in this class
  for ``STALE_AFTER`` calls (or never).

The decision is a function of the shared estimate and the class's call count,
so every rank takes it on the same call; rank 0's plan (and its exploration
flag) is what runs everywhere anyway.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch.distributed as dist
from torch.distributed import ProcessGroup

from mxcomm.collectives.algorithms import ALL_REDUCE_ALGORITHMS, COMPRESSED
from mxcomm.collectives.handshake import (
    DESCRIPTOR_NBYTES,
    CallTimes,
    WireDescriptor,
    format_fingerprint,
    pair_fingerprint,
)
from mxcomm.collectives.planner import (
    EXCHANGES,
    CodecCost,
    CostModel,
    Plan,
    all_reduce_wire_bytes,
    codec_work,
    gather_format,
    pair_codec_name,
    plan_all_reduce,
    segment_bounds,
)
from mxcomm.errors import ArgumentTypeError
from mxcomm.formats import BlockFormat

#: Samples per constant; the estimate is their median.
WINDOW = 9
#: A size class earns one exploration every this many calls ...
EXPLORE_EVERY = 16
#: ... and saves up at most this many.
EXPLORE_BURST = 2
#: Explore an algorithm resting on never-measured codec costs (or link) if predicted within this factor ...
EXPLORE_UNMEASURED = 8.0
#: ... or one never measured itself with the format (its call sizes, overhead, exchanges) within this one.
EXPLORE_UNTRIED = 2.0
#: Explore an algorithm not run in the class for STALE_AFTER calls if predicted within this factor.
EXPLORE_STALE = 1.25
STALE_AFTER = 256
#: A compressed transfer is compared with the ring's (beta_scale) only this many calls after a ring one.
PAIR_WITHIN = 16
_SCALE_RANGE = (0.25, 4.0)


@dataclass(frozen=True)
class CallMeta:
    """What a measured all-reduce was (the same on every rank: taken from the agreed descriptor).

    A two-shot with a gather format of its own is learned as a pair: ``fingerprint`` and
    ``format_name`` are then the pair's (:func:`~mxcomm.collectives.handshake.pair_fingerprint`,
    :func:`~mxcomm.collectives.planner.pair_codec_name`), its codec time not being split by phase.
    """

    algorithm: str
    fmt: BlockFormat | None  # this rank's format object; its sizes are rank 0's (fingerprints agree)
    fingerprint: bytes
    format_name: str  # this rank's name for it (display only: costs are kept by fingerprint)
    numel: int
    elem_size: int
    world_size: int
    segment_elems: int
    gather_fmt: BlockFormat | None = None  # two-shot's gather format when not ``fmt``
    gather_fingerprint: bytes | None = None

    @classmethod
    def of(cls, algorithm: str, fmt: BlockFormat | None, fingerprint: bytes, numel: int, elem_size: int,
           world_size: int, segment_elems: int, gather_fmt: BlockFormat | None = None,
           gather_fingerprint: bytes | None = None) -> CallMeta:
        """The call as learned: a two-shot with its own gather format under the pair's key and name."""
        name = fmt.name if fmt is not None else ""
        if algorithm != "two_shot" or fmt is None or gather_fmt is None or gather_fingerprint is None:
            return cls(algorithm, fmt, fingerprint, name, numel, elem_size, world_size, segment_elems)
        return cls(algorithm, fmt, pair_fingerprint(fingerprint, gather_fingerprint),
                   pair_codec_name(fmt, gather_fmt), numel, elem_size, world_size, segment_elems, gather_fmt,
                   gather_fingerprint)


class _Window:
    """The last ``WINDOW`` samples of one constant; ``count`` is every sample ever added."""

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=WINDOW)
        self._median: float | None = None
        self.count = 0

    def add(self, value: float) -> None:
        self._samples.append(value)
        self._median = None
        self.count += 1

    def median(self, default: float) -> float:
        if not self._samples:
            return default
        if self._median is None:
            self._median = statistics.median(self._samples)
        return self._median


class _CodecKind:
    """Encode or decode calls of one format: per-call seconds, by the call's size (quarter octaves).

    The per-call cost line ``call_s + elems x per_elem`` is fitted through the
    median of each measured size: through two or more sizes by least squares;
    through one by scaling the seed's line to pass through it (one size cannot
    tell fixed from per-element cost, the seed's proportion can).
    """

    def __init__(self) -> None:
        self.sizes: dict[int, tuple[_Window, _Window]] = {}  # size bucket -> (elements per call, seconds per call)
        self.count = 0

    def add(self, calls: int, elems: int, seconds: float) -> None:
        per_call = elems / calls
        # quarter-octave size buckets: a bucket's median size and median time belong together
        bucket = round(4 * math.log2(per_call)) if per_call > 0 else -1
        elems_w, seconds_w = self.sizes.setdefault(bucket, (_Window(), _Window()))
        elems_w.add(per_call)
        seconds_w.add(seconds / calls)
        self.count += 1

    def line(self, seed_call_s: float, seed_per_elem: float) -> tuple[float, float]:
        """(seconds per call, seconds per element)."""
        points = [(k.median(0.0), t.median(0.0)) for k, t in (self.sizes[b] for b in sorted(self.sizes))]
        if not points:
            return seed_call_s, seed_per_elem
        if len(points) > 1:
            mk = statistics.fmean(k for k, _ in points)
            mt = statistics.fmean(t for _, t in points)
            var = sum((k - mk) ** 2 for k, _ in points)
            per_elem = sum((k - mk) * (t - mt) for k, t in points) / var if var > 0 else -1.0
            call_s = mt - per_elem * mk
            if per_elem >= 0 and call_s >= 0:
                return call_s, per_elem
            points = [max(points, key=lambda p: p[0])]  # no sensible line: trust the largest size
        k, t = points[0]
        seed_t = seed_call_s + seed_per_elem * k
        scale = t / seed_t if seed_t > 0 else 1.0
        return scale * seed_call_s, scale * seed_per_elem


@dataclass
class _Codec:
    name: str
    encode: _CodecKind = field(default_factory=_CodecKind)
    decode: _CodecKind = field(default_factory=_CodecKind)

    @property
    def samples(self) -> int:
        return self.encode.count + self.decode.count

    def cost(self, seed: CodecCost) -> CodecCost:
        enc_call, enc_elem = self.encode.line(seed.call_s, seed.encode_s_per_elem)
        seed_dec_call = seed.call_s if seed.decode_call_s is None else seed.decode_call_s
        dec_call, dec_elem = self.decode.line(seed_dec_call, seed.decode_s_per_elem)
        return CodecCost(enc_elem, dec_elem, enc_call, dec_call)


@dataclass
class _SizeClass:
    """Bookkeeping of one size class: calls, exploration credit (in 1/EXPLORE_EVERY), last run per algorithm."""

    calls: int = 0
    credit: int = EXPLORE_EVERY  # one exploration to start with
    explorations: int = 0
    last_run: dict[str, int] = field(default_factory=dict)
    last_algorithm: str = ""
    repeat: str = ""  # an exploration that was a warm-up, to be repeated (free) on the next call
    numel_min: int = 0
    numel_max: int = 0


@dataclass(frozen=True)
class _Combined:
    """One call's times combined over ranks (see the module docstring for which rank's each is)."""

    descriptor_s: float
    payload_s: float
    encode_s: float
    decode_s: float
    wait_s: float
    other_s: float


def combine(times: Sequence[CallTimes]) -> _Combined:
    return _Combined(
        descriptor_s=min(t.descriptor_s for t in times),
        payload_s=max(t.payload_s for t in times),
        encode_s=max(t.encode_s for t in times),
        decode_s=max(t.decode_s for t in times),
        wait_s=min(t.wait_s for t in times),
        other_s=max(max(t.payload_s - t.encode_s - t.decode_s - t.wait_s, 0.0) for t in times),
    )


@dataclass(frozen=True)
class SizeClassState:
    """One size class of :class:`CostEstimate`: a format, an element size and numel's power of two.

    Attributes:
        format: Format name.
        elem_size: Bytes per element.
        numel_range: Smallest and largest numel seen in the class.
        calls: All-reduces of the class (any requested algorithm) with ``verify=True``.
        explorations: Calls on which ``auto`` explored.
        last_algorithm: The algorithm of the class's latest call.
        calls_since: Per algorithm that ran in the class, calls of the class since it last ran.
    """

    format: str
    elem_size: int
    numel_range: tuple[int, int]
    calls: int
    explorations: int
    last_algorithm: str
    calls_since: dict[str, int]


@dataclass(frozen=True)
class CostEstimate:
    """What ``auto`` knows about a group now (:func:`cost_model`).

    Attributes:
        model: The model ``auto`` plans with: the seed's constants replaced by the learned ones
            (codec costs for every format measured, by name).
        seed: The model the estimate started from.
        learning: Whether calls update the estimate (``set_cost_model(..., learn=False)`` freezes it).
        calls: Measured calls learned from.
        warmups: Measured calls used only for alpha (first call of an algorithm and format).
        dropped: Measurements discarded because the ranks' reports did not match.
        samples: Samples ever taken per constant: ``alpha``, ``beta``, ``overhead.<algorithm>``,
            ``beta_scale.<algorithm>``.
        codec_samples: Codec samples per format name.
        size_classes: Exploration state per size class.
        explorations: Exploring calls, all classes.
    """

    model: CostModel
    seed: CostModel
    learning: bool
    calls: int
    warmups: int
    dropped: int
    samples: dict[str, int]
    codec_samples: dict[str, int]
    size_classes: tuple[SizeClassState, ...]
    explorations: int

    def describe(self) -> str:
        """A few lines for people: the constants, their sample counts and the exploration state."""
        m = self.model
        lines = [
            f"estimate: {m.source}; learning {'on' if self.learning else 'off'}; {self.calls} calls learned from, "
            f"{self.warmups} warm-ups, {self.dropped} dropped, {self.explorations} explorations",
            f"  alpha {m.alpha * 1e6:.1f} us [{self.samples.get('alpha', 0)}], beta {m.beta * 1e9:.4g} ns/B = "
            f"{8e-6 / m.beta:.4g} Mbit/s per rank [{self.samples.get('beta', 0)}]",
        ]
        for alg in COMPRESSED:
            lines.append(
                f"  {alg}: overhead {m.overhead.get(alg, 0.0) * 1e6:.1f} us/segment "
                f"[{self.samples.get(f'overhead.{alg}', 0)}], beta x {m.beta_scale.get(alg, 1.0):.3g} "
                f"[{self.samples.get(f'beta_scale.{alg}', 0)}]"
            )
        for name, cc in m.codec.items():
            lines.append(
                f"  codec {name}: encode {cc.encode_s_per_elem * 1e9:.3g} ns/elem + {cc.call_s * 1e6:.1f} us/call, "
                f"decode {cc.decode_s_per_elem * 1e9:.3g} ns/elem + {cc.decode(0) * 1e6:.1f} us/call "
                f"[{self.codec_samples.get(name, 0)}]"
            )
        for c in self.size_classes:
            since = ", ".join(f"{a} {k} ago" for a, k in c.calls_since.items())
            lines.append(
                f"  class {c.format} x{c.elem_size}B numel {c.numel_range[0]}-{c.numel_range[1]}: {c.calls} calls, "
                f"{c.explorations} explorations, last {c.last_algorithm} ({since})"
            )
        return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


class GroupEstimate:
    """The learned cost model of one process group (one per group and process; see the module docstring)."""

    def __init__(self, seed: CostModel, learn: bool = True) -> None:
        self.seed = seed
        self.learn = learn
        self.alpha = _Window()
        self.beta = _Window()  # in ring all-reduce terms (compressed samples divided by their beta_scale)
        self.beta_scale: dict[str, _Window] = {a: _Window() for a in COMPRESSED}
        self.overhead: dict[str, _Window] = {a: _Window() for a in ALL_REDUCE_ALGORITHMS}
        self.codec: dict[bytes, _Codec] = {}
        self.classes: dict[tuple[bytes, int, int], _SizeClass] = {}
        self.class_names: dict[tuple[bytes, int, int], str] = {}
        self._ring: deque[tuple[int, float]] = deque(maxlen=3)  # (call, ring bytes cost) of recent ring transfers
        self._warmed: set[tuple[str, bytes]] = set()
        self._runs: Counter[tuple[str, bytes]] = Counter()  # runs per (algorithm, fingerprint) on the group
        self.calls = 0
        self.warmups = 0
        self.dropped = 0
        self.explorations = 0
        self._seq = 0
        self._pending: tuple[CallTimes, CallMeta] | None = None
        self._in_flight: tuple[CallTimes, CallMeta] | None = None
        self._model: CostModel | None = None
        self._costs: dict[bytes, CodecCost] = {}  # learned codec costs by fingerprint (with the model)
        self._per_format: dict[tuple[str, bytes], tuple[CostModel, str]] = {}  # (model, reason terms) per format
        self.world: object = None  # for the default group: the process group it learned on

    # -- the model ---------------------------------------------------------------------------------

    def model(self) -> CostModel:
        """The seed with every learned constant in place (codec costs of measured formats by name)."""
        if self._model is None:
            s = self.seed
            self._costs = {fp: c.cost(s.codec.get(c.name, s.default_codec)) for fp, c in self.codec.items() if c.samples}
            codec = {**s.codec, **{self.codec[fp].name: cost for fp, cost in self._costs.items()}}
            learned = self.calls + self.warmups
            self._model = replace(
                s,
                alpha=self.alpha.median(s.alpha),
                beta=self.beta.median(s.beta),
                codec=codec,
                overhead={**s.overhead, **{a: w.median(0.0) for a, w in self.overhead.items() if w.count}},
                beta_scale={**s.beta_scale, **{a: w.median(1.0) for a, w in self.beta_scale.items() if w.count}},
                source=f"learned from {learned} calls, seed {s.source}" if learned else s.source,
            )
        return self._model

    def model_for(self, fmt: BlockFormat) -> CostModel:
        """:meth:`model` with ``fmt``'s codec cost (learned under its fingerprint, whatever its name)."""
        return self._for_format(fmt, format_fingerprint(fmt))[0]

    def _for_format(self, fmt: BlockFormat, fp: bytes) -> tuple[CostModel, str]:
        # cached until the next measurement: planning runs on every call, learning at most once per call
        key = (fmt.name, fp)
        found = self._per_format.get(key)
        if found is None:
            m = self.model()
            cost = self._costs.get(fp)
            if cost is not None and m.codec.get(fmt.name) is not cost:
                m = replace(m, codec={**m.codec, fmt.name: cost})
            found = self._per_format[key] = (m, self._terms(m, fmt, fp))
        return found

    def _invalidate(self) -> None:
        self._model = None
        self._per_format.clear()

    # -- planning ----------------------------------------------------------------------------------

    @staticmethod
    def class_key(fingerprint: bytes, elem_size: int, numel: int) -> tuple[bytes, int, int]:
        return fingerprint, elem_size, numel.bit_length()

    def plan(self, fmt: BlockFormat, numel: int, elem_size: int, world_size: int, *, explore: bool,
             gather_fmt: BlockFormat | None = None) -> Plan:
        """``auto``'s plan: the model's choice, or an exploration (only with ``explore`` and learning on).

        ``gather_fmt``: two-shot's gather format (None: ``fmt``), priced phase by phase until the
        pair was measured (then as the pair).
        """
        fp = format_fingerprint(fmt)
        model, terms = self._for_format(fmt, fp)
        pair_fp = None
        if gather_fmt is not None:
            pair_fp = pair_fingerprint(fp, format_fingerprint(gather_format(fmt, gather_fmt)))
            pair_cost = self._costs.get(pair_fp)
            gather = gather_format(fmt, gather_fmt)
            learned_gather = self._costs.get(format_fingerprint(gather))
            codec = dict(model.codec)
            if learned_gather is not None:
                codec[gather.name] = learned_gather
            if pair_cost is not None:
                codec[pair_codec_name(fmt, gather)] = pair_cost
            model = replace(model, codec=codec)
        base = plan_all_reduce(model, fmt, numel, elem_size, world_size, gather_fmt)
        if world_size == 1 or numel == 0:
            return base
        if explore and self.learn:
            found = self._exploration(fp, pair_fp, elem_size, numel, base)
            if found is not None:
                alg, why = found
                return replace(base, algorithm=alg, explored=True,
                               reason=f"exploring {alg} ({why}) instead of {base.reason}; {terms}")
        return replace(base, reason=f"{base.reason}; {terms}")

    def _terms(self, model: CostModel, fmt: BlockFormat, fp: bytes) -> str:
        """The estimated constants behind a plan, with their sample counts (the record's reason)."""
        cc = model.codec_for(fmt)
        c = self.codec.get(fp)
        codec_n = f"{c.encode.count}/{c.decode.count}" if c else "0/0"
        parts = [
            f"alpha {model.alpha * 1e6:.3g} us [{self.alpha.count}]",
            f"beta {model.beta * 1e9:.3g} ns/B [{self.beta.count}]",
            f"{fmt.name} codec enc {cc.encode_s_per_elem * 1e9:.3g} ns/elem + {cc.call_s * 1e6:.3g} us/call, "
            f"dec {cc.decode_s_per_elem * 1e9:.3g} ns/elem + {cc.decode(0) * 1e6:.3g} us/call [{codec_n}]",
        ]
        for alg in COMPRESSED:
            parts.append(f"{alg} overhead {model.overhead.get(alg, 0.0) * 1e6:.3g} us/seg "
                         f"[{self.overhead[alg].count}] beta x{model.beta_scale.get(alg, 1.0):.3g} "
                         f"[{self.beta_scale[alg].count}]")
        return "estimate: " + ", ".join(parts)

    @staticmethod
    def _runs_fingerprint(algorithm: str, fp: bytes, pair_fp: bytes | None) -> bytes:
        """Under which fingerprint an algorithm's runs count: none's under none, two-shot's under the pair's."""
        if algorithm == "none":
            return b""
        return pair_fp if algorithm == "two_shot" and pair_fp is not None else fp

    def _unmeasured(self, algorithm: str, fp: bytes) -> tuple[float, str] | None:
        """How far off ``algorithm``'s prediction may be because it rests on what was never measured, and why.

        Counted from the runs (a run past an algorithm's warm-up is measured, or its times are on their way:
        they arrive with the next descriptor, after this call is planned).
        """
        if algorithm == "none":
            if not any(k > 1 for k in self._runs.values()):
                return EXPLORE_UNMEASURED, "link never measured"
            return None if self._runs[("none", b"")] > 1 else (EXPLORE_UNTRIED, "none never measured")
        if not any(k > 1 for (a, f), k in self._runs.items() if f == fp and a != "none"):
            return EXPLORE_UNMEASURED, "codec never measured"  # the seed's codec costs may be off by this much
        if self._runs[(algorithm, fp)] < 2:
            # its codec call sizes, overhead and exchanges were never seen with this format
            return EXPLORE_UNTRIED, f"{algorithm} never measured with this format"
        return None

    def _exploration(self, fp: bytes, pair_fp: bytes | None, elem_size: int, numel: int,
                     base: Plan) -> tuple[str, str] | None:
        state = self.classes.get(self.class_key(pair_fp or fp, elem_size, numel)) or _SizeClass()
        call = state.calls + 1
        if state.repeat and state.repeat != base.algorithm:
            # the previous call explored an algorithm's first run, a warm-up that teaches nothing: measure it now
            return state.repeat, f"the previous exploration was {state.repeat}'s warm-up; repeating it, free"
        if min(state.credit + 1, EXPLORE_BURST * EXPLORE_EVERY) < EXPLORE_EVERY:
            return None
        planned = max(base.predicted[base.algorithm], 1e-12)
        best: tuple[float, str, str] | None = None
        for alg in ALL_REDUCE_ALGORITHMS:
            if alg == base.algorithm:
                continue
            ratio = base.predicted[alg] / planned
            unmeasured = self._unmeasured(alg, self._runs_fingerprint(alg, fp, pair_fp) or fp)
            last = state.last_run.get(alg)
            if unmeasured is not None and ratio <= unmeasured[0]:
                why = f"{unmeasured[1]}; predicted {ratio:.2f}x the planned {base.algorithm}"
            elif (last is None or call - last > STALE_AFTER) and ratio <= EXPLORE_STALE:
                ago = "never run" if last is None else f"last run {call - last} calls ago"
                why = f"{ago} in this size class; predicted {ratio:.2f}x the planned {base.algorithm}"
            else:
                continue
            if best is None or ratio < best[0]:
                best = (ratio, str(alg), why)
        if best is None:
            return None
        return best[1], (f"{best[2]}; exploration {state.explorations + 1} in {call} calls of this class, "
                         f"at most 1 + 1 per {EXPLORE_EVERY}")

    def note_run(self, fingerprint: bytes, format_name: str, elem_size: int, numel: int, algorithm: str,
                 explored: bool, gather_fingerprint: bytes | None = None) -> None:
        """Count a call of a size class (from the agreed descriptor, so the same on every rank).

        ``gather_fingerprint``: the call's own gather format (None: none); such calls form size
        classes of their own, and their two-shot runs count under the pair.
        """
        pair_fp = pair_fingerprint(fingerprint, gather_fingerprint) if gather_fingerprint is not None else None
        key = self.class_key(pair_fp or fingerprint, elem_size, numel)
        state = self.classes.get(key)
        if state is None:
            state = self.classes[key] = _SizeClass(numel_min=numel, numel_max=numel)
            self.class_names[key] = format_name
        state.calls += 1
        state.credit = min(state.credit + 1, EXPLORE_BURST * EXPLORE_EVERY)
        runs_key = (algorithm, self._runs_fingerprint(algorithm, fingerprint, pair_fp))
        self._runs[runs_key] += 1
        first_run = self._runs[runs_key] == 1
        if explored:
            if algorithm != state.repeat:
                state.credit -= EXPLORE_EVERY
            state.explorations += 1
            self.explorations += 1
        state.repeat = algorithm if explored and first_run else ""
        state.last_run[algorithm] = state.calls
        state.last_algorithm = algorithm
        state.numel_min, state.numel_max = min(state.numel_min, numel), max(state.numel_max, numel)

    # -- measurements ------------------------------------------------------------------------------

    def record(self, meta: CallMeta, times_of: CallTimes) -> None:
        """Keep this rank's times of a finished measured call for the group's next descriptor exchange."""
        self._seq = (self._seq + 1) & 0xFFFF
        self._pending = (replace(times_of, seq=self._seq), meta)

    def take_pending(self) -> CallTimes | None:
        """The times to send with the descriptor now being built (each measurement is sent once)."""
        self._in_flight, self._pending = self._pending, None
        return self._in_flight[0] if self._in_flight else None

    def absorb(self, received: Sequence[WireDescriptor]) -> None:
        """Learn from the times every rank sent with this descriptor exchange (the same list on every rank).

        All ranks must report the same measured call (same sequence number);
        otherwise the measurement is dropped, by every rank alike.
        """
        in_flight, self._in_flight = self._in_flight, None
        reports = [d.times for d in received]
        if all(t is None for t in reports):
            return
        if in_flight is None or any(t is None or t.seq != in_flight[0].seq or not t.plausible() for t in reports):
            # every rank sees the same reports, so every rank drops the same ones
            self.dropped += 1
            return
        if self.learn and in_flight[1].world_size > 1 and in_flight[1].numel > 0:
            self._learn(in_flight[1], combine([t for t in reports if t is not None]))
            self._invalidate()

    def _learn(self, meta: CallMeta, c: _Combined) -> None:
        self.alpha.add(c.descriptor_s)
        alg = meta.algorithm
        warm_key = (alg, meta.fingerprint if alg != "none" else b"")
        if warm_key not in self._warmed:
            self._warmed.add(warm_key)
            self.warmups += 1
            return
        self.calls += 1
        model = self.model()
        n = meta.world_size
        segments = 1 if alg == "none" else max(1, len(segment_bounds(meta.numel, meta.segment_elems)))
        self.overhead[alg].add(c.other_s / segments)
        codec_s = 0.0
        if alg != "none":
            assert meta.fmt is not None
            work = codec_work(alg, meta.numel, n, segments)
            codec = self.codec.setdefault(meta.fingerprint, _Codec(meta.format_name))
            codec.encode.add(work.encode_calls, work.encode_elems, c.encode_s)
            codec.decode.add(work.decode_calls, work.decode_elems, c.decode_s)
            codec_s = c.encode_s + c.decode_s
        wire = all_reduce_wire_bytes(alg, meta.fmt, meta.numel, meta.elem_size, n, meta.segment_elems,
                                     meta.gather_fmt)
        nbytes = wire.sent - (n - 1) * DESCRIPTOR_NBYTES
        latency = EXCHANGES[alg] * model.alpha
        scale = model.beta_scale.get(alg, 1.0)
        if nbytes <= 0:
            return
        if segments == 1:
            comm = c.wait_s - latency
            hidden_by = 0.0
        else:
            comm = c.payload_s - c.other_s - codec_s / segments - latency
            hidden_by = codec_s  # the transfer overlaps the codec work: below this it is not seen
        ceiling = max(hidden_by, latency / 2)
        if comm <= ceiling:
            # The bytes took at most `ceiling` (hidden by the codec work, or lost in the latency's noise):
            # an upper bound on beta only. Pull the estimate down to it if it is above; a link that got
            # faster while auto compresses is seen this way.
            bound = ceiling / nbytes
            if model.beta * scale > bound:
                self.beta.add(bound / scale)
            return
        per_byte = comm / nbytes
        if alg == "none":
            self.beta.add(per_byte)
            self._ring.append((self.calls, per_byte))
            return
        if self._ring and self.calls - self._ring[-1][0] <= PAIR_WITHIN:
            ring = statistics.median(v for _, v in self._ring)
            lo, hi = _SCALE_RANGE
            self.beta_scale[alg].add(min(max(per_byte / ring, lo), hi))
            scale = self.beta_scale[alg].median(1.0)
        self.beta.add(per_byte / scale)

    # -- the view ----------------------------------------------------------------------------------

    def view(self) -> CostEstimate:
        samples = {"alpha": self.alpha.count, "beta": self.beta.count}
        samples.update({f"overhead.{a}": w.count for a, w in self.overhead.items()})
        samples.update({f"beta_scale.{a}": w.count for a, w in self.beta_scale.items()})
        classes = tuple(
            SizeClassState(
                format=self.class_names[key], elem_size=key[1], numel_range=(s.numel_min, s.numel_max),
                calls=s.calls, explorations=s.explorations, last_algorithm=s.last_algorithm,
                calls_since={a: s.calls - k for a, k in s.last_run.items()},
            )
            for key, s in self.classes.items()
        )
        return CostEstimate(
            model=self.model(), seed=self.seed, learning=self.learn, calls=self.calls, warmups=self.warmups,
            dropped=self.dropped, samples=samples, codec_samples={c.name: c.samples for c in self.codec.values()},
            size_classes=classes, explorations=self.explorations,
        )


# -- one estimate per group ---------------------------------------------------------------------------

_estimates: dict[object, GroupEstimate] = {}


def swap_estimates(estimates: dict[object, GroupEstimate]) -> dict[object, GroupEstimate]:
    """Benchmark aid: make ``estimates`` (from an earlier call, or ``{}``) every group's estimates; return the old.

    ``old = swap_estimates(mine)`` ... ``mine = swap_estimates(old)`` runs the
    code in between with ``mine`` and keeps what it learned: a benchmark that
    interleaves settings on one group measures ``auto`` as it would run alone
    (the other settings' calls do not teach it). Every rank must swap at the
    same point.

    Args:
        estimates: A dict returned by an earlier call, or ``{}`` for fresh ones.

    Returns:
        The estimates in use until now.
    """
    global _estimates
    old, _estimates = _estimates, estimates
    return old


def _group_key(group: ProcessGroup | None) -> object:
    return "default" if group is None or group is dist.group.WORLD else group


def group_estimate(group: ProcessGroup | None = None) -> GroupEstimate:
    """The estimate of ``group`` (created from the default group's seed, else ``CostModel()``)."""
    key = _group_key(group)
    est = _estimates.get(key)
    if est is None:
        default = _estimates.get("default")
        est = _estimates[key] = GroupEstimate(default.seed, default.learn) if default else GroupEstimate(CostModel())
    if key == "default":
        world = dist.group.WORLD
        if est.world is not None and world is not None and est.world is not world:
            # the default process group was destroyed and initialised again: what was learned is stale
            est = _estimates[key] = GroupEstimate(est.seed, est.learn)
        est.world = est.world or world
    return est


def set_cost_model(model: CostModel, group: ProcessGroup | None = None, *, learn: bool = True) -> None:
    """Seed ``group``'s estimate with ``model`` (forgetting what was learned); ``auto`` plans with the estimate.

    Every rank must install the same model (as :func:`calibrate` does), or
    rank 0's plan overrides the others' (see docs/collectives.md).

    Args:
        model: The cost model.
        group: The process group (None: the default group).
        learn: Keep learning from the group's calls (False: ``auto`` plans with ``model`` as given
            and never explores).

    Raises:
        ArgumentTypeError: ``model`` is not a :class:`CostModel`.
    """
    if not isinstance(model, CostModel):
        raise ArgumentTypeError(f"set_cost_model takes a CostModel, got {type(model).__name__}")
    _estimates[_group_key(group)] = GroupEstimate(model, learn)


def get_cost_model(group: ProcessGroup | None = None) -> CostModel:
    """The model ``algorithm="auto"`` plans with for ``group`` now (the seed plus what was learned).

    Args:
        group: The process group (None: the default group).

    Returns:
        The current :class:`CostModel` of the group's estimate (see :func:`cost_model` for sample counts).
    """
    return group_estimate(group).model()


def cost_model(group: ProcessGroup | None = None) -> CostEstimate:
    """The current estimate of ``group``: constants, sample counts and exploration state.

    Args:
        group: The process group (None: the default group).

    Returns:
        A :class:`CostEstimate` (``.describe()`` renders it). Identical on every rank as long as
        every rank installed the same seed.
    """
    return group_estimate(group).view()
