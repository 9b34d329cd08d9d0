"""The allocator (mxcomm.bench.allocation): exact against brute force on small problems, budgets always met."""

from __future__ import annotations

import itertools
import random

import pytest

from mxcomm.bench.allocation import Option, min_bits, min_loss, total_loss, wire_bits
from mxcomm.bench.smollm2 import EvalSetupError


def _problem(seed: int, modules: int = 5, per_module: int = 4) -> list[list[Option]]:
    """Random options; module sends differ (one-shot 2 x numel, two-shot 4/3 x numel)."""
    rng = random.Random(seed)
    out = []
    for _ in range(modules):
        opts = [Option(bytes=16 / 8 * 2 * 1000 + 176, sends=2000, loss=0.0)]  # uncompressed: 16 bits, no loss
        for _ in range(per_module - 1):
            sends = rng.choice([2000, 4000 / 3])
            bits = rng.uniform(3, 9)
            opts.append(Option(bytes=bits * sends / 8, sends=sends, loss=rng.uniform(0, 1) / bits ** 2))
        out.append(opts)
    return out


def _brute(options: list[list[Option]], max_bits: float) -> float:
    best = float("inf")
    for choice in itertools.product(*(range(len(o)) for o in options)):
        if wire_bits(options, choice) <= max_bits:
            best = min(best, total_loss(options, choice))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_min_loss_meets_the_budget_and_is_optimal(seed):
    options = _problem(seed)
    resolution = 1 / 512
    for max_bits in (4.0, 5.0, 6.5):
        choice = min_loss(options, max_bits, resolution)
        best = _brute(options, max_bits)
        if choice is None:
            # only when nothing fits, or the conservative rounding cost the last fraction of a bit
            assert _brute(options, max_bits - 0.05) == float("inf")
            continue
        assert wire_bits(options, choice) <= max_bits
        # optimal up to the rounding of each module's excess (< resolution bits per element each)
        assert total_loss(options, choice) <= _brute(options, max_bits - len(options) * resolution) + 1e-12
        assert total_loss(options, choice) >= best - 1e-12


@pytest.mark.parametrize("seed", range(6))
def test_min_bits_meets_the_loss_budget_with_fewest_bits(seed):
    options = _problem(seed)
    losses = sorted(total_loss(options, c) for c in itertools.product(*(range(len(o)) for o in options)))
    max_loss = losses[len(losses) // 3]
    choice = min_bits(options, max_loss)
    assert choice is not None and total_loss(options, choice) <= max_loss
    fewest = min(wire_bits(options, c) for c in itertools.product(*(range(len(o)) for o in options))
                 if total_loss(options, c) <= max_loss)
    assert wire_bits(options, choice) <= fewest + 0.02


def test_impossible_budgets_return_none_and_bad_options_raise():
    options = _problem(0)
    assert min_loss(options, 1.0) is None  # below every option's bits
    assert min_bits(options, -1.0) is None
    with pytest.raises(EvalSetupError):
        min_loss([[Option(1, 0, 0.0)]], 4.0)
    with pytest.raises(EvalSetupError):
        min_loss([[]], 4.0)
