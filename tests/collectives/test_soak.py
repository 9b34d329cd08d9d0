"""A short soak (tests/collectives/soak.py) in CI: random collectives, identical on every rank, within bounds.

The long one runs on demand: ``PYTHONPATH=. python benchmarks/soak.py --calls 10000``.
"""

from __future__ import annotations

import pytest

from tests.collectives.soak import KINDS, check, run_soak

pytestmark = pytest.mark.multiprocess


def test_short_soak_is_bitwise_identical_within_bounds_and_leaks_nothing():
    report = run_soak(calls=150, world=3, seed=1)
    assert check(report) == []
    assert sum(report.by_kind.values()) == 150 and set(report.by_kind) == set(KINDS)
