"""The fast CPU codec backend ("cpu"): native kernels, bit-identical to the reference.

The numerics of ``reference.py`` are re-expressed in integer arithmetic on the
float32 bit pattern (``cpu_codec.cpp``: exponent extraction, a right shift with
exact round/sticky decisions, saturation, sign) and run as 8-lane SIMD loops.
Every format, rounding and scale mode is a runtime parameter of the same
library (``params.kernel_params``, passed as ``struct Format``), so there is one
build in total, not one per format.

The native library is compiled when mxcomm is installed (``setup.py``, see
``native_build.py``), never at run time: two builds live in
``mxcomm/kernels/_native/``, one for CPUs with AVX2 and F16C and a baseline one.
The backend loads the AVX2 build when the CPU has both flags (``/proc/cpuinfo``
on Linux, ``sysctl`` on macOS), else the baseline build; ``MXCOMM_CPU_ISA=avx2``
or ``=baseline`` forces one. The loaded build is ``CpuBackend.build`` and is
logged (INFO, logger ``mxcomm.kernels``). A library built from other sources
than the ``cpu_codec.cpp`` / ``codec_params.h`` next to it (its embedded hash
differs) is refused as stale.

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

Outputs of at least ``POOLED_OUTPUT_BYTES`` live on memory the native library maps once and
recycles: torch owns each such tensor (a DLPack tensor whose deleter hands the memory back), and
the next output of the same size reuses it, with its pages already mapped. A fresh multi-MiB
buffer costs a page fault per page, each zeroed by the kernel -- on the machines measured about
as much as a ``copy_`` of the tensor (docs/performance.md, "CPU codec"). Freed buffers are kept up
to ``$MXCOMM_CPU_OUTPUT_CACHE_MIB`` (default ``DEFAULT_OUTPUT_CACHE_MIB``; 0 keeps none),
oldest released first.

Work is split into ranges of whole blocks that start on byte boundaries of the
code stream and run on a small thread pool (``torch.get_num_threads()``
threads; ctypes releases the GIL during a call).

Availability: CPU tensors, when the native library is installed, current and
loadable (``availability`` gives the reason otherwise: not built, stale, an
invalid ``MXCOMM_CPU_ISA``; ``backend="auto"`` then falls back to the reference
with a one-time warning, an explicit ``backend="cpu"`` raises
``BackendUnavailableError``).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import logging
import math
import os
import platform
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from mxcomm.errors import FormatError
from mxcomm.formats import BlockFormat, FloatElement, IntElement
from mxcomm.formats.element import cached_code_values
from mxcomm.kernels import native_build
from mxcomm.kernels.bitpack import packed_code_bytes
from mxcomm.kernels.dispatch import check_rotation
from mxcomm.kernels.dtypes import INPUT_DTYPES, SCALE_STORAGE_DTYPES, dtype_code
from mxcomm.kernels.params import NATIVE_ABI_VERSION, NativeParams, kernel_params, native_params
from mxcomm.kernels.reference import EncodedBlocks

log = logging.getLogger("mxcomm.kernels")

ISA_ENV = "MXCOMM_CPU_ISA"
OUTPUT_CACHE_ENV = "MXCOMM_CPU_OUTPUT_CACHE_MIB"
DEFAULT_OUTPUT_CACHE_MIB = 256
REBUILD_HINT = (
    "(re)install mxcomm where a C++ compiler is found (`pip install .` or `pip install -e .`), or in a source "
    "checkout run `python setup.py build_ext --inplace`"
)
# Work per thread-pool task (elements): small inputs run on the calling thread only.
MIN_TASK_ELEMENTS = 1 << 17
# Rotated formats with blocks up to this size are rotated inside the kernels (``max_fused_rotation_block``),
# whose float32 block buffers then stay in the L1 cache; larger blocks are rotated by the API
# front-end around the plain codec.
ROTATION_MAX_BLOCK = 2048


@functools.cache
def cpu_format(fmt: BlockFormat) -> NativeParams:
    """The kernel parameters of ``fmt`` as the native library's ``struct Format``."""
    return native_params(kernel_params(fmt))


@functools.cache
def _code_table(elem: FloatElement | IntElement) -> torch.Tensor:
    return torch.tensor(cached_code_values(elem), dtype=torch.float32)


# -- choosing and loading the native library ----------------------------------------------------
class NativeCodecUnavailable(RuntimeError):
    """The native library cannot be used (the message says why and what to do)."""


@dataclass(frozen=True)
class NativeBuild:
    """The native library the backend loaded."""

    path: str
    isa: str  # "avx2" (AVX2 + F16C) or "baseline"
    reason: str  # why this build: the CPU's flags, or MXCOMM_CPU_ISA
    source_hash: str  # sha256 of the cpu_codec.cpp + codec_params.h it was built from


