"""Format model: element types, block formats, the registry and the built-ins."""

from mxcomm.formats.block import (
    E4M3_NAN,
    E8M0_BIAS,
    E8M0_NAN,
    ROUNDINGS,
    SCALE_SPECS,
    BlockFormat,
    BlockLayout,
    ScaleSpec,
    block_layout,
    normalize_axis,
)
from mxcomm.formats.builtins import CUSTOM_FORMATS, NVFP4, OCP_FORMATS, custom_name, register_builtins
from mxcomm.formats.element import Element, FloatElement, IntElement, cached_code_values, code_values
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
    "NVFP4",
    "OCP_FORMATS",
    "ROUNDINGS",
    "SCALE_SPECS",
    "BlockFormat",
    "BlockLayout",
    "Element",
    "FloatElement",
    "IntElement",
    "ScaleSpec",
    "block_layout",
    "cached_code_values",
    "code_values",
    "custom_name",
    "get_format",
    "list_aliases",
    "list_formats",
    "normalize_axis",
    "register_alias",
    "register_format",
    "unregister_format",
]
