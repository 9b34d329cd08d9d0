"""Codecs: the torch reference (the specification) and faster backends behind one dispatch."""

from mxcomm.kernels.api import decode, decode_sum, effective_format, encode, quantize
from mxcomm.kernels.bitpack import pack_codes, packed_code_bytes, unpack_codes
from mxcomm.kernels.dispatch import (
    BACKEND_ENV,
    CodecBackend,
    backend_status,
    register_backend,
    registered_backends,
    resolve_backend,
)
from mxcomm.kernels.packed import Packed
from mxcomm.kernels.reference import EncodedBlocks, ReferenceBackend

register_backend("torch", ReferenceBackend)


def _load_triton_backend() -> CodecBackend:
    # Imports Triton only when the backend is first used (an ImportError becomes
    # the reason reported by backend_status / BackendUnavailableError).
    from mxcomm.kernels.triton_backend import load

    return load()


register_backend("triton", _load_triton_backend)


def _load_cpu_backend() -> CodecBackend:
    # Loads the native CPU codec built at install time on first use (never compiles); a missing
    # or stale build becomes the reason reported by availability (auto then falls back to the
    # reference, with a warning).
    from mxcomm.kernels.cpu_backend import load

    return load()


register_backend("cpu", _load_cpu_backend)

__all__ = [
    "BACKEND_ENV",
    "CodecBackend",
    "EncodedBlocks",
    "Packed",
    "ReferenceBackend",
    "backend_status",
    "decode",
    "decode_sum",
    "effective_format",
    "encode",
    "pack_codes",
    "packed_code_bytes",
    "quantize",
    "register_backend",
    "registered_backends",
    "resolve_backend",
    "unpack_codes",
]
