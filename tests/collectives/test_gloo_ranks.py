"""Compressed collectives on real gloo ranks (2, 3 and 4 processes).

One spawned job per world size runs every scenario (tests/collectives/_scenarios.py);
the tests below check its results against the codec primitives, the
format's error bound and the byte formulas.
"""

from __future__ import annotations

import pytest
import torch

import mxcomm
from mxcomm.collectives import plan_all_reduce
from tests.collectives import reference as ref
from tests.collectives._harness import run_world
from tests.collectives._scenarios import (
    FAST_LINK,
    SLOW_LINK,
    all_reduce_cases,
    gather_cases,
    main_suite,
    make_input,
    scatter_cases,
)

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module", params=[2, 3, 4], ids=lambda n: f"world{n}")
def world(request) -> list[dict]:
    return run_world(main_suite, request.param)


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().view(torch.uint8).numpy().tobytes()


def _same_on_all_ranks(world: list[dict], key: str, field: str = "out") -> torch.Tensor:
    first = world[0][key][field]
    for r, res in enumerate(world[1:], start=1):
        other = res[key][field]
        if isinstance(first, list):
            assert [_bits(t) for t in other] == [_bits(t) for t in first], f"{key}: rank {r} differs from rank 0"
        else:
            assert _bits(other) == _bits(first), f"{key}: rank {r} differs from rank 0"
    return first


def _inputs(seed: int, n: int, shape, dtype) -> list[torch.Tensor]:
    return [make_input(seed, r, shape, dtype) for r in range(n)]


# -- all_reduce -----------------------------------------------------------------------------------


def test_all_reduce_bitwise_identical_and_as_defined(world):
    n = len(world)
    for c in all_reduce_cases(n):
        out = _same_on_all_ranks(world, c["key"])
        fmt = mxcomm.get_format(c["fmt"])
        xs = _inputs(c["seed"], n, c["shape"], c["dtype"])
        expect = (ref.one_shot if c["alg"] == "allgather" else ref.two_shot)(xs, fmt, c["seg"])
        assert out.shape == xs[0].shape and out.dtype == xs[0].dtype
        assert _bits(out) == _bits(expect), f"{c['key']}: differs from the algorithm's definition"


def test_all_reduce_error_within_format_bound(world):
    n = len(world)
    for c in all_reduce_cases(n):
        out = world[0][c["key"]]["out"].reshape(-1).to(torch.float64)
        fmt = mxcomm.get_format(c["fmt"])
        xs = [x.reshape(-1) for x in _inputs(c["seed"], n, c["shape"], c["dtype"])]
        exact, bound = ref.all_reduce_bound(xs, fmt, c["alg"])
        err = (out - exact).abs()
        assert bool((err <= bound).all()), f"{c['key']}: max excess {float((err - bound).max()):.3g}"
        # the bound is not vacuous: the typical error is well inside it and the result is not garbage
        if exact.numel() > 100:
            assert float(err.mean()) < 0.5 * float(bound.mean())
            assert float((out - exact).norm()) < 0.5 * float(exact.norm())


def test_all_reduce_accounting_equals_formulas(world):
    n = len(world)
    for c in all_reduce_cases(n):
        fmt = mxcomm.get_format(c["fmt"])
        numel = 1
        for d in c["shape"]:
            numel *= d
        esize = torch.empty((), dtype=c["dtype"]).element_size()
        segs = ref.segments(numel, c["seg"], fmt.block_size)
        if c["alg"] == "allgather":
            wire = (n - 1) * (ref.DESCRIPTOR + sum(ref.packed(fmt, b - a) for a, b in segs))
        else:
            slots = [ref.packed(fmt, ref.chunks(b - a, n, fmt.block_size)[0][1]) for a, b in segs]
            wire = (n - 1) * ref.DESCRIPTOR + sum(2 * (n - 1) * s for s in slots)
        logical = 2 * (n - 1) * numel * esize // n
        for res in world:
            (rec,) = res[c["key"]]["records"]
            assert rec["op"] == "all_reduce" and rec["algorithm"] == c["alg"] and rec["requested"] == c["alg"]
            assert rec["format"] == fmt.name and rec["world_size"] == n
            assert rec["logical_bytes"] == logical
            assert rec["bytes_sent"] == wire and rec["bytes_received"] == wire, c["key"]
            assert rec["segments"] == len(segs)
            assert rec["ratio"] == (logical / wire) and rec["seconds"] > 0
            # where the time went: both codec stages ran, and the parts fit in the call
            assert (rec["encode_s"] > 0 and rec["decode_s"] > 0) == (numel > 0) and rec["wait_s"] >= 0
            assert rec["encode_s"] + rec["decode_s"] + rec["wait_s"] <= rec["seconds"]


