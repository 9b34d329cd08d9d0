"""The fast CPU codec backend ("cpu"): native kernels, bit-identical to the reference.

The numerics of ``reference.py`` are re-expressed in integer arithmetic on the
float32 bit pattern (``cpu_codec.cpp``: exponent extraction, a right shift with
exact round/sticky decisions, saturation, sign) and run as 8-lane SIMD loops.
That source is compiled once per machine with the system C++ compiler (the
one torch.compile's CPU backend needs as well), cached on disk, and loaded
with ``ctypes``; every format, rounding and scale mode is a runtime parameter
of the same library, so there is one compilation in total, not one per format.

Why not ``torch.compile``: the same integer formulation in torch ops, compiled
by inductor, is bit-exact but about 6x slower here (its generated loops convert
vectors to bytes lane by lane and bit-cast through memory); see
docs/performance.md ("CPU codec") and benchmarks/test_cpu_codec.py.

Rotated formats (``rotation_seed``) with blocks of at most ``ROTATION_MAX_BLOCK`` elements are
rotated inside the kernels (``CpuBackend.max_fused_rotation_block``; ``mxcomm.kernels.api`` then hands the
rotated format and the unpadded rows to this backend): the encoder rotates every zero-padded
block (signs, butterfly stages, times 1/B) in registers before its scale and codes, and encodes
the padded positions too; the decoder sums the parts' float32 values of the whole block,
un-rotates them (stages, signs) and only then casts the valid elements. The float32 operations
and their order are those of ``rotation.py``, so bytes and values equal the front-end path's
(``tests/kernels/test_cpu_rotation.py``). Larger blocks are rotated by the front-end, and this
backend refuses them rotated.

Work is split into ranges of whole blocks that start on byte boundaries of the
code stream and run on a small thread pool (``torch.get_num_threads()``
threads; ctypes releases the GIL during a call).

Availability: CPU tensors, when a C++ compiler is found and the library builds
(``availability`` gives the reason otherwise; ``backend="auto"`` then falls
back to the reference with a one-time warning).
Environment: ``MXCOMM_CXX`` (compiler), ``MXCOMM_CACHE_DIR`` (where the library
is cached; default ``$XDG_CACHE_HOME/mxcomm`` or ``~/.cache/mxcomm``).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mxcomm.errors import FormatError
from mxcomm.formats import BlockFormat, FloatElement, IntElement
from mxcomm.formats.element import cached_code_values
from mxcomm.kernels.bitpack import packed_code_bytes
from mxcomm.kernels.dispatch import check_rotation
from mxcomm.kernels.dtypes import INPUT_DTYPES, SCALE_STORAGE_DTYPES, dtype_code
from mxcomm.kernels.reference import EncodedBlocks, tensor_scale_from_amax

SOURCE_PATH = Path(__file__).with_name("cpu_codec.cpp")
ABI_VERSION = 7
CXX_ENV = "MXCOMM_CXX"
CACHE_ENV = "MXCOMM_CACHE_DIR"
# Work per thread-pool task (elements): small inputs run on the calling thread only.
MIN_TASK_ELEMENTS = 1 << 17
# Rotated formats with blocks up to this size are rotated inside the kernels (``max_fused_rotation_block``),
# whose float32 block buffers then stay in the L1 cache; larger blocks are rotated by the API
# front-end around the plain codec.
ROTATION_MAX_BLOCK = 2048



class CpuFormat(ctypes.Structure):
    """Mirror of ``struct Format`` in cpu_codec.cpp (same field order and types)."""

    _fields_ = [
        ("bits", ctypes.c_int32),
        ("is_int", ctypes.c_int32),
        ("grid_mbits", ctypes.c_int32),
        ("grid_emin", ctypes.c_int32),
        ("max_code", ctypes.c_int32),
        ("emax", ctypes.c_int32),
        ("block_size", ctypes.c_int32),
        ("scale_kind", ctypes.c_int32),
        ("scale_mode", ctypes.c_int32),
        ("rounding", ctypes.c_int32),
        ("rceil_exp", ctypes.c_int32),
        ("rceil_frac", ctypes.c_int32),
        ("even_frac", ctypes.c_int32),
        ("s_mbits", ctypes.c_int32),
        ("s_emin", ctypes.c_int32),
        ("has_tensor_scale", ctypes.c_int32),
        ("s_max", ctypes.c_double),
        ("max_normal", ctypes.c_double),
        ("scale_nan", ctypes.c_uint32),
        ("table_has_inf", ctypes.c_int32),
        ("float_rne", ctypes.c_int32),
        ("table_max", ctypes.c_float),
        ("rotate", ctypes.c_int32),
        ("rotation_seed", ctypes.c_uint64),
    ]


@functools.cache
def cpu_format(fmt: BlockFormat) -> CpuFormat:
    """The kernel parameters of ``fmt`` (every format-dependent constant the kernels use)."""
    elem = fmt.element
    spec = fmt.scale_spec
    if isinstance(elem, IntElement):
        # Integers k * 2**-(bits-2) are the grid with bits-1 mantissa bits whose subnormal
        # binade (2**1) lies above every scaled value: the code is the rounded k.
        grid_mbits, grid_emin, max_code = elem.bits - 1, 1, elem.kmax
    else:
        grid_mbits, grid_emin, max_code = elem.mbits, elem.emin, elem.max_code_magnitude
    mn_sig, mn_exp = math.frexp(elem.max_normal)  # max_normal = (2 * mn_sig) * 2**(mn_exp - 1)
    rceil_frac = (2.0 * mn_sig - 1.0) * 2**23
    if rceil_frac != int(rceil_frac):  # pragma: no cover - element significands are short
        raise FormatError(f"{fmt.name}: max_normal significand does not fit 23 bits")
    precision = elem.precision_bits
    values = cached_code_values(elem)
    return CpuFormat(
        bits=elem.bits,
        is_int=int(isinstance(elem, IntElement)),
        grid_mbits=grid_mbits,
        grid_emin=grid_emin,
        max_code=max_code,
        emax=elem.emax,
        block_size=fmt.block_size,
        scale_kind=fmt.scale.code,
        scale_mode=fmt.scale_mode.code,
        rounding=fmt.rounding.code,
        rceil_exp=mn_exp - 1,
        rceil_frac=int(rceil_frac),
        even_frac=(1 << 23) - (1 << (22 - precision)),
        s_mbits=spec.mbits,
        s_emin=1 - spec.bias,
        has_tensor_scale=int(fmt.tensor_scale),
        s_max=float(spec.max_value),
        max_normal=float(elem.max_normal),
        scale_nan=spec.nan_bits,
        table_has_inf=int(any(math.isinf(v) for v in cached_code_values(elem))),
        float_rne=int(_float_rne_exact(fmt, grid_mbits, grid_emin)),
        table_max=max((abs(v) for v in values if math.isfinite(v)), default=0.0),
        rotate=int(fmt.rotation_seed is not None),
        rotation_seed=fmt.rotation_seed or 0,
    )


def _float_rne_exact(fmt: BlockFormat, grid_mbits: int, grid_emin: int) -> bool:
    """Whether round-to-nearest-even encodes of ``fmt`` may round with the FPU (cpu_codec.cpp,
    element_codes_rne_fpu): the rounding constant 2**(binade + 23 - mbits) must stay a finite
    float32 for every binade up to emax + 1, and for power-of-two scales the float32 product
    x * 2**-e may only be inexact below 2**-126, which must then be at most half a grid step."""
    emax = fmt.element.emax
    if emax + 1 + 23 - grid_mbits > 127:
        return False
    return not fmt.scale_spec.power_of_two or grid_emin - grid_mbits >= -125


@functools.cache
def _code_table(elem: FloatElement | IntElement) -> torch.Tensor:
    return torch.tensor(cached_code_values(elem), dtype=torch.float32)


# -- building and loading the library -----------------------------------------------------------
@dataclass
class BuildInfo:
    """How the native library was obtained (reported by the benchmark)."""

    path: str
    compiler: str
    flags: list[str]
    compiled: bool  # False: loaded from the on-disk cache
    seconds: float  # compile (or load) time


def find_compiler() -> str | None:
    """The C++ compiler: $MXCOMM_CXX, $CXX, or the first of g++ / c++ / clang++ on PATH."""
    for env in (CXX_ENV, "CXX"):
        value = os.environ.get(env)
        if value:
            return shutil.which(value) or (value if os.path.isfile(value) else None)
    for name in ("g++", "c++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _arch_flags() -> list[str]:
    # AVX2 when torch itself dispatches to AVX2 kernels on this machine; never -march=native,
    # so a cached library stays valid on any machine of the same ISA level.
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64") and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        # every AVX2 CPU also has F16C (half <-> float conversions)
        return ["-mavx2", "-mf16c"]
    return []


def compile_flags() -> list[str]:
    # No fast-math and no FMA contraction: decode rounds every product and sum separately.
    return ["-O3", "-std=c++17", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", *_arch_flags()]


def _cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mxcomm"


def _compiler_id(compiler: str) -> str:
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else compiler
    except (OSError, subprocess.SubprocessError):
        return compiler


class _FileLock:
    """An exclusive lock file (POSIX): concurrent processes (e.g. the ranks of a collective test)
    build the library once instead of all at the same time. A no-op where fcntl is missing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None


