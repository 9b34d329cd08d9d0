"""Shared pytest configuration: hypothesis profiles.

The ``ci`` profile (the default) keeps example counts moderate so the suite
fits CI's budget on two cores; ``HYPOTHESIS_PROFILE=thorough`` runs more.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("thorough", max_examples=500, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
