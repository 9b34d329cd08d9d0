"""Backend dispatch: one codec contract, several implementations.

A backend implements ``encode_blocks`` / ``decode_blocks`` /
``decode_sum_blocks`` on (rows, length) views with blocks along dim 1 (see
``CodecBackend``). ``resolve_backend`` picks one:

* an explicit ``backend=`` argument other than ``"auto"`` wins, then the
  ``MXCOMM_BACKEND`` environment variable, then ``"auto"``;
* ``"auto"``: Triton for CUDA tensors when it is importable, the fast CPU
  backend for CPU tensors when it can run, the torch reference otherwise;
* an explicitly requested backend that cannot run raises
  ``BackendUnavailableError`` with the reason -- never a silent fallback.

The backend that ran is recorded in ``Packed.backend`` and logged at DEBUG.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable
from typing import Protocol

import torch

from mxcomm.errors import BackendUnavailableError, FormatError
from mxcomm.formats import BlockFormat
from mxcomm.kernels.reference import EncodedBlocks

log = logging.getLogger("mxcomm.kernels")

BACKEND_ENV = "MXCOMM_BACKEND"


class CodecBackend(Protocol):
    """What a codec backend provides (FBGEMM's QuantizedCommCodec, per block format).

    ``max_fused_rotation_block``: rotated formats (``rotation_seed``) whose
    blocks have at most this many elements are handed to the block functions
    as they are, unpadded, and the backend rotates inside its kernels; larger
    ones (and every rotated format when it is 0) are rotated by the front-end
    (``mxcomm.kernels.api``) around the plain format. ``fuses_rotation`` is the
    one rule.
    """

    name: str
    max_fused_rotation_block: int

    def availability(self, device: torch.device) -> str | None:
        """None when the backend can run on ``device``, else the reason it cannot."""

    def encode_blocks(self, x2d: torch.Tensor, fmt: BlockFormat, seed: int | None) -> EncodedBlocks: ...

    def decode_blocks(
        self, parts: EncodedBlocks, fmt: BlockFormat, rows: int, length: int, dtype: torch.dtype
    ) -> torch.Tensor: ...

    def decode_sum_blocks(
        self, parts: list[EncodedBlocks], fmt: BlockFormat, rows: int, length: int, dtype: torch.dtype
    ) -> torch.Tensor: ...


def fuses_rotation(backend: CodecBackend, fmt: BlockFormat) -> bool:
    """Whether ``backend`` rotates ``fmt`` inside its kernels (see ``CodecBackend``)."""
    return fmt.rotation_seed is not None and fmt.block_size <= backend.max_fused_rotation_block


def check_rotation(backend: CodecBackend, fmt: BlockFormat) -> None:
    """Refuse a rotated format that ``backend`` does not rotate itself: its block functions would
    encode it unrotated, silently. (The front-end hands such formats over plain.)"""
    if fmt.rotation_seed is not None and not fuses_rotation(backend, fmt):
        raise FormatError(
            f"the {backend.name} backend's block functions rotate blocks of at most "
            f"{backend.max_fused_rotation_block} elements, {fmt.name} has {fmt.block_size}: "
            "the front-end (mxcomm.encode/decode/decode_sum) applies such a rotation around them"
        )


_lock = threading.Lock()
_loaders: dict[str, Callable[[], CodecBackend]] = {}
_loaded: dict[str, CodecBackend] = {}
_load_errors: dict[str, str] = {}


def register_backend(name: str, loader: Callable[[], CodecBackend]) -> None:
    """Register a backend under ``name``; ``loader`` is called once, on first use."""
    with _lock:
        _loaders[name] = loader
        _loaded.pop(name, None)
        _load_errors.pop(name, None)


def registered_backends() -> list[str]:
    """The names of the registered codec backends, in registration order.

    Returns:
        e.g. ``["torch", "triton", "cpu"]``; whether each can run here is ``backend_status(name, device)``.
    """
    return list(_loaders)


def _load(name: str) -> CodecBackend | None:
    with _lock:
        if name in _loaded:
            return _loaded[name]
        if name in _load_errors or name not in _loaders:
            return None
        try:
            backend = _loaders[name]()
        except Exception as exc:  # an import failure is a reason, reported to the caller
            _load_errors[name] = f"{type(exc).__name__}: {exc}"
            return None
        _loaded[name] = backend
        return backend


def backend_status(name: str, device: torch.device | str = "cpu") -> str | None:
    """None if backend ``name`` can run on ``device``, else why not."""
    if name not in _loaders:
        return f"no backend named {name!r} (registered: {', '.join(_loaders)})"
    backend = _load(name)
    if backend is None:
        return f"backend {name!r} failed to load: {_load_errors.get(name)}"
    return backend.availability(torch.device(device))


def _auto_candidates(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["triton", "torch"]
    if device.type == "cpu":
        return ["cpu", "torch"]
    return ["torch"]


_warned: set[str] = set()


def resolve_backend(requested: str = "auto", device: torch.device | str = "cpu") -> CodecBackend:
    """The backend that ``requested`` means for tensors on ``device``."""
    device = torch.device(device)
    if requested == "auto":
        requested = os.environ.get(BACKEND_ENV, "auto") or "auto"
    if requested != "auto":
        reason = backend_status(requested, device)
        if reason is not None:
            raise BackendUnavailableError(f"backend {requested!r} cannot run on {device}: {reason}")
        return _loaded[requested]
    candidates = [name for name in _auto_candidates(device) if name in _loaders]
    for i, name in enumerate(candidates):
        reason = backend_status(name, device)
        if reason is None:
            return _loaded[name]
        key = f"{name}:{device.type}"
        if key not in _warned and name != "torch":
            _warned.add(key)
            fallback = f"falls back to {candidates[i + 1]!r}" if i + 1 < len(candidates) else "has nothing to fall back to"
            warnings.warn(
                f"mxcomm: backend {name!r} cannot run on {device}: {reason}. backend='auto' {fallback}",
                RuntimeWarning,
                stacklevel=3,
            )
    raise BackendUnavailableError(f"no codec backend can run on {device}")
