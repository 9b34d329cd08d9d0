"""What is specific to the fast CPU backend ("cpu"): block ranges on several threads, the
vectorised whole-block paths, the ctypes entry points, forked children, dispatch and the build.

Conformance with the torch reference on every input (golden vectors, shapes, specials, scale modes,
rotation, ...) is tests/kernels/test_conformance.py; the checks here use its comparisons (payload
bytes equal, decoded values bit for bit, any NaN equal to any NaN).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing
import os
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mxcomm
from mxcomm.errors import BackendUnavailableError
from mxcomm.formats import BlockFormat, FloatElement, IntElement, Rounding
from mxcomm.formats.block import E8M0_SCALE_MODES
from mxcomm.kernels import cpu_backend, dispatch, register_backend
from mxcomm.kernels.packed import SCALE_STORAGE_DTYPES
from tests.formats.strategies import _build, block_formats, elements
from tests.kernels.exactness import DTYPES, assert_same_payload, assert_same_values, gen
from tests.kernels.test_reference_properties import make_values, tensors, to_dtype
from tests.profiles import examples

pytestmark = pytest.mark.requires_backend("cpu")

SCALE_TYPES = ("e8m0", "e4m3", "fp16", "bf16", "fp32")


# -- helpers -------------------------------------------------------------------------------------
def assert_same_packed(got: mxcomm.Packed, want: mxcomm.Packed) -> None:
    assert got.backend == "cpu" and want.backend == "torch"
    assert_same_payload(got, want)


def encode_both(x: torch.Tensor, fmt, *, axis: int = -1, seed: int = 0, **options):
    got = mxcomm.encode(x, fmt, axis=axis, backend="cpu", generator=gen(seed), **options)
    want = mxcomm.encode(x, fmt, axis=axis, backend="torch", generator=gen(seed), **options)
    assert_same_packed(got, want)
    return got, want


def check_roundtrips(got: mxcomm.Packed, want: mxcomm.Packed, dtypes=DTYPES) -> None:
    for dtype in dtypes:
        assert_same_values(mxcomm.decode(got, dtype=dtype, backend="cpu"), mxcomm.decode(want, dtype=dtype, backend="torch"))


@contextlib.contextmanager
def split_into_ranges(threads: int, min_task_elements: int = 64):
    """Make the backend cut even small inputs into several block ranges on ``threads`` threads."""
    old_threads, old_min = torch.get_num_threads(), cpu_backend.MIN_TASK_ELEMENTS
    torch.set_num_threads(threads)
    cpu_backend.MIN_TASK_ELEMENTS = min_task_elements
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        cpu_backend.MIN_TASK_ELEMENTS = old_min


# -- several block ranges on several threads: the same bytes -------------------------------------
@given(fmt=block_formats(), data=tensors(), seed=st.integers(0, 2**31 - 1), threads=st.sampled_from([2, 3]))
def test_inputs_cut_into_ranges_give_the_reference_bytes(fmt, data, seed, threads) -> None:
    """Any format and input, cut into many block ranges (each starting on a byte boundary of the
    code stream) on several threads: the reference's bytes and values."""
    x, axis = data
    with split_into_ranges(threads):
        got, want = encode_both(x, fmt, axis=axis, seed=seed)
        check_roundtrips(got, want)


@st.composite
def fast_path_cases(draw: st.DrawFn):
    """Whole blocks of 16k elements back to back with 4-, 6- or 8-bit codes (the vectorised fast paths)."""
    if draw(st.booleans()):
        fmt = mxcomm.get_format(draw(st.sampled_from(["mxfp4", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp8_e4m3", "mxfp8_e5m2",
                                                        "mxint8", "nvfp4", "int4_fp16", "int6", "int8_fp16",
                                                        "fp4_e2m1_b16", "int4_b64"])))
    else:
        elem = draw(elements().filter(lambda e: e.bits in (4, 6, 8)))
        scale = draw(st.sampled_from(SCALE_TYPES))
        fmt = _build(BlockFormat, "hyp", elem, draw(st.sampled_from([16, 32, 48, 64, 96])), scale,
                     tensor_scale=scale != "e8m0" and draw(st.booleans()))
    rounding = draw(st.sampled_from(tuple(Rounding)))
    mode = draw(st.sampled_from(E8M0_SCALE_MODES)) if fmt.scale == "e8m0" else "rceil"
    fmt = fmt.with_options(rounding=rounding, scale_mode=mode)
    rows, blocks = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(["normal", "wide", "sparse", "outliers", "dyadic"]))
    center = draw(st.integers(-130, 120) if dtype != torch.float16 else st.integers(-24, 12))
    x = to_dtype(make_values(kind, (rows, blocks * fmt.block_size), center, draw(st.integers(0, 2**31))), dtype)
    return fmt, x


