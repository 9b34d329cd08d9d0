"""Compression sweep: every format x tensor size x dtype x input source; encode and decode timed.

    pytest benchmarks/test_sweep.py --benchmark-json out.json && mxcomm report out.json --out report/

Each point times the public ``mxcomm.encode`` / ``mxcomm.decode`` (backend "auto") and
records in ``extra_info`` the format, block size, dtype, shape, bits/element (from
``Packed.nbytes``), compression ratio, SQNR and relative errors (mxcomm.bench.metrics). The
sweep's extent comes from environment variables (``MXCOMM_SWEEP_QUICK=1`` for a tiny
one; see mxcomm/bench/sweep.py); the full default sweep takes a long time with the torch
reference backend.
"""

from __future__ import annotations

import time

import pytest

import mxcomm
from mxcomm.bench.sweep import OPS, SweepConfig, point_info, source_unavailable, sweep_points

CONFIG = SweepConfig.from_env()


def _params() -> list:
    params = []
    for source in CONFIG.sources:
        reason = source_unavailable(source)
        if reason is not None:
            params.append(pytest.param(None, "-", marks=pytest.mark.skip(reason=reason), id=f"{source}-unavailable"))
            continue
        for point in sweep_points(CONFIG, sources=[source]):
            params.extend(pytest.param(point, op, id=f"{point.id}-{op}") for op in OPS)
    return params


# The encode test of a point runs right before its decode test (same parametrization
# order); it leaves its packed tensor and metrics here so the decode test reuses them.
_last: dict[str, tuple[mxcomm.Packed, dict]] = {}


@pytest.mark.parametrize("point, op", _params())
def test_codec(benchmark, point, op):
    x = point.input()
    fmt = point.format.fmt
    if op == "encode" or point.id not in _last:
        _last.clear()
        t0 = time.perf_counter()
        packed = mxcomm.encode(x, fmt)
        encode_first = time.perf_counter() - t0
        y = mxcomm.decode(packed)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert packed.nbytes == fmt.packed_nbytes(x.shape)
        _last[point.id] = (packed, point_info(point, x, packed, y))
    packed, info = _last[point.id]
    if op == "encode":
        first = encode_first
        fn = mxcomm.encode
        args = (x, fmt)
    else:
        t0 = time.perf_counter()
        mxcomm.decode(packed)
        first = time.perf_counter() - t0
        fn = mxcomm.decode
        args = (packed,)
    benchmark.group = f"{point.group} {op}"
    benchmark.extra_info.update(info)
    benchmark.extra_info["op"] = op
    benchmark.pedantic(fn, args=args, rounds=CONFIG.rounds_for(first), iterations=1, warmup_rounds=0)
