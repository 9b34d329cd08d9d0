"""Single-process emulation of a transformers tensor-parallel plan run through mxcomm (the oracle of the HF tests).

:func:`emulated_hf_tensor_parallel` makes an unsharded transformers model
compute exactly what the ranks of :func:`mxcomm.tp.compress` /
:func:`mxcomm.tp.parallelize` compute, following the model's own TP plan
(:func:`mxcomm.tp.hf.resolve_tp_styles`):

* a block holding a row-parallel module (``rowwise``, ``rowwise_split_input``,
  ``rowwise_rep``; e.g. ``self_attn`` around ``o_proj``) is *replayed* once per
  rank: its column-parallel children with a local output (``colwise``) compute
  only the rank's output slice, so attention runs on the rank's heads with the
  rank's shapes, as on the rank (eager attention's batched matmul over heads
  does not give the same bits for 2 and for 4 heads); the row-parallel module
  records the rank's partial product (its input slice times its weight slice).
  The partials are reduced by an :class:`~mxcomm.bench.emulation.EmulatedReduction`
  (bit for bit what the collectives compute), the bias added once, and a final
  pass of the block returns that result in place of the module's output;
* ``colwise_gather_output`` / ``colwise_rep``: every rank's slice concatenated
  (an all-gather of the slices is exact);
* ``embedding_rowwise``: every rank's lookup in its vocabulary slice with the ids
  outside it zeroed, reduced likewise;
* ``replicate``, ``replicated_with_grad_allreduce``: unchanged.

Any other style raises :class:`~mxcomm.tp.TPPlanError`. Run the model with
``use_cache=False`` inside the context: a replayed attention block would write
its KV cache once per rank. As in :mod:`mxcomm.bench.emulation`, ``none`` sums
in rank order, which a process group's ring reproduces only for two ranks or
for partials with one non-zero term (the embedding).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from mxcomm.bench.emulation import EmulatedColumnParallel, EmulatedReduction, _rank_slices
from mxcomm.tp.style import RowwiseComm, TPPlanError

_LOCAL_COLUMN = ("colwise",)
_GATHERED_COLUMN = ("colwise_gather_output", "colwise_rep")
_ROW = ("rowwise", "rowwise_split_input", "rowwise_rep")
_UNCHANGED = ("replicate", "replicated_with_grad_allreduce")


def reductions_of(comms: Mapping[str, RowwiseComm]) -> tuple[dict[str, EmulatedReduction], dict[str, list[int]]]:
    """The emulated reduction and outlier channels of each module's settings (compressed ones not ``auto``)."""
    reductions = {n: EmulatedReduction(c.fmt, str(getattr(c.algorithm, "value", c.algorithm)) if c.compressed
                                       else "none", c.comm_dtype, gather_fmt=c.gather_fmt) for n, c in comms.items()}
    channels = {n: c.outlier_channels.tolist() for n, c in comms.items()
                if c.outlier_channels is not None and c.compressed}
    return reductions, channels


class _RankColumn(nn.Module):
    """Rank ``rank``'s slice of a column-parallel ``Linear`` (its local output)."""

    def __init__(self, linear: nn.Linear, rows: slice) -> None:
        super().__init__()
        self.linear, self.rows = linear, rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.linear.bias
        return F.linear(x, self.linear.weight[self.rows], None if b is None else b[self.rows])


class _RankRowPartial(nn.Module):
    """Rank ``rank``'s partial product of a row-parallel ``Linear``, recorded in ``sink`` and returned."""

    def __init__(self, linear: nn.Linear, cols: slice, sink: list[torch.Tensor]) -> None:
        super().__init__()
        self.linear, self.cols, self.sink = linear, cols, sink

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.linear.in_features:  # a replicated input (rowwise_split_input): the rank slices it
            x = x[..., self.cols]
        partial = F.linear(x.contiguous(), self.linear.weight[:, self.cols].contiguous())
        self.sink.append(partial)
        return partial