def test_two_shot_compresses_about_as_the_format_says(world):
    # large enough that the descriptor is negligible: ratio ~ 2(n-1)/n S / (2(n-1)/n P)
    n = len(world)
    key = next(c["key"] for c in all_reduce_cases(n) if c["fmt"] == "mxfp4_e2m1" and c["shape"] == (5000,)
               and c["alg"] == "two_shot")
    rec = world[0][key]["records"][0]
    assert 2.5 < rec["ratio"] < 16 / 4.25


def test_non_contiguous_input_is_reduced_in_place(world):
    _same_on_all_ranks(world, "noncontig", "view")
    for res in world:
        assert _bits(res["noncontig"]["view"].contiguous()) == _bits(res["noncontig"]["contiguous"])


def test_none_is_dist_all_reduce(world):
    n = len(world)
    for i in range(3):
        for res in world:
            entry = res[f"none{i}"]
            assert _bits(entry["out"]) == _bits(entry["dist"])
            (rec,) = entry["records"]
            numel, esize = entry["out"].numel(), entry["out"].element_size()
            logical = 2 * (n - 1) * numel * esize // n
            assert rec["algorithm"] == "none" and rec["format"] == ""
            assert rec["bytes_sent"] == (n - 1) * ref.DESCRIPTOR + logical
        _same_on_all_ranks(world, f"none{i}")


@pytest.mark.parametrize("alg", ["allgather", "two_shot", "none"])
def test_verify_false_skips_only_the_descriptor(world, alg):
    n = len(world)
    for res in world:
        e = res[f"noverify:{alg}"]
        assert _bits(e["out"]) == _bits(e["unverified"])
        checked, unchecked = e["records"]
        assert unchecked["algorithm"] == checked["algorithm"] == alg
        assert unchecked["bytes_sent"] == checked["bytes_sent"] - (n - 1) * ref.DESCRIPTOR
        assert unchecked["bytes_received"] == checked["bytes_received"] - (n - 1) * ref.DESCRIPTOR


# -- all_gather / reduce_scatter -------------------------------------------------------------------


def test_all_gather(world):
    # all_gather_into_tensor (output concatenated along dim 0 or stacked) and the list form
    n = len(world)
    for c in gather_cases():
        out = _same_on_all_ranks(world, c["key"])
        fmt = mxcomm.get_format(c["fmt"])
        xs = _inputs(c["seed"], n, c["shape"], c["dtype"])
        assert len(out) == n
        for r, x in enumerate(xs):
            expect = mxcomm.quantize(x.reshape(-1), fmt).view(x.shape) if x.numel() else x
            assert out[r].shape == x.shape and out[r].dtype == x.dtype
            assert _bits(out[r]) == _bits(expect), f"{c['key']} entry {r}"
            # against the float64 input: within one quantization (+ the cast back to the dtype)
            exact = x.reshape(-1).to(torch.float64)
            bound = ref.all_gather_bound(x.reshape(-1), fmt)
            assert bool(((out[r].reshape(-1).to(torch.float64) - exact).abs() <= bound).all()), c["key"]
        numel, esize = xs[0].numel(), xs[0].element_size()
        (rec,) = world[0][c["key"]]["records"]
        assert rec["op"] == "all_gather" and rec["logical_bytes"] == (n - 1) * numel * esize
        assert rec["bytes_sent"] == rec["bytes_received"] == (n - 1) * (ref.DESCRIPTOR + ref.packed(fmt, numel))