@given(case=fast_path_cases(), seed=st.integers(0, 2**31 - 1), threads=st.sampled_from([1, 2]))
def test_fast_path_layouts(case, seed, threads) -> None:
    fmt, x = case
    with split_into_ranges(threads):
        got, want = encode_both(x, fmt, seed=seed)
        check_roundtrips(got, want)
        parts = [got, mxcomm.encode(-x, fmt, backend="cpu", generator=gen(seed + 1))]
        want_parts = [want, mxcomm.encode(-x, fmt, backend="torch", generator=gen(seed + 1))]
        for dtype in DTYPES:
            assert_same_values(
                mxcomm.decode_sum(parts, dtype=dtype, backend="cpu"),
                mxcomm.decode_sum(want_parts, dtype=dtype, backend="torch"),
            )


# -- the decoder on arbitrary payloads, in ranges ----------------------------------------------
@given(fmt=block_formats(), rows=st.integers(1, 4), length=st.integers(1, 70), nparts=st.integers(1, 3),
       seed=st.integers(0, 2**31 - 1), threads=st.sampled_from([2, 3]))
def test_decode_of_random_payloads_in_ranges(fmt, rows, length, nparts, seed, threads) -> None:
    """Random payload bytes decode (alone and summed) like the reference when cut into ranges."""
    check_random_payloads_decode(fmt, rows, length, nparts, seed, threads)


def check_random_payloads_decode(fmt: BlockFormat, rows: int, length: int, nparts: int, seed: int,
                                 threads: int) -> None:
    """Random payload bytes of ``fmt`` decode (alone and summed) like the reference, in every dtype."""
    g = gen(seed)
    n = fmt.packed_nbytes((rows, length))
    parts = [
        mxcomm.Packed.from_payload(torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g), fmt,
                                   (rows, length), torch.float32)
        for _ in range(nparts)
    ]
    with split_into_ranges(threads):
        for dtype in DTYPES:
            want = mxcomm.decode_sum(parts, dtype=dtype, backend="torch")
            assert_same_values(mxcomm.decode_sum(parts, dtype=dtype, backend="cpu"), want)
            if nparts == 1:
                assert_same_values(mxcomm.decode(parts[0], dtype=dtype, backend="cpu"), want)


@given(fmt=fast_path_cases().map(lambda case: case[0]), rows=st.integers(1, 3), blocks=st.integers(1, 4),
       nparts=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
@examples(60)
def test_decode_of_random_payloads_in_whole_blocks(fmt, rows, blocks, nparts, seed) -> None:
    """The same for rows of whole blocks, which the fast decoders take: any code and scale bit pattern
    (NaN/inf codes and scales, subnormal and overflowing products) decodes like the reference."""
    check_random_payloads_decode(fmt, rows, blocks * fmt.block_size, nparts, seed, 1)


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "int4", "fp4_e2m1_b16", "int4_fp16"])
def test_4bit_decode_of_random_payloads_through_per_call_tables(name: str) -> None:
    """Enough blocks in one call (>= 512) for the 4-bit decoder's output tables of every scale code;
    random payloads hit every code, NaN scales and saturating products."""
    check_random_payloads_decode(mxcomm.get_format(name), 16, 64 * mxcomm.get_format(name).block_size, 1, 5, 1)


