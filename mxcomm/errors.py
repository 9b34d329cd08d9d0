"""Exception types raised by mxcomm.

Every error that bad input can cause is one of these, so callers can catch
``mxcomm.MxcommError`` (or the more specific type) and nothing else. Each
also derives from the built-in exception a caller would expect for the
problem (``ValueError``, ``TypeError``, ``RuntimeError``), so code written
against those keeps working.
"""

from __future__ import annotations


class MxcommError(Exception):
    """Base class of every exception mxcomm raises on purpose."""


class FormatError(MxcommError, ValueError):
    """Bad format description, bad codec input, or a malformed wire frame.

    The collectives also raise it for tensors of an unsupported dtype and for
    output tensors of the wrong size, dtype or device.
    """


class ArgumentTypeError(MxcommError, TypeError):
    """An argument is of the wrong type, e.g. a collective given something that is not a ``torch.Tensor``."""


class UnsupportedReduceOpError(MxcommError, ValueError):
    """A collective was asked for a reduction other than SUM.

    Compressed reductions are sums of decoded partials (``decode_sum``); there
    is no compressed MAX, MIN, PRODUCT or AVG.
    """


class BackendUnavailableError(MxcommError, RuntimeError):
    """A kernel backend was requested explicitly but cannot run here."""


class CollectiveMismatchError(MxcommError, RuntimeError):
    """Ranks of one collective disagree on format, dtype, shape or algorithm."""
