"""The codec ops captured in a CUDA graph and replayed on new data (``pytest -m gpu``; skips without CUDA).

The Triton kernels never synchronise with the host (the NVFP4 tensor scale is computed on the
device), so encode / decode / decode_sum / quantize can be captured once warmed up (kernels
compiled, code tables cached) and replayed with new data in the same static buffers.
"""

from __future__ import annotations

import pytest
import torch

import mxcomm
from mxcomm.formats import get_format
from mxcomm.kernels import backend_status

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
_REASON = backend_status("triton", "cuda")
if _REASON is not None:
    pytest.skip(f"the Triton backend cannot run on CUDA here: {_REASON}", allow_module_level=True)

FORMATS = ["mxfp8_e4m3", "mxfp6_e2m3", "nvfp4", get_format("mxfp4_e2m1").with_options(rotation_seed=3)]


def _data(seed: int) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(64, 1000, device="cuda", generator=g) * 3).to(torch.bfloat16)


def _captured(fn, static: torch.Tensor):  # noqa: ANN001
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(static)
    return graph, out


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: get_format(f).name)
def test_captured_codec_replays_new_data_exactly(fmt) -> None:  # noqa: ANN001
    def codec(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = mxcomm.encode(x, fmt, backend="triton")
        summed = mxcomm.decode_sum([p, p, p], dtype=torch.float32, backend="triton")
        return mxcomm.quantize(x, fmt, backend="triton"), summed

    static = _data(0)
    graph, (q_out, sum_out) = _captured(codec, static)
    for seed in (1, 2):  # new data each replay: nothing stale from the capture or the last replay
        x = _data(seed)
        static.copy_(x)
        graph.replay()
        torch.cuda.synchronize()
        want_q, want_sum = codec(x)
        assert torch.equal(q_out, want_q) and torch.equal(sum_out, want_sum)
        assert not torch.equal(q_out, x)


def test_triton_matches_the_reference_on_cuda_bitwise() -> None:
    # (tests/kernels/test_triton.py checks every format exhaustively; this is the quick GPU smoke)
    x = _data(5)
    for fmt in FORMATS:
        gpu = mxcomm.encode(x, fmt, backend="triton")
        ref = mxcomm.encode(x.cpu(), fmt, backend="torch")
        assert torch.equal(gpu.payload().cpu(), ref.payload())
        assert torch.equal(mxcomm.decode(gpu, backend="triton").cpu(), mxcomm.decode(ref, backend="torch"))
