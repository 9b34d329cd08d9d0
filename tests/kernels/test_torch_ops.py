"""The codec as torch custom ops: format specs, fake implementations, torch.compile, torch.export, profiler.

The compiled TP model and the collective ops are tested in tests/tp/test_compile_tp.py (spawned ranks).
"""

from __future__ import annotations

import collections

import pytest
import torch
from hypothesis import given

import mxcomm
from mxcomm.errors import BackendUnavailableError, FormatError
from mxcomm.formats import get_format
from mxcomm.kernels.torch_ops import constant_when_traced, format_from_spec, format_spec
from tests.kernels.test_wire import block_formats

SPEC = format_spec(get_format("mxfp8_e4m3"))
# one of each kind: e8m0 scales, a float scale with a tensor scale, a rotated format, odd element widths
FORMATS = ["mxfp8_e4m3", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8", "nvfp4", "fp3_e1m1"]
ROTATED = get_format("mxfp4_e2m1").with_options(rotation_seed=7)


def _x(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3).to(dtype)


# -- format specs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", mxcomm.list_formats())
def test_spec_round_trips_every_registered_format(name: str) -> None:
    fmt = get_format(name)
    spec = format_spec(fmt)
    assert spec.startswith(f"{name}:")
    assert format_from_spec(spec) == fmt


@given(block_formats())
def test_spec_round_trips_any_format(fmt) -> None:  # noqa: ANN001
    # unregistered, rotated, stochastic, tensor-scaled: the spec identifies every one completely
    assert format_from_spec(format_spec(fmt)) == fmt


def test_specs_of_formats_differing_in_one_field_differ() -> None:
    base = get_format("mxfp4_e2m1")
    variants = [base, base.with_options(rounding="zero"), base.with_options(scale_mode="ceil"),
                base.with_options(rotation_seed=1), base.with_options(rotation_seed=2, name=base.name)]
    assert len({format_spec(f) for f in variants}) == len(variants)


@pytest.mark.parametrize("bad", ["mxfp8_e4m3", "mxfp8_e4m3:", "mxfp8_e4m3:zz", SPEC[:-2], SPEC + "00", ":" + SPEC])
def test_malformed_spec_raises_format_error(bad: str) -> None:
    with pytest.raises(FormatError):
        format_from_spec(bad)


def test_constant_marker_is_the_one_torch_sets() -> None:
    # constant_when_traced sets the marker itself (importing Dynamo at import time costs seconds)
    def ours() -> int:
        return 0

    def theirs() -> int:
        return 0

    constant_when_traced(ours)
    torch.compiler.assume_constant_result(theirs)
    assert vars(ours) == vars(theirs) == {"_dynamo_marked_constant": True}


# -- the ops themselves ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS + [ROTATED])
def test_ops_are_the_api(fmt) -> None:  # noqa: ANN001
    f = get_format(fmt)
    spec = format_spec(f)
    x = _x((5, 70))
    p = mxcomm.encode(x, f, axis=0)
    codes, scales, ts = torch.ops.mxcomm.encode(x, spec, 0, None, "auto")
    assert torch.equal(codes, p.codes) and torch.equal(scales, p.scales)
    assert ts.shape == (() if f.tensor_scale else (0,))
    if f.tensor_scale:
        assert torch.equal(ts, p.tensor_scale.reshape(()))
    y = torch.ops.mxcomm.decode(codes, scales, ts if f.tensor_scale else None, spec, [5, 70], 0, torch.bfloat16,
                                "auto")
    assert torch.equal(y, mxcomm.decode(p, dtype=torch.bfloat16))
    two = torch.ops.mxcomm.decode_sum([codes, codes], [scales, scales], [ts, ts] if f.tensor_scale else [], spec,
                                      [5, 70], 0, torch.float32, "auto")
    assert torch.equal(two, mxcomm.decode_sum([p, p], dtype=torch.float32))
    assert torch.equal(torch.ops.mxcomm.quantize(x, spec, 0, None, "auto"), mxcomm.quantize(x, f, axis=0))


def test_stochastic_rounding_draws_one_seed_tensor_per_call() -> None:
    x = _x((4, 64))
    fmt = get_format("mxfp4_e2m1").with_options(rounding="stochastic")
    a = mxcomm.encode(x, fmt, generator=torch.Generator().manual_seed(3))
    seed = torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(3))
    codes, _, _ = torch.ops.mxcomm.encode(x, format_spec(fmt), 1, seed, "auto")
    assert torch.equal(codes, a.codes)


