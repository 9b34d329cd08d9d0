"""CPU codec throughput: the "cpu" backend's encode / decode / decode_sum against ``copy_``.

    pytest benchmarks/test_cpu_codec.py --benchmark-json cpu.json
    python benchmarks/cpu_codec_report.py cpu.json      # the markdown table of docs/performance.md

For bf16 and fp32 activations of 1, 16 and 64 MiB (hidden 4096, a few outlier
channels), every OCP MX format, NVFP4 and one custom format, each test times
the public entry point (``mxcomm.encode`` / ``decode`` / ``decode_sum`` with
``backend="cpu"``, fresh outputs as callers get them) and, alternating with it
in the same test, ``dst.copy_(src)`` of the same tensor. ``extra_info``:

* ``gbps``: bytes of the uncompressed tensor per second (the input of encode, the output of
  decode; decode_sum: the one output tensor, ``shard_gbps`` counts every shard);
* ``copy_gbps``: tensor bytes per second of ``copy_``; ``ratio_to_copy``: ``gbps / copy_gbps``
  (medians of alternating rounds, so both see the same machine load);
* ``cpu_gbps``: tensor bytes per CPU-second of the process (all threads): throughput per core,
  less sensitive to other processes sharing the cores than wall-clock time;
* ``build_seconds``: a fresh build of the native library (first use on a machine), and
  ``load_seconds``: loading the cached build (first use in a process) -- first-call costs that
  the timed rounds do not include;
* at 1 MiB, ``reference_gbps`` / ``speedup_vs_reference``: the eager torch reference, and where
  torchao is installed ``torchao_gbps`` (its ``to_mx``, MX formats only).

No timing is asserted.
"""

from __future__ import annotations

import os
import tempfile
import time

import pytest
import torch

import mxcomm
from mxcomm.formats import BlockFormat, FloatElement
from mxcomm.formats.builtins import NVFP4, OCP_FORMATS
from mxcomm.kernels import backend_status, cpu_backend

_REASON = backend_status("cpu", "cpu")
if _REASON is not None:
    pytest.skip(f"the cpu backend cannot run here: {_REASON}", allow_module_level=True)

SIZES_MIB = (1, 16, 64)
HIDDEN = 4096
DECODE_SUM_SHARDS = 4
# a 5-bit custom format: odd code width (the general bit-packing path), block 16
CUSTOM = BlockFormat("custom_e2m2_b16", FloatElement(2, 2), block_size=16)
FORMATS = {f.name: f for f in (*OCP_FORMATS, NVFP4, CUSTOM)}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
OPS = ("encode", "decode", "decode_sum")


@pytest.fixture(scope="module")
def build_costs() -> dict[str, float]:
    """A fresh build of the library in an empty cache directory, then a load of the cached one."""
    old = os.environ.get(cpu_backend.CACHE_ENV)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[cpu_backend.CACHE_ENV] = tmp
        try:
            _, fresh = cpu_backend.build_library()
            _, cached = cpu_backend.build_library()
        finally:
            if old is None:
                os.environ.pop(cpu_backend.CACHE_ENV, None)
            else:
                os.environ[cpu_backend.CACHE_ENV] = old
    assert fresh.compiled and not cached.compiled
    return {"build_seconds": fresh.seconds, "load_seconds": cached.seconds}


