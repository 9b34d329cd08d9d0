"""GPU checks: every collective over NCCL, CUDA-graph capture of compressed all-reduces, a compiled TP model on CUDA.

Selected with ``pytest -m gpu`` (benchmarks/gpu_check.sh runs them with the Triton kernel suite
and the codec throughput); without a CUDA device every test skips with the reason. The ranks
(one per GPU, at most two; a single GPU runs a one-rank NCCL group, which still takes every
NCCL code path) are spawned once (tests/gpu/_nccl_worker.py) and the tests inspect what they returned.
"""

from __future__ import annotations

import pytest
import torch

from mxcomm.kernels import backend_status

pytestmark = [pytest.mark.gpu, pytest.mark.multiprocess]

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
if not torch.distributed.is_nccl_available():
    pytest.skip("this torch has no NCCL", allow_module_level=True)
_REASON = backend_status("triton", "cuda")
if _REASON is not None:
    pytest.skip(f"the Triton backend cannot run on CUDA here: {_REASON}", allow_module_level=True)

from mxcomm.bench.launch import run_ranks  # noqa: E402
from tests.gpu import _nccl_worker as W  # noqa: E402

WORLD = min(torch.cuda.device_count(), 2)


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run_ranks(W.run, WORLD, ("cuda",), backend="nccl", threads=1, timeout_s=600)


def test_every_collective_over_nccl_equals_gloo_bitwise(ranks):
    for r in ranks:
        failed = [name for name, ok in r["collectives"].items() if not ok]
        assert not failed, failed
        assert len(r["collectives"]) == 2 * len(W.ALL_REDUCE_CASES) + 8


def test_captured_all_reduce_replays_new_data_exactly(ranks):
    for r in ranks:
        for case, result in r["capture"].items():
            assert result == [True, True], (case, result)


def test_compiled_tp_model_on_cuda(ranks):
    for r in ranks:
        for case, got in r["compiled_tp"].items():
            assert got["finite"] and got["repeatable"], (case, got)
            assert got["rel_err"] < 1e-4, (case, got)
