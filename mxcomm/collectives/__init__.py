"""Compressed collectives on torch.distributed: all_gather, reduce_scatter, all_reduce.

See docs/collectives.md for the algorithms, the wire descriptor, the
accounting and the planner's cost model.
"""

from mxcomm.collectives.accounting import CommRecord, CommStats, track_comm
from mxcomm.collectives.ops import CollectiveHandle, all_gather, all_reduce, reduce_scatter
from mxcomm.collectives.outliers import all_reduce_with_outliers, channel_index
from mxcomm.collectives.planner import (
    ALGORITHMS,
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
from mxcomm.collectives.wire import DESCRIPTOR_NBYTES, format_fingerprint

__all__ = [
    "ALGORITHMS",
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
