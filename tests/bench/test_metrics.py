"""mxcomm.bench.metrics on cases whose answers are known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

import mxcomm
from mxcomm.bench.metrics import (
    error_summary,
    max_abs_error,
    max_relative_error,
    mean_relative_error,
    sqnr_db,
    zeroed_fraction,
)


def test_exact_copy_has_infinite_sqnr_and_no_error():
    x = torch.tensor([1.0, -2.0, 0.0, 3.5])
    s = error_summary(x, x.clone())
    assert s.sqnr_db == math.inf
    assert s.max_abs_error == 0.0
    assert s.max_rel_error == 0.0
    assert s.mean_rel_error == 0.0
    assert s.rel_rms_error == 0.0
    assert s.zeroed_fraction == 0.0


def test_sqnr_known_value():
    # signal power 3^2 + 4^2 = 25, noise power 0.5^2 = 0.25 -> 10*log10(100) = 20 dB
    x = torch.tensor([3.0, 4.0])
    y = torch.tensor([3.5, 4.0])
    assert sqnr_db(x, y) == pytest.approx(20.0, abs=1e-12)
    assert error_summary(x, y).rel_rms_error == pytest.approx(0.1, abs=1e-15)


def test_sqnr_of_uniform_relative_error():
    # y = x * (1 + e) for every element: noise = e^2 * signal, SQNR = -20 log10(e)
    x = torch.randn(1000, dtype=torch.float64)
    y = x * 1.01
    assert sqnr_db(x, y) == pytest.approx(40.0, abs=1e-9)
    assert max_relative_error(x, y) == pytest.approx(0.01, rel=1e-9)
    assert mean_relative_error(x, y) == pytest.approx(0.01, rel=1e-9)


def test_relative_errors_known_values():
    x = torch.tensor([1.0, -2.0, 4.0, 0.0])
    y = torch.tensor([1.5, -2.0, 3.0, 0.0])
    # relative errors over the non-zero x: 0.5, 0, 0.25; the exact zero is left out
    assert max_relative_error(x, y) == pytest.approx(0.5)
    assert mean_relative_error(x, y) == pytest.approx(0.75 / 3)
    assert max_abs_error(x, y) == pytest.approx(1.0)


def test_zero_reference_decoded_nonzero_is_infinitely_wrong():
    x = torch.tensor([0.0, 1.0])
    y = torch.tensor([1e-3, 1.0])
    assert max_relative_error(x, y) == math.inf
    assert mean_relative_error(x, y) == math.inf


def test_all_zero_reference_guards_division():
    x = torch.zeros(8)
    assert error_summary(x, torch.zeros(8)).sqnr_db == math.inf
    s = error_summary(x, torch.full((8,), 0.25))
    assert s.sqnr_db == -math.inf
    assert s.rel_rms_error == math.inf
    assert s.max_rel_error == math.inf
    assert s.zeroed_fraction == 0.0


def test_flushed_elements_have_relative_error_one():
    x = torch.tensor([100.0, 1e-3, -1e-3, 2.0])
    y = torch.tensor([100.0, 0.0, 0.0, 2.0])
    assert zeroed_fraction(x, y) == pytest.approx(0.5)
    assert max_relative_error(x, y) == pytest.approx(1.0)
    assert mean_relative_error(x, y) == pytest.approx(0.5)


def test_nan_or_inf_in_approximation_is_infinite_error_not_nan():
    x = torch.tensor([1.0, 2.0])
    for bad in (math.nan, math.inf):
        y = torch.tensor([1.0, bad])
        s = error_summary(x, y)
        assert s.sqnr_db == -math.inf
        assert s.max_abs_error == math.inf
        assert s.max_rel_error == math.inf
        assert not math.isnan(s.mean_rel_error)


def test_bad_input_raises_format_error():
    with pytest.raises(mxcomm.FormatError, match="shape"):
        sqnr_db(torch.zeros(3), torch.zeros(4))
    with pytest.raises(mxcomm.FormatError, match="finite reference"):
        sqnr_db(torch.tensor([math.nan]), torch.tensor([0.0]))
    with pytest.raises(mxcomm.FormatError):
        sqnr_db([1.0], torch.zeros(1))  # type: ignore[arg-type]


def test_chunked_accumulation_matches_direct_formula(monkeypatch):
    import mxcomm.bench.metrics as metrics

    monkeypatch.setattr(metrics, "_CHUNK", 7)  # force many chunks, including a ragged last one
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 13, generator=g, dtype=torch.float64)
    y = x + 0.01 * torch.randn(10, 13, generator=g, dtype=torch.float64)
    s = error_summary(x, y)
    rel = (y - x).abs() / x.abs()
    assert s.sqnr_db == pytest.approx(10 * math.log10(x.pow(2).sum().item() / (y - x).pow(2).sum().item()), rel=1e-12)
    assert s.max_rel_error == pytest.approx(rel.max().item(), rel=1e-12)
    assert s.mean_rel_error == pytest.approx(rel.mean().item(), rel=1e-12)
    assert s.max_abs_error == pytest.approx((y - x).abs().max().item(), rel=1e-12)


def test_mxint8_sqnr_on_gaussian_matches_the_uniform_noise_model():
    # int8 elements with a power-of-two block scale: step = 2^(floor(log2 amax) - 6); uniform
    # rounding noise has power step^2 / 12. A single block of known content gives a closed form.
    x = torch.tensor([127.0 / 64] + [0.3] * 31)  # amax < 2 -> scale 2^-6: 0.3 -> 19/64 (err 0.003125)
    y = mxcomm.quantize(x, "mxint8")
    assert y[0].item() == pytest.approx(127.0 / 64)
    assert y[1].item() == pytest.approx(19.0 / 64)
    expected = 10 * math.log10(((127 / 64) ** 2 + 31 * 0.3**2) / (31 * (0.3 - 19 / 64) ** 2))
    assert sqnr_db(x, y) == pytest.approx(expected, rel=1e-6)
