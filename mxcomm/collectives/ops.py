"""Compressed all_gather, reduce_scatter and all_reduce on torch.distributed.

Every call runs in three stages on every rank:

1. the 64-byte descriptor all-gather (``mxcomm.collectives.handshake``; skipped with
   ``verify=False``): every rank checks that all agree, or every rank raises;
2. ``start``: encode and post the (async) payload exchanges of every pipeline
   segment;
3. ``finish``: wait, decode, (two-shot: re-encode and all-gather), write the
   result. With ``async_op=True`` stage 3 runs in the handle's ``wait()``.

Tensors are encoded flattened (blocks of ``block_size`` consecutive elements
in memory order), so any shape works and only a tensor's last block is
padded. Payloads travel as uint8 buffers of sizes every rank computes from
``fmt.packed_nbytes``; only ``all_gather_into_tensor`` and
``all_to_all_single`` are used (plus ``all_reduce`` for ``none``), which gloo
and NCCL both provide.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist

from mxcomm.collectives.accounting import CommRecord, current_trackers, emit
from mxcomm.collectives.algorithms import REQUESTABLE, Algorithm
from mxcomm.collectives.handshake import (
    DESCRIPTOR_NBYTES,
    Descriptor,
    WireDescriptor,
    algorithm_name,
    check_descriptors,
    format_fingerprint,
)
from mxcomm.collectives.planner import (
    DEFAULT_SEGMENT_ELEMS,
    CostModel,
    Plan,
    all_reduce_logical_bytes,
    chunk_bounds,
    get_cost_model,
    payload_nbytes,
    plan_all_reduce,
    segment_bounds,
    two_shot_slot_nbytes,
)
from mxcomm.collectives.transport import Transport, group_device
from mxcomm.errors import FormatError, MxcommError
from mxcomm.formats import BlockFormat, get_format
from mxcomm.kernels import Packed, decode, decode_sum, encode, resolve_backend
from mxcomm.kernels.packed import INPUT_DTYPES
from mxcomm.kernels.reference import saturating_cast
from mxcomm.kernels.rotation import rotate, unrotate

log = logging.getLogger("mxcomm.collectives")

# -- argument checks and the descriptor exchange --------------------------------------------------


def _check_tensor(t: Any, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise FormatError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in INPUT_DTYPES:
        raise FormatError(f"{what} must be float32, bfloat16 or float16, got {t.dtype}")
    return t


def _exchange_descriptors(desc: Descriptor, group: Any, device: torch.device, n: int, transport: Transport) -> list:
    inp = desc.to_tensor(device)
    out = torch.empty(n * DESCRIPTOR_NBYTES, dtype=torch.uint8, device=device)
    transport.all_gather(out, inp, async_op=False)
    raw = out.cpu().numpy().tobytes()
    return [WireDescriptor.unpack(raw[i * DESCRIPTOR_NBYTES : (i + 1) * DESCRIPTOR_NBYTES]) for i in range(n)]


def _agree(
    desc: Descriptor, local_error: Exception | None, group: Any, device: torch.device, n: int, transport: Transport,
    verify: bool,
) -> WireDescriptor:
    """Exchange descriptors; raise on every rank unless all agree. Returns rank 0's descriptor.

    With ``verify=False`` nothing is exchanged and the local descriptor is used:
    the caller vouches that all ranks agree (a disagreement is then undefined
    behaviour: wrong results or a hang, as with plain torch.distributed).
    """
    if not verify:
        if local_error is not None:
            raise local_error
        return WireDescriptor.unpack(desc.pack())
    received = _exchange_descriptors(desc, group, device, n, transport)
    if local_error is not None:
        raise local_error
    check_descriptors(received, compare_format=desc.requested != "none")
    return received[0]


def _invalid_descriptor(op: str, requested: str) -> Descriptor:
    return Descriptor(op, requested if requested in tuple(Algorithm) else "none", "none", torch.float32, (), b"\0" * 8,
                      "", 0, invalid=True)


# -- jobs and handles --------------------------------------------------------------------------------


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


class _Job:
    """A started collective: a generator that has posted its first exchanges and yields to wait."""

    def __init__(
        self,
        steps: Generator[None, None, None],
        info: _CallInfo,
        transport: Transport,
        t0: float,
        result: Callable[[], Any],
    ) -> None:
        self._steps = steps
        self._info = info
        self._wire = transport
        self._t0 = t0
        self._result = result
        self._trackers = current_trackers()
        self.done = False
        next(self._steps, None)  # run up to the first wait point: everything is posted

    def finish(self) -> Any:
        if not self.done:
            for _ in self._steps:
                pass
            self.done = True
            i = self._info
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
            )
            emit(record, self._trackers)
        return self._result()


class CollectiveHandle:
    """What ``async_op=True`` returns.

    ``wait()`` completes the collective (waits for the exchanges, decodes, and
    for two-shot posts and waits for the second exchange) and returns the
    result: the list of tensors for ``all_gather``, the output tensor
    otherwise. Because ``wait()`` can post an exchange, ranks must call it at
    the same point of their sequence of collectives on the group, as they must
    issue the collectives themselves. ``is_completed()`` is True once
    ``wait()`` has returned (the result is not written before).
    """

    def __init__(self, job: _Job) -> None:
        self._job = job

    def wait(self) -> Any:
        return self._job.finish()

    def is_completed(self) -> bool:
        return self._job.done


def _run(job: _Job, async_op: bool) -> Any:
    if async_op:
        return CollectiveHandle(job)
    return job.finish()


# -- algorithms (generators: post, yield, then wait and decode) ---------------------------------------


def _from_slot(buf: torch.Tensor, start: int, fmt: BlockFormat, numel: int, dtype: torch.dtype) -> Packed:
    """The Packed whose payload sits at ``buf[start:]`` (a view; no copy)."""
    return Packed.from_payload(buf[start : start + payload_nbytes(fmt, numel)], fmt, (numel,), dtype)


def _one_shot(
    src: torch.Tensor, dst: torch.Tensor, fmt: BlockFormat, segs: Sequence[tuple[int, int]], rank: int,
    n: int, transport: Transport, backend: str,
) -> Generator[None, None, None]:
    posted = []
    for s0, s1 in segs:
        payload = encode(src[s0:s1], fmt, backend=backend).payload()
        out = torch.empty(n * payload.numel(), dtype=torch.uint8, device=src.device)
        posted.append((s0, s1, payload.numel(), out, transport.all_gather(out, payload)))
    yield
    for s0, s1, size, out, work in posted:
        work.wait()
        shards = [_from_slot(out, r * size, fmt, s1 - s0, src.dtype) for r in range(n)]
        dst[s0:s1].copy_(decode_sum(shards, dtype=dst.dtype, backend=backend))


def _two_shot(
    src: torch.Tensor, dst: torch.Tensor, fmt: BlockFormat, segs: Sequence[tuple[int, int]], rank: int,
    n: int, transport: Transport, backend: str,
) -> Generator[None, None, None]:
    if fmt.rotation_seed is not None:
        yield from _two_shot_rotated(src, dst, fmt, segs, rank, n, transport, backend)
        return
    yield from _two_shot_plain(src, dst, fmt, segs, rank, n, transport, backend)


def _two_shot_rotated(
    src: torch.Tensor, dst: torch.Tensor, fmt: BlockFormat, segs: Sequence[tuple[int, int]], rank: int,
    n: int, transport: Transport, backend: str,
) -> Generator[None, None, None]:
    """Two-shot with a rotated format: rotate each segment once, run both phases in the
    rotated domain with the plain format, un-rotate once at the end.

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
        rotated.append(rotate(padded, seed, block).view(-1))
        padded_segs.append((start, start + padded.shape[1]))
        start += padded.shape[1]
    flat_rotated = torch.cat(rotated) if rotated else torch.zeros(0, dtype=torch.float32, device=src.device)
    summed = torch.empty_like(flat_rotated)
    yield from _two_shot_plain(flat_rotated, summed, plain, padded_segs, rank, n, transport, backend)
    for (s0, s1), (p0, p1) in zip(segs, padded_segs):
        back = unrotate(summed[p0:p1].view(1, -1), seed, block)[0, : s1 - s0]
        dst[s0:s1].copy_(saturating_cast(back, dst.dtype))


