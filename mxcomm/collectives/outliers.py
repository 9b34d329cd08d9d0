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
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from mxcomm.collectives.accounting import CommRecord, current_trackers, emit
from mxcomm.collectives.ops import TRACED, all_reduce
from mxcomm.errors import ArgumentTypeError, FormatError
from mxcomm.formats import BlockFormat


def channel_index(channels: Sequence[int] | torch.Tensor, hidden: int) -> torch.Tensor:
    """Validated, sorted, unique int64 channel indices into a last dimension of ``hidden``.

    Raises:
        FormatError: an index outside ``[0, hidden)``.
    """
    idx = torch.as_tensor(channels, dtype=torch.int64).reshape(-1)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= hidden):
        raise FormatError(f"outlier channels must lie in [0, {hidden}), got {idx.tolist()}")
    idx = torch.unique(idx)  # sorted
    return idx


def all_reduce_with_outliers(
    tensor: torch.Tensor,
    fmt: str | BlockFormat,
    channels: Sequence[int] | torch.Tensor,
    *,
    group: ProcessGroup | None = None,
    algorithm: str = "auto",
    backend: str = "auto",
) -> None:
    """In-place SUM all-reduce: ``channels`` of the last dim exact, the rest in ``fmt``.

    Collective: every rank must call it with the same channels.

    Args:
        tensor: float32, bfloat16 or float16 tensor with a channel (last) dimension; overwritten with the sum.
        fmt: Format of the compressed rest.
        channels: Indices into the last dimension sent uncompressed (empty: a plain ``all_reduce``).
        group: The process group (None: the default group).
        algorithm: ``algorithm`` of the compressed :func:`~mxcomm.collectives.all_reduce`.
        backend: Codec backend.

    Raises:
        ArgumentTypeError: ``tensor`` is not a ``torch.Tensor``.
        FormatError: a 0-dim tensor, or a channel outside the last dimension (raised before
            anything is exchanged, on the rank at fault only); what ``all_reduce`` raises.
    """
    if torch.compiler.is_compiling():
        return TRACED["all_reduce_with_outliers"](tensor, fmt, channels, group=group, algorithm=algorithm,
                                                  backend=backend)
    if not isinstance(tensor, torch.Tensor):
        raise ArgumentTypeError(f"all_reduce_with_outliers tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() == 0:
        raise FormatError("all_reduce_with_outliers needs a tensor with a channel (last) dimension")
    idx = channel_index(channels, tensor.shape[-1]).to(tensor.device)
    if idx.numel() == 0:
        all_reduce(tensor, fmt, group=group, algorithm=algorithm, backend=backend)
        return
    t0 = time.perf_counter()
    trackers = current_trackers()
    n = dist.get_world_size(group)
    dense = tensor.index_select(-1, idx).contiguous()
    gathered = [torch.empty_like(dense) for _ in range(n)]
    dist.all_gather(gathered, dense, group=group)
    exact = gathered[0].to(torch.float32)
    for part in gathered[1:]:
        exact += part.to(torch.float32)
    dense_seconds = time.perf_counter() - t0
    rest = tensor.index_fill(-1, idx, 0)
    all_reduce(rest, fmt, group=group, algorithm=algorithm, backend=backend)
    rest.index_copy_(-1, idx, exact.to(tensor.dtype))
    tensor.copy_(rest)
    dense_bytes = dense.numel() * dense.element_size()
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
            bytes_sent=(n - 1) * dense_bytes,
            bytes_received=(n - 1) * dense_bytes,
            seconds=dense_seconds,
            reason=f"{idx.numel()} calibrated outlier channels sent uncompressed",
        ),
        trackers,
    )
