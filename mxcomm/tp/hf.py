"""Compressed tensor parallelism on Hugging Face transformers' own tensor-parallel plans.

transformers shards every model whose config carries a ``base_model_tp_plan``
(``from_pretrained(path, tp_plan="auto")`` under ``torchrun``): each plan entry
names a style (``"colwise"``, ``"rowwise"``, ``"embedding_rowwise"``, ...), a
``TensorParallelLayer`` that shards the module's parameters as DTensors and
replaces the module's ``forward`` with a ``tp_forward`` wrapper doing the
style's communication.

:func:`compress` switches, on a model transformers already sharded, every
module whose style ends in an all-reduce of partial sums to mxcomm's
(compressed) all-reduce, :func:`mxcomm.tp.style.reduce_partial`. Its new
forward computes what transformers' local inference path computes and replaces
only the reduction:

* ``rowwise``, ``rowwise_split_input``, ``rowwise_rep`` (an ``nn.Linear`` with
  its weight sharded on the input features, bias replicated): the input's local
  shard (a replicated input is sliced locally) times the local weight with the
  bias hidden, the all-reduce, then the bias added once -- as transformers does;
* ``embedding_rowwise`` (vocabulary-parallel ``nn.Embedding``): token ids outside
  the rank's vocabulary slice look up row 0 and are zeroed, exactly like
  DTensor's masked partial; then the all-reduce;
* ``all_reduce`` and ``moe_tp_experts``: the style's own input handling and
  forward; the output all-reduce replaced.

Every other style (``colwise``, ``colwise_gather_output``, norms, ...) keeps
transformers' forward and communication. The settings of each switched module
are a :class:`~mxcomm.tp.RowwiseComm` on the module (``module.mxcomm_comm``),
the object :func:`mxcomm.tp.set_comm_format`, :func:`mxcomm.tp.set_outlier_channels`
and :func:`mxcomm.tp.compressed_modules` work on.

:func:`parallelize` shards an unsharded in-memory model over a 1-D mesh with
the model's own plan -- transformers' plan resolution and
``apply_tensor_parallelism``, as ``from_pretrained`` runs them -- then
compresses it.

Needs transformers with ``transformers.distributed.tensor_parallel`` (5.x).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard

from mxcomm.tp.outliers import OutlierCalibration
from mxcomm.tp.plan import CommPlan, resolve_comms
from mxcomm.tp.style import COMM_ATTR, FormatLike, RowwiseComm, TPPlanError, check_verify, reduce_partial

#: The kinds of partial-sum reductions mxcomm takes over (see the module docstring).
LINEAR, EMBEDDING, OUTPUT = "linear", "embedding", "output"
# Projections whose column-parallel output holds attention heads (transformers' get_kv_heads_per_rank looks
# at the same names): their local output is a slice of whole heads only if the world size divides the heads.
_HEAD_PROJECTIONS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value")


def _tp_api() -> Any:
    """transformers' tensor-parallel module (imported only when needed: it pulls in all of transformers)."""
    try:
        from transformers.distributed import tensor_parallel
    except ImportError as exc:
        raise TPPlanError(
            "mxcomm.tp.compress / parallelize need transformers with transformers.distributed.tensor_parallel "
            f"(5.x; `pip install 'mxcomm[tp]'`): {exc}"
        ) from None
    return tensor_parallel


def reduce_kind(style: Any) -> str | None:
    """Which partial-sum reduction a transformers TP style ends in (``None``: none mxcomm takes over)."""
    tp = _tp_api()
    if isinstance(style, tp.RowwiseParallel):  # a Shard output layout would be a reduce-scatter
        return LINEAR if style.output_layouts == Replicate() else None
    embedding = getattr(tp, "EmbeddingParallel", None)
    if embedding is not None and isinstance(style, embedding):
        return EMBEDDING if style.shard_dim == 0 else None
    outputs = tuple(c for c in (getattr(tp, "AllReduceParallel", None), getattr(tp, "MoeExpertsParallel", None)) if c)
    return OUTPUT if outputs and isinstance(style, outputs) else None