@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "nvfp4"])
def test_opcheck(fmt: str) -> None:
    # schema, fake tensor and AOT (static and dynamic shapes) checks of torch.library
    spec = format_spec(get_format(fmt))
    x = _x((3, 40))
    codes, scales, ts = torch.ops.mxcomm.encode(x, spec, 1, None, "auto")
    tscale = [ts] if get_format(fmt).tensor_scale else []
    cases = [
        (torch.ops.mxcomm.encode.default, (x, spec, 1, None, "auto")),
        (torch.ops.mxcomm.decode.default, (codes, scales, ts if tscale else None, spec, [3, 40], 1, torch.float16,
                                           "auto")),
        (torch.ops.mxcomm.decode_sum.default, ([codes, codes], [scales, scales], tscale * 2, spec, [3, 40], 1,
                                               torch.float32, "auto")),
        (torch.ops.mxcomm.quantize.default, (x.t(), spec, 0, None, "auto")),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("shape,axis", [((), 0), ((7,), 0), ((3, 33), 1), ((3, 33), 0), ((2, 0, 5), 1)])
@pytest.mark.parametrize("fmt", ["mxfp6_e2m3", "nvfp4", "fp3_e1m1"])
def test_fake_shapes_equal_real_shapes(shape: tuple[int, ...], axis: int, fmt: str) -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    spec = format_spec(get_format(fmt))
    x = _x(shape)
    real = torch.ops.mxcomm.encode(x, spec, axis, None, "auto")
    with FakeTensorMode() as mode:
        fake = torch.ops.mxcomm.encode(mode.from_tensor(x), spec, axis, None, "auto")
        fake_y = torch.ops.mxcomm.quantize(mode.from_tensor(x), spec, axis, None, "auto")
    assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in real]
    y = torch.ops.mxcomm.quantize(x, spec, axis, None, "auto")
    assert (fake_y.shape, fake_y.dtype) == (y.shape, y.dtype)
    assert fake_y.is_contiguous() and y.is_contiguous()  # (the strides of an empty tensor are arbitrary)


# -- torch.compile, torch.export, the profiler ----------------------------------------------------


def test_compiled_quantize_has_no_graph_break_and_one_dynamic_graph() -> None:
    torch._dynamo.reset()
    graphs = []

    def counting(gm: torch.fx.GraphModule, inputs):  # noqa: ANN001
        graphs.append(gm)
        return gm.forward

    def fake_quant(x: torch.Tensor) -> torch.Tensor:
        return mxcomm.quantize(x * 2, ROTATED, axis=0) + mxcomm.quantize(x, "nvfp4")

    compiled = torch.compile(fake_quant, backend=counting, fullgraph=True, dynamic=True)
    for rows in (3, 8, 21):
        x = _x((rows, 48), seed=rows)
        assert torch.equal(compiled(x), fake_quant(x))
    assert len(graphs) == 1
    targets = {str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"}
    assert "mxcomm.quantize.default" in targets


def test_compiled_codec_with_the_cpu_backend_is_right_on_the_first_call() -> None:
    # The regression of the NaN logits: Dynamo compiled the native backend's frames after a graph
    # break, and the code-value table a ctypes pointer pointed to was freed before the decoder read it.
    torch._dynamo.reset()

    def roundtrip(x: torch.Tensor) -> torch.Tensor:
        return mxcomm.decode(mxcomm.encode(x * 2, "mxfp8_e4m3", backend="cpu"), backend="cpu") + 1

    x = _x((4, 64))
    want = roundtrip(x)
    compiled = torch.compile(roundtrip)  # inductor; Packed is an eager container (graph breaks around it)
    for _ in range(2):
        assert torch.equal(compiled(x), want)


def test_export_keeps_the_codec_ops() -> None:
    class FakeQuant(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            codes, scales, ts = torch.ops.mxcomm.encode(x, SPEC, 1, None, "auto")
            y = torch.ops.mxcomm.decode(codes, scales, None, SPEC, x.shape, 1, torch.float32, "auto")
            return y + mxcomm.quantize(x, "mxint8")

    x = _x((6, 64))
    rows = torch.export.Dim("rows", min=2)
    ep = torch.export.export(FakeQuant(), (x,), dynamic_shapes=({0: rows},))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {"mxcomm.encode.default", "mxcomm.decode.default", "mxcomm.quantize.default"} <= targets
    for n in (6, 11):
        x = _x((n, 64), seed=n)
        assert torch.equal(ep.module()(x), FakeQuant()(x))


def test_bad_input_in_compiled_code_raises_the_documented_errors() -> None:
    # fullgraph=True: Dynamo would report an exception raised while tracing as its own Unsupported
    # error; mxcomm.quantize defers it into the graph (mxcomm::raise_error), raised when it runs
    torch._dynamo.reset()

    def run(fmt, x, **kw):  # noqa: ANN001, ANN003
        return torch.compile(lambda t: mxcomm.quantize(t, fmt, **kw) * 2, fullgraph=True)(x)

    x = _x((2, 32))
    with pytest.raises(FormatError, match="unknown format"):
        run("no_such_format", x)
    with pytest.raises(FormatError, match="rounding"):
        run("mxfp8_e4m3", x, rounding="sideways")
    with pytest.raises(FormatError, match="axis"):
        run("mxfp8_e4m3", x, axis=2)
    with pytest.raises(FormatError, match="float32, bfloat16 or float16"):
        run("mxfp8_e4m3", x.to(torch.int32))
    with pytest.raises(BackendUnavailableError):  # raised by the op when it runs
        run("mxfp8_e4m3", x, backend="no_such_backend")


def test_profiler_shows_the_codec_ops() -> None:
    x = _x((4, 64))
    with torch.profiler.profile() as prof:
        p = mxcomm.encode(x, "mxfp8_e4m3")
        mxcomm.decode(p)
        mxcomm.decode_sum([p, p])
    names = collections.Counter(e.name for e in prof.events())
    assert names["mxcomm::encode"] == 1 and names["mxcomm::decode"] == 1 and names["mxcomm::decode_sum"] == 1
