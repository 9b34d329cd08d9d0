"""What is specific to the Triton backend: where it runs, its counter hash kernel, its tiling of
large blocks, decode_sum reading all-gathered shards in place, and the compiled kernels' PTX.

Its conformance with the torch reference on every input (golden vectors, every format and width,
shapes, specials, scale modes, roundings, rotation fused and in the front-end, ...) is
tests/kernels/test_conformance.py. Without a CUDA device the kernels run in Triton's interpreter on
CPU tensors (tests/conftest.py sets ``TRITON_INTERPRET=1`` before Triton is first imported); with
one they run compiled on the GPU. Sizes are small because the interpreter is slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import mxcomm
from mxcomm.errors import BackendUnavailableError
from mxcomm.formats import FloatElement, IntElement
from mxcomm.kernels import backend_status, resolve_backend
from mxcomm.kernels.counter_rng import seed_key, stochastic_bits
from tests.kernels.exactness import DTYPES, Codec, assert_same_values, backend_device, mixed_input, to_device

DEVICE = backend_device("triton")
TRITON = Codec("triton", DEVICE)
pytestmark = [
    pytest.mark.requires_backend("triton"),
    # the interpreter (numpy) warns where float32 products overflow; the kernels saturate them
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
]

ROOT = Path(__file__).resolve().parents[2]


# -- availability and dispatch -----------------------------------------------------------
def test_backend_is_available_and_recorded() -> None:
    assert backend_status("triton", DEVICE) is None
    assert resolve_backend("triton", DEVICE).name == "triton"
    p = mxcomm.encode(torch.ones(4, 32, device=DEVICE), "mxfp8_e4m3", backend="triton")
    assert p.backend == "triton"


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the CPU interpreter gate only applies to CPU tensors")
def test_cpu_without_interpreter_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET")
    reason = backend_status("triton", "cpu")
    assert reason is not None and "TRITON_INTERPRET" in reason
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        mxcomm.encode(torch.ones(4, 32), "mxfp4", backend="triton")
    monkeypatch.setenv("MXCOMM_BACKEND", "triton")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        mxcomm.quantize(torch.ones(4, 32), "mxfp4")


def test_other_devices_have_a_reason() -> None:
    backend = resolve_backend("triton", DEVICE)
    reason = backend.availability(torch.device("meta"))
    assert reason is not None and "meta" in reason


def test_mxcomm_backend_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    x = mixed_input((3, 40), torch.bfloat16, 1, device=DEVICE)
    monkeypatch.setenv("MXCOMM_BACKEND", "triton")
    p = mxcomm.encode(x, "mxfp6_e2m3")
    assert p.backend == "triton"
    y = mxcomm.decode(p)
    monkeypatch.setenv("MXCOMM_BACKEND", "torch")
    ref = mxcomm.encode(x.cpu(), "mxfp6_e2m3")
    assert ref.backend == "torch"
    assert torch.equal(p.payload().cpu(), ref.payload())
    assert_same_values(y, mxcomm.decode(ref))
    # an explicit argument wins over the environment
    assert mxcomm.encode(x, "mxfp6_e2m3", backend="triton").backend == "triton"


# -- the counter hash kernel -------------------------------------------------------------
@pytest.mark.parametrize("start", [0, 12345, 2**32 - 40, 5 * 2**32 + 7])
def test_random_bits_match_the_reference_hash(start: int) -> None:
    """The kernels' counter hash, including element indices >= 2**32 (other key words)."""
    from mxcomm.kernels import triton_kernels as K
    from mxcomm.kernels.triton_backend import _int32

    seed = 0x1234_5678_9ABC_DEF
    n = 100
    out = torch.empty(n, dtype=torch.int64, device=DEVICE)
    large = start + n > 2**32
    K.random_bits_kernel[(2,)](
        out, start, n, _int32(seed_key(seed, 0)), _int32(seed), _int32(seed >> 32), LARGE_INDEX=large, BLOCK=64
    )
    assert torch.equal(out.cpu(), stochastic_bits(n, seed, "cpu", start=start))