# -- the comparison-based 4-bit encoder (bfloat16 inputs) ----------------------------------------
def _midpoint_ties(fmt: BlockFormat, blocks: int, seed: int) -> torch.Tensor:
    """bfloat16 blocks whose elements sit on, and one bfloat16 step either side of, the rounding
    midpoints of their block (E2M1: 0.25, 0.75, ..., 5 times amax / 6), with a power-of-two tensor
    scale where the format has one, so that x / X hits the midpoints exactly."""
    g = torch.Generator().manual_seed(seed)
    mids = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=torch.float64)
    amax = torch.tensor([6.0, 5.0, 3.0, 7.0, 2688.0, 1.5, 0.75, 33.0], dtype=torch.float64)
    a = amax[torch.randint(0, len(amax), (blocks, 1), generator=g)] * 2.0 ** torch.randint(-40, 40, (blocks, 1), generator=g)
    t = mids[torch.randint(0, len(mids), (blocks, fmt.block_size - 1), generator=g)] * a / 6
    nudge = torch.tensor([1.0, 1.0, 1 + 2**-7, 1 - 2**-8, -1.0], dtype=torch.float64)
    t = t * nudge[torch.randint(0, len(nudge), t.shape, generator=g)]
    x = torch.cat([a, t], dim=1).reshape(-1, 16 * fmt.block_size)
    if fmt.tensor_scale:
        x[0, 0] = 2688.0 * 2.0**10  # the tensor scale is 2**10 exactly
    return x.to(torch.bfloat16)


@pytest.mark.parametrize("name", ["nvfp4", "mxfp4", "int4", "fp4_e2m1_b16", "int4_b64"])
def test_4bit_encode_by_comparisons_on_midpoint_ties(name: str) -> None:
    """Enough blocks in one call (>= 512) for NVFP4's per-call threshold table; every tie direction."""
    fmt = mxcomm.get_format(name)
    for mode in (E8M0_SCALE_MODES if fmt.scale == "e8m0" else ("rceil",)):
        f = fmt.with_options(scale_mode=mode)
        x = _midpoint_ties(f, 1024, seed=len(name) + len(mode))
        x[3, 5] = math.nan  # a NaN block among them
        x[4] *= 2.0**-120  # blocks whose thresholds leave the bfloat16 normal range
        encode_both(x, f)


def test_tensor_scale_matches_the_reference() -> None:
    """The native tensor scale (mx_tensor_scale) equals reference.tensor_scale_from_amax."""
    from mxcomm.kernels.reference import tensor_scale_from_amax

    lib = cpu_backend.load().library()
    amaxes = [0.0, 2.0**-149, 3 * 2.0**-149, 2.0**-126, 1e-30, 1.0, 2688.0, 2689.0, 3.4e38, torch.finfo(torch.float32).max]
    amaxes += make_values("wide", (200,), 0, 21).abs().to(torch.float32).tolist()
    for name in ("nvfp4", "int4_fp16"):
        fmt = mxcomm.get_format(name).with_options(tensor_scale=True)
        params = ctypes.byref(cpu_backend.cpu_format(fmt))
        for a in amaxes:
            bits = torch.tensor([a], dtype=torch.float32).view(torch.int32).item() & 0xFFFFFFFF
            want = tensor_scale_from_amax(torch.tensor([a], dtype=torch.float32), fmt)
            assert lib.mx_tensor_scale(params, bits) == want.item(), (name, a)


# -- recycled outputs ---------------------------------------------------------------------------
def test_large_outputs_recycle_memory_only_once_torch_released_it(monkeypatch) -> None:
    backend = cpu_backend.CpuBackend()
    monkeypatch.setattr(cpu_backend, "POOLED_OUTPUT_BYTES", 1 << 16)
    lib = backend.library()
    lib.mx_output_cache_limit(64 << 20)
    try:
        a = backend.empty_output((64, 1024), torch.bfloat16)
        assert a.shape == (64, 1024) and a.dtype == torch.bfloat16 and a.is_contiguous()
        a.fill_(1.5)
        view, ptr = a[3:], a.data_ptr()
        del a
        b = backend.empty_output((64, 1024), torch.bfloat16)  # a view of the first one is alive
        assert b.data_ptr() != ptr and torch.all(view == 1.5)
        ptr_b = b.data_ptr()
        del view, b
        c = backend.empty_output((128, 512), torch.bfloat16)  # same size: one of them again
        assert c.data_ptr() in (ptr, ptr_b)
        assert lib.mx_output_cache_limit(64 << 20) >= 1 << 17
        del c
        assert lib.mx_output_cache_limit(0) == 0  # limit 0: nothing kept
        small = backend.empty_output((8,), torch.float32)  # below the threshold: torch's own memory
        assert small.numel() == 8
    finally:
        lib.mx_output_cache_limit(cpu_backend.output_cache_limit()[0])


