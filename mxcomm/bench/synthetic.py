"""Synthetic LLM-like activations: what a row-parallel layer's output looks like.

Real transformer activations are roughly Gaussian per token, with a per-token
gain that varies over orders of magnitude and a few *outlier channels* that are
consistently 10-100x larger than the rest (arXiv 2411.07942). That structure is
what makes block formats lose accuracy: one outlier sets its whole block's scale.
"""

from __future__ import annotations

import torch


def llm_activation(
    tokens: int = 512,
    hidden: int = 4096,
    *,
    outlier_channels: int = 8,
    outlier_gain: float = 30.0,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """A (tokens, hidden) activation with lognormal per-token gain and outlier channels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g)
    x *= torch.exp(0.5 * torch.randn(tokens, 1, generator=g))
    if outlier_channels:
        channels = torch.randperm(hidden, generator=g)[:outlier_channels]
        gains = outlier_gain * torch.exp(0.5 * torch.randn(outlier_channels, generator=g))
        x[:, channels] *= gains
    return x.to(dtype)
