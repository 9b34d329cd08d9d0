"""Rank-side scenarios of tests/tp/test_compile_tp.py: torch.compile of a tiny TP Llama and of the collectives.

One spawn per world size runs every scenario back to back; each rank returns a
dict of raw results (logits, records, graph-break counts, compilation counts,
caught errors) that the tests inspect.
"""

from __future__ import annotations

import collections
from typing import Any

import torch
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh

import mxcomm
from mxcomm.collectives import (
    CodecCost,
    CostModel,
    all_reduce_with_outliers,
    functional_all_gather_into_tensor,
    functional_all_reduce,
    functional_reduce_scatter_tensor,
    set_cost_model,
    track_comm,
)
from mxcomm.formats import get_format
from mxcomm.tp import compressed_modules, parallelize_llama, set_comm_format, set_outlier_channels
from tests.tp._tp_worker import record_dicts, tiny_model, token_ids

LAYERS = 1  # small: Dynamo traces the model once per setting (seconds each on two cores)
ROTATED = get_format("mxfp4_e2m1").with_options(rotation_seed=7)
OUTLIERS = [3, 17, 40]
# name -> (format, algorithm, outlier channels): every algorithm, rotation with both compressed ones, outliers
SETTINGS: dict[str, tuple[Any, str, list[int] | None]] = {
    "none": (None, "none", None),
    "allgather": ("mxfp8_e4m3", "allgather", None),
    "two_shot": ("mxfp6_e2m3", "two_shot", None),
    "auto": ("mxfp4_e2m1", "auto", None),
    "rotated_two_shot": (ROTATED, "two_shot", None),
    "outliers_rotated_allgather": (ROTATED, "allgather", OUTLIERS),
}
#: Settings also compiled by inductor, by world size (the others by Dynamo alone, fullgraph=True).
INDUCTOR_SETTINGS = {2: ("two_shot", "outliers_rotated_allgather"), 3: ("two_shot",)}
#: Model sizes that each world size divides (heads, KV heads, intermediate features).
MODEL_OVERRIDES: dict[int, dict[str, int]] = {
    2: {},
    3: {"hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 3, "intermediate_size": 192},
}
PROMPT_LENGTHS = (24, 5, 9, 14, 19)  # 24 first: the length every setting was compiled for


def configure(model: nn.Module, setting: str) -> None:
    fmt, algorithm, channels = SETTINGS[setting]
    # a new (equal) format object every time, as a harness that rebuilds its settings makes
    set_comm_format(model, None if fmt is None else get_format(fmt).with_options(rounding="rne"), algorithm=algorithm)
    set_outlier_channels(model, None if channels is None else {name: channels for name in compressed_modules(model)})


def logits_and_records(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
    with torch.no_grad(), track_comm() as stats:
        logits = model(ids).logits
    return logits, record_dicts(stats)


def caught(fn) -> str | None:  # noqa: ANN001
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the tests inspect the type
        return type(exc).__name__
    return None


def run(rank: int, world: int) -> dict:
    # each setting is a recompilation of the same forward (Dynamo guards on the modules' RowwiseComm)
    torch._dynamo.config.recompile_limit = 64
    res: dict[str, Any] = {"rank": rank}
    ids = token_ids()
    mesh = init_device_mesh("cpu", (world,))
    # a slow link, so that the planner ("auto") compresses even these small all-reduces; frozen
    # (learn=False): learning from the fast loopback would change auto's choice between the eager
    # and the compiled call of the same setting
    set_cost_model(CostModel(beta=8 / 1e6, default_codec=CodecCost(0.0, 0.0, 0.0)), mesh.get_group(), learn=False)
    model = parallelize_llama(tiny_model(num_hidden_layers=LAYERS, **MODEL_OVERRIDES[world]), mesh, "mxfp8_e4m3", algorithm="allgather")

    compilations: list[str] = []

    def counting(gm: torch.fx.GraphModule, inputs: list) -> Any:
        compilations.append(current)
        return gm.forward  # Dynamo's graph, run as it is: the same ops in the same order as eager

    traced = torch.compile(model, backend=counting, fullgraph=True)
    inductor = torch.compile(model, fullgraph=True)
    for current in SETTINGS:
        configure(model, current)
        res[f"{current}_eager"], res[f"{current}_eager_records"] = logits_and_records(model, ids)
        res[f"{current}_traced"], res[f"{current}_traced_records"] = logits_and_records(traced, ids)
        if current in INDUCTOR_SETTINGS[world]:
            res[f"{current}_inductor"], res[f"{current}_inductor_records"] = logits_and_records(inductor, ids)
            res[f"{current}_inductor_again"], _ = logits_and_records(inductor, ids)

    # Every setting again: its compiled graph is reused (Dynamo's guards on the settings still hold).
    compiled_before = len(compilations)
    for current in SETTINGS:
        configure(model, current)
        logits_and_records(traced, ids)
    res["recompilations_on_reapply"] = len(compilations) - compiled_before

    # Prompts of five lengths (the last setting): how often Dynamo compiles (automatic dynamic shapes).
    res["dynamic_equal"] = []
    with torch.no_grad():
        for length in PROMPT_LENGTHS:
            res["dynamic_equal"].append(torch.equal(traced(ids[:, :length]).logits, model(ids[:, :length]).logits))
    res["dynamic_compilations"] = compilations.count(current)

    # Graph breaks of the forward as Dynamo's explain counts them.
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(ids)
    res["graph_breaks"] = explained.graph_break_count
    res["break_reasons"] = [str(b.reason)[:300] for b in explained.break_reasons]

    # A format that differs across ranks in a compiled model: CollectiveMismatchError on every rank.
    configure(model, "allgather")
    if rank == world - 1:
        set_comm_format(model, "mxfp4_e2m1", algorithm="allgather")
    res["mismatch_error"] = caught(lambda: logits_and_records(traced, ids))

    res.update(collective_scenarios(rank, world))
    return res


def collective_scenarios(rank: int, world: int) -> dict:
    """The collectives themselves in compiled functions (inductor), against eager, bit for bit."""
    res: dict[str, Any] = {}
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(rank))

    def collectives(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = t * 1.5
        mxcomm.all_reduce(y, "mxfp6_e2m3", algorithm="two_shot")  # in place, traced as the functional op
        z = functional_all_reduce(t, ROTATED, algorithm="allgather")
        gathered = functional_all_gather_into_tensor(t, "mxfp8_e4m3")
        scattered = functional_reduce_scatter_tensor(t.reshape(-1)[: world * 8].reshape(world, 8), "mxint8")
        listed = [torch.empty_like(t) for _ in range(world)]
        handle = mxcomm.all_gather(listed, t + 1, "mxfp4_e2m1", async_op=True)
        handle.wait()
        # the other in-place forms, traced through the functional ops
        into = torch.empty((world, *t.shape), dtype=t.dtype)
        mxcomm.all_gather_into_tensor(into, t, "nvfp4")
        out = torch.empty(8, dtype=t.dtype)
        mxcomm.reduce_scatter_tensor(out, t.reshape(-1)[: world * 8], "mxfp8_e4m3")
        out_list = torch.empty(5, dtype=t.dtype)
        mxcomm.reduce_scatter(out_list, list(t.reshape(-1)[: world * 5].split(5)), "mxint8")
        channels = t * 3
        all_reduce_with_outliers(channels, "mxfp4_e2m1", [2, 9], algorithm="two_shot")
        return y + 1, z, gathered, scattered, *listed, into, out, out_list, channels

    want = collectives(x)
    with track_comm() as eager_stats:
        collectives(x)
    compiled = torch.compile(collectives, fullgraph=True)
    got = compiled(x)
    with track_comm() as compiled_stats:
        got_again = compiled(x)
    res["collectives_bitwise"] = [torch.equal(a, b) for a, b in zip(got, want)]
    res["collectives_again_bitwise"] = [torch.equal(a, b) for a, b in zip(got_again, want)]
    res["collectives_records"] = (record_dicts(eager_stats), record_dicts(compiled_stats))
    with torch.no_grad():
        res["explain_collectives_breaks"] = torch._dynamo.explain(collectives)(x).graph_break_count

    # The result of a collective nobody uses still runs (every rank must take part).
    def unused(t: torch.Tensor) -> torch.Tensor:
        functional_all_reduce(t, "mxfp8_e4m3", algorithm="allgather")
        return t * 2

    with track_comm() as stats:
        torch.compile(unused, backend="aot_eager", fullgraph=True)(x)
    res["unused_result_records"] = len(stats.records)

    # Bad input inside compiled code: the eager exceptions, on every rank.
    name = "mxfp8_e4m3" if rank == 0 else "no_such_format"
    res["bad_name_error"] = caught(
        lambda: torch.compile(lambda t: functional_all_reduce(t, name, algorithm="allgather"), backend="aot_eager",
                              fullgraph=True)(x))
    res["bad_op_error"] = caught(
        lambda: torch.compile(lambda t: mxcomm.all_reduce(t.clone(), "mxfp8_e4m3", op="max"), backend="aot_eager",
                              fullgraph=True)(x))

    # The profiler sees the codec, the transfers and the planner of compiled all-reduces.
    def planned(t: torch.Tensor) -> torch.Tensor:
        one_shot = functional_all_reduce(t, "mxfp8_e4m3", algorithm="allgather")
        return functional_all_reduce(one_shot, "mxfp8_e4m3", algorithm="auto")

    traced = torch.compile(planned, fullgraph=True)
    traced(x)
    with torch.profiler.profile() as prof:
        traced(x)
    res["profiler_names"] = dict(collections.Counter(e.name for e in prof.events() if e.name.startswith("mxcomm::")))
    return res
