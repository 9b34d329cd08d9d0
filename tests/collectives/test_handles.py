"""Async handles waited twice, out of order, differently per rank, or dropped; corrupted descriptors from a peer.

One 3-rank gloo job runs every scenario (``_rank_body``); the tests check the
returned dicts. Every scenario ends with the group still usable, so a
scenario that desynchronised the ranks would fail the next one (or hang until
the rank timeout of tests/collectives/_harness.py).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from mxcomm.collectives import all_gather_into_tensor, all_reduce, transport
from mxcomm.errors import CollectiveMismatchError
from tests.collectives._harness import run_world
from tests.collectives._scenarios import make_input

pytestmark = pytest.mark.multiprocess

WORLD = 3
FMT = "mxfp4_e2m1"


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def _sync(seed: int, rank: int, alg: str, numel: int = 3000) -> torch.Tensor:
    x = make_input(seed, rank, (numel,), torch.bfloat16)
    all_reduce(x, FMT, algorithm=alg, segment_elems=1024)
    return x


def _async(seed: int, rank: int, alg: str, numel: int = 3000):
    x = make_input(seed, rank, (numel,), torch.bfloat16)
    return x, all_reduce(x, FMT, algorithm=alg, segment_elems=1024, async_op=True)


def _handle_scenarios(rank: int) -> dict:
    res: dict = {}
    # out of order, and in a different order on every rank (waiting can post two-shot's second phase)
    calls = [(10, "two_shot"), (11, "two_shot"), (12, "allgather"), (13, "two_shot")]
    started = [_async(seed, rank, alg) for seed, alg in calls]
    order = [[3, 2, 1, 0], [0, 1, 2, 3], [1, 3, 0, 2]][rank]
    for i in order:
        started[i][1].wait()
    res["out_of_order"] = [_bits(x) for x, _ in started]
    res["out_of_order_sync"] = [_bits(_sync(seed, rank, alg)) for seed, alg in calls]

    # one rank waits before the next (synchronous) collective, the others after it
    x, h = _async(20, rank, "two_shot")
    if rank == 0:
        h.wait()
    y = make_input(21, rank, (500,), torch.bfloat16)
    all_reduce(y, FMT, algorithm="two_shot")
    if rank != 0:
        h.wait()
    res["wait_around_a_call"] = (_bits(x), _bits(y))
    y_sync = make_input(21, rank, (500,), torch.bfloat16)
    all_reduce(y_sync, FMT, algorithm="two_shot")
    res["wait_around_a_call_sync"] = (_bits(_sync(20, rank, "two_shot")), _bits(y_sync))

    # waiting twice: True, nothing recomputed or rewritten
    x, h = _async(30, rank, "two_shot")
    first = h.wait()
    snapshot = x.clone()
    x.zero_()  # a second wait() must not write the result again
    res["wait_twice"] = (first, h.wait(), h.is_completed(), bool((x == 0).all()), _bits(snapshot))
    res["wait_twice_sync"] = _bits(_sync(30, rank, "two_shot"))

    # a dropped handle warns; its output is written when the next collective is issued
    for alg in ("two_shot", "allgather"):
        x = make_input(40, rank, (3000,), torch.bfloat16)
        before = _bits(x)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            all_reduce(x, FMT, algorithm=alg, segment_elems=1024, async_op=True)  # handle dropped at once
        untouched = _bits(x) == before
        g_out = torch.empty(WORLD * 64)
        all_gather_into_tensor(g_out, torch.full((64,), float(rank)), FMT)  # the next collective
        res[f"dropped:{alg}"] = {
            "warnings": [(w.category.__name__, str(w.message)) for w in caught],
            "untouched_until_next_call": untouched, "out": _bits(x), "sync": _bits(_sync(40, rank, alg)),
            "next_call": g_out.tolist(),
        }

    # dropped on one rank only, waited on the others
    x, h = _async(50, rank, "two_shot")
    if rank == 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            del h
    y = make_input(51, rank, (700,), torch.bfloat16)
    all_reduce(y, FMT, algorithm="allgather")
    if rank != 1:
        h.wait()
    res["dropped_on_one_rank"] = (_bits(x), _bits(_sync(50, rank, "two_shot")))
    return res


# Corruptions of one rank's descriptor (offsets of handshake._STRUCT), applied just before it is sent.
def _put(offset: int, data: bytes):
    def corrupt(buf: torch.Tensor) -> None:
        buf[offset : offset + len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)

    return corrupt


def _garbage(buf: torch.Tensor) -> None:
    buf.copy_(torch.randint(0, 256, (buf.numel(),), dtype=torch.uint8, generator=torch.Generator().manual_seed(7)))


CORRUPTIONS = {  # name: (rank that corrupts, corruption)
    "magic": (1, _put(0, b"XXXX")),
    "version": (2, _put(4, b"\x63")),
    "op": (1, _put(5, b"\x09")),
    "requested_code": (2, _put(6, b"\xee")),
    "planned_code_rank0": (0, _put(7, b"\xee")),
    "planned_other_than_requested_rank0": (0, _put(7, b"\x01")),  # allgather where two_shot was requested
    "dtype_code": (1, _put(8, b"\xc8")),
    "flags": (2, _put(10, b"\xff\xff")),
    "fingerprint": (1, _put(12, b"\x00" * 8)),
    "huge_numel": (2, _put(20, b"\xff" * 8)),
    "shape_crc": (1, _put(28, b"\x01\x02\x03\x04")),
    "segment_zero_rank0": (0, _put(32, b"\x00" * 8)),
    "garbage": (2, _garbage),
    "garbage_rank0": (0, _garbage),
}


def _corruption_scenarios(rank: int) -> dict:
    res = {}
    for name, (bad, corrupt) in CORRUPTIONS.items():
        def hook(collective: str, phase: str, send: torch.Tensor, corrupt=corrupt) -> None:
            if phase == transport.DESCRIPTOR_PHASE:
                corrupt(send)

        x = make_input(60, rank, (4096,), torch.bfloat16)
        transport.before_post = hook if rank == bad else None
        try:
            all_reduce(x, FMT, algorithm="two_shot")
            error = None
        except Exception as e:  # noqa: BLE001 -- the test inspects what was raised
            error = (type(e).__name__, str(e))
        finally:
            transport.before_post = None
        after = make_input(61, rank, (256,), torch.bfloat16)
        all_reduce(after, FMT, algorithm="two_shot")  # the group still works
        res[f"corrupt:{name}"] = {"error": error, "after": _bits(after)}
    return res


def _rank_body(rank: int, world: int) -> dict:
    return {**_handle_scenarios(rank), **_corruption_scenarios(rank)}


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run_world(_rank_body, WORLD)


def test_handles_waited_in_any_order_on_any_rank_give_the_synchronous_result(ranks):
    for res in ranks:
        assert res["out_of_order"] == res["out_of_order_sync"]
        assert res["wait_around_a_call"] == res["wait_around_a_call_sync"]
    assert len({tuple(res["out_of_order"]) for res in ranks}) == 1  # and bitwise identical across ranks


def test_waiting_twice_returns_true_and_changes_nothing(ranks):
    for res in ranks:
        first, second, completed, still_zero, out = res["wait_twice"]
        assert first is True and second is True and completed and still_zero
        assert out == res["wait_twice_sync"]


@pytest.mark.parametrize("alg", ["two_shot", "allgather"])
def test_a_dropped_handle_warns_and_is_completed_by_the_next_collective(ranks, alg):
    for res in ranks:
        e = res[f"dropped:{alg}"]
        assert [c for c, _ in e["warnings"]] == ["ResourceWarning"]
        assert "dropped without wait()" in e["warnings"][0][1]
        assert e["untouched_until_next_call"]
        assert e["out"] == e["sync"]
        assert e["next_call"] == [float(r) for r in range(WORLD) for _ in range(64)]


def test_a_handle_dropped_on_one_rank_only(ranks):
    for res in ranks:
        out, sync = res["dropped_on_one_rank"]
        assert out == sync


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_a_corrupted_descriptor_raises_a_mismatch_on_every_rank(ranks, name):
    for r, res in enumerate(ranks):
        e = res[f"corrupt:{name}"]
        assert e["error"] is not None and e["error"][0] == CollectiveMismatchError.__name__, f"rank {r}: {e}"
    # every rank reached the same verdict, and the group still works afterwards
    assert len({res[f"corrupt:{name}"]["error"][1] for res in ranks}) == 1
    assert len({res[f"corrupt:{name}"]["after"] for res in ranks}) == 1
