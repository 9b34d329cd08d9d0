"""Rank-side GPU scenarios (tests/gpu/test_gpu.py): every collective over NCCL, CUDA-graph capture, compiled TP.

Every collective runs twice: on CUDA tensors over the default (NCCL) group and
on CPU copies over a gloo group; the Triton backend on the GPU and the CPU
backends produce the same bytes, so the results must be equal bit for bit.
The same body also runs over gloo on CPU tensors (``device_type="cpu"``;
capture and the CUDA model are then skipped), which is how its logic is
checked without a GPU.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

import mxcomm
from mxcomm.collectives import (
    all_reduce_with_outliers,
    functional_all_gather_into_tensor,
    functional_all_reduce,
    functional_reduce_scatter_tensor,
)
from mxcomm.formats import get_format
from tests.collectives._scenarios import make_input

ROTATED = get_format("mxfp4_e2m1").with_options(rotation_seed=11)
# (format, algorithm, dtype, shape): e8m0, a tensor scale, a rotated format, a float scale; ragged sizes
ALL_REDUCE_CASES: list[tuple[Any, str, torch.dtype, tuple[int, ...]]] = [
    ("mxfp8_e4m3", "allgather", torch.bfloat16, (37, 129)),
    ("mxfp6_e2m3", "two_shot", torch.bfloat16, (37, 129)),
    ("nvfp4", "allgather", torch.float16, (1000,)),
    ("nvfp4", "two_shot", torch.float32, (5, 3, 67)),
    (ROTATED, "allgather", torch.bfloat16, (513,)),
    (ROTATED, "two_shot", torch.bfloat16, (9, 64)),
    ("int4_fp16", "two_shot", torch.bfloat16, (31,)),
]
CAPTURE_CASES = [("mxfp8_e4m3", "allgather"), ("mxfp6_e2m3", "two_shot"), ("nvfp4", "allgather"), (ROTATED, "two_shot")]
OUTLIER_CHANNELS = [1, 7, 30]


def collectives(rank: int, n: int, device: torch.device) -> dict:
    """Every collective (in-place, list and functional forms) on ``device`` over the default group,
    against the same call on CPU copies over a gloo group: bit for bit (the CPU suite checks the
    gloo path against the algorithms' definitions)."""
    cpu = torch.device("cpu")
    gloo = dist.new_group(backend="gloo")  # (on CPU too: the functional ops then resolve a subgroup by name)
    res: dict[str, bool] = {}

    def check(name: str, call, exact: bool = True) -> None:  # noqa: ANN001
        got, want = call(device, None).cpu(), call(cpu, gloo)
        res[name] = torch.equal(got, want) if exact else torch.allclose(got, want, rtol=1e-6, atol=1e-6)

    def data(seed: int, shape: tuple[int, ...], dtype: torch.dtype, on: torch.device) -> torch.Tensor:
        return make_input(seed, rank, shape, dtype).to(on)

    for i, (fmt, algorithm, dtype, shape) in enumerate(ALL_REDUCE_CASES):
        label = f"{get_format(fmt).name} {algorithm} {dtype} {shape}"

        def in_place(on, group, i=i, fmt=fmt, algorithm=algorithm, dtype=dtype, shape=shape):  # noqa: ANN001
            x = data(10 + i, shape, dtype, on)
            mxcomm.all_reduce(x, fmt, group=group, algorithm=algorithm)
            return x

        def functional(on, group, i=i, fmt=fmt, algorithm=algorithm, dtype=dtype, shape=shape):  # noqa: ANN001
            return functional_all_reduce(data(10 + i, shape, dtype, on), fmt, group=group, algorithm=algorithm)

        check(f"all_reduce {label}", in_place)
        check(f"functional_all_reduce {label}", functional)

    def gather_into(on, group):  # noqa: ANN001
        out = torch.empty((n * 7, 45), dtype=torch.bfloat16, device=on)
        mxcomm.all_gather_into_tensor(out, data(40, (7, 45), torch.bfloat16, on), "mxfp4_e2m1", group=group)
        return out

    def gather_list(on, group):  # noqa: ANN001
        out = [torch.empty((7, 45), dtype=torch.bfloat16, device=on) for _ in range(n)]
        mxcomm.all_gather(out, data(40, (7, 45), torch.bfloat16, on), "mxfp4_e2m1", group=group)
        return torch.cat(out)

    def scatter_tensor(on, group):  # noqa: ANN001
        out = torch.empty(96, dtype=torch.float32, device=on)
        mxcomm.reduce_scatter_tensor(out, data(50, (n * 96,), torch.float32, on), "nvfp4", group=group)
        return out

    def scatter_list(on, group):  # noqa: ANN001
        out = torch.empty(96, dtype=torch.float32, device=on)
        mxcomm.reduce_scatter(out, list(data(50, (n * 96,), torch.float32, on).split(96)), "nvfp4", group=group)
        return out

    def outliers(on, group):  # noqa: ANN001
        x = data(60, (6, 32), torch.bfloat16, on)
        all_reduce_with_outliers(x, "mxfp8_e4m3", OUTLIER_CHANNELS, group=group, algorithm="allgather")
        return x

    def uncompressed(on, group):  # noqa: ANN001
        x = data(70, (100,), torch.float32, on)
        mxcomm.all_reduce(x, None, group=group, algorithm="none")
        return x

    check("all_gather_into_tensor", gather_into)
    check("all_gather", gather_list)
    check("functional_all_gather_into_tensor",
          lambda on, group: functional_all_gather_into_tensor(data(40, (7, 45), torch.bfloat16, on), "mxfp4_e2m1",
                                                              group=group))
    check("reduce_scatter_tensor", scatter_tensor)
    check("reduce_scatter", scatter_list)
    check("functional_reduce_scatter_tensor",
          lambda on, group: functional_reduce_scatter_tensor(data(50, (n * 96,), torch.float32, on).view(n, 96),
                                                             "nvfp4", group=group).view(-1))
    check("all_reduce_with_outliers", outliers)
    check("all_reduce none", uncompressed, exact=False)  # NCCL and gloo may sum in other orders
    return res


def capture(rank: int, n: int, device: torch.device) -> dict:
    """A compressed all-reduce captured in a CUDA graph, replayed on new data: equal to eager, bit for bit.

    What capture needs (docs/kernels.md, "CUDA graphs"): ``verify=False`` (the descriptor exchange
    reads its result on the host), an explicit algorithm, static buffers, and one eager call first
    (Triton compiles its kernels, the rotation signs and code tables are cached, NCCL connects).
    """
    res: dict[str, Any] = {}
    for i, (fmt, algorithm) in enumerate(CAPTURE_CASES):
        name = f"{get_format(fmt).name} {algorithm}"
        static = make_input(80 + i, rank, (33, 257), torch.bfloat16).to(device)

        def run(t: torch.Tensor) -> None:
            mxcomm.all_reduce(t, fmt, algorithm=algorithm, verify=False)  # noqa: B023 - used at once

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                run(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                run(static)
        except Exception as exc:  # noqa: BLE001 - reported by the test with the reason
            res[name] = f"capture failed: {type(exc).__name__}: {exc}"
            continue
        results = []
        for replay in range(2):  # two different inputs: nothing stale from the capture or the last replay
            data = make_input(90 + 10 * i + replay, rank, (33, 257), torch.bfloat16).to(device)
            static.copy_(data)
            graph.replay()
            torch.cuda.synchronize()
            eager = data.clone()
            run(eager)
            results.append(torch.equal(static, eager) and not torch.equal(static, data))
        res[name] = results
    return res


def compiled_tp(rank: int, n: int, device: torch.device) -> dict:
    """The tiny TP Llama on CUDA under torch.compile (inductor, fullgraph) against eager."""
    from torch.distributed.device_mesh import init_device_mesh

    from mxcomm.tp import parallelize_llama
    from tests.tp._tp_worker import tiny_model, token_ids

    mesh = init_device_mesh(device.type, (n,))
    res: dict[str, Any] = {}
    for fmt, algorithm in (("mxfp6_e2m3", "two_shot"), ("mxfp8_e4m3", "allgather")):
        model = parallelize_llama(tiny_model(num_hidden_layers=2).to(device), mesh, fmt, algorithm=algorithm)
        ids = token_ids().to(device)
        with torch.no_grad():
            eager = model(ids).logits
            compiled = torch.compile(model, fullgraph=True)
            first = compiled(ids).logits
            second = compiled(ids).logits
        res[f"{fmt} {algorithm}"] = {
            "finite": bool(torch.isfinite(first).all()),
            "rel_err": float((first.double() - eager.double()).norm() / eager.double().norm()),
            "repeatable": torch.equal(first, second),
        }
    return res


def run(rank: int, n: int, device_type: str) -> dict:
    if device_type == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    res: dict[str, Any] = {"collectives": collectives(rank, n, device)}
    if device.type == "cuda":
        res["capture"] = capture(rank, n, device)
        res["compiled_tp"] = compiled_tp(rank, n, device)
    return res
