"""The format registry: names -> BlockFormat, plus aliases."""

from __future__ import annotations

import threading

from mxcomm.errors import FormatError
from mxcomm.formats.block import BlockFormat

_lock = threading.Lock()
_formats: dict[str, BlockFormat] = {}
_aliases: dict[str, str] = {}


def register_format(fmt: BlockFormat, *, overwrite: bool = False) -> BlockFormat:
    """Add ``fmt`` to the registry under ``fmt.name``.

    Args:
        fmt: The format.
        overwrite: Replace a format registered under the same name.

    Returns:
        ``fmt``.

    Raises:
        FormatError: ``fmt`` is not a ``BlockFormat``, its name is an alias, or it is taken
            and ``overwrite`` is false.
    """
    if not isinstance(fmt, BlockFormat):
        raise FormatError(f"register_format takes a BlockFormat, got {type(fmt).__name__}")
    with _lock:
        if fmt.name in _aliases:
            raise FormatError(f"{fmt.name!r} is an alias of {_aliases[fmt.name]!r}; pick another name")
        if fmt.name in _formats and not overwrite:
            raise FormatError(
                f"a format named {fmt.name!r} is already registered; pass overwrite=True to replace it"
            )
        _formats[fmt.name] = fmt
    return fmt


def register_alias(alias: str, name: str) -> None:
    """Make ``alias`` another name of the registered format ``name``.

    Raises:
        FormatError: ``name`` is not registered, or ``alias`` is already a format name or
            another format's alias.
    """
    with _lock:
        if name not in _formats:
            raise FormatError(f"cannot alias {alias!r} to unknown format {name!r}")
        if alias in _formats or (alias in _aliases and _aliases[alias] != name):
            raise FormatError(f"{alias!r} is already a format name or alias")
        _aliases[alias] = name


def unregister_format(name: str) -> None:
    """Remove a format and its aliases from the registry.

    Args:
        name: The registered name (not an alias).

    Raises:
        FormatError: no format of that name is registered.
    """
    with _lock:
        if name not in _formats:
            raise FormatError(f"no format named {name!r} is registered")
        del _formats[name]
        for alias in [a for a, target in _aliases.items() if target == name]:
            del _aliases[alias]


def get_format(name_or_format: str | BlockFormat) -> BlockFormat:
    """Resolve a registered name or alias to its format.

    Args:
        name_or_format: A registered name or alias, or a ``BlockFormat`` (returned as is,
            registered or not).

    Returns:
        The format.

    Raises:
        FormatError: an unknown name, or neither a string nor a ``BlockFormat``.
    """
    if isinstance(name_or_format, BlockFormat):
        return name_or_format
    if not isinstance(name_or_format, str):
        raise FormatError(
            f"expected a format name or BlockFormat, got {type(name_or_format).__name__}"
        )
    with _lock:
        name = _aliases.get(name_or_format, name_or_format)
        fmt = _formats.get(name)
        if fmt is None:
            known = ", ".join(_formats)
            raise FormatError(f"unknown format {name_or_format!r}; known formats: {known}")
        return fmt


def list_formats() -> list[str]:
    """Registered format names, in registration order (aliases not included)."""
    with _lock:
        return list(_formats)


def list_aliases() -> dict[str, str]:
    """Alias -> the format name it stands for."""
    with _lock:
        return dict(_aliases)
