"""Per-module communication plans: JSON round trip, validation, and how entries resolve (one process, no group)."""

from __future__ import annotations

import json

import pytest
import torch

from mxcomm.formats import BlockFormat, FloatElement, get_format, register_format, unregister_format
from mxcomm.tp import CommPlan, PlanEntry, TPPlanError, load_plan, save_plan
from mxcomm.tp.hf import plan_comms, row_parallel_modules
from mxcomm.tp.outliers import OutlierCalibration

pytest.importorskip("transformers")

from tests.tp._hf_worker import tiny_model  # noqa: E402

ROTATED = get_format("mxfp4_e2m1").with_options(rotation_seed=7)
LAYER0 = "model.layers.0"


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", 2)


def full_plan(model) -> CommPlan:
    return CommPlan(model, [
        PlanEntry("*", ROTATED, "allgather"),
        {"module": "model.layers.*.mlp.down_proj", "fmt": get_format("mxint8").with_options(rounding="stochastic"),
         "algorithm": "two_shot", "comm_dtype": torch.bfloat16},
        {"module": "model.embed_tokens", "format": "none", "comm_dtype": "compute"},
        PlanEntry(f"{LAYER0}.self_attn.o_proj", outlier_channels=[9, 1, 5]),
    ], description="hand-tuned")


def test_save_load_round_trip(llama, tmp_path):
    plan = full_plan(llama)
    save_plan(plan, tmp_path / "plan.json")
    assert load_plan(tmp_path / "plan.json") == plan
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert doc["format"] == "mxcomm-tp-plan" and doc["version"] == 1 and doc["description"] == "hand-tuned"
    assert doc["model"]["architecture"] == "LlamaForCausalLM"
    assert doc["model"]["config"]["num_hidden_layers"] == 2 and doc["model"]["config"]["vocab_size"] == 96
    entries = doc["entries"]
    assert entries[0] == {"module": "*", "format": {"name": "mxfp4_e2m1", "rotation_seed": 7},
                          "algorithm": "allgather"}
    assert entries[1]["format"] == {"name": "mxint8", "rounding": "stochastic"}
    assert entries[1]["comm_dtype"] == "bfloat16"
    assert entries[2] == {"module": "model.embed_tokens", "format": "none", "comm_dtype": "compute"}
    assert entries[3] == {"module": f"{LAYER0}.self_attn.o_proj", "outlier_channels": [1, 5, 9]}


def test_entries_cascade_over_the_defaults(llama):
    comms = plan_comms(llama, 2, "mxfp8_e4m3", algorithm="allgather", plan=full_plan(llama),
                       outliers={"model.layers.1.self_attn.o_proj": [3]})
    assert set(comms) == set(row_parallel_modules(llama)) == {
        "model.embed_tokens", *(f"model.layers.{i}.{p}" for i in (0, 1) for p in ("self_attn.o_proj", "mlp.down_proj"))}
    described = {n: c.describe() for n, c in comms.items()}
    assert described == {
        "model.embed_tokens": "none",
        f"{LAYER0}.self_attn.o_proj": "mxfp4_e2m1.rot7[rne]/allgather+3ch",
        f"{LAYER0}.mlp.down_proj": "mxint8[stochastic]/two_shot",
        "model.layers.1.self_attn.o_proj": "mxfp4_e2m1.rot7[rne]/allgather+1ch",  # from outliers=
        "model.layers.1.mlp.down_proj": "mxint8[stochastic]/two_shot",
    }
    assert comms[f"{LAYER0}.mlp.down_proj"].comm_dtype == torch.bfloat16
    assert comms[f"{LAYER0}.self_attn.o_proj"].comm_dtype is None
    # without a plan: the defaults everywhere; a later entry overrides only the fields it sets
    assert {c.describe() for c in plan_comms(llama, 2, "mxfp8_e4m3", algorithm="two_shot").values()} == \
        {"mxfp8_e4m3[rne]/two_shot"}
    partial = CommPlan(llama, [{"module": "*.mlp.*", "algorithm": "allgather"}])
    assert plan_comms(llama, 2, "mxint8", algorithm="two_shot", plan=partial)[f"{LAYER0}.mlp.down_proj"].describe() \
        == "mxint8[rne]/allgather"