# -- tiling: blocks larger than a tile ----------------------------------------------------
@pytest.mark.parametrize("block_size", [3000, 65536])
def test_blocks_larger_than_a_tile(block_size: int) -> None:
    """Blocks above the 2048-element tile, looped over in chunks (a non-power-of-two one with ragged
    rows and with whole blocks per row, the contiguous fast path; the largest block size). Smaller
    block sizes are in the conformance suite."""
    length = {3000: 6100, 65536: 70000}[block_size]
    kinds = [(FloatElement(3, 2), "e8m0"), (IntElement(5), "fp16"), (FloatElement(2, 1), "e4m3")]
    if block_size == 65536:
        kinds = kinds[1:2]  # one is enough for the slowest interpreted case: ~8 s
    for elem, scale in kinds:
        fmt = mxcomm.BlockFormat("b", elem, block_size=block_size, scale=scale)
        TRITON.check(mixed_input((1, length), torch.bfloat16, seed=block_size), fmt, dtypes=(None,))
        if block_size < 65536:
            TRITON.check(mixed_input((1, 2 * block_size), torch.float32, seed=block_size), fmt, dtypes=(None,))


# -- decode_sum of all-gathered shards ----------------------------------------------------
@pytest.mark.parametrize("rotation_seed", [None, 0x0123_4567_89AB_CDEF])
def test_decode_sum_reads_gathered_shards_in_place(rotation_seed: int | None) -> None:
    """Shards that are equally spaced views of one buffer (an all-gather) are not stacked; for a
    rotated format the sum is un-rotated once, in list order."""
    from mxcomm.kernels.triton_backend import _shard_base

    fmt = mxcomm.get_format("mxfp6_e2m3").with_options(rotation_seed=rotation_seed)
    shape = (3, 64)
    refs = [mxcomm.encode(mixed_input(shape, torch.float32, seed=600 + i), fmt, backend="torch") for i in range(4)]
    gathered = torch.stack([p.payload() for p in refs]).to(DEVICE)  # (ranks, payload bytes)
    views = [mxcomm.Packed.from_payload(gathered[i], fmt, shape, torch.float32) for i in range(4)]
    base, stride = _shard_base([v.codes for v in views])
    assert base.data_ptr() == views[0].codes.data_ptr() and stride == gathered.shape[1]
    for n in (2, 4):
        for dtype in DTYPES:
            got = mxcomm.decode_sum(views[:n], dtype=dtype, backend="triton")
            assert_same_values(got, mxcomm.decode_sum(refs[:n], dtype=dtype, backend="torch"))
    # shards in unrelated buffers are stacked, with the same result
    separate = [to_device(p, DEVICE) for p in refs[::-1]]
    assert_same_values(mxcomm.decode_sum(separate, backend="triton"), mxcomm.decode_sum(refs[::-1], backend="torch"))


