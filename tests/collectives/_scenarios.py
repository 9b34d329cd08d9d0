"""Scenarios run inside the gloo ranks, and the inputs they share with the checking tests.

Each suite returns a dict of plain results (tensors, record dicts, error
descriptions); tests/collectives/test_*.py check them in the parent process.
Every scenario issues the same collectives in the same order on every rank,
including the failing ones, so one scenario cannot desynchronise the next.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

import mxcomm
from mxcomm.collectives import (
    CodecCost,
    CostModel,
    all_gather,
    all_gather_into_tensor,
    all_reduce,
    calibrate,
    reduce_scatter,
    reduce_scatter_tensor,
    track_comm,
)
from mxcomm.errors import MxcommError

FORMATS = ["mxfp8_e4m3", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8", "nvfp4", "int4_fp16"]
COMPRESSED = ["allgather", "two_shot"]


def make_input(seed: int, rank: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Deterministic per-rank data with block amaxes spread over several binades and a few outliers."""
    g = torch.Generator().manual_seed(seed * 1009 + rank)
    n = 1
    for d in shape:
        n *= d
    x = torch.randn(n, generator=g, dtype=torch.float64)
    x = x * torch.exp2(torch.randint(-6, 4, (n,), generator=g).to(torch.float64) / 2)
    if n:
        x[torch.randint(0, n, (max(1, n // 200),), generator=g)] *= 40.0
    return x.to(dtype).reshape(shape)


def all_reduce_cases(n: int) -> list[dict]:
    """(key, format, algorithm, dtype, shape, segment) of every compressed all-reduce checked."""
    cases = []
    for fmt in FORMATS:
        for alg in COMPRESSED:
            cases.append(dict(fmt=fmt, alg=alg, dtype=torch.bfloat16, shape=(37, 129), seg=None))
    ragged = [(1,), (31,), (33,), (n * 32 + 1,), (5, 3, 7), (0,)]
    for shape in ragged:
        for alg in COMPRESSED:
            cases.append(dict(fmt="mxfp4_e2m1", alg=alg, dtype=torch.bfloat16, shape=shape, seg=None))
    for dtype in (torch.float32, torch.float16):
        for fmt in ("mxfp8_e4m3", "mxfp4_e2m1"):
            for alg in COMPRESSED:
                cases.append(dict(fmt=fmt, alg=alg, dtype=dtype, shape=(1000,), seg=None))
    # several pipeline segments, the last one short (5000 = 4 * 1216 + 136)
    for fmt in ("mxfp4_e2m1", "nvfp4"):
        for alg in COMPRESSED:
            cases.append(dict(fmt=fmt, alg=alg, dtype=torch.bfloat16, shape=(5000,), seg=1216))
    for i, c in enumerate(cases):
        c["key"] = f"ar{i}:{c['fmt']}:{c['alg']}:{str(c['dtype'])[6:]}:{c['shape']}:{c['seg']}"
        c["seed"] = 100 + i
    return cases


def gather_cases() -> list[dict]:
    """``form``: the output of all_gather_into_tensor concatenated along dim 0 or stacked, or the list form."""
    cases = [
        dict(fmt="mxfp4_e2m1", dtype=torch.bfloat16, shape=(7, 45), form="concat"),
        dict(fmt="nvfp4", dtype=torch.float16, shape=(33,), form="list"),
        dict(fmt="mxfp8_e5m2", dtype=torch.float32, shape=(2, 2, 40), form="stack"),
        dict(fmt="mxfp4_e2m1", dtype=torch.bfloat16, shape=(0,), form="concat"),
    ]
    for i, c in enumerate(cases):
        c["key"] = f"ag{i}:{c['fmt']}:{c['shape']}:{c['form']}"
        c["seed"] = 500 + i
    return cases


def scatter_cases() -> list[dict]:
    cases = [
        dict(fmt="mxfp4_e2m1", dtype=torch.bfloat16, out_shape=(100,), as_list=False),
        dict(fmt="nvfp4", dtype=torch.float32, out_shape=(3, 21), as_list=False),
        dict(fmt="mxint8", dtype=torch.bfloat16, out_shape=(64,), as_list=True),
    ]
    for i, c in enumerate(cases):
        c["key"] = f"rs{i}:{c['fmt']}:{c['out_shape']}:{'list' if c['as_list'] else 'tensor'}"
        c["seed"] = 700 + i
    return cases


def _error(e: BaseException) -> dict:
    return {"type": type(e).__name__, "message": str(e), "mxcomm": isinstance(e, MxcommError),
            "bases": [c.__name__ for c in type(e).__mro__]}


def _tracked(fn, *args, **kwargs):
    with track_comm() as stats:
        out = fn(*args, **kwargs)
    return out, [r.as_dict() for r in stats.records]


def main_suite(rank: int, n: int) -> dict:
    res: dict = {"rank": rank, "world": n}

    # -- compressed all-reduce: results and accounting
    for c in all_reduce_cases(n):
        x = make_input(c["seed"], rank, c["shape"], c["dtype"])
        _, recs = _tracked(all_reduce, x, c["fmt"], algorithm=c["alg"], segment_elems=c["seg"])
        res[c["key"]] = {"out": x.clone(), "records": recs}

    # -- non-contiguous input (a transposed view): written back in place
    base = make_input(9, rank, (40, 64), torch.bfloat16)
    view = base.t()
    all_reduce(view, "mxfp4_e2m1", algorithm="two_shot")
    contiguous = make_input(9, rank, (40, 64), torch.bfloat16).t().contiguous()
    all_reduce(contiguous, "mxfp4_e2m1", algorithm="two_shot")
    res["noncontig"] = {"view": view.clone(), "contiguous": contiguous}

    # -- algorithm="none" is dist.all_reduce
    for i, (dtype, shape) in enumerate([(torch.bfloat16, (37, 129)), (torch.float32, (1000,)), (torch.float16, (33,))]):
        x = make_input(300 + i, rank, shape, dtype)
        ref = x.clone()
        _, recs = _tracked(all_reduce, x, None, algorithm="none")
        dist.all_reduce(ref)
        res[f"none{i}"] = {"out": x, "dist": ref, "records": recs}

    # -- all_gather / reduce_scatter, tensor and list forms
    for c in gather_cases():
        x = make_input(c["seed"], rank, c["shape"], c["dtype"])
        if c["form"] == "list":
            out = [torch.full(x.shape, float("nan"), dtype=x.dtype) for _ in range(n)]
            _, recs = _tracked(all_gather, out, x, c["fmt"])
        else:
            shape = (n * x.shape[0], *x.shape[1:]) if c["form"] == "concat" else (n, *x.shape)
            out = torch.full(shape, float("nan"), dtype=x.dtype)
            _, recs = _tracked(all_gather_into_tensor, out, x, c["fmt"])
            out = list(out.reshape(n, *x.shape).unbind(0))
        res[c["key"]] = {"out": out, "records": recs}
    for c in scatter_cases():
        m = 1
        for d in c["out_shape"]:
            m *= d
        x = make_input(c["seed"], rank, (n * m,), c["dtype"])
        out = torch.full(c["out_shape"], float("nan"), dtype=c["dtype"])
        if c["as_list"]:
            _, recs = _tracked(reduce_scatter, out, [t.view(c["out_shape"]) for t in x.split(m)], c["fmt"])
        else:
            _, recs = _tracked(reduce_scatter_tensor, out, x, c["fmt"])
        res[c["key"]] = {"out": out, "records": recs}
    # in place: the input is this rank's slot of the output (all_gather) / the output is a slice of the input
    x = make_input(510, rank, (3, 40), torch.bfloat16)
    gathered = torch.empty(n * 3, 40, dtype=torch.bfloat16)
    gathered[3 * rank : 3 * rank + 3] = x
    all_gather_into_tensor(gathered, gathered[3 * rank : 3 * rank + 3], "mxfp4_e2m1")
    expect = torch.empty_like(gathered)
    all_gather_into_tensor(expect, x, "mxfp4_e2m1")
    transposed = torch.empty(40, n * 3, dtype=torch.bfloat16).t()  # a non-contiguous output, written back
    all_gather_into_tensor(transposed, x, "mxfp4_e2m1")
    x = make_input(710, rank, (n * 64,), torch.bfloat16)
    aliased = x.clone()
    reduce_scatter_tensor(aliased[rank * 64 : (rank + 1) * 64], aliased, "mxfp4_e2m1")
    separate = torch.empty(64, dtype=torch.bfloat16)
    reduce_scatter_tensor(separate, x, "mxfp4_e2m1")
    res["aliased"] = {"gather": (gathered, expect), "scatter": (aliased[rank * 64 : (rank + 1) * 64], separate),
                      "noncontiguous_output": transposed.contiguous()}

    # -- op and the positional arguments of torch.distributed
    x = make_input(520, rank, (300,), torch.bfloat16)
    outs = []
    for op in (dist.ReduceOp.SUM, "sum", "SUM", dist.ReduceOp(dist.ReduceOp.SUM)):
        y = x.clone()
        all_reduce(y, "mxfp6_e2m3", op, None, False, algorithm="two_shot")
        outs.append(y)
    res["op_sum_spellings"] = {"outs": outs}

    # -- async handles: same bytes as the synchronous calls; two outstanding at once
    for alg in ("allgather", "two_shot", "none"):
        a = make_input(400, rank, (3000,), torch.bfloat16)
        b = make_input(401, rank, (777,), torch.bfloat16)
        a_sync, b_sync = a.clone(), b.clone()
        fmt = "mxfp4_e2m1" if alg != "none" else None
        all_reduce(a_sync, fmt, algorithm=alg)
        all_reduce(b_sync, fmt, algorithm=alg)
        a_before = a.clone()
        with track_comm() as stats:
            ha = all_reduce(a, fmt, algorithm=alg, async_op=True)
            hb = all_reduce(b, fmt, algorithm=alg, async_op=True)
            before = (ha.is_completed(), hb.is_completed(), len(stats.records))
            untouched = torch.equal(a.view(torch.int16), a_before.view(torch.int16))
            returned = (ha.wait(), hb.wait())
            after = (ha.is_completed(), hb.is_completed(), len(stats.records))
            again = (ha.wait(), hb.wait(), len(stats.records))  # waiting twice: nothing more happens
        res[f"async:{alg}"] = {
            "a": a, "b": b, "a_sync": a_sync, "b_sync": b_sync, "before": before, "after": after,
            "untouched_before_wait": untouched, "returned": returned, "again": again,
        }
    res.update(async_scenarios(rank, n))

    # verify=False: no descriptor exchange, same bytes of result
    for alg in ("allgather", "two_shot", "none"):
        x = make_input(420, rank, (2000,), torch.bfloat16)
        y = x.clone()
        fmt = "mxfp6_e2m3" if alg != "none" else None
        _, checked = _tracked(all_reduce, x, fmt, algorithm=alg)
        _, unchecked = _tracked(all_reduce, y, fmt, algorithm=alg, verify=False)
        res[f"noverify:{alg}"] = {"out": x, "unverified": y, "records": checked + unchecked}

    res.update(mismatch_scenarios(rank, n))
    res.update(planner_scenarios(rank, n))
    return res


def _async_work(call, sync_call, outputs: list[torch.Tensor]) -> dict:
    """Issue ``call`` with async_op=True; the Work's state before / after wait() and the outputs vs ``sync_call``."""
    with track_comm() as stats:
        work = call()
        before = (work.is_completed(), len(stats.records))
        untouched = all(bool(t.isnan().all()) for t in outputs)  # NaN-filled: nothing written before wait()
        returned = work.wait()
        after = (work.is_completed(), len(stats.records))
        again = (work.wait(), work.is_completed(), len(stats.records))
    got = [t.clone() for t in outputs]
    sync_call()
    return {"out": got, "sync": [t.clone() for t in outputs], "before": before, "untouched_before_wait": untouched,
            "returned": returned, "after": after, "again": again}


def async_scenarios(rank: int, n: int) -> dict:
    """The Work of every collective but all_reduce (which main_suite checks per algorithm)."""
    res = {}
    g = make_input(410, rank, (5, 50), torch.float32)
    out = torch.full((n * 5, 50), float("nan"))
    res["async:all_gather_into_tensor"] = _async_work(
        lambda: all_gather_into_tensor(out, g, "mxfp6_e3m2", async_op=True),
        lambda: all_gather_into_tensor(out, g, "mxfp6_e3m2"), [out])
    outs = [torch.full((5, 50), float("nan")) for _ in range(n)]
    res["async:all_gather"] = _async_work(
        lambda: all_gather(outs, g, "mxfp6_e3m2", None, True),
        lambda: all_gather(outs, g, "mxfp6_e3m2"), outs)
    s_in = make_input(411, rank, (n * 90,), torch.bfloat16)
    s_out = torch.full((90,), float("nan"), dtype=torch.bfloat16)
    res["async:reduce_scatter_tensor"] = _async_work(
        lambda: reduce_scatter_tensor(s_out, s_in, "mxfp8_e4m3", async_op=True),
        lambda: reduce_scatter_tensor(s_out, s_in, "mxfp8_e4m3"), [s_out])
    s_list_out = torch.full((90,), float("nan"), dtype=torch.bfloat16)
    res["async:reduce_scatter"] = _async_work(
        lambda: reduce_scatter(s_list_out, list(s_in.split(90)), "mxfp8_e4m3", dist.ReduceOp.SUM, None, True),
        lambda: reduce_scatter(s_list_out, list(s_in.split(90)), "mxfp8_e4m3"), [s_list_out])
    return res


def _try(fn) -> dict:
    try:
        fn()
        return {"ok": True}
    except Exception as e:  # noqa: BLE001 - the test inspects what was raised
        return _error(e)


def mismatch_scenarios(rank: int, n: int) -> dict:
    res = {}
    last = n - 1
    ok_tensor = make_input(800, rank, (64,), torch.bfloat16)

    def healthy() -> torch.Tensor:
        # after a failed call the group must still work: a normal compressed all-reduce
        y = ok_tensor.clone()
        all_reduce(y, "mxfp8_e4m3", algorithm="two_shot")
        return y

    cases = {
        "shape": lambda: all_reduce(torch.ones(12 if rank != last else 10, dtype=torch.bfloat16), "mxfp4",
                                    algorithm="allgather"),
        "shape_same_numel": lambda: all_reduce(torch.ones((4, 6) if rank != last else (6, 4)), "mxfp4",
                                               algorithm="two_shot"),
        "format": lambda: all_reduce(torch.ones(64), "mxfp4" if rank == 0 else "mxfp8_e4m3", algorithm="two_shot"),
        "dtype": lambda: all_reduce(torch.ones(64, dtype=torch.bfloat16 if rank == last else torch.float32),
                                    "mxfp4", algorithm="allgather"),
        "algorithm": lambda: all_reduce(torch.ones(64), "mxfp4", algorithm="allgather" if rank == 0 else "two_shot"),
        "none_shape": lambda: all_reduce(torch.ones(8 if rank == 0 else 9), None, algorithm="none"),
        "bad_dtype_one_rank": lambda: all_reduce(
            torch.ones(64, dtype=torch.int32 if rank == last else torch.float32), "mxfp4", algorithm="allgather"
        ),
        "unknown_format_one_rank": lambda: all_reduce(torch.ones(64), "nope" if rank == last else "mxfp4",
                                                      algorithm="allgather"),
        "bad_backend_one_rank": lambda: all_reduce(torch.ones(64), "mxfp4", algorithm="two_shot",
                                                   backend="no_such_backend" if rank == last else "auto"),
        "bad_algorithm_everywhere": lambda: all_reduce(torch.ones(64), "mxfp4", algorithm="ring"),
        "gather_shape": lambda: all_gather_into_tensor(torch.empty(n * (32 + rank)), torch.ones(32 + rank), "mxfp4"),
        "scatter_format": lambda: reduce_scatter_tensor(
            torch.empty(16), torch.ones(16 * n), "mxfp4" if rank == last else "nvfp4"
        ),
        "scatter_bad_size_one_rank": lambda: reduce_scatter_tensor(
            torch.empty(16), torch.ones(16 * n + (1 if rank == 0 else 0)), "mxfp4"
        ),
        "op_one_rank": lambda: all_reduce(torch.ones(64), "mxfp4", dist.ReduceOp.MAX if rank == last else "sum"),
        "not_a_tensor_one_rank": lambda: all_reduce([1.0] * 64 if rank == last else torch.ones(64), "mxfp4"),
        "gather_output_one_rank": lambda: all_gather_into_tensor(torch.empty(32 * n + (rank == 0)), torch.ones(32),
                                                                 "mxfp4"),
        "gather_list_one_rank": lambda: all_gather([torch.empty(32) for _ in range(n - (rank == last))],
                                                   torch.ones(32), "mxfp4"),
        **everywhere_cases(n),
    }
    for name, fn in cases.items():
        res[f"mismatch:{name}"] = {"error": _try(fn), "after": healthy()}
    # a renamed copy of a format encodes identically: not a mismatch
    renamed = mxcomm.get_format("mxfp4_e2m1").with_options(name="my_fp4")
    x = make_input(801, rank, (96,), torch.bfloat16)
    res["renamed_format"] = {
        "error": _try(lambda: all_reduce(x, renamed if rank == 0 else "mxfp4", algorithm="allgather")),
        "out": x,
    }
    return res


def everywhere_cases(n: int) -> dict:
    """Calls every rank makes with the same bad arguments: every rank raises the same error type."""
    ones = torch.ones(32)
    return {
        # op other than SUM
        "everywhere:UnsupportedReduceOpError:all_reduce_max": lambda: all_reduce(ones.clone(), "mxfp4",
                                                                                 dist.ReduceOp.MAX),
        "everywhere:UnsupportedReduceOpError:all_reduce_avg_none": lambda: all_reduce(
            ones.clone(), None, dist.ReduceOp.AVG, algorithm="none"),
        "everywhere:UnsupportedReduceOpError:scatter_tensor_product": lambda: reduce_scatter_tensor(
            torch.empty(32), torch.ones(32 * n), "mxfp4", dist.ReduceOp.PRODUCT),
        "everywhere:UnsupportedReduceOpError:scatter_list_min": lambda: reduce_scatter(
            torch.empty(32), [ones] * n, "mxfp4", "min"),
        "everywhere:UnsupportedReduceOpError:all_reduce_int": lambda: all_reduce(ones.clone(), "mxfp4", 0),
        # not a tensor
        "everywhere:ArgumentTypeError:all_reduce_list": lambda: all_reduce([1.0] * 32, "mxfp4"),
        "everywhere:ArgumentTypeError:gather_input": lambda: all_gather_into_tensor(torch.empty(32 * n), [1.0] * 32,
                                                                                   "mxfp4"),
        "everywhere:ArgumentTypeError:gather_output": lambda: all_gather_into_tensor(None, ones, "mxfp4"),
        "everywhere:ArgumentTypeError:gather_list_entries": lambda: all_gather([None] * n, ones, "mxfp4"),
        "everywhere:ArgumentTypeError:gather_list_not_a_list": lambda: all_gather(torch.empty(n, 32), ones, "mxfp4"),
        "everywhere:ArgumentTypeError:scatter_output": lambda: reduce_scatter_tensor(3.0, torch.ones(32 * n), "mxfp4"),
        "everywhere:ArgumentTypeError:scatter_list_entries": lambda: reduce_scatter(torch.empty(32), [1.0] * n,
                                                                                   "mxfp4"),
        # output / input tensors of the wrong size, dtype or shape
        "everywhere:FormatError:gather_output_numel": lambda: all_gather_into_tensor(torch.empty(32 * n + 1), ones,
                                                                                    "mxfp4"),
        "everywhere:FormatError:gather_output_dtype": lambda: all_gather_into_tensor(
            torch.empty(32 * n, dtype=torch.bfloat16), ones, "mxfp4"),
        "everywhere:FormatError:gather_list_length": lambda: all_gather([torch.empty(32)] * (n + 1), ones, "mxfp4"),
        "everywhere:FormatError:gather_list_shape": lambda: all_gather([torch.empty(2, 16)] * n, ones, "mxfp4"),
        "everywhere:FormatError:gather_integer_input": lambda: all_gather_into_tensor(
            torch.empty(32 * n, dtype=torch.int32), torch.ones(32, dtype=torch.int32), "mxfp4"),
        "everywhere:FormatError:scatter_input_numel": lambda: reduce_scatter_tensor(torch.empty(32),
                                                                                   torch.ones(32 * n - 1), "mxfp4"),
        "everywhere:FormatError:scatter_input_dtype": lambda: reduce_scatter_tensor(
            torch.empty(32), torch.ones(32 * n, dtype=torch.float16), "mxfp4"),
        "everywhere:FormatError:scatter_list_length": lambda: reduce_scatter(torch.empty(32), [ones] * (n - 1),
                                                                            "mxfp4"),
        "everywhere:FormatError:scatter_no_format": lambda: reduce_scatter_tensor(torch.empty(32),
                                                                                 torch.ones(32 * n), None),
    }


# codec: 2 / 1 ns per element, 200 us per call (the order of a CPU codec's fixed cost)
_CODEC = CodecCost(2e-9, 1e-9, 200e-6)
SLOW_LINK = CostModel(alpha=50e-6, beta=8 / 100e6, default_codec=_CODEC, source="given")  # 100 Mbit/s
FAST_LINK = CostModel(alpha=50e-6, beta=8 / 400e9, default_codec=_CODEC, source="given")  # never worth it


def planner_scenarios(rank: int, n: int) -> dict:
    res = {}
    sizes = {"tiny": 16, "large": 1 << 16}
    for mname, model in (("slow", SLOW_LINK), ("fast", FAST_LINK)):
        for sname, numel in sizes.items():
            x = make_input(900, rank, (numel,), torch.bfloat16)
            _, recs = _tracked(all_reduce, x, "mxfp4_e2m1", algorithm="auto", model=model)
            res[f"auto:{mname}:{sname}"] = {"records": recs, "out": x}
    # ranks with different models: rank 0's plan is used everywhere
    x = make_input(901, rank, (1 << 16,), torch.bfloat16)
    model = SLOW_LINK if rank == 0 else FAST_LINK
    _, recs = _tracked(all_reduce, x, "mxfp4_e2m1", algorithm="auto", model=model)
    res["auto:rank0_wins"] = {"records": recs, "out": x}
    # calibration on the live group: the same model on every rank, then auto uses it
    cal = calibrate(formats=("mxfp4_e2m1",), max_probe_bytes=1 << 20, codec_probe_elems=1 << 14)
    res["calibrated"] = {
        "alpha": cal.alpha, "beta": cal.beta, "codec": {k: vars(v) for k, v in cal.codec.items()},
        "source": cal.source,
    }
    y = make_input(902, rank, (4096,), torch.bfloat16)
    _, recs = _tracked(all_reduce, y, "mxfp4_e2m1")
    res["auto:calibrated"] = {"records": recs}
    return res


SUITES = {"main": main_suite}