def cpu_has_avx2_f16c() -> tuple[bool, str]:
    """Whether this CPU, under this OS, runs AVX2 and F16C code, and how that was found out.

    Linux lists in /proc/cpuinfo only the features it enables (AVX state included); macOS
    reports them through sysctl. Elsewhere the answer is no: the baseline build runs anywhere.
    """
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return False, f"a {machine} CPU"
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
        except OSError as exc:
            return False, f"/proc/cpuinfo is unreadable ({exc})"
        missing = sorted({"avx2", "f16c"} - set(flags))
        if missing:
            return False, f"/proc/cpuinfo lacks {' and '.join(missing)}"
        return True, "/proc/cpuinfo lists avx2 and f16c"
    if sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"],
                capture_output=True, text=True, timeout=10,
            ).stdout.upper().split()
        except (OSError, subprocess.SubprocessError) as exc:
            return False, f"sysctl failed ({exc})"
        missing = sorted({"AVX2", "F16C"} - set(out))
        return (not missing), ("sysctl lists AVX2 and F16C" if not missing else f"sysctl lacks {' and '.join(missing)}")
    return False, f"no CPU flags to read on {sys.platform}"


def choose_isa() -> tuple[str, str, bool]:
    """(variant, why, forced): $MXCOMM_CPU_ISA if set, else avx2 where the CPU has AVX2 and F16C."""
    forced = os.environ.get(ISA_ENV, "").strip().lower()
    if forced:
        if forced not in native_build.ISA_FLAGS:
            raise NativeCodecUnavailable(f"{ISA_ENV}={forced!r} is not one of {', '.join(native_build.ISA_FLAGS)}")
        if forced == "avx2":
            ok, why = cpu_has_avx2_f16c()
            if not ok:
                raise NativeCodecUnavailable(f"{ISA_ENV}=avx2, but this CPU cannot run the AVX2 build ({why})")
        return forced, f"forced by {ISA_ENV}={forced}", True
    ok, why = cpu_has_avx2_f16c()
    return ("avx2" if ok else "baseline"), why, False


def load_library(
    library_dir: Path = native_build.LIBRARY_DIR, source_dir: Path = native_build.KERNEL_DIR
) -> tuple[ctypes.CDLL, NativeBuild]:
    """Load the native build for this CPU from ``library_dir``, checked against the sources in
    ``source_dir``. Never compiles; raises NativeCodecUnavailable with the reason."""
    isa, why, forced = choose_isa()
    path = native_build.library_path(isa, library_dir)
    if not path.exists() and isa == "avx2" and not forced:
        baseline = native_build.library_path("baseline", library_dir)
        if baseline.exists():
            isa, path, why = "baseline", baseline, f"{why}, but {path.name} is not built"
    if not path.exists():
        raise NativeCodecUnavailable(
            f"the native CPU codec is not built ({path} is missing; mxcomm compiles it when it is installed "
            f"and a C++ compiler is found): {REBUILD_HINT}"
        )
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise NativeCodecUnavailable(f"{path} cannot be loaded ({exc}): {REBUILD_HINT}") from exc
    try:
        hash_of = lib.mx_source_hash
    except AttributeError:  # built by an mxcomm from before the hash was embedded
        built_from = "none"
    else:
        hash_of.restype = ctypes.c_char_p
        built_from = hash_of().decode()
    source, header = source_dir / native_build.SOURCE_PATH.name, source_dir / native_build.HEADER_PATH.name
    if source.exists() and header.exists() and built_from != native_build.source_hash(source, header):
        raise NativeCodecUnavailable(
            f"{path} is stale: it was built from another {source.name} / {header.name} than the ones in "
            f"{source_dir}; {REBUILD_HINT}"
        )
    _declare(lib)
    abi, size = lib.mx_abi_version(), lib.mx_format_size()
    if abi != NATIVE_ABI_VERSION or size != ctypes.sizeof(NativeParams):
        raise NativeCodecUnavailable(
            f"{path} does not match this mxcomm (ABI {abi}, struct Format of {size} bytes; expected ABI "
            f"{NATIVE_ABI_VERSION}, {ctypes.sizeof(NativeParams)} bytes): {REBUILD_HINT}"
        )
    built_isa = lib.mx_build_isa().decode()
    if built_isa != isa:
        raise NativeCodecUnavailable(f"{path} holds the {built_isa} build, not {isa}: {REBUILD_HINT}")
    cache_bytes, cache_why = output_cache_limit()
    lib.mx_output_cache_limit(cache_bytes)
    build = NativeBuild(str(path), isa, why, built_from)
    log.info("cpu backend: native codec, %s build (%s): %s; output cache %s", isa, why, path, cache_why)
    return lib, build


def _declare(lib: ctypes.CDLL) -> None:
    p, i32, i64, u64, f32 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_uint64, ctypes.c_float
    lib.mx_abi_version.restype = ctypes.c_int
    lib.mx_format_size.restype = ctypes.c_int
    lib.mx_build_isa.restype = ctypes.c_char_p
    lib.mx_encode.argtypes = [p, i32, p, i64, i64, i64, i64, f32, u64, p, p]
    lib.mx_encode.restype = ctypes.c_int
    lib.mx_finite_amax.argtypes = [i32, p, i64, i64, i32, i64, i64]
    lib.mx_finite_amax.restype = ctypes.c_uint32
    lib.mx_tensor_scale.argtypes = [p, ctypes.c_uint32]
    lib.mx_tensor_scale.restype = f32
    lib.mx_rotated_finite_amax.argtypes = [p, i32, p, i64, i64, i64, i64]
    lib.mx_rotated_finite_amax.restype = ctypes.c_uint32
    lib.mx_decode.argtypes = [p, i32, i32, p, p, p, p, i64, i64, i64, i64, p]
    lib.mx_decode.restype = ctypes.c_int
    lib.mx_output_alloc.argtypes = [i64]
    lib.mx_output_alloc.restype = p
    lib.mx_output_free.argtypes = [p]
    lib.mx_output_free.restype = None
    lib.mx_output_cache_limit.argtypes = [i64]
    lib.mx_output_cache_limit.restype = i64


