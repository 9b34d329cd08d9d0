"""Rank side of tests/tp/test_tp_emulation.py: TP logits per setting, and rank 0's single-process references.

Rank 0 computes, before the model is sharded, the unsharded logits and the logits of
:func:`mxcomm.bench.emulation.emulated_tensor_parallel` for every compressed setting;
then every rank shards the same model and runs each setting. Rank 0 saves all logits,
every rank saves a digest of its TP logits (to check the ranks agree bit for bit).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from mxcomm.bench.emulation import EmulatedReduction, emulated_tensor_parallel
from mxcomm.bench.rank_setup import apply_setting, shard_model
from mxcomm.bench.settings import CommSetting

# Tiny random models: 2 layers; hidden 72 is not a multiple of the 32-element blocks, so blocks
# straddle tokens and the last two-shot chunk ends in a partial block.
HIDDEN, HEADS, KV_HEADS, INTERMEDIATE, LAYERS, VOCAB = 72, 6, 3, 144, 2, 96
BATCH, SEQ = 2, 19
OUTLIER_CHANNELS = 8  # calibrated per module (k <= this)


def tiny_model(family: str) -> nn.Module:
    import transformers

    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),  # q/k/v with bias
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[family]
    config = config_cls(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                        max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)  # identical weights on every rank
    model = model_cls(config).eval()
    # Random init is tiny (std 0.02); scale the projections up for a realistic spread of activations.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.mul_(5.0)
    return model


def tiny_ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def compare(rank: int, world: int, model: nn.Module, ids: torch.Tensor, settings: list[CommSetting],
            calibration=None) -> dict:  # noqa: ANN001
    """Unsharded and emulated logits (rank 0), then the TP logits of every setting on the sharded model."""
    lead = rank == 0
    res: dict = {"settings": [asdict(s) for s in settings], "tp": {}, "emulated": {}, "digest": {}}
    with torch.no_grad():
        if lead:
            res["unsharded"] = model(ids).logits
            for s in settings:
                if s.block_format() is None:
                    continue  # `none` runs the group's own all-reduce: compared with the unsharded model
                channels = calibration.top(s.outliers) if s.outliers else None
                with emulated_tensor_parallel(model, world, EmulatedReduction.of(s), channels):
                    res["emulated"][s.label] = model(ids).logits
        shard_model(model, world)
        for s in settings:
            apply_setting(model, s, calibration)
            logits = model(ids).logits
            res["digest"][s.label] = _digest(logits)
            if lead:
                res["tp"][s.label] = logits
    return res


def run(rank: int, world: int, job: dict) -> None:
    settings = [CommSetting(**s) for s in job["settings"]]
    results = {}
    if job.get("assets"):
        from mxcomm.bench.smollm2 import Assets, load_model, load_tokens, windows

        assets = Assets.from_dict(job["assets"])
        ids = windows(load_tokens(assets), 1, job["window_tokens"])
        smollm2_settings = [CommSetting(**s) for s in job["smollm2_settings"]]
        results["smollm2"] = compare(rank, world, load_model(assets), ids, smollm2_settings)
    for family in job.get("families", ()):
        from mxcomm.tp import calibrate_outliers

        model, ids = tiny_model(family), tiny_ids()
        calibration = calibrate_outliers(model, [ids], max_channels=OUTLIER_CHANNELS, source="tiny random ids")
        results[family] = compare(rank, world, model, ids, settings, calibration)
    torch.save(results, Path(job["out"]) / f"rank{rank}.pt")
