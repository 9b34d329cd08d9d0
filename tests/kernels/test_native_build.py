"""The native CPU codec's build: one source of kernel parameters, libraries built at install time.

* ``codec_params.h`` is what ``mxcomm/kernels/params.py`` generates (the committed copy is current);
  the native struct and the Triton constexprs carry the same KernelParams values;
* the backend loads the build that matches the CPU (or ``MXCOMM_CPU_ISA``), and the baseline build
  encodes and decodes byte for byte like the reference;
* a stale or missing library is refused with the reason (``auto`` warns once and falls back, an
  explicit ``backend="cpu"`` raises), and importing or encoding never runs a compiler.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import mxcomm
from mxcomm.errors import BackendUnavailableError
from mxcomm.formats import Rounding
from mxcomm.kernels import backend_status, cpu_backend, dispatch, native_build, params, register_backend

REPO_ROOT = Path(mxcomm.__file__).resolve().parents[1]
_STATUS = backend_status("cpu", "cpu")
needs_native = pytest.mark.skipif(_STATUS is not None, reason=f"cpu backend cannot run here: {_STATUS}")


def _run_python(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter that imports this checkout's mxcomm."""
    base = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    base.pop(cpu_backend.ISA_ENV, None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], env={**base, **(env or {})}, capture_output=True,
        text=True, timeout=300,
    )


# -- one source of kernel parameters -------------------------------------------------------------
def test_committed_header_is_generated_from_params() -> None:
    assert params.HEADER_PATH.read_text() == params.render_header(), (
        "mxcomm/kernels/codec_params.h is out of date: run `python -m mxcomm.kernels.params`, then rebuild "
        "the native codec (python setup.py build_ext --inplace)"
    )
    assert params.main(["--check"]) == 0


def test_header_carries_the_enum_codes_and_every_native_field() -> None:
    header = params.HEADER_PATH.read_text()
    assert f"#define MX_ABI_VERSION {params.NATIVE_ABI_VERSION}" in header
    for member in Rounding:
        assert f"RND_{member.name} = {member.code}" in header
    assert "SC_E4M3 = 1" in header and "MODE_RCEIL = 2" in header and "DT_BF16 = 1" in header
    body = header[header.index("struct Format {"):]
    assert [line.split()[1].rstrip(";") for line in body.splitlines()[1:-1]] == [
        name for name, _ in params.NativeParams._fields_
    ]


@pytest.mark.parametrize("name", ["mxfp4", "mxint8", "nvfp4", "mxfp8_e5m2"])
def test_native_struct_and_triton_constexprs_hold_the_same_values(name: str) -> None:
    fmt = mxcomm.get_format(name).with_options(rotation_seed=3)
    kp = params.kernel_params(fmt)
    native = cpu_backend.cpu_format(fmt)
    for field in params.NATIVE_FIELDS:
        assert getattr(native, field.name) == getattr(kp, field.name), field.name
    constexprs = params.triton_constexprs(kp)
    assert constexprs == {f.name.upper(): getattr(kp, f.name) for f in params.TRITON_FIELDS}
    assert constexprs["ROTATE"] and kp.rotation_seed == 3


def test_triton_kernels_declare_the_kernel_params() -> None:
    pytest.importorskip("triton")
    from mxcomm.kernels import triton_backend, triton_kernels

    cx = params.triton_constexprs(params.kernel_params(mxcomm.get_format("mxfp4")))
    assert set(cx) <= set(triton_kernels.encode_kernel.arg_names)
    assert set(triton_backend.DECODE_PARAMS) <= set(cx)
    assert set(triton_backend.DECODE_PARAMS) <= set(triton_kernels.decode_kernel.arg_names)