def style_name(style: Any) -> str:
    """The name a style object is registered under in transformers' ``ALL_PARALLEL_STYLES`` (or its class)."""
    for name, registered in _tp_api().ALL_PARALLEL_STYLES.items():
        if registered is style:
            return name
    return type(style).__name__


class _ReducedForward:
    """The forward mxcomm installs on a module whose TP style ends in an all-reduce of partial sums."""

    def __init__(self, module: nn.Module, kind: str, style: Any, mesh: DeviceMesh,
                 original_forward: Callable[..., Any], tp_forward: Callable[..., Any]) -> None:
        self.module, self.kind, self.style, self.mesh = module, kind, style, mesh
        self.original_forward = original_forward  # the module's forward before transformers wrapped it
        self.tp_forward = tp_forward  # transformers' wrapper (what :func:`uncompress` puts back)
        self.group = mesh.get_group()
        self.vocab_start = _vocab_start(module, mesh) if kind == EMBEDDING else 0
        from transformers.distributed.parallel_utils import _use_local_dtensor_params

        # transformers' own swap of the DTensor parameters for their local shards during a forward
        self._use_local_params = _use_local_dtensor_params

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        comm: RowwiseComm = getattr(self.module, COMM_ATTR)
        if self.kind == LINEAR:
            return self._linear(comm, args, kwargs)
        if self.kind == EMBEDDING:
            return self._embedding(comm, args, kwargs)
        return self._output(comm, args, kwargs)

    def _local_params(self) -> Any:
        return self._use_local_params(self.module)

    def _as_output(self, reduced: torch.Tensor) -> Any:
        if getattr(self.style, "use_local_output", True):
            return reduced
        return DTensor.from_local(reduced, self.mesh, [Replicate()], run_check=False)

    def _linear(self, comm: RowwiseComm, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        module = self.module
        x = args[0]
        if isinstance(x, DTensor):
            x = x.redistribute(placements=[Shard(-1)]).to_local()
        elif self.style.input_layouts != Shard(-1):
            # a replicated input (rowwise_split_input): this rank's slice, cut as the weight was (no communication)
            x = DTensor.from_local(x, self.mesh, [self.style.input_layouts], run_check=False)
            x = x.redistribute(placements=[Shard(-1)]).to_local()
        # A rank's product must be its partial sum only: the bias is added once, after the reduction.
        bias = module._parameters.get("bias")
        if bias is not None:
            module._parameters["bias"] = None
        try:
            with self._local_params():
                partial = self.original_forward(x, *args[1:], **kwargs)
        finally:
            if bias is not None:
                module._parameters["bias"] = bias
        reduced = reduce_partial(partial, comm, self.group)
        if bias is not None:
            reduced = reduced + (bias.to_local() if isinstance(bias, DTensor) else bias)
        return self._as_output(reduced)

    def _embedding(self, comm: RowwiseComm, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        module = self.module
        ids = args[0]
        if isinstance(ids, DTensor):
            ids = ids.full_tensor()
        rows = _local(module.weight).shape[0]
        outside = (ids < self.vocab_start) | (ids >= self.vocab_start + rows)
        local_ids = (ids - self.vocab_start).masked_fill(outside, 0)
        padding_idx = getattr(module, "padding_idx", None)
        if padding_idx is not None:  # only the backward reads it; it must index the local rows
            local_pad = padding_idx - self.vocab_start
            module.padding_idx = local_pad if 0 <= local_pad < rows else None
        try:
            with self._local_params():
                partial = self.original_forward(local_ids, *args[1:], **kwargs)
        finally:
            if padding_idx is not None:
                module.padding_idx = padding_idx
        partial = partial.masked_fill(outside.unsqueeze(-1), 0)
        return self._as_output(reduce_partial(partial, comm, self.group))

    def _output(self, comm: RowwiseComm, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        args, kwargs = self.style.transform_inputs_pre_forward(self.module, args, kwargs, self.mesh)
        with self.style.context_around_forward(self.module, self.mesh):
            partial = self.original_forward(*args, **kwargs)
        if partial is None:
            return None
        if isinstance(partial, DTensor):
            partial = partial.to_local()
        return reduce_partial(partial, comm, self.group)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _vocab_start(module: nn.Module, mesh: DeviceMesh) -> int:
    """First vocabulary row of this rank's ``Shard(0)`` slice (DTensor cuts like ``torch.chunk``)."""
    weight = module.weight
    if not isinstance(weight, DTensor) or tuple(weight.placements) != (Shard(0),):
        raise TPPlanError(f"a vocabulary-parallel {type(module).__name__} needs a Shard(0) DTensor weight, "
                          f"got {type(weight).__name__}")
    vocab, n, rank = weight.shape[0], mesh.size(), mesh.get_local_rank()
    chunk = -(-vocab // n)
    start = min(vocab, rank * chunk)
    if weight.to_local().shape[0] != min(vocab, start + chunk) - start:
        raise TPPlanError(f"unexpected vocabulary slice: {weight.to_local().shape[0]} rows on rank {rank} of {n} "
                          f"for {vocab} rows")
    return start


def _wrapped(module: nn.Module) -> tuple[Any, DeviceMesh, Callable[..., Any], Callable[..., Any]] | None:
    """(style, mesh, original forward, transformers' wrapper) of a module transformers sharded, else None."""
    forward = module.__dict__.get("forward")
    if isinstance(forward, _ReducedForward):
        return forward.style, forward.mesh, forward.original_forward, forward.tp_forward
    if forward is None or not getattr(module, "_is_hooked", False):
        return None
    try:
        scope = inspect.getclosurevars(forward).nonlocals
    except TypeError:
        scope = {}
    style, mesh, original = scope.get("self"), scope.get("mesh"), scope.get("original_forward")
    if scope.get("module") is not module or not isinstance(style, _tp_api().TensorParallelLayer) \
            or not isinstance(mesh, DeviceMesh) or not callable(original):
        import transformers

        raise TPPlanError(f"cannot read the tensor-parallel forward transformers {transformers.__version__} "
                          f"installed on {type(module).__name__}")
    return style, mesh, original, forward


def _styled_sharded(model: nn.Module) -> dict[str, tuple[Any, DeviceMesh, Callable[..., Any], Callable[..., Any]]]:
    return {name: w for name, mod in model.named_modules() if (w := _wrapped(mod)) is not None}


def _width(module: nn.Module) -> int | None:
    """Channels of a module's reduced output (the last dimension outlier channels index); None: not known here."""
    for attr in ("out_features", "embedding_dim"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return None


def _check_heads(model: nn.Module, styles: Mapping[str, Any], world: int) -> None:
    tp = _tp_api()
    split_heads = [n for n, s in styles.items() if n.rsplit(".", 1)[-1] in _HEAD_PROJECTIONS
                   and isinstance(s, tp.ColwiseParallel) and isinstance(s.output_layouts, Shard)]
    if not split_heads:
        return
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(config, "num_attention_heads", None)
    sizes = {"num_attention_heads": heads, "num_key_value_heads": getattr(config, "num_key_value_heads", None) or heads}
    bad = {}
    for key, value in sizes.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, int) and v % world for v in values):
            bad[key] = value
    if bad:
        raise TPPlanError(f"tensor-parallel size {world} must divide {bad}: {split_heads[0]} is column-parallel "
                          "with a local output, so every rank must hold whole heads")


def _check_mesh(mesh: Any, what: str) -> DeviceMesh:
    if not isinstance(mesh, DeviceMesh):
        raise TPPlanError(f"{what} needs a DeviceMesh, got {type(mesh).__name__}")
    if mesh.ndim != 1:
        raise TPPlanError(f"{what} needs a 1-D device mesh of the tensor-parallel ranks, got a {mesh.ndim}-D mesh "
                          f"{tuple(mesh.shape)}")
    return mesh


def _install(model: nn.Module, sharded: Mapping[str, tuple[Any, DeviceMesh, Callable[..., Any], Callable[..., Any]]],
             comms: Mapping[str, RowwiseComm]) -> int:
    for name, comm in comms.items():
        module = model.get_submodule(name)
        current = getattr(module, COMM_ATTR, None)
        if isinstance(module.__dict__.get("forward"), _ReducedForward) and isinstance(current, RowwiseComm):
            # in place: references to the live settings (compressed_modules) stay valid
            for setting in dataclasses.fields(RowwiseComm):
                setattr(current, setting.name, getattr(comm, setting.name))
            continue
        style, mesh, original, tp_forward = sharded[name]
        setattr(module, COMM_ATTR, comm)
        module.forward = _ReducedForward(module, reduce_kind(style), style, mesh, original, tp_forward)  # type: ignore[arg-type]
    return len(comms)


def _reduce_modules(model: nn.Module, styles: Mapping[str, Any]) -> dict[str, int | None]:
    return {name: _width(model.get_submodule(name)) for name, s in styles.items() if reduce_kind(s) is not None}


def compress(
    model: nn.Module,
    fmt: FormatLike | None,
    *,
    algorithm: str = "auto",
    comm_dtype: torch.dtype | None = None,
    plan: CommPlan | str | Path | None = None,
    outliers: OutlierCalibration | Mapping[str, Sequence[int]] | None = None,
    outlier_k: int | None = None,
    verify: bool = True,
) -> int:
    """Run the partial-sum all-reduces of a model transformers sharded through mxcomm (see the module docstring).

    Collective only in that every rank must make the same call (no communication happens here).
    Calling it again sets every switched module's settings anew, in place.

    Args:
        model: A transformers model sharded by transformers (``from_pretrained(..., tp_plan="auto")``
            or an explicit plan) or by :func:`parallelize`.
        fmt: Format (object or registered name) of every all-reduce; ``None`` / ``"none"``: mxcomm's
            uncompressed path (the same ``dist.all_reduce``, so the same logits as transformers'
            own TP; still recorded by :func:`mxcomm.track_comm`).
        algorithm: ``"auto"`` (the planner; per message, so decode-sized all-reduces may stay
            uncompressed), ``"allgather"``, ``"two_shot"`` or ``"none"``.
        comm_dtype: Wire dtype of the partial sums (``None``: the compute dtype).
        plan: Per-module overrides: a :class:`~mxcomm.tp.CommPlan` or the path of a saved one.
        outliers, outlier_k: Outlier channels per module: a calibration and how many of its
            channels (``None``: all), or a mapping module name -> channels.
        verify: Exchange the call descriptor on every all-reduce (``False``: the caller vouches
            that every rank runs the same forward with the same input shapes, as transformers'
            own TP assumes; one small all-gather less per all-reduce; see
            :class:`~mxcomm.tp.RowwiseComm`).

    Returns:
        The number of modules whose all-reduce now runs through mxcomm.

    Raises:
        TPPlanError: the model is not sharded (no transformers TP forward on any module), its
            mesh is not 1-D, the world size does not divide the attention heads, or the plan /
            outliers do not fit the model (raised on every rank alike, before any communication).
        FormatError: an unknown format.
    """
    sharded = _styled_sharded(model)
    if not sharded:
        raise TPPlanError(f"{type(model).__name__} is not sharded by transformers' tensor parallelism (no module "
                          "carries a TP forward): load it with from_pretrained(..., tp_plan='auto') under torchrun, "
                          "or shard it with mxcomm.tp.parallelize")
    meshes = [_check_mesh(m, "mxcomm.tp.compress") for _, m, _, _ in sharded.values()]
    if any(m != meshes[0] for m in meshes):
        raise TPPlanError("the model's TP modules use different device meshes; compress expects one TP mesh")
    world = meshes[0].size()
    styles = {name: w[0] for name, w in sharded.items()}
    _check_heads(model, styles, world)
    comms = resolve_comms(model, _reduce_modules(model, styles), {n: style_name(s) for n, s in styles.items()},
                          fmt, algorithm=algorithm, comm_dtype=comm_dtype, plan=plan, outliers=outliers,
                          outlier_k=outlier_k)
    _set_verify(comms, verify)
    if not comms:
        raise TPPlanError(f"{type(model).__name__} has no module whose TP style ends in an all-reduce of partial sums "
                          f"(styles: {sorted({style_name(s) for s in styles.values()})})")
    return _install(model, sharded, comms)


def _set_verify(comms: Mapping[str, RowwiseComm], verify: bool) -> None:
    """Set every module's ``verify`` (checked first: a bad value raises before anything changes)."""
    check_verify(verify)
    for comm in comms.values():
        comm.verify = verify


def uncompress(model: nn.Module) -> int:
    """Put transformers' own forwards back on every module :func:`compress` switched; returns how many."""
    count = 0
    for _, module in model.named_modules():
        forward = module.__dict__.get("forward")
        if isinstance(forward, _ReducedForward):
            module.forward = forward.tp_forward
            delattr(module, COMM_ATTR)
            count += 1
    return count


def resolve_tp_styles(model: nn.Module, world: int, tp_plan: Mapping[str, str] | None = None) -> dict[str, str]:
    """The TP style name of every module and parameter of an unsharded model, as transformers resolves them.

    Uses the model's own plan (``config.base_model_tp_plan`` and the class ``_tp_plan``, the plan
    ``from_pretrained(tp_plan="auto")`` uses) with ``tp_plan`` entries overriding or adding rules,
    expanded to concrete names (``model.layers.3.mlp.down_proj``) by transformers' own resolution.

    Raises:
        TPPlanError: no plan, a style transformers does not know, an override matching nothing.
    """
    from transformers import DistributedConfig

    if not hasattr(model, "_resolve_parallel_plans"):
        raise TPPlanError(f"{type(model).__name__} is not a transformers model with tensor-parallel plans")
    if tp_plan is not None and not isinstance(tp_plan, Mapping):
        raise TPPlanError(f"tp_plan must be a mapping module pattern -> style name, got {type(tp_plan).__name__}")
    if not (getattr(model, "tp_plan", None) or tp_plan):
        raise TPPlanError(f"{type(model).__name__} has no tensor-parallel plan (its config has no "
                          "base_model_tp_plan); pass tp_plan={module pattern: style}")
    saved = model._tp_plan
    try:
        config = DistributedConfig(tp_size=world, tp_plan=dict(tp_plan) if tp_plan is not None else "auto")
        resolved, _, _ = model._resolve_parallel_plans(config)
    except (ValueError, KeyError) as exc:
        raise TPPlanError(f"tensor-parallel plan of {type(model).__name__}: {exc}") from None
    finally:
        model._tp_plan = saved  # resolution merges the overrides into the model; parallelize sets them for real
    return resolved


def row_parallel_modules(model: nn.Module, world: int = 2, tp_plan: Mapping[str, str] | None = None) -> dict[str, str]:
    """Name -> style of the modules whose all-reduce mxcomm runs (sharded model: as sharded; unsharded: by its plan).

    E.g. the ``modules=`` of :func:`mxcomm.tp.calibrate_outliers` for a model that is not Llama-shaped.
    """
    sharded = _styled_sharded(model)
    if sharded:
        return {n: style_name(w[0]) for n, w in sharded.items() if reduce_kind(w[0]) is not None}
    registry = _tp_api().ALL_PARALLEL_STYLES
    modules = dict(model.named_modules())
    return {n: s for n, s in resolve_tp_styles(model, world, tp_plan).items()
            if n in modules and reduce_kind(registry[s]) is not None}


def _meta_placements(style: Any, tensor: torch.Tensor, mesh: DeviceMesh) -> tuple[Any, ...] | None:
    """The placements ``style`` gives a parameter like ``tensor`` (on the meta device: no data, no communication)."""
    holder = nn.Module()
    holder.register_parameter("p", nn.Parameter(torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")))
    style.shard_param(holder, "p", mesh)
    sharded = holder._parameters["p"]
    return tuple(sharded.placements) if isinstance(sharded, DTensor) else None


def _split_tied(model: nn.Module, resolved: Mapping[str, str], mesh: DeviceMesh
                ) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """The plan without entries for the second owners of tied parameters, and the ties to restore after sharding.

    ``from_pretrained`` shards before it loads and ties the weights; an in-memory model is already tied
    (e.g. the LM head sharing the embedding), and transformers' ``apply_tensor_parallelism`` knows a
    shared parameter under its first name only. The parameter is sharded once, under that name, and the
    other owners are pointed at the sharded parameter -- if their own styles would shard it alike.
    Returns ``(plan, [(owner module, attribute, first name)])``.
    """
    registry = _tp_api().ALL_PARALLEL_STYLES
    first_names = {id(p): n for n, p in model.named_parameters()}
    plan, ties = dict(resolved), []
    for module_name, module in model.named_modules():
        for attr, param in module._parameters.items():
            name = f"{module_name}.{attr}" if module_name else attr
            first = first_names.get(id(param)) if param is not None else None
            if first is None or first == name:
                continue
            mine, theirs = plan.pop(name, None), plan.get(first)
            placements = [_meta_placements(registry[s], param, mesh) if s else None for s in (mine, theirs)]
            if placements[0] != placements[1]:
                raise TPPlanError(f"{name} is tied to {first}, but their TP styles {mine!r} and {theirs!r} shard it "
                                  f"differently ({placements[0]} vs {placements[1]})")
            ties.append((module_name, attr, first))
    return plan, ties


def plan_comms(
    model: nn.Module,
    world: int,
    fmt: FormatLike | None = None,
    *,
    algorithm: str = "auto",
    comm_dtype: torch.dtype | None = None,
    plan: CommPlan | str | Path | None = None,
    outliers: OutlierCalibration | Mapping[str, Sequence[int]] | None = None,
    outlier_k: int | None = None,
    tp_plan: Mapping[str, str] | None = None,
) -> dict[str, RowwiseComm]:
    """The settings :func:`parallelize` would give each module of an unsharded model (no communication).

    Args:
        model: An unsharded transformers model.
        world: The tensor-parallel size.
        fmt, algorithm, comm_dtype, plan, outliers, outlier_k, tp_plan: as for :func:`parallelize`.

    Returns:
        Module name -> its :class:`~mxcomm.tp.RowwiseComm`, for every module whose TP style ends in
        an all-reduce of partial sums.

    Raises:
        TPPlanError: no TP plan, a world size that does not divide the heads, no partial-sum module,
            or a plan / outliers that do not fit the model.
        FormatError: an unknown format.
    """
    tp = _tp_api()
    resolved = resolve_tp_styles(model, world, tp_plan)
    modules = dict(model.named_modules())
    styles = {n: tp.ALL_PARALLEL_STYLES[s] for n, s in resolved.items() if n in modules}
    _check_heads(model, styles, world)
    comms = resolve_comms(model, _reduce_modules(model, styles), {n: s for n, s in resolved.items() if n in modules},
                          fmt, algorithm=algorithm, comm_dtype=comm_dtype, plan=plan, outliers=outliers,
                          outlier_k=outlier_k)
    if not comms:
        raise TPPlanError(f"the TP plan of {type(model).__name__} has no module whose style ends in an all-reduce "
                          f"of partial sums (styles: {sorted(set(resolved.values()))})")
    return comms


def parallelize(
    model: nn.Module,
    device_mesh: DeviceMesh,
    fmt: FormatLike | None = None,
    *,
    algorithm: str = "auto",
    comm_dtype: torch.dtype | None = None,
    plan: CommPlan | str | Path | None = None,
    outliers: OutlierCalibration | Mapping[str, Sequence[int]] | None = None,
    outlier_k: int | None = None,
    tp_plan: Mapping[str, str] | None = None,
    src_data_rank: int | None = 0,
    verify: bool = True,
) -> nn.Module:
    """Shard an unsharded transformers model in place with its own TP plan, then :func:`compress` it.

    Collective: every rank of the mesh calls it. Sharding is what ``from_pretrained(tp_plan="auto")``
    does (transformers' plan resolution and ``apply_tensor_parallelism``), applied to the weights the
    model already holds; ``model.generate`` then works as after ``from_pretrained``.

    Args:
        model: A transformers ``PreTrainedModel`` (unsharded, every rank holding the same weights).
        device_mesh: 1-D mesh of the tensor-parallel ranks (``init_device_mesh("cpu", (n,))``).
        fmt, algorithm, comm_dtype, plan, outliers, outlier_k, verify: as for :func:`compress`.
        tp_plan: TP style rules overriding or adding to the model's own plan
            (``{"model.embed_tokens": "replicate"}``), as ``DistributedConfig(tp_plan=...)`` takes them.
        src_data_rank: Rank whose weights every rank takes (one broadcast per parameter and buffer);
            ``None`` skips the broadcast when every rank already holds identical weights.

    Returns:
        The model, sharded and compressed in place.

    Raises:
        TPPlanError: a mesh that is not 1-D or has fewer than 2 ranks, a model without a TP plan or
            already sharded, a world size that does not divide the attention heads, or a plan /
            outliers that do not fit the model -- on every rank alike, before any communication.
        FormatError: an unknown format.
    """
    tp = _tp_api()
    from transformers import DistributedConfig

    mesh = _check_mesh(device_mesh, "mxcomm.tp.parallelize")
    world = mesh.size()
    if world < 2:
        raise TPPlanError(f"tensor parallelism needs at least 2 ranks, the mesh has {world}")
    if _styled_sharded(model) or any(isinstance(p, DTensor) for p in model.parameters()):
        raise TPPlanError(f"{type(model).__name__} is already sharded; use mxcomm.tp.compress on it")
    resolved = resolve_tp_styles(model, world, tp_plan)
    comms = plan_comms(model, world, fmt, algorithm=algorithm, comm_dtype=comm_dtype, plan=plan, outliers=outliers,
                       outlier_k=outlier_k, tp_plan=tp_plan)
    _set_verify(comms, verify)
    config = DistributedConfig(tp_size=world, tp_plan=dict(tp_plan) if tp_plan is not None else "auto")
    resolved, ties = _split_tied(model, resolved, mesh)
    # -- everything is validated; communication starts here --
    if src_data_rank is not None:
        src = dist.get_global_rank(mesh.get_group(), src_data_rank)
        with torch.no_grad():
            for tensor in (*model.parameters(), *model.buffers()):
                dist.broadcast(tensor.data, src=src, group=mesh.get_group())
    if tp_plan is not None:
        model._tp_plan = {**model._tp_plan, **tp_plan}
    tp.apply_tensor_parallelism(model, mesh, resolved)
    for module_name, attr, first in ties:
        model.get_submodule(module_name)._parameters[attr] = model.get_parameter(first)
    # what from_pretrained records: generate() sizes static caches by _tp_size, save_pretrained gathers by the config
    model._tp_size = world
    model._device_mesh = mesh
    model.config.distributed_config = config
    _install(model, _styled_sharded(model), comms)
    return model
