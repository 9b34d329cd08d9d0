"""Codecs: the torch reference (the specification) and faster backends behind one dispatch.

The public API is ``__all__``: the codec functions, ``Packed``, and the backend
registry (``resolve_backend``, ``backend_status``, ``register_backend``, ``registered_backends``, the
``CodecBackend`` protocol). The codec functions run the torch custom ops
``torch.ops.mxcomm.encode`` / ``decode`` / ``decode_sum`` / ``quantize``
(``mxcomm.kernels.torch_ops``: what ``torch.compile`` and ``torch.export`` see).
Internal pieces (bit packing, the reference backend's classes, the frame) stay
importable from their modules.
"""

from mxcomm.kernels.api import decode, decode_sum, encode, quantize
from mxcomm.kernels.dispatch import (
    BACKEND_ENV,
    CodecBackend,
    backend_status,
    register_backend,
    registered_backends,
    resolve_backend,
)
from mxcomm.kernels.packed import Packed
from mxcomm.kernels.reference import ReferenceBackend

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
    "Packed",
    "backend_status",
    "decode",
    "decode_sum",
    "encode",
    "quantize",
    "register_backend",
    "registered_backends",
    "resolve_backend",
]
