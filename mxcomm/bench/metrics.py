"""Error metrics of a quantized tensor against its reference.

Definitions (x = reference, y = approximation, both flattened, computed in float64):

* ``sqnr_db``: 10*log10(sum x_i^2 / sum (y_i - x_i)^2). +inf when y == x exactly;
  -inf when the error is non-zero and the reference is all zeros, or when the error
  is not finite (y holds inf/NaN where x is finite).
* ``max_abs_error``: max_i |y_i - x_i|.
* relative error of element i: r_i = |y_i - x_i| / |x_i|, defined on the elements with
  x_i != 0, so the denominator is never zero. A reference zero that is reproduced as
  zero carries no error and is left out; a reference zero decoded as non-zero has an
  infinite relative error (nothing finite describes it).
* ``max_relative_error``: max of r_i (0.0 when no element has x_i != 0 and y == x).
* ``mean_relative_error``: mean of r_i over the elements with x_i != 0 (0.0 when there
  are none and y == x); +inf whenever a reference zero was decoded as non-zero.
* ``zeroed_fraction``: the share of non-zero reference elements decoded as exactly
  zero. Each of them has r_i = 1, which is why block formats whose scale is set by an
  outlier show a max relative error of 1.0.
* ``rel_rms_error``: ||y - x||_2 / ||x||_2 = 10**(-sqnr_db / 20).

A NaN in the approximation counts as an infinite error (never as "no error"). The
reference must be finite: a non-finite reference raises ``FormatError``, as does a
shape mismatch. Everything is accumulated chunk by chunk, so a (8192, 4096) tensor
never needs more than a few tens of MiB of float64 temporaries.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from mxcomm.errors import FormatError

_CHUNK = 1 << 22  # elements per float64 chunk (32 MiB)


def _flat_pair(reference: torch.Tensor, approx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(reference, torch.Tensor) or not isinstance(approx, torch.Tensor):
        raise FormatError("metrics take two torch.Tensors")
    if reference.shape != approx.shape:
        raise FormatError(
            f"reference shape {tuple(reference.shape)} and approximation shape {tuple(approx.shape)} differ"
        )
    return reference.detach().reshape(-1), approx.detach().reshape(-1)


@dataclass(frozen=True)
class ErrorSummary:
    """All metrics of one (reference, approximation) pair; see the module docstring."""

    sqnr_db: float
    rel_rms_error: float
    max_abs_error: float
    max_rel_error: float
    mean_rel_error: float
    zeroed_fraction: float
    numel: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def error_summary(reference: torch.Tensor, approx: torch.Tensor) -> ErrorSummary:
    """Every metric of the module docstring in one pass over the data."""
    x_flat, y_flat = _flat_pair(reference, approx)
    signal = 0.0
    noise = 0.0
    max_abs = 0.0
    max_rel = 0.0
    rel_sum = 0.0
    nonzero = 0
    zeroed = 0
    invented = False  # a reference zero decoded as non-zero
    for start in range(0, x_flat.numel(), _CHUNK):
        x = x_flat[start : start + _CHUNK].to(torch.float64)
        y = y_flat[start : start + _CHUNK].to(torch.float64)
        if not bool(torch.isfinite(x).all()):
            raise FormatError("the reference tensor holds inf or NaN; metrics need a finite reference")
        err = (y - x).abs()
        err = torch.where(torch.isnan(err), torch.full_like(err, math.inf), err)
        signal += x.pow(2).sum().item()
        noise += err.pow(2).sum().item()
        if err.numel():
            max_abs = max(max_abs, err.max().item())
        is_nonzero = x != 0
        invented = invented or bool((err[~is_nonzero] != 0).any())
        rel = err[is_nonzero] / x[is_nonzero].abs()
        if rel.numel():
            max_rel = max(max_rel, rel.max().item())
            rel_sum += rel.sum().item()
        nonzero += int(is_nonzero.sum().item())
        zeroed += int((is_nonzero & (y == 0)).sum().item())
    if noise == 0.0:
        sqnr = math.inf
    elif signal == 0.0 or not math.isfinite(noise):
        sqnr = -math.inf
    else:
        sqnr = 10.0 * math.log10(signal / noise)
    if noise == 0.0:
        rel_rms = 0.0
    elif signal == 0.0:
        rel_rms = math.inf
    else:
        rel_rms = math.sqrt(noise / signal)
    if invented:
        max_rel = mean_rel = math.inf
    else:
        mean_rel = rel_sum / nonzero if nonzero else 0.0
    return ErrorSummary(
        sqnr_db=sqnr,
        rel_rms_error=rel_rms,
        max_abs_error=max_abs,
        max_rel_error=max_rel,
        mean_rel_error=mean_rel,
        zeroed_fraction=zeroed / nonzero if nonzero else 0.0,
        numel=x_flat.numel(),
    )


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10*log10(sum x^2 / sum (y - x)^2) in dB (see module docstring)."""
    return error_summary(reference, approx).sqnr_db


def max_abs_error(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """max_i |y_i - x_i| (0.0 for empty tensors)."""
    return error_summary(reference, approx).max_abs_error


def max_relative_error(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """max over x_i != 0 of |y_i - x_i| / |x_i| (+inf if a zero of x became non-zero)."""
    return error_summary(reference, approx).max_rel_error


def mean_relative_error(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """mean over x_i != 0 of |y_i - x_i| / |x_i| (+inf if a zero of x became non-zero)."""
    return error_summary(reference, approx).mean_rel_error


def zeroed_fraction(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Share of the non-zero elements of x that y holds as exact zeros."""
    return error_summary(reference, approx).zeroed_fraction
