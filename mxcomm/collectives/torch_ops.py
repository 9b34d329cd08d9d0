"""The compressed collectives as torch custom ops: one opaque node each inside a compiled graph.

Schemas (namespace ``mxcomm``, registered with ``torch.library``)::

    mxcomm::all_reduce(Tensor tensor, str fmt, str reduce_op, str algorithm, str group_name,
                       int segment_elems, str backend, bool verify, str gather_fmt) -> Tensor
    mxcomm::all_reduce_with_outliers(Tensor tensor, str fmt, Tensor channels, str algorithm,
                                     str group_name, str backend, str gather_fmt) -> Tensor
    mxcomm::all_gather_into_tensor(Tensor input, str fmt, str group_name, str backend, bool verify) -> Tensor
    mxcomm::reduce_scatter_tensor(Tensor input, str fmt, str reduce_op, str group_name, str backend,
                                  bool verify) -> Tensor

**Functional, not in place.** Each op returns a new tensor and leaves its input
alone, like ``torch.distributed._functional_collectives`` and vLLM's
``vllm::all_reduce`` (group passed by name). A functional op needs no aliasing
or mutation analysis in AOTAutograd / functionalization (no ``auto_functionalized``
wrapper, no copy-back the compiler must keep), so inductor is free to plan its
buffers around it, which is also what CUDA-graph capture wants; and the
tensor-parallel reduction, the main user, needs a fresh tensor anyway (it must
not overwrite a partial that autograd may still need). The ops are marked as
having side effects (``torch.fx.node.has_side_effect``) so a compiler never
drops one whose result is unused: every rank must take part in every collective.

Everything host-side -- the descriptor exchange and its checks, the planner,
the accounting (``track_comm`` records every call a compiled model makes),
timing -- runs inside the op's real implementation, which is the eager
collective of ``mxcomm.collectives.ops`` and is never traced. Bad input raises
the same documented exceptions there as in eager code, on every rank
(``CollectiveMismatchError`` included): a format that does not resolve when a
graph is traced travels into the op as its raw name and fails inside the
collective, after the descriptor exchange.

``fmt`` is a format spec (``mxcomm.kernels.torch_ops.format_spec``), ``""`` for
no format (``algorithm="none"``; for ``gather_fmt``: none, i.e. ``fmt``) or ``"?<name>"`` for a name that did not
resolve. ``segment_elems`` 0 means the planner's choice (-1: an invalid value). The group is
``ProcessGroup.group_name`` (resolved with c10d's registry).

Inside ``torch.compile`` the public collectives (``mxcomm.all_reduce`` and
friends, in place, torch's signatures) run through these ops: the in-place
form becomes ``tensor.copy_(op(tensor))``, the compiler's usual rewrite of
``dist.all_reduce``. The ``functional_*`` functions here are the functional API.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from mxcomm.collectives import ops
from mxcomm.collectives.outliers import all_reduce_with_outliers
from mxcomm.errors import ArgumentTypeError, FormatError
from mxcomm.formats import BlockFormat, get_format
from mxcomm.kernels.torch_ops import constant_when_traced, format_from_spec, format_spec, opaque_to_dynamo

NAMESPACE = "mxcomm"
UNRESOLVED_PREFIX = "?"


# -- arguments that cross the op boundary ----------------------------------------------------------
@constant_when_traced
def format_arg(fmt: str | BlockFormat | None) -> str:
    """``fmt`` as a collective op's ``fmt`` string (resolved once, when a graph is traced).

    ``""`` for None; the format spec of a ``BlockFormat`` or of a name that resolves; for a name
    that does not resolve, ``"?<name>"``: the collective then raises the eager ``FormatError``
    when it runs, on every rank (the others get ``CollectiveMismatchError``), instead of this
    rank alone raising while tracing while its peers wait in the exchange. Never raises.
    """
    if fmt is None:
        return ""
    if isinstance(fmt, BlockFormat):
        return format_spec(fmt)
    try:
        return format_spec(get_format(fmt))
    except FormatError:
        return UNRESOLVED_PREFIX + str(fmt)


def _format_of(arg: str) -> str | BlockFormat | None:
    """Inverse of :func:`format_arg` (inside the op)."""
    if not arg:
        return None
    if arg.startswith(UNRESOLVED_PREFIX):
        return arg[len(UNRESOLVED_PREFIX) :]
    return format_from_spec(arg)


@constant_when_traced
def reduce_op_arg(op: Any) -> str:
    """``op`` as a string the eager collective accepts: ``"sum"`` for SUM, else a description
    that it rejects with ``UnsupportedReduceOpError`` (inside the op, on every rank). Never raises."""
    if isinstance(op, str):
        return op
    if isinstance(op, (dist.ReduceOp, dist.ReduceOp.RedOpType)) and op == dist.ReduceOp.SUM:
        return "sum"
    return repr(op)


@constant_when_traced
def algorithm_arg(algorithm: Any) -> str:
    """``algorithm`` as a string (an ``Algorithm`` member is one); anything else as its repr, which
    the collective rejects with ``FormatError`` inside the op. Never raises."""
    return str(algorithm) if isinstance(algorithm, str) else repr(algorithm)


def segment_elems_arg(segment_elems: Any) -> int:
    """0 for None (the planner's choice); an int as it is; anything else -1, which the collective
    rejects with ``FormatError`` inside the op, on every rank."""
    if segment_elems is None:
        return 0
    return segment_elems if isinstance(segment_elems, int) and not isinstance(segment_elems, bool) else -1


def group_name(group: ProcessGroup | None) -> str:
    """The registered name of ``group`` (None: the default group)."""
    return dist.group.WORLD.group_name if group is None else group.group_name


def _group(name: str) -> ProcessGroup:
    return dist.distributed_c10d._resolve_process_group(name)


def _check_tensor(t: Any, what: str) -> torch.Tensor:
    # the one check that cannot wait for the op: a non-tensor cannot be passed to it
    if not isinstance(t, torch.Tensor):
        raise ArgumentTypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    return t


# -- op implementations (eager collectives; never traced) ------------------------------------------
def _all_reduce_impl(tensor, fmt, reduce_op, algorithm, group_name, segment_elems, backend, verify,  # noqa: ANN001
                     gather_fmt):
    out = tensor.clone(memory_format=torch.contiguous_format)
    ops.all_reduce(out, _format_of(fmt), reduce_op, _group(group_name), algorithm=algorithm,
                   segment_elems=None if segment_elems == 0 else segment_elems, backend=backend, verify=verify,
                   gather_fmt=_format_of(gather_fmt))
    return out


def _all_reduce_fake(tensor, fmt, reduce_op, algorithm, group_name, segment_elems, backend, verify,  # noqa: ANN001
                     gather_fmt):
    return tensor.new_empty(tensor.shape)


def _outliers_impl(tensor, fmt, channels, algorithm, group_name, backend, gather_fmt):  # noqa: ANN001
    out = tensor.clone(memory_format=torch.contiguous_format)
    all_reduce_with_outliers(out, _format_of(fmt), channels, group=_group(group_name), algorithm=algorithm,
                             backend=backend, gather_fmt=_format_of(gather_fmt))
    return out


def _outliers_fake(tensor, fmt, channels, algorithm, group_name, backend, gather_fmt):  # noqa: ANN001
    return tensor.new_empty(tensor.shape)


def _gathered_shape(shape: Any, n: int) -> list:
    """Rank r's tensor fills rows ``[r*d0, (r+1)*d0)`` (a 0-d input gathers into ``(n,)``)."""
    return [n * shape[0], *shape[1:]] if len(shape) else [n]


def _all_gather_impl(input, fmt, group_name, backend, verify):  # noqa: A002, ANN001
    group = _group(group_name)
    out = input.new_empty(_gathered_shape(input.shape, group.size()))
    ops.all_gather_into_tensor(out, input, _format_of(fmt), group, backend=backend, verify=verify)
    return out


def _all_gather_fake(input, fmt, group_name, backend, verify):  # noqa: A002, ANN001
    return input.new_empty(_gathered_shape(input.shape, _group(group_name).size()))


def _scattered_shape(shape: Any, n: int) -> list:
    """Dim 0 split in ``n`` (the eager check rejects a dim 0 that ``n`` does not divide)."""
    return [shape[0] // n, *shape[1:]] if len(shape) else [0]


def _reduce_scatter_impl(input, fmt, reduce_op, group_name, backend, verify):  # noqa: A002, ANN001
    group = _group(group_name)
    out = input.new_empty(_scattered_shape(input.shape, group.size()))
    ops.reduce_scatter_tensor(out, input, _format_of(fmt), reduce_op, group, backend=backend, verify=verify)
    return out


def _reduce_scatter_fake(input, fmt, reduce_op, group_name, backend, verify):  # noqa: A002, ANN001
    return input.new_empty(_scattered_shape(input.shape, _group(group_name).size()))


# The descriptor exchange reads its result on the host: inductor must not put these ops in a CUDA
# graph (mode="reduce-overhead" partitions the graph around them). Absent from older torch.
_TAGS = tuple(t for t in (getattr(torch.Tag, "cudagraph_unsafe", None),) if t is not None)


def _define(name: str, schema: str, impl, fake) -> Any:  # noqa: ANN001
    qualname = f"{NAMESPACE}::{name}"
    torch.library.define(qualname, schema, tags=_TAGS)
    torch.library.impl(qualname, "CompositeExplicitAutograd", opaque_to_dynamo(impl))
    torch.library.register_fake(qualname, fake)
    overload = getattr(torch.ops.mxcomm, name).default
    torch.fx.node.has_side_effect(overload)  # never dead-code eliminated: every rank must take part
    return overload


all_reduce_op = _define(
    "all_reduce",
    "(Tensor tensor, str fmt, str reduce_op, str algorithm, str group_name, int segment_elems, str backend, "
    "bool verify, str gather_fmt) -> Tensor",
    _all_reduce_impl, _all_reduce_fake,
)
all_reduce_with_outliers_op = _define(
    "all_reduce_with_outliers",
    "(Tensor tensor, str fmt, Tensor channels, str algorithm, str group_name, str backend, str gather_fmt) -> Tensor",
    _outliers_impl, _outliers_fake,
)
all_gather_into_tensor_op = _define(
    "all_gather_into_tensor", "(Tensor input, str fmt, str group_name, str backend, bool verify) -> Tensor",
    _all_gather_impl, _all_gather_fake,
)
reduce_scatter_tensor_op = _define(
    "reduce_scatter_tensor",
    "(Tensor input, str fmt, str reduce_op, str group_name, str backend, bool verify) -> Tensor",
    _reduce_scatter_impl, _reduce_scatter_fake,
)


# -- the functional API ----------------------------------------------------------------------------
def functional_all_reduce(
    tensor: torch.Tensor,
    fmt: str | BlockFormat | None,
    op: ops.ReduceOpLike = ops.SUM,
    group: ProcessGroup | None = None,
    *,
    algorithm: str = "auto",
    segment_elems: int | None = None,
    backend: str = "auto",
    verify: bool = True,
    gather_fmt: str | BlockFormat | None = None,
) -> torch.Tensor:
    """The SUM of ``tensor`` over ``group`` compressed in ``fmt``, as a new tensor (``tensor`` unchanged).

    :func:`mxcomm.all_reduce` as a function (one ``mxcomm::all_reduce`` op), for compiled code.
    Arguments and exceptions are those of :func:`mxcomm.all_reduce` (``algorithm="auto"`` plans with
    the group's installed cost model, ``mxcomm.collectives.set_cost_model``).

    Returns:
        A contiguous tensor of ``tensor``'s shape and dtype holding the sum, bitwise identical on every rank.
    """
    _check_tensor(tensor, "all_reduce tensor")
    return all_reduce_op(tensor, format_arg(fmt), reduce_op_arg(op), algorithm_arg(algorithm), group_name(group),
                         segment_elems_arg(segment_elems), backend, verify, format_arg(gather_fmt))


def functional_all_reduce_with_outliers(
    tensor: torch.Tensor,
    fmt: str | BlockFormat,
    channels: torch.Tensor,
    group: ProcessGroup | None = None,
    *,
    algorithm: str = "auto",
    backend: str = "auto",
    gather_fmt: str | BlockFormat | None = None,
) -> torch.Tensor:
    """:func:`mxcomm.collectives.all_reduce_with_outliers` as a function (the sum as a new tensor).

    ``channels`` is an int64 tensor of last-dimension indices (a graph input, so changing its
    values needs no recompilation).
    """
    _check_tensor(tensor, "all_reduce_with_outliers tensor")
    _check_tensor(channels, "all_reduce_with_outliers channels")
    return all_reduce_with_outliers_op(tensor, format_arg(fmt), channels, algorithm_arg(algorithm), group_name(group),
                                       backend, format_arg(gather_fmt))


def functional_all_gather_into_tensor(
    input: torch.Tensor,  # noqa: A002
    fmt: str | BlockFormat,
    group: ProcessGroup | None = None,
    *,
    backend: str = "auto",
    verify: bool = True,
) -> torch.Tensor:
    """:func:`mxcomm.all_gather_into_tensor` as a function: every rank's ``input`` concatenated along
    dim 0 (shape ``(n * d0, *rest)``; ``(n,)`` for 0-d inputs), rank order, decoded on every rank."""
    _check_tensor(input, "all_gather input tensor")
    return all_gather_into_tensor_op(input, format_arg(fmt), group_name(group), backend, verify)


def functional_reduce_scatter_tensor(
    input: torch.Tensor,  # noqa: A002
    fmt: str | BlockFormat,
    op: ops.ReduceOpLike = ops.SUM,
    group: ProcessGroup | None = None,
    *,
    backend: str = "auto",
    verify: bool = True,
) -> torch.Tensor:
    """:func:`mxcomm.reduce_scatter_tensor` as a function: rank r gets the sum of every rank's
    r-th slice of dim 0 (shape ``(d0 // n, *rest)``)."""
    _check_tensor(input, "reduce_scatter input")
    return reduce_scatter_tensor_op(input, format_arg(fmt), reduce_op_arg(op), group_name(group), backend, verify)


# -- the in-place public collectives inside torch.compile -----------------------------------------
class _Completed:
    """The job of a collective that already completed (what ``async_op=True`` returns when traced)."""

    done = True

    def finish(self) -> None:
        pass


def _result(async_op: bool) -> ops.CollectiveHandle | None:
    return ops.CollectiveHandle(_Completed()) if async_op else None  # type: ignore[arg-type]


def _traced_all_reduce(
    tensor: torch.Tensor, fmt: Any, op: Any = ops.SUM, group: ProcessGroup | None = None, async_op: bool = False,
    *, algorithm: str = "auto", model: Any = None, segment_elems: int | None = None, backend: str = "auto",
    verify: bool = True, gather_fmt: Any = None,
) -> ops.CollectiveHandle | None:
    if model is not None:
        raise FormatError(
            "all_reduce(model=...) cannot cross a torch.compile graph: install the cost model with "
            "mxcomm.collectives.set_cost_model(model, group) instead"
        )
    tensor.copy_(functional_all_reduce(tensor, fmt, op, group, algorithm=algorithm, segment_elems=segment_elems,
                                       backend=backend, verify=verify, gather_fmt=gather_fmt))
    return _result(async_op)


def _traced_all_gather_into_tensor(
    output_tensor: torch.Tensor, input_tensor: torch.Tensor, fmt: Any, group: ProcessGroup | None = None,
    async_op: bool = False, *, backend: str = "auto", verify: bool = True,
) -> ops.CollectiveHandle | None:
    _check_tensor(output_tensor, "all_gather output tensor")
    gathered = functional_all_gather_into_tensor(input_tensor, fmt, group, backend=backend, verify=verify)
    _copy_into(output_tensor, gathered, "all_gather output tensor")
    return _result(async_op)


def _traced_all_gather(
    tensor_list: list[torch.Tensor], tensor: torch.Tensor, fmt: Any, group: ProcessGroup | None = None,
    async_op: bool = False, *, backend: str = "auto", verify: bool = True,
) -> ops.CollectiveHandle | None:
    _check_tensor(tensor, "all_gather tensor")
    gathered = functional_all_gather_into_tensor(tensor.unsqueeze(0), fmt, group, backend=backend, verify=verify)
    _check_list(tensor_list, "all_gather tensor_list", tensor, gathered.shape[0])
    for r, t in enumerate(tensor_list):
        t.copy_(gathered[r])
    return _result(async_op)


def _traced_reduce_scatter_tensor(
    output: torch.Tensor, input: torch.Tensor, fmt: Any, op: Any = ops.SUM,  # noqa: A002
    group: ProcessGroup | None = None, async_op: bool = False, *, backend: str = "auto", verify: bool = True,
) -> ops.CollectiveHandle | None:
    _check_tensor(output, "reduce_scatter output")
    _check_tensor(input, "reduce_scatter input")
    # flat, so that any shapes with n x output.numel() elements work as in eager (other sizes fail
    # inside the op, on every rank)
    reduced = functional_reduce_scatter_tensor(input.reshape(-1), fmt, op, group, backend=backend, verify=verify)
    _copy_into(output, reduced, "reduce_scatter output")
    return _result(async_op)


def _traced_reduce_scatter(
    output: torch.Tensor, input_list: list[torch.Tensor], fmt: Any, op: Any = ops.SUM,
    group: ProcessGroup | None = None, async_op: bool = False, *, backend: str = "auto", verify: bool = True,
) -> ops.CollectiveHandle | None:
    _check_tensor(output, "reduce_scatter output")
    _check_list(input_list, "reduce_scatter input_list", output, None)
    stacked = torch.stack([t.reshape(-1) for t in input_list])
    reduced = functional_reduce_scatter_tensor(stacked, fmt, op, group, backend=backend, verify=verify)
    output.copy_(reduced.view(output.shape))
    return _result(async_op)


def _traced_all_reduce_with_outliers(
    tensor: torch.Tensor, fmt: Any, channels: Any, *, group: ProcessGroup | None = None, algorithm: str = "auto",
    backend: str = "auto", gather_fmt: Any = None,
) -> None:
    _check_tensor(tensor, "all_reduce_with_outliers tensor")
    idx = channels if isinstance(channels, torch.Tensor) else torch.tensor(list(channels), dtype=torch.int64)
    tensor.copy_(functional_all_reduce_with_outliers(tensor, fmt, idx, group, algorithm=algorithm, backend=backend,
                                                     gather_fmt=gather_fmt))


def _copy_into(out: torch.Tensor, result: torch.Tensor, what: str) -> None:
    # the op ran on every rank; a wrong output now fails on this rank alone, as in eager
    if out.numel() != result.numel() or out.dtype != result.dtype or out.device != result.device:
        raise FormatError(f"{what} must hold {result.numel()} elements of {result.dtype} on {result.device}, "
                          f"got {out.numel()} of {out.dtype} on {out.device}")
    out.copy_(result.view(out.shape))


def _check_list(items: Any, what: str, like: torch.Tensor, n: int | None) -> None:
    if not isinstance(items, (list, tuple)):
        raise ArgumentTypeError(f"{what} must be a list of torch.Tensor, got {type(items).__name__}")
    if n is not None and len(items) != n:
        raise FormatError(f"{what} must hold world size = {n} tensors, got {len(items)}")
    for r, t in enumerate(items):
        _check_tensor(t, f"{what}[{r}]")
        if t.shape != like.shape or t.dtype != like.dtype or t.device != like.device:
            raise FormatError(f"{what}[{r}] must be a {like.dtype} tensor of shape {tuple(like.shape)} on {like.device}")


ops.TRACED.update(
    all_reduce=_traced_all_reduce,
    all_gather_into_tensor=_traced_all_gather_into_tensor,
    all_gather=_traced_all_gather,
    reduce_scatter_tensor=_traced_reduce_scatter_tensor,
    reduce_scatter=_traced_reduce_scatter,
    all_reduce_with_outliers=_traced_all_reduce_with_outliers,
)
