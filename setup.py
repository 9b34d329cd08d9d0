"""Build script: the project metadata is in pyproject.toml; this file adds the native CPU codec.

``pip install .``, ``pip install -e .`` and ``pip wheel .`` compile ``mxcomm/kernels/cpu_codec.cpp``
once into ``mxcomm/kernels/_native/`` (two plain-C-ABI shared libraries, AVX2 + F16C and baseline;
see ``mxcomm/kernels/native_build.py``). The build is optional: without a working C++ compiler the
install still succeeds, with a warning, and mxcomm runs the torch reference on CPU tensors instead.
In a source checkout, ``python setup.py build_ext --inplace`` (re)builds the libraries in place.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1: the wheel package's, if any
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:
        bdist_wheel = None

ROOT = Path(__file__).resolve().parent


def _native_build():
    # by path: importing the mxcomm package would import torch, which build isolation does not have
    spec = importlib.util.spec_from_file_location("_mxcomm_native_build", ROOT / "mxcomm/kernels/native_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


native = _native_build()
_ISA_OF = {f"{native.LIBRARY_PACKAGE}.{native.library_stem(isa)}": isa for isa in native.machine_isas()}


class BuildNativeCodec(build_ext):
    """Builds the codec's shared libraries (not Python extension modules) with native_build."""

    def get_ext_filename(self, fullname: str) -> str:
        return os.path.join(*fullname.split(".")) + ".so"  # a plain library name, no Python ABI tag

    def build_extensions(self) -> None:
        targets = {_ISA_OF[ext.name]: Path(self.get_ext_fullpath(ext.name)) for ext in self.extensions}
        for isa, result in native.build_libraries(targets).items():
            if isinstance(result, native.BuildError):
                print(
                    f"WARNING: mxcomm's native CPU codec ({isa}) was not built: {result}\n"
                    "WARNING: mxcomm works without it (backend='auto' falls back to the torch reference, "
                    "with a warning); install a C++ compiler and reinstall mxcomm for the fast CPU backend.",
                    file=sys.stderr,
                )
            else:
                print(f"built mxcomm's native CPU codec ({isa}) in {result:.1f} s: {targets[isa]}")

    def copy_extensions_to_source(self) -> None:
        self.mkpath(str(native.LIBRARY_DIR))  # the in-place destination (git does not keep it)
        super().copy_extensions_to_source()


commands: dict[str, type] = {"build_ext": BuildNativeCodec}
if bdist_wheel is not None:

    class WheelForAnyPython(bdist_wheel):
        """The libraries use no Python API: one wheel per platform serves every Python 3."""

        def get_tag(self) -> tuple[str, str, str]:
            python, abi, plat = super().get_tag()
            return (python, abi, plat) if self.root_is_pure else ("py3", "none", plat)

    commands["bdist_wheel"] = WheelForAnyPython

setup(
    ext_modules=[Extension(name, sources=[], optional=True) for name in _ISA_OF],
    cmdclass=commands,
)