# -- the compiled kernels (no GPU needed to compile) ------------------------------------------
_COMPILE_SCRIPT = textwrap.dedent(
    """
    import re, sys, torch, triton
    from triton.backends.compiler import GPUTarget
    import mxcomm
    from mxcomm.kernels import triton_backend as TB, triton_kernels as K
    from mxcomm.kernels.dtypes import dtype_code

    TYPES = {torch.uint8: "*u8", torch.int16: "*i16", torch.int32: "*i32", torch.float32: "*fp32",
             torch.float16: "*fp16"}

    def ptx(kernel, args, constexprs):
        sig = {n: (TYPES[a.dtype] if isinstance(a, torch.Tensor) else "i32") for n, a in zip(kernel.arg_names, args)}
        sig.update({n: "constexpr" for n in constexprs})
        src = triton.compiler.ASTSource(fn=kernel, signature=sig, constexprs=dict(constexprs))
        try:
            done = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(TB.LAUNCH_OPTIONS))
        except triton.compiler.errors.CompilationError:
            raise  # the kernel source does not compile: a bug, not a missing toolchain
        except Exception as exc:  # no toolchain for this target on this machine
            print("SKIP:", type(exc).__name__, str(exc)[:300])
            sys.exit(0)
        return done.asm["ptx"]

    inexact = re.compile(r"\\b(fma\\.\\S+|\\S+\\.ftz\\S*|div\\.full\\S*|\\S+\\.approx\\S*)")
    found = {}
    x = torch.zeros(4, 64, dtype=torch.bfloat16).view(torch.int16)
    codes, ts = torch.empty(8, dtype=torch.uint8), torch.empty(1)
    cases = [
        ("mxfp8_e4m3", {}),
        ("nvfp4", {"rounding": "stochastic", "block_size": 48}),
        # fused random Hadamard rotation: sign products and butterfly sums must stay separate roundings
        ("mxfp4_e2m1", {"rotation_seed": 2**63 + 5, "rounding": "stochastic"}),
        ("nvfp4", {"rotation_seed": 9}),
    ]
    for name, opts in cases:
        fmt = mxcomm.get_format(name).with_options(**opts)
        label = f"{name} {opts}"
        scales = torch.empty(8, dtype=TB.SCALE_STORAGE_DTYPES[fmt.scale])
        _, args, cx = TB.encode_launch(x, codes, scales, ts, torch.empty(8, dtype=torch.int32), fmt,
                                       dtype_code(torch.bfloat16), 1, 2, 3)
        found["encode " + label] = sorted(set(inexact.findall(ptx(K.encode_kernel, args, cx))))
        out = torch.empty(4, 64, dtype=torch.bfloat16)
        _, args, cx = TB.decode_launch(codes, scales, ts, torch.empty(16), out, 4, 8, 8, fmt)
        text = ptx(K.decode_kernel, args, cx)
        found["decode_sum " + label] = sorted(set(inexact.findall(text)))
        assert "add.rn.f32" in text or "add.f32" in text, "decode_sum's float32 sum is missing"
        if fmt.rotation_seed is not None:
            assert "sub.rn.f32" in text or "sub.f32" in text, "the inverse butterflies are missing"
    rot_sig = {n: "i32" for n in K.rotated_amax_kernel.arg_names}
    rot_sig.update(x_ptr="*i16", part_ptr="*i32",
                   **{n: "constexpr" for n in ("IN_KIND", "BS", "NB", "CONTIG", "ROT_LARGE")})
    rot_cx = {"IN_KIND": 1, "BS": 16, "NB": 128, "CONTIG": False, "ROT_LARGE": False}
    rot_amax = triton.compile(
        triton.compiler.ASTSource(fn=K.rotated_amax_kernel, signature=rot_sig, constexprs=rot_cx),
        target=GPUTarget("cuda", 90, 32), options=dict(TB.LAUNCH_OPTIONS),
    )
    found["rotated amax"] = sorted(set(inexact.findall(rot_amax.asm["ptx"])))
    # the small kernels: tensor amax, and the hash with element indices >= 2**32
    amax_sig = {n: "i32" for n in K.amax_kernel.arg_names}
    amax_sig.update(x_ptr="*i16", part_ptr="*i32", IN_KIND="constexpr", TR="constexpr", TC="constexpr")
    triton.compile(triton.compiler.ASTSource(fn=K.amax_kernel, signature=amax_sig,
                                             constexprs={"IN_KIND": 1, "TR": 16, "TC": 128}),
                   target=GPUTarget("cuda", 90, 32), options=dict(TB.LAUNCH_OPTIONS))
    bits_sig = {n: "i32" for n in K.random_bits_kernel.arg_names}
    bits_sig.update(out_ptr="*i64", start="i64", LARGE_INDEX="constexpr", BLOCK="constexpr")
    triton.compile(triton.compiler.ASTSource(fn=K.random_bits_kernel, signature=bits_sig,
                                             constexprs={"LARGE_INDEX": True, "BLOCK": 64}),
                   target=GPUTarget("cuda", 90, 32), options=dict(TB.LAUNCH_OPTIONS))
    print("FOUND", found)
    assert not any(found.values()), found
    """
)


def test_compiled_kernels_use_only_exact_float_operations() -> None:
    """Compile for sm_90 (PTX, no GPU needed): no FMA contraction, no flush-to-zero, no
    approximate division -- the GPU-only ways to lose bit-exactness that the interpreter cannot show."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    if "SKIP:" in done.stdout:
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FOUND" in done.stdout
