"""Phase times of one collective call on this rank, and a deterministic stand-in clock for tests.

A :class:`CallTimer` is created per call. ``ops`` wraps the descriptor
exchange, every encode / decode call and every posted exchange with it, so a
finished all-reduce yields its :class:`~mxcomm.collectives.handshake.CallTimes`:
the descriptor exchange, the payload phase (descriptor end to result), and
within it the time spent encoding, decoding and blocked waiting for exchanges.
Those are what the estimator learns from (mxcomm/collectives/estimator.py).

:class:`EmulatedLink` is the testing hook: installed with :func:`emulate_link`
(in each rank), calls still run for real, but every timer reads a virtual
clock that only advances by injected costs -- ``alpha + bytes x beta`` per
exchange (the link is a queue: an exchange starts when the previous one has
left), ``calls x call_s + elements x cost`` per codec call, nothing for
anything else. Decisions made from such timings are reproducible to the bit,
whatever the machine's load; changing ``beta`` mid-run emulates a link whose
rate changed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mxcomm.collectives.handshake import CallTimes
from mxcomm.collectives.transport import Transport


class CallTimer:
    """Times the phases of one call on this rank with ``time.perf_counter``.

    Exchange sizes are read from the transport's byte counter (what each post
    added to ``transport.sent``); only the emulation uses them.
    """

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._sent = transport.sent
        self.descriptor_s = 0.0
        self.encode_s = 0.0
        self.decode_s = 0.0
        self.wait_s = 0.0
        self._payload_start = self.now()

    def now(self) -> float:
        return time.perf_counter()

    # hooks of the emulation: a real clock needs none of them
    def _exchanged(self, nbytes: int) -> None:
        pass

    def _posted(self, nbytes: int) -> float:
        return 0.0

    def _waited(self, done_at: float) -> None:
        pass

    def _coded(self, kind: str, calls: int, elems: int) -> None:
        pass

    def _take_sent(self) -> int:
        nbytes, self._sent = self._transport.sent - self._sent, self._transport.sent
        return nbytes

    @contextmanager
    def descriptor(self) -> Iterator[None]:
        """Around the (blocking) descriptor all-gather; the payload phase starts when it ends."""
        t0 = self.now()
        yield
        self._exchanged(self._take_sent())
        self._payload_start = self.now()
        self.descriptor_s = self._payload_start - t0

    @contextmanager
    def codec(self, kind: str, elems: int, calls: int = 1) -> Iterator[None]:
        """Around one encode (``kind="encode"``) or decode / decode_sum (``"decode"``) call."""
        t0 = self.now()
        yield
        self._coded(kind, calls, elems)
        if kind == "encode":
            self.encode_s += self.now() - t0
        else:
            self.decode_s += self.now() - t0

    def track(self, work: Any) -> Any:
        """The posted exchange ``work`` (a ``dist`` work handle), its ``wait()`` timed."""
        return _TimedWork(work, self, self._posted(self._take_sent()))

    def times(self, seq: int) -> CallTimes:
        """This call's phase times, the payload phase ending now."""
        return CallTimes(seq, self.descriptor_s, self.now() - self._payload_start, self.encode_s, self.decode_s,
                         self.wait_s)


class _TimedWork:
    """A ``dist`` work handle whose ``wait()`` adds the time blocked to the timer's ``wait_s``."""

    def __init__(self, work: Any, timer: CallTimer, done_at: float) -> None:
        self._work = work
        self._timer = timer
        self._done_at = done_at

    def wait(self, *args: Any, **kwargs: Any) -> Any:
        t0 = self._timer.now()
        result = self._work.wait(*args, **kwargs)
        self._timer._waited(self._done_at)
        self._timer.wait_s += self._timer.now() - t0
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._work, name)


@dataclass
class EmulatedLink:
    """Testing hook: injected link and codec costs on a virtual clock (see the module docstring).

    All fields may be changed between calls (e.g. ``beta`` to emulate a link
    whose rate changed). The clock is per process: install one in every rank.

    Attributes:
        alpha: Seconds of latency per exchange.
        beta: Seconds per byte this rank sends.
        encode_s_per_elem: Seconds per element encoded.
        decode_s_per_elem: Seconds per element decoded.
        call_s: Seconds per encode or decode call.
        now: The virtual clock (seconds).
    """

    alpha: float
    beta: float
    encode_s_per_elem: float
    decode_s_per_elem: float
    call_s: float
    now: float = 0.0
    _link_free: float = 0.0  # when the emulated link has sent everything posted so far

    def complete(self, nbytes: int) -> float:
        """Post an exchange of ``nbytes`` now; the virtual time it completes."""
        start = max(self.now, self._link_free)
        self._link_free = start + nbytes * self.beta
        return self._link_free + self.alpha


class _EmulatedTimer(CallTimer):
    def __init__(self, transport: Transport, link: EmulatedLink) -> None:
        self._link = link
        super().__init__(transport)

    def now(self) -> float:
        return self._link.now

    def _exchanged(self, nbytes: int) -> None:
        self._link.now = self._link.complete(nbytes)

    def _posted(self, nbytes: int) -> float:
        return self._link.complete(nbytes)

    def _waited(self, done_at: float) -> None:
        self._link.now = max(self._link.now, done_at)

    def _coded(self, kind: str, calls: int, elems: int) -> None:
        per_elem = self._link.encode_s_per_elem if kind == "encode" else self._link.decode_s_per_elem
        self._link.now += calls * self._link.call_s + elems * per_elem


_emulation: EmulatedLink | None = None


def call_timer(transport: Transport) -> CallTimer:
    """The timer of one call: the real clock, or the emulated link installed by :func:`emulate_link`."""
    return CallTimer(transport) if _emulation is None else _EmulatedTimer(transport, _emulation)


@contextmanager
def emulate_link(link: EmulatedLink) -> Iterator[EmulatedLink]:
    """Testing hook: inside the block, every collective of this process is timed on ``link``'s virtual clock.

    Args:
        link: The emulated costs.

    Yields:
        ``link``.
    """
    global _emulation
    previous, _emulation = _emulation, link
    try:
        yield link
    finally:
        _emulation = previous
