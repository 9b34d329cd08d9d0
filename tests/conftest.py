"""Shared pytest configuration: hypothesis profiles, Triton's interpreter without a GPU.

The ``ci`` profile (the default) keeps example counts moderate so the suite
fits CI's budget on two cores; ``HYPOTHESIS_PROFILE=thorough`` runs more.
"""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings

# Triton decides when it is imported whether it runs interpreted. Without a GPU the Triton tests run
# it under TRITON_INTERPRET=1 (tests/kernels/test_triton.py), and torch.compile imports Triton, so a
# compile test that runs first would fix it to compiled mode: set it before any test can import it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

settings.register_profile(
    "ci",
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("thorough", max_examples=500, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
