"""Compressed collectives with torch.distributed's signatures.

``all_reduce``, ``all_gather_into_tensor``, ``reduce_scatter_tensor`` (and the
list forms ``all_gather`` / ``reduce_scatter``) take the arguments of their
``torch.distributed`` namesakes in the same order, plus the format after the
tensors and keyword-only codec options. Results go into the tensors passed in;
with ``async_op=True`` a :class:`CollectiveHandle` (used like torch's ``Work``)
is returned, else None.

Every call runs in three stages on every rank:

1. the 88-byte descriptor all-gather (``mxcomm.collectives.handshake``; skipped with
   ``verify=False``): every rank checks that all agree, or every rank raises --
   a rank whose own arguments are invalid still takes part, flagged, so
   nobody is left waiting; the descriptors also carry every rank's phase times
   of the previous all-reduce, which the group's estimate learns from
   (``mxcomm.collectives.estimator``);
2. ``start``: encode and post the (async) payload exchanges of every pipeline
   segment;
3. ``finish``: wait, decode, (two-shot: re-encode -- in ``gather_fmt`` if one is
   given -- and all-gather), write the result. With ``async_op=True`` stage 3 runs
   in the handle's ``wait()``.

Tensors are encoded flattened (blocks of ``block_size`` consecutive elements
in row-major order), so any shape works and only a tensor's last block is
padded. Payloads travel as uint8 buffers of sizes every rank computes from
``fmt.packed_nbytes``; only ``all_gather_into_tensor`` and
``all_to_all_single`` are used (plus ``all_reduce`` for ``none``), which gloo
and NCCL both provide.
"""

from __future__ import annotations

import logging
import time
import warnings
import weakref
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from mxcomm.collectives.accounting import CommRecord, current_trackers, emit
from mxcomm.collectives.algorithms import REQUESTABLE
from mxcomm.collectives.estimator import CallMeta, GroupEstimate, group_estimate
from mxcomm.collectives.handshake import (
    Descriptor,
    WireDescriptor,
    agree,
    algorithm_name,
    format_fingerprint,
    invalid_descriptor,
)
from mxcomm.collectives.planner import (
    DEFAULT_SEGMENT_ELEMS,
    CostModel,
    Plan,
    all_reduce_logical_bytes,
    chunk_bounds,
    gather_format,
    payload_nbytes,
    plan_all_reduce,
    segment_bounds,
    two_shot_block,
    two_shot_slot_nbytes,
)
from mxcomm.collectives.timing import CallTimer, call_timer
from mxcomm.collectives.transport import PAYLOAD_PHASE, RANGE_PHASE, SECOND_PHASE, Transport, group_device
from mxcomm.errors import ArgumentTypeError, FormatError, MxcommError, RangeError, UnsupportedReduceOpError
from mxcomm.formats import BlockFormat, get_format
from mxcomm.kernels import Packed, decode, decode_sum, encode, resolve_backend
from mxcomm.kernels.packed import INPUT_DTYPES
from mxcomm.kernels.reference import saturating_cast
from mxcomm.kernels.rotation import rotate, unrotate
from mxcomm.kernels.torch_ops import profile_range

log = logging.getLogger("mxcomm.collectives")

SUM = dist.ReduceOp.SUM
#: What ``op`` accepts: ``dist.ReduceOp.SUM`` (or a ``dist.ReduceOp`` holding it) or ``"sum"``.
ReduceOpLike: TypeAlias = "dist.ReduceOp | dist.ReduceOp.RedOpType | str"

#: How each public collective runs while torch.compile traces it: through its custom op, as one
#: opaque node (filled in by mxcomm.collectives.torch_ops, which imports this module).
TRACED: dict[str, Callable[..., Any]] = {}

# -- argument checks -------------------------------------------------------------------------------


