"""Outlier channels: send a few calibrated channels uncompressed beside the quantized rest.

LLM row-parallel outputs carry a handful of *consistent* outlier features
(arXiv 2411.07942): the same hidden channels are large for every token. In a
block format one such value sets the scale of its whole block and flushes its
neighbours. ``all_reduce_with_outliers`` therefore

1. gathers the calibrated channels (last dimension) of every rank's partial
   tensor uncompressed, in the tensor's own dtype, and sums them in float32 in
   rank order (bitwise identical on every rank);
2. zeroes those channels and all-reduces the rest with ``mxcomm.all_reduce``
   in the block format;
3. writes the exact channel sums back.

The accounting records the channel exchange as its own record
(``op="outlier_channels"``, ``algorithm="dense_allgather"``) with
``logical_bytes=0`` -- the compressed record already counts the whole tensor
as its logical size -- so ``summary()["ratio"]`` is the honest end-to-end ratio.

Before anything else every rank all-gathers a handshake descriptor carrying
its tensor's dtype and shape and a fingerprint of its channel set
(``mxcomm.collectives.handshake``): a rank whose arguments are invalid (bad
channels, not a tensor) raises its own error and every other rank a
``CollectiveMismatchError``, as do ranks that disagree on the channels --
nobody waits for the group timeout.
"""

from __future__ import annotations

import hashlib
import operator
import time
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from mxcomm.collectives.accounting import CommRecord, current_trackers, emit
from mxcomm.collectives.algorithms import REQUESTABLE
from mxcomm.collectives.handshake import Descriptor, agree, invalid_descriptor
from mxcomm.collectives.ops import TRACED, all_reduce, settle_in_flight
from mxcomm.collectives.transport import OUTLIER_PHASE, Transport, group_device
from mxcomm.errors import ArgumentTypeError, FormatError, MxcommError
from mxcomm.formats import BlockFormat
from mxcomm.kernels.dtypes import INPUT_DTYPES


def channel_index(channels: Sequence[int] | torch.Tensor, hidden: int) -> torch.Tensor:
    """Validated, sorted, unique int64 channel indices into a last dimension of ``hidden``.

    Raises:
        FormatError: an index outside ``[0, hidden)``, or channels that are not integers.
    """
    if isinstance(channels, torch.Tensor):
        if channels.dtype.is_floating_point or channels.dtype.is_complex or channels.dtype == torch.bool:
            raise FormatError(f"outlier channels must be integers, got a {channels.dtype} tensor")
        idx = channels.detach().to("cpu", torch.int64).reshape(-1)
    else:
        try:
            idx = torch.tensor([operator.index(c) for c in channels], dtype=torch.int64)
        except (TypeError, OverflowError, RuntimeError) as e:
            raise FormatError(f"outlier channels must be a sequence of ints, got {channels!r}") from e
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= hidden):
        raise FormatError(f"outlier channels must lie in [0, {hidden}), got {idx.tolist()}")
    idx = torch.unique(idx)  # sorted
    return idx


def _channels_fingerprint(idx: torch.Tensor) -> bytes:
    return hashlib.blake2b(idx.numpy().tobytes(), digest_size=8).digest()