def _compile(compiler: str, flags: list[str], target: Path) -> None:
    # build under a private name, then rename: no process ever loads a partial file
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [compiler, *flags, "-o", tmp, str(SOURCE_PATH)], capture_output=True, text=True, timeout=900
        )
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip()[-2000:]
            raise RuntimeError(f"{compiler} failed to build {SOURCE_PATH.name}: {tail}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_library() -> tuple[ctypes.CDLL, BuildInfo]:
    """Compile cpu_codec.cpp (or reuse the cached build) and load it. Raises RuntimeError with the reason."""
    compiler = find_compiler()
    if compiler is None:
        raise RuntimeError(f"no C++ compiler found (looked for ${CXX_ENV}, $CXX, g++, c++, clang++)")
    source = SOURCE_PATH.read_bytes()
    flags = compile_flags()
    key = hashlib.sha256(
        b"\0".join([source, " ".join(flags).encode(), _compiler_id(compiler).encode(), platform.machine().encode()])
    ).hexdigest()[:24]
    start = time.perf_counter()
    errors = []
    uid = os.getuid() if hasattr(os, "getuid") else 0
    for directory in (_cache_dir(), Path(tempfile.gettempdir()) / f"mxcomm-{uid}"):
        target = directory / f"mxcomm_cpu_codec_{key}.so"
        compiled = False
        try:
            if not target.exists():
                directory.mkdir(parents=True, exist_ok=True)
                with _FileLock(directory / f"mxcomm_cpu_codec_{key}.lock"):
                    if not target.exists():  # another process may have built it meanwhile
                        _compile(compiler, flags, target)
                        compiled = True
        except OSError as exc:  # e.g. an unwritable cache directory: try the next one
            errors.append(f"{directory}: {exc}")
            continue
        lib = ctypes.CDLL(str(target))
        _declare(lib)
        if lib.mx_abi_version() != ABI_VERSION or lib.mx_format_size() != ctypes.sizeof(CpuFormat):
            raise RuntimeError(f"{target} does not match this mxcomm (ABI/struct layout mismatch)")
        return lib, BuildInfo(str(target), compiler, flags, compiled, time.perf_counter() - start)
    raise RuntimeError("could not write the compiled CPU codec anywhere: " + "; ".join(errors))


def _declare(lib: ctypes.CDLL) -> None:
    p, i32, i64, u64, f32 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_uint64, ctypes.c_float
    lib.mx_abi_version.restype = ctypes.c_int
    lib.mx_format_size.restype = ctypes.c_int
    lib.mx_encode.argtypes = [p, i32, p, i64, i64, i64, i64, f32, u64, p, p]
    lib.mx_encode.restype = ctypes.c_int
    lib.mx_finite_amax.argtypes = [i32, p, i64, i64, i32, i64, i64]
    lib.mx_finite_amax.restype = ctypes.c_uint32
    lib.mx_rotated_finite_amax.argtypes = [p, i32, p, i64, i64, i64, i64]
    lib.mx_rotated_finite_amax.restype = ctypes.c_uint32
    lib.mx_decode.argtypes = [p, i32, i32, p, p, p, p, i64, i64, i64, i64, p]
    lib.mx_decode.restype = ctypes.c_int


# -- outputs ------------------------------------------------------------------------------------
_HUGE_PAGE = 1 << 21
_MADV_HUGEPAGE = 14  # Linux


@functools.lru_cache(maxsize=1)
def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def empty_output(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """torch.empty, with large buffers advised to use transparent huge pages.

    A fresh multi-MiB output is otherwise first touched one 4 KiB page fault at a time, which
    costs about as much as decoding into it; the advice only affects how the kernel backs the
    pages (a no-op where THP is disabled or the call is unavailable).
    """
    out = torch.empty(shape, dtype=dtype)
    nbytes = out.numel() * out.element_size()
    madvise = _madvise() if nbytes >= 2 * _HUGE_PAGE else None
    if madvise is not None:
        start = -(-out.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
        end = (out.data_ptr() + nbytes) // _HUGE_PAGE * _HUGE_PAGE
        if end > start:
            madvise(start, end - start, _MADV_HUGEPAGE)  # advisory: a failure changes nothing
    return out


# -- work splitting -----------------------------------------------------------------------------
_pool_lock = threading.Lock()
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] = (0, 0)  # (process id, workers)


def _executor(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    global _pool, _pool_key
    key = (os.getpid(), workers)
    with _pool_lock:
        if _pool is None or _pool_key != key:
            # a forked child inherits the pool object but not its threads: make a new one
            if _pool is not None and _pool_key[0] == key[0]:
                _pool.shutdown(wait=False)
            _pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mxcomm-cpu")
            _pool_key = key
        return _pool


def block_ranges(num_blocks: int, block_size: int, bits: int, threads: int | None = None) -> list[tuple[int, int]]:
    """Split blocks [0, num_blocks) into ranges that start on byte boundaries of the code stream."""
    if num_blocks == 0:
        return []
    threads = max(1, torch.get_num_threads() if threads is None else threads)
    # a range must start at a block whose first code starts a byte
    align = 8 // math.gcd(block_size * bits, 8)
    tasks = min(4 * threads, max(1, num_blocks * block_size // MIN_TASK_ELEMENTS)) if threads > 1 else 1
    step = -(-num_blocks // tasks)
    step = -(-step // align) * align
    return [(b, min(b + step, num_blocks)) for b in range(0, num_blocks, step)]


def _run(ranges: list[tuple[int, int]], work) -> list:
    """work(b0, b1) for every range, on torch.get_num_threads() threads (the caller is one of them).

    Ranges are handed out one at a time, so a thread slowed down by other processes takes fewer.
    """
    if len(ranges) <= 1:
        return [work(*r) for r in ranges]
    threads = min(max(1, torch.get_num_threads()), len(ranges))
    results: list = [None] * len(ranges)
    order = iter(range(len(ranges)))
    lock = threading.Lock()

    def drain() -> None:
        while True:
            with lock:
                i = next(order, None)
            if i is None:
                return
            results[i] = work(*ranges[i])

    futures = [_executor(threads - 1).submit(drain) for _ in range(threads - 1)] if threads > 1 else []
    try:
        drain()
    finally:  # the helpers write into the caller's tensors: never return before they are done
        done = [f.exception() for f in futures]
    for exc in done:
        if exc is not None:
            raise exc
    return results


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"mxcomm cpu codec: {what} failed with status {status}")


# -- the backend ----------------------------------------------------------------------------------
class CpuBackend:
    """Dispatch backend "cpu" (see the module docstring)."""

    name = "cpu"
    max_fused_rotation_block = ROTATION_MAX_BLOCK

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lib: ctypes.CDLL | None = None
        self._error: str | None = None
        self.build_info: BuildInfo | None = None

    def library(self) -> ctypes.CDLL:
        with self._lock:
            if self._lib is None and self._error is None:
                try:
                    self._lib, self.build_info = build_library()
                except Exception as exc:  # any failure to build or load is the reason it cannot run
                    self._error = str(exc) or type(exc).__name__
            if self._lib is None:
                raise RuntimeError(self._error)
            return self._lib

    def availability(self, device: torch.device) -> str | None:
        if torch.device(device).type != "cpu":
            return f"the cpu backend runs on CPU tensors only, not {torch.device(device).type}"
        try:
            self.library()
        except RuntimeError as exc:
            return str(exc)
        return None

    # -- encode -------------------------------------------------------------------------------
    def encode_blocks(self, x2d: torch.Tensor, fmt: BlockFormat, seed: int | None) -> EncodedBlocks:
        check_rotation(self, fmt)
        lib = self.library()
        if x2d.device.type != "cpu":
            raise FormatError(f"the cpu backend takes CPU tensors, got {x2d.device}")
        if x2d.dim() != 2 or x2d.dtype not in INPUT_DTYPES:
            raise FormatError(f"encode_blocks takes a 2-D float32/bfloat16/float16 tensor, got {x2d.dtype} {tuple(x2d.shape)}")
        x2d = x2d.contiguous()
        rows, length = x2d.shape
        bs, bits = fmt.block_size, fmt.element.bits
        bpr = -(-length // bs)
        num_blocks = rows * bpr
        codes = empty_output((packed_code_bytes(num_blocks * bs, bits),), torch.uint8)
        scales = empty_output((num_blocks,), SCALE_STORAGE_DTYPES[fmt.scale])
        params = cpu_format(fmt)
        kind = dtype_code(x2d.dtype)
        ranges = block_ranges(num_blocks, bs, bits)
        x_ptr = x2d.data_ptr()

        tensor_scale = None
        ts_value = 1.0
        if fmt.tensor_scale:
            if params.rotate:  # the amax of the rotated blocks, which are what gets encoded
                fmt_ref = ctypes.byref(params)
                amaxes = _run(
                    ranges, lambda b0, b1: lib.mx_rotated_finite_amax(fmt_ref, kind, x_ptr, length, bpr, b0, b1)
                )
                if any(a >= 0x7F800000 for a in amaxes):
                    raise RuntimeError("mxcomm cpu codec: rotated amax failed (out of memory)")
            else:
                amaxes = _run(ranges, lambda b0, b1: lib.mx_finite_amax(kind, x_ptr, length, bpr, bs, b0, b1))
            amax_bits = max(amaxes, default=0)
            amax = torch.tensor([amax_bits], dtype=torch.int32).view(torch.float32)
            tensor_scale = tensor_scale_from_amax(amax, fmt)
            ts_value = float(tensor_scale)
        if seed is None:
            if fmt.rounding == "stochastic":
                raise FormatError("stochastic rounding needs a seed")
            seed = 0
        codes_ptr, scales_ptr, params_ref = codes.data_ptr(), scales.data_ptr(), ctypes.byref(params)

        def work(b0: int, b1: int) -> None:
            _check(
                lib.mx_encode(params_ref, kind, x_ptr, length, bpr, b0, b1, ts_value, seed, codes_ptr, scales_ptr),
                "encode",
            )

        _run(ranges, work)
        return EncodedBlocks(codes, scales, tensor_scale)

    # -- decode -------------------------------------------------------------------------------
    def decode_blocks(
        self, parts: EncodedBlocks, fmt: BlockFormat, rows: int, length: int, dtype: torch.dtype
    ) -> torch.Tensor:
        return self.decode_sum_blocks([parts], fmt, rows, length, dtype)

    def decode_sum_blocks(
        self, parts: list[EncodedBlocks], fmt: BlockFormat, rows: int, length: int, dtype: torch.dtype
    ) -> torch.Tensor:
        check_rotation(self, fmt)
        lib = self.library()
        if dtype not in INPUT_DTYPES:
            raise FormatError(f"decode produces float32, bfloat16 or float16, got {dtype}")
        if not parts:
            raise FormatError("decode_sum needs at least one part")
        bs, bits = fmt.block_size, fmt.element.bits
        bpr = -(-length // bs) if length else 0
        num_blocks = rows * bpr
        out = empty_output((rows, length), dtype)
        if num_blocks == 0:
            return out
        need_codes = packed_code_bytes(num_blocks * bs, bits)
        keep = []  # contiguous CPU copies must outlive the calls
        code_ptrs, scale_ptrs, ts_values = [], [], []
        for p in parts:
            codes, scales = p.codes.contiguous(), p.scales.contiguous()
            if codes.device.type != "cpu" or codes.dtype != torch.uint8 or codes.numel() != need_codes:
                raise FormatError(f"codes must be {need_codes} uint8 bytes on the CPU")
            if scales.dtype != SCALE_STORAGE_DTYPES[fmt.scale] or scales.numel() != num_blocks:
                raise FormatError(f"scales must be {num_blocks} entries of {SCALE_STORAGE_DTYPES[fmt.scale]}")
            keep += [codes, scales]
            code_ptrs.append(codes.data_ptr())
            scale_ptrs.append(scales.data_ptr())
            ts_values.append(float(p.tensor_scale) if p.tensor_scale is not None else 1.0)
        if fmt.tensor_scale and any(p.tensor_scale is None for p in parts):
            raise FormatError(f"format {fmt.name} needs a tensor scale in every part")
        k = len(parts)
        code_arr = (ctypes.c_void_p * k)(*code_ptrs)
        scale_arr = (ctypes.c_void_p * k)(*scale_ptrs)
        ts_arr = (ctypes.c_float * k)(*ts_values)
        table = _code_table(fmt.element)
        params = ctypes.byref(cpu_format(fmt))
        okind, out_ptr, table_ptr = dtype_code(dtype), out.data_ptr(), table.data_ptr()

        def work(b0: int, b1: int) -> None:
            status = lib.mx_decode(
                params, okind, k, code_arr, scale_arr, ts_arr, table_ptr, length, bpr, b0, b1, out_ptr
            )
            _check(status, "decode")

        _run(block_ranges(num_blocks, bs, bits), work)
        del keep
        return out


_backend: CpuBackend | None = None
_backend_lock = threading.Lock()


def load() -> CpuBackend:
    """The process-wide backend instance (the dispatch loader)."""
    global _backend
    with _backend_lock:
        if _backend is None:
            _backend = CpuBackend()
        return _backend


__all__ = [
    "CpuBackend", "CpuFormat", "BuildInfo", "block_ranges", "build_library", "cpu_format", "load",
]

if sys.byteorder != "little":  # pragma: no cover - the packed layout is defined little-endian
    raise ImportError("the cpu codec backend needs a little-endian machine")