def test_output_cache_limit_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(cpu_backend.OUTPUT_CACHE_ENV, "0.5")
    assert cpu_backend.output_cache_limit() == (1 << 19, f"{cpu_backend.OUTPUT_CACHE_ENV}=0.5")
    monkeypatch.setenv(cpu_backend.OUTPUT_CACHE_ENV, "lots")
    with pytest.raises(cpu_backend.NativeCodecUnavailable, match="not a non-negative number"):
        cpu_backend.output_cache_limit()
    assert "not a non-negative number" in cpu_backend.CpuBackend().availability(torch.device("cpu"))


# -- the ctypes entry points -------------------------------------------------------------------
@pytest.mark.parametrize("block,k,n", [(3, 1431655764, 4), (48, 89478484, 3)])
def test_stochastic_random_words_across_the_2_to_32_index_boundary(monkeypatch, block: int, k: int, n: int) -> None:
    """Element indices >= 2**32 hash with another key (random.stochastic_bits). Blocks k..k+n-1,
    which straddle index 2**32, are encoded by calling the kernel with pointers shifted by k blocks
    (no 2**32-element tensor needed) and compared with the reference encoding of the same blocks
    with its random words taken from index k * block on. Block 48 takes the vectorised 4-bit path,
    block 3 the general one."""
    from mxcomm.kernels import reference
    from mxcomm.kernels.counter_rng import seed_key, stochastic_bits

    fmt = BlockFormat("b", FloatElement(2, 1), block_size=block, rounding="stochastic")
    assert k * block < 2**32 < (k + n) * block
    x = make_values("normal", (n * block,), 0, 5).to(torch.float32)
    seed = 0x1234_5678_9ABC
    codes = torch.zeros(n * block * 4 // 8, dtype=torch.uint8)
    scales = torch.zeros(n, dtype=torch.uint8)
    lib = cpu_backend.load().library()
    status = lib.mx_encode(
        ctypes.byref(cpu_backend.cpu_format(fmt)), 0, x.data_ptr() - k * block * 4, (k + n) * block, k + n, k, k + n,
        1.0, seed, codes.data_ptr() - k * block * 4 // 8, scales.data_ptr() - k,
    )
    assert status == 0
    monkeypatch.setattr(
        reference, "stochastic_bits", lambda count, s, device="cpu": stochastic_bits(count, s, device, start=k * block)
    )
    want = reference.encode_blocks(x.reshape(1, -1), fmt, seed)
    assert torch.equal(codes, want.codes) and torch.equal(scales, want.scales)
    assert seed_key(seed, 0) != seed_key(seed, 1)  # the key really changes at 2**32


# -- threads and block ranges -------------------------------------------------------------------
@pytest.mark.parametrize(
    "elem,block",
    [(FloatElement(1, 1), 5), (FloatElement(2, 2), 7), (FloatElement(3, 3), 3), (FloatElement(5, 10), 4),
     (FloatElement(8, 7, inf=True, nan="ieee"), 2), (IntElement(3), 9), (IntElement(7), 1), (FloatElement(2, 1), 4096)],
)
def test_every_code_width_and_unaligned_streams(elem, block) -> None:
    """3..16-bit codes, blocks that end mid-byte (the stream then runs on across blocks), huge blocks."""
    fmt = BlockFormat("w", elem, block_size=block)
    x = make_values("wide", (5, 3 * block + 1), 0, 6).to(torch.float32)
    with split_into_ranges(3):
        got, want = encode_both(x, fmt)
        check_roundtrips(got, want)


@pytest.mark.parametrize("name", ["mxfp4", "fp3_e1m1", "nvfp4", "mxfp6_e2m3"])
def test_multithreaded_large_input(name: str) -> None:
    """Default splitting (several 128K-element ranges on 3 threads) of a 1M-element tensor."""
    x = make_values("outliers", (256, 4096), 0, 8).to(torch.bfloat16)
    with split_into_ranges(3, min_task_elements=cpu_backend.MIN_TASK_ELEMENTS):
        got = mxcomm.encode(x, name, backend="cpu")
        ranges = cpu_backend.block_ranges(got.layout.num_blocks, got.format.block_size, got.format.element.bits)
        assert len(ranges) > 1
        y = mxcomm.decode(got, backend="cpu")
    want = mxcomm.encode(x, name, backend="torch")
    assert_same_packed(got, want)
    assert_same_values(y, mxcomm.decode(want, backend="torch"))


def _encode_and_exit(x: torch.Tensor, want: torch.Tensor) -> None:
    with split_into_ranges(2):
        ok = torch.equal(mxcomm.encode(x, "mxfp4", backend="cpu").codes, want)
    os._exit(0 if ok else 1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_threads_work_in_a_forked_child() -> None:
    """A child forked after the parent used the thread pool gets a pool of its own (an inherited
    one has no threads, and work queued to it would never run)."""
    x = make_values("normal", (64, 256), 0, 12).to(torch.float32)
    with split_into_ranges(2):
        want = mxcomm.encode(x, "mxfp4", backend="cpu").codes
    child = multiprocessing.get_context("fork").Process(target=_encode_and_exit, args=(x, want))
    child.start()
    child.join(120)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung")
    assert child.exitcode == 0


@given(num_blocks=st.integers(0, 5000), block=st.integers(1, 70), bits=st.integers(1, 16),
       threads=st.integers(1, 8))
@examples(200)
def test_block_ranges_cover_everything_on_byte_boundaries(num_blocks, block, bits, threads) -> None:
    old = cpu_backend.MIN_TASK_ELEMENTS
    cpu_backend.MIN_TASK_ELEMENTS = 16
    try:
        ranges = cpu_backend.block_ranges(num_blocks, block, bits, threads)
    finally:
        cpu_backend.MIN_TASK_ELEMENTS = old
    assert [b for r in ranges for b in range(*r)] == list(range(num_blocks))
    assert all(b0 * block * bits % 8 == 0 for b0, _ in ranges)


# -- dispatch ------------------------------------------------------------------------------------
def test_auto_picks_the_cpu_backend(monkeypatch) -> None:
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    x = torch.randn(64)
    p = mxcomm.encode(x, "mxfp4")
    assert p.backend == "cpu"
    assert torch.equal(mxcomm.decode(p), mxcomm.decode(p, backend="torch"))


class _NoCompiler:
    name = "cpu"

    def availability(self, device: torch.device) -> str | None:
        return "no C++ compiler found (test double)"


@contextlib.contextmanager
def _cpu_backend_replaced(loader):
    original = dispatch._loaders["cpu"]
    register_backend("cpu", loader)
    try:
        yield
    finally:
        register_backend("cpu", original)


def test_auto_falls_back_to_the_reference_with_one_warning_naming_the_reason(monkeypatch) -> None:
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    monkeypatch.setattr(dispatch, "_warned", set())
    x = torch.randn(64)
    with _cpu_backend_replaced(_NoCompiler):
        with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found"):
            p = mxcomm.encode(x, "mxfp4")
        assert p.backend == "torch"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert mxcomm.encode(x, "mxfp4").backend == "torch"  # warned once only
        with pytest.raises(BackendUnavailableError, match="no C\\+\\+ compiler"):
            mxcomm.encode(x, "mxfp4", backend="cpu")
    assert mxcomm.encode(x, "mxfp4").backend == "cpu"


def test_only_cpu_tensors() -> None:
    assert "CPU tensors only" in cpu_backend.load().availability(torch.device("meta"))


def test_scale_storage_types_match_the_packed_contract() -> None:
    x = torch.randn(3, 64)
    for scale in SCALE_TYPES:
        p = mxcomm.encode(x, BlockFormat("s", FloatElement(2, 1), scale=scale), backend="cpu")
        assert p.scales.dtype == SCALE_STORAGE_DTYPES[scale]
