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
  (medians of alternating rounds, so both see the same machine load); decode_sum (of
  ``DECODE_SUM_SHARDS`` shards) also ``input_ratio_to_copy``: per input byte, ``shard_gbps / copy_gbps``;
* ``cpu_gbps``: tensor bytes per CPU-second of the process (all threads): throughput per core,
  less sensitive to other processes sharing the cores than wall-clock time;
* ``native_isa``: the native build the backend runs (``avx2`` or ``baseline``; compiled at install
  time, see docs/kernels.md), and ``load_seconds``: loading and checking it (first use in a
  process) -- a first-call cost that the timed rounds do not include;
* at 1 MiB, ``reference_gbps`` / ``speedup_vs_reference``: the eager torch reference, and where
  torchao is installed ``torchao_gbps`` (its ``to_mx``, MX formats only).

``test_cpu_codec_goal`` (select with ``-k goal``) is the table of docs/performance.md's "CPU
codec": the formats that carry real traffic, 64 MiB of bfloat16 activations, encode / decode /
decode_sum of 3 shards on 1 and on 2 threads (``torch.set_num_threads``; ``copy_`` runs on as
many), each alternating with ``copy_`` in the same test; ``ratio_to_copy`` is per uncompressed
tensor byte (encode: input, decode: output, decode_sum: every shard's), also per CPU-second of
the process (``cpu_ratio_to_copy``, less sensitive to other processes on the machine)::

    pytest benchmarks/test_cpu_codec.py -k goal --benchmark-json goal.json
    python benchmarks/cpu_codec_report.py goal.json

``test_cpu_rotation_cost`` (select with ``-k rot``) times, for bf16 activations of the same
sizes, encode or decode of a format with and without a random Hadamard rotation
(``rotation_seed``) and ``copy_``, all alternating in one test; ``extra_info`` has
``plain_gbps``, ``rotated_gbps`` (bytes of the bf16 tensor per second), ``rotated_over_plain``,
the ratios to ``copy_``, the same per CPU-second, ``transform_gbps``: the rotation (``rotate`` / ``unrotate`` on the
float32 blocks) alone, and ``rotation_fused``: whether the backend rotates inside its kernels
(else the API front-end rotates around it). ``test_rotation_transform_speedup``
times that transform against the plainly spelled-out one (``hadamard_blocks_reference``, signs
hashed per call).

No timing is asserted.
"""

from __future__ import annotations

import time

import pytest
import torch

import mxcomm
from mxcomm.formats import BlockFormat, FloatElement
from mxcomm.formats.builtins import NVFP4, OCP_FORMATS
from mxcomm.kernels import backend_status, cpu_backend
from mxcomm.kernels.dispatch import fuses_rotation, resolve_backend
from mxcomm.kernels.rotation import hadamard_blocks_reference, rotate, rotation_signs, unrotate

_REASON = backend_status("cpu", "cpu")
if _REASON is not None:
    pytest.skip(f"the cpu backend cannot run here: {_REASON}", allow_module_level=True)

SIZES_MIB = (1, 16, 64)
HIDDEN = 4096
DECODE_SUM_SHARDS = 3
# a 5-bit custom format: odd code width (the general bit-packing path), block 16
CUSTOM = BlockFormat("custom_e2m2_b16", FloatElement(2, 2), block_size=16)
FORMATS = {f.name: f for f in (*OCP_FORMATS, NVFP4, CUSTOM)}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
OPS = ("encode", "decode", "decode_sum")


@pytest.fixture(scope="module")
def build_costs() -> dict[str, float | str]:
    """Which native build runs, and what loading it (with its checks) costs in a fresh backend."""
    t0 = time.perf_counter()
    fresh = cpu_backend.CpuBackend()
    fresh.library()
    seconds = time.perf_counter() - t0
    assert fresh.build is not None
    return {"native_isa": fresh.build.isa, "load_seconds": seconds}


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
        info["input_ratio_to_copy"] = DECODE_SUM_SHARDS * gbps / copy_gbps
    if mib == 1:
        ref_s = _reference_seconds(x, fmt, op, packed)
        info["reference_gbps"] = tensor_bytes / ref_s / 1e9
        info["speedup_vs_reference"] = ref_s / op_s
        if op == "encode":
            ao_s = _torchao_seconds(x, fmt)
            if ao_s is not None:
                info["torchao_gbps"] = tensor_bytes / ao_s / 1e9
    benchmark.extra_info.update(info)


# -- the goal table: 64 MiB bf16, 1 and 2 threads, against copy_ ----------------------------
GOAL_FORMATS = ("mxfp4_e2m1", "mxfp6_e2m3", "mxfp8_e4m3", "mxint8", "nvfp4")
GOAL_MIB = 64
GOAL_ROUNDS = 9


@pytest.fixture(scope="module")
def goal_input() -> torch.Tensor:
    return _activation(GOAL_MIB, torch.bfloat16)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("fmt_name", GOAL_FORMATS)
@pytest.mark.parametrize("threads", (1, 2))
def test_cpu_codec_goal(benchmark, build_costs, goal_input: torch.Tensor, threads: int, fmt_name: str, op: str) -> None:
    x = goal_input
    tensor_bytes = x.numel() * x.element_size()
    packed = mxcomm.encode(x, fmt_name, backend="cpu")
    shards = DECODE_SUM_SHARDS if op == "decode_sum" else 1
    if op == "encode":
        run = lambda: mxcomm.encode(x, fmt_name, backend="cpu")  # noqa: E731
    elif op == "decode":
        run = lambda: mxcomm.decode(packed, backend="cpu")  # noqa: E731
    else:  # shards laid out like an all-gather's output: one buffer, rank-major
        parts = [mxcomm.Packed.from_payload(row, packed.format, x.shape, x.dtype)
                 for row in packed.payload().repeat(shards, 1)]
        run = lambda: mxcomm.decode_sum(parts, backend="cpu")  # noqa: E731
    dst = torch.empty_like(x)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        med = _interleaved_medians({"op": run, "copy": lambda: dst.copy_(x)}, GOAL_ROUNDS)
        benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
    finally:
        torch.set_num_threads(old_threads)
    (op_s, op_cpu), (copy_s, copy_cpu) = med["op"], med["copy"]
    benchmark.extra_info.update(
        {
            "goal": True,
            "format": fmt_name,
            "op": op,
            "dtype": "bf16",
            "mib": GOAL_MIB,
            "threads": threads,
            "shards": shards,
            "gbps": shards * tensor_bytes / op_s / 1e9,
            "copy_gbps": tensor_bytes / copy_s / 1e9,
            "ratio_to_copy": shards * copy_s / op_s,
            "cpu_ratio_to_copy": shards * copy_cpu / op_cpu,
            **build_costs,
        }
    )


# -- rotation cost: the same format with and without a random Hadamard rotation ------------
ROTATION_SEED = 1234
ROTATION_FORMATS = ("mxfp4_e2m1", "int4", "mxfp8_e4m3")
ROTATION_ROUNDS = {1: 21, 16: 11, 64: 7}


def _interleaved_medians(fns: dict[str, object], rounds: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each function, called in turn every round (one warm-up call
    each first), so every function sees the same machine load."""
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {name: (sorted(wall[name])[rounds // 2], sorted(cpu[name])[rounds // 2]) for name in fns}


@pytest.mark.parametrize("op", ("encode", "decode"))
@pytest.mark.parametrize("fmt_name", ROTATION_FORMATS)
@pytest.mark.parametrize("mib", SIZES_MIB)
def test_cpu_rotation_cost(benchmark, mib: int, fmt_name: str, op: str) -> None:
    plain = mxcomm.get_format(fmt_name)
    rotated = plain.with_options(name=f"{fmt_name}_rht", rotation_seed=ROTATION_SEED)
    x = _activation(mib, torch.bfloat16)
    tensor_bytes = x.numel() * x.element_size()
    packed = {f.name: mxcomm.encode(x, f, backend="cpu") for f in (plain, rotated)}
    assert all(p.backend == "cpu" for p in packed.values())
    # whether the backend rotates inside its kernels or the API front-end rotates around it
    fused = fuses_rotation(resolve_backend("cpu", x.device), rotated)
    rows, length = x.shape  # whole blocks already: the front-end's padding is a plain copy here
    fp32_blocks = x.float()
    if op == "encode":
        runs = {f.name: (lambda f=f: mxcomm.encode(x, f, backend="cpu")) for f in (plain, rotated)}
        transform = lambda: rotate(fp32_blocks, ROTATION_SEED, plain.block_size)  # noqa: E731
    else:
        runs = {name: (lambda p=p: mxcomm.decode(p, backend="cpu")) for name, p in packed.items()}
        transform = lambda: unrotate(fp32_blocks, ROTATION_SEED, plain.block_size)  # noqa: E731
    dst = torch.empty_like(x)
    rounds = ROTATION_ROUNDS[mib]
    med = _interleaved_medians(
        {
            "plain": runs[plain.name],
            "rotated": runs[rotated.name],
            "transform": transform,
            "copy": lambda: dst.copy_(x),
        },
        rounds,
    )
    benchmark.pedantic(runs[rotated.name], rounds=min(rounds, 3), iterations=1, warmup_rounds=0)

    gbps = {name: tensor_bytes / wall_s / 1e9 for name, (wall_s, _) in med.items()}
    cpu_gbps = {name: tensor_bytes / cpu_s / 1e9 for name, (_, cpu_s) in med.items()}
    benchmark.extra_info.update(
        {
            "format": fmt_name,
            "rotation_op": op,
            "dtype": "bf16",
            "mib": mib,
            "shape": [rows, length],
            "rounds": rounds,
            "threads": torch.get_num_threads(),
            "rotation_fused": fused,
            "plain_gbps": gbps["plain"],
            "rotated_gbps": gbps["rotated"],
            "copy_gbps": gbps["copy"],
            "transform_gbps": gbps["transform"],
            "rotated_over_plain": gbps["rotated"] / gbps["plain"],
            "plain_to_copy": gbps["plain"] / gbps["copy"],
            "rotated_to_copy": gbps["rotated"] / gbps["copy"],
            "plain_cpu_gbps": cpu_gbps["plain"],
            "rotated_cpu_gbps": cpu_gbps["rotated"],
            "cpu_rotated_over_plain": cpu_gbps["rotated"] / cpu_gbps["plain"],
        }
    )


def test_rotation_transform_speedup(benchmark) -> None:
    """``rotate`` of 16 MiB of bf16 activations (as float32 blocks of 32) against the plainly
    spelled-out transform it must equal bit for bit (checked here too), and ``copy_``."""
    x = _activation(16, torch.bfloat16)
    blocks = x.float()
    tensor_bytes = x.numel() * x.element_size()

    def plain_rotate() -> torch.Tensor:
        signs = rotation_signs(ROTATION_SEED, blocks.shape[1])
        return hadamard_blocks_reference(blocks * signs, 32) * (1.0 / 32)

    fast = rotate(blocks, ROTATION_SEED, 32)
    assert torch.equal(fast.view(torch.int32), plain_rotate().view(torch.int32))
    dst = torch.empty_like(x)
    med = _interleaved_medians(
        {"fast": lambda: rotate(blocks, ROTATION_SEED, 32), "plain": plain_rotate, "copy": lambda: dst.copy_(x)}, 5
    )
    benchmark.pedantic(lambda: rotate(blocks, ROTATION_SEED, 32), rounds=3, iterations=1, warmup_rounds=0)
    gbps = {name: tensor_bytes / wall_s / 1e9 for name, (wall_s, _) in med.items()}
    benchmark.extra_info.update(
        {
            "variant": "rotate(), 16 MiB bf16 activations as float32 blocks of 32",
            "transform_gbps": gbps["fast"],
            "plain_transform_gbps": gbps["plain"],
            "transform_speedup": gbps["fast"] / gbps["plain"],
            "transform_cpu_speedup": med["plain"][1] / med["fast"][1],
            "copy_gbps": gbps["copy"],
        }
    )


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
