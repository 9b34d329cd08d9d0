"""A row-parallel ``ParallelStyle`` whose output all-reduce is compressed.

PyTorch's :class:`~torch.distributed.tensor.parallel.RowwiseParallel` shards a
``Linear`` along its input features; every rank then holds a *partial* output
(a ``Partial`` DTensor) and the style's output hook redistributes it to
``Replicate``, which is a plain all-reduce. :class:`CompressedRowwiseParallel`
keeps the weight sharding and input handling of ``RowwiseParallel`` unchanged
and replaces only that output reduction: it takes the local partial tensor and
sums it across the mesh with mxcomm's compressed all-reduce in a block format
(:func:`mxcomm.collectives.functional_all_reduce`, one ``mxcomm::all_reduce``
custom op, so a compiled model traces it as one node). Every rank gets a bitwise-identical result (a property of the
collective), so the output is a genuine ``Replicate`` DTensor.

The communication settings live on the parallelized module (attribute
``mxcomm_comm``, a :class:`RowwiseComm`) and are read on every forward, so they
can be changed without re-sharding (:func:`mxcomm.tp.set_comm_format`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.nn as nn
from torch.distributed import ProcessGroup
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate
from torch.distributed.tensor.parallel import RowwiseParallel
from torch.distributed.tensor.placement_types import Partial, Placement

from mxcomm.collectives import Algorithm, functional_all_reduce, functional_all_reduce_with_outliers
from mxcomm.collectives.algorithms import REQUESTABLE
from mxcomm.collectives.planner import gather_format
from mxcomm.errors import FormatError, MxcommError
from mxcomm.formats import BlockFormat, get_format
from mxcomm.kernels.torch_ops import canonical_format

#: Attribute name under which a parallelized module carries its :class:`RowwiseComm`.
COMM_ATTR = "mxcomm_comm"


_COMM_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)

FormatLike = Union[str, BlockFormat]


class TPPlanError(MxcommError, ValueError):
    """A tensor-parallel style or plan was given arguments it cannot honour."""


def resolve_format(fmt: FormatLike | None) -> BlockFormat | None:
    """``None`` / ``"none"`` mean "no compression"; anything else must name a registered format.

    Equal formats resolve to one object (``canonical_format``): a compiled model guards on it by
    identity, so setting an equal format again reuses the compiled graph instead of recompiling.
    """
    if fmt is None or (isinstance(fmt, str) and fmt.lower() == "none"):
        return None
    if isinstance(fmt, BlockFormat):
        return canonical_format(fmt)
    if isinstance(fmt, str):
        return canonical_format(get_format(fmt))
    raise FormatError(f"format must be a BlockFormat, a registered format name or None, got {fmt!r}")


def check_verify(verify: object) -> None:
    """``verify`` (exchange the call descriptor) must be a bool: a truthy string would silently mean True."""
    if not isinstance(verify, bool):
        raise TPPlanError(f"verify must be a bool, got {verify!r}")


@dataclass
class RowwiseComm:
    """How one row-parallel module reduces its partial output (see :func:`compressed_modules`).

    ``fmt is None`` (or ``algorithm == "none"``) runs the uncompressed
    ``algorithm="none"`` path of :func:`mxcomm.collectives.all_reduce` — still
    through mxcomm, so it shows up in :func:`mxcomm.track_comm` with ratio 1.
    ``comm_dtype`` casts the partial sum before it is communicated (and the
    result back to the compute dtype afterwards); ``None`` keeps the compute
    dtype. The evaluation runs an fp32 model with a bf16 wire, the usual
    inference setting the paper compares against. ``outlier_channels``
    (indices into the output's last dimension, e.g. from
    :func:`mxcomm.tp.calibrate_outliers`) travel uncompressed beside the
    compressed rest (:func:`mxcomm.collectives.all_reduce_with_outliers`);
    they are ignored when the reduction is uncompressed. ``gather_fmt`` is
    two-shot's all-gather format (``all_reduce(..., gather_fmt=...)``; None:
    ``fmt``). ``verify=False`` skips the 88-byte descriptor exchange every call
    otherwise starts with (``all_reduce(..., verify=False)``): one small
    all-gather less per reduction, the caller vouching -- as with
    ``torch.distributed`` and transformers' own TP -- that every rank runs the
    same module with the same input shape (a disagreement is undefined: the
    backend may abort or the call time out); ``auto`` then plans from the
    group's estimate without learning or exploring. The outlier path always
    exchanges its descriptors.

    Raises:
        TPPlanError: an unknown algorithm, a ``comm_dtype`` other than float32/bfloat16/float16,
            negative outlier channels, or a ``verify`` that is not a bool.
        FormatError: an unknown format, a gather format rotated or blocked unlike a rotated ``fmt``.
    """

    fmt: BlockFormat | None
    algorithm: str = "auto"
    comm_dtype: torch.dtype | None = None
    outlier_channels: torch.Tensor | None = None
    gather_fmt: BlockFormat | None = None
    verify: bool = True

    def __post_init__(self) -> None:
        check_verify(self.verify)
        self.fmt = resolve_format(self.fmt)
        self.gather_fmt = resolve_format(self.gather_fmt)
        if self.gather_fmt is not None and self.fmt is not None:
            gather_format(self.fmt, self.gather_fmt)  # the pair must be usable, checked before any forward
        if self.algorithm not in REQUESTABLE:
            raise TPPlanError(f"algorithm must be one of {tuple(a.value for a in REQUESTABLE)}, got {self.algorithm!r}")
        self.algorithm = Algorithm(self.algorithm)
        if self.comm_dtype is not None and self.comm_dtype not in _COMM_DTYPES:
            raise TPPlanError(f"comm_dtype must be one of {_COMM_DTYPES} or None, got {self.comm_dtype!r}")
        self.set_outlier_channels(self.outlier_channels)

    def set_outlier_channels(self, channels: Sequence[int] | torch.Tensor | None) -> None:
        """Set (``None`` or empty: remove) the channels sent uncompressed."""
        if channels is None:
            self.outlier_channels = None
            return
        try:
            idx = torch.as_tensor(channels, dtype=torch.int64).reshape(-1)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TPPlanError(f"outlier_channels must be a sequence of ints, got {channels!r}: {exc}") from None
        if idx.numel() and int(idx.min()) < 0:
            raise TPPlanError(f"outlier_channels must be non-negative, got {idx.tolist()}")
        self.outlier_channels = torch.unique(idx) if idx.numel() else None

    @property
    def compressed(self) -> bool:
        return self.fmt is not None and self.algorithm != "none"

    def describe(self) -> str:
        if not self.compressed:
            return "none"
        assert self.fmt is not None
        outliers = "" if self.outlier_channels is None else f"+{self.outlier_channels.numel()}ch"
        gather = f">{self.gather_fmt.name}" if self.gather_fmt is not None and self.algorithm != "allgather" else ""
        unverified = "" if self.verify else " (unverified)"
        return f"{self.fmt.name}[{self.fmt.rounding}]/{self.algorithm}{gather}{outliers}{unverified}"


class _ReduceToReplicate(torch.autograd.Function):
    """Sum the partial outputs of all ranks through mxcomm.

    The backward pass is the identity: each rank's partial contributes with
    weight one to the replicated sum, so the gradient of a partial is the
    (replicated) gradient of the output. Quantization is treated as a
    straight-through estimator, the usual choice for compressed TP training.
    """

    @staticmethod
    def forward(ctx: Any, partial_out: torch.Tensor, comm: RowwiseComm, group: ProcessGroup | None) -> torch.Tensor:
        wire = partial_out.detach().to(comm.comm_dtype or partial_out.dtype)
        # The functional collective ops (one opaque custom op each, see mxcomm.collectives.torch_ops)
        # return a new tensor: the partial, which autograd may still need, is never overwritten, and
        # torch.compile traces the reduction as a single node.
        if comm.compressed and comm.outlier_channels is not None:
            # channel indices out of range raise FormatError here, on every rank alike
            out = functional_all_reduce_with_outliers(wire, comm.fmt, comm.outlier_channels, group,
                                                      algorithm=comm.algorithm, gather_fmt=comm.gather_fmt)
        elif comm.compressed:
            out = functional_all_reduce(wire, comm.fmt, group=group, algorithm=comm.algorithm,
                                        gather_fmt=comm.gather_fmt, verify=comm.verify)
        else:
            out = functional_all_reduce(wire, None, group=group, algorithm="none", verify=comm.verify)
        return out if out.dtype == partial_out.dtype else out.to(partial_out.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad_out, None, None


def reduce_partial(partial_out: torch.Tensor, comm: RowwiseComm, group: ProcessGroup | None) -> torch.Tensor:
    """Sum ``partial_out`` over ``group`` as ``comm`` says (autograd: identity backward)."""
    return _ReduceToReplicate.apply(partial_out, comm, group)


class CompressedRowwiseParallel(RowwiseParallel):
    """``RowwiseParallel`` with an mxcomm-compressed output all-reduce.

    Use it with :func:`torch.distributed.tensor.parallel.parallelize_module`
    exactly like PyTorch's own styles::

        parallelize_module(mlp, tp_mesh, {"w1": ColwiseParallel(),
                                          "w2": CompressedRowwiseParallel("mxfp8_e4m3")})

    Args:
        fmt: block format (object or registered name) for the all-reduce, or
            ``None`` / ``"none"`` for mxcomm's uncompressed path.
        algorithm: ``"auto"`` (mxcomm's planner), ``"allgather"`` (one-shot),
            ``"two_shot"`` or ``"none"``; passed to :func:`mxcomm.all_reduce`.
        comm_dtype: dtype the partial sums travel in (``None``: the compute dtype).
        outlier_channels: output channels (last dimension) sent uncompressed
            beside the compressed rest, e.g. a module's entry of
            :func:`mxcomm.tp.calibrate_outliers`; ``None``: none.
        gather_fmt: two-shot's all-gather format (``None``: ``fmt``; see
            :func:`mxcomm.all_reduce`).
        verify: exchange the call descriptor on every reduction (see :class:`RowwiseComm`).
        input_layouts, use_local_output: as for ``RowwiseParallel``.
        output_layouts: only ``Replicate()`` (the default) is supported; a
            sharded output would need a compressed reduce-scatter.

    Linear and Embedding modules are supported, like ``RowwiseParallel``.

    Raises:
        TPPlanError: an output layout other than ``Replicate()``, a bad algorithm or
            ``comm_dtype``; when applied, a mesh that is not 1-D.
        FormatError: an unknown format.
    """

    def __init__(
        self,
        fmt: FormatLike | None,
        *,
        algorithm: str = "auto",
        comm_dtype: torch.dtype | None = None,
        outlier_channels: Sequence[int] | torch.Tensor | None = None,
        input_layouts: Placement | None = None,
        output_layouts: Placement | None = None,
        use_local_output: bool = True,
        gather_fmt: FormatLike | None = None,
        verify: bool = True,
    ) -> None:
        super().__init__(
            input_layouts=input_layouts, output_layouts=output_layouts, use_local_output=use_local_output
        )
        if self.output_layouts != (Replicate(),):
            raise TPPlanError(
                f"CompressedRowwiseParallel only produces a Replicate() output, got {output_layouts!r}"
            )
        self.comm = RowwiseComm(resolve_format(fmt), algorithm, comm_dtype, outlier_channels,
                                resolve_format(gather_fmt), verify)

    # RowwiseParallel._apply binds ``self._prepare_output_fn`` with
    # (output_layouts, use_local_output); overriding it as an instance method
    # keeps the parent's partitioning and input preparation untouched.
    def _prepare_output_fn(  # type: ignore[override]
        self,
        output_layouts: tuple[Placement, ...],
        use_local_output: bool,
        mod: nn.Module,
        outputs: Any,
        device_mesh: DeviceMesh,
    ) -> Any:
        if not isinstance(outputs, DTensor):
            raise TPPlanError(
                f"{type(mod).__name__} under CompressedRowwiseParallel returned {type(outputs).__name__}, "
                "expected a DTensor"
            )
        placements = outputs.placements
        if len(placements) != 1 or not (isinstance(placements[0], Partial) and placements[0].reduce_op == "sum"):
            raise TPPlanError(
                f"CompressedRowwiseParallel expected a Partial(sum) output, got placements {placements}"
            )
        comm: RowwiseComm = getattr(mod, COMM_ATTR)
        reduced = reduce_partial(outputs.to_local(), comm, device_mesh.get_group())
        if use_local_output:
            return reduced
        return DTensor.from_local(reduced, device_mesh, output_layouts, run_check=False)

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        if device_mesh.ndim != 1:
            raise TPPlanError(f"CompressedRowwiseParallel needs a 1-D device mesh, got {device_mesh.ndim}-D")
        out = super()._apply(module, device_mesh)
        # One settings object per module, so that later per-module changes stay local.
        setattr(module, COMM_ATTR, RowwiseComm(self.comm.fmt, self.comm.algorithm, self.comm.comm_dtype,
                                               self.comm.outlier_channels, self.comm.gather_fmt, self.comm.verify))
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(fmt={self.comm.fmt.name if self.comm.fmt else None!r}, "
            f"algorithm={self.comm.algorithm!r}, comm_dtype={self.comm.comm_dtype}, "
            f"outlier_channels={None if self.comm.outlier_channels is None else self.comm.outlier_channels.tolist()}, "
            f"verify={self.comm.verify}, input_layouts={self.input_layouts}, use_local_output={self.use_local_output})"
        )


def compressed_modules(model: nn.Module) -> dict[str, RowwiseComm]:
    """The communication settings of every module parallelized with :class:`CompressedRowwiseParallel`.

    Returns:
        Module name -> its :class:`RowwiseComm` (the live object: changing it changes the module).
    """
    return {name: getattr(mod, COMM_ATTR) for name, mod in model.named_modules() if hasattr(mod, COMM_ATTR)}


def set_comm_format(
    model: nn.Module,
    fmt: FormatLike | None,
    *,
    algorithm: str | None = None,
    comm_dtype: torch.dtype | None | str = "keep",
    names: Any = None,
    gather_fmt: FormatLike | None = None,
    verify: bool | None = None,
) -> int:
    """Change the all-reduce format of already parallelized modules, without re-sharding.

    Outlier channels stay as they are (:func:`mxcomm.tp.set_outlier_channels`).

    Args:
        model: A model parallelized with :class:`CompressedRowwiseParallel` modules.
        fmt: The new format (``None`` / ``"none"``: mxcomm's uncompressed path).
        algorithm: The new algorithm (``None``: keep each module's).
        comm_dtype: The new wire dtype (``"keep"``: keep each module's).
        names: Module names to change (default: every compressed row-parallel module).
        gather_fmt: The new two-shot gather format (``None``: none, i.e. ``fmt``).
        verify: Exchange the call descriptor on every reduction (``None``: keep each module's;
            see :class:`RowwiseComm`).

    Returns:
        The number of modules changed.

    Raises:
        TPPlanError: ``names`` lists a module that is not compressed row-parallel, or a bad
            algorithm, ``comm_dtype`` or ``verify``.
        FormatError: an unknown format, or a gather format that does not fit ``fmt``.
    """
    targets = compressed_modules(model)
    if names is not None:
        wanted = list(names)
        missing = [n for n in wanted if n not in targets]
        if missing:
            raise TPPlanError(f"not CompressedRowwiseParallel modules: {missing}")
        targets = {n: targets[n] for n in wanted}
    new_fmt = resolve_format(fmt)
    for comm in targets.values():
        updated = RowwiseComm(
            new_fmt,
            comm.algorithm if algorithm is None else algorithm,
            comm.comm_dtype if isinstance(comm_dtype, str) and comm_dtype == "keep" else comm_dtype,  # type: ignore[arg-type]
            gather_fmt=gather_fmt,
            verify=comm.verify if verify is None else verify,
        )
        comm.fmt, comm.algorithm, comm.comm_dtype = updated.fmt, updated.algorithm, updated.comm_dtype
        comm.gather_fmt, comm.verify = updated.gather_fmt, updated.verify
    return len(targets)
