"""Rank-side scenarios of the tensor-parallel tests (run in spawned gloo ranks).

One spawn runs every scenario back to back; each rank writes a dict of raw
results (logits, gradients, accounting records, caught errors, and the
single-process emulation of the compressed settings) and the tests in
test_llama_tp.py only inspect them.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate
from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

from mxcomm.bench.emulation import EmulatedReduction, emulated_tensor_parallel
from mxcomm.collectives import track_comm
from mxcomm.errors import MxcommError
from mxcomm.formats import get_format
from mxcomm.tp import (
    COMM_ATTR,
    CompressedRowwiseParallel,
    OutlierCalibration,
    calibrate_outliers,
    parallelize_llama,
    set_comm_format,
    set_outlier_channels,
)

LAYERS = 3
HIDDEN = 64
BATCH, SEQ = 2, 24
OUTLIER_K = 4
MLP_OUTLIERS = [3, 17, 40]
ROTATED_FP4 = get_format("mxfp4_e2m1").with_options(rotation_seed=7)


def tiny_config(**overrides):
    from transformers import LlamaConfig

    values = dict(
        vocab_size=128,
        hidden_size=HIDDEN,
        intermediate_size=160,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_model(**overrides) -> nn.Module:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)  # identical weights on every rank
    model = LlamaForCausalLM(tiny_config(**overrides)).eval()
    # Randomly initialised Llama weights are tiny (std 0.02); scale the projections up so the
    # activations have a realistic spread and quantization errors are visible in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.mul_(5.0)
    return model


def token_ids() -> torch.Tensor:
    return torch.randint(0, 128, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))


def loss_of(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def record_dicts(stats) -> list[dict]:
    return [r.as_dict() for r in stats.records]


def forward_tracked(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
    with torch.no_grad(), track_comm() as stats:
        logits = model(ids).logits
    return logits, record_dicts(stats)


def local_grad(param: torch.nn.Parameter) -> torch.Tensor:
    g = param.grad
    return g.to_local() if isinstance(g, DTensor) else g


def run(rank: int, world: int, out_dir: str) -> None:
    res: dict = {"rank": rank, "world": world}
    ids = token_ids()
    base = tiny_model()
    mesh = init_device_mesh("cpu", (world,))

    # Unsharded reference: logits, and the gradients of two row-parallel weights.
    ref = copy.deepcopy(base)
    logits = ref(ids).logits
    loss_of(logits, ids).backward()
    res["ref_logits"] = logits.detach()
    res["ref_grad_o_proj"] = ref.model.layers[0].self_attn.o_proj.weight.grad.clone()
    res["ref_grad_down_proj"] = ref.model.layers[LAYERS - 1].mlp.down_proj.weight.grad.clone()

    # The single-process emulation of each compressed setting below: the TP logits must equal it bitwise.
    emu_model = copy.deepcopy(base)

    def emulated(fmt, algorithm, comm_dtype=None, channels=None) -> torch.Tensor:  # noqa: ANN001
        reduction = EmulatedReduction(get_format(fmt), algorithm, comm_dtype)
        with torch.no_grad(), emulated_tensor_parallel(emu_model, world, reduction, channels):
            return emu_model(ids).logits

    res["emu_fp8_logits"] = emulated("mxfp8_e4m3", "allgather")
    res["emu_fp8_2s_logits"] = emulated("mxfp8_e4m3", "two_shot")
    res["emu_fp4_logits"] = emulated("mxfp4_e2m1", "allgather")
    res["emu_bf16_logits"] = emulated("mxfp8_e4m3", "allgather", torch.bfloat16)

    # Model A: every row-parallel projection goes through mxcomm; formats switched in place.
    model = parallelize_llama(copy.deepcopy(base), mesh, None)
    res["none_logits"], res["none_records"] = forward_tracked(model, ids)
    logits = model(ids).logits
    loss_of(logits, ids).backward()
    res["none_grad_o_proj"] = local_grad(model.model.layers[0].self_attn.o_proj.weight).clone()
    res["none_grad_down_proj"] = local_grad(model.model.layers[LAYERS - 1].mlp.down_proj.weight).clone()
    model.zero_grad(set_to_none=True)

    changed = set_comm_format(model, "mxfp8_e4m3", algorithm="allgather")
    res["set_format_changed"] = changed
    res["fp8_logits"], res["fp8_records"] = forward_tracked(model, ids)
    set_comm_format(model, "mxfp8_e4m3", algorithm="two_shot")
    res["fp8_2s_logits"], res["fp8_2s_records"] = forward_tracked(model, ids)
    set_comm_format(model, "mxfp4_e2m1", algorithm="allgather")
    res["fp4_logits"], res["fp4_records"] = forward_tracked(model, ids)
    set_comm_format(model, "mxfp8_e4m3", algorithm="allgather", comm_dtype=torch.bfloat16)
    res["bf16_logits"], res["bf16_records"] = forward_tracked(model, ids)
    # Without the descriptor exchange (verify=False): the same numerics, one small all-gather less per call.
    set_comm_format(model, "mxfp8_e4m3", algorithm="two_shot", comm_dtype=None, verify=False)
    res["fp8_2s_unverified_logits"], res["fp8_2s_unverified_records"] = forward_tracked(model, ids)
    set_comm_format(model, None, algorithm="none")  # verify stays False
    res["none_unverified_logits"], res["none_unverified_records"] = forward_tracked(model, ids)
    set_comm_format(model, None, algorithm="none", verify=True)

    # Model B: layer 1 left to PyTorch's RowwiseParallel, layer 2 in another format.
    mixed = parallelize_llama(
        copy.deepcopy(base), mesh, "mxfp4_e2m1", algorithm="allgather",
        uncompressed_layers=[1], layer_formats={2: "mxint8"},
    )
    res["mixed_logits"], res["mixed_records"] = forward_tracked(mixed, ids)
    res["mixed_has_comm"] = {
        f"{i}.{proj}": hasattr(mixed.model.layers[i].get_submodule(proj), COMM_ATTR)
        for i in range(LAYERS)
        for proj in ("self_attn.o_proj", "mlp.down_proj")
    }
    # Model C: the plan leaves every layer uncompressed.
    plain = parallelize_llama(
        copy.deepcopy(base), mesh, "mxfp4_e2m1", layer_formats={i: None for i in range(LAYERS)}
    )
    res["plain_logits"], res["plain_records"] = forward_tracked(plain, ids)
    # Model D: only the MLP's all-reduce compressed.
    mlp_only = parallelize_llama(
        copy.deepcopy(base), mesh, "mxfp8_e4m3", algorithm="allgather", compress=["mlp.down_proj"]
    )
    res["mlp_only_logits"], res["mlp_only_records"] = forward_tracked(mlp_only, ids)

    # A head count the world size does not divide: a clear error before any communication.
    try:
        parallelize_llama(tiny_model(num_key_value_heads=1), mesh, "mxfp8_e4m3")
        res["indivisible_error"] = None
    except MxcommError as exc:
        res["indivisible_error"] = f"{type(exc).__name__}: {exc}"

    # The style on a plain two-layer MLP, DTensor output (use_local_output=False).
    torch.manual_seed(2)
    mlp = nn.Sequential(nn.Linear(HIDDEN, 128), nn.GELU(), nn.Linear(128, HIDDEN))
    x = torch.randn(5, HIDDEN)
    with torch.no_grad():
        res["mlp_ref"] = mlp(x)
    parallelize_module(
        mlp, mesh,
        {"0": ColwiseParallel(), "2": CompressedRowwiseParallel("mxint8", algorithm="allgather",
                                                                 use_local_output=False)},
    )
    with torch.no_grad(), track_comm() as stats:
        out = mlp(x)
    res["mlp_out_is_dtensor"] = isinstance(out, DTensor)
    res["mlp_out_placements"] = tuple(out.placements) == (Replicate(),) if isinstance(out, DTensor) else None
    res["mlp_out"] = out.to_local() if isinstance(out, DTensor) else out
    res["mlp_records"] = record_dicts(stats)

    # Model E: outlier channels calibrated on the unsharded model, saved and loaded with the plan;
    # then rotation on top, rotation alone, and rotation through two-shot.
    calib = calibrate_outliers(copy.deepcopy(base), [token_ids()], max_channels=8, source="tiny random token ids")
    path = Path(out_dir) / f"calibration-rank{rank}.json"
    calib.save(path)
    loaded = OutlierCalibration.load(path)
    res["calibration"], res["calibration_roundtrip"] = loaded.to_dict(), loaded == calib
    outl = parallelize_llama(copy.deepcopy(base), mesh, "mxfp4_e2m1", algorithm="allgather",
                             outliers=loaded, outlier_k=OUTLIER_K)
    res["outlier_described"] = sorted({c.describe() for c in
                                       (getattr(m, COMM_ATTR) for m in outl.modules() if hasattr(m, COMM_ATTR))})
    res["outlier_logits"], res["outlier_records"] = forward_tracked(outl, ids)
    channels = loaded.top(OUTLIER_K)
    res["emu_outlier_logits"] = emulated("mxfp4_e2m1", "allgather", channels=channels)
    res["emu_both_logits"] = emulated(ROTATED_FP4, "allgather", channels=channels)
    res["emu_rot_logits"] = emulated(ROTATED_FP4, "allgather")
    res["emu_rot2s_logits"] = emulated(ROTATED_FP4, "two_shot")
    set_comm_format(outl, ROTATED_FP4, algorithm="allgather")
    res["both_logits"], res["both_records"] = forward_tracked(outl, ids)
    res["removed_leaves"] = set_outlier_channels(outl, None)
    res["rot_logits"], res["rot_records"] = forward_tracked(outl, ids)
    set_comm_format(outl, ROTATED_FP4, algorithm="two_shot")
    res["rot2s_logits"], res["rot2s_records"] = forward_tracked(outl, ids)

    # The style with outlier channels on a plain MLP: those output channels are exact sums.
    torch.manual_seed(3)
    mlp2 = nn.Sequential(nn.Linear(HIDDEN, 128), nn.GELU(), nn.Linear(128, HIDDEN))
    with torch.no_grad():
        mlp2[2].weight[MLP_OUTLIERS] *= 40.0  # consistent outlier features
        res["mlp2_ref"] = mlp2(x)
    parallelize_module(mlp2, mesh, {"0": ColwiseParallel(), "2": CompressedRowwiseParallel(
        "mxfp4_e2m1", algorithm="allgather", outlier_channels=MLP_OUTLIERS)})
    with torch.no_grad(), track_comm() as stats:
        res["mlp2_out"] = mlp2(x)
    res["mlp2_records"] = record_dicts(stats)

    dist.barrier()
    torch.save(res, Path(out_dir) / f"rank{rank}.pt")
