"""Tensor-parallel plan for Llama-family Hugging Face models.

Megatron-style sharding of every decoder layer: the attention's q/k/v and the
MLP's gate/up projections are column-parallel (each rank owns whole heads and
a slice of the intermediate features, no communication); o_proj and down_proj
are row-parallel, and their output all-reduces -- two per layer -- are the
ones mxcomm compresses. Embedding, norms and the LM head stay replicated.

Works for ``LlamaForCausalLM`` and every architecture with the same projection
names (Mistral, Qwen2, SmolLM, ...). transformers >= 4.48 reshapes attention
with ``-1`` heads and keeps ``num_key_value_groups`` as a ratio, so local head
counts follow from the sharded weights; older versions store ``num_heads`` /
``num_key_value_heads`` / ``hidden_size`` on the attention module, and
:func:`parallelize_llama` divides those by the world size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, parallelize_module

from mxcomm.tp.outliers import ROWWISE_PROJECTIONS, OutlierCalibration
from mxcomm.tp.style import CompressedRowwiseParallel, FormatLike, TPPlanError, resolve_format

COLWISE_PROJECTIONS: tuple[str, ...] = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
)
_LAYER_PATHS: tuple[str, ...] = ("model.layers", "layers", "model.model.layers")
# Attributes that older transformers versions use in the attention reshapes.
_ATTENTION_SIZE_ATTRS: tuple[str, ...] = ("num_heads", "num_key_value_heads", "hidden_size")


def llama_tp_plan(
    num_layers: int,
    fmt: FormatLike | None,
    *,
    algorithm: str = "auto",
    comm_dtype: torch.dtype | None = None,
    uncompressed_layers: Iterable[int] = (),
    layer_formats: Mapping[int, FormatLike | None] | None = None,
    compress: Iterable[str] = ROWWISE_PROJECTIONS,
    layers_path: str = "model.layers",
    outlier_channels: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, ParallelStyle]:
    """The ``parallelize_module`` plan for a Llama-family model.

    Args:
        num_layers: number of decoder layers.
        fmt: default format of the compressed row-parallel all-reduces
            (``None``/``"none"``: mxcomm's uncompressed path, still accounted).
        algorithm, comm_dtype: passed to every :class:`CompressedRowwiseParallel`.
        uncompressed_layers: layer indices whose row-parallel projections use
            PyTorch's own ``RowwiseParallel`` (a plain DTensor all-reduce,
            nothing of mxcomm involved).
        layer_formats: per-layer format overrides; a ``None`` value makes the
            layer uncompressed like ``uncompressed_layers``.
        compress: which row-parallel projections are compressed (by default
            both ``self_attn.o_proj`` and ``mlp.down_proj``); the others use
            ``RowwiseParallel``.
        layers_path: dotted path of the decoder-layer list in the model.
        outlier_channels: module name (e.g. ``model.layers.3.mlp.down_proj``)
            -> output channels sent uncompressed beside the compressed rest
            (see :func:`mxcomm.tp.calibrate_outliers`). Naming a module that
            the plan leaves uncompressed is an error.

    Returns:
        Module name -> ``ParallelStyle``: ``ColwiseParallel`` for q/k/v, gate and up,
        :class:`CompressedRowwiseParallel` (or ``RowwiseParallel``) for o_proj and down_proj.

    Raises:
        TPPlanError: bad ``num_layers``, layer indices, ``compress`` entries or outlier modules.
        FormatError: an unknown format.
    """
    if not isinstance(num_layers, int) or num_layers < 1:
        raise TPPlanError(f"num_layers must be a positive int, got {num_layers!r}")
    compress = tuple(compress)
    unknown = [p for p in compress if p not in ROWWISE_PROJECTIONS]
    if unknown:
        raise TPPlanError(f"compress may only name {ROWWISE_PROJECTIONS}, got {unknown}")
    plain = set(uncompressed_layers)
    overrides = dict(layer_formats or {})
    bad = sorted(i for i in (*plain, *overrides) if not (isinstance(i, int) and 0 <= i < num_layers))
    if bad:
        raise TPPlanError(f"layer indices out of range 0..{num_layers - 1}: {bad}")
    default_fmt = resolve_format(fmt)
    outliers = dict(outlier_channels or {})
    plan: dict[str, ParallelStyle] = {}
    for layer in range(num_layers):
        prefix = f"{layers_path}.{layer}"
        for proj in COLWISE_PROJECTIONS:
            plan[f"{prefix}.{proj}"] = ColwiseParallel()
        layer_fmt = resolve_format(overrides[layer]) if layer in overrides else default_fmt
        layer_plain = layer in plain or (layer in overrides and overrides[layer] is None)
        for proj in ROWWISE_PROJECTIONS:
            if layer_plain or proj not in compress:
                plan[f"{prefix}.{proj}"] = RowwiseParallel()
            else:
                plan[f"{prefix}.{proj}"] = CompressedRowwiseParallel(
                    layer_fmt, algorithm=algorithm, comm_dtype=comm_dtype,
                    outlier_channels=outliers.get(f"{prefix}.{proj}"),
                )
    stray = sorted(n for n in outliers if not isinstance(plan.get(n), CompressedRowwiseParallel))
    if stray:
        raise TPPlanError(f"outlier channels given for modules the plan does not compress: {stray[:4]}")
    return plan


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The dotted path and the ``ModuleList`` of a Llama-family model's decoder layers."""
    for path in _LAYER_PATHS:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return path, layers
    raise TPPlanError(f"no decoder-layer list found in {type(model).__name__} (looked at {_LAYER_PATHS})")


