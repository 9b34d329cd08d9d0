"""Tiny random transformers models of several families in compressed TP, at TP=2 and TP=3.

Loaded both ways -- ``from_pretrained(tp_plan="auto")`` (transformers' own sharding) switched by
``mxcomm.tp.compress``, and an in-memory copy sharded by ``mxcomm.tp.parallelize`` -- and checked
against transformers' own TP (uncompressed), the unsharded model, and the single-process
emulation of the same plan (compressed, bit for bit). One spawn of ranks per world size runs
every family (tests/tp/_hf_worker.py); the tests below inspect what the ranks returned.
"""

from __future__ import annotations

import pytest
import torch

from mxcomm.bench.launch import run_ranks
from mxcomm.collectives.handshake import DESCRIPTOR_NBYTES
from mxcomm.collectives.planner import all_reduce_wire_bytes
from mxcomm.formats import get_format

pytest.importorskip("transformers")

from tests.collectives._harness import RANK_TIMEOUT_S  # noqa: E402
from tests.tp import _hf_worker as W  # noqa: E402

pytestmark = pytest.mark.multiprocess
WORLDS = (2, 3)
FAMILIES = tuple(W.FAMILIES)
EMULATED_FAMILIES = tuple(f for f in FAMILIES if f not in W.NOT_EMULATED)