def _check_tensor(t: Any, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ArgumentTypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in INPUT_DTYPES:
        raise FormatError(f"{what} must be float32, bfloat16 or float16, got {t.dtype}")
    return t


def _check_like(t: Any, what: str, like: torch.Tensor, numel: int) -> torch.Tensor:
    """``t`` is a tensor of ``like``'s dtype and device with ``numel`` elements."""
    _check_tensor(t, what)
    if t.dtype != like.dtype:
        raise FormatError(f"{what} must have dtype {like.dtype}, got {t.dtype}")
    if t.device != like.device:
        raise FormatError(f"{what} must be on {like.device}, got {t.device}")
    if t.numel() != numel:
        raise FormatError(f"{what} must have {numel} elements, got {t.numel()} (shape {tuple(t.shape)})")
    return t


def _check_list(items: Any, what: str, like: torch.Tensor, n: int) -> list[torch.Tensor]:
    """``items`` is a list of ``n`` tensors of ``like``'s shape, dtype and device (as torch's list collectives)."""
    if not isinstance(items, (list, tuple)):
        raise ArgumentTypeError(f"{what} must be a list of torch.Tensor, got {type(items).__name__}")
    if len(items) != n:
        raise FormatError(f"{what} must hold world size = {n} tensors, got {len(items)}")
    for r, t in enumerate(items):
        _check_like(t, f"{what}[{r}]", like, like.numel())
        if t.shape != like.shape:
            raise FormatError(f"{what}[{r}] must have shape {tuple(like.shape)}, got {tuple(t.shape)}")
    return list(items)


def _check_sum(op: Any, collective: str) -> None:
    """Only SUM: ``dist.ReduceOp.SUM`` (or a ``ReduceOp`` holding it) or the string ``"sum"``."""
    if isinstance(op, str):
        if op.lower() == "sum":
            return
    elif isinstance(op, (dist.ReduceOp, dist.ReduceOp.RedOpType)) and op == SUM:
        return
    raise UnsupportedReduceOpError(
        f"{collective} supports only op=ReduceOp.SUM (compressed reductions are sums of decoded partials), "
        f"got {op!r}"
    )


def _format(fmt: Any) -> BlockFormat:
    if fmt is None:
        raise FormatError("fmt is required (a format name or a BlockFormat)")
    return get_format(fmt)


# -- jobs and handles ------------------------------------------------------------------------------


@dataclass
class _CallInfo:
    op: str
    algorithm: str
    requested: str
    fmt_name: str
    world_size: int
    numel: int
    dtype: torch.dtype
    logical: int
    segments: int
    reason: str
    measured: CallMeta | None = None  # what the estimate learns this call as (all_reduce only)
    gather_name: str = ""  # two-shot's all-gather format when it is not the format itself


#: A started call's remaining work. Each ``yield`` follows a round of posted exchanges and says
#: whether resuming will post more (two-shot's second phase) or only wait and decode.
Steps = Generator[bool, None, None]


@dataclass
class _Range:
    """A call's clipped blocks (docs/semantics.md, "Range"): this rank's encodes, and ``strict``.

    With ``strict`` every rank exchanges its count (one int64, the "range check" exchange)
    after the payloads arrived and before any output is written, and every rank raises the
    same :class:`~mxcomm.RangeError` if some rank's encodes clipped.
    """

    strict: bool
    counts: list[torch.Tensor] = field(default_factory=list)

    def encode(self, x: torch.Tensor, fmt: BlockFormat, backend: str) -> Packed:
        p = encode(x, fmt, backend=backend)
        assert p.clipped is not None
        self.counts.append(p.clipped)
        return p

    def local(self) -> int:
        """Blocks that clipped in this rank's encodes so far (reads the counts: a CUDA sync)."""
        return int(sum(int(c) for c in self.counts))

    def check(self, transport: Transport, device: torch.device, op: str) -> None:
        if not self.strict:
            return
        n = transport.n
        mine = torch.tensor([self.local()], dtype=torch.int64, device=device)
        every = torch.empty(n, dtype=torch.int64, device=device)
        transport.all_gather(every.view(torch.uint8), mine.view(torch.uint8), RANGE_PHASE).wait()
        by_rank = tuple(int(v) for v in every.tolist())
        if any(by_rank):
            raise RangeError(
                f"{op}: {sum(by_rank)} blocks clipped (by rank: {list(by_rank)}): the format cannot hold the "
                "input's range (docs/semantics.md 'Range'); strict=True refuses the call, no output was written",
                clipped_blocks=sum(by_rank), clipped_by_rank=by_rank,
            )


@dataclass
class _Context:
    """What every rank knows before validating its arguments."""

    group: ProcessGroup | None
    n: int
    rank: int
    transport: Transport
    verify: bool
    timer: CallTimer
    estimate: GroupEstimate
    range: _Range


@dataclass
class _Prepared:
    """A validated call: its descriptor, where its buffers live, and how it starts once ranks agree."""

    desc: Descriptor
    device: torch.device
    start: Callable[[WireDescriptor], tuple[Steps, _CallInfo]]

    def then(self, after: Callable[[], None]) -> _Prepared:
        """The same call, running ``after`` once its result is written (the list collectives' copy-out)."""

        def start(agreed: WireDescriptor) -> tuple[Steps, _CallInfo]:
            steps, info = self.start(agreed)

            def chained() -> Steps:
                yield from steps
                after()

            return chained(), info

        return _Prepared(self.desc, self.device, start)


class _Job:
    """A started collective: a generator that has posted its first exchanges and yields between rounds."""

    def __init__(self, steps: Steps, info: _CallInfo, ctx: _Context, t0: float, measure: bool) -> None:
        self._steps = steps
        self._info = info
        self._wire = ctx.transport
        self._ctx = ctx
        self._measure = measure
        self._t0 = t0
        self._trackers = current_trackers()
        self._error: BaseException | None = None
        self.done = False
        self.more_to_post = True
        self.handle_dropped = False
        self._resume()  # run up to the first wait point: the first round is posted

    def _resume(self) -> None:
        """Run to the next yield (or the end); a failure is kept and raised again by later calls."""
        try:
            self.more_to_post = next(self._steps)
            return
        except StopIteration:
            pass
        except BaseException as e:
            # a second wait() must not resume a dead generator and record a call that failed
            self._error = e
            self.done = True
            self.more_to_post = False
            raise
        self.done = True
        self.more_to_post = False
        self._record()

    def post_all(self) -> None:
        """Post every exchange still to post (two-shot's second phase: waits for the first)."""
        if self._error is not None:
            raise self._error
        while self.more_to_post:
            self._resume()

    def finish(self) -> None:
        if self._error is not None:
            raise self._error
        while not self.done:
            self._resume()

    def _record(self) -> None:
        i = self._info
        if self._measure and i.measured is not None:
            self._ctx.estimate.record(i.measured, self._ctx.timer.times(0))
        record = CommRecord(
            op=i.op,
            algorithm=i.algorithm,
            requested=i.requested,
            format=i.fmt_name,
            world_size=i.world_size,
            numel=i.numel,
            dtype=str(i.dtype).replace("torch.", ""),
            logical_bytes=i.logical,
            bytes_sent=self._wire.sent,
            bytes_received=self._wire.received,
            seconds=time.perf_counter() - self._t0,
            segments=i.segments,
            reason=i.reason,
            clipped_blocks=self._ctx.range.local(),
            encode_s=self._ctx.timer.encode_s,
            decode_s=self._ctx.timer.decode_s,
            wait_s=self._ctx.timer.wait_s,
            gather_format=i.gather_name,
        )
        emit(record, self._trackers)


# The async jobs not yet completed, per process group, in issue order. Holding them keeps their
# buffers (and the tensors they write) alive until their exchanges are done, even when the
# handle was dropped.
_in_flight: weakref.WeakKeyDictionary[ProcessGroup, list[_Job]] = weakref.WeakKeyDictionary()


def _group_key(group: ProcessGroup | None) -> ProcessGroup:
    return group if group is not None else dist.distributed_c10d._get_default_group()


def settle_in_flight(group: ProcessGroup | None) -> None:
    """Before a new call posts on ``group``: earlier jobs post what they still have to post, dropped ones complete.

    So every rank posts the exchanges of its calls in issue order, whenever and
    in whatever order it waits on their handles, and a dropped handle's output is
    written at the latest here. A failure of a job whose handle is alive is left
    for its ``wait()`` to raise; a dropped job's failure is raised here.
    """
    jobs = _in_flight.get(_group_key(group))
    if not jobs:
        return
    try:
        for job in list(jobs):
            try:
                job.post_all()
                if job.handle_dropped:
                    job.finish()
            except Exception:
                if job.handle_dropped:
                    raise
    finally:
        jobs[:] = [j for j in jobs if not j.done]


class CollectiveHandle:
    """What a collective called with ``async_op=True`` returns; used like ``torch.distributed``'s ``Work``.

    ``wait()`` completes the collective (waits for the exchanges, decodes, and
    for two-shot posts and waits for the second exchange), writes the result
    into the output tensor(s) given to the call and returns True.

    * Waiting again does nothing (and returns True); if the call failed, every
      ``wait()`` raises the same error.
    * Handles may be waited in any order, at any point, differently on
      different ranks: a call's exchanges are always posted in issue order (the
      next mxcomm collective on the group first posts an earlier two-shot's
      second phase).
    * Dropping a handle without ``wait()`` warns (``ResourceWarning``); the call
      still runs to completion -- its buffers stay referenced and its output is
      written when the next mxcomm collective is issued on the group. Do not
      touch its tensors before that.

    ``is_completed()`` is True once ``wait()`` has returned. A compressed
    collective writes its output in ``wait()`` (the uncompressed ``none``
    all-reduce is ``dist.all_reduce``'s and, as in torch, may write any time
    before); read it only after. The call is recorded by ``track_comm`` when
    it completes.
    """

    def __init__(self, job: _Job) -> None:
        self._job = job

    def wait(self) -> bool:
        """Complete the collective and write its result.

        Returns:
            True, like ``torch.distributed.Work.wait``; the result is in the output tensor(s).

        Raises:
            CollectiveAbortedError: a peer died, stalled or left the call (``CollectiveTimeoutError``
                after the group's timeout); the group is unusable afterwards.
            MxcommError: what the collective raised (every later ``wait()`` raises it again).
        """
        self._job.finish()
        return True

    def is_completed(self) -> bool:
        """Whether ``wait()`` has run (the output tensors hold the result).

        Returns:
            False until ``wait()`` has returned (or raised), True afterwards.
        """
        return self._job.done

    def __del__(self) -> None:
        job = getattr(self, "_job", None)
        if job is not None and not job.done:
            job.handle_dropped = True
            warnings.warn(
                f"an mxcomm {job._info.op} handle was dropped without wait(): its output is written when the "
                "next mxcomm collective is issued on the group", ResourceWarning, stacklevel=2,
            )


def _launch(
    op: str,
    requested: str,
    group: ProcessGroup | None,
    async_op: bool,
    verify: bool,
    prepare: Callable[[_Context], _Prepared],
    strict: bool = False,
) -> CollectiveHandle | None:
    """Validate, agree on the descriptor (on every rank, even one whose arguments failed), start, finish.

    ``prepare`` validates the arguments and raises an ``MxcommError`` if they are
    unusable; that rank then sends a descriptor flagged invalid, so every rank
    raises instead of some of them waiting for payloads that never come.
    """
    t0 = time.perf_counter()
    n = dist.get_world_size(group)
    transport = Transport(group, n, op)
    ctx = _Context(group, n, dist.get_rank(group), transport, verify, call_timer(transport), group_estimate(group),
                   _Range(bool(strict)))
    settle_in_flight(group)
    local_error: MxcommError | None = None
    prepared: _Prepared | None = None
    try:
        if not isinstance(strict, bool):
            raise ArgumentTypeError(f"strict must be a bool, got {type(strict).__name__}")
        prepared = prepare(ctx)
        desc, device = replace(prepared.desc, strict=strict), prepared.device
    except MxcommError as e:
        local_error = e
        desc, device = invalid_descriptor(op, requested), group_device(group)
    if verify:
        # every descriptor carries this rank's times of the group's previous measured all-reduce
        desc = replace(desc, times=ctx.estimate.take_pending())
    # The received descriptors carry every rank's times of the group's previous measured call: the
    # estimate learns from them first (on every rank alike, even when this call then fails).
    with profile_range("mxcomm::handshake"):
        agreed = agree(desc, local_error, device, ctx.transport, verify, timed=ctx.timer.descriptor,
                       on_received=ctx.estimate.absorb)
    assert prepared is not None  # a rank with a local error raised in agree
    steps, info = prepared.start(agreed)
    ctx.transport.algorithm = info.algorithm
    # Only synchronous calls with a descriptor are measured: an async call's waits include the
    # caller's own work, and without a descriptor the times could not reach the other ranks.
    job = _Job(steps, info, ctx, t0, measure=verify and not async_op)
    if not async_op:
        job.finish()
        return None
    ctx.transport.async_wait = True  # what fails from now on surfaces in wait() (or a later call)
    if not job.done:
        _in_flight.setdefault(_group_key(group), []).append(job)
    return CollectiveHandle(job)


# -- algorithms (generators: post, yield whether more will be posted, then wait and decode) ---------------------------------------


def _from_slot(buf: torch.Tensor, start: int, fmt: BlockFormat, numel: int, dtype: torch.dtype) -> Packed:
    """The Packed whose payload sits at ``buf[start:]`` (a view; no copy)."""
    return Packed.from_payload(buf[start : start + payload_nbytes(fmt, numel)], fmt, (numel,), dtype)


def _one_shot(
    src: torch.Tensor, dst: torch.Tensor, fmt: BlockFormat, segs: Sequence[tuple[int, int]], rank: int,
    n: int, transport: Transport, backend: str, timer: CallTimer, rng: _Range,
) -> Generator[None, None, None]:
    posted = []
    for s0, s1 in segs:
        with timer.codec("encode", s1 - s0):
            payload = rng.encode(src[s0:s1], fmt, backend).payload()
        out = torch.empty(n * payload.numel(), dtype=torch.uint8, device=src.device)
        posted.append((s0, s1, payload.numel(), out, timer.track(transport.all_gather(out, payload, PAYLOAD_PHASE))))
    yield False
    for *_, work in posted:
        work.wait()
    rng.check(transport, src.device, "all_reduce")
    for s0, s1, size, out, _ in posted:
        shards = [_from_slot(out, r * size, fmt, s1 - s0, src.dtype) for r in range(n)]
        with timer.codec("decode", n * (s1 - s0)):
            dst[s0:s1].copy_(decode_sum(shards, dtype=dst.dtype, backend=backend))


def _two_shot(
    src: torch.Tensor, dst: torch.Tensor, fmt: BlockFormat, segs: Sequence[tuple[int, int]], rank: int,
    n: int, transport: Transport, backend: str, timer: CallTimer, rng: _Range, gather: BlockFormat,
) -> Generator[None, None, None]:
    """Two-shot: the reduce-scatter phase in ``fmt``, the all-gather of the reduced chunks in ``gather``
    (:func:`~mxcomm.collectives.planner.gather_format`: ``fmt`` itself, or a gather format carrying ``fmt``'s
    rotation)."""
    if fmt.rotation_seed is not None:
        yield from _two_shot_rotated(src, dst, fmt, segs, rank, n, transport, backend, timer, rng, gather)
        return
    yield from _two_shot_plain(src, dst, fmt, segs, rank, n, transport, backend, timer, rng, gather)


def _two_shot_rotated(
    src: torch.Tensor, dst: torch.Tensor, fmt: BlockFormat, segs: Sequence[tuple[int, int]], rank: int,
    n: int, transport: Transport, backend: str, timer: CallTimer, rng: _Range, gather: BlockFormat,
) -> Generator[None, None, None]:
    """Two-shot with a rotated format: rotate each segment once, run both phases in the
    rotated domain with the plain formats, un-rotate once at the end.

    The sum is linear, so the chunk sums of rotated partials are the rotated chunk sums;
    re-encoding them needs no second rotation. Segments are padded to whole blocks (the
    rotation mixes a block's padding into all of its values, so padded positions travel).
    """
    plain = fmt.with_options(rotation_seed=None)
    block, seed = fmt.block_size, fmt.rotation_seed
    assert seed is not None
    padded_segs, rotated = [], []
    start = 0
    for s0, s1 in segs:
        length = s1 - s0
        padded = torch.zeros((1, -(-length // block) * block), dtype=torch.float32, device=src.device)
        padded[0, :length] = src[s0:s1]
        with timer.codec("encode", 0, calls=0):  # the rotation is part of the rotated format's encode cost
            rotated.append(rotate(padded, seed, block).view(-1))
        padded_segs.append((start, start + padded.shape[1]))
        start += padded.shape[1]
    flat_rotated = torch.cat(rotated) if rotated else torch.zeros(0, dtype=torch.float32, device=src.device)
    summed = torch.empty_like(flat_rotated)
    yield from _two_shot_plain(flat_rotated, summed, plain, padded_segs, rank, n, transport, backend, timer, rng,
                               gather.with_options(rotation_seed=None))
    for (s0, s1), (p0, p1) in zip(segs, padded_segs):
        with timer.codec("decode", 0, calls=0):
            back = unrotate(summed[p0:p1].view(1, -1), seed, block)[0, : s1 - s0]
        dst[s0:s1].copy_(saturating_cast(back, dst.dtype))


def _two_shot_plain(
    src: torch.Tensor, dst: torch.Tensor, fmt: BlockFormat, segs: Sequence[tuple[int, int]], rank: int,
    n: int, transport: Transport, backend: str, timer: CallTimer, rng: _Range, gather: BlockFormat,
) -> Generator[None, None, None]:
    device = src.device
    block = two_shot_block(fmt, gather)
    phase1 = []
    for s0, s1 in segs:
        chunks = chunk_bounds(s1 - s0, n, block)
        slot = two_shot_slot_nbytes(fmt, s1 - s0, n, block)
        send = torch.zeros(n * slot, dtype=torch.uint8, device=device)
        for c, (a, b) in enumerate(chunks):
            if b > a and c != rank:
                with timer.codec("encode", b - a):
                    payload = rng.encode(src[s0 + a : s0 + b], fmt, backend).payload()
                send[c * slot : c * slot + payload.numel()] = payload
        # The owner's own chunk never leaves the rank, so it enters the sum exactly (a copy:
        # the tensor is overwritten in place later and may be touched before an async wait).
        a, b = chunks[rank]
        own = src[s0 + a : s0 + b].clone()
        recv = torch.empty(n * slot, dtype=torch.uint8, device=device)
        phase1.append((s0, s1, chunks, slot, own, recv, timer.track(transport.all_to_all(recv, send, PAYLOAD_PHASE))))
    yield True  # the second phase is posted as the first one's segments arrive
    phase2 = []
    for s0, s1, chunks, slot, own, recv, work in phase1:
        work.wait()
        a, b = chunks[rank]
        gslot = two_shot_slot_nbytes(gather, s1 - s0, n, block)
        reencoded = torch.zeros(gslot, dtype=torch.uint8, device=device)
        if b > a:
            parts = [_from_slot(recv, j * slot, fmt, b - a, src.dtype) for j in range(n) if j != rank]
            # fp32: the other ranks' chunks in rank order, then the own one. The owner then
            # re-encodes (in the gather format) and, like every other rank, uses the decoded
            # re-encoded chunk: that is what makes all ranks bitwise equal.
            if parts:
                with timer.codec("decode", (n - 1) * (b - a)):
                    reduced = decode_sum(parts, dtype=torch.float32, backend=backend).add_(own)  # exact widening
            else:
                reduced = own.to(torch.float32)
            with timer.codec("encode", b - a):
                payload = rng.encode(reduced, gather, backend).payload()
            reencoded[: payload.numel()] = payload
        out = torch.empty(n * gslot, dtype=torch.uint8, device=device)
        phase2.append((s0, chunks, gslot, out, timer.track(transport.all_gather(out, reencoded, SECOND_PHASE))))
    yield False
    for *_, work in phase2:
        work.wait()
    rng.check(transport, device, "all_reduce")
    for s0, chunks, gslot, out, _ in phase2:
        for c, (a, b) in enumerate(chunks):
            if b > a:
                p = _from_slot(out, c * gslot, gather, b - a, torch.float32)
                with timer.codec("decode", b - a):
                    dst[s0 + a : s0 + b].copy_(decode(p, dtype=dst.dtype, backend=backend))


def _plain(tensor: torch.Tensor, transport: Transport, timer: CallTimer) -> Steps:
    work = timer.track(transport.all_reduce(tensor, PAYLOAD_PHASE))
    yield False
    work.wait()


# -- public API ------------------------------------------------------------------------------------

_COMMON_ARGS = """
        group: The process group (None: the default group).
        async_op: Return a :class:`CollectiveHandle` instead of completing the call.
        backend: Codec backend (``"auto"``, ``"torch"``, ``"cpu"``, ``"triton"``).
        verify: Exchange and check the 88-byte descriptor first. ``False`` saves that
            small all-gather; the caller then vouches that every rank passes the same
            shapes, dtype and format (a disagreement is undefined, as with plain
            ``torch.distributed``) and argument errors are raised only where they occur.
            Without the descriptor, ``auto`` neither learns from the call nor explores.
        strict: Raise :class:`~mxcomm.RangeError` on every rank, before any output is
            written, if some rank's encodes clipped a block (the format cannot hold the
            input's range; docs/semantics.md, "Range"). Costs one more exchange of 8 bytes
            per rank (the "range check"); must be the same on every rank (the descriptor
            checks it). Without it the count is in ``CommRecord.clipped_blocks``.
"""


def _doc(fn: Callable[..., Any]) -> Callable[..., Any]:
    # The arguments every collective shares, documented once (docstrings are None under python -OO).
    if fn.__doc__:
        fn.__doc__ = fn.__doc__.replace("        {common}\n", _COMMON_ARGS.lstrip("\n"))
    return fn


@_doc
def all_reduce(
    tensor: torch.Tensor,
    fmt: str | BlockFormat | None,
    op: ReduceOpLike = SUM,
    group: ProcessGroup | None = None,
    async_op: bool = False,
    *,
    algorithm: str = "auto",
    model: CostModel | None = None,
    segment_elems: int | None = None,
    backend: str = "auto",
    verify: bool = True,
    strict: bool = False,
    gather_fmt: str | BlockFormat | None = None,
) -> CollectiveHandle | None:
    """In-place SUM all-reduce of ``tensor`` over ``group``, compressed in ``fmt`` (as ``dist.all_reduce``).

    Every rank ends with bitwise-identical values. A non-contiguous tensor is
    reduced through a contiguous copy and written back.

    Args:
        tensor: float32, bfloat16 or float16 tensor of any shape; overwritten with the sum.
        fmt: Format name or :class:`~mxcomm.formats.BlockFormat`; may be None with ``algorithm="none"``.
        op: ``dist.ReduceOp.SUM`` or ``"sum"``, the only reduction there is.
        {common}
        algorithm: ``"allgather"`` (one-shot), ``"two_shot"``, ``"none"`` (plain
            ``dist.all_reduce``) or ``"auto"`` (the planner, with the group's estimate,
            learned from its own calls, see :func:`cost_model`; rank 0's choice is used by
            every rank).
        model: Cost model for ``"auto"`` instead of the group's estimate (used as given: no
            exploration; the call's times still feed the estimate).
        segment_elems: Pipeline segment length in elements (rounded up to whole blocks;
            rank 0's value is used).
        gather_fmt: Format of two-shot's second phase, the all-gather of the reduced chunks
            (None: ``fmt``). The reduce-scatter phase runs in ``fmt``; a finer gather format
            (e.g. ``mxfp4`` then ``mxfp6_e2m3``) keeps most of two-shot's wire saving without
            quantizing the sum as coarsely as the partials. With a rotated ``fmt`` both phases
            run in its rotated domain: the gather format must block like it and carry no
            rotation or the same one. Compared across ranks like ``fmt``; ``"auto"`` prices
            two-shot with it; one-shot ignores it.

    Returns:
        None, or a :class:`CollectiveHandle` with ``async_op=True``.

    Raises:
        ArgumentTypeError: ``tensor`` is not a ``torch.Tensor``.
        UnsupportedReduceOpError: ``op`` is not SUM.
        FormatError: unsupported dtype, unknown format or algorithm, bad ``segment_elems``, a
            ``gather_fmt`` without ``fmt`` or rotated / blocked unlike a rotated ``fmt``.
        BackendUnavailableError: the requested codec backend cannot run here.
        CollectiveMismatchError: ranks disagree (format, gather format, ...), or another rank's
            arguments were invalid.
        CollectiveAbortedError: a peer died, stalled or left the call (``CollectiveTimeoutError``
            after the group's timeout); raised on every surviving rank, the group is unusable after.

    With ``verify=True`` an invalid call raises on every rank: the rank at fault its
    own error, the others ``CollectiveMismatchError``; nothing hangs.
    """
    if torch.compiler.is_compiling() and not strict:  # (strict runs eagerly: it reads the counts)
        return TRACED["all_reduce"](tensor, fmt, op, group, async_op, algorithm=algorithm, model=model,
                                    segment_elems=segment_elems, backend=backend, verify=verify,
                                    gather_fmt=gather_fmt)

    def prepare(ctx: _Context) -> _Prepared:
        _check_tensor(tensor, "all_reduce tensor")
        _check_sum(op, "all_reduce")
        if algorithm not in REQUESTABLE:
            raise FormatError(f"algorithm must be one of {tuple(a.value for a in REQUESTABLE)}, got {algorithm!r}")
        if fmt is None and algorithm != "none":
            raise FormatError("fmt is required unless algorithm='none'")
        f = get_format(fmt) if fmt is not None else None
        if gather_fmt is not None and f is None:
            raise FormatError("gather_fmt needs fmt (the format of the reduce-scatter phase)")
        g = get_format(gather_fmt) if gather_fmt is not None else None
        gather = gather_format(f, g) if f is not None else None  # validates the pair
        # None when the gather phase encodes exactly like the format (the same call as no gather_fmt)
        explicit_gather = g if gather is not None and f is not None and \
            format_fingerprint(gather) != format_fingerprint(f) else None
        if f is not None and algorithm != "none":
            resolve_backend(backend, tensor.device)  # an unusable backend fails here, on every rank
        n, esize = ctx.n, tensor.element_size()
        if algorithm == "auto" and model is not None:
            assert f is not None
            with profile_range("mxcomm::plan"):
                plan = plan_all_reduce(model, f, tensor.numel(), esize, n, explicit_gather)
        elif algorithm == "auto":
            assert f is not None
            # explores only with a descriptor: rank 0's flag must reach every rank
            with profile_range("mxcomm::plan"):
                plan = ctx.estimate.plan(f, tensor.numel(), esize, n, explore=ctx.verify,
                                         gather_fmt=explicit_gather)
        else:
            plan = Plan(algorithm, DEFAULT_SEGMENT_ELEMS, "requested", {})
        if segment_elems is not None:
            if not isinstance(segment_elems, int) or isinstance(segment_elems, bool) or segment_elems < 1:
                raise FormatError(f"segment_elems must be a positive int, got {segment_elems!r}")
            plan = replace(plan, segment_elems=segment_elems)
        if f is not None:
            # segments start on block boundaries (of both two-shot phases), so they cut no block in two
            block = two_shot_block(f, explicit_gather)
            plan = replace(plan, segment_elems=-(-plan.segment_elems // block) * block)
        desc = Descriptor(
            "all_reduce", algorithm, plan.algorithm, tensor.dtype, tuple(tensor.shape),
            format_fingerprint(f) if f is not None else b"\0" * 8, f.name if f is not None else "",
            plan.segment_elems, explored=plan.explored,
            gather_fingerprint=format_fingerprint(gather) if gather is not None else None,
        )

        def start(agreed: WireDescriptor) -> tuple[Steps, _CallInfo]:
            chosen = algorithm_name(agreed.planned)
            reason = plan.reason
            if chosen != plan.algorithm or agreed.explored != plan.explored:
                reason = f"rank 0 chose {chosen} (this rank's model chose {plan.algorithm}: {plan.reason})"
            measured = None
            # the gather phase runs only in two-shot; a one-shot call is the format's alone
            phase2 = gather if chosen == "two_shot" and explicit_gather is not None else None
            if ctx.verify:
                # from the agreed descriptor (rank 0's), so every rank counts and learns the same
                fp = agreed.fingerprint if f is not None else b""
                gfp = agreed.gather_fingerprint if f is not None and agreed.gather_fingerprint != fp else None
                ctx.estimate.note_run(fp, f.name if f is not None else "", esize, tensor.numel(), chosen,
                                      agreed.explored, gather_fingerprint=gfp)
                measured = CallMeta.of(chosen, f, fp, tensor.numel(), esize, n, agreed.segment_elems,
                                       explicit_gather, gfp)
            log.debug(
                "all_reduce rank %d/%d numel=%d %s fmt=%s requested=%s -> %s; %s",
                ctx.rank, n, tensor.numel(), tensor.dtype, f.name if f else None, algorithm, chosen, reason,
            )
            work = tensor if tensor.is_contiguous() else tensor.contiguous()
            flat = work.view(-1)
            segs = segment_bounds(flat.numel(), agreed.segment_elems)
            logical = all_reduce_logical_bytes(tensor.numel(), esize, n)
            if chosen == "none":
                reduce = _plain(work, ctx.transport, ctx.timer)
                # What a bandwidth-optimal ring all-reduce moves; the backend's own algorithm may differ.
                ctx.transport.sent += logical
                ctx.transport.received += logical
            else:
                assert f is not None
                # The result is written segment by segment after all of them were encoded: no input is read late.
                if chosen == "allgather":
                    reduce = _one_shot(flat, flat, f, segs, ctx.rank, n, ctx.transport, backend, ctx.timer, ctx.range)
                else:
                    assert gather is not None
                    reduce = _two_shot(flat, flat, f, segs, ctx.rank, n, ctx.transport, backend, ctx.timer, ctx.range,
                                       gather)

            def steps() -> Steps:
                yield from reduce
                if work is not tensor:
                    tensor.copy_(work)

            info = _CallInfo(
                "all_reduce", chosen, algorithm, f.name if (f is not None and chosen != "none") else "", n,
                tensor.numel(), tensor.dtype, logical, len(segs) if chosen != "none" else 1, reason, measured,
                phase2.name if phase2 is not None else "",
            )
            return steps(), info

        return _Prepared(desc, tensor.device, start)

    requested = algorithm if isinstance(algorithm, str) else "none"
    return _launch("all_reduce", requested, group, async_op, verify, prepare, strict)


def _prepare_gather(
    ctx: _Context, output: torch.Tensor, tensor: torch.Tensor, fmt: Any, backend: str
) -> _Prepared:
    """Validate an all-gather of ``tensor`` into the flat order of ``output`` (n x its elements)."""
    _check_tensor(tensor, "all_gather input tensor")
    m = tensor.numel()
    _check_like(output, "all_gather output tensor", tensor, ctx.n * m)
    f = _format(fmt)
    resolve_backend(backend, tensor.device)
    desc = Descriptor("all_gather", "allgather", "allgather", tensor.dtype, tuple(tensor.shape),
                      format_fingerprint(f), f.name, 0)

    def start(agreed: WireDescriptor) -> tuple[Steps, _CallInfo]:
        n, device, src = ctx.n, tensor.device, tensor.reshape(-1)

        def steps() -> Steps:
            size = payload_nbytes(f, m)
            with ctx.timer.codec("encode", m):
                payload = ctx.range.encode(src, f, backend).payload() if m else torch.empty(0, dtype=torch.uint8,
                                                                                            device=device)
            out = torch.empty(n * size, dtype=torch.uint8, device=device)
            # the input is encoded: it may alias the output
            work = ctx.timer.track(ctx.transport.all_gather(out, payload, PAYLOAD_PHASE))
            yield False
            work.wait()
            ctx.range.check(ctx.transport, device, "all_gather")
            dst = output if output.is_contiguous() else torch.empty(output.shape, dtype=output.dtype, device=device)
            flat = dst.view(-1)
            for r in range(n if m else 0):
                with ctx.timer.codec("decode", m):
                    flat[r * m : (r + 1) * m] = decode(_from_slot(out, r * size, f, m, tensor.dtype),
                                                       backend=backend)
            if dst is not output:
                output.copy_(dst)

        info = _CallInfo("all_gather", "allgather", "allgather", f.name, n, m, tensor.dtype,
                         (n - 1) * m * tensor.element_size(), 1, "requested")
        log.debug("all_gather rank %d/%d numel=%d %s fmt=%s", ctx.rank, n, m, tensor.dtype, f.name)
        return steps(), info

    return _Prepared(desc, tensor.device, start)


@_doc
def all_gather_into_tensor(
    output_tensor: torch.Tensor,
    input_tensor: torch.Tensor,
    fmt: str | BlockFormat,
    group: ProcessGroup | None = None,
    async_op: bool = False,
    *,
    backend: str = "auto",
    verify: bool = True,
    strict: bool = False,
) -> CollectiveHandle | None:
    """Gather every rank's ``input_tensor``, encoded in ``fmt``, into ``output_tensor`` (as ``dist.all_gather_into_tensor``).

    Rank r's decoded tensor fills elements ``[r*N, (r+1)*N)`` of ``output_tensor``
    in row-major order (N = ``input_tensor.numel()``): concatenated along dim 0
    for an output of shape ``(n*d0, *rest)``, stacked for ``(n, *input.shape)``.
    Every rank, the owner of an entry included, gets the decoded bytes, so the
    outputs are bitwise identical on all ranks. ``input_tensor`` may be a view
    into ``output_tensor``.

    Args:
        output_tensor: n x ``input_tensor.numel()`` elements of its dtype and device.
        input_tensor: float32, bfloat16 or float16 tensor of any shape.
        fmt: Format name or :class:`~mxcomm.formats.BlockFormat`.
        {common}

    Returns:
        None, or a :class:`CollectiveHandle` with ``async_op=True``.

    Raises:
        ArgumentTypeError: a tensor argument is not a ``torch.Tensor``.
        FormatError: unsupported dtype, unknown format, output of the wrong size, dtype or device.
        BackendUnavailableError: the requested codec backend cannot run here.
        CollectiveMismatchError: ranks disagree, or another rank's arguments were invalid.
        CollectiveAbortedError: a peer died, stalled or left the call (``CollectiveTimeoutError``
            after the group's timeout); raised on every surviving rank, the group is unusable after.
    """
    if torch.compiler.is_compiling() and not strict:  # (strict runs eagerly: it reads the counts)
        return TRACED["all_gather_into_tensor"](output_tensor, input_tensor, fmt, group, async_op,
                                                backend=backend, verify=verify)
    return _launch("all_gather", "allgather", group, async_op, verify,
                   lambda ctx: _prepare_gather(ctx, output_tensor, input_tensor, fmt, backend), strict)


@_doc
def all_gather(
    tensor_list: list[torch.Tensor],
    tensor: torch.Tensor,
    fmt: str | BlockFormat,
    group: ProcessGroup | None = None,
    async_op: bool = False,
    *,
    backend: str = "auto",
    verify: bool = True,
    strict: bool = False,
) -> CollectiveHandle | None:
    """Gather every rank's ``tensor``, encoded in ``fmt``, into ``tensor_list[r]`` (as ``dist.all_gather``).

    The list form of :func:`all_gather_into_tensor` (same exchange, same bytes).

    Args:
        tensor_list: world-size tensors of ``tensor``'s shape, dtype and device; entry r
            receives rank r's decoded tensor.
        tensor: float32, bfloat16 or float16 tensor of any shape.
        fmt: Format name or :class:`~mxcomm.formats.BlockFormat`.
        {common}

    Returns:
        None, or a :class:`CollectiveHandle` with ``async_op=True``.

    Raises:
        ArgumentTypeError: ``tensor`` or an entry of ``tensor_list`` is not a ``torch.Tensor``.
        FormatError: unsupported dtype, unknown format, a list of the wrong length or entries of the
            wrong shape, dtype or device.
        BackendUnavailableError: the requested codec backend cannot run here.
        CollectiveMismatchError: ranks disagree, or another rank's arguments were invalid.
        CollectiveAbortedError: a peer died, stalled or left the call (``CollectiveTimeoutError``
            after the group's timeout); raised on every surviving rank, the group is unusable after.
    """
    if torch.compiler.is_compiling() and not strict:  # (strict runs eagerly: it reads the counts)
        return TRACED["all_gather"](tensor_list, tensor, fmt, group, async_op, backend=backend, verify=verify)

    def prepare(ctx: _Context) -> _Prepared:
        _check_tensor(tensor, "all_gather tensor")
        outputs = _check_list(tensor_list, "all_gather tensor_list", tensor, ctx.n)
        m = tensor.numel()
        flat = torch.empty(ctx.n * m, dtype=tensor.dtype, device=tensor.device)

        def copy_out() -> None:
            for r, t in enumerate(outputs):
                t.copy_(flat[r * m : (r + 1) * m].view(t.shape))

        return _prepare_gather(ctx, flat, tensor, fmt, backend).then(copy_out)

    return _launch("all_gather", "allgather", group, async_op, verify, prepare, strict)


def _prepare_scatter(
    ctx: _Context, output: torch.Tensor, chunks: list[torch.Tensor], fmt: Any, backend: str
) -> _Prepared:
    """Reduce-scatter of ``chunks`` (n flat tensors of ``output.numel()`` elements, validated) into ``output``."""
    f = _format(fmt)
    resolve_backend(backend, output.device)
    m = output.numel()
    desc = Descriptor("reduce_scatter", "all_to_all", "all_to_all", output.dtype, tuple(output.shape),
                      format_fingerprint(f), f.name, 0)

    def start(agreed: WireDescriptor) -> tuple[Steps, _CallInfo]:
        n, rank, device = ctx.n, ctx.rank, output.device

        def steps() -> Steps:
            size = payload_nbytes(f, m)
            send = torch.zeros(n * size, dtype=torch.uint8, device=device)
            if m:
                for r, c in enumerate(chunks):
                    if r != rank:
                        with ctx.timer.codec("encode", m):
                            send[r * size : (r + 1) * size] = ctx.range.encode(c, f, backend).payload()
            own = chunks[rank].clone()  # never leaves the rank: summed exactly (and the output may alias it)
            recv = torch.empty(n * size, dtype=torch.uint8, device=device)
            work = ctx.timer.track(ctx.transport.all_to_all(recv, send, PAYLOAD_PHASE))
            yield False
            work.wait()
            ctx.range.check(ctx.transport, device, "reduce_scatter")
            if m:
                parts = [_from_slot(recv, j * size, f, m, output.dtype) for j in range(n) if j != rank]
                if parts:
                    with ctx.timer.codec("decode", (n - 1) * m):
                        total = decode_sum(parts, dtype=torch.float32, backend=backend).add_(own)  # exact widening
                else:
                    total = own.to(torch.float32)
                output.copy_(total.view(output.shape))

        info = _CallInfo("reduce_scatter", "all_to_all", "all_to_all", f.name, n, m, output.dtype,
                         (n - 1) * m * output.element_size(), 1, "requested")
        log.debug("reduce_scatter rank %d/%d numel=%d %s fmt=%s", rank, n, m, output.dtype, f.name)
        return steps(), info

    return _Prepared(desc, output.device, start)


@_doc
def reduce_scatter_tensor(
    output: torch.Tensor,
    input: torch.Tensor,
    fmt: str | BlockFormat,
    op: ReduceOpLike = SUM,
    group: ProcessGroup | None = None,
    async_op: bool = False,
    *,
    backend: str = "auto",
    verify: bool = True,
    strict: bool = False,
) -> CollectiveHandle | None:
    """SUM reduce-scatter compressed in ``fmt`` (as ``dist.reduce_scatter_tensor``).

    Rank r's ``output`` = the sum over ranks of their chunk r, chunk r being
    elements ``[r*M, (r+1)*M)`` of ``input`` in row-major order
    (M = ``output.numel()``). Each rank encodes the n-1 chunks other ranks own,
    one all-to-all exchanges them, and the owner decodes them, sums them in fp32
    (rank order), adds its own chunk exactly (it never left the rank) and casts
    once.

    Args:
        output: float32, bfloat16 or float16 tensor; receives this rank's reduced chunk.
        input: n x ``output.numel()`` elements of ``output``'s dtype and device.
        fmt: Format name or :class:`~mxcomm.formats.BlockFormat`.
        op: ``dist.ReduceOp.SUM`` or ``"sum"``, the only reduction there is.
        {common}

    Returns:
        None, or a :class:`CollectiveHandle` with ``async_op=True``.

    Raises:
        ArgumentTypeError: a tensor argument is not a ``torch.Tensor``.
        UnsupportedReduceOpError: ``op`` is not SUM.
        FormatError: unsupported dtype, unknown format, ``input`` of the wrong size, dtype or device.
        BackendUnavailableError: the requested codec backend cannot run here.
        CollectiveMismatchError: ranks disagree, or another rank's arguments were invalid.
        CollectiveAbortedError: a peer died, stalled or left the call (``CollectiveTimeoutError``
            after the group's timeout); raised on every surviving rank, the group is unusable after.
    """
    if torch.compiler.is_compiling() and not strict:  # (strict runs eagerly: it reads the counts)
        return TRACED["reduce_scatter_tensor"](output, input, fmt, op, group, async_op, backend=backend, verify=verify)

    def prepare(ctx: _Context) -> _Prepared:
        _check_tensor(output, "reduce_scatter output")
        _check_like(input, "reduce_scatter input", output, ctx.n * output.numel())
        _check_sum(op, "reduce_scatter_tensor")
        m = output.numel()
        flat_in = input.reshape(-1)
        return _prepare_scatter(ctx, output, [flat_in[r * m : (r + 1) * m] for r in range(ctx.n)], fmt, backend)

    return _launch("reduce_scatter", "all_to_all", group, async_op, verify, prepare, strict)


@_doc
def reduce_scatter(
    output: torch.Tensor,
    input_list: list[torch.Tensor],
    fmt: str | BlockFormat,
    op: ReduceOpLike = SUM,
    group: ProcessGroup | None = None,
    async_op: bool = False,
    *,
    backend: str = "auto",
    verify: bool = True,
    strict: bool = False,
) -> CollectiveHandle | None:
    """SUM reduce-scatter of a list compressed in ``fmt`` (as ``dist.reduce_scatter``).

    Rank r's ``output`` = the sum over ranks of their ``input_list[r]``; the list
    form of :func:`reduce_scatter_tensor` (same exchange, same bytes).

    Args:
        output: float32, bfloat16 or float16 tensor; receives this rank's reduced entry.
        input_list: world-size tensors of ``output``'s shape, dtype and device.
        fmt: Format name or :class:`~mxcomm.formats.BlockFormat`.
        op: ``dist.ReduceOp.SUM`` or ``"sum"``, the only reduction there is.
        {common}

    Returns:
        None, or a :class:`CollectiveHandle` with ``async_op=True``.

    Raises:
        ArgumentTypeError: ``output`` or an entry of ``input_list`` is not a ``torch.Tensor``.
        UnsupportedReduceOpError: ``op`` is not SUM.
        FormatError: unsupported dtype, unknown format, a list of the wrong length or entries of the
            wrong shape, dtype or device.
        BackendUnavailableError: the requested codec backend cannot run here.
        CollectiveMismatchError: ranks disagree, or another rank's arguments were invalid.
        CollectiveAbortedError: a peer died, stalled or left the call (``CollectiveTimeoutError``
            after the group's timeout); raised on every surviving rank, the group is unusable after.
    """
    if torch.compiler.is_compiling() and not strict:  # (strict runs eagerly: it reads the counts)
        return TRACED["reduce_scatter"](output, input_list, fmt, op, group, async_op, backend=backend, verify=verify)

    def prepare(ctx: _Context) -> _Prepared:
        _check_tensor(output, "reduce_scatter output")
        chunks = _check_list(input_list, "reduce_scatter input_list", output, ctx.n)
        _check_sum(op, "reduce_scatter")
        return _prepare_scatter(ctx, output, [c.reshape(-1) for c in chunks], fmt, backend)

    return _launch("reduce_scatter", "all_to_all", group, async_op, verify, prepare, strict)
