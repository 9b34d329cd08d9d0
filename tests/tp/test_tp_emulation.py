"""Distributed TP logits equal the single-process emulation bit for bit.

For every compressed algorithm (one-shot and two-shot; plain, rotated, with outlier channels; an
E8M0-scaled and a tensor-scaled format; bf16 and fp32 wires) the logits of a model sharded over
3 gloo ranks equal those of :func:`mxcomm.bench.emulation.emulated_tensor_parallel` in one
process, for tiny random Llama and Qwen2 models and for the real SmolLM2-135M. Uncompressed TP
(the group's own all-reduce) is compared with the unsharded model.

Every process runs torch with one thread (``run_ranks(threads=1)``; rank 0 also computes the
emulation), so the GEMMs of the ranks and of the emulation reduce in the same order.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from mxcomm.bench.launch import run_ranks
from mxcomm.bench.settings import CommSetting

pytest.importorskip("transformers")

from tests.tp import _emulation_worker as W  # noqa: E402

WORLD = 3
FAMILIES = ("llama", "qwen2")
SEED = 7
pytestmark = pytest.mark.multiprocess

UNCOMPRESSED = CommSetting(None, algorithm="none", comm_dtype="float32")
TINY_COMPRESSED = [
    CommSetting("mxfp8_e4m3", algorithm="allgather"),
    CommSetting("mxfp4_e2m1", algorithm="allgather"),
    CommSetting("mxfp4_e2m1", algorithm="two_shot"),
    CommSetting("mxfp4_e2m1", algorithm="allgather", rotation_seed=SEED),
    CommSetting("mxfp4_e2m1", algorithm="two_shot", rotation_seed=SEED),
    CommSetting("mxfp4_e2m1", algorithm="allgather", outliers=4),
    CommSetting("mxfp4_e2m1", algorithm="two_shot", outliers=4),
    CommSetting("mxfp4_e2m1", algorithm="allgather", rotation_seed=SEED, outliers=4),
    CommSetting("mxfp4_e2m1", algorithm="two_shot", rotation_seed=SEED, outliers=4),
    CommSetting("nvfp4", algorithm="two_shot"),  # tensor scale: per chunk, re-derived for the re-encode
    CommSetting("mxfp6_e2m3", algorithm="allgather", comm_dtype="float32"),
]
SMOLLM2_COMPRESSED = [
    CommSetting("mxfp8_e4m3", algorithm="allgather"),
    CommSetting("mxfp6_e2m3", algorithm="two_shot"),
]


def _run(tmp_path, job: dict) -> list[dict]:
    run_ranks(W.run, WORLD, ({**job, "out": str(tmp_path)},), threads=1, timeout_s=600)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _smollm2_unavailable() -> str | None:
    from mxcomm.bench.sweep import source_unavailable

    return source_unavailable("smollm2")


@pytest.fixture(scope="module")
def ranks(request, tmp_path_factory) -> list[dict]:
    """One spawn of 3 ranks for the tiny models and, when a selected test wants it, SmolLM2-135M."""
    settings = [UNCOMPRESSED, *TINY_COMPRESSED]
    job: dict = {"settings": [asdict(s) for s in settings], "families": FAMILIES}
    if any("smollm2" in item.name for item in request.session.items) and not _smollm2_unavailable():
        from mxcomm.bench.smollm2 import prepare_assets

        assets = prepare_assets(log=lambda msg: None)  # converted once, cached outside the repository
        job.update(assets=assets.to_dict(), window_tokens=128,
                   smollm2_settings=[asdict(s) for s in (UNCOMPRESSED, *SMOLLM2_COMPRESSED)])
    return _run(tmp_path_factory.mktemp("tp"), job)


def _assert_bitwise(tp: torch.Tensor, emulated: torch.Tensor, what: str) -> None:
    assert tp.dtype == emulated.dtype and tp.shape == emulated.shape, what
    diff = (tp - emulated).abs().max().item()
    assert torch.equal(tp.view(torch.int32), emulated.view(torch.int32)), f"{what}: max |TP - emulation| = {diff}"


def _assert_uncompressed_close(tp: torch.Tensor, unsharded: torch.Tensor) -> None:
    # An uncompressed all-reduce over gloo sums the fp32 partials in the ring's own order, which no
    # single process reproduces, so only closeness is checked: fp32 rounding differences (~1e-7
    # relative per sum) carried through the layers. A lossy step (bf16 wire: ~4e-3 relative per
    # all-reduce) would exceed this bound by orders of magnitude.
    torch.testing.assert_close(tp, unsharded, rtol=1e-5, atol=1e-4 * unsharded.abs().max().item())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("setting", TINY_COMPRESSED, ids=lambda s: s.label.replace(" ", "-"))
def test_tiny_tp_logits_equal_the_emulation_bitwise(ranks, family, setting):
    r0 = ranks[0][family]
    tp, emulated = r0["tp"][setting.label], r0["emulated"][setting.label]
    _assert_bitwise(tp, emulated, f"{family} {setting.label}")
    assert torch.isfinite(tp).all()
    assert not torch.equal(tp, r0["unsharded"])  # the all-reduces really were lossy


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_settings_are_distinct_and_ranks_agree(ranks, family):
    r0 = ranks[0][family]
    # rotation and outlier channels change the result on both sides: neither side ignored them
    digests = [ranks[0][family]["digest"][s.label] for s in TINY_COMPRESSED]
    assert len(set(digests)) == len(digests)
    for rank in ranks[1:]:
        assert rank[family]["digest"] == r0["digest"]


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_uncompressed_tp_matches_unsharded(ranks, family):
    r0 = ranks[0][family]
    _assert_uncompressed_close(r0["tp"][UNCOMPRESSED.label], r0["unsharded"])


@pytest.mark.slow
def test_smollm2_tp3_logits_equal_the_emulation_bitwise(ranks):
    """SmolLM2-135M, TP=3, one 128-token window: compressed TP == emulation bitwise; none ~= unsharded."""
    reason = _smollm2_unavailable()
    if reason:
        pytest.skip(reason)
    r0 = ranks[0]["smollm2"]
    assert r0["unsharded"].shape == (1, 128, 49152)
    for s in SMOLLM2_COMPRESSED:
        _assert_bitwise(r0["tp"][s.label], r0["emulated"][s.label], f"SmolLM2 {s.label}")
        assert not torch.equal(r0["tp"][s.label], r0["unsharded"])
    _assert_uncompressed_close(r0["tp"][UNCOMPRESSED.label], r0["unsharded"])
    for rank in ranks[1:]:
        assert rank["smollm2"]["digest"] == r0["digest"]
