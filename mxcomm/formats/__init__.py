"""Format model: element types, block formats, the codec's policy enums, the registry and the built-ins."""

from mxcomm.formats.block import (
    E4M3_NAN,
    E8M0_BIAS,
    E8M0_NAN,
    E8M0_SCALE_MODES,
    FLOAT_SCALE_MODES,
    SCALE_SPECS,
    BlockFormat,
    BlockLayout,
    ScaleSpec,
    block_layout,
    normalize_axis,
    plain_name,
    rotated_name,
)
from mxcomm.formats.builtins import CUSTOM_FORMATS, NVFP4, OCP_FORMATS, custom_name, register_builtins
from mxcomm.formats.element import Element, FloatElement, IntElement, cached_code_values, code_values
from mxcomm.formats.enums import CodedEnum, NanEncoding, Rounding, ScaleMode, ScaleType
from mxcomm.formats.registry import (
    get_format,
    list_aliases,
    list_formats,
    register_alias,
    register_format,
    unregister_format,
)

register_builtins()

__all__ = [
    "CUSTOM_FORMATS",
    "E4M3_NAN",
    "E8M0_BIAS",
    "E8M0_NAN",
    "E8M0_SCALE_MODES",
    "FLOAT_SCALE_MODES",
    "NVFP4",
    "OCP_FORMATS",
    "SCALE_SPECS",
    "BlockFormat",
    "BlockLayout",
    "CodedEnum",
    "Element",
    "FloatElement",
    "IntElement",
    "NanEncoding",
    "Rounding",
    "ScaleMode",
    "ScaleSpec",
    "ScaleType",
    "block_layout",
    "cached_code_values",
    "code_values",
    "custom_name",
    "get_format",
    "list_aliases",
    "list_formats",
    "normalize_axis",
    "plain_name",
    "register_alias",
    "register_format",
    "rotated_name",
    "unregister_format",
]