def test_reduce_scatter(world):
    n = len(world)
    for c in scatter_cases():
        fmt = mxcomm.get_format(c["fmt"])
        m = 1
        for d in c["out_shape"]:
            m *= d
        xs = [x.reshape(-1) for x in _inputs(c["seed"], n, (n * m,), c["dtype"])]
        for r, res in enumerate(world):
            out = res[c["key"]]["out"]
            expect = ref.own_exact_sum([x[r * m : (r + 1) * m] for x in xs], r, fmt).to(c["dtype"])
            expect = expect.view(c["out_shape"])
            assert _bits(out) == _bits(expect), f"{c['key']} rank {r}"
            exact, bound = ref.reduce_scatter_bound([x[r * m : (r + 1) * m] for x in xs], fmt)
            assert bool(((out.reshape(-1).to(torch.float64) - exact).abs() <= bound).all())
            (rec,) = res[c["key"]]["records"]
            assert rec["op"] == "reduce_scatter" and rec["algorithm"] == "all_to_all"
            assert rec["logical_bytes"] == (n - 1) * m * out.element_size()
            assert rec["bytes_sent"] == (n - 1) * (ref.DESCRIPTOR + ref.packed(fmt, m))


def test_in_place_and_non_contiguous_forms(world):
    # all_gather_into_tensor of the rank's own slot of the output (and into a transposed view);
    # reduce_scatter_tensor into a slice of its input
    for res in world:
        gathered, expect = res["aliased"]["gather"]
        assert _bits(gathered) == _bits(expect)
        assert _bits(res["aliased"]["noncontiguous_output"]) == _bits(expect)
        scattered, expect = res["aliased"]["scatter"]
        assert _bits(scattered) == _bits(expect)


def test_op_sum_spellings_and_positional_arguments(world):
    # dist.ReduceOp.SUM, "sum", "SUM", ReduceOp(SUM), passed positionally with group and async_op
    n = len(world)
    fmt = mxcomm.get_format("mxfp6_e2m3")
    expect = ref.two_shot(_inputs(520, n, (300,), torch.bfloat16), fmt, None)
    for res in world:
        for out in res["op_sum_spellings"]["outs"]:
            assert _bits(out) == _bits(expect)


# -- async: the handle behaves like torch.distributed's Work -----------------------------------------


@pytest.mark.parametrize("alg", ["allgather", "two_shot", "none"])
def test_async_all_reduce(world, alg):
    for res in world:
        e = res[f"async:{alg}"]
        assert _bits(e["a"]) == _bits(e["a_sync"]) and _bits(e["b"]) == _bits(e["b_sync"])
        assert e["before"] == (False, False, 0)  # nothing recorded or marked complete before wait()
        if alg != "none":  # the compressed ones write in wait(); dist.all_reduce may write any time, as in torch
            assert e["untouched_before_wait"]
        assert e["returned"] == (True, True)  # like Work.wait(); the result is in the tensor
        assert e["after"] == (True, True, 2)
        assert e["again"] == (True, True, 2)  # a second wait() is harmless and records nothing


@pytest.mark.parametrize("op", ["all_gather_into_tensor", "all_gather", "reduce_scatter_tensor", "reduce_scatter"])
def test_async_work_of_every_collective(world, op):
    for res in world:
        e = res[f"async:{op}"]
        assert [_bits(t) for t in e["out"]] == [_bits(t) for t in e["sync"]]
        assert e["before"] == (False, 0) and e["untouched_before_wait"]
        assert e["returned"] is True and e["after"] == (True, 1)
        assert e["again"] == (True, True, 1)
    if op.startswith("all_gather"):  # a reduce-scatter's outputs differ by rank
        _same_on_all_ranks(world, f"async:{op}")


# -- mismatches ------------------------------------------------------------------------------------

_MISMATCH = ["shape", "shape_same_numel", "format", "dtype", "algorithm", "none_shape", "gather_shape",
             "scatter_format"]
_ONE_BAD_RANK = {  # case: (bad rank, what it raises)
    "bad_dtype_one_rank": (-1, "FormatError"),
    "unknown_format_one_rank": (-1, "FormatError"),
    "scatter_bad_size_one_rank": (0, "FormatError"),
    "bad_backend_one_rank": (-1, "BackendUnavailableError"),
    "op_one_rank": (-1, "UnsupportedReduceOpError"),
    "not_a_tensor_one_rank": (-1, "ArgumentTypeError"),
    "gather_output_one_rank": (0, "FormatError"),
    "gather_list_one_rank": (-1, "FormatError"),
}
_BUILTIN = {"UnsupportedReduceOpError": "ValueError", "ArgumentTypeError": "TypeError", "FormatError": "ValueError"}


def test_mismatch_raises_on_every_rank(world):
    for name in _MISMATCH:
        for r, res in enumerate(world):
            err = res[f"mismatch:{name}"]["error"]
            assert err.get("type") == "CollectiveMismatchError", f"{name} on rank {r}: {err}"
            assert "disagree" in err["message"]


