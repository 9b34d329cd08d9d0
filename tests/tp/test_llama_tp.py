"""Tensor parallelism of a tiny random Llama over 2 gloo ranks, compressed and not.

The ranks are spawned once per module (tests/tp/_tp_worker.py runs every
scenario); the tests below inspect what each rank returned.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from torch.distributed.tensor import Shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

from mxcomm.bench.launch import run_ranks
from mxcomm.collectives import DESCRIPTOR_NBYTES
from mxcomm.errors import FormatError
from mxcomm.formats import get_format
from mxcomm.tp import CompressedRowwiseParallel, TPPlanError, llama_tp_plan

pytest.importorskip("transformers")

from tests.tp import _tp_worker as W  # noqa: E402

WORLD = 2
NUMEL = W.BATCH * W.SEQ * W.HIDDEN  # elements of one row-parallel output (fp32)
pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="mxcomm-tp-") as tmp:
        run_ranks(W.run, WORLD, (tmp,), threads=1, timeout_s=300)
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def allgather_sent(fmt_name: str) -> int:
    fmt = get_format(fmt_name)
    return (WORLD - 1) * (DESCRIPTOR_NBYTES + fmt.packed_nbytes((NUMEL,)))


def two_shot_sent(fmt_name: str) -> int:
    fmt = get_format(fmt_name)
    chunk = -(-NUMEL // WORLD)
    chunk = -(-chunk // fmt.block_size) * fmt.block_size
    return (WORLD - 1) * DESCRIPTOR_NBYTES + 2 * (WORLD - 1) * fmt.packed_nbytes((chunk,))


def ring_logical(elem_size: int) -> int:
    return 2 * (WORLD - 1) * NUMEL * elem_size // WORLD


# -- numerics -------------------------------------------------------------------------------------


def test_none_logits_equal_unsharded(ranks):
    for r in ranks:
        torch.testing.assert_close(r["none_logits"], r["ref_logits"], atol=2e-5, rtol=1e-5)


def test_uncompressed_plan_logits_equal_unsharded(ranks):
    for r in ranks:
        torch.testing.assert_close(r["plain_logits"], r["ref_logits"], atol=2e-5, rtol=1e-5)
        assert r["plain_records"] == []


def test_all_ranks_bitwise_identical(ranks):
    for key in ("none_logits", "fp8_logits", "fp8_2s_logits", "fp4_logits", "bf16_logits", "mixed_logits",
                "mlp_only_logits", "mlp_out"):
        assert torch.equal(ranks[0][key], ranks[1][key]), key


def test_compressed_tp_logits_equal_the_emulation_bitwise(ranks):
    # what the ranks computed = the single-process emulation (mxcomm.bench.emulation), bit for bit
    for r in ranks:
        for key in ("fp8_logits", "fp8_2s_logits", "fp4_logits", "bf16_logits"):
            assert torch.equal(r[key], r[f"emu_{key}"]), key
            assert not torch.equal(r[key], r["ref_logits"]), key  # compression really happened
    r = ranks[0]
    # only the MLP compressed (the attention's all-reduce is PyTorch's own, not emulated bitwise):
    # strictly between "none" and everything compressed
    assert 0 < rel_err(r["mlp_only_logits"], r["ref_logits"]) < rel_err(r["fp8_logits"], r["ref_logits"])


def test_backward_through_compressed_style_matches_unsharded_grads(ranks):
    for rank, r in enumerate(ranks):
        # o_proj / down_proj weights are Shard(1): this rank holds a column slice of the gradient
        for key in ("o_proj", "down_proj"):
            ref = r[f"ref_grad_{key}"]
            cols = ref.shape[1] // WORLD
            torch.testing.assert_close(
                r[f"none_grad_{key}"], ref[:, rank * cols : (rank + 1) * cols], atol=1e-5, rtol=1e-4
            )


# -- accounting -----------------------------------------------------------------------------------


def _check_records(records, *, count, algorithm, fmt, sent, logical, dtype="float32"):
    assert len(records) == count
    for rec in records:
        assert rec["op"] == "all_reduce"
        assert rec["algorithm"] == algorithm
        assert rec["format"] == fmt
        assert rec["world_size"] == WORLD
        assert rec["numel"] == NUMEL
        assert rec["dtype"] == dtype
        assert rec["bytes_sent"] == sent
        assert rec["bytes_received"] == sent
        assert rec["logical_bytes"] == logical


def test_two_compressed_all_reduces_per_layer_with_predicted_bytes(ranks):
    for r in ranks:
        n_calls = 2 * W.LAYERS
        _check_records(r["fp8_records"], count=n_calls, algorithm="allgather", fmt="mxfp8_e4m3",
                       sent=allgather_sent("mxfp8_e4m3"), logical=ring_logical(4))
        _check_records(r["fp8_2s_records"], count=n_calls, algorithm="two_shot", fmt="mxfp8_e4m3",
                       sent=two_shot_sent("mxfp8_e4m3"), logical=ring_logical(4))
        _check_records(r["fp4_records"], count=n_calls, algorithm="allgather", fmt="mxfp4_e2m1",
                       sent=allgather_sent("mxfp4_e2m1"), logical=ring_logical(4))
        # bf16 wire: the payload is the same, the uncompressed baseline is half as large
        _check_records(r["bf16_records"], count=n_calls, algorithm="allgather", fmt="mxfp8_e4m3",
                       sent=allgather_sent("mxfp8_e4m3"), logical=ring_logical(2), dtype="bfloat16")
        # mxcomm's uncompressed path is accounted too (descriptor + ring bytes)
        _check_records(r["none_records"], count=n_calls, algorithm="none", fmt="",
                       sent=(WORLD - 1) * DESCRIPTOR_NBYTES + ring_logical(4), logical=ring_logical(4))
        assert r["set_format_changed"] == n_calls


def test_unverified_modules_skip_only_the_descriptor(ranks):
    for r in ranks:
        n_calls = 2 * W.LAYERS
        # bitwise the verified results; exactly the descriptor's bytes fewer on the wire
        assert torch.equal(r["fp8_2s_unverified_logits"], r["fp8_2s_logits"])
        assert torch.equal(r["none_unverified_logits"], r["none_logits"])
        _check_records(r["fp8_2s_unverified_records"], count=n_calls, algorithm="two_shot", fmt="mxfp8_e4m3",
                       sent=two_shot_sent("mxfp8_e4m3") - (WORLD - 1) * DESCRIPTOR_NBYTES, logical=ring_logical(4))
        _check_records(r["none_unverified_records"], count=n_calls, algorithm="none", fmt="",
                       sent=ring_logical(4), logical=ring_logical(4))


def test_uncompressed_layers_really_uncompressed(ranks):
    for r in ranks:
        recs = r["mixed_records"]
        # layer 0 (mxfp4), layer 1 absent (PyTorch's RowwiseParallel), layer 2 (mxint8)
        assert [x["format"] for x in recs] == ["mxfp4_e2m1", "mxfp4_e2m1", "mxint8", "mxint8"]
        assert [x["bytes_sent"] for x in recs] == [allgather_sent("mxfp4_e2m1")] * 2 + [allgather_sent("mxint8")] * 2
        assert r["mixed_has_comm"] == {
            "0.self_attn.o_proj": True, "0.mlp.down_proj": True,
            "1.self_attn.o_proj": False, "1.mlp.down_proj": False,
            "2.self_attn.o_proj": True, "2.mlp.down_proj": True,
        }
        mlp_only = r["mlp_only_records"]
        assert len(mlp_only) == W.LAYERS and {x["format"] for x in mlp_only} == {"mxfp8_e4m3"}


def test_style_on_plain_mlp_gives_replicate_dtensor(ranks):
    for r in ranks:
        assert r["mlp_out_is_dtensor"] and r["mlp_out_placements"]
        assert len(r["mlp_records"]) == 1 and r["mlp_records"][0]["format"] == "mxint8"
        assert 0 < rel_err(r["mlp_out"], r["mlp_ref"]) < 0.02


def test_indivisible_heads_raise_plan_error(ranks):
    for r in ranks:
        assert r["indivisible_error"] is not None
        assert r["indivisible_error"].startswith("TPPlanError") and "num_key_value_heads" in r["indivisible_error"]


# -- outlier channels and rotation -----------------------------------------------------------------


def test_calibration_saved_and_loaded_with_the_plan(ranks):
    for r in ranks:
        assert r["calibration_roundtrip"]
        cal = r["calibration"]
        names = sorted(cal["modules"])
        assert names == sorted(f"model.layers.{i}.{p}" for i in range(W.LAYERS)
                               for p in ("self_attn.o_proj", "mlp.down_proj"))
        assert cal["tokens"] == W.BATCH * W.SEQ and cal["hidden"] == W.HIDDEN
        for m in cal["modules"].values():
            assert len(m["channels"]) == 8 and m["scores"] == sorted(m["scores"], reverse=True)
    # every rank measured the same channels (same weights, same data)
    assert ranks[0]["calibration"] == ranks[1]["calibration"]


def test_outlier_plan_sends_exactly_the_calibrated_channels(ranks):
    for r in ranks:
        assert r["outlier_described"] == [f"mxfp4_e2m1[rne]/allgather+{W.OUTLIER_K}ch"]
        recs = r["outlier_records"]
        compressed = [x for x in recs if x["op"] == "all_reduce"]
        dense = [x for x in recs if x["op"] == "outlier_channels"]
        assert len(compressed) == len(dense) == 2 * W.LAYERS
        for x in compressed:
            assert x["format"] == "mxfp4_e2m1" and x["bytes_sent"] == allgather_sent("mxfp4_e2m1")
        # k channels of every token, fp32 (the compute dtype), and the call's descriptor, to each peer
        for x in dense:
            assert x["numel"] == W.BATCH * W.SEQ * W.OUTLIER_K
            assert x["bytes_sent"] == (WORLD - 1) * (DESCRIPTOR_NBYTES + W.BATCH * W.SEQ * W.OUTLIER_K * 4)
        # the rotated format keeps the channels; removing them leaves plain compressed records
        assert sum(x["op"] == "outlier_channels" for x in r["both_records"]) == 2 * W.LAYERS
        assert {x["format"] for x in r["both_records"] if x["op"] == "all_reduce"} == {W.ROTATED_FP4.name}
        assert r["removed_leaves"] == 0
        assert all(x["op"] == "all_reduce" for x in r["rot_records"] + r["rot2s_records"])
        assert {x["algorithm"] for x in r["rot2s_records"]} == {"two_shot"}


def test_outlier_and_rotated_tp_bitwise_identical_and_equal_the_emulation(ranks):
    for key in ("outlier_logits", "both_logits", "rot_logits", "rot2s_logits", "mlp2_out"):
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    for key in ("outlier_logits", "both_logits", "rot_logits", "rot2s_logits"):
        assert torch.equal(ranks[0][key], ranks[0][f"emu_{key}"]), key
        assert not torch.equal(ranks[0][key], ranks[0]["ref_logits"]), key


def test_style_outlier_channels_are_exact_the_rest_compressed(ranks):
    for r in ranks:
        out, ref = r["mlp2_out"], r["mlp2_ref"]
        ch = W.MLP_OUTLIERS
        rest = [c for c in range(W.HIDDEN) if c not in ch]
        # the channels are fp32 sums of the two partials (only summation order differs from unsharded)
        torch.testing.assert_close(out[:, ch], ref[:, ch], atol=1e-4, rtol=1e-5)
        assert ref[:, ch].abs().mean() > 10 * ref[:, rest].abs().mean()
        assert rel_err(out[:, rest], ref[:, rest]) > 1e-3  # the rest went through mxfp4
        kinds = [x["op"] for x in r["mlp2_records"]]
        assert sorted(kinds) == ["all_reduce", "outlier_channels"]


def test_outlier_arguments_are_checked():
    plan = llama_tp_plan(2, "mxfp4", outlier_channels={"model.layers.1.mlp.down_proj": [5, 1, 5]})
    assert plan["model.layers.1.mlp.down_proj"].comm.outlier_channels.tolist() == [1, 5]
    assert plan["model.layers.0.mlp.down_proj"].comm.outlier_channels is None
    with pytest.raises(TPPlanError):  # a module the plan leaves uncompressed
        llama_tp_plan(2, "mxfp4", uncompressed_layers=[1], outlier_channels={"model.layers.1.mlp.down_proj": [5]})
    with pytest.raises(TPPlanError):
        CompressedRowwiseParallel("mxfp4", outlier_channels=[-1])
    with pytest.raises(TPPlanError):
        CompressedRowwiseParallel("mxfp4", outlier_channels=["a"])


def test_calibration_file_errors(tmp_path):
    from mxcomm.tp import OutlierCalibration

    cal = OutlierCalibration({"a": (3, 1)}, {"a": (2.0, 1.0)}, hidden=4, tokens=10)
    assert cal.top(1) == {"a": [3]} and cal.max_k == 2
    with pytest.raises(TPPlanError):
        cal.top(3)
    path = tmp_path / "cal.json"
    cal.save(path)
    assert OutlierCalibration.load(path) == cal
    path.write_text("{not json")
    with pytest.raises(TPPlanError):
        OutlierCalibration.load(path)
    path.write_text('{"version": 1, "modules": {"a": {"channels": [9], "scores": [1.0]}}, "hidden": 4, "tokens": 1}')
    with pytest.raises(TPPlanError):  # channel out of range
        OutlierCalibration.load(path)
    path.write_text('{"version": 2}')
    with pytest.raises(TPPlanError):
        OutlierCalibration.load(path)
    with pytest.raises(TPPlanError):
        OutlierCalibration.load(tmp_path / "missing.json")


# -- plans and argument checks (no processes) -----------------------------------------------------


def test_plan_layout():
    plan = llama_tp_plan(4, "mxfp6_e2m3", algorithm="two_shot", uncompressed_layers=[0],
                         layer_formats={3: "nvfp4"}, compress=["self_attn.o_proj", "mlp.down_proj"])
    assert len(plan) == 4 * 7
    for i in range(4):
        for proj in ("q_proj", "k_proj", "v_proj"):
            assert type(plan[f"model.layers.{i}.self_attn.{proj}"]) is ColwiseParallel
        for proj in ("gate_proj", "up_proj"):
            assert type(plan[f"model.layers.{i}.mlp.{proj}"]) is ColwiseParallel
    assert type(plan["model.layers.0.self_attn.o_proj"]) is RowwiseParallel
    assert type(plan["model.layers.0.mlp.down_proj"]) is RowwiseParallel
    style = plan["model.layers.1.mlp.down_proj"]
    assert isinstance(style, CompressedRowwiseParallel)
    assert style.comm.fmt.name == "mxfp6_e2m3" and style.comm.algorithm == "two_shot"
    assert plan["model.layers.3.self_attn.o_proj"].comm.fmt.name == "nvfp4"


def test_plan_and_style_reject_bad_arguments():
    with pytest.raises(TPPlanError):
        llama_tp_plan(4, "mxfp8_e4m3", uncompressed_layers=[4])
    with pytest.raises(TPPlanError):
        llama_tp_plan(4, "mxfp8_e4m3", compress=["mlp.up_proj"])
    with pytest.raises(TPPlanError):
        llama_tp_plan(0, "mxfp8_e4m3")
    with pytest.raises(FormatError):
        CompressedRowwiseParallel("no_such_format")
    with pytest.raises(TPPlanError):
        CompressedRowwiseParallel("mxfp8_e4m3", algorithm="ring")
    with pytest.raises(TPPlanError):
        CompressedRowwiseParallel("mxfp8_e4m3", output_layouts=Shard(1))
    with pytest.raises(TPPlanError):
        CompressedRowwiseParallel("mxfp8_e4m3", comm_dtype=torch.int8)
    with pytest.raises(TPPlanError):
        CompressedRowwiseParallel("mxfp8_e4m3", verify="no")
    assert CompressedRowwiseParallel("mxfp8_e4m3", verify=False).comm.verify is False
    assert CompressedRowwiseParallel("none").comm.fmt is None
