"""The transport: how payload bytes cross the process group, how many of them do, and how failures surface.

A :class:`Transport` posts the byte exchanges of one collective call on a
``torch.distributed`` process group and counts what this rank sends and
receives (the numbers ``track_comm`` records). Only ``all_gather_into_tensor``
and ``all_to_all_single`` on uint8 buffers are used (plus ``all_reduce`` for the
uncompressed path), which gloo and NCCL both provide.

Every exchange is posted asynchronously and waited through :meth:`Exchange.wait`,
which waits at most the group's timeout and turns a failure of the process
group (a peer that died, stalled or left the call) into a
``CollectiveAbortedError`` / ``CollectiveTimeoutError`` naming the collective,
the phase and the timeout, chained to the torch error. So a failing peer makes
every surviving rank raise within the group's timeout instead of blocking or
leaking a raw backend error (docs/reliability.md).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from mxcomm.errors import CollectiveAbortedError, CollectiveTimeoutError
from mxcomm.kernels.torch_ops import profile_range

#: The profiler range of posting an exchange and of waiting for it (torch.profiler traces).
TRANSFER_RANGE = "mxcomm::transfer"

_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

#: The phases an exchange belongs to, as named in ``CollectiveAbortedError.phase``.
DESCRIPTOR_PHASE = "descriptor exchange"
PAYLOAD_PHASE = "payload"
SECOND_PHASE = "two-shot second phase"
RANGE_PHASE = "range check"  # strict=True: every rank's clipped-block count (docs/semantics.md, "Range")
OUTLIER_PHASE = "outlier channels"

#: Test seam (fault injection, tests/collectives/test_failures.py): when set, called as
#: ``hook(collective, phase, send_buffer)`` just before each exchange is posted. It may
#: sleep (a stalled rank), exit the process (a dead rank), raise (a rank leaving the call)
#: or modify ``send_buffer`` in place (a corrupted descriptor). Never set in production.
before_post: Callable[[str, str, torch.Tensor], None] | None = None

# The substrings by which a backend error says it gave up waiting (gloo: "Timed out waiting
# 5000ms for recv operation", Work.wait(timeout): "Operation timed out!", NCCL: "Watchdog
# caught collective operation timeout"); anything else is a peer that went away.
_TIMEOUT_WORDS = ("timed out", "timeout")


def all_gather_bytes(out: torch.Tensor, inp: torch.Tensor, group: ProcessGroup | None = None, async_op: bool = False):
    """``all_gather_into_tensor`` under whichever name this torch has."""
    return _all_gather_single(out, inp, group=group, async_op=async_op)


def group_device(group: ProcessGroup | None = None) -> torch.device:
    """Where a group's communication buffers must live (CUDA for NCCL, else CPU)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def group_timeout(group: ProcessGroup | None = None) -> timedelta:
    """The timeout ``group`` was created with (``init_process_group`` / ``new_group``'s ``timeout``).

    Read from the group's backend options; where a backend does not expose them,
    torch's default for that backend (30 min for gloo, 10 min for NCCL).
    """
    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    try:
        timeout = pg._get_backend(group_device(group)).options._timeout
        if isinstance(timeout, timedelta) and timeout > timedelta(0):
            return timeout
    except (AttributeError, RuntimeError, ValueError):
        pass
    return dist.distributed_c10d._get_default_timeout(dist.get_backend(group))


class Exchange:
    """One posted exchange; :meth:`wait` waits at most the group's timeout and translates failures."""

    def __init__(self, work: dist.Work, transport: Transport, phase: str) -> None:
        self.work = work
        self._transport = transport
        self._phase = phase

    def wait(self) -> None:
        """Wait for the exchange.

        Raises:
            CollectiveTimeoutError: no progress within the group's timeout.
            CollectiveAbortedError: the exchange failed (a peer died or left the call).
        """
        try:
            with profile_range(TRANSFER_RANGE):
                if self._transport.wait_timeout is None:
                    self.work.wait()
                else:
                    self.work.wait(timeout=self._transport.wait_timeout)
        except RuntimeError as e:  # torch's DistError family and gloo's plain RuntimeErrors
            raise self._transport.failure(self._phase, e) from e