def _activation(mib: int, dtype: torch.dtype) -> torch.Tensor:
    tokens = mib * 2**20 // (torch.empty((), dtype=dtype).element_size() * HIDDEN)
    g = torch.Generator().manual_seed(mib)
    x = torch.randn(tokens, HIDDEN, generator=g)
    x[:, :: HIDDEN // 8] *= 50.0  # a few outlier channels, like real activations
    return x.to(dtype)


def _alternating_medians(run, baseline, rounds: int) -> tuple[float, float, float]:
    """Median wall seconds of run() and baseline() timed alternately, and CPU seconds of run()."""
    run()
    baseline()
    op, base, cpu = [], [], []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        op.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        t0 = time.perf_counter()
        baseline()
        base.append(time.perf_counter() - t0)
    for v in (op, base, cpu):
        v.sort()
    return op[rounds // 2], base[rounds // 2], cpu[rounds // 2]


def _reference_seconds(x: torch.Tensor, fmt: BlockFormat, op: str, packed: mxcomm.Packed) -> float:
    if op == "encode":
        fn = lambda: mxcomm.encode(x, fmt, backend="torch")  # noqa: E731
    elif op == "decode":
        fn = lambda: mxcomm.decode(packed, backend="torch")  # noqa: E731
    else:
        fn = lambda: mxcomm.decode_sum([packed] * DECODE_SUM_SHARDS, backend="torch")  # noqa: E731
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _torchao_seconds(x: torch.Tensor, fmt: BlockFormat) -> float | None:
    """torchao's to_mx (quantize + scales, no bit packing) for the MX formats it has, else None."""
    try:
        from torchao.prototype.mx_formats.mx_tensor import to_mx
    except ImportError:
        return None
    elem = {"mxfp8_e4m3": torch.float8_e4m3fn, "mxfp8_e5m2": torch.float8_e5m2}.get(fmt.name)
    if elem is None and fmt.name == "mxfp4_e2m1":
        from torchao.prototype.mx_formats.constants import DTYPE_FP4 as elem  # noqa: N811
    if elem is None:
        return None
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        to_mx(x, elem, fmt.block_size)
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("fmt_name", list(FORMATS))
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("mib", SIZES_MIB)
def test_cpu_codec_throughput(benchmark, build_costs, mib: int, dtype_name: str, fmt_name: str, op: str) -> None:
    fmt, dtype = FORMATS[fmt_name], DTYPES[dtype_name]
    x = _activation(mib, dtype)
    tensor_bytes = x.numel() * x.element_size()
    packed = mxcomm.encode(x, fmt, backend="cpu")
    assert packed.backend == "cpu"
    if op == "encode":

        def run() -> None:
            mxcomm.encode(x, fmt, backend="cpu")

    elif op == "decode":

        def run() -> None:
            mxcomm.decode(packed, backend="cpu")

    else:
        # shards laid out like an all-gather's output: one buffer, rank-major
        gathered = packed.payload().repeat(DECODE_SUM_SHARDS, 1)
        shards = [mxcomm.Packed.from_payload(row, packed.format, x.shape, x.dtype) for row in gathered]

        def run() -> None:
            mxcomm.decode_sum(shards, backend="cpu")

    dst = torch.empty_like(x)
    rounds = {1: 21, 16: 9, 64: 7}[mib]
    op_s, copy_s, cpu_s = _alternating_medians(run, lambda: dst.copy_(x), rounds)
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)

    gbps = tensor_bytes / op_s / 1e9
    copy_gbps = tensor_bytes / copy_s / 1e9
    info = {
        "format": fmt_name,
        "op": op,
        "dtype": dtype_name,
        "mib": mib,
        "shape": list(x.shape),
        "threads": torch.get_num_threads(),
        "gbps": gbps,
        "copy_gbps": copy_gbps,
        "ratio_to_copy": gbps / copy_gbps,
        "cpu_gbps": tensor_bytes / cpu_s / 1e9,
        "compressed_bytes": packed.nbytes,
        **build_costs,
    }
    if op == "decode_sum":
        info["shard_gbps"] = DECODE_SUM_SHARDS * gbps
    if mib == 1:
        ref_s = _reference_seconds(x, fmt, op, packed)
        info["reference_gbps"] = tensor_bytes / ref_s / 1e9
        info["speedup_vs_reference"] = ref_s / op_s
        if op == "encode":
            ao_s = _torchao_seconds(x, fmt)
            if ao_s is not None:
                info["torchao_gbps"] = tensor_bytes / ao_s / 1e9
    benchmark.extra_info.update(info)


# -- the alternative that was measured and not taken: torch.compile ---------------------------
def _mxfp4_bf16_words(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP4 (E2M1, block 32, E8M0 floor, RNE) of bf16 data given as int32 words (2 elements each),
    in integer arithmetic on the float32 bit patterns, exactly like the reference."""
    w = w.view(-1, 16)
    lo, hi = w << 16, w & -65536  # the two bf16 elements of each word as float32 bits
    amax = torch.maximum(lo & 0x7FFFFFFF, hi & 0x7FFFFFFF).amax(1, keepdim=True)
    normal = amax >= 0x800000
    bits = torch.where(normal, amax, amax.to(torch.float32).view(torch.int32) - (149 << 23))
    e = torch.where(amax > 0, (bits >> 23) - 127 - 2, -127).clamp(-127, 127)  # emax(E2M1) = 2

    def codes(u: torch.Tensor) -> torch.Tensor:
        a = u & 0x7FFFFFFF
        ef = a >> 23
        m = (a & 0x7FFFFF) | ((ef > 0).to(torch.int32) << 23)
        f = m.to(torch.float32).view(torch.int32)  # exact normalisation of m < 2**24
        big = (f >> 23) + torch.clamp(ef, min=1) - e - 277  # floor(log2(|x| * 2**-e))
        binade = torch.clamp(big, min=0)  # emin(E2M1) = 0
        r = torch.clamp(binade - big + 22, max=30)  # mbits = 1
        mn = torch.where(m != 0, (f & 0x7FFFFF) | 0x800000, 0)
        q = (mn + (1 << (r - 1)) - 1 + ((mn >> r) & 1)) >> r
        c = torch.clamp((binade << 1) + q, max=7)
        return c | (((u < 0) & (c > 0)).to(torch.int32) << 3)

    byte = torch.where(amax >= 0x7F800000, 0, codes(lo) | (codes(hi) << 4)).to(torch.uint8)
    return byte.view(-1), torch.where(amax >= 0x7F800000, 255, e + 127).to(torch.uint8).view(-1)


def test_torch_compile_formulation_of_mxfp4(benchmark) -> None:
    """The same integer formulation compiled by torch.compile (inductor, C++), for comparison with
    the shipped kernels: bf16 MXFP4 encode of 16 MiB. Compile time in extra_info."""
    compiled = torch.compile(_mxfp4_bf16_words, dynamic=True, fullgraph=True)
    small = _activation(1, torch.bfloat16)[:64]
    t0 = time.perf_counter()
    codes, scales = compiled(small.view(torch.int32))
    compile_s = time.perf_counter() - t0
    want = mxcomm.encode(small, "mxfp4", backend="torch")
    assert torch.equal(codes, want.codes) and torch.equal(scales, want.scales)  # bit-exact
    x = _activation(16, torch.bfloat16)
    words = x.view(torch.int32)
    dst = torch.empty_like(x)
    tensor_bytes = x.numel() * x.element_size()
    op_s, copy_s, cpu_s = _alternating_medians(lambda: compiled(words), lambda: dst.copy_(x), 5)
    cpu_op_s, _, _ = _alternating_medians(lambda: mxcomm.encode(x, "mxfp4", backend="cpu"), lambda: None, 5)
    benchmark.pedantic(lambda: compiled(words), rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(
        {
            "variant": "torch.compile integer formulation, mxfp4 encode, bf16 16 MiB",
            "gbps": tensor_bytes / op_s / 1e9,
            "copy_gbps": tensor_bytes / copy_s / 1e9,
            "ratio_to_copy": copy_s / op_s,
            "cpu_gbps": tensor_bytes / cpu_s / 1e9,
            "cpu_backend_gbps": tensor_bytes / cpu_op_s / 1e9,
            "compile_seconds": compile_s,
        }
    )


def test_torchao_baseline_available() -> None:
    """Says (as a skip) when the torchao comparison above is absent."""
    pytest.importorskip("torchao", reason="torchao is not installed: no to_mx baseline in this run")
