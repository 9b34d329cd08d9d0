"""Access to the microxcaling golden vectors (tests/data/golden, copied from shared/golden).

Each case maps to a mxcomm BlockFormat with the same element, block size and
rounding (microxcaling "even" = rne, "nearest" = away). ``expected_y`` is the
spec-exact target: microxcaling's output with the exact values substituted
where its float32 artefacts differ (see tests/data/golden/README.md).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from mxcomm import BlockFormat, FloatElement, IntElement

GOLDEN_PATH = Path(__file__).parent / "data" / "golden" / "mx_golden_v1.pt"
ROUNDING = {"even": "rne", "nearest": "away"}


@functools.lru_cache(maxsize=1)
def load() -> dict[str, Any]:
    return torch.load(GOLDEN_PATH, weights_only=True)


def element_for(name: str) -> FloatElement | IntElement:
    info = load()["meta"]["formats"][name]
    width = int(info["mbits_incl_sign_and_implicit"])
    if name.startswith("int"):
        return IntElement(width)
    if name == "fp8_e4m3":
        return FloatElement(4, 3, nan="all_ones")
    if name == "fp8_e5m2":
        return FloatElement(5, 2, inf=True, nan="ieee")
    return FloatElement(int(info["ebits"]), width - 2)


def format_for(case: dict[str, Any]) -> BlockFormat:
    return BlockFormat(
        f"golden_{case['elem_format']}",
        element_for(case["elem_format"]),
        block_size=int(case["block_size"]),
        rounding=ROUNDING[case["round"]],
    )


def cases() -> list[dict[str, Any]]:
    return load()["cases"]


def case_id(case: dict[str, Any]) -> str:
    return f"{case['input']}-{case['elem_format']}-bs{case['block_size']}-{case['round']}-ax{case['axis']}"


def input_for(case: dict[str, Any]) -> torch.Tensor:
    return load()["inputs"][case["input"]]


def expected_y(case: dict[str, Any]) -> torch.Tensor:
    y = case["y"].clone().reshape(-1)
    y[case["mismatch_vs_exact_idx"]] = case["exact_y_at_mismatch"]
    return y.reshape(case["y"].shape)


def expected_shared_exp(case: dict[str, Any]) -> torch.Tensor:
    e = case["shared_exp"].clone().reshape(-1)
    e[case["shared_exp_mismatch_vs_exact_idx"]] = case["exact_shared_exp_at_mismatch"]
    return e.reshape(case["shared_exp"].shape)


def same_with_nan(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exact equality where NaN equals NaN (and nothing else differs, including inf)."""
    a, b = a.float(), b.float()
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())
