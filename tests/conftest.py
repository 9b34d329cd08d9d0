"""Shared pytest configuration: hypothesis profiles (tests/profiles.py), required codec backends, Triton's
interpreter without a GPU.

Required backends
-----------------
A test that needs a codec backend says so with ``@pytest.mark.requires_backend(name)`` (or
``pytestmark``); the conformance suite attaches the mark to each backend parameter. When the backend
cannot run (no compiler, Triton missing, ...):

* locally the test is skipped, with the reason;
* when the backend is *required* it FAILS, with the reason. Required are the names in
  ``MXCOMM_REQUIRE_BACKENDS`` (comma-separated; ``.ci/run`` sets ``cpu,triton``), or, when that is
  unset and ``CI=true``, ``DEFAULT_REQUIRED``.

Required backends also make the ``auto`` fallback warning an error, so a test that meant a fast
backend cannot quietly compare the reference with itself; tests comparing ``auto`` with the
reference assert ``Packed.backend`` against the ``auto_backend`` fixture.

Triton runs on CPU tensors only in its interpreter, which must be switched on before Triton is
first imported: that happens here, before any test module loads.
"""

from __future__ import annotations

import os

import pytest
import torch

# Triton decides when it is imported whether it runs interpreted. Without a GPU the Triton tests run
# it under TRITON_INTERPRET=1, and torch.compile imports Triton, so a compile test that runs first
# would fix it to compiled mode: set it before any test can import it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tests import profiles  # noqa: E402,F401  (registers and loads the hypothesis profile)
from tests.kernels.exactness import backend_device  # noqa: E402

REQUIRE_ENV = "MXCOMM_REQUIRE_BACKENDS"
DEFAULT_REQUIRED = ("cpu", "triton")
# the candidates of backend="auto" for CPU tensors, best first (mxcomm.kernels.dispatch)
AUTO_CPU_CANDIDATES = ("cpu", "torch")


def required_backends() -> frozenset[str]:
    """The backends that must run here (see the module docstring)."""
    configured = os.environ.get(REQUIRE_ENV)
    if configured is not None:
        return frozenset(name.strip() for name in configured.split(",") if name.strip())
    if os.environ.get("CI", "").lower() == "true":
        return frozenset(DEFAULT_REQUIRED)
    return frozenset()


def backend_problem(name: str, device: torch.device | str | None = None) -> str | None:
    """None when backend ``name`` runs on ``device``, else the reason it does not."""
    from mxcomm.kernels import backend_status

    return backend_status(name, backend_device(name) if device is None else device)


def check_backend(name: str, device: torch.device | str | None = None) -> None:
    """Skip the running test (fail it, if ``name`` is required) when the backend cannot run."""
    reason = backend_problem(name, device)
    if reason is None:
        return
    message = f"codec backend {name!r} cannot run: {reason}"
    if name in required_backends():
        configured = os.environ.get(REQUIRE_ENV)
        why = f"{REQUIRE_ENV}={configured}" if configured is not None else "CI=true"
        pytest.fail(f"{message} (required here: {why})", pytrace=False)
    pytest.skip(message)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires_backend(name, device=None): the test needs codec backend `name`; skipped locally when it "
        "cannot run, failed when it is required (MXCOMM_REQUIRE_BACKENDS, CI=true)",
    )
    for name in sorted(required_backends()):
        # mxcomm.kernels.dispatch warns once when auto passes over a backend; for a required one
        # that is an error (the message's ':' is matched by '.': ':' separates filter fields)
        config.addinivalue_line("filterwarnings", f"error:mxcomm. backend '{name}' is not used:RuntimeWarning")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    # in the call phase, so that a required backend that cannot run is a test failure (not a setup error)
    for mark in item.iter_markers("requires_backend"):
        check_backend(*mark.args, **mark.kwargs)


@pytest.fixture
def auto_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The backend ``backend="auto"`` must pick for CPU tensors, worked out here from the dispatch
    rule (the first candidate that can run), not by asking the dispatch; MXCOMM_BACKEND is cleared.
    A required candidate is expected even when it cannot run: the test then fails with the reason."""
    from mxcomm.kernels import BACKEND_ENV

    monkeypatch.delenv(BACKEND_ENV, raising=False)
    for name in AUTO_CPU_CANDIDATES:
        if name == "torch" or backend_problem(name, "cpu") is None:
            return name
        if name in required_backends():
            request.node.add_marker(pytest.mark.requires_backend(name, "cpu"))  # fails it in the call phase
            return name
        # locally a candidate that cannot run is passed over, as auto does
    raise AssertionError("unreachable: the torch reference always runs")
