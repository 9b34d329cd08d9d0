"""Comparing a codec backend with the torch reference at atol=0, and the inputs that do it.

A backend conforms when, for every input, its payload (codes | scales | tensor scale) has exactly
the reference's bytes and its decoded tensors are the reference's bit for bit, except that any NaN
equals any NaN (NaN payload bits are not part of the contract; signed zeros are). Used by the
conformance suite (test_conformance.py) and the backend-specific test files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

import mxcomm
from mxcomm.kernels import resolve_backend
from tests.kernels.test_reference_properties import make_values

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
REFERENCE = "torch"
_INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def backend_device(name: str) -> torch.device:
    """Where backend ``name``'s tests put their tensors: CUDA for Triton when there is a GPU, else CPU
    (Triton then runs in its interpreter)."""
    return torch.device("cuda" if name == "triton" and torch.cuda.is_available() else "cpu")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def first_diff(a: torch.Tensor, b: torch.Tensor, what: str = "entries") -> str:
    """Where two integer tensors first differ (for assertion messages)."""
    a, b = a.reshape(-1), b.reshape(-1)
    if a.shape != b.shape:
        return f"sizes differ: {a.numel()} vs {b.numel()} {what}"
    idx = (a != b).nonzero().flatten()
    if not idx.numel():
        return "equal"
    i = int(idx[0])
    return f"{idx.numel()} of {a.numel()} {what} differ; first at {i}: got {int(a[i])} vs reference {int(b[i])}"


def assert_same_payload(got: mxcomm.Packed, want: mxcomm.Packed) -> None:
    """Every payload byte equal: codes, scales (NaN scales included), tensor scale."""
    a, b = got.payload().cpu(), want.payload().cpu()
    assert got.format == want.format and tuple(got.shape) == tuple(want.shape) and got.axis == want.axis
    assert torch.equal(a, b), first_diff(a, b, "payload bytes") + f" (codes are bytes 0..{want.codes.numel() - 1})"


def assert_same_values(got: torch.Tensor, want: torch.Tensor) -> None:
    """Bit for bit (+0 != -0), where any NaN equals any NaN."""
    got, want = got.cpu(), want.cpu()
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    ints = _INT_VIEW[want.dtype]
    same = (got.contiguous().view(ints) == want.contiguous().view(ints)) | (got.isnan() & want.isnan())
    if not bool(same.all()):
        i = int((~same).reshape(-1).nonzero()[0])
        g, w = got.reshape(-1)[i].item(), want.reshape(-1)[i].item()
        raise AssertionError(f"{int((~same).sum())} of {same.numel()} values differ; first at flat {i}: "
                             f"got {g!r} vs reference {w!r}")


def to_device(p: mxcomm.Packed, device: torch.device) -> mxcomm.Packed:
    """``p`` with its payload on ``device`` (the same object when it is already there)."""
    if p.device == device:
        return p
    return mxcomm.Packed.from_payload(p.payload().to(device), p.format, p.shape, p.dtype, p.axis)


@dataclass(frozen=True)
class Codec:
    """One backend under test, on its device, with the comparisons against the reference."""

    name: str
    device: torch.device

    def __str__(self) -> str:
        return self.name

    @property
    def backend(self):
        return resolve_backend(self.name, self.device)

    def encode(self, x: torch.Tensor, fmt, **options) -> mxcomm.Packed:
        return mxcomm.encode(x.to(self.device), fmt, backend=self.name, **options)

    def check_encode(self, x: torch.Tensor, fmt, *, axis: int = -1, seed: int = 0, **options) -> mxcomm.Packed:
        """Encode with this backend and the reference (same generator seed), compare every payload
        byte, and return the reference's encoding."""
        got = self.encode(x, fmt, axis=axis, generator=gen(seed), **options)
        want = mxcomm.encode(x.cpu(), fmt, axis=axis, backend=REFERENCE, generator=gen(seed), **options)
        assert got.backend == self.name
        assert_same_payload(got, want)
        assert got.clipped_blocks == want.clipped_blocks, (got.clipped_blocks, want.clipped_blocks)
        return want

    def check_decode(self, p: mxcomm.Packed, dtypes=(None,)) -> None:
        """Decode ``p`` with this backend and the reference, in each dtype (None: p's own)."""
        for dtype in dtypes:
            got = mxcomm.decode(to_device(p, self.device), dtype=dtype, backend=self.name)
            assert_same_values(got, mxcomm.decode(to_device(p, torch.device("cpu")), dtype=dtype, backend=REFERENCE))

    def check_decode_sum(self, parts: list[mxcomm.Packed], dtypes=(None,)) -> None:
        cpu = torch.device("cpu")
        for dtype in dtypes:
            got = mxcomm.decode_sum([to_device(p, self.device) for p in parts], dtype=dtype, backend=self.name)
            want = mxcomm.decode_sum([to_device(p, cpu) for p in parts], dtype=dtype, backend=REFERENCE)
            assert_same_values(got, want)

    def check(self, x: torch.Tensor, fmt, *, dtypes=DTYPES, **options) -> mxcomm.Packed:
        """Encode (compared), then decode (compared) in every dtype of ``dtypes``."""
        want = self.check_encode(x, fmt, **options)
        self.check_decode(want, dtypes)
        return want


