"""Tensor-parallel integration: compressed row-parallel all-reduces for torch.distributed.tensor.parallel.

* :class:`CompressedRowwiseParallel` -- a ``ParallelStyle`` for
  ``parallelize_module``: ``RowwiseParallel`` with its output all-reduce run by
  :func:`mxcomm.collectives.all_reduce` in a block format.
* :func:`compress` -- switch a model transformers sharded (``from_pretrained(...,
  tp_plan="auto")``) to mxcomm's compressed all-reduce wherever its TP style
  ends in an all-reduce of partial sums; :func:`parallelize` -- shard an
  in-memory transformers model with its own TP plan, then compress it.
* :class:`CommPlan` / :class:`PlanEntry` / :func:`save_plan` / :func:`load_plan`
  -- per-module (or glob) formats, algorithms, wire dtypes and outlier channels,
  saved as versioned JSON with the model identity they were made for.
* :func:`llama_tp_plan` / :func:`parallelize_llama` -- the older hand-written
  plan for Llama-family models with PyTorch's own styles (embedding and LM head
  replicated; per-layer formats and uncompressed layers). Superseded by
  :func:`parallelize`, kept for the evaluation harness and its emulation.
* :func:`set_comm_format` -- change the format of a parallelized model in place.
* :func:`calibrate_outliers` / :class:`OutlierCalibration` /
  :func:`set_outlier_channels` -- per-module outlier channels measured on real
  activations, saved with the plan, sent uncompressed beside the compressed rest.

The end-to-end evaluation on SmolLM2-135M (``mxcomm eval``) is measurement
harness and lives above the core, in :mod:`mxcomm.bench`. Internal pieces
(the projection tuples, ``find_layers``, ``reduce_partial``) stay importable
from their modules.
"""

from mxcomm.tp.hf import compress, parallelize, row_parallel_modules, uncompress
from mxcomm.tp.llama import llama_tp_plan, parallelize_llama
from mxcomm.tp.outliers import OutlierCalibration, calibrate_outliers, set_outlier_channels
from mxcomm.tp.plan import CommPlan, ModelIdentity, PlanEntry, load_plan, save_plan
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
    "CommPlan",
    "CompressedRowwiseParallel",
    "ModelIdentity",
    "OutlierCalibration",
    "PlanEntry",
    "RowwiseComm",
    "TPPlanError",
    "calibrate_outliers",
    "compress",
    "compressed_modules",
    "llama_tp_plan",
    "load_plan",
    "parallelize",
    "parallelize_llama",
    "row_parallel_modules",
    "save_plan",
    "set_comm_format",
    "set_outlier_channels",
    "uncompress",
]
