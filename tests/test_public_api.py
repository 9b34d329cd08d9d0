"""The public API: what each package exports, and that it is documented."""

from __future__ import annotations

import importlib
import inspect

import pytest

PACKAGES = ["mxcomm", "mxcomm.formats", "mxcomm.kernels", "mxcomm.collectives", "mxcomm.tp"]

# functions and classes whose docstrings must spell out Args/Returns/Raises (Google style)
DOCUMENTED = {
    "mxcomm": ["encode", "decode", "decode_sum", "quantize", "get_format", "register_format", "unregister_format"],
    "mxcomm.collectives": ["all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor", "all_gather",
                           "reduce_scatter", "calibrate", "set_cost_model"],
    "mxcomm.tp": ["parallelize_llama", "llama_tp_plan", "calibrate_outliers", "set_outlier_channels",
                  "set_comm_format", "compress", "parallelize", "save_plan", "load_plan"],
}


@pytest.mark.parametrize("name", PACKAGES)
def test_every_export_is_documented(name):
    pkg = importlib.import_module(name)
    for attr in pkg.__all__:
        obj = getattr(pkg, attr)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert inspect.getdoc(obj), f"{name}.{attr} has no docstring"


def test_internal_helpers_are_not_exported():
    import mxcomm.collectives
    import mxcomm.formats
    import mxcomm.kernels

    assert not {"E8M0_BIAS", "SCALE_SPECS", "code_values", "OCP_FORMATS"} & set(mxcomm.formats.__all__)
    assert not {"pack_codes", "unpack_codes", "EncodedBlocks", "effective_format"} & set(mxcomm.kernels.__all__)
    assert not {"format_fingerprint", "all_reduce_wire_bytes", "REQUESTABLE"} & set(mxcomm.collectives.__all__)


@pytest.mark.parametrize("pkg,attr", [(p, a) for p, names in DOCUMENTED.items() for a in names])
def test_google_style_sections(pkg, attr):
    fn = getattr(importlib.import_module(pkg), attr)
    doc = inspect.getdoc(fn)
    returns_none = inspect.signature(fn).return_annotation in (None, "None")
    for section in ("Args:", "Raises:") if returns_none else ("Args:", "Returns:", "Raises:"):
        assert section in doc, f"{pkg}.{attr}: no {section} section"


def test_error_types_are_also_builtin_types():
    import mxcomm

    assert issubclass(mxcomm.ArgumentTypeError, TypeError) and issubclass(mxcomm.ArgumentTypeError, mxcomm.MxcommError)
    assert issubclass(mxcomm.UnsupportedReduceOpError, ValueError)
    assert issubclass(mxcomm.UnsupportedReduceOpError, mxcomm.MxcommError)
    assert issubclass(mxcomm.CollectiveTimeoutError, mxcomm.CollectiveAbortedError)
    assert issubclass(mxcomm.CollectiveAbortedError, RuntimeError)
    assert issubclass(mxcomm.CollectiveAbortedError, mxcomm.MxcommError)