class Transport:
    """Posts the byte exchanges of one ``collective`` call on ``group`` and counts what this rank sends and receives.

    The rank's own slot of an all-gather or all-to-all is a local copy and is
    not counted. ``algorithm`` (for error messages) is set once the ranks agree
    on it; ``async_wait`` is set while a ``CollectiveHandle.wait()`` completes the call.
    """

    def __init__(self, group: ProcessGroup | None, world_size: int, collective: str = "collective") -> None:
        self.group = group
        self.n = world_size
        self.collective = collective
        self.algorithm = ""
        self.async_wait = False
        self.sent = 0
        self.received = 0
        self.timeout = group_timeout(group)
        # NCCL: Work.wait() only orders the current CUDA stream after the collective; a timeout
        # would block the CPU thread instead. NCCL's watchdog enforces the group timeout there.
        self.wait_timeout: timedelta | None = None if dist.get_backend(group) == "nccl" else self.timeout
        self.gather_by_all_to_all = world_size > 2 and dist.get_backend(group) == "gloo"

    def all_gather(self, out: torch.Tensor, inp: torch.Tensor, phase: str) -> Exchange:
        """Post an all-gather of ``inp`` (uint8) into ``out``.

        On gloo with more than two ranks it goes as an all-to-all of ``n`` copies of ``inp``:
        gloo's all-gather is a ring of ``n - 1`` dependent steps, its all-to-all posts every send
        and receive at once, so the same bytes arrive after one round trip instead of ``n - 1``
        (measured: the 88-byte descriptor in 1.6 instead of 2.3 ms at 3 ranks on loopback,
        docs/performance.md "Fixed cost per call"). The result and the bytes on the wire are the same.
        """
        self.sent += (self.n - 1) * inp.numel()
        self.received += (self.n - 1) * inp.numel()
        if self.gather_by_all_to_all:
            def post() -> dist.Work:
                copies = inp.reshape(1, -1).expand(self.n, -1).contiguous().view(-1)
                return dist.all_to_all_single(out, copies, group=self.group, async_op=True)

            return self._post(phase, inp, post)
        return self._post(phase, inp, lambda: all_gather_bytes(out, inp, self.group, async_op=True))

    def all_to_all(self, out: torch.Tensor, inp: torch.Tensor, phase: str) -> Exchange:
        """Post an all-to-all of ``inp`` (uint8, n equal slots) into ``out``."""
        slot = inp.numel() // self.n
        self.sent += (self.n - 1) * slot
        self.received += (self.n - 1) * slot
        return self._post(phase, inp, lambda: dist.all_to_all_single(out, inp, group=self.group, async_op=True))

    def all_reduce(self, tensor: torch.Tensor, phase: str, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Exchange:
        """Post the uncompressed ``dist.all_reduce`` of ``tensor`` (not counted here: see the ``none`` path)."""
        return self._post(phase, tensor, lambda: dist.all_reduce(tensor, op=op, group=self.group, async_op=True))

    def _post(self, phase: str, send: torch.Tensor, post: Callable[[], dist.Work]) -> Exchange:
        if before_post is not None:
            before_post(self.collective, phase, send)
        try:
            with profile_range(TRANSFER_RANGE):
                return Exchange(post(), self, phase)
        except RuntimeError as e:
            raise self.failure(phase, e) from e

    def failure(self, phase: str, cause: BaseException) -> CollectiveAbortedError:
        """The mxcomm error for ``cause``, a failure of this call's exchange in ``phase``."""
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        timed_out = any(w in str(cause).lower() for w in _TIMEOUT_WORDS)
        kind = CollectiveTimeoutError if timed_out else CollectiveAbortedError
        what = "made no progress within" if timed_out else "failed under"
        algorithm = f" ({self.algorithm})" if self.algorithm else ""
        waited = " while waiting on its async handle" if self.async_wait else ""
        seconds = self.timeout.total_seconds()
        exchange = phase if phase.endswith("exchange") else f"{phase} exchange"  # "descriptor exchange" already is one
        return kind(
            f"mxcomm {self.collective}{algorithm}: the {exchange} {what} the group timeout of {seconds:g} s"
            f"{waited} -- a peer rank died, stalled or left the call. The process group is unusable now: "
            f"destroy it (dist.destroy_process_group()) and restart. Backend error: {detail}",
            collective=self.collective, algorithm=self.algorithm, phase=phase, timeout_s=seconds,
            async_wait=self.async_wait,
        )