def test_outlier_calibration_becomes_a_plan(llama):
    cal = OutlierCalibration({f"{LAYER0}.mlp.down_proj": (4, 2, 8)}, {f"{LAYER0}.mlp.down_proj": (3.0, 2.0, 1.0)},
                             hidden=64, tokens=10, source="tiny")
    plan = CommPlan.from_outliers(llama, cal, k=2)
    assert plan.entries == (PlanEntry(f"{LAYER0}.mlp.down_proj", outlier_channels=(2, 4)),) and plan.description == "tiny"
    comms = plan_comms(llama, 2, "mxfp4_e2m1", outliers=cal, outlier_k=1)
    assert comms[f"{LAYER0}.mlp.down_proj"].outlier_channels.tolist() == [4]


@pytest.mark.parametrize("entry,needle", [
    ({"module": "model.layers.5.mlp.down_proj", "format": "mxint8"}, "matches no module"),
    ({"module": f"{LAYER0}.mlp.up_proj", "format": "mxint8"}, "has TP style 'colwise'"),
    ({"module": f"{LAYER0}.mlp.down_proj", "outlier_channels": [64]}, "outside its 64 output channels"),
])
def test_entries_that_do_not_fit_the_model(llama, entry, needle):
    with pytest.raises(TPPlanError, match="model.layers") as info:
        plan_comms(llama, 2, "mxfp8_e4m3", plan=CommPlan(llama, [entry]))
    assert needle in str(info.value)


@pytest.mark.parametrize("entry,needle", [
    ({"module": "*", "format": "mxfp5_bogus"}, "plan entry '*': unknown format 'mxfp5_bogus'"),
    ({"module": "*", "algorithm": "ring"}, "plan entry '*': algorithm must be one of"),
    ({"module": "*", "comm_dtype": "int8"}, "plan entry '*': comm_dtype must be one of"),
    ({"module": "*", "outlier_channels": [-1]}, "plan entry '*': outlier_channels must be non-negative"),
    ({"module": "*", "fromat": "mxint8"}, "plan entry '*': unknown fields ['fromat']"),
    ({"format": "mxint8"}, "'module' string"),
])
def test_malformed_entries_name_themselves(llama, entry, needle):
    with pytest.raises(TPPlanError) as info:
        CommPlan(llama, [entry])
    assert needle in str(info.value)


def test_loading_a_bad_plan_names_the_problem(llama, tmp_path):
    doc = full_plan(llama).to_dict()
    path = tmp_path / "plan.json"
    for mutate, needle in [
        (lambda d: d.update(version=3), "version 3"),
        (lambda d: d["entries"][0].update(gather_format="mxfp6_e2m3"), "cannot hold the fields"),  # a v1 doc
        (lambda d: d.update(format="something"), "not an mxcomm TP plan"),
        (lambda d: d["entries"][0].update(format={"name": "mxfp9"}), "plan entry '*': unknown format 'mxfp9'"),
        (lambda d: d["entries"][0].update(format={"name": "mxfp4_e2m1", "block_size": 16}), "plan entry '*'"),
    ]:
        bad = json.loads(json.dumps(doc))
        mutate(bad)
        path.write_text(json.dumps(bad))
        with pytest.raises(TPPlanError) as info:
            load_plan(path)
        assert needle in str(info.value)
    path.write_text("{")
    with pytest.raises(TPPlanError, match="cannot read TP plan"):
        load_plan(path)


