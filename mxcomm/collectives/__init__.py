"""Compressed collectives on torch.distributed, with torch.distributed's signatures.

``all_reduce``, ``all_gather_into_tensor``, ``reduce_scatter_tensor`` and the list
forms ``all_gather`` / ``reduce_scatter``; ``track_comm`` for the byte
accounting; ``CostModel``, ``cost_model`` (the learned estimate) and the
optional ``calibrate`` for the planner behind ``algorithm="auto"``; ``functional_*``: the same
collectives as functions returning a new tensor, each one ``torch.ops.mxcomm`` custom op (what
``torch.compile`` sees, see ``mxcomm.collectives.torch_ops``). See docs/collectives.md for the
algorithms, the wire descriptor, the accounting and the planner's cost model. Internal pieces
(byte formulas, the descriptor, the transport) stay importable from their
modules.
"""

from mxcomm.collectives.accounting import CommRecord, CommStats, track_comm
from mxcomm.collectives.algorithms import Algorithm
from mxcomm.collectives.calibration import calibrate
from mxcomm.collectives.estimator import CostEstimate, cost_model, get_cost_model, set_cost_model
from mxcomm.collectives.handshake import DESCRIPTOR_NBYTES
from mxcomm.collectives.ops import (
    CollectiveHandle,
    ReduceOpLike,
    all_gather,
    all_gather_into_tensor,
    all_reduce,
    reduce_scatter,
    reduce_scatter_tensor,
)
from mxcomm.collectives.outliers import all_reduce_with_outliers
from mxcomm.collectives.planner import CodecCost, CostModel, Plan, plan_all_reduce
from mxcomm.collectives.torch_ops import (
    functional_all_gather_into_tensor,
    functional_all_reduce,
    functional_all_reduce_with_outliers,
    functional_reduce_scatter_tensor,
)

__all__ = [
    "DESCRIPTOR_NBYTES",
    "Algorithm",
    "CodecCost",
    "CollectiveHandle",
    "CommRecord",
    "CommStats",
    "CostEstimate",
    "CostModel",
    "Plan",
    "ReduceOpLike",
    "all_gather",
    "all_gather_into_tensor",
    "all_reduce",
    "all_reduce_with_outliers",
    "calibrate",
    "cost_model",
    "functional_all_gather_into_tensor",
    "functional_all_reduce",
    "functional_all_reduce_with_outliers",
    "functional_reduce_scatter_tensor",
    "get_cost_model",
    "plan_all_reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "set_cost_model",
    "track_comm",
]