def _outlier_mapping(
    outliers: OutlierCalibration | Mapping[str, Sequence[int]] | None, k: int | None
) -> Mapping[str, Sequence[int]] | None:
    if isinstance(outliers, OutlierCalibration):
        return outliers.top(outliers.max_k if k is None else k)
    if k is not None:
        raise TPPlanError("outlier_k needs an OutlierCalibration")
    return outliers


def _check_divisible(model: nn.Module, layers: nn.ModuleList, world: int) -> None:
    config = getattr(model, "config", None)
    sizes: dict[str, int] = {}
    if config is not None:
        for key in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
            value = getattr(config, key, None)
            if isinstance(value, int):
                sizes[key] = value
    for proj in COLWISE_PROJECTIONS + ROWWISE_PROJECTIONS:
        module = layers[0].get_submodule(proj)
        if not isinstance(module, nn.Linear):
            raise TPPlanError(f"{proj} is a {type(module).__name__}, expected nn.Linear")
    sizes["mlp.gate_proj.out_features"] = layers[0].get_submodule("mlp.gate_proj").out_features
    bad = {k: v for k, v in sizes.items() if v % world}
    if bad:
        raise TPPlanError(f"tensor-parallel size {world} must divide {bad}")


def parallelize_llama(
    model: nn.Module,
    device_mesh: DeviceMesh,
    fmt: FormatLike | None,
    *,
    algorithm: str = "auto",
    comm_dtype: torch.dtype | None = None,
    uncompressed_layers: Iterable[int] = (),
    layer_formats: Mapping[int, FormatLike | None] | None = None,
    compress: Iterable[str] = ROWWISE_PROJECTIONS,
    src_data_rank: int | None = 0,
    outliers: OutlierCalibration | Mapping[str, Sequence[int]] | None = None,
    outlier_k: int | None = None,
) -> nn.Module:
    """Shard a Llama-family model in place over a 1-D mesh (see :func:`llama_tp_plan`).

    Superseded by :func:`mxcomm.tp.parallelize`, which shards any transformers model with its own
    TP plan (vocabulary-parallel embedding, gathered LM head) and takes per-module
    :class:`~mxcomm.tp.CommPlan` settings; this hand-written plan (PyTorch's own styles, embedding
    and LM head replicated) stays for the evaluation harness and its emulation.

    Collective: every rank of the mesh calls it.

    Args:
        model: A Hugging Face Llama-family model (decoder layers with ``self_attn`` and ``mlp``).
        device_mesh: 1-D device mesh of the tensor-parallel ranks.
        fmt, algorithm, comm_dtype, uncompressed_layers, layer_formats, compress: as for
            :func:`llama_tp_plan`.
        src_data_rank: Rank whose weights are broadcast; ``None`` skips the broadcast when
            every rank already holds identical weights (each rank keeps its slice locally).
        outliers: A saved :class:`~mxcomm.tp.OutlierCalibration` or a mapping module
            name -> channels; those channels of each compressed row-parallel output
            travel uncompressed.
        outlier_k: How many of a calibration's channels per module (``None``: all it holds).

    Returns:
        The model, sharded in place.

    Raises:
        TPPlanError: not a 1-D mesh, no decoder layers found, sizes the world size does not
            divide, ``outlier_k`` without a calibration, or what :func:`llama_tp_plan` raises.
        FormatError: an unknown format.
    """
    if device_mesh.ndim != 1:
        raise TPPlanError(f"parallelize_llama needs a 1-D device mesh, got {device_mesh.ndim}-D")
    world = device_mesh.size()
    path, layers = find_layers(model)
    _check_divisible(model, layers, world)
    plan = llama_tp_plan(
        len(layers),
        fmt,
        algorithm=algorithm,
        comm_dtype=comm_dtype,
        uncompressed_layers=uncompressed_layers,
        layer_formats=layer_formats,
        compress=compress,
        layers_path=path,
        outlier_channels=_outlier_mapping(outliers, outlier_k),
    )
    parallelize_module(model, device_mesh, plan, src_data_rank=src_data_rank)
    for layer in layers:
        attention = layer.get_submodule("self_attn")
        for attr in _ATTENTION_SIZE_ATTRS:
            value = getattr(attention, attr, None)
            if isinstance(value, int):
                if value % world:
                    raise TPPlanError(f"self_attn.{attr}={value} is not divisible by {world}")
                setattr(attention, attr, value // world)
    return model
