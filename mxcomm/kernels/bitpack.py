"""LSB-first bitstream packing of fixed-width codes (1..16 bits).

Code i occupies stream bits [i*b, (i+1)*b); stream bit j is bit (j % 8) of
byte j // 8; the stream is zero-padded to a whole byte. For 4-bit codes this
puts element 2i in the low nibble of byte i (the torchao/PyTorch layout).
"""

from __future__ import annotations

import torch

from mxcomm.errors import FormatError

MAX_CODE_BITS = 16


def packed_code_bytes(num_codes: int, bits: int) -> int:
    return (num_codes * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_CODE_BITS:
        raise FormatError(f"code width must be in 1..{MAX_CODE_BITS} bits, got {bits}")


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a 1-D integer tensor of codes (each < 2**bits) into a uint8 bitstream."""
    _check_bits(bits)
    codes = codes.reshape(-1).to(torch.int64)
    n = codes.numel()
    nbytes = packed_code_bytes(n, bits)
    if bits == 8:
        return codes.to(torch.uint8)
    if 8 % bits == 0:
        # Whole codes per byte: no code straddles a byte boundary.
        per_byte = 8 // bits
        padded = torch.zeros(nbytes * per_byte, dtype=torch.int64, device=codes.device)
        padded[:n] = codes
        shifts = torch.arange(per_byte, device=codes.device, dtype=torch.int64) * bits
        return (padded.view(nbytes, per_byte) << shifts).sum(dim=1).to(torch.uint8)
    # General width: expand to one bit per entry, then regroup by 8.
    bit_index = torch.arange(bits, device=codes.device, dtype=torch.int64)
    stream = ((codes.unsqueeze(1) >> bit_index) & 1).reshape(-1)
    padded = torch.zeros(nbytes * 8, dtype=torch.int64, device=codes.device)
    padded[: stream.numel()] = stream
    byte_shift = torch.arange(8, device=codes.device, dtype=torch.int64)
    return (padded.view(nbytes, 8) << byte_shift).sum(dim=1).to(torch.uint8)


def unpack_codes(stream: torch.Tensor, bits: int, num_codes: int) -> torch.Tensor:
    """Inverse of ``pack_codes``: the first ``num_codes`` codes as int64."""
    _check_bits(bits)
    need = packed_code_bytes(num_codes, bits)
    if stream.dtype != torch.uint8 or stream.dim() != 1 or stream.numel() != need:
        raise FormatError(
            f"code stream must be a 1-D uint8 tensor of {need} bytes for {num_codes} codes of "
            f"{bits} bits, got {tuple(stream.shape)} {stream.dtype}"
        )
    data = stream.to(torch.int64)
    if bits == 8:
        return data
    if 8 % bits == 0:
        per_byte = 8 // bits
        shifts = torch.arange(per_byte, device=data.device, dtype=torch.int64) * bits
        return ((data.unsqueeze(1) >> shifts) & ((1 << bits) - 1)).reshape(-1)[:num_codes]
    byte_shift = torch.arange(8, device=data.device, dtype=torch.int64)
    stream_bits = ((data.unsqueeze(1) >> byte_shift) & 1).reshape(-1)[: num_codes * bits]
    bit_weight = torch.arange(bits, device=data.device, dtype=torch.int64)
    return (stream_bits.view(num_codes, bits) << bit_weight).sum(dim=1)