# -- the loaded build ----------------------------------------------------------------------------
@needs_native
def test_the_loaded_build_matches_the_cpu() -> None:
    backend = cpu_backend.load()
    lib = backend.library()
    forced = os.environ.get(cpu_backend.ISA_ENV)
    has_avx2, why = cpu_backend.cpu_has_avx2_f16c()
    want = forced or ("avx2" if has_avx2 and native_build.library_path("avx2").exists() else "baseline")
    assert backend.build is not None and backend.build.isa == want
    assert lib.mx_build_isa().decode() == want
    assert Path(backend.build.path) == native_build.library_path(want)
    assert backend.build.source_hash == native_build.source_hash()
    assert backend.description == f"cpu ({want} build)"
    assert forced or why in backend.build.reason


@needs_native
def test_the_baseline_build_encodes_like_the_reference() -> None:
    if not native_build.library_path("baseline").exists():
        pytest.skip("no baseline build")
    result = _run_python(
        """
        import json, math, torch, mxcomm
        from mxcomm.kernels import cpu_backend, resolve_backend
        g = torch.Generator().manual_seed(5)
        x = torch.randn(6, 100, generator=g) * torch.logspace(-6, 6, 100)
        x[0, 3], x[1, 40], x[2, 7], x[3, 0] = math.nan, math.inf, -0.0, 1e-40
        same = []
        for name, opts in [("mxfp4", {}), ("mxfp8_e4m3", {}), ("mxint8", {"rounding": "stochastic"}),
                           ("nvfp4", {}), ("mxfp6_e3m2", {"block_size": 20, "scale_mode": "even"}),
                           ("mxfp4", {"rotation_seed": 7})]:
            fmt = mxcomm.get_format(name).with_options(**opts)
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                xd = x.to(dtype)
                a = mxcomm.encode(xd, fmt, backend="cpu", generator=torch.Generator().manual_seed(3))
                b = mxcomm.encode(xd, fmt, backend="torch", generator=torch.Generator().manual_seed(3))
                da, db = mxcomm.decode(a, backend="cpu"), mxcomm.decode(b, backend="torch")
                same.append(torch.equal(a.codes, b.codes) and torch.equal(a.scales.view(torch.uint8), b.scales.view(torch.uint8))
                            and torch.equal(da.isnan(), db.isnan()) and torch.equal(da.nan_to_num(), db.nan_to_num()))
        print(json.dumps({"isa": resolve_backend("cpu").build.isa, "same": same}))
        """,
        env={cpu_backend.ISA_ENV: "baseline"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["isa"] == "baseline"
    assert out["same"] and all(out["same"]), out


# -- refusing what cannot run ------------------------------------------------------------------------
@contextlib.contextmanager
def _cpu_backend_replaced(backend: cpu_backend.CpuBackend):
    original = dispatch._loaders["cpu"]
    register_backend("cpu", lambda: backend)
    try:
        yield
    finally:
        register_backend("cpu", original)


def test_a_missing_library_makes_auto_warn_once_and_explicit_cpu_raise(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    monkeypatch.setattr(dispatch, "_warned", set())
    backend = cpu_backend.CpuBackend(library_dir=tmp_path / "empty")
    reason = backend.availability(torch.device("cpu"))
    assert reason is not None and "not built" in reason and "build_ext --inplace" in reason
    x = torch.randn(64)
    with _cpu_backend_replaced(backend):
        with pytest.warns(RuntimeWarning, match="cannot run on cpu: the native CPU codec is not built") as record:
            assert mxcomm.encode(x, "mxfp4").backend == "torch"
        assert "falls back to 'torch'" in str(record[0].message)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert mxcomm.encode(x, "mxfp4").backend == "torch"  # warned once only
        with pytest.raises(BackendUnavailableError, match="not built"):
            mxcomm.encode(x, "mxfp4", backend="cpu")


@needs_native
def test_a_stale_library_is_refused(tmp_path) -> None:
    lib_dir, current, edited = tmp_path / "lib", tmp_path / "current", tmp_path / "edited"
    shutil.copytree(native_build.LIBRARY_DIR, lib_dir)
    for src in (current, edited):
        src.mkdir()
        shutil.copy(native_build.SOURCE_PATH, src)
        shutil.copy(native_build.HEADER_PATH, src)
    with open(edited / native_build.SOURCE_PATH.name, "a") as f:
        f.write("// edited after the build\n")
    # the same files elsewhere: accepted
    assert cpu_backend.CpuBackend(library_dir=lib_dir, source_dir=current).availability(torch.device("cpu")) is None
    reason = cpu_backend.CpuBackend(library_dir=lib_dir, source_dir=edited).availability(torch.device("cpu"))
    assert reason is not None and "stale" in reason and "pip install -e ." in reason
    with pytest.raises(cpu_backend.NativeCodecUnavailable, match="stale"):
        cpu_backend.CpuBackend(library_dir=lib_dir, source_dir=edited).encode_blocks(
            torch.zeros(1, 32), mxcomm.get_format("mxfp4"), None
        )


def test_the_isa_variable_is_checked(monkeypatch) -> None:
    monkeypatch.setenv(cpu_backend.ISA_ENV, "sse9")
    reason = cpu_backend.CpuBackend().availability(torch.device("cpu"))
    assert reason is not None and "MXCOMM_CPU_ISA='sse9'" in reason
    monkeypatch.setenv(cpu_backend.ISA_ENV, "avx2")
    monkeypatch.setattr(cpu_backend, "cpu_has_avx2_f16c", lambda: (False, "/proc/cpuinfo lacks avx2 (test)"))
    reason = cpu_backend.CpuBackend().availability(torch.device("cpu"))
    assert reason is not None and "cannot run the AVX2 build" in reason and "lacks avx2" in reason


def test_the_avx2_build_is_chosen_from_the_cpu_flags(monkeypatch) -> None:
    monkeypatch.delenv(cpu_backend.ISA_ENV, raising=False)
    monkeypatch.setattr(cpu_backend, "cpu_has_avx2_f16c", lambda: (True, "flags (test)"))
    assert cpu_backend.choose_isa() == ("avx2", "flags (test)", False)
    monkeypatch.setattr(cpu_backend, "cpu_has_avx2_f16c", lambda: (False, "no flags (test)"))
    assert cpu_backend.choose_isa() == ("baseline", "no flags (test)", False)
    monkeypatch.setenv(cpu_backend.ISA_ENV, "baseline")
    assert cpu_backend.choose_isa()[::2] == ("baseline", True)


# -- no compiler at run time -------------------------------------------------------------------------
@needs_native
def test_import_and_encode_run_no_compiler(tmp_path) -> None:
    """With compilers that only leave a mark on PATH and in $CXX, importing mxcomm, encoding and decoding
    with every backend choice and the CLI's roundtrip start no process at all (audit hook)."""
    fake_bin, marker = tmp_path / "bin", tmp_path / "compiler-ran"
    fake_bin.mkdir()
    for name in ("g++", "c++", "clang++", "gcc", "cc", "clang"):
        script = fake_bin / name
        script.write_text(f"#!/bin/sh\necho \"$0 $*\" >> {marker}\nexit 1\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    result = _run_python(
        """
        import runpy, sys
        spawned = []
        sys.addaudithook(lambda event, args: spawned.append(event) if event in (
            "subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.spawn", "os.fork") else None)
        import torch, mxcomm
        x = torch.randn(8, 64)
        for backend in ("auto", "cpu"):
            p = mxcomm.encode(x, "mxfp4", backend=backend)
            assert p.backend == "cpu", p.backend
            mxcomm.decode(p, backend=backend)
        sys.argv = ["mxcomm", "roundtrip", "--formats", "mxfp4", "--tokens", "8", "--hidden", "64"]
        try:
            runpy.run_module("mxcomm.cli.main", run_name="__main__")
        except SystemExit as exc:
            assert not exc.code, exc.code
        print("SPAWNED", spawned)
        """,
        env={"PATH": f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}", "CXX": str(fake_bin / "g++"),
             "CC": str(fake_bin / "gcc")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not marker.exists(), marker.read_text()
    assert "SPAWNED []" in result.stdout, result.stdout[-2000:]