def rotated(name: str | mxcomm.BlockFormat, seed: int = 1234, **options) -> mxcomm.BlockFormat:
    """Format ``name`` with a Hadamard rotation of seed ``seed`` (and other ``options``)."""
    return mxcomm.get_format(name).with_options(rotation_seed=seed, **options)


def mixed_input(shape: Sequence[int], dtype: torch.dtype, seed: int, *, specials: bool = True,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Gaussian rows at very different magnitudes; with ``specials`` also NaN, +-Inf, zeros, -0 and
    subnormals at random positions (tensors of at least 16 elements)."""
    shape = tuple(shape)
    g = gen(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if x.numel() == 0:
        return x.to(dtype).to(device)
    rows = x.reshape(-1, shape[-1]) if len(shape) else x.reshape(1, 1)
    lo, hi = (-14, 10) if dtype == torch.float16 else (-30, 30)  # keep fp16 rows mostly finite
    exps = torch.randint(lo, hi, (rows.shape[0], 1), generator=g).to(torch.float64)
    rows.mul_(torch.exp2(exps))
    flat = rows.reshape(-1)
    n = flat.numel()
    if specials and n >= 16:
        picks = torch.randperm(n, generator=g)[:12]
        tiny = {torch.float32: 2.0**-140, torch.bfloat16: 2.0**-130, torch.float16: 2.0**-20}[dtype]
        values = [math.nan, math.inf, -math.inf, 0.0, -0.0, tiny, -tiny, 3 * tiny, 2.0**-127, 1.0, -2.5, 1e-3]
        for p, v in zip(picks.tolist(), values):
            flat[p] = v
    return x.to(dtype).to(device)


def awkward(shape: tuple[int, int], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Outlier-heavy activations with NaN, +-inf, signed zeros, the dtype's max and subnormals
    (rows 0-4 of a row of at least 64 elements), the rest untouched."""
    x = make_values("outliers", shape, 0, seed).to(dtype)
    rows, length = shape
    if rows >= 5 and length >= 64:
        info = torch.finfo(dtype)
        x[0, 3] = math.nan
        x[1, length - 1] = math.inf  # in the last (maybe ragged) block
        x[2, 40] = -math.inf
        x[3, :32] = 0.0
        x[3, 33:64:2] = -0.0
        x[4, 10] = info.max
        x[4, 12] = -info.max
        x[4, 50:60] = info.tiny / 4  # subnormals
        x[4, 60:64] = -info.tiny * 3
    return x
