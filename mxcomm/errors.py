"""Exception types raised by mxcomm.

Every error that bad input can cause is one of these, so callers can catch
``mxcomm.MxcommError`` (or the more specific type) and nothing else.
"""

from __future__ import annotations


class MxcommError(Exception):
    """Base class of every exception mxcomm raises on purpose."""


class FormatError(MxcommError, ValueError):
    """Bad format description, bad codec input, or a malformed wire frame."""


class BackendUnavailableError(MxcommError, RuntimeError):
    """A kernel backend was requested explicitly but cannot run here."""


class CollectiveMismatchError(MxcommError, RuntimeError):
    """Ranks of one collective disagree on format, dtype, shape or algorithm."""
