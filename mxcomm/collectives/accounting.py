"""Bandwidth accounting: ``with mxcomm.track_comm() as stats:`` records every collective call.

Byte counts are per rank and count everything the rank hands to the process
group for other ranks (descriptor + codes + scales + tensor scales + the
zero padding of fixed-size slots) or receives from them; the rank's own slot
of an all-gather or all-to-all never leaves the process and is not counted.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class CommRecord:
    """One collective call as seen by this rank (byte counts per rank, descriptor included).

    ``ratio`` = ``logical_bytes / bytes_sent``; ``as_dict()`` gives the fields and the ratio.

    Where the time went on this rank: ``encode_s`` and ``decode_s`` in codec calls,
    ``wait_s`` blocked on payload exchanges (transfer time the codec work did not
    hide); the rest of ``seconds`` is the descriptor exchange, copies and Python.
    """

    op: str  # "all_reduce" | "all_gather" | "reduce_scatter"
    algorithm: str  # the algorithm actually run: "none" | "allgather" | "two_shot"
    requested: str  # what the caller asked for (e.g. "auto")
    format: str  # format name ("" when nothing was encoded)
    world_size: int
    numel: int
    dtype: str
    logical_bytes: int  # what the uncompressed collective moves from this rank
    bytes_sent: int
    bytes_received: int
    seconds: float
    segments: int = 1
    reason: str = ""  # why this algorithm (planner verdict or "requested")
    gather_format: str = ""  # two-shot's all-gather format when it is not ``format`` ("" otherwise)
    # blocks that clipped in this rank's encodes of the call (docs/semantics.md, "Range"); with
    # strict=True a call in which any rank's encodes clipped raises RangeError on every rank instead
    clipped_blocks: int = 0
    encode_s: float = 0.0
    decode_s: float = 0.0
    wait_s: float = 0.0

    @property
    def ratio(self) -> float:
        return self.logical_bytes / self.bytes_sent if self.bytes_sent else float("inf")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


@dataclass(eq=False)
class CommStats:
    """The records of one ``track_comm`` block; ``summary()`` totals them."""

    records: list[CommRecord] = field(default_factory=list)

    def summary(self) -> dict:
        """Totals: calls, logical_bytes, bytes_sent, bytes_received, ratio, seconds, and calls per algorithm."""
        logical = sum(r.logical_bytes for r in self.records)
        sent = sum(r.bytes_sent for r in self.records)
        received = sum(r.bytes_received for r in self.records)
        algorithms: dict[str, int] = {}
        for r in self.records:
            algorithms[r.algorithm] = algorithms.get(r.algorithm, 0) + 1
        return {
            "calls": len(self.records),
            "logical_bytes": logical,
            "bytes_sent": sent,
            "bytes_received": received,
            "ratio": logical / sent if sent else float("inf"),
            "seconds": sum(r.seconds for r in self.records),
            "algorithms": algorithms,
        }


_local = threading.local()


def _active() -> list[CommStats]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


@contextmanager
def track_comm() -> Iterator[CommStats]:
    """Collect a :class:`CommRecord` for every mxcomm collective completed in this thread inside the block.

    Blocks nest; an inner block's records also go to the outer ones. An async
    call is recorded when its handle's ``wait()`` completes (into the blocks
    open when it was issued).

    Yields:
        The :class:`CommStats` the records are appended to.

    Example::

        with mxcomm.track_comm() as stats:
            mxcomm.all_reduce(t, "mxfp4")
        stats.summary()["ratio"]
    """
    stats = CommStats()
    stack = _active()
    stack.append(stats)
    try:
        yield stats
    finally:
        # by identity: two blocks holding equal records are still different blocks
        stack[:] = [s for s in stack if s is not stats]


def emit(record: CommRecord, trackers: list[CommStats]) -> None:
    for stats in trackers:
        stats.records.append(record)


def current_trackers() -> list[CommStats]:
    """The trackers open now (captured at call time, so async waits report to the right block)."""
    return list(_active())