def _two_shot_plain(
    src: torch.Tensor, dst: torch.Tensor, fmt: BlockFormat, segs: Sequence[tuple[int, int]], rank: int,
    n: int, transport: Transport, backend: str,
) -> Generator[None, None, None]:
    device = src.device
    phase1 = []
    for s0, s1 in segs:
        chunks = chunk_bounds(s1 - s0, n, fmt.block_size)
        slot = two_shot_slot_nbytes(fmt, s1 - s0, n)
        send = torch.zeros(n * slot, dtype=torch.uint8, device=device)
        for c, (a, b) in enumerate(chunks):
            if b > a and c != rank:
                payload = encode(src[s0 + a : s0 + b], fmt, backend=backend).payload()
                send[c * slot : c * slot + payload.numel()] = payload
        # The owner's own chunk never leaves the rank, so it enters the sum exactly (a copy:
        # the tensor is overwritten in place later and may be touched before an async wait).
        a, b = chunks[rank]
        own = src[s0 + a : s0 + b].clone()
        recv = torch.empty(n * slot, dtype=torch.uint8, device=device)
        phase1.append((s0, chunks, slot, own, recv, transport.all_to_all(recv, send)))
    yield
    phase2 = []
    for s0, chunks, slot, own, recv, work in phase1:
        work.wait()
        a, b = chunks[rank]
        reencoded = torch.zeros(slot, dtype=torch.uint8, device=device)
        if b > a:
            parts = [_from_slot(recv, j * slot, fmt, b - a, src.dtype) for j in range(n) if j != rank]
            # fp32: the other ranks' chunks in rank order, then the own one. The owner then
            # re-encodes and, like every other rank, uses the decoded re-encoded chunk:
            # that is what makes all ranks bitwise equal.
            if parts:
                reduced = decode_sum(parts, dtype=torch.float32, backend=backend).add_(own)  # exact widening
            else:
                reduced = own.to(torch.float32)
            payload = encode(reduced, fmt, backend=backend).payload()
            reencoded[: payload.numel()] = payload
        out = torch.empty(n * slot, dtype=torch.uint8, device=device)
        phase2.append((s0, chunks, slot, out, transport.all_gather(out, reencoded)))
    for s0, chunks, slot, out, work in phase2:
        work.wait()
        for c, (a, b) in enumerate(chunks):
            if b > a:
                p = _from_slot(out, c * slot, fmt, b - a, torch.float32)
                dst[s0 + a : s0 + b].copy_(decode(p, dtype=dst.dtype, backend=backend))


