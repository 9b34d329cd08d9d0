"""What a measured forward pass sent: the :func:`mxcomm.collectives.track_comm` records as per-forward numbers.

Used by the perplexity and TTFT ranks for every setting's row (calls, bytes,
measured ratio, wire bits per element).
"""

from __future__ import annotations

from typing import Any

from mxcomm.collectives.handshake import DESCRIPTOR_NBYTES
from mxcomm.collectives.planner import DEFAULT_SEGMENT_ELEMS, all_reduce_wire_bytes, two_shot_block
from mxcomm.formats import BlockFormat


def sends_per_element(algorithm: str, n: int) -> float:
    """How many times a rank sends each element of its tensor: one-shot to every peer; ring and two-shot
    2(n-1)/n. Wire bits per element = 8 * bytes sent / (numel * this), the same for every algorithm."""
    return float(n - 1) if algorithm == "allgather" else 2 * (n - 1) / n


def comm_accounting(stats: Any, forwards: int) -> dict[str, Any]:
    """Per-forward accounting of a ``track_comm()`` context that covered ``forwards`` forward passes."""
    summary = stats.summary()
    reduces = [r for r in stats.records if r.op == "all_reduce"]
    compressed = [r for r in reduces if r.algorithm != "none"]
    outliers = [r for r in stats.records if r.op == "outlier_channels"]
    element_sends = sum(r.numel * sends_per_element(r.algorithm, r.world_size) for r in reduces)
    wire_bits = 8 * summary["bytes_sent"] / element_sends if element_sends else None
    return {
        "calls_per_forward": len(reduces) / forwards,
        "compressed_calls_per_forward": len(compressed) / forwards,
        "outlier_bytes_per_forward": sum(r.bytes_sent for r in outliers) / forwards,
        # everything this rank sent (descriptors, outlier channels) per element the algorithm moves
        "wire_bits_per_element": wire_bits,
        "compression_vs_bf16": 16 / wire_bits if wire_bits else None,
        "algorithms": summary["algorithms"],
        "bytes_sent_per_forward": summary["bytes_sent"] / forwards,
        "bytes_received_per_forward": summary["bytes_received"] / forwards,
        "logical_bytes_per_forward": summary["logical_bytes"] / forwards,
        "ratio": summary["ratio"],
        "comm_seconds": summary["seconds"],
        "message": {"numel": stats.records[0].numel, "dtype": stats.records[0].dtype} if stats.records else None,
    }


def reduction_wire(
    fmt: BlockFormat | None,
    algorithm: str,
    shape: tuple[int, ...],
    elem_size: int,
    world_size: int,
    outliers: int = 0,
    gather_fmt: BlockFormat | None = None,
) -> tuple[int, float]:
    """What one row-parallel reduction of a ``shape`` tensor costs, as ``track_comm()`` records it on a rank.

    Returns ``(bytes sent, element sends)``: the bytes of the all-reduce record (descriptor, payload,
    scales), plus, with ``outliers`` > 0 channels, those of the ``outlier_channels`` record (its
    descriptor and the channels in the wire dtype); and the elements the algorithm moves
    (``numel x`` :func:`sends_per_element`). Wire bits per element of a forward pass are
    ``8 x sum(bytes) / sum(element sends)`` over its reductions, as :func:`comm_accounting` computes
    them from the records. ``fmt`` None or ``algorithm`` ``"none"``: the uncompressed all-reduce
    (outlier channels are then not sent).
    """
    n = world_size
    numel = 1
    for d in shape:
        numel *= d
    if fmt is None or algorithm == "none":
        return all_reduce_wire_bytes("none", None, numel, elem_size, n, DEFAULT_SEGMENT_ELEMS).sent, \
            numel * sends_per_element("none", n)
    block = two_shot_block(fmt, gather_fmt)
    segment = -(-DEFAULT_SEGMENT_ELEMS // block) * block  # as all_reduce rounds it
    sent = all_reduce_wire_bytes(algorithm, fmt, numel, elem_size, n, segment, gather_fmt).sent
    if outliers:
        rows = numel // shape[-1]
        sent += (n - 1) * (DESCRIPTOR_NBYTES + rows * outliers * elem_size)
    return sent, numel * sends_per_element(algorithm, n)