def test_gather_formats_need_version_2_and_resolve(llama, tmp_path):
    plan = CommPlan(llama, [
        {"module": "*", "format": ROTATED, "algorithm": "two_shot", "gather_format": "mxfp6_e2m3"},
        {"module": "model.embed_tokens", "format": "none"},
        {"module": f"{LAYER0}.mlp.down_proj", "gather_format": "none"},  # back to the format itself
    ])
    save_plan(plan, tmp_path / "plan.json")
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert doc["version"] == 2 and doc["entries"][0]["gather_format"] == "mxfp6_e2m3"
    assert doc["entries"][2]["gather_format"] == "none"
    assert load_plan(tmp_path / "plan.json") == plan
    comms = plan_comms(llama, 2, plan=plan)
    assert comms[f"{LAYER0}.self_attn.o_proj"].describe() == "mxfp4_e2m1.rot7[rne]/two_shot>mxfp6_e2m3"
    assert comms[f"{LAYER0}.mlp.down_proj"].gather_fmt is None
    # a gather format rotated unlike the format cannot run: refused with the module's name
    bad = CommPlan(llama, [{"module": "*", "format": ROTATED, "algorithm": "two_shot",
                            "gather_format": {"name": "mxfp6_e2m3", "rotation_seed": 8}},
                           {"module": "model.embed_tokens", "format": "none", "gather_format": "none"}])
    with pytest.raises(TPPlanError, match="model.layers.0.self_attn.o_proj: gather format"):
        plan_comms(llama, 2, plan=bad)


def test_a_plan_for_another_model_is_refused(llama):
    plan = CommPlan(tiny_model("llama", 2, num_hidden_layers=3), [{"module": "*", "format": "mxint8"}])
    with pytest.raises(TPPlanError, match=r"num_hidden_layers=3 != 2"):
        plan_comms(llama, 2, "mxfp8_e4m3", plan=plan)
    with pytest.raises(TPPlanError, match="architecture Qwen2ForCausalLM != LlamaForCausalLM"):
        plan_comms(llama, 2, plan=CommPlan(tiny_model("qwen2", 2), []))


def test_custom_formats_save_once_registered(llama, tmp_path):
    custom = BlockFormat("test_plan_fp5", FloatElement(2, 2), block_size=16)
    plan = CommPlan(llama, [PlanEntry("*", custom)])
    with pytest.raises(TPPlanError, match="plan entry '\\*': format 'test_plan_fp5' is not a registered format"):
        save_plan(plan, tmp_path / "plan.json")
    register_format(custom)
    try:
        save_plan(plan, tmp_path / "plan.json")
        assert load_plan(tmp_path / "plan.json") == plan
    finally:
        unregister_format("test_plan_fp5")
    with pytest.raises(TPPlanError, match="unknown format 'test_plan_fp5'"):
        load_plan(tmp_path / "plan.json")


def test_heads_the_world_size_does_not_divide(llama):
    with pytest.raises(TPPlanError, match=r"tensor-parallel size 3 must divide .*num_attention_heads"):
        plan_comms(llama, 3, "mxfp8_e4m3")


def test_the_committed_smollm2_plan_fits_smollm2_at_tp3():
    """docs/plans/smollm2-135m-tp3.json (written by ``mxcomm tune``) resolves onto SmolLM2-135M's shape at TP=3."""
    from pathlib import Path

    from transformers import LlamaConfig, LlamaForCausalLM

    plan = load_plan(Path(__file__).parents[2] / "docs" / "plans" / "smollm2-135m-tp3.json")
    with torch.device("meta"):  # the architecture alone: no weights needed to resolve a plan
        model = LlamaForCausalLM(LlamaConfig(**plan.model.config))
    comms = plan_comms(model, 3, plan=plan)
    rowwise = [n for n in row_parallel_modules(model, 3) if n != "model.embed_tokens"]
    assert len(rowwise) == 60 and all(comms[n].compressed and comms[n].comm_dtype == torch.bfloat16 for n in rowwise)
    with torch.device("meta"):  # another model (more layers) is refused
        other = LlamaForCausalLM(LlamaConfig(**{**plan.model.config, "num_hidden_layers": 31}))
    with pytest.raises(TPPlanError):
        plan_comms(other, 3, plan=plan)
