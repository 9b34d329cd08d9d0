"""The sweep's definition (mxcomm.bench.sweep): formats, configuration, inputs and recorded metrics."""

from __future__ import annotations

import pytest
import torch

import mxcomm
from mxcomm.bench.sweep import (
    DEFAULT_BLOCK_SIZES,
    SweepConfig,
    SweepError,
    make_input,
    point_info,
    row_parallel_partials,
    sweep_formats,
    sweep_points,
)
from mxcomm.formats.builtins import NVFP4, OCP_FORMATS


def _definition(fmt: mxcomm.BlockFormat) -> tuple:
    return (fmt.element, fmt.block_size, fmt.scale, fmt.scale_mode, fmt.rounding, fmt.tensor_scale)


def test_every_registered_format_is_swept_under_its_own_name():
    names = {f.name for f in sweep_formats()}
    assert set(mxcomm.list_formats()) <= names


def test_free_families_get_every_block_size_and_spec_formats_keep_theirs():
    formats = sweep_formats()
    spec = {f.name for f in OCP_FORMATS} | {NVFP4.name}
    by_family: dict[str, set[int]] = {}
    for f in formats:
        by_family.setdefault(f.family, set()).add(f.fmt.block_size)
    for name in spec:
        assert by_family[name] == {mxcomm.get_format(name).block_size}
    assert by_family["int4"] == {16, 32, 64, 128}
    assert by_family["int6_fp16"] == {16, 32, 64, 128}
    # E2M1 at block 32 is mxfp4_e2m1 itself: the family has the other three sizes
    assert by_family["fp4_e2m1"] == {16, 64, 128}
    # no format is measured twice under two names
    definitions = [_definition(f.fmt) for f in formats]
    assert len(definitions) == len(set(definitions))


def test_variants_are_the_family_format_at_another_block_size():
    by_name = {f.name: f for f in sweep_formats()}
    v = by_name["int4_b128"]
    assert not v.registered
    assert v.fmt == mxcomm.get_format("int4").with_options(name="int4_b128", block_size=128)
    w = by_name["int6_b16_fp16"]
    assert w.fmt.scale == "fp16" and w.fmt.block_size == 16 and w.fmt.element == mxcomm.IntElement(6)
    assert by_name["int4_b16"].registered  # a built-in, not rebuilt


def test_format_patterns_filter_and_reject_typos():
    names = [f.name for f in sweep_formats(patterns=["mx*", "nvfp4"])]
    assert names == [f.name for f in OCP_FORMATS] + ["nvfp4"]
    assert [f.name for f in sweep_formats(block_sizes=(32,), patterns=["int4*"])] == [
        "int4_b16",
        "int4",
        "int4_b64",
        "int4_fp16",
    ]
    with pytest.raises(SweepError, match="mxfp9"):
        sweep_formats(patterns=["mxfp9*"])


def test_config_from_environment():
    assert SweepConfig.from_env({}) == SweepConfig()
    quick = SweepConfig.from_env({"MXCOMM_SWEEP_QUICK": "1"})
    assert quick == SweepConfig.quick()
    c = SweepConfig.from_env(
        {
            "MXCOMM_SWEEP_QUICK": "1",
            "MXCOMM_SWEEP_SIZES": "2, 8",
            "MXCOMM_SWEEP_DTYPES": "fp32",
            "MXCOMM_SWEEP_FORMATS": "int4",
            "MXCOMM_SWEEP_BLOCK_SIZES": "16",
        }
    )
    assert c.tokens == (2, 8) and c.dtypes == ("fp32",) and c.formats == ("int4",) and c.block_sizes == (16,)
    assert c.hidden == quick.hidden
    assert SweepConfig().block_sizes == DEFAULT_BLOCK_SIZES
    for env in (
        {"MXCOMM_SWEEP_SIZES": "1,x"},
        {"MXCOMM_SWEEP_SIZES": "0"},
        {"MXCOMM_SWEEP_DTYPES": "fp8"},
        {"MXCOMM_SWEEP_SOURCES": "imagenet"},
        {"MXCOMM_SWEEP_TARGET_S": "soon"},
    ):
        with pytest.raises(SweepError):
            SweepConfig.from_env(env)


def test_rounds_follow_the_time_budget():
    c = SweepConfig(target_s=1.0, max_rounds=10)
    assert c.rounds_for(2.0) == 1
    assert c.rounds_for(0.3) == 4
    assert c.rounds_for(1e-6) == 10


def test_points_are_input_major_and_cover_the_product():
    c = SweepConfig(tokens=(1, 4), hidden=64, dtypes=("bf16", "fp32"), sources=("synthetic",), formats=("mx*",))
    points = sweep_points(c)
    assert len(points) == 2 * 2 * 6
    inputs = [(p.dtype, p.tokens) for p in points]
    assert inputs == sorted(inputs, key=lambda t: (["bf16", "fp32"].index(t[0]), t[1]))
    assert len({p.id for p in points}) == len(points)


def test_point_info_measures_the_packed_size_and_error():
    c = SweepConfig(tokens=(3,), hidden=96, dtypes=("bf16",), sources=("synthetic",), formats=("nvfp4",))
    (point,) = sweep_points(c)
    x = point.input()
    assert x.shape == (3, 96) and x.dtype == torch.bfloat16
    p = mxcomm.encode(x, point.format.fmt)
    y = mxcomm.decode(p)
    info = point_info(point, x, p, y)
    # nvfp4: 4-bit codes, one E4M3 byte per 16 elements, a 4-byte tensor scale
    assert info["packed_nbytes"] == 3 * 96 // 2 + 3 * 96 // 16 + 4
    assert info["bits_per_element"] == pytest.approx(8 * info["packed_nbytes"] / (3 * 96))
    assert info["compression_ratio"] == pytest.approx(3 * 96 * 2 / info["packed_nbytes"])
    assert info["sqnr_db"] == pytest.approx(mxcomm.bench.metrics.sqnr_db(x, y))
    assert 0 < info["mean_rel_error"] <= info["max_rel_error"]


def test_synthetic_input_has_outlier_channels():
    x = make_input("synthetic", 64, 1024, "fp32")
    channel_peak = x.abs().amax(0)
    assert channel_peak.max() > 10 * channel_peak.median()


def test_row_parallel_partials_sum_to_the_layer_outputs():
    transformers = pytest.importorskip("transformers", reason="the capture test builds a tiny Llama")
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=3,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    outputs = []
    handles = [
        m.register_forward_hook(lambda mod, args, out: outputs.append(out.reshape(-1, out.shape[-1])))
        for name, m in model.named_modules()
        if name.endswith(("o_proj", "down_proj"))
    ]
    ids = torch.randint(0, 64, (1, 10), generator=torch.Generator().manual_seed(1))
    world = 3
    try:
        rows = row_parallel_partials(model, ids, world)
    finally:
        for h in handles:
            h.remove()
    assert len(outputs) == 2 * 2  # o_proj and down_proj of 2 layers
    assert rows.shape == (len(outputs) * world * 10, 48)
    for i, full in enumerate(outputs):
        partials = rows[i * world * 10 : (i + 1) * world * 10].reshape(world, 10, 48)
        torch.testing.assert_close(partials.sum(0), full, rtol=1e-5, atol=1e-6)
        # each rank's partial is a real share, not the whole output
        assert not torch.allclose(partials[0], full)
    with pytest.raises(SweepError, match="not divisible"):
        row_parallel_partials(model, ids, 5)
