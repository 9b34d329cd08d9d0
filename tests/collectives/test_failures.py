"""A rank that dies, stalls or leaves mid-call: every survivor raises an mxcomm error in time, nothing hangs.

Each scenario (tests/collectives/_faults.py) is three fresh gloo ranks with a
3 s group timeout; the victim exits, stalls or raises out of the call just
before posting one phase's exchange of one collective (sync or async). The
survivors' records are checked here: the error type, the phase, the
collective, the chained backend error, the time to the error (the group
timeout plus a margin for a loaded CI machine -- the point is "no hang", a
hang would be killed at the scenario deadline and reported) and a
``destroy_process_group`` that returns.
"""

from __future__ import annotations

import pytest

from tests.collectives._faults import ASYNC, GROUP_TIMEOUT_S, PHASES, run_fault_scenarios

pytestmark = pytest.mark.multiprocess

#: Slack over the group timeout for the time to the error (process scheduling on a loaded machine).
MARGIN_S = GROUP_TIMEOUT_S

_COLLECTIVE = {"none": "all_reduce", "allgather": "all_reduce", "two_shot": "all_reduce",
               "all_gather_into_tensor": "all_gather", "reduce_scatter_tensor": "reduce_scatter"}


@pytest.fixture(scope="module")
def faults() -> dict[str, dict]:
    return run_fault_scenarios()


def _survivors(entry: dict) -> list[tuple[int, dict]]:
    victim = entry["scenario"]["victim"]
    return [(int(r), res) for r, res in sorted(entry["ranks"].items()) if int(r) != victim]


def test_every_collective_and_phase_is_covered(faults):
    for mode in ("exit", "stall"):
        for kind, phases in PHASES.items():
            for phase in phases:
                assert f"{mode}:{kind}:{phase}" in faults
        for kind, phases in ASYNC.items():
            for phase in phases:
                assert f"{mode}:{kind}:async:{phase}" in faults
    assert {e["scenario"]["victim"] for e in faults.values()} == {0, 1, 2}


def test_nothing_hangs_and_every_process_exits_cleanly(faults):
    for name, entry in faults.items():
        s = entry["scenario"]
        expected_victim_exit = {"exit": 17, "stall": "killed", "leave": 0}[s["mode"]]
        assert entry["ranks"][str(s["victim"])]["exit_code"] == expected_victim_exit, name
        for r, res in _survivors(entry):
            assert res["exit_code"] == 0, f"{name}: rank {r} {res}"
            # the group is unusable after the failure, but destroying it returns promptly
            assert res["destroy_s"] < GROUP_TIMEOUT_S + MARGIN_S, f"{name}: rank {r} {res}"


def test_every_survivor_raises_a_collective_aborted_error_naming_the_phase(faults):
    for name, entry in faults.items():
        s = entry["scenario"]
        for r, res in _survivors(entry):
            err = res["error"]
            assert err is not None, f"{name}: rank {r} returned normally"
            assert "CollectiveAbortedError" in err["bases"] and "MxcommError" in err["bases"], f"{name}: {err}"
            assert "RuntimeError" in err["bases"]
            if s["mode"] == "stall":  # a stalled peer is a timeout; a dead one may be either
                assert err["type"] == "CollectiveTimeoutError", f"{name}: rank {r} {err}"
            if s["mode"] == "stall":
                assert err["phase"] == s["phase"], f"{name}: rank {r} {err}"
            else:
                # A dead peer also breaks its exchanges still in flight: a survivor may fail in an
                # earlier phase it had not finished yet (the victim lets them drain first, so rarely).
                phases = PHASES[s["kind"]]
                assert err["phase"] in phases[: phases.index(s["phase"]) + 1], f"{name}: rank {r} {err}"
            outlier_call = s["kind"] == "with_outliers" and s["phase"] != "payload"
            collective = "all_reduce_with_outliers" if outlier_call else _COLLECTIVE.get(s["kind"], "all_reduce")
            assert err["collective"] == collective, f"{name}: {err}"
            assert err["async_wait"] is s["async_op"], f"{name}: {err}"
            assert err["timeout_s"] == GROUP_TIMEOUT_S
            assert err["cause"] is not None, f"{name}: the backend error is not chained"
            exchange = err["phase"] if err["phase"].endswith("exchange") else f"{err['phase']} exchange"
            assert f"the {exchange} " in err["message"] and f"{GROUP_TIMEOUT_S:g} s" in err["message"]
            assert "unusable" in err["message"]


def test_time_to_error_is_within_the_group_timeout(faults):
    times = {}
    for name, entry in faults.items():
        for r, res in _survivors(entry):
            times[(name, r)] = res["elapsed_s"]
            assert res["elapsed_s"] < GROUP_TIMEOUT_S + MARGIN_S, f"{name}: rank {r} took {res['elapsed_s']:.2f} s"
    # a dead peer is noticed at once, not at the timeout
    exits = [t for (name, _), t in times.items() if name.startswith("exit:") and ":async:" not in name]
    assert sorted(exits)[len(exits) // 2] < GROUP_TIMEOUT_S / 2


def test_async_calls_return_a_handle_before_failing_in_wait(faults):
    for name, entry in faults.items():
        if not entry["scenario"]["async_op"]:
            continue
        for r, res in _survivors(entry):
            # the descriptor exchange had completed: the call itself returned; wait() raised
            assert res["returned_s"] < GROUP_TIMEOUT_S, f"{name}: rank {r} {res}"
            assert res["error"]["async_wait"] is True and "async handle" in res["error"]["message"]


def test_a_rank_leaving_the_call_raises_its_own_error_only(faults):
    for entry in faults.values():
        if entry["scenario"]["mode"] != "leave":
            continue
        victim = entry["ranks"][str(entry["scenario"]["victim"])]
        assert victim["error"]["type"] == "KeyboardInterrupt"
