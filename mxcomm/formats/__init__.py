"""Format model: element types, block formats, the codec's policy enums and the registry.

The public API is ``__all__``. Internal pieces (scale specs, E8M0 constants,
the built-in format tuples, code tables, naming helpers) stay importable from
their modules: ``mxcomm.formats.block``, ``.element``, ``.enums``, ``.builtins``,
``.registry``.
"""

from mxcomm.formats.block import BlockFormat, BlockLayout, block_layout
from mxcomm.formats.builtins import register_builtins
from mxcomm.formats.element import Element, FloatElement, IntElement
from mxcomm.formats.enums import NanEncoding, Rounding, ScaleMode, ScaleType
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
    "BlockFormat",
    "BlockLayout",
    "Element",
    "FloatElement",
    "IntElement",
    "NanEncoding",
    "Rounding",
    "ScaleMode",
    "ScaleType",
    "block_layout",
    "get_format",
    "list_aliases",
    "list_formats",
    "register_alias",
    "register_format",
    "unregister_format",
]
