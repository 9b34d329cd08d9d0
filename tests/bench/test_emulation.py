"""The single-process emulation's own contract (its bitwise agreement with real TP: tests/tp/test_tp_emulation.py)."""

from __future__ import annotations

import pytest
import torch

from mxcomm.bench.emulation import (
    EmulatedReduction,
    emulated_all_reduce,
    emulated_tensor_parallel,
    rank_partials,
)
from mxcomm.bench.settings import CommSetting
from mxcomm.formats import get_format
from mxcomm.kernels import decode, encode
from mxcomm.tp import TPPlanError


def _partials(n: int = 3, shape=(5, 40)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=g).to(torch.bfloat16) for _ in range(n)]


def test_one_shot_is_the_fp32_sum_of_the_decoded_partials():
    parts, fmt = _partials(), get_format("mxfp4_e2m1")
    # blocks of the flattened tensor, as the collectives encode it (40 columns: blocks straddle rows)
    decoded = [decode(encode(p.reshape(-1), fmt), dtype=torch.float32).view(p.shape) for p in parts]
    expected = ((decoded[0] + decoded[1]) + decoded[2]).to(torch.bfloat16)
    assert torch.equal(emulated_all_reduce(parts, fmt, "allgather"), expected)


def test_two_shot_quantizes_twice_and_keeps_the_owners_chunk_exact():
    parts, fmt = _partials(n=2, shape=(64,)), get_format("mxint8")
    out = emulated_all_reduce(parts, fmt, "two_shot")
    # chunk 0 (rank 0 owns it): rank 1's part decoded + rank 0's part exact, then re-encoded
    reduced = decode(encode(parts[1][:32], fmt), dtype=torch.float32) + parts[0][:32].float()
    assert torch.equal(out[:32], decode(encode(reduced, fmt), dtype=torch.bfloat16))
    assert out.shape == (64,) and out.dtype == torch.bfloat16


def test_outlier_channels_are_summed_exactly():
    parts = [p.float() * 0.1 for p in _partials()]
    for p in parts:
        p[:, 7] = 1000.0 + torch.arange(5.0)  # a huge channel: it would flush its block in 4 bits
    total = EmulatedReduction(get_format("mxfp4_e2m1"), "allgather")(parts, torch.tensor([7]))
    assert torch.equal(total[:, 7], parts[0][:, 7] + parts[1][:, 7] + parts[2][:, 7])
    plain = EmulatedReduction(get_format("mxfp4_e2m1"), "allgather")(parts)
    assert (plain[:, :7] - sum(parts)[:, :7]).abs().max() > (total[:, :7] - sum(parts)[:, :7]).abs().max()


def test_arguments_are_checked():
    with pytest.raises(TPPlanError, match="auto"):
        EmulatedReduction.of(CommSetting("mxfp8_e4m3", algorithm="auto"))
    with pytest.raises(TPPlanError):
        emulated_all_reduce(_partials(), get_format("mxfp8_e4m3"), "ring")
    with pytest.raises(TPPlanError, match="shape"):
        emulated_all_reduce([torch.zeros(4), torch.zeros(5)], get_format("mxfp8_e4m3"), "allgather")
    with pytest.raises(TPPlanError, match="divide"):
        rank_partials(torch.nn.Linear(10, 4, bias=False), torch.zeros(2, 10), 3)


def test_the_model_is_restored_and_names_are_checked():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                                      num_attention_heads=6, num_key_value_heads=3, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
        before = [type(m) for m in model.modules()]
        with emulated_tensor_parallel(model, 3, EmulatedReduction(get_format("mxfp4_e2m1"))):
            lossy = model(ids).logits
        assert [type(m) for m in model.modules()] == before and torch.equal(model(ids).logits, ref)
        assert not torch.equal(lossy, ref)
        with pytest.raises(TPPlanError, match="not row-parallel"):
            with emulated_tensor_parallel(model, 3, EmulatedReduction(None, "none"), {"model.layers.0.mlp.up_proj": [1]}):
                pass