def _plain(tensor: torch.Tensor, group: Any) -> Generator[None, None, None]:
    work = dist.all_reduce(tensor, group=group, async_op=True)
    yield
    work.wait()


# -- public API ------------------------------------------------------------------------------------


def all_reduce(
    tensor: torch.Tensor,
    fmt: str | BlockFormat | None,
    *,
    group: Any = None,
    algorithm: str = "auto",
    async_op: bool = False,
    model: CostModel | None = None,
    segment_elems: int | None = None,
    backend: str = "auto",
    verify: bool = True,
) -> CollectiveHandle | None:
    """In-place SUM all-reduce of ``tensor`` over ``group``, compressed in ``fmt``.

    ``algorithm``: ``"allgather"`` (one-shot), ``"two_shot"``, ``"none"``
    (plain ``dist.all_reduce``; ``fmt`` may then be None) or ``"auto"`` (the
    planner, with ``model`` or the group's installed ``CostModel``; rank 0's
    choice is used by all ranks). Every rank ends with bitwise-identical
    values. ``segment_elems`` overrides the pipeline segment length (rounded
    up to whole blocks; rank 0's value is used). ``backend`` selects the codec
    backend. ``verify=False`` skips the descriptor exchange (one small
    all-gather per call): the caller vouches that every rank passes the same
    shape, dtype, format and algorithm, and for ``auto`` the same model (as
    ``calibrate`` installs); a disagreement then is undefined, as with plain
    ``torch.distributed``. Returns None, or a ``CollectiveHandle`` with
    ``async_op=True``.
    Raises ``FormatError`` for invalid arguments and ``CollectiveMismatchError``
    when ranks disagree (on every rank; nothing hangs).
    """
    t0 = time.perf_counter()
    n = dist.get_world_size(group)
    rank = dist.get_rank(group)
    transport = Transport(group, n)
    local_error: MxcommError | None = None
    f: BlockFormat | None = None
    plan: Plan | None = None
    try:
        _check_tensor(tensor, "all_reduce tensor")
        if algorithm not in REQUESTABLE:
            raise FormatError(f"algorithm must be one of {tuple(a.value for a in REQUESTABLE)}, got {algorithm!r}")
        if fmt is None and algorithm != "none":
            raise FormatError("fmt is required unless algorithm='none'")
        f = get_format(fmt) if fmt is not None else None
        if f is not None and algorithm != "none":
            resolve_backend(backend, tensor.device)  # an unusable backend fails here, on every rank
        numel, esize = tensor.numel(), tensor.element_size()
        if algorithm == "auto":
            assert f is not None
            plan = plan_all_reduce(model or get_cost_model(group), f, numel, esize, n)
        else:
            plan = Plan(algorithm, DEFAULT_SEGMENT_ELEMS, "requested", {})
        if segment_elems is not None:
            if not isinstance(segment_elems, int) or isinstance(segment_elems, bool) or segment_elems < 1:
                raise FormatError(f"segment_elems must be a positive int, got {segment_elems!r}")
            plan = replace(plan, segment_elems=segment_elems)
        if f is not None:
            # segments start on block boundaries, so they cut no block in two
            plan = replace(plan, segment_elems=-(-plan.segment_elems // f.block_size) * f.block_size)
        desc = Descriptor(
            "all_reduce", algorithm, plan.algorithm, tensor.dtype, tuple(tensor.shape),
            format_fingerprint(f) if f is not None else b"\0" * 8, f.name if f is not None else "",
            plan.segment_elems,
        )
    except MxcommError as e:
        local_error = e
        desc = _invalid_descriptor("all_reduce", algorithm if isinstance(algorithm, str) else "none")
    device = tensor.device if isinstance(tensor, torch.Tensor) else group_device(group)
    agreed = _agree(desc, local_error, group, device, n, transport, verify)
    assert plan is not None
    chosen = algorithm_name(agreed.planned)
    reason = plan.reason
    if chosen != plan.algorithm:
        reason = f"rank 0 chose {chosen} (this rank's model chose {plan.algorithm}: {plan.reason})"
    log.debug(
        "all_reduce rank %d/%d numel=%d %s fmt=%s requested=%s -> %s; %s",
        rank, n, tensor.numel(), tensor.dtype, f.name if f else None, algorithm, chosen, reason,
    )
    work = tensor if tensor.is_contiguous() else tensor.contiguous()
    flat = work.view(-1)
    segs = segment_bounds(flat.numel(), agreed.segment_elems)
    if chosen == "none":
        steps = _plain(work, group)
        # What a bandwidth-optimal ring all-reduce moves; the backend's own algorithm may differ.
        logical = all_reduce_logical_bytes(tensor.numel(), tensor.element_size(), n)
        transport.sent += logical
        transport.received += logical
    else:
        assert f is not None
        # The result is written segment by segment after all of them were encoded: no input is read late.
        algo = _one_shot if chosen == "allgather" else _two_shot
        steps = algo(flat, flat, f, segs, rank, n, transport, backend)

    def result() -> torch.Tensor:
        if work is not tensor:
            tensor.copy_(work)
        return tensor

    info = _CallInfo(
        "all_reduce", chosen, algorithm, f.name if (f is not None and chosen != "none") else "", n,
        tensor.numel(), tensor.dtype, all_reduce_logical_bytes(tensor.numel(), tensor.element_size(), n),
        len(segs) if chosen != "none" else 1, reason,
    )
    job = _Job(steps, info, transport, t0, result)
    handle = _run(job, async_op)
    return handle if async_op else None


def all_gather(
    tensor: torch.Tensor,
    fmt: str | BlockFormat,
    *,
    group: Any = None,
    async_op: bool = False,
    backend: str = "auto",
    verify: bool = True,
) -> list[torch.Tensor] | CollectiveHandle:
    """Every rank's ``tensor``, encoded in ``fmt``, exchanged and decoded: a list indexed by rank.

    Every rank (including the owner of an entry) gets the decoded bytes, so the
    lists are bitwise identical on all ranks. With ``async_op=True`` returns a
    handle whose ``wait()`` returns the list.
    """
    t0 = time.perf_counter()
    n = dist.get_world_size(group)
    rank = dist.get_rank(group)
    transport = Transport(group, n)
    local_error: MxcommError | None = None
    try:
        _check_tensor(tensor, "all_gather tensor")
        f = get_format(fmt)
        resolve_backend(backend, tensor.device)
        desc = Descriptor("all_gather", "allgather", "allgather", tensor.dtype, tuple(tensor.shape),
                          format_fingerprint(f), f.name, 0)
    except MxcommError as e:
        local_error = e
        desc = _invalid_descriptor("all_gather", "allgather")
    device = tensor.device if isinstance(tensor, torch.Tensor) else group_device(group)
    _agree(desc, local_error, group, device, n, transport, verify)
    src = tensor.reshape(-1)
    numel = src.numel()
    outputs: list[torch.Tensor] = []

    def steps() -> Generator[None, None, None]:
        size = payload_nbytes(f, numel)
        payload = (
            encode(src, f, backend=backend).payload() if numel else torch.empty(0, dtype=torch.uint8, device=device)
        )
        out = torch.empty(n * size, dtype=torch.uint8, device=device)
        work = transport.all_gather(out, payload)
        yield
        work.wait()
        for r in range(n):
            if numel:
                y = decode(_from_slot(out, r * size, f, numel, tensor.dtype), backend=backend)
            else:
                y = torch.empty(0, dtype=tensor.dtype, device=device)
            outputs.append(y.view(tensor.shape))

    info = _CallInfo("all_gather", "allgather", "allgather", f.name, n, numel, tensor.dtype,
                     (n - 1) * numel * tensor.element_size(), 1, "requested")
    log.debug("all_gather rank %d/%d numel=%d %s fmt=%s", rank, n, numel, tensor.dtype, f.name)
    return _run(_Job(steps(), info, transport, t0, lambda: outputs), async_op)


def reduce_scatter(
    output: torch.Tensor,
    input: torch.Tensor | Sequence[torch.Tensor],
    fmt: str | BlockFormat,
    *,
    group: Any = None,
    async_op: bool = False,
    backend: str = "auto",
    verify: bool = True,
) -> CollectiveHandle | None:
    """SUM reduce-scatter: rank r's ``output`` = sum over ranks of their chunk r, compressed in ``fmt``.

    ``input`` is a tensor of ``world_size * output.numel()`` elements (chunk r
    = the r-th contiguous slice of its flattened view, as in
    ``dist.reduce_scatter_tensor``) or a list of ``world_size`` tensors of
    ``output.numel()`` elements each (as in ``dist.reduce_scatter``). Each
    rank encodes the n-1 chunks other ranks own, they are exchanged with one
    all-to-all, and the owner decodes them and sums them in fp32 (rank order),
    adds its own chunk exactly (it never left the rank) and casts once.
    """
    t0 = time.perf_counter()
    n = dist.get_world_size(group)
    rank = dist.get_rank(group)
    transport = Transport(group, n)
    local_error: MxcommError | None = None
    chunks: list[torch.Tensor] = []
    try:
        _check_tensor(output, "reduce_scatter output")
        f = get_format(fmt)
        resolve_backend(backend, output.device)
        m = output.numel()
        if isinstance(input, torch.Tensor):
            _check_tensor(input, "reduce_scatter input")
            if input.numel() != n * m:
                raise FormatError(
                    f"reduce_scatter input has {input.numel()} elements; world size {n} x output {m} = {n * m} needed"
                )
            flat_in = input.reshape(-1)
            chunks = [flat_in[r * m : (r + 1) * m] for r in range(n)]
        else:
            chunks = [_check_tensor(c, "reduce_scatter input item").reshape(-1) for c in input]
            if len(chunks) != n or any(c.numel() != m for c in chunks):
                raise FormatError(
                    f"reduce_scatter input list must hold {n} tensors of {m} elements, got "
                    f"{[c.numel() for c in chunks]}"
                )
        if any(c.dtype != output.dtype for c in chunks):
            raise FormatError(f"reduce_scatter input dtype must equal the output's ({output.dtype})")
        desc = Descriptor("reduce_scatter", "all_to_all", "all_to_all", output.dtype, tuple(output.shape),
                          format_fingerprint(f), f.name, 0)
    except MxcommError as e:
        local_error = e
        desc = _invalid_descriptor("reduce_scatter", "all_to_all")
    device = output.device if isinstance(output, torch.Tensor) else group_device(group)
    _agree(desc, local_error, group, device, n, transport, verify)

    def steps() -> Generator[None, None, None]:
        size = payload_nbytes(f, m)
        send = torch.zeros(n * size, dtype=torch.uint8, device=device)
        if m:
            for r, c in enumerate(chunks):
                if r != rank:
                    send[r * size : (r + 1) * size] = encode(c, f, backend=backend).payload()
        own = chunks[rank].clone()  # never leaves the rank: summed exactly
        recv = torch.empty(n * size, dtype=torch.uint8, device=device)
        work = transport.all_to_all(recv, send)
        yield
        work.wait()
        if m:
            parts = [_from_slot(recv, j * size, f, m, output.dtype) for j in range(n) if j != rank]
            if parts:
                total = decode_sum(parts, dtype=torch.float32, backend=backend).add_(own)  # exact widening
            else:
                total = own.to(torch.float32)
            output.copy_(total.view(output.shape))

    info = _CallInfo("reduce_scatter", "all_to_all", "all_to_all", f.name, n, m, output.dtype,
                     (n - 1) * m * output.element_size(), 1, "requested")
    log.debug("reduce_scatter rank %d/%d numel=%d %s fmt=%s", rank, n, m, output.dtype, f.name)
    handle = _run(_Job(steps(), info, transport, t0, lambda: output), async_op)
    return handle if async_op else None