# -- outputs ------------------------------------------------------------------------------------
# Outputs of at least this many bytes come from the native library's recycled buffers.
POOLED_OUTPUT_BYTES = 4 << 20
_DLTENSOR = b"dltensor"  # the capsule name DLPack consumers expect (kept alive: the capsule points to it)


@functools.cache
def _capsule_new():
    new = ctypes.pythonapi.PyCapsule_New
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    return new


def output_cache_limit() -> tuple[int, str]:
    """Bytes of freed large outputs the backend keeps for reuse, and where that came from
    ($MXCOMM_CPU_OUTPUT_CACHE_MIB, else the default). Raises NativeCodecUnavailable when the
    variable is not a non-negative number."""
    raw = os.environ.get(OUTPUT_CACHE_ENV, "").strip()
    if not raw:
        return DEFAULT_OUTPUT_CACHE_MIB << 20, f"default ({DEFAULT_OUTPUT_CACHE_MIB} MiB)"
    try:
        mib = float(raw)
    except ValueError:
        mib = -1.0
    if not mib >= 0 or math.isinf(mib):
        raise NativeCodecUnavailable(f"{OUTPUT_CACHE_ENV}={raw!r} is not a non-negative number of MiB")
    return int(mib * (1 << 20)), f"{OUTPUT_CACHE_ENV}={raw}"


def _pooled_output(lib: ctypes.CDLL, nbytes: int) -> torch.Tensor | None:
    """A uint8 tensor of nbytes on memory of the native library's output cache, or None when no
    memory could be mapped (the caller then asks torch, which reports the shortage)."""
    managed = lib.mx_output_alloc(nbytes)
    if not managed:
        return None
    try:
        # torch owns it from here: its deleter gives the memory back to the cache
        return torch.utils.dlpack.from_dlpack(_capsule_new()(managed, _DLTENSOR, None))
    except BaseException:
        lib.mx_output_free(managed)
        raise


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

    def __init__(
        self, library_dir: Path = native_build.LIBRARY_DIR, source_dir: Path = native_build.KERNEL_DIR
    ) -> None:
        self.library_dir = library_dir
        self.source_dir = source_dir
        self._lock = threading.Lock()
        self._lib: ctypes.CDLL | None = None
        self._error: str | None = None
        self.build: NativeBuild | None = None  # the loaded native library (after first use)

    def library(self) -> ctypes.CDLL:
        with self._lock:
            if self._lib is None and self._error is None:
                try:
                    self._lib, self.build = load_library(self.library_dir, self.source_dir)
                except NativeCodecUnavailable as exc:
                    self._error = str(exc)
            if self._lib is None:
                raise NativeCodecUnavailable(self._error)
            return self._lib

    def availability(self, device: torch.device) -> str | None:
        if torch.device(device).type != "cpu":
            return f"the cpu backend runs on CPU tensors only, not {torch.device(device).type}"
        try:
            self.library()
        except NativeCodecUnavailable as exc:
            return str(exc)
        return None

    def empty_output(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """torch.empty(shape, dtype=dtype); large ones on recycled memory (see the module docstring)."""
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes >= POOLED_OUTPUT_BYTES:
            flat = _pooled_output(self.library(), nbytes)
            if flat is not None:
                return flat.view(dtype).view(shape)
        return torch.empty(shape, dtype=dtype)

    @property
    def description(self) -> str:
        """The backend and its native build, e.g. "cpu (avx2 build)"."""
        return f"cpu ({self.build.isa} build)" if self.build is not None else "cpu (not loaded)"

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
        codes = self.empty_output((packed_code_bytes(num_blocks * bs, bits),), torch.uint8)
        scales = self.empty_output((num_blocks,), SCALE_STORAGE_DTYPES[fmt.scale])
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
            # (= reference.tensor_scale_from_amax, which costs ~150 us of torch ops per call)
            ts_value = lib.mx_tensor_scale(ctypes.byref(params), max(amaxes, default=0))
            tensor_scale = torch.tensor(ts_value, dtype=torch.float32)
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
        out = self.empty_output((rows, length), dtype)
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
    "CpuBackend", "NativeBuild", "NativeCodecUnavailable", "block_ranges", "choose_isa", "cpu_format",
    "cpu_has_avx2_f16c", "load", "load_library",
]

if sys.byteorder != "little":  # pragma: no cover - the packed layout is defined little-endian
    raise ImportError("the cpu codec backend needs a little-endian machine")
