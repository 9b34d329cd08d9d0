"""Single-process emulation of compressed tensor parallelism: what the TP ranks compute, without a group.

This is the issue's reference method (the ``emulation`` column of ``mxcomm eval
--emulate``) and the oracle of the TP tests: for the compressed algorithms the
distributed logits must equal the emulation's bit for bit.

:func:`emulated_tensor_parallel` swaps the projections of a Llama-family
model (the modules :func:`mxcomm.tp.parallelize_llama` shards) for stand-ins
that compute exactly what the ranks compute:

* column-parallel (q/k/v, gate/up): every rank's output slice with the rank's
  weight (and bias) slice -- the same GEMM shapes as on the ranks -- concatenated;
  attention and the MLP's activation then act on whole heads / features, as on
  the ranks;
* row-parallel (o_proj, down_proj): rank r's partial product of its contiguous
  input slice with its weight slice (:func:`rank_partials`), cast to the wire
  dtype, then summed by :class:`EmulatedReduction` with the arithmetic of
  :func:`mxcomm.all_reduce`:

  - one-shot (``allgather``): every partial encoded, decoded to fp32, summed in
    rank order, cast once (saturating);
  - two-shot: for chunk c, the other ranks' encoded-and-decoded chunks in rank
    order, plus the owner's chunk exactly; the sum re-encoded (in the gather
    format, when one is given), and every rank (the owner too) uses the decoded
    re-encoded chunk; chunks and segments aligned to both formats' blocks;
  - rotated formats: each partial zero-padded to whole blocks and rotated in
    fp32; both algorithms then run in the rotated domain with the plain format
    and un-rotate once at the end;
  - pipeline segments (:data:`mxcomm.collectives.planner.DEFAULT_SEGMENT_ELEMS`)
    are reduced independently, as the collectives do;
  - outlier channels (``mxcomm.all_reduce_with_outliers``): those channels summed
    exactly in fp32 in rank order, the rest (channels zeroed) reduced compressed.

``none`` is emulated as the fp32 sum of the wire-dtype partials in rank order,
cast once: a process group's own all-reduce (gloo's ring) sums in an order of
its own, which no emulation reproduces bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mxcomm.bench.rank_setup import log_stderr
from mxcomm.bench.settings import CommSetting
from mxcomm.bench.smollm2 import Assets, EvalSetupError, load_model, load_tokens, windows
from mxcomm.collectives.outliers import channel_index
from mxcomm.collectives.planner import (
    DEFAULT_SEGMENT_ELEMS,
    chunk_bounds,
    gather_format,
    segment_bounds,
    two_shot_block,
)
from mxcomm.formats import BlockFormat
from mxcomm.kernels import decode, encode
from mxcomm.kernels.reference import saturating_cast
from mxcomm.kernels.rotation import rotate, unrotate
from mxcomm.tp.llama import COLWISE_PROJECTIONS, ROWWISE_PROJECTIONS, find_layers
from mxcomm.tp.style import TPPlanError

Log = Callable[[str], None]
EMULATED_ALGORITHMS: tuple[str, ...] = ("allgather", "two_shot", "none")


# -- the all-reduce ----------------------------------------------------------------------------------


def _sum_in_rank_order(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """fp32 sum, left to right (what ``decode_sum`` and the outlier-channel sum do)."""
    acc = parts[0].to(torch.float32, copy=True)
    for p in parts[1:]:
        acc += p
    return acc


def _decoded(x: torch.Tensor, fmt: BlockFormat, backend: str) -> torch.Tensor:
    """What a peer gets for ``x``: encoded, sent, decoded to fp32."""
    return decode(encode(x, fmt, backend=backend), dtype=torch.float32, backend=backend)


def _rotated_padded(x: torch.Tensor, fmt: BlockFormat) -> torch.Tensor:
    """``x`` (flat) zero-padded to whole blocks in fp32 and rotated: one row of shape (1, padded)."""
    assert fmt.rotation_seed is not None
    bs = fmt.block_size
    padded = torch.zeros((1, -(-x.numel() // bs) * bs), dtype=torch.float32, device=x.device)
    padded[0, : x.numel()] = x
    return rotate(padded, fmt.rotation_seed, bs)


def _unrotated(rotated: torch.Tensor, fmt: BlockFormat, length: int, dtype: torch.dtype) -> torch.Tensor:
    assert fmt.rotation_seed is not None
    return saturating_cast(unrotate(rotated.view(1, -1), fmt.rotation_seed, fmt.block_size)[0, :length], dtype)


def _one_shot(parts: Sequence[torch.Tensor], fmt: BlockFormat, dtype: torch.dtype, backend: str) -> torch.Tensor:
    if fmt.rotation_seed is None:
        return saturating_cast(_sum_in_rank_order([_decoded(p, fmt, backend) for p in parts]), dtype)
    plain = fmt.with_options(rotation_seed=None)
    summed = _sum_in_rank_order([_decoded(_rotated_padded(p, fmt), plain, backend) for p in parts])
    return _unrotated(summed, fmt, parts[0].numel(), dtype)


def _two_shot_plain(parts: Sequence[torch.Tensor], fmt: BlockFormat, dtype: torch.dtype, backend: str,
                    gather: BlockFormat) -> torch.Tensor:
    n, length = len(parts), parts[0].numel()
    out = torch.empty(length, dtype=dtype, device=parts[0].device)
    for owner, (a, b) in enumerate(chunk_bounds(length, n, two_shot_block(fmt, gather))):
        if b <= a:
            continue
        others = [_decoded(parts[j][a:b], fmt, backend) for j in range(n) if j != owner]
        own = parts[owner][a:b]  # never leaves the owner: enters exactly
        reduced = _sum_in_rank_order(others).add_(own) if others else own.to(torch.float32)
        out[a:b] = decode(encode(reduced, gather, backend=backend), dtype=dtype, backend=backend)
    return out


def _two_shot(parts: Sequence[torch.Tensor], fmt: BlockFormat, dtype: torch.dtype, backend: str,
              gather: BlockFormat) -> torch.Tensor:
    if fmt.rotation_seed is None:
        return _two_shot_plain(parts, fmt, dtype, backend, gather)
    plain, plain_gather = fmt.with_options(rotation_seed=None), gather.with_options(rotation_seed=None)
    summed = _two_shot_plain([_rotated_padded(p, fmt).view(-1) for p in parts], plain, torch.float32, backend,
                             plain_gather)
    return _unrotated(summed, fmt, parts[0].numel(), dtype)


def emulated_all_reduce(
    partials: Sequence[torch.Tensor],
    fmt: BlockFormat,
    algorithm: str,
    *,
    segment_elems: int = DEFAULT_SEGMENT_ELEMS,
    backend: str = "auto",
    gather_fmt: BlockFormat | None = None,
) -> torch.Tensor:
    """The result every rank of ``mxcomm.all_reduce(partials[r], fmt, algorithm=..., gather_fmt=...)`` ends with.

    ``partials``: rank r's tensor at index r (same shape and dtype); the result has that
    shape and dtype. ``algorithm``: ``allgather`` or ``two_shot``. ``gather_fmt``: two-shot's
    all-gather format (None: ``fmt``).
    """
    if algorithm not in ("allgather", "two_shot"):
        raise TPPlanError(f"the emulation reduces compressed with allgather or two_shot, got {algorithm!r}")
    first = partials[0]
    if any(p.shape != first.shape or p.dtype != first.dtype for p in partials):
        raise TPPlanError("the emulated partials must share shape and dtype")
    gather = gather_format(fmt, gather_fmt)  # validates the pair as the collective does
    flats = [p.contiguous().view(-1) for p in partials]
    out = torch.empty_like(flats[0])
    # segments start on block boundaries (of both two-shot formats), as the collective rounds them
    block = two_shot_block(fmt, gather_fmt)
    seg = -(-segment_elems // block) * block
    for s0, s1 in segment_bounds(out.numel(), seg):
        parts = [f[s0:s1] for f in flats]
        if algorithm == "allgather":
            out[s0:s1] = _one_shot(parts, fmt, out.dtype, backend)
        else:
            out[s0:s1] = _two_shot(parts, fmt, out.dtype, backend, gather)
    return out.view(first.shape)


@dataclass(frozen=True)
class EmulatedReduction:
    """How the ranks sum a row-parallel module's partial outputs (the settings of its ``RowwiseComm``).

    ``fmt`` None or ``algorithm`` ``"none"``: uncompressed (see the module docstring).
    ``comm_dtype``: the wire dtype (None: the compute dtype). ``gather_fmt``: two-shot's
    all-gather format (None: ``fmt``).
    """

    fmt: BlockFormat | None
    algorithm: str = "allgather"
    comm_dtype: torch.dtype | None = None
    backend: str = "auto"
    gather_fmt: BlockFormat | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in EMULATED_ALGORITHMS:
            raise TPPlanError(f"the emulation runs {EMULATED_ALGORITHMS}, not {self.algorithm!r} (auto depends "
                              "on a measured cost model)")

    @classmethod
    def of(cls, setting: CommSetting) -> EmulatedReduction:
        return cls(setting.block_format(), setting.algorithm, setting.wire_dtype)

    @property
    def compressed(self) -> bool:
        return self.fmt is not None and self.algorithm != "none"

    def __call__(self, partials: Sequence[torch.Tensor], outlier_channels: torch.Tensor | None = None) -> torch.Tensor:
        compute = partials[0].dtype
        wire = [p.to(self.comm_dtype or compute) for p in partials]
        if not self.compressed:
            total = _sum_in_rank_order(wire).to(wire[0].dtype)
        elif outlier_channels is None:
            total = self._compressed(wire)
        else:
            total = self._with_outliers(wire, outlier_channels)
        return total.to(compute)

    def _compressed(self, wire: Sequence[torch.Tensor]) -> torch.Tensor:
        assert self.fmt is not None
        return emulated_all_reduce(wire, self.fmt, self.algorithm, backend=self.backend, gather_fmt=self.gather_fmt)

    def _with_outliers(self, wire: Sequence[torch.Tensor], channels: torch.Tensor) -> torch.Tensor:
        idx = channel_index(channels, wire[0].shape[-1])
        if idx.numel() == 0:
            return self._compressed(wire)
        exact = _sum_in_rank_order([p.index_select(-1, idx) for p in wire])
        total = self._compressed([p.index_fill(-1, idx, 0) for p in wire])
        total.index_copy_(-1, idx, exact.to(total.dtype))
        return total


# -- the modules ---------------------------------------------------------------------------------------


def _rank_slices(size: int, world: int, what: str) -> list[slice]:
    if size % world:
        raise TPPlanError(f"tensor-parallel size {world} must divide {what} ({size})")
    step = size // world
    return [slice(r * step, (r + 1) * step) for r in range(world)]


def rank_partials(linear: nn.Linear, x: torch.Tensor, world: int) -> list[torch.Tensor]:
    """Rank r's partial output of a row-parallel ``linear``: its contiguous input slice times its weight slice.

    The shards are contiguous, as ``RowwiseParallel`` makes them, so the GEMM is
    the one a rank runs. Their sum (plus the bias, which Llama has not) is the output.
    """
    w = linear.weight
    return [F.linear(x[..., cols].contiguous(), w[:, cols].contiguous())
            for cols in _rank_slices(linear.in_features, world, f"{linear.in_features} input features")]


class EmulatedColumnParallel(nn.Module):
    """A column-parallel ``Linear``: every rank's output slice, computed with the rank's shapes, concatenated."""

    def __init__(self, linear: nn.Linear, world: int) -> None:
        super().__init__()
        self.linear = linear
        self.slices = _rank_slices(linear.out_features, world, f"{linear.out_features} output features")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.linear.weight, self.linear.bias
        return torch.cat([F.linear(x, w[rows], None if b is None else b[rows]) for rows in self.slices], dim=-1)


class EmulatedRowParallel(nn.Module):
    """A row-parallel ``Linear``: the ranks' partial outputs, summed as ``reduction`` says."""

    def __init__(self, linear: nn.Linear, world: int, reduction: EmulatedReduction,
                 outlier_channels: Sequence[int] | None = None) -> None:
        super().__init__()
        if linear.bias is not None:
            # RowwiseParallel adds a bias through DTensor's Partial/Replicate rules; not emulated
            raise TPPlanError("the emulation covers bias-free row-parallel projections (as in Llama, Qwen2, Mistral)")
        self.linear, self.world, self.reduction = linear, world, reduction
        self.outlier_channels = None if outlier_channels is None else torch.as_tensor(outlier_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(rank_partials(self.linear, x, self.world), self.outlier_channels)


def row_parallel_names(model: nn.Module) -> list[str]:
    """Names of the row-parallel projections of a Llama-family model, layer by layer (o_proj, down_proj)."""
    path, layers = find_layers(model)
    return [f"{path}.{i}.{proj}" for i in range(len(layers)) for proj in ROWWISE_PROJECTIONS]


@contextmanager
def emulated_tensor_parallel(
    model: nn.Module,
    world_size: int,
    reduction: EmulatedReduction | Mapping[str, EmulatedReduction],
    outlier_channels: Mapping[str, Sequence[int]] | None = None,
) -> Iterator[nn.Module]:
    """Within the block, ``model`` (an unsharded Llama-family model) computes what ``world_size`` ranks do.

    ``reduction``: one for every row-parallel projection, or module name
    (``model.layers.3.mlp.down_proj``) -> reduction naming every one of them (a
    per-module plan). ``outlier_channels``: module name -> channels sent exactly,
    as :func:`mxcomm.tp.set_outlier_channels` takes them (used only when the
    reduction is compressed, as on the ranks). The stand-ins
    (:class:`EmulatedRowParallel`) keep their ``reduction`` and ``outlier_channels``
    as attributes, which may be changed inside the block. The original projections
    are restored on exit.
    """
    path, layers = find_layers(model)
    channels = dict(outlier_channels or {})
    known = set(row_parallel_names(model))
    unknown = sorted(set(channels) - known)
    if unknown:
        raise TPPlanError(f"outlier channels for modules that are not row-parallel projections: {unknown[:4]}")
    if not isinstance(reduction, EmulatedReduction):
        stray, missing = sorted(set(reduction) - known), sorted(known - set(reduction))
        if stray or missing:
            raise TPPlanError(f"per-module reductions must name exactly the row-parallel projections: "
                              f"unknown {stray[:4]}, missing {missing[:4]}")
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for i, layer in enumerate(layers):
            for proj in COLWISE_PROJECTIONS + ROWWISE_PROJECTIONS:
                parent_name, name = proj.rsplit(".", 1)
                parent = layer.get_submodule(parent_name)
                linear = getattr(parent, name)
                if not isinstance(linear, nn.Linear):
                    raise TPPlanError(f"{path}.{i}.{proj} is a {type(linear).__name__}, expected nn.Linear")
                if proj in COLWISE_PROJECTIONS:
                    stand_in: nn.Module = EmulatedColumnParallel(linear, world_size)
                else:
                    full = f"{path}.{i}.{proj}"
                    own = reduction if isinstance(reduction, EmulatedReduction) else reduction[full]
                    stand_in = EmulatedRowParallel(linear, world_size, own, channels.get(full))
                setattr(parent, name, stand_in)
                swapped.append((parent, name, linear))
        yield model
    finally:
        for parent, name, linear in reversed(swapped):
            setattr(parent, name, linear)


def emulate_perplexity(
    assets: Assets,
    settings: Sequence[CommSetting],
    *,
    world_size: int = 3,
    num_windows: int = 4,
    window_tokens: int = 512,
    calibration: object = None,
    log: Log = log_stderr,
) -> dict[str, float]:
    """Perplexity per setting label from the one-process emulation (``auto`` settings are left out).

    ``calibration``: an :class:`mxcomm.tp.OutlierCalibration`, needed by settings with outlier channels.
    """
    from mxcomm.bench.perplexity import perplexity, token_nll

    model = load_model(assets)
    data = windows(load_tokens(assets), num_windows, window_tokens)
    out: dict[str, float] = {}
    for i, setting in enumerate(settings):
        if setting.algorithm not in EMULATED_ALGORITHMS:
            log(f"[emulation {i + 1}/{len(settings)}] {setting.label}: not emulated ({setting.algorithm})")
            continue
        if setting.outliers and calibration is None:
            raise EvalSetupError(f"{setting.label} needs an outlier calibration")
        channels = calibration.top(setting.outliers) if setting.outliers else None  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        with emulated_tensor_parallel(model, world_size, EmulatedReduction.of(setting), channels):
            out[setting.label] = perplexity(token_nll(model, data))
        log(f"[emulation {i + 1}/{len(settings)}] {setting.label:<32} ppl {out[setting.label]:8.4f}  "
            f"{time.perf_counter() - t0:5.1f} s")
    return out
