"""Tensor-parallel integration: compressed row-parallel all-reduces for torch.distributed.tensor.parallel.

* :class:`CompressedRowwiseParallel` -- a ``ParallelStyle`` for
  ``parallelize_module``: ``RowwiseParallel`` with its output all-reduce run by
  :func:`mxcomm.collectives.all_reduce` in a block format.
* :func:`llama_tp_plan` / :func:`parallelize_llama` -- the plan for
  Llama-family Hugging Face models (q/k/v, gate/up column-parallel; o_proj,
  down_proj compressed row-parallel; per-layer formats and uncompressed layers).
* :func:`set_comm_format` -- change the format of a parallelized model in place.
* :func:`calibrate_outliers` / :class:`OutlierCalibration` /
  :func:`set_outlier_channels` -- per-module outlier channels measured on real
  activations, saved with the plan, sent uncompressed beside the compressed rest.

The end-to-end evaluation on SmolLM2-135M (``mxcomm eval``) is measurement
harness and lives above the core, in :mod:`mxcomm.bench`. Internal pieces
(the projection tuples, ``find_layers``, ``reduce_partial``) stay importable
from their modules.
"""

from mxcomm.tp.llama import llama_tp_plan, parallelize_llama
from mxcomm.tp.outliers import OutlierCalibration, calibrate_outliers, set_outlier_channels
from mxcomm.tp.style import (
    COMM_ATTR,
    CompressedRowwiseParallel,
    RowwiseComm,
    TPPlanError,
    compressed_modules,
    set_comm_format,
)

__all__ = [
    "COMM_ATTR",
    "CompressedRowwiseParallel",
    "OutlierCalibration",
    "RowwiseComm",
    "TPPlanError",
    "calibrate_outliers",
    "compressed_modules",
    "llama_tp_plan",
    "parallelize_llama",
    "set_comm_format",
    "set_outlier_channels",
]
