"""mxcomm: block-scaled (OCP MX) compression of tensor-parallel communication.

The public API: formats (``BlockFormat``, ``FloatElement``, ``IntElement``, the
registry), the codec (``encode`` / ``decode`` / ``decode_sum`` / ``quantize``,
``Packed``), the compressed collectives with ``torch.distributed``'s
signatures and ``track_comm``, and the exception types. Subpackages:
``mxcomm.formats``, ``mxcomm.kernels``, ``mxcomm.collectives``, ``mxcomm.tp``.
"""

from mxcomm.collectives import (
    CollectiveHandle,
    CommRecord,
    CommStats,
    all_gather,
    all_gather_into_tensor,
    all_reduce,
    reduce_scatter,
    reduce_scatter_tensor,
    track_comm,
)
from mxcomm.errors import (
    ArgumentTypeError,
    BackendUnavailableError,
    CollectiveAbortedError,
    CollectiveMismatchError,
    CollectiveTimeoutError,
    FormatError,
    MxcommError,
    RangeError,
    UnsupportedReduceOpError,
)
from mxcomm.formats import (
    BlockFormat,
    FloatElement,
    IntElement,
    get_format,
    list_formats,
    register_format,
    unregister_format,
)
from mxcomm.kernels import Packed, decode, decode_sum, encode, quantize, resolve_backend

__version__ = "0.1.0"

__all__ = [
    "ArgumentTypeError",
    "BackendUnavailableError",
    "BlockFormat",
    "CollectiveAbortedError",
    "CollectiveHandle",
    "CollectiveMismatchError",
    "CollectiveTimeoutError",
    "CommRecord",
    "CommStats",
    "FloatElement",
    "FormatError",
    "IntElement",
    "MxcommError",
    "Packed",
    "RangeError",
    "UnsupportedReduceOpError",
    "__version__",
    "all_gather",
    "all_gather_into_tensor",
    "all_reduce",
    "decode",
    "decode_sum",
    "encode",
    "get_format",
    "list_formats",
    "quantize",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "register_format",
    "resolve_backend",
    "track_comm",
    "unregister_format",
]
