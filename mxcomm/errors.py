"""Exception types raised by mxcomm.

Every error that bad input can cause is one of these, so callers can catch
``mxcomm.MxcommError`` (or the more specific type) and nothing else. Each
also derives from the built-in exception a caller would expect for the
problem (``ValueError``, ``TypeError``, ``RuntimeError``), so code written
against those keeps working.
"""

from __future__ import annotations


class MxcommError(Exception):
    """Base class of every exception mxcomm raises on purpose."""


class FormatError(MxcommError, ValueError):
    """Bad format description, bad codec input, or a malformed wire frame.

    The collectives also raise it for tensors of an unsupported dtype and for
    output tensors of the wrong size, dtype or device.
    """


class RangeError(MxcommError, ValueError):
    """An encode with ``strict=True`` would clip: some block's magnitude lies outside what the format can hold.

    Raised by ``mxcomm.encode`` / ``quantize`` and, on every rank together, by the
    collectives called with ``strict=True`` (after the payloads and one exchange of every
    rank's count, before any output is written: the output tensors are untouched). A block *clips* when it
    saturates (its amax exceeds ``max_normal`` times the largest scale) or is flushed
    (its scale is clamped at the smallest one); docs/semantics.md, "Range", defines
    both exactly. Without ``strict`` the same blocks are counted in
    ``Packed.clipped_blocks`` and ``CommRecord.clipped_blocks``.

    Attributes:
        clipped_blocks: Blocks that clipped (in a collective: summed over the ranks).
        clipped_by_rank: In a collective, every rank's count (index = rank); empty for ``encode``.
    """

    def __init__(self, message: str, *, clipped_blocks: int = 0, clipped_by_rank: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.clipped_blocks = clipped_blocks
        self.clipped_by_rank = clipped_by_rank


class ArgumentTypeError(MxcommError, TypeError):
    """An argument is of the wrong type, e.g. a collective given something that is not a ``torch.Tensor``."""


class UnsupportedReduceOpError(MxcommError, ValueError):
    """A collective was asked for a reduction other than SUM.

    Compressed reductions are sums of decoded partials (``decode_sum``); there
    is no compressed MAX, MIN, PRODUCT or AVG.
    """


class BackendUnavailableError(MxcommError, RuntimeError):
    """A kernel backend was requested explicitly but cannot run here."""


class CollectiveMismatchError(MxcommError, RuntimeError):
    """Ranks of one collective disagree on format, dtype, shape or algorithm."""


class CollectiveAbortedError(MxcommError, RuntimeError):
    """A collective could not complete: a peer rank died, stalled or left the call, or the transport failed.

    Raised on every surviving rank, within the process group's timeout (plus a
    small margin) of the failure. The underlying ``torch.distributed`` error is
    chained as ``__cause__``. The process group is unusable afterwards (as
    after any gloo or NCCL failure): destroy it and restart the job; see
    docs/reliability.md.

    Attributes:
        collective: The mxcomm call that failed (``"all_reduce"``, ``"all_gather"``, ...).
        algorithm: The algorithm it ran (``"two_shot"``, ``"allgather"``, ...).
        phase: The exchange that failed: ``"descriptor exchange"``, ``"payload"``,
            ``"two-shot second phase"`` or ``"outlier channels"``.
        timeout_s: The group's timeout in seconds.
        async_wait: Whether the failure surfaced in a ``CollectiveHandle.wait()``
            (or while another call completed that handle) rather than in the call itself.
    """

    def __init__(self, message: str, *, collective: str = "", algorithm: str = "", phase: str = "",
                 timeout_s: float = 0.0, async_wait: bool = False) -> None:
        super().__init__(message)
        self.collective = collective
        self.algorithm = algorithm
        self.phase = phase
        self.timeout_s = timeout_s
        self.async_wait = async_wait


class CollectiveTimeoutError(CollectiveAbortedError):
    """A collective's exchange made no progress within the process group's timeout (a peer stalled or left)."""
