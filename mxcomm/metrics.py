"""Error metrics of a quantized tensor against its reference."""

from __future__ import annotations

import math

import torch


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10*log10(sum x^2 / sum (x - y)^2), in float64.

    +inf when the approximation is exact; -inf/NaN never arise from finite input
    except for an all-zero reference with a non-zero error (-inf).
    """
    x = reference.to(torch.float64)
    err = (approx.to(torch.float64) - x).pow(2).sum().item()
    sig = x.pow(2).sum().item()
    if err == 0.0:
        return math.inf
    if sig == 0.0:
        return -math.inf
    return 10.0 * math.log10(sig / err)


def max_abs_error(reference: torch.Tensor, approx: torch.Tensor) -> float:
    if reference.numel() == 0:
        return 0.0
    return (approx.to(torch.float64) - reference.to(torch.float64)).abs().max().item()
