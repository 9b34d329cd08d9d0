"""Hypothesis profiles, and ``examples(n)`` for tests that set their own example count.

* ``ci`` (the default): derandomized, so every run (CI's included) tries the same examples and a
  failure reproduces; ``CI_EXAMPLES`` examples unless a test asks for another count.
* ``thorough`` (``HYPOTHESIS_PROFILE=thorough python -m pytest``): random exploration with
  ``THOROUGH_FACTOR`` times every count (at least ``THOROUGH_EXAMPLES``) -- for a long run before a
  release or after touching a kernel, not for CI.

A test whose count differs from the profile's (a slow test runs fewer, a core codec property more)
writes ``@examples(n)`` instead of ``@settings(max_examples=n)``: ``n`` is its count under ``ci``,
and the ``thorough`` profile scales it like every other count.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE_ENV = "HYPOTHESIS_PROFILE"
CI_EXAMPLES = 100
THOROUGH_EXAMPLES = 2000
THOROUGH_FACTOR = THOROUGH_EXAMPLES // CI_EXAMPLES
# the count of a core codec property (bit-exactness of a backend, the reference's bounds)
CORE_EXAMPLES = 200

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("ci", max_examples=CI_EXAMPLES, derandomize=True, **_COMMON)
settings.register_profile("thorough", max_examples=THOROUGH_EXAMPLES, **_COMMON)

PROFILE = os.environ.get(PROFILE_ENV, "ci")
settings.load_profile(PROFILE)


def example_count(n: int) -> int:
    """``n`` examples under ``ci``, scaled for the active profile."""
    return max(n * THOROUGH_FACTOR, THOROUGH_EXAMPLES) if PROFILE == "thorough" else n


def examples(n: int, **options: object) -> settings:
    """``settings(max_examples=...)`` that scales with the profile (see the module docstring)."""
    return settings(max_examples=example_count(n), **options)  # type: ignore[arg-type]
