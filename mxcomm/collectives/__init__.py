"""Compressed collectives on torch.distributed: all_gather, reduce_scatter, all_reduce.

See docs/collectives.md for the algorithms, the wire descriptor, the
accounting and the planner's cost model.
"""

from mxcomm.collectives.accounting import CommRecord, CommStats, track_comm
from mxcomm.collectives.algorithms import ALL_REDUCE_ALGORITHMS, REQUESTABLE, Algorithm
from mxcomm.collectives.handshake import DESCRIPTOR_NBYTES, format_fingerprint
from mxcomm.collectives.ops import CollectiveHandle, all_gather, all_reduce, reduce_scatter
from mxcomm.collectives.outliers import all_reduce_with_outliers, channel_index
from mxcomm.collectives.planner import (
    CodecCost,
    CostModel,
    Plan,
    all_gather_wire_bytes,
    all_reduce_wire_bytes,
    calibrate,
    get_cost_model,
    measure_codec,
    plan_all_reduce,
    reduce_scatter_wire_bytes,
    set_cost_model,
)

__all__ = [
    "ALL_REDUCE_ALGORITHMS",
    "REQUESTABLE",
    "Algorithm",
    "DESCRIPTOR_NBYTES",
    "CodecCost",
    "CollectiveHandle",
    "CommRecord",
    "CommStats",
    "CostModel",
    "Plan",
    "all_gather",
    "all_gather_wire_bytes",
    "all_reduce",
    "all_reduce_with_outliers",
    "all_reduce_wire_bytes",
    "calibrate",
    "channel_index",
    "format_fingerprint",
    "get_cost_model",
    "measure_codec",
    "plan_all_reduce",
    "reduce_scatter",
    "reduce_scatter_wire_bytes",
    "set_cost_model",
    "track_comm",
]
