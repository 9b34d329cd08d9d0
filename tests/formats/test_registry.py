"""The format registry and the built-in formats."""

from __future__ import annotations

import pytest

import mxcomm
from mxcomm.formats import BlockFormat, FloatElement, IntElement, list_aliases, register_alias
from mxcomm.formats.builtins import custom_name

BUILTINS = [
    "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8", "nvfp4",
    "fp3_e1m1", "fp3_e2m0", "fp5_e2m2", "fp5_e3m1", "fp7_e3m3", "fp7_e4m2",
    "int2", "int3", "int4", "int5", "int6", "int4_fp16", "int6_fp16", "int8_fp16",
    "fp4_e2m1_b16", "fp4_e2m1_b64", "fp5_e2m2_b16", "int4_b16", "int4_b64",
]  # fmt: skip


def test_builtins_are_registered() -> None:
    names = mxcomm.list_formats()
    assert set(BUILTINS) <= set(names)
    assert "mxfp4" not in names  # aliases are not listed as formats
    assert list_aliases()["mxfp4"] == "mxfp4_e2m1"
    assert mxcomm.get_format("mxfp4") is mxcomm.get_format("mxfp4_e2m1")


@pytest.mark.parametrize(
    "name,element,block,scale",
    [
        ("mxfp8_e4m3", FloatElement(4, 3, nan="all_ones"), 32, "e8m0"),
        ("mxfp8_e5m2", FloatElement(5, 2, inf=True, nan="ieee"), 32, "e8m0"),
        ("mxfp6_e3m2", FloatElement(3, 2), 32, "e8m0"),
        ("mxfp6_e2m3", FloatElement(2, 3), 32, "e8m0"),
        ("mxfp4_e2m1", FloatElement(2, 1), 32, "e8m0"),
        ("mxint8", IntElement(8), 32, "e8m0"),
        ("nvfp4", FloatElement(2, 1), 16, "e4m3"),
    ],
)
def test_standard_formats_are_defined_as_the_specs_say(name, element, block, scale) -> None:
    fmt = mxcomm.get_format(name)
    assert (fmt.element, fmt.block_size, fmt.scale, fmt.rounding) == (element, block, scale, "rne")
    assert fmt.scale_mode == ("floor" if scale == "e8m0" else "rceil")
    assert fmt.tensor_scale == (name == "nvfp4")


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_names_follow_the_naming_scheme(name: str) -> None:
    fmt = mxcomm.get_format(name)
    assert fmt.name == name
    if not name.startswith(("mx", "nv")):
        assert custom_name(fmt.element, fmt.block_size, fmt.scale) == name


def test_get_format_passes_block_formats_through() -> None:
    fmt = BlockFormat("not_registered_anywhere", FloatElement(2, 2))
    assert mxcomm.get_format(fmt) is fmt


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(mxcomm.FormatError) as info:
        mxcomm.get_format("mxfp5_nope")
    message = str(info.value)
    assert "mxfp5_nope" in message
    for name in ("mxfp8_e4m3", "nvfp4", "int4_fp16"):
        assert name in message


@pytest.mark.parametrize("bad", [None, 4, 4.0, FloatElement(2, 1), b"mxfp4", ["mxfp4"]])
def test_get_format_rejects_non_names(bad: object) -> None:
    with pytest.raises(mxcomm.FormatError):
        mxcomm.get_format(bad)  # type: ignore[arg-type]


def test_register_clash_and_overwrite() -> None:
    name = "test_registry_clash_fmt"
    first = BlockFormat(name, FloatElement(3, 1))
    second = BlockFormat(name, FloatElement(1, 1))
    try:
        assert mxcomm.register_format(first) is first
        assert mxcomm.get_format(name) is first
        with pytest.raises(mxcomm.FormatError):
            mxcomm.register_format(second)
        assert mxcomm.get_format(name) is first  # a failed registration changes nothing
        assert mxcomm.register_format(second, overwrite=True) is second
        assert mxcomm.get_format(name) is second
        assert mxcomm.list_formats().count(name) == 1
    finally:
        mxcomm.unregister_format(name)
    with pytest.raises(mxcomm.FormatError):
        mxcomm.get_format(name)
    with pytest.raises(mxcomm.FormatError):
        mxcomm.unregister_format(name)


def test_builtin_clash_needs_overwrite() -> None:
    with pytest.raises(mxcomm.FormatError):
        mxcomm.register_format(BlockFormat("mxfp4_e2m1", FloatElement(2, 2)))
    assert mxcomm.get_format("mxfp4_e2m1").element == FloatElement(2, 1)


def test_alias_names_are_reserved() -> None:
    with pytest.raises(mxcomm.FormatError):
        mxcomm.register_format(BlockFormat("mxfp4", FloatElement(2, 2)), overwrite=True)
    with pytest.raises(mxcomm.FormatError):
        register_alias("mxfp8_e4m3", "mxfp4_e2m1")  # an existing format name
    with pytest.raises(mxcomm.FormatError):
        register_alias("some_alias", "no_such_format")


@pytest.mark.parametrize("bad", ["mxfp4", None, FloatElement(2, 1)])
def test_register_rejects_non_formats(bad: object) -> None:
    with pytest.raises(mxcomm.FormatError):
        mxcomm.register_format(bad)  # type: ignore[arg-type]


def test_registered_custom_format_is_usable_by_name() -> None:
    import torch

    name = "test_registry_custom_fp5"
    mxcomm.register_format(BlockFormat(name, FloatElement(2, 2), block_size=16))
    try:
        x = torch.tensor([1.0, 1.125, 1.375, -3.5, 0.6])
        y = mxcomm.quantize(x, name, backend="torch")
        # E2M2 (emax 2, max 7): amax 3.5 -> X = 2**(1-2). Scaled: 2, 2.25, 2.75, -7, 1.2.
        # In [2, 4) the step is 0.5: 2.25 ties to 2.0 (even mantissa), 2.75 ties to 3.0;
        # 1.2 in [1, 2) has step 0.25 -> 1.25.
        assert y.tolist() == [1.0, 1.0, 1.5, -3.5, 0.625]
    finally:
        mxcomm.unregister_format(name)


def test_registered_format_can_carry_a_rotation() -> None:
    import torch

    import mxcomm
    from mxcomm.formats import get_format, register_format, unregister_format

    rotated = mxcomm.BlockFormat("mxfp4_rot_test", mxcomm.FloatElement(2, 1), 32, rotation_seed=99)
    register_format(rotated)
    try:
        assert get_format("mxfp4_rot_test").rotation_seed == 99
        x = torch.randn(4, 70)
        p = mxcomm.encode(x, "mxfp4_rot_test", backend="torch")
        assert p.format.rotation_seed == 99
        back = mxcomm.Packed.from_bytes(p.to_bytes())
        assert back.format == rotated
        assert torch.equal(mxcomm.decode(back, backend="torch"), mxcomm.decode(p, backend="torch"))
        # the rotation is part of the format: the same element without it decodes differently
        plain = mxcomm.quantize(x, rotated.with_options(rotation_seed=None), backend="torch")
        assert not torch.equal(mxcomm.decode(p, backend="torch"), plain)
    finally:
        unregister_format("mxfp4_rot_test")