def test_invalid_arguments_on_one_rank_raise_everywhere(world):
    n = len(world)
    for name, (bad, raised) in _ONE_BAD_RANK.items():
        bad = bad % n
        for r, res in enumerate(world):
            err = res[f"mismatch:{name}"]["error"]
            expected = raised if r == bad else "CollectiveMismatchError"
            assert err.get("type") == expected, f"{name} on rank {r}: {err}"
            if r != bad:
                assert f"[{bad}]" in err["message"]
    for res in world:
        assert res["mismatch:bad_algorithm_everywhere"]["error"]["type"] == "FormatError"


def test_bad_arguments_on_every_rank_raise_the_same_error_everywhere(world):
    # non-tensors -> ArgumentTypeError (a TypeError), op other than SUM -> UnsupportedReduceOpError,
    # outputs / inputs of the wrong size, dtype or shape -> FormatError (both ValueErrors); nobody hangs
    cases = [k for k in world[0] if k.startswith("mismatch:everywhere:")]
    assert len(cases) >= 20
    for key in cases:
        expected = key.split(":")[2]
        for r, res in enumerate(world):
            err = res[key]["error"]
            assert err.get("type") == expected, f"{key} on rank {r}: {err}"
            assert err["mxcomm"] and _BUILTIN[expected] in err["bases"]


def test_group_still_works_after_every_failure(world):
    n = len(world)
    fmt = mxcomm.get_format("mxfp8_e4m3")
    expect = ref.two_shot(_inputs(800, n, (64,), torch.bfloat16), fmt, None)
    names = [k for k in world[0] if k.startswith("mismatch:")]
    assert len(names) == len(_MISMATCH) + len(_ONE_BAD_RANK) + 1 + sum(k.startswith("mismatch:everywhere:")
                                                                       for k in names)
    for key in names:
        out = _same_on_all_ranks(world, key, "after")
        assert _bits(out) == _bits(expect), key


def test_renamed_copy_of_a_format_is_not_a_mismatch(world):
    for res in world:
        assert res["renamed_format"]["error"] == {"ok": True}
    _same_on_all_ranks(world, "renamed_format")


# -- planner ----------------------------------------------------------------------------------------


def test_auto_follows_the_model(world):
    n = len(world)
    fmt = mxcomm.get_format("mxfp4_e2m1")
    for mname, model in (("slow", SLOW_LINK), ("fast", FAST_LINK)):
        for sname, numel in (("tiny", 16), ("large", 1 << 16)):
            plan = plan_all_reduce(model, fmt, numel, 2, n)
            for res in world:
                (rec,) = res[f"auto:{mname}:{sname}"]["records"]
                assert rec["requested"] == "auto" and rec["algorithm"] == plan.algorithm
                assert "model (given)" in rec["reason"]
            _same_on_all_ranks(world, f"auto:{mname}:{sname}")
    # the cases were chosen so that both outcomes occur
    assert plan_all_reduce(SLOW_LINK, fmt, 1 << 16, 2, n).algorithm != "none"
    assert plan_all_reduce(FAST_LINK, fmt, 1 << 16, 2, n).algorithm == "none"
    assert plan_all_reduce(SLOW_LINK, fmt, 16, 2, n).algorithm == "none"


def test_auto_uses_rank0_plan_everywhere(world):
    n = len(world)
    fmt = mxcomm.get_format("mxfp4_e2m1")
    expected = plan_all_reduce(SLOW_LINK, fmt, 1 << 16, 2, n).algorithm
    for r, res in enumerate(world):
        (rec,) = res["auto:rank0_wins"]["records"]
        assert rec["algorithm"] == expected
        if r:
            assert "rank 0 chose" in rec["reason"]
    _same_on_all_ranks(world, "auto:rank0_wins")


def test_calibrate_gives_one_model_to_all_ranks(world):
    cal = [res["calibrated"] for res in world]
    assert all(c == cal[0] for c in cal)
    assert cal[0]["source"] == "calibrated" and cal[0]["alpha"] >= 0 and cal[0]["beta"] > 0
    assert cal[0]["codec"]["mxfp4_e2m1"]["encode_s_per_elem"] > 0
    algs = {res["auto:calibrated"]["records"][0]["algorithm"] for res in world}
    assert len(algs) == 1
