"""GPU codec throughput: the Triton encode / decode / decode_sum kernels against ``copy_``.

    pytest benchmarks/test_gpu_kernels.py --benchmark-json gpu.json

For bf16 activations of 1..256 MiB (hidden 8192) and each OCP MX format, every
test times the public entry point (``mxcomm.encode`` / ``decode`` /
``decode_sum`` with ``backend="triton"``, synchronised after each call) and,
in the same test, ``dst.copy_(src)`` of the same bf16 tensor. ``extra_info``
records:

* ``gbps``: bytes the operation must move (inputs read + outputs written) per second;
* ``copy_gbps``: the same for ``copy_`` (2 x tensor bytes);
* ``fraction_of_copy``: ``gbps / copy_gbps`` (the issue's target: >= 0.85 on an H100 for >= 64 MiB);
* ``fraction_of_peak``: ``gbps`` over the device's theoretical memory bandwidth when torch reports
  the memory clock and bus width, else absent.

``decode_sum`` sums ``DECODE_SUM_SHARDS`` shards of the full tensor (what every rank of
an all-gather based all-reduce runs). Skips, with the reason, without a CUDA device or
when the Triton backend cannot run on it. No timing is asserted.
"""

from __future__ import annotations

import time

import pytest
import torch

import mxcomm
from mxcomm.formats.builtins import OCP_FORMATS
from mxcomm.kernels import backend_status

if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the GPU kernel benchmark needs one", allow_module_level=True)
_REASON = backend_status("triton", "cuda")
if _REASON is not None:
    pytest.skip(f"the Triton backend cannot run on CUDA here: {_REASON}", allow_module_level=True)

SIZES_MIB = (1, 4, 16, 64, 256)
HIDDEN = 8192
DECODE_SUM_SHARDS = 8
OPS = ("encode", "decode", "decode_sum")
DEVICE = torch.device("cuda")


def _peak_bandwidth_gbps() -> float | None:
    props = torch.cuda.get_device_properties(DEVICE)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9  # double data rate


def _median_seconds(fn, rounds: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def _activation(mib: int) -> torch.Tensor:
    tokens = mib * 2**20 // (2 * HIDDEN)
    g = torch.Generator(device=DEVICE).manual_seed(mib)
    x = torch.randn(tokens, HIDDEN, device=DEVICE, generator=g)
    x[:, :: HIDDEN // 8] *= 50.0  # a few outlier channels, like real activations
    return x.to(torch.bfloat16)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("fmt", [f.name for f in OCP_FORMATS])
@pytest.mark.parametrize("mib", SIZES_MIB)
def test_gpu_codec_throughput(benchmark, mib: int, fmt: str, op: str) -> None:
    x = _activation(mib)
    tensor_bytes = x.numel() * x.element_size()
    packed = mxcomm.encode(x, fmt, backend="triton")
    assert packed.backend == "triton"
    if op == "encode":

        def run() -> None:
            mxcomm.encode(x, fmt, backend="triton")

        moved = tensor_bytes + packed.nbytes
    elif op == "decode":

        def run() -> None:
            mxcomm.decode(packed, backend="triton")

        moved = packed.nbytes + tensor_bytes
    else:
        # shards laid out like an all-gather's output: one buffer, rank-major
        gathered = packed.payload().repeat(DECODE_SUM_SHARDS, 1)
        shards = [mxcomm.Packed.from_payload(row, packed.format, x.shape, x.dtype) for row in gathered]

        def run() -> None:
            mxcomm.decode_sum(shards, backend="triton")

        moved = DECODE_SUM_SHARDS * packed.nbytes + tensor_bytes

    # copy_ of the same tensor, in the same test: the bandwidth baseline
    dst = torch.empty_like(x)
    copy_s = _median_seconds(lambda: dst.copy_(x))

    def timed() -> None:
        run()
        torch.cuda.synchronize()

    benchmark.pedantic(timed, rounds=20, iterations=1, warmup_rounds=3)
    seconds = benchmark.stats.stats.median
    gbps = moved / seconds / 1e9
    copy_gbps = 2 * tensor_bytes / copy_s / 1e9
    info = {
        "format": fmt,
        "op": op,
        "mib": mib,
        "shape": list(x.shape),
        "bytes_moved": moved,
        "gbps": gbps,
        "copy_gbps": copy_gbps,
        "fraction_of_copy": gbps / copy_gbps,
        "device": torch.cuda.get_device_name(DEVICE),
    }
    peak = _peak_bandwidth_gbps()
    if peak:
        info["peak_gbps"] = peak
        info["fraction_of_peak"] = gbps / peak
        info["copy_fraction_of_peak"] = copy_gbps / peak
    benchmark.extra_info.update(info)
