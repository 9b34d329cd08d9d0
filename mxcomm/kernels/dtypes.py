"""The torch dtypes the codec reads, writes and stores, with their stable integer codes.

The position of a dtype in ``INPUT_DTYPES`` is its code in the ``to_bytes``
frame, the collective handshake and the CPU and Triton kernels' dtype
arguments (``dtype_code``). Never reorder it.
"""

from __future__ import annotations

import torch

from mxcomm.errors import FormatError
from mxcomm.formats import ScaleType

INPUT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)

SCALE_STORAGE_DTYPES: dict[ScaleType, torch.dtype] = {
    ScaleType.E8M0: torch.uint8,
    ScaleType.E4M3: torch.uint8,
    ScaleType.FP16: torch.float16,
    ScaleType.BF16: torch.bfloat16,
    ScaleType.FP32: torch.float32,
}


def dtype_code(dtype: torch.dtype) -> int:
    """The stable code of an input/output dtype (FormatError for any other dtype)."""
    try:
        return INPUT_DTYPES.index(dtype)
    except ValueError:
        raise FormatError(f"expected float32, bfloat16 or float16, got {dtype}") from None


def dtype_from_code(code: int) -> torch.dtype:
    if not 0 <= code < len(INPUT_DTYPES):
        raise FormatError(f"invalid dtype code {code}")
    return INPUT_DTYPES[code]