@pytest.fixture(scope="module", params=WORLDS, ids=lambda w: f"tp{w}")
def ranks(request, tmp_path_factory) -> list[dict]:
    """Save every family's tiny model (and its per-module plan), then one spawn of ``world`` ranks runs them all."""
    import mxcomm.tp as T

    world = request.param
    root = tmp_path_factory.mktemp(f"hf-tp{world}")
    for family in FAMILIES:
        model = W.tiny_model(family, world)
        model.save_pretrained(root / family)
        T.save_plan(T.CommPlan(model, W.plan_entries(family), "test plan"), root / family / "plan.json")
    # heads the world size does not divide: those of the other world size
    W.tiny_model("llama", 5 - world).save_pretrained(root / "indivisible")
    # The ranks interleave transformers' own collectives (DTensor, from_pretrained) with mxcomm's: ranks whose
    # sequences diverge fail at the first differing collective, naming both (check_collectives). A collective that
    # stalls otherwise fails after RANK_TIMEOUT_S instead of 15 min: one wait (a rank ahead of rank 0's reference
    # work) is bounded by the whole spawn, measured at 13-24 s on the shared 2 cores (TP=2 / TP=3, with the
    # check; TP=2 took 14 s without it next to a CPU hog), so 120 s leaves a 5x margin.
    run_ranks(W.run, world, ({"root": str(root), "families": FAMILIES},), threads=1, timeout_s=RANK_TIMEOUT_S,
              check_collectives=True)
    return [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(world)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("family", FAMILIES)
def test_uncompressed_equals_transformers_tp_and_unsharded(ranks, family):
    for r in ranks:
        f = r[family]
        # mxcomm's uncompressed path runs the same all-reduce as transformers: the same logits
        assert max_abs(f["logits"]["none"], f["hf"]) <= 1e-5
        assert max_abs(f["parallelized_none"], f["hf"]) <= 1e-5
    r0 = ranks[0][family]
    torch.testing.assert_close(r0["hf"], r0["unsharded"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", EMULATED_FAMILIES)
@pytest.mark.parametrize("setting", W.EMULATED)
def test_compressed_equals_the_emulation_bitwise(ranks, family, setting):
    r0 = ranks[0][family]
    tp, emulated = r0["logits"][setting], r0["emulated"][setting]
    assert torch.equal(tp, emulated), f"{family} {setting}: max |TP - emulation| = {max_abs(tp, emulated)}"
    assert not torch.equal(tp, r0["unsharded"])  # the all-reduces really were lossy


@pytest.mark.parametrize("family", FAMILIES)
def test_mxfp8_is_close_and_parallelize_matches_from_pretrained(ranks, family):
    r0 = ranks[0][family]
    # e4m3's rounding leaves ~3% RMS noise on every value it carries; a tiny random model's logits have no
    # structure to dilute it, so the relative error of the logits is that noise (measured 3.6-6.9%, Gemma2's
    # post-norms the largest); a real model's is far smaller (docs/results.md)
    assert 0 < rel_err(r0["logits"]["mxfp8"], r0["unsharded"]) < 0.1
    assert rel_err(r0["logits"]["mxfp4_2s_bf16"], r0["unsharded"]) < 0.4
    for r in ranks:  # the same sharding and settings both ways: bit for bit the same logits
        assert torch.equal(r[family]["parallelized_mxfp8"], r[family]["logits"]["mxfp8"])
        assert torch.equal(r[family]["parallelized_plan"], r[family]["logits"]["plan"])
        # verify=False: the same numerics without the descriptor exchanges (exactly their bytes fewer)
        assert torch.equal(r[family]["parallelized_mxfp8_unverified"], r[family]["logits"]["mxfp8"])
        verified, unverified = r[family]["records"]["mxfp8"], r[family]["unverified_records"]
        assert len(unverified) == len(verified) > 0
        descriptors = (len(ranks) - 1) * DESCRIPTOR_NBYTES
        assert [u["bytes_sent"] for u in unverified] == [v["bytes_sent"] - descriptors for v in verified]


@pytest.mark.parametrize("family", FAMILIES)
def test_ranks_bitwise_identical(ranks, family):
    r0 = ranks[0][family]
    for r in ranks[1:]:
        assert r[family]["digest"] == r0["digest"]
        assert torch.equal(r[family]["parallelized_mxfp8"], r0["parallelized_mxfp8"])
        assert torch.equal(r[family]["mxfp8_tokens"], r0["mxfp8_tokens"])


@pytest.mark.parametrize("family", FAMILIES)
def test_one_mxcomm_all_reduce_per_partial_sum_module_per_forward(ranks, family):
    r0 = ranks[0][family]
    modules = r0["reduce_modules"]
    # the embedding (vocabulary-parallel) and two per layer (the MLP of Mixtral is its experts module)
    assert len(modules) == 1 + 2 * W.LAYERS and "model.embed_tokens" in modules
    expected_format = {"none": "", "mxfp8": "mxfp8_e4m3", "mxfp4_2s_bf16": "mxfp4_e2m1", "auto": "mxfp8_e4m3"}
    for r in ranks:
        f = r[family]
        for label, _ in W.SETTINGS:
            assert f[f"switched_{label}"] == len(modules)
            reduces = [x for x in f["records"][label] if x["op"] == "all_reduce"]
            assert len(reduces) == len(modules), label
            if label in expected_format:
                assert {x["format"] for x in reduces if x["algorithm"] != "none"} <= {expected_format[label]}
        assert {x["algorithm"] for x in f["records"]["mxfp4_2s_bf16"]} == {"two_shot"}
        assert {x["dtype"] for x in f["records"]["mxfp4_2s_bf16"]} == {"bfloat16"}


@pytest.mark.parametrize("family", ("llama", "starcoder2"))
def test_per_module_plan_reaches_each_module(ranks, family):
    f = ranks[0][family]
    records = f["records"]["plan"]
    reduces = [x for x in records if x["op"] == "all_reduce"]
    # forward order: embedding, then per layer the attention output and the MLP output
    assert [x["format"] for x in reduces] == ["", "mxfp4_e2m1.rot7", "mxint8", "mxfp4_e2m1.rot7", "mxint8"]
    assert [x["algorithm"] for x in reduces] == ["none", "allgather", "two_shot", "allgather", "two_shot"]
    assert [x["dtype"] for x in reduces] == ["float32", "float32", "bfloat16", "float32", "bfloat16"]
    assert [x["gather_format"] for x in reduces] == ["", "", "mxfp6_e2m3", "", "mxfp6_e2m3"]
    # the bytes of the two-phase reductions: the planner's formula (chunks aligned to both formats' blocks)
    for x in reduces[2::2]:
        wire = all_reduce_wire_bytes("two_shot", get_format("mxint8"), x["numel"], 2, len(ranks), 1 << 20,
                                     get_format("mxfp6_e2m3"))
        assert x["bytes_sent"] == wire.sent
    # the attention outputs: layer 0's channels from the plan, layer 1's from compress(outliers=...)
    assert [x["op"] for x in records].count("outlier_channels") == 2
    assert f["described"]["plan"]["model.layers.0.self_attn.o_proj"] == "mxfp4_e2m1.rot7[rne]/allgather+3ch"
    assert f["described"]["plan"]["model.layers.1.self_attn.o_proj"] == "mxfp4_e2m1.rot7[rne]/allgather+2ch"
    assert f["described"]["plan"]["model.embed_tokens"] == "none"


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_under_compressed_tp(ranks, family):
    r0 = ranks[0][family]
    hidden = W.shape(len(ranks))["hidden_size"]
    modules = len(r0["reduce_modules"])
    for r in ranks:
        f = r[family]
        assert f["mxfp8_tokens"].shape == (1, W.SEQ + W.NEW_TOKENS)
        assert torch.equal(f["none_tokens"], f["hf_tokens"])  # uncompressed: transformers' own TP generation
        reduces = [x for x in f["generate_records"] if x["op"] == "all_reduce"]
        # one forward per new token: the prompt, then one token at a time from the KV cache
        assert len(reduces) == W.NEW_TOKENS * modules
        assert {x["numel"] for x in reduces[modules:]} == {hidden}
        assert {x["numel"] for x in reduces[:modules]} == {W.SEQ * hidden}
    assert torch.equal(r0["hf_tokens"], r0["unsharded_tokens"])


def test_bad_input_raises_tp_plan_error_on_every_rank(ranks):
    errors = [r["errors"] for r in ranks]
    expected = {
        "no_plan": "has no tensor-parallel plan",
        "indivisible_heads": "must divide",
        "mesh_2d": "1-D device mesh",
        "unsharded_compress": "is not sharded",
        "unknown_format": "plan entry 'model.layers.*.mlp.down_proj': unknown format 'mxfp5_bogus'",
        "unknown_module": "plan entry 'model.layers.7.mlp.down_proj': matches no module",
        "colwise_module": "has TP style 'colwise'",
        "other_model_plan": "plan made for Qwen2ForCausalLM",
        "indivisible_compress": "must divide",
        "bad_verify": "verify must be a bool",
    }
    for key, needle in expected.items():
        for e in errors:
            assert e[key] is not None and e[key].startswith("TPPlanError: ") and needle in e[key], (key, e[key])
        assert len({e[key] for e in errors}) == 1, key  # the same error on every rank
    assert all(e["still_unsharded"] for e in errors)  # raised before sharding or communicating

