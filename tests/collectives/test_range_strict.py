"""The range rule in the collectives (docs/semantics.md, "Range"; docs/reliability.md, "Numeric range"):
3 gloo ranks. ``strict=True`` raises ``mxcomm.RangeError`` on every rank when any rank's encodes
clip (all_reduce one-shot and two-shot, all_gather_into_tensor, reduce_scatter_tensor, the list
forms, async handles), leaving the outputs untouched; without ``strict`` the call completes and
``CommRecord.clipped_blocks`` counts this rank's clipped blocks; built-in formats at magnitudes
beyond a float scale's range reduce as accurately as at 1."""

from __future__ import annotations

import pytest
import torch

import mxcomm
from mxcomm.formats import BlockFormat, IntElement
from tests.collectives._harness import run_world
from tests.collectives._scenarios import _error, _tracked

pytestmark = pytest.mark.multiprocess

WORLD = 3
# fp16 block scales without headroom for 12 decades in one tensor: some blocks clip whatever S is
NARROW = BlockFormat("narrow_fp16_int4", IntElement(4), block_size=16, scale="fp16")
ALGORITHMS = ("allgather", "two_shot")


def _input(rank: int, clipping_rank: int, numel: int = 192) -> torch.Tensor:
    g = torch.Generator().manual_seed(10 + rank)
    x = torch.randn(numel, generator=g)
    if rank == clipping_rank:
        x[:16] *= 1e-12  # one block 12 decades below the rest
    return x


def _attempt(fn, outputs: list[torch.Tensor]) -> dict:
    before = [o.clone() for o in outputs]
    try:
        with mxcomm.track_comm() as stats:
            handle = fn()
            if handle is not None:
                handle.wait()
        result = {"ok": True, "records": [r.as_dict() for r in stats.records]}
    except Exception as e:  # noqa: BLE001 - the test inspects what was raised
        result = _error(e)
        if isinstance(e, mxcomm.RangeError):
            result["clipped_by_rank"] = list(e.clipped_by_rank)
            result["clipped_blocks"] = e.clipped_blocks
    result["untouched"] = all(torch.equal(a, b) for a, b in zip(before, outputs))
    return result


def body(rank: int, n: int) -> dict:
    out: dict = {"local": {}}
    for alg in ALGORITHMS:
        for strict in (True, False):
            for async_op in ((False, True) if strict else (False,)):
                t = _input(rank, clipping_rank=2)
                out["local"][alg] = mxcomm.encode(t, NARROW).clipped_blocks if alg == "allgather" else None
                out[f"all_reduce {alg} strict={strict} async={async_op}"] = _attempt(
                    lambda t=t, a=alg, s=strict, ao=async_op: mxcomm.all_reduce(
                        t, NARROW, algorithm=a, strict=s, async_op=ao), [t])
    x = _input(rank, clipping_rank=1, numel=64)
    gathered = torch.zeros(n * 64)
    out["all_gather_into_tensor"] = _attempt(lambda: mxcomm.all_gather_into_tensor(gathered, x, NARROW, strict=True),
                                             [gathered])
    parts = [torch.zeros(64) for _ in range(n)]
    out["all_gather"] = _attempt(lambda: mxcomm.all_gather(parts, x, NARROW, strict=True), parts)
    big = _input(rank, clipping_rank=-1, numel=n * 64)
    if rank == 0:
        big[64:80] *= 1e-12  # in rank 1's chunk: rank 0 encodes it (its own chunk never is)
    reduced = torch.zeros(64)
    out["reduce_scatter_tensor"] = _attempt(
        lambda: mxcomm.reduce_scatter_tensor(reduced, big, NARROW, strict=True), [reduced])
    out["reduce_scatter"] = _attempt(
        lambda: mxcomm.reduce_scatter(reduced, list(big.chunk(n)), NARROW, strict=True), [reduced])
    # strict must agree: rank 0 asks for it, the others do not
    t = _input(rank, clipping_rank=-1)
    out["strict disagreement"] = _attempt(lambda: mxcomm.all_reduce(t, "int4_fp16", strict=rank == 0), [t])
    # a built-in format beyond its scale's range: the automatic tensor scale, nothing clips
    for m in (1.0, 1e6, 1e-20):
        for alg in ALGORITHMS:
            t = (_input(rank, clipping_rank=-1) * m).to(torch.bfloat16)
            want = sum((_input(r, clipping_rank=-1) * m).to(torch.bfloat16).double() for r in range(n))
            _, records = _tracked(lambda t=t, a=alg: mxcomm.all_reduce(t, "int4_fp16", algorithm=a, strict=True))
            err = float((t.double() - want).norm() / want.norm())
            out[f"builtin {alg} {m:g}"] = {"error": err, "clipped": records[0]["clipped_blocks"], "bits": t.clone()}
    # the group still works
    t = torch.ones(64)
    mxcomm.all_reduce(t, "mxfp8_e4m3")
    out["after"] = t
    return out


@pytest.fixture(scope="module")
def world() -> list[dict]:
    return run_world(body, WORLD)


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("async_op", [False, True])
def test_strict_all_reduce_raises_on_every_rank(world, alg: str, async_op: bool) -> None:
    results = [w[f"all_reduce {alg} strict=True async={async_op}"] for w in world]
    assert all(r["type"] == "RangeError" and "MxcommError" in r["bases"] for r in results), results
    assert all(r["untouched"] for r in results)
    by_rank = results[0]["clipped_by_rank"]
    assert all(r["clipped_by_rank"] == by_rank for r in results)  # every rank raises the same counts
    assert by_rank[0] == by_rank[1] == 0 and by_rank[2] > 0
    if alg == "allgather":  # one segment: the rank's encode is the whole tensor's
        assert by_rank[2] == world[2]["local"]["allgather"]


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_without_strict_the_record_counts_the_clipped_blocks(world, alg: str) -> None:
    results = [w[f"all_reduce {alg} strict=False async=False"] for w in world]
    assert all(r["ok"] for r in results), results
    counts = [r["records"][0]["clipped_blocks"] for r in results]
    assert counts[0] == counts[1] == 0 and counts[2] > 0
    if alg == "allgather":
        assert counts[2] == world[2]["local"]["allgather"]


@pytest.mark.parametrize("key", ["all_gather_into_tensor", "all_gather", "reduce_scatter_tensor", "reduce_scatter"])
def test_strict_gather_and_scatter_raise_on_every_rank(world, key: str) -> None:
    results = [w[key] for w in world]
    assert all(r["type"] == "RangeError" and r["untouched"] for r in results), results
    assert len({tuple(r["clipped_by_rank"]) for r in results}) == 1 and results[0]["clipped_blocks"] > 0


def test_strict_must_agree(world) -> None:
    assert all(w["strict disagreement"]["type"] == "CollectiveMismatchError" for w in world)


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("m", [1.0, 1e6, 1e-20])
def test_builtin_format_reduces_at_any_magnitude(world, alg: str, m: float) -> None:
    results = [w[f"builtin {alg} {m:g}"] for w in world]
    base = world[0][f"builtin {alg} 1"]["error"]
    for r in results:
        assert r["clipped"] == 0
        assert r["error"] <= 1.5 * base + 2.0**-8, (r["error"], base)
        assert torch.equal(r["bits"], results[0]["bits"])  # ranks bitwise identical


def test_group_usable_after_range_errors(world) -> None:
    for w in world:
        assert torch.equal(w["after"], torch.full((64,), 3.0))
