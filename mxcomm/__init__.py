"""mxcomm: block-scaled (OCP MX) compression of tensor-parallel communication."""

from mxcomm.collectives import CommRecord, CommStats, all_gather, all_reduce, reduce_scatter, track_comm
from mxcomm.errors import BackendUnavailableError, CollectiveMismatchError, FormatError, MxcommError
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
    "BackendUnavailableError",
    "BlockFormat",
    "CollectiveMismatchError",
    "CommRecord",
    "CommStats",
    "FloatElement",
    "FormatError",
    "IntElement",
    "MxcommError",
    "Packed",
    "__version__",
    "all_gather",
    "all_reduce",
    "decode",
    "decode_sum",
    "encode",
    "get_format",
    "list_formats",
    "quantize",
    "reduce_scatter",
    "register_format",
    "resolve_backend",
    "track_comm",
    "unregister_format",
]
