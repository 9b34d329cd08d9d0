"""``auto`` learns the link and the codec from its own calls: three gloo ranks, injected timings.

The decisions come from an emulated link (tests/collectives/_learning_scenarios.py),
so they are asserted exactly; what the real clock measures is only checked to
be the same on every rank.
"""

from __future__ import annotations

import pytest

from tests.collectives._harness import run_world
from tests.collectives._learning_scenarios import learning_suite

pytestmark = pytest.mark.multiprocess

WORLD = 3


@pytest.fixture(scope="module")
def world() -> list[dict]:
    return run_world(learning_suite, WORLD)


def _agreed_calls(world: list[dict], key: str, field: str = "calls") -> list[dict]:
    """The scenario's calls, after checking that every rank ran the same algorithm and holds the same bytes."""
    first = world[0][key][field]
    for rank, res in enumerate(world[1:], start=1):
        assert [c["algorithm"] for c in res[key][field]] == [c["algorithm"] for c in first], f"{key}: rank {rank}"
        assert [c["explored"] for c in res[key][field]] == [c["explored"] for c in first], f"{key}: rank {rank}"
        assert [c["digest"] for c in res[key][field]] == [c["digest"] for c in first], f"{key}: rank {rank} bytes"
    return first


def _algorithms(calls: list[dict]) -> list[str]:
    return [c["algorithm"] for c in calls]


@pytest.mark.parametrize("key", ["slow_link_default_model", "fast_link_slow_model", "slow_to_fast", "fast_to_slow",
                                 "decode_after_prefill", "verify_false", "real_clock"])
def test_ranks_agree_on_every_call_and_hold_the_same_estimate(world, key):
    _agreed_calls(world, key, "unverified" if key == "verify_false" else "calls")
    assert len({res[key]["view"] for res in world}) == 1


def test_converges_to_compression_on_a_slow_link_from_the_default_model(world):
    algs = _algorithms(_agreed_calls(world, "slow_link_default_model"))
    assert algs[0] == "none"  # the default model believes in a 10 Gbit/s link
    assert set(algs[-20:]) == {"two_shot"}


def test_converges_to_none_on_a_fast_link_from_a_slow_link_model(world):
    algs = _algorithms(_agreed_calls(world, "fast_link_slow_model"))
    assert algs[0] != "none"
    assert set(algs[-20:]) == {"none"}


@pytest.mark.parametrize("key,before,after", [("slow_to_fast", "two_shot", "none"), ("fast_to_slow", "none", "two_shot")])
def test_adapts_when_the_link_changes(world, key, before, after):
    algs = _algorithms(_agreed_calls(world, key))
    assert algs[24] == before
    assert after in algs[25:40]  # within 15 calls of the change
    assert set(algs[-10:]) == {after}


def test_decode_steps_stay_uncompressed(world):
    calls = _agreed_calls(world, "decode_after_prefill")
    assert calls[19]["algorithm"] == "two_shot"
    assert {c["algorithm"] for c in calls[20:] if not c["explored"]} == {"none"}
    assert sum(c["explored"] for c in calls[20:]) <= 1


def test_exploration_is_bounded_per_size_class(world):
    for key in ("slow_link_default_model", "fast_link_slow_model", "slow_to_fast", "fast_to_slow"):
        calls = _agreed_calls(world, key)
        # explorations that are an algorithm's first run (a warm-up) are repeated once for free
        assert sum(c["free"] for c in calls) <= 3, key  # once per algorithm (and format)
        for i in range(1, len(calls) + 1):
            assert sum(c["explored"] and not c["free"] for c in calls[:i]) <= 1 + i // 16, key


def test_verify_false_learns_nothing_and_runs_the_estimate_plan(world):
    res = world[0]["verify_false"]
    assert all(r["verify_false"]["unchanged"] for r in world)
    algs = _algorithms(res["unverified"])
    assert set(algs) == {res["learned"][-1]["algorithm"]} == {"two_shot"}


def test_times_ride_on_the_next_collective_and_async_calls_are_not_measured(world):
    for res in world:
        m = res["mixed_ops"]
        assert (m["warmups"], m["calls"], m["dropped"]) == (1, 3, 0)
        assert (m["warmups_after_async"], m["calls_after_async"]) == (1, 3)


def test_real_clock_learns(world):
    assert world[0]["real_clock"]["learned"] > 0