class _Given(nn.Module):
    """Returns a precomputed output whatever its input (the final pass of a replayed block)."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output


@contextmanager
def _swapped(root: nn.Module, replacements: Mapping[str, nn.Module]) -> Iterator[None]:
    """Within the block, the submodules of ``root`` named in ``replacements`` are replaced."""
    done: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for name, new in replacements.items():
            parent_name, _, child = name.rpartition(".")
            parent = root.get_submodule(parent_name)
            done.append((parent, child, getattr(parent, child)))
            setattr(parent, child, new)
        yield
    finally:
        for parent, child, old in reversed(done):
            setattr(parent, child, old)


class EmulatedRowParallelBlock(nn.Module):
    """A block (attention, MLP) ending in one row-parallel ``Linear``, replayed rank by rank (module docstring)."""

    def __init__(self, block: nn.Module, world: int, row: str, local_columns: Sequence[str],
                 reduction: EmulatedReduction, outlier_channels: Sequence[int] | None = None) -> None:
        super().__init__()
        self.block, self.world, self.row, self.reduction = block, world, row, reduction
        self.linear: nn.Linear = block.get_submodule(row)
        self.columns = {name: block.get_submodule(name) for name in local_columns}
        self.outlier_channels = None if outlier_channels is None else torch.as_tensor(outlier_channels)
        self.cols = _rank_slices(self.linear.in_features, world, f"{row}: {self.linear.in_features} input features")
        self.rows = {name: _rank_slices(lin.out_features, world, f"{name}: {lin.out_features} output features")
                     for name, lin in self.columns.items()}

    def _rank_modules(self, rank: int) -> dict[str, nn.Module]:
        return {name: _RankColumn(lin, self.rows[name][rank]) for name, lin in self.columns.items()}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        partials: list[torch.Tensor] = []
        for rank in range(self.world):
            with _swapped(self.block, {**self._rank_modules(rank),
                                       self.row: _RankRowPartial(self.linear, self.cols[rank], partials)}):
                self.block(*args, **kwargs)
        reduced = self.reduction(partials, self.outlier_channels)
        if self.linear.bias is not None:
            reduced = reduced + self.linear.bias
        with _swapped(self.block, {**self._rank_modules(0), self.row: _Given(reduced)}):
            return self.block(*args, **kwargs)


class EmulatedVocabParallelEmbedding(nn.Module):
    """A vocabulary-parallel embedding: each rank's masked lookup in its ``torch.chunk`` slice, reduced."""

    def __init__(self, embedding: nn.Embedding, world: int, reduction: EmulatedReduction,
                 outlier_channels: Sequence[int] | None = None) -> None:
        super().__init__()
        self.embedding, self.world, self.reduction = embedding, world, reduction
        self.outlier_channels = None if outlier_channels is None else torch.as_tensor(outlier_channels)

    def forward(self, ids: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        weight = self.embedding.weight
        vocab = weight.shape[0]
        chunk = -(-vocab // self.world)
        padding_idx = self.embedding.padding_idx
        self.embedding.padding_idx = None  # forward values do not depend on it; it must not index the slice
        partials = []
        try:
            for rank in range(self.world):
                start, stop = min(vocab, rank * chunk), min(vocab, (rank + 1) * chunk)
                outside = (ids < start) | (ids >= stop)
                out = functional_call(self.embedding, {"weight": weight[start:stop]},
                                      ((ids - start).masked_fill(outside, 0), *args), kwargs)
                partials.append(out.masked_fill(outside.unsqueeze(-1), 0))
        finally:
            self.embedding.padding_idx = padding_idx
        return self.reduction(partials, self.outlier_channels)


@contextmanager
def emulated_hf_tensor_parallel(
    model: nn.Module,
    world_size: int,
    reductions: EmulatedReduction | Mapping[str, EmulatedReduction],
    outlier_channels: Mapping[str, Sequence[int]] | None = None,
    tp_plan: Mapping[str, str] | None = None,
) -> Iterator[nn.Module]:
    """Within the block, the unsharded ``model`` computes what ``world_size`` ranks of its TP plan compute.

    Args:
        model: An unsharded transformers model (run it with ``use_cache=False`` inside the block).
        world_size: The tensor-parallel size.
        reductions: One reduction for every partial-sum module, or module name -> reduction
            (every partial-sum module named; e.g. from :func:`reductions_of`).
        outlier_channels: Module name -> channels sent exactly (only where the reduction is compressed).
        tp_plan: TP style overrides, as given to :func:`mxcomm.tp.parallelize`.

    Raises:
        TPPlanError: a style this emulation does not cover, a partial-sum module without a
            reduction, or a block with more than one row-parallel module.
    """
    from mxcomm.tp.hf import resolve_tp_styles

    channels = dict(outlier_channels or {})
    modules = dict(model.named_modules())
    styles = {n: s for n, s in resolve_tp_styles(model, world_size, tp_plan).items() if n in modules}

    def reduction_of(name: str) -> EmulatedReduction:
        reduction = reductions if isinstance(reductions, EmulatedReduction) else reductions.get(name)
        if reduction is None:
            raise TPPlanError(f"no emulated reduction for {name}")
        return reduction

    replacements: dict[str, nn.Module] = {}
    in_blocks: set[str] = set()
    for name in (n for n, s in styles.items() if s in _ROW):
        block_name, _, row = name.rpartition(".")
        if block_name in replacements:
            raise TPPlanError(f"{block_name}: more than one row-parallel module in a block is not emulated")
        locals_ = [n for n, s in styles.items() if s in _LOCAL_COLUMN and n.startswith(f"{block_name}.")]
        replacements[block_name] = EmulatedRowParallelBlock(
            modules[block_name], world_size, row, [n[len(block_name) + 1:] for n in locals_],
            reduction_of(name), channels.get(name))
        in_blocks.update(locals_)
    for name, style in styles.items():
        if style in _ROW or name in in_blocks or style in _UNCHANGED:
            continue
        if style in _GATHERED_COLUMN:
            replacements[name] = EmulatedColumnParallel(modules[name], world_size)
        elif style == "embedding_rowwise":
            replacements[name] = EmulatedVocabParallelEmbedding(modules[name], world_size, reduction_of(name),
                                                                channels.get(name))
        else:
            raise TPPlanError(f"{name}: TP style {style!r} is not emulated here")
    # deepest first: a gathered column inside a block (Phi3's qkv_proj) goes into the block's own module,
    # which the block's stand-in wraps
    with _swapped(model, dict(sorted(replacements.items(), key=lambda kv: -kv[0].count(".")))):
        yield model
