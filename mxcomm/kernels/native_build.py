"""Building the native CPU codec (``cpu_codec.cpp`` + ``codec_params.h``) into shared libraries.

The libraries are built when mxcomm is installed: ``setup.py`` loads this module by its path
(standard library only: no torch, no mxcomm import, so it runs under pip's build isolation) and
calls ``build_libraries``. A source checkout builds them in place with either of::

    python setup.py build_ext --inplace
    python -m mxcomm.kernels.native_build

mxcomm itself never runs a compiler: ``cpu_backend.py`` imports this module only for the names,
the instruction-set variants and ``source_hash``.

Two libraries (``ISA_FLAGS``), both plain C ABI (no Python or torch headers, so one build serves
every Python and torch version): ``avx2`` (AVX2 + F16C; x86-64 only) and ``baseline`` (the
compiler's default target, any CPU). Each embeds the sha256 of the source and header it was built
from (``-DMX_SOURCE_HASH``), which the backend compares with the files next to it: a stale library
is refused, never used silently.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
SOURCE_PATH = KERNEL_DIR / "cpu_codec.cpp"
HEADER_PATH = KERNEL_DIR / "codec_params.h"
# where the libraries live inside the installed package (and in a source checkout)
LIBRARY_DIR = KERNEL_DIR / "_native"
LIBRARY_PACKAGE = "mxcomm.kernels._native"

# instruction-set variant -> extra compiler flags (never -march=native: a build must run on any
# CPU of its variant, e.g. inside a wheel)
ISA_FLAGS: dict[str, tuple[str, ...]] = {"avx2": ("-mavx2", "-mf16c"), "baseline": ()}
# No fast-math and no FMA contraction: decode rounds every product and every sum separately, like
# the reference (exactness).
COMMON_FLAGS: tuple[str, ...] = ("-O3", "-std=c++17", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math")
COMPILE_TIMEOUT_S = 900


class BuildError(RuntimeError):
    """The native codec could not be compiled (the message says why)."""


def library_stem(isa: str) -> str:
    return f"libmxcomm_codec_{isa}"


def library_path(isa: str, directory: Path = LIBRARY_DIR) -> Path:
    return directory / f"{library_stem(isa)}.so"


def machine_isas(machine: str | None = None) -> list[str]:
    """The variants worth building on this machine's architecture (AVX2 only on x86-64)."""
    machine = (machine or platform.machine()).lower()
    return ["avx2", "baseline"] if machine in ("x86_64", "amd64") else ["baseline"]


def source_hash(source: Path = SOURCE_PATH, header: Path = HEADER_PATH) -> str:
    """sha256 (hex) of the codec's source and header, as embedded in a library built from them."""
    digest = hashlib.sha256()
    for path in (source, header):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def find_compiler() -> str | None:
    """The C++ compiler: $CXX, else the first of g++ / c++ / clang++ on PATH."""
    value = os.environ.get("CXX")
    if value:
        return shutil.which(value) or (value if os.path.isfile(value) else None)
    for name in ("g++", "c++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def compile_command(compiler: str, isa: str, output: Path, digest: str) -> list[str]:
    return [
        compiler, *COMMON_FLAGS, *ISA_FLAGS[isa], f'-DMX_SOURCE_HASH="{digest}"', "-o", str(output), str(SOURCE_PATH),
    ]


def compile_library(compiler: str, isa: str, target: Path) -> float:
    """Compile one variant to ``target`` (atomically: a process never loads a partial file).
    Returns the seconds it took; raises BuildError with the compiler's output on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = source_hash()
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    start = time.perf_counter()
    try:
        try:
            proc = subprocess.run(
                compile_command(compiler, isa, Path(tmp), digest), capture_output=True, text=True,
                timeout=COMPILE_TIMEOUT_S,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise BuildError(f"{compiler} could not be run: {exc}") from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip()[-2000:]
            raise BuildError(f"{compiler} failed to build the {isa} codec (exit {proc.returncode}): {tail}")
        os.chmod(tmp, 0o755)  # mkstemp's file is private; an installed library is for every user
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return time.perf_counter() - start


def build_libraries(
    targets: dict[str, Path], compiler: str | None = None
) -> dict[str, float | BuildError]:
    """Compile every ``{isa: target path}`` at the same time (one compiler process each).
    Returns, per variant, the seconds it took or the BuildError that stopped it."""
    compiler = compiler or find_compiler()
    if compiler is None:
        missing = BuildError("no C++ compiler found (looked for $CXX, g++, c++, clang++)")
        return {isa: missing for isa in targets}
    results: dict[str, float | BuildError] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        futures = {isa: pool.submit(compile_library, compiler, isa, path) for isa, path in targets.items()}
        for isa, future in futures.items():
            try:
                results[isa] = future.result()
            except BuildError as exc:
                results[isa] = exc
    return results


def main() -> int:
    """Build the libraries in place (LIBRARY_DIR) for a source checkout."""
    targets = {isa: library_path(isa) for isa in machine_isas()}
    failed = 0
    for isa, result in build_libraries(targets).items():
        if isinstance(result, BuildError):
            failed += 1
            print(f"{isa}: FAILED: {result}", file=sys.stderr)
        else:
            print(f"{isa}: built {targets[isa]} in {result:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