def _prepare(tensor: object, channels: object, algorithm: object) -> tuple[torch.Tensor, Descriptor]:
    """This rank's validated channel index and descriptor; an MxcommError if its arguments are unusable."""
    if not isinstance(tensor, torch.Tensor):
        raise ArgumentTypeError(f"all_reduce_with_outliers tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in INPUT_DTYPES:
        raise FormatError(f"all_reduce_with_outliers tensor must be float32, bfloat16 or float16, got {tensor.dtype}")
    if tensor.dim() == 0:
        raise FormatError("all_reduce_with_outliers needs a tensor with a channel (last) dimension")
    if algorithm not in REQUESTABLE:
        raise FormatError(f"algorithm must be one of {tuple(a.value for a in REQUESTABLE)}, got {algorithm!r}")
    idx = channel_index(channels, tensor.shape[-1])  # type: ignore[arg-type]
    desc = Descriptor("outlier_channels", str(algorithm), str(algorithm), tensor.dtype, tuple(tensor.shape),
                      _channels_fingerprint(idx), f"{idx.numel()} channels", idx.numel())
    return idx, desc


def all_reduce_with_outliers(
    tensor: torch.Tensor,
    fmt: str | BlockFormat,
    channels: Sequence[int] | torch.Tensor,
    *,
    group: ProcessGroup | None = None,
    algorithm: str = "auto",
    backend: str = "auto",
    gather_fmt: str | BlockFormat | None = None,
) -> None:
    """In-place SUM all-reduce: ``channels`` of the last dim exact, the rest in ``fmt``.

    Collective: every rank must call it with the same channels (checked: ranks
    that disagree raise ``CollectiveMismatchError``).

    Args:
        tensor: float32, bfloat16 or float16 tensor with a channel (last) dimension; overwritten with the sum.
        fmt: Format of the compressed rest.
        channels: Indices into the last dimension sent uncompressed (empty: a plain ``all_reduce``).
        group: The process group (None: the default group).
        algorithm: ``algorithm`` of the compressed :func:`~mxcomm.collectives.all_reduce`.
        backend: Codec backend.
        gather_fmt: ``gather_fmt`` of the compressed :func:`~mxcomm.collectives.all_reduce`
            (two-shot's all-gather phase).

    Raises:
        ArgumentTypeError: ``tensor`` is not a ``torch.Tensor``.
        FormatError: a 0-dim tensor or one of another dtype, a channel outside the last dimension,
            an unknown algorithm; what ``all_reduce`` raises.
        CollectiveMismatchError: ranks disagree on shape, dtype or channels, or another rank's
            arguments were invalid (every rank raises; nothing else is exchanged).
        CollectiveAbortedError: a peer died, stalled or left the call (``CollectiveTimeoutError``
            after the group's timeout).
    """
    if torch.compiler.is_compiling():  # one opaque node in a compiled graph (mxcomm.collectives.torch_ops)
        return TRACED["all_reduce_with_outliers"](tensor, fmt, channels, group=group, algorithm=algorithm,
                                                  backend=backend, gather_fmt=gather_fmt)
    t0 = time.perf_counter()
    trackers = current_trackers()
    n = dist.get_world_size(group)
    transport = Transport(group, n, "all_reduce_with_outliers")
    transport.algorithm = "dense_allgather"
    settle_in_flight(group)
    local_error: MxcommError | None = None
    try:
        idx, desc = _prepare(tensor, channels, algorithm)
        device = tensor.device
    except MxcommError as e:
        local_error = e
        desc, device = invalid_descriptor("outlier_channels", algorithm if isinstance(algorithm, str) else ""), \
            group_device(group)
    agree(desc, local_error, device, transport, verify=True)
    if idx.numel() == 0:
        all_reduce(tensor, fmt, group=group, algorithm=algorithm, backend=backend, gather_fmt=gather_fmt)
        return
    idx = idx.to(tensor.device)
    dense = tensor.index_select(-1, idx).contiguous()
    gathered = torch.empty((n, *dense.shape), dtype=dense.dtype, device=dense.device)
    transport.all_gather(gathered.view(-1).view(torch.uint8), dense.view(-1).view(torch.uint8), OUTLIER_PHASE).wait()
    exact = gathered[0].to(torch.float32)
    for part in gathered[1:]:
        exact += part.to(torch.float32)
    dense_seconds = time.perf_counter() - t0
    rest = tensor.index_fill(-1, idx, 0)
    all_reduce(rest, fmt, group=group, algorithm=algorithm, backend=backend, gather_fmt=gather_fmt)
    rest.index_copy_(-1, idx, exact.to(tensor.dtype))
    tensor.copy_(rest)
    emit(
        CommRecord(
            op="outlier_channels",
            algorithm="dense_allgather",
            requested="dense_allgather",
            format="dense",
            world_size=n,
            numel=dense.numel(),
            dtype=str(tensor.dtype).replace("torch.", ""),
            logical_bytes=0,
            bytes_sent=transport.sent,
            bytes_received=transport.received,
            seconds=dense_seconds,
            reason=f"{idx.numel()} calibrated outlier channels sent uncompressed",
        ),
        trackers,
    )
