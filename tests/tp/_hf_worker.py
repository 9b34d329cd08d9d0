"""Rank side of tests/tp/test_hf_tp.py: tiny random transformers models in compressed TP, loaded both ways.

The test process saves every family's tiny model (and a per-module plan for it) in a folder; one
spawn of ranks runs every family: rank 0 computes the unsharded logits and the single-process
emulation of each compressed setting; every rank loads the model with
``from_pretrained(tp_plan="auto")`` (transformers' own TP), switches it with
``mxcomm.tp.compress`` setting by setting, generates, then shards a second in-memory copy with
``mxcomm.tp.parallelize``; finally the bad inputs. Each rank saves a dict of raw results.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

# (family, config class, model class, extra config); hidden sizes, heads and vocabulary fit TP=2 and TP=3
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),  # q/k/v with bias
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"eos_token_id": 1, "bos_token_id": 1}),  # fused qkv, split input
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {}),  # tied embeddings, soft-capping
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", {}),  # biases on the row-parallel layers
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 2}),
}
NOT_EMULATED = ("mixtral",)  # moe_tp_experts: its all-reduce is switched, the emulation does not cover experts
VOCAB, LAYERS, BATCH, SEQ, NEW_TOKENS = 96, 2, 2, 11, 5
ROTATED = {"name": "mxfp4_e2m1", "rotation_seed": 7}


def shape(world: int) -> dict[str, int]:
    """Sizes every rank of a ``world``-way TP can split: whole heads per rank."""
    heads, kv = (4, 2) if world == 2 else (6, 3)
    head_dim = 16 if world == 2 else 12
    return dict(hidden_size=heads * head_dim, num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                intermediate_size=2 * heads * head_dim)


def tiny_model(family: str, world: int, **overrides: Any) -> torch.nn.Module:
    import transformers

    config_cls, model_cls, extra = FAMILIES[family]
    values = dict(vocab_size=VOCAB, num_hidden_layers=LAYERS, max_position_embeddings=64, pad_token_id=0,
                  **shape(world), **extra)
    values.update(overrides)
    config = getattr(transformers, config_cls)(**values)
    torch.manual_seed(0)
    return getattr(transformers, model_cls)(config).eval()


def plan_entries(family: str) -> list[dict[str, Any]]:
    """A per-module plan: rotated mxfp4 everywhere, the MLP in mxint8 two-shot (gathered in mxfp6_e2m3) on a
    bf16 wire, the embedding uncompressed, outlier channels on one attention output."""
    mlp = "model.layers.*.mlp.c_proj" if family == "starcoder2" else "model.layers.*.mlp.*"
    return [
        {"module": "*", "format": ROTATED, "algorithm": "allgather"},
        {"module": mlp, "format": "mxint8", "algorithm": "two_shot", "comm_dtype": "bfloat16",
         "gather_format": "mxfp6_e2m3"},
        {"module": "model.embed_tokens", "format": "none"},
        {"module": "model.layers.0.self_attn.o_proj", "outlier_channels": [1, 5, 9]},
    ]


def token_ids() -> torch.Tensor:
    return torch.randint(1, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


# -- the settings run on every family: (label, compress kwargs); "plan" takes the family's saved plan --
SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("none", {"fmt": None}),
    ("mxfp8", {"fmt": "mxfp8_e4m3", "algorithm": "allgather"}),
    ("mxfp4_2s_bf16", {"fmt": "mxfp4_e2m1", "algorithm": "two_shot", "comm_dtype": torch.bfloat16}),
    ("plan", {"fmt": "mxfp8_e4m3", "algorithm": "allgather", "outliers": {"model.layers.1.self_attn.o_proj": [2, 3]}}),
    ("auto", {"fmt": "mxfp8_e4m3"}),
]
EMULATED = ("mxfp8", "mxfp4_2s_bf16", "plan")


def _settings_kwargs(label: str, kwargs: dict[str, Any], plan_path: Path) -> dict[str, Any]:
    return {**kwargs, "plan": str(plan_path)} if label == "plan" else kwargs


def _records(stats: Any) -> list[dict]:
    return [r.as_dict() for r in stats.records]


def _error(fn: Any) -> str | None:
    from mxcomm.errors import MxcommError

    try:
        fn()
    except MxcommError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def run_family(rank: int, world: int, family: str, folder: Path) -> dict[str, Any]:
    import transformers

    import mxcomm.tp as T
    from mxcomm.bench.emulation_hf import emulated_hf_tensor_parallel, reductions_of
    from mxcomm.collectives import track_comm

    ids, plan_path = token_ids(), folder / "plan.json"
    res: dict[str, Any] = {"logits": {}, "records": {}, "digest": {}, "emulated": {}, "described": {}}
    if rank == 0:
        ref = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
        with torch.no_grad():
            res["unsharded"] = ref(ids).logits
            res["unsharded_tokens"] = ref.generate(ids[:1], max_new_tokens=NEW_TOKENS, do_sample=False)
            if family not in NOT_EMULATED:
                for label, kwargs in SETTINGS:
                    if label in EMULATED:
                        comms = T.hf.plan_comms(ref, world, **_settings_kwargs(label, kwargs, plan_path))
                        reductions, channels = reductions_of(comms)
                        with emulated_hf_tensor_parallel(ref, world, reductions, channels):
                            res["emulated"][label] = ref(ids, use_cache=False).logits
        res["reduce_modules"] = T.row_parallel_modules(ref, world)

    # transformers' own TP, then the same model switched setting by setting
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, tp_plan="auto")
    with torch.no_grad():
        res["hf"] = model(ids).logits
        res["hf_tokens"] = model.generate(ids[:1], max_new_tokens=NEW_TOKENS, do_sample=False)
        for label, kwargs in SETTINGS:
            res[f"switched_{label}"] = T.compress(model, **_settings_kwargs(label, kwargs, plan_path))
            with track_comm() as stats:
                logits = model(ids).logits
            res["logits"][label], res["records"][label], res["digest"][label] = logits, _records(stats), digest(logits)
            res["described"][label] = {n: c.describe() for n, c in T.compressed_modules(model).items()}
        # generation under compressed TP (KV cache as usual), then uncompressed again
        T.compress(model, "mxfp8_e4m3", algorithm="allgather")
        with track_comm() as stats:
            res["mxfp8_tokens"] = model.generate(ids[:1], max_new_tokens=NEW_TOKENS, do_sample=False)
        res["generate_records"] = _records(stats)
        T.compress(model, None)
        res["none_tokens"] = model.generate(ids[:1], max_new_tokens=NEW_TOKENS, do_sample=False)

    # the same weights sharded in memory by mxcomm.tp.parallelize (weights broadcast from rank 0)
    from torch.distributed.device_mesh import init_device_mesh

    copy = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    T.parallelize(copy, init_device_mesh("cpu", (world,)), **_settings_kwargs("plan", dict(SETTINGS)["plan"], plan_path))
    with torch.no_grad():
        res["parallelized_plan"] = copy(ids).logits
        T.compress(copy, "mxfp8_e4m3", algorithm="allgather")
        res["parallelized_mxfp8"] = copy(ids).logits
        T.compress(copy, "mxfp8_e4m3", algorithm="allgather", verify=False)  # no descriptor exchanges
        with track_comm() as stats:
            res["parallelized_mxfp8_unverified"] = copy(ids).logits
        res["unverified_records"] = _records(stats)
        T.compress(copy, None)
        res["parallelized_none"] = copy(ids).logits
    return res


def run_errors(rank: int, world: int, folders: dict[str, Path]) -> dict[str, Any]:
    """Bad inputs: each must raise the same TPPlanError on every rank, before any communication."""
    import transformers
    from torch.distributed.device_mesh import init_device_mesh

    import mxcomm.tp as T

    mesh = init_device_mesh("cpu", (world,))
    mesh_2d = init_device_mesh("cpu", (1, world), mesh_dim_names=("dp", "tp"))

    def fresh(family: str = "llama") -> torch.nn.Module:
        return transformers.AutoModelForCausalLM.from_pretrained(folders[family]).eval()

    out: dict[str, Any] = {}
    planless = fresh()
    planless._tp_plan = {}  # a model class without a TP plan
    out["no_plan"] = _error(lambda: T.parallelize(planless, mesh, "mxfp8_e4m3"))
    indivisible = fresh("indivisible")
    out["indivisible_heads"] = _error(lambda: T.parallelize(indivisible, mesh, "mxfp8_e4m3"))
    model = fresh()
    out["mesh_2d"] = _error(lambda: T.parallelize(model, mesh_2d, "mxfp8_e4m3"))
    out["unsharded_compress"] = _error(lambda: T.compress(model, "mxfp8_e4m3"))
    out["unknown_format"] = _error(lambda: T.parallelize(model, mesh, plan=T.CommPlan(model, [
        {"module": "model.layers.*.mlp.down_proj", "format": "mxfp5_bogus"}])))
    out["unknown_module"] = _error(lambda: T.parallelize(model, mesh, plan=T.CommPlan(model, [
        {"module": "model.layers.7.mlp.down_proj", "format": "mxint8"}])))
    out["colwise_module"] = _error(lambda: T.parallelize(model, mesh, plan=T.CommPlan(model, [
        {"module": "model.layers.0.self_attn.q_proj", "format": "mxint8"}])))
    out["other_model_plan"] = _error(lambda: T.parallelize(model, mesh, plan=folders["qwen2"] / "plan.json"))
    out["bad_verify"] = _error(lambda: T.parallelize(model, mesh, "mxfp8_e4m3", verify=1))
    out["still_unsharded"] = not any(type(p).__name__ == "DTensor" for m in (planless, indivisible, model)
                                     for p in m.parameters())
    # transformers itself loads a model whose heads the world size does not divide (its forward then
    # fails on a reshape); compress refuses it with a clear error
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folders["indivisible"], tp_plan="auto")
    out["indivisible_compress"] = _error(lambda: T.compress(loaded, "mxfp8_e4m3"))
    return out


def run(rank: int, world: int, job: dict) -> None:
    torch.set_num_threads(1)
    root = Path(job["root"])
    folders = {name: root / name for name in (*job["families"], "indivisible")}
    results = {family: run_family(rank, world, family, folders[family]) for family in job["families"]}
    results["errors"] = run_errors(rank, world, folders)
    torch.save(results, root / f"rank{rank}.pt")
