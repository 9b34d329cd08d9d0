"""Per-module tuning (mxcomm.bench.tuning) on a tiny random Llama: budgets respected, plans that round-trip and fit."""

from __future__ import annotations

import json

import pytest
import torch

from mxcomm.bench.emulation_hf import emulated_hf_tensor_parallel, reductions_of
from mxcomm.bench.smollm2 import EvalSetupError
from mxcomm.bench.tuning import Candidate, Sensitivity, TuneConfig, Tuner, assignment_of_plan, evaluate, uniform
from mxcomm.bench.wire_accounting import reduction_wire
from mxcomm.tp import TPPlanError, calibrate_outliers, load_plan, save_plan
from mxcomm.tp.hf import plan_comms

WORLD, HIDDEN, TOKENS = 2, 64, 24
CANDIDATES = [Candidate.parse(t) for t in (
    "none", "int3", "int3:rot:k4", "mxfp4_e2m1", "mxfp4_e2m1:rot", "mxfp4_e2m1:rot:k4", "fp5_e2m2:rot",
    "mxfp6_e2m3", "mxint8", "mxfp4_e2m1>mxfp6_e2m3:rot:k4", "mxfp4_e2m1:2s",
)]


def tiny_llama(hidden: int = HIDDEN) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=96, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # realistic spread of the activations, so that quantization shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.mul_(5.0)
    return model


@pytest.fixture(scope="module")
def tuned():
    model = tiny_llama()
    data = torch.randint(1, 96, (2, TOKENS), generator=torch.Generator().manual_seed(1))
    outliers = calibrate_outliers(model, list(data), max_channels=8, forward=lambda m, w: m.model(input_ids=w[None]))
    tuner = Tuner(model, data, outliers, TuneConfig(world_size=WORLD, sensitivity_windows=1, max_measured=5,
                                                   rounds=2), log=lambda _msg: None)
    with tuner.session():
        sens = tuner.sensitivity(CANDIDATES)
        tight = tuner.allocate(sens, max_bits=4.6, label="bits4.6")
        loose = tuner.allocate(sens, max_bits=7.0, label="bits7")
        by_ppl = tuner.allocate(sens, max_ppl_pct=1.0, label="ppl1")
        plan = tuner.plan(tight, "tiny test plan")
    return model, data, outliers, tuner, sens, tight, loose, by_ppl, plan


def test_candidates_parse_and_print():
    for c in CANDIDATES:
        assert Candidate.parse(c.label) == c
    c = Candidate.parse("mxfp4_e2m1>mxfp6_e2m3:rot:k8")
    assert c.algorithm == "two_shot" and c.gather == "mxfp6_e2m3" and c.outliers == 8 and c.rotation_seed
    with pytest.raises(EvalSetupError):
        Candidate.parse("mxfp4_e2m1:fast")
    with pytest.raises(EvalSetupError):
        Candidate("mxfp4_e2m1", gather="mxfp6_e2m3")  # a gather format needs two-shot


def test_sensitivity_measures_every_module(tuned):
    _, _, _, tuner, sens, *_ = tuned
    assert list(sens.modules) == tuner.names and len(tuner.names) == 4
    for rows in sens.modules.values():
        measured = [r for r in rows if r.kl is not None and r.candidate.compressed]
        assert 1 <= len(measured) <= 5
        assert all(r.kl >= 0 for r in measured)
        # more bits, less measured harm, across the kept front (mostly: it is a proxy's front)
        assert measured[0].kl >= measured[-1].kl
    doc = json.loads(json.dumps(sens.to_dict()))
    assert Sensitivity.from_dict(doc).to_dict() == sens.to_dict()


def test_the_bit_budget_is_respected(tuned):
    _, data, _, _, _, tight, loose, *_ = tuned
    assert tight.bits <= 4.6 and loose.bits <= 7.0 and tight.bits < loose.bits
    assert tight.predicted_kl >= loose.predicted_kl
    # the same bits from the collectives' byte formulas, module by module
    costs = [reduction_wire(c.block_format(), c.algorithm, (TOKENS, HIDDEN), 2, WORLD, c.outliers, c.gather_format())
             for c in tight.assignment.values()]
    assert tight.bits == pytest.approx(8 * sum(b for b, _ in costs) / sum(s for _, s in costs), rel=1e-12)


def test_a_loss_budget_is_corrected_end_to_end(tuned):
    *_, by_ppl, _ = tuned
    assert len(by_ppl.rounds) == 2
    assert by_ppl.rounds[0]["budget_kl"] == pytest.approx(0.00995, rel=1e-3)  # log(1.01) to start with


def test_the_plan_round_trips_and_is_what_was_measured(tuned, tmp_path):
    model, data, outliers, tuner, _, tight, _, _, plan = tuned
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    loaded = load_plan(path)
    assert loaded == plan
    assert assignment_of_plan(loaded, tuner.names, outliers) == tight.assignment
    two_shot_gather = [c for c in tight.assignment.values() if c.gather]
    assert json.loads(path.read_text())["version"] == (2 if two_shot_gather else 1)
    # the plan, as parallelize would resolve it, emulated through the model's own TP plan: the logits the
    # tuner measured
    comms = plan_comms(model, WORLD, "mxfp8_e4m3", plan=loaded)  # the plan overrides these defaults everywhere
    assert {n: comms[n].compressed for n in tuner.names} == {n: c.compressed for n, c in tight.assignment.items()}
    assert not comms["model.embed_tokens"].compressed and comms["model.embed_tokens"].comm_dtype is None
    reductions, channels = reductions_of(comms)
    ids = data[0][None]
    with torch.no_grad():
        with emulated_hf_tensor_parallel(model, WORLD, reductions, channels):
            via_plan = model(ids, use_cache=False).logits
        with tuner.session():
            tuner.emu.set_all(tight.assignment)
            via_tuner = model(ids, use_cache=False).logits
    assert torch.equal(via_plan, via_tuner)


def test_a_plan_for_another_model_is_refused(tuned):
    *_, plan = tuned
    with pytest.raises(TPPlanError, match="does not fit"):
        plan_comms(tiny_llama(hidden=2 * HIDDEN), WORLD, plan=plan)


def test_evaluation_pairs_against_the_uncompressed_setting(tuned):
    model, data, outliers, tuner, _, tight, *_ = tuned
    rows = evaluate(model, data, {"none": {}, "tuned": tight.assignment,
                                  "fp4": uniform(tuner.names, Candidate.parse("mxfp4_e2m1"))},
                    outliers=outliers, world_size=WORLD, log=lambda _msg: None)
    by = {r["label"]: r for r in rows}
    assert by["none"]["paired"]["delta_pct"] == 0 and by["tuned"]["bits"] == pytest.approx(tight.bits)
    assert by["fp4"]["paired"]["delta_pct"] != 0
    with pytest.raises(EvalSetupError, match="baseline"):
        evaluate(model, data, {"tuned": tight.assignment}, outliers=outliers, world_size=WORLD)


def test_without_measurements_the_proxy_is_allocated(tuned):
    _, _, _, tuner, sens, *_ = tuned
    proxy_only = Sensitivity.from_dict(sens.to_dict())
    for rows in proxy_only.modules.values():
        for r in rows:
            if r.candidate.compressed:
                r.kl = r.dnll = None
    with tuner.session():
        out = tuner.allocate(proxy_only, max_bits=4.6, label="proxy")
    assert out.bits <= 4.6
    chosen = {n: next(r for r in proxy_only.modules[n] if r.candidate == c) for n, c in out.assignment.items()}
    assert out.predicted_kl == pytest.approx(sum(r.proxy for r in chosen.values()))
