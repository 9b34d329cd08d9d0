"""Choosing one setting per module: a multiple-choice knapsack over wire bits and predicted loss.

Every module ``m`` has options ``c``, each with the bytes one rank sends per
forward pass (``bytes``), the elements it moves (``sends``, see
:func:`mxcomm.bench.wire_accounting.reduction_wire`) and a predicted loss
increase (``loss``, e.g. the KL divergence measured when only that module is
compressed that way). The wire bits per element of a choice are
``8 sum(bytes) / sum(sends)``, the accounting of ``track_comm``. Two problems:

* :func:`min_loss` -- the least summed loss with at most ``max_bits`` wire bits per
  element. The ratio constraint is linear: ``sum(8 bytes - max_bits sends) <= 0``.
  Solved exactly by dynamic programming over that excess, discretised *upwards*
  (each option's excess rounded up to a multiple of ``resolution`` bits x the
  module's sends), so the returned choice always meets the budget;
* :func:`min_bits` -- the fewest wire bits with a summed loss of at most
  ``max_loss``: bisection over ``max_bits`` on :func:`min_loss` (the least loss
  only falls as the bit budget grows).

Pure functions on plain numbers; used by :mod:`mxcomm.bench.tuning`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mxcomm.bench.smollm2 import EvalSetupError

#: Most DP states (the discretised budget); a finer resolution than this allows is coarsened.
MAX_STATES = 400_000


@dataclass(frozen=True)
class Option:
    """One way to run one module's reduction: its wire cost and its predicted loss increase."""

    bytes: float
    sends: float
    loss: float

    @property
    def bits(self) -> float:
        return 8 * self.bytes / self.sends


def wire_bits(options: Sequence[Sequence[Option]], choice: Sequence[int]) -> float:
    """Wire bits per element of ``choice`` (index of the chosen option per module)."""
    picked = [opts[i] for opts, i in zip(options, choice)]
    return 8 * sum(o.bytes for o in picked) / sum(o.sends for o in picked)


def total_loss(options: Sequence[Sequence[Option]], choice: Sequence[int]) -> float:
    return sum(opts[i].loss for opts, i in zip(options, choice))


def _check(options: Sequence[Sequence[Option]]) -> None:
    if not options or any(not opts for opts in options):
        raise EvalSetupError("allocation needs at least one option for every module")
    for opts in options:
        for o in opts:
            if not (o.sends > 0 and o.bytes >= 0 and math.isfinite(o.loss) and o.loss >= 0):
                raise EvalSetupError(f"an option needs bytes >= 0, sends > 0 and a finite loss >= 0, got {o}")


def min_loss(options: Sequence[Sequence[Option]], max_bits: float, resolution: float = 1 / 256) -> list[int] | None:
    """The choice of least summed loss whose wire bits per element are at most ``max_bits``.

    Args:
        options: Per module, its options.
        max_bits: The budget in wire bits per element.
        resolution: Discretisation of the budget in bits per element (coarsened if the DP
            would need more than :data:`MAX_STATES` states); the rounding is conservative.

    Returns:
        The index of the chosen option per module, or None when even the cheapest options
        exceed the budget.
    """
    _check(options)
    unit = resolution * min(o.sends for opts in options for o in opts)
    excess = [np.array([math.ceil(round((8 * o.bytes - max_bits * o.sends) / unit, 9)) for o in opts], dtype=np.int64)
              for opts in options]
    low = [int(e.min()) for e in excess]
    capacity = -sum(low)
    if capacity < 0:
        return None
    if capacity > MAX_STATES:
        return min_loss(options, max_bits, resolution * (capacity / MAX_STATES) * 1.01)
    inf = math.inf
    best = np.zeros(capacity + 1)  # best[j]: least loss of the modules so far using at most j (shifted) units
    picks = []
    for opts, e, lo in zip(options, excess, low):
        shifted = e - lo
        new = np.full(capacity + 1, inf)
        pick = np.zeros(capacity + 1, dtype=np.int32)
        for i, (o, w) in enumerate(zip(opts, shifted)):
            if w > capacity:
                continue
            cand = np.full(capacity + 1, inf)
            cand[w:] = best[: capacity + 1 - w] + o.loss
            better = cand < new
            new[better], pick[better] = cand[better], i
        best = new
        picks.append(pick)
    if not math.isfinite(best[capacity]):
        return None
    choice, j = [], capacity
    for e, lo, pick in zip(reversed(excess), reversed(low), reversed(picks)):
        i = int(pick[j])
        choice.append(i)
        j -= int(e[i] - lo)
    return choice[::-1]


def min_bits(options: Sequence[Sequence[Option]], max_loss: float, resolution: float = 1 / 256,
             iterations: int = 40) -> list[int] | None:
    """The choice of fewest wire bits per element whose summed loss is at most ``max_loss``.

    Returns:
        The index of the chosen option per module, or None when even the least-loss choice
        exceeds ``max_loss``.
    """
    _check(options)
    low = min(o.bits for opts in options for o in opts)
    high = max(o.bits for opts in options for o in opts)
    best = min_loss(options, high, resolution)
    if best is None or total_loss(options, best) > max_loss:
        return None
    for _ in range(iterations):
        if high - low <= resolution / 4:
            break
        mid = (low + high) / 2
        found = min_loss(options, mid, resolution)
        if found is not None and total_loss(options, found) <= max_loss:
            high, best = mid, found
        else:
            low = mid
    return best
