"""The evaluation harness: settings, statistics, tables and the results folder (no model needed).

The real-model runs are in tests/tp/test_tp_emulation.py (TP=3 logits vs the emulation) and
tests/cli/test_commands.py (``mxcomm eval --quick``).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from mxcomm.bench.eval_report import BEGIN, END, RESULTS_JSON, RESULTS_MD, write_results
from mxcomm.bench.eval_tables import pareto_front, pareto_markdown, ppl_markdown, ttft_markdown
from mxcomm.bench.perplexity import paired_delta
from mxcomm.bench.settings import CommSetting, pareto_settings, parse_ttft_setting, ppl_settings
from mxcomm.bench.smollm2 import EvalSetupError, windows
from mxcomm.bench.wire_accounting import comm_accounting


def test_ppl_settings_rows():
    rows = ppl_settings(["mxfp8_e4m3", "mxfp4"], ["rne", "away"], "allgather", ["mxint8"])
    labels = [r.label for r in rows]
    assert labels == [
        "none (bfloat16 wire)", "none (float32 wire)",
        "mxfp8_e4m3 rne allgather", "mxfp8_e4m3 away allgather",
        "mxfp4_e2m1 rne allgather", "mxfp4_e2m1 away allgather",
        "mxint8 rne two_shot",
    ]
    fmt = rows[3].block_format()
    assert fmt.name == "mxfp8_e4m3" and fmt.rounding == "away"
    assert rows[0].block_format() is None


def test_windows_are_fixed_and_validated():
    tokens = torch.arange(100)
    w = windows(tokens, 3, 20)
    assert w.shape == (3, 20) and w[1, 0] == 20
    with pytest.raises(EvalSetupError):
        windows(tokens, 6, 20)
    with pytest.raises(EvalSetupError):
        windows(tokens, 0, 20)


def _row(label, setting, ppl, **extra):
    base = {"label": label, "setting": setting, "ppl": ppl, "nll": math.log(ppl), "tokens": 10}
    base.update(extra)
    return base


def test_report_keeps_text_outside_markers(tmp_path):
    none = CommSetting(None, algorithm="none")
    fp8 = CommSetting("mxfp8_e4m3")
    acct = {"bits_per_element": 8.25, "ratio": 1.29, "compressed_calls_per_forward": 60,
            "bytes_sent_per_forward": 2**20}
    rows = [
        _row("unsharded (1 process)", None, 20.0),
        _row(none.label, vars(none), 20.0, **{**acct, "bits_per_element": 16, "ratio": 1.0,
                                               "compressed_calls_per_forward": 0}),
        _row(fp8.label, vars(fp8), 20.2, **acct),
    ]
    table = ppl_markdown(rows)
    assert "| mxfp8_e4m3 rne allgather | 8.25 | 1.29 | 20.2000 | +1.00% | 60 | 1.00 MiB |" in table
    doc = {"perplexity": {"command": "mxcomm eval", "environment": {"date": "d", "torch": "t", "transformers": "x"},
                          "wall_seconds": 60.0,
                          "setup": {"world_size": 3, "windows": 1, "window_tokens": 11, "text": "GPL-3",
                                    "text_tokens": 100},
                          "rows": rows}}
    md = tmp_path / RESULTS_MD
    md.write_text("# Results\n\nhand-written analysis\n")
    write_results(doc, tmp_path)
    first = md.read_text()
    assert first.startswith("# Results\n\nhand-written analysis\n") and BEGIN in first and END in first
    md.write_text(first + "\nmore notes after\n")
    rows[2]["ppl"] = 30.0
    write_results(doc, tmp_path)
    second = md.read_text()
    assert second.count(BEGIN) == 1 and "+50.00%" in second and second.endswith("more notes after\n")
    assert "hand-written analysis" in second
    assert json.loads((tmp_path / RESULTS_JSON).read_text()) == doc
    # a new folder gets a new results.md holding only the generated block
    write_results(doc, tmp_path / "run")
    fresh = (tmp_path / "run" / RESULTS_MD).read_text()
    assert fresh.startswith("# mxcomm end-to-end results\n") and fresh.count(BEGIN) == fresh.count(END) == 1


def test_ttft_table_speedups_and_ppl_lookup():
    none, i8, auto = CommSetting(None, algorithm="none"), CommSetting("mxint8", algorithm="two_shot"), \
        CommSetting("mxint8", algorithm="auto")

    def row(setting, ttft, algos, token=7):
        return {"label": setting.label, "setting": vars(setting), "ttft_s": ttft, "comm_share": 0.5,
                "algorithms": algos, "bytes_sent_per_forward": 2**20, "qdisc_bytes": 3 * 2**20,
                "first_token": token}

    results = [{"rate": "25mbit", "rows": [row(none, 10.0, {"none": 60}), row(i8, 5.0, {"two_shot": 60}),
                                           row(auto, 4.0, {"two_shot": 60}, token=8)]}]
    ppl_rows = [_row(none.label, vars(none), 20.0), _row(i8.label, vars(i8), 20.1)]
    table = ttft_markdown(results, ppl_rows).splitlines()
    assert table[3].startswith("| 25mbit | mxint8 rne two_shot | two_shot×60 | 1.00 MiB | 3.0 MiB | 5.000 | 2.00x")
    assert table[3].endswith("| +0.50% | yes |")
    # auto is looked up under the algorithm it actually ran
    assert "| 2.50x |" in table[4] and table[4].endswith("| +0.50% | no |")
    # a compiled setting: speedup against the eager baseline, Δ ppl of its eager twin
    compiled = CommSetting("mxint8", algorithm="two_shot", compiled=True)
    results[0]["rows"].append(row(compiled, 2.0, {"two_shot": 60}))
    table = ttft_markdown(results, ppl_rows).splitlines()
    assert table[5].startswith("| 25mbit | mxint8 rne two_shot compiled | two_shot×60 |")
    assert "| 5.00x |" in table[5] and table[5].endswith("| +0.50% | yes |")
    # with an unverified baseline in the run, unverified settings are compared with it (and Δ ppl is
    # that of the same numerics); the others keep the first baseline
    none_unverified = CommSetting(None, algorithm="none", verify=False)
    i8_unverified = CommSetting("mxint8", algorithm="two_shot", verify=False)
    results[0]["rows"] += [row(none_unverified, 8.0, {"none": 60}), row(i8_unverified, 4.0, {"two_shot": 60})]
    table = ttft_markdown(results, ppl_rows).splitlines()
    assert table[7].startswith("| 25mbit | mxint8 rne two_shot unverified | two_shot×60 |")
    assert "| 2.00x |" in table[7] and table[7].endswith("| +0.50% | yes |")
    assert "| 2.00x |" in table[3]  # the verified row: still against the first baseline


# -- outlier-robust Pareto phase ---------------------------------------------------------------------


def test_pareto_settings_and_labels():
    rows = pareto_settings(["mxfp4", "int4"], [8], rotation_seed=5, two_shot_formats=["mxfp4"])
    assert [r.label for r in rows] == [
        "none (bfloat16 wire)",
        "mxfp4_e2m1 rne allgather", "mxfp4_e2m1 rne allgather +rot", "mxfp4_e2m1 rne allgather +8ch",
        "mxfp4_e2m1 rne allgather +rot +8ch",
        "int4 rne allgather", "int4 rne allgather +rot", "int4 rne allgather +8ch", "int4 rne allgather +rot +8ch",
        "mxfp4_e2m1 rne two_shot +rot +8ch",
    ]
    assert [r.variant for r in rows[1:5]] == ["plain", "rotation", "outliers", "rotation+outliers"]
    assert rows[-1].variant == "rotation+outliers (two-shot)"
    fmt = rows[2].block_format()
    assert fmt.rotation_seed == 5 and fmt.name == "mxfp4_e2m1.rot5" and rows[1].block_format().rotation_seed is None
    # settings travel to the ranks as dicts: the rotation survives the round trip
    assert CommSetting(**vars(rows[4])).block_format() == rows[4].block_format()


def test_wire_bits_from_the_accounting_count_outlier_bytes():
    from mxcomm.collectives.accounting import CommRecord

    class Stats:
        def __init__(self, records):
            self.records = records

        def summary(self):
            return {"algorithms": {}, "bytes_sent": sum(r.bytes_sent for r in self.records),
                    "bytes_received": 0, "logical_bytes": 0, "ratio": 1.0, "seconds": 0.0}

    def rec(op, algorithm, numel, sent):
        return CommRecord(op=op, algorithm=algorithm, requested=algorithm, format="f", world_size=3, numel=numel,
                          dtype="bfloat16", logical_bytes=0, bytes_sent=sent, bytes_received=sent, seconds=0.0)

    # one-shot at n=3: each element goes to 2 peers; 4.25 bits -> 1000 elements cost 2 x 531.25 bytes
    acct = comm_accounting(Stats([rec("all_reduce", "allgather", 1000, 1062.5)]), 1)
    assert acct["wire_bits_per_element"] == pytest.approx(4.25)
    assert acct["compression_vs_bf16"] == pytest.approx(16 / 4.25)
    # outlier channels add their bytes, but no elements (they are part of the same tensor)
    acct = comm_accounting(Stats([rec("all_reduce", "allgather", 1000, 1062.5),
                              rec("outlier_channels", "dense_allgather", 10, 40)]), 1)
    assert acct["wire_bits_per_element"] == pytest.approx(8 * 1102.5 / 2000)
    assert acct["outlier_bytes_per_forward"] == 40 and acct["compressed_calls_per_forward"] == 1
    # ring / two-shot: 2(n-1)/n sends per element
    acct = comm_accounting(Stats([rec("all_reduce", "two_shot", 1500, 1000)]), 1)
    assert acct["wire_bits_per_element"] == pytest.approx(8 * 1000 / 2000)


def test_pareto_front_and_table():
    none, plain, rot, outl, both = pareto_settings(["mxfp4"], [8])
    rows = [
        _row(none.label, vars(none), 20.0, wire_bits_per_element=16.0, compression_vs_bf16=1.0, variant="plain"),
        _row(plain.label, vars(plain), 25.0, wire_bits_per_element=4.25, compression_vs_bf16=16 / 4.25,
             variant="plain"),
        _row(rot.label, vars(rot), 22.0, wire_bits_per_element=4.25, compression_vs_bf16=16 / 4.25,
             variant="rotation"),
        _row(outl.label, vars(outl), 22.5, wire_bits_per_element=4.5, compression_vs_bf16=16 / 4.5,
             variant="outliers", outlier_bytes_per_forward=2048),
        _row(both.label, vars(both), 20.3, wire_bits_per_element=4.5, compression_vs_bf16=16 / 4.5,
             variant="rotation+outliers", outlier_bytes_per_forward=2048),
    ]
    assert [r["label"] for r in pareto_front(rows)] == [rot.label, both.label]
    table = pareto_markdown(rows)
    assert "| mxfp4_e2m1 | rotation+outliers | 4.500 | 3.56x | 2 KiB | 20.3000 | +1.50% | yes | **yes** |" in table
    assert "| mxfp4_e2m1 | outliers | 4.500 | 3.56x | 2 KiB | 22.5000 | +12.50% |  |  |" in table


def test_ttft_setting_syntax():
    s = parse_ttft_setting("mxfp4:two_shot:rot:k8", 9)
    assert (s.fmt, s.algorithm, s.rotation_seed, s.outliers) == ("mxfp4_e2m1", "two_shot", 9, 8)
    assert parse_ttft_setting("mxint8:auto", 9).rotation_seed is None
    compiled = parse_ttft_setting("mxfp8_e4m3:two_shot:compiled", 9)
    assert compiled.compiled and compiled.label == "mxfp8_e4m3 rne two_shot compiled"
    assert compiled.eager_label == "mxfp8_e4m3 rne two_shot" and not parse_ttft_setting("mxint8:auto", 9).compiled
    none = parse_ttft_setting("none:none:compiled", 9)
    assert (none.fmt, none.algorithm, none.compiled, none.label) == (None, "none", True, "none (bfloat16 wire) compiled")
    uncal = parse_ttft_setting("mxint8:auto:uncalibrated", 9)
    assert not uncal.calibrated and uncal.label == "mxint8 rne auto uncalibrated"
    unverified = parse_ttft_setting("mxint8:two_shot:unverified:compiled", 9)
    assert not unverified.verify and unverified.label == "mxint8 rne two_shot unverified compiled"
    assert unverified.eager_label == "mxint8 rne two_shot" and parse_ttft_setting("mxint8:auto", 9).verify
    assert not parse_ttft_setting("none:none:unverified", 9).verify
    for bad in ("mxfp4", "mxfp4:ring", "mxfp4:allgather:k0", "mxfp4:allgather:spin", "none:allgather",
                "mxfp4:none", "none:none:rot", "mxfp4:two_shot:uncalibrated", "mxfp4:allgather:k8:unverified",
                "mxfp4:allgather:unverified:k8"):
        with pytest.raises(EvalSetupError):
            parse_ttft_setting(bad, 9)


def test_each_setting_plans_auto_with_its_own_estimate():
    from mxcomm.bench.rank_setup import SettingEstimates
    from mxcomm.collectives import CostModel, get_cost_model, set_cost_model
    from mxcomm.collectives.estimator import swap_estimates

    outside = swap_estimates({})
    try:
        calibrated = CostModel(alpha=1.25e-3, beta=3e-8)
        set_cost_model(calibrated)  # what calibrate_planner installs
        settings = [CommSetting(None, algorithm="none"), CommSetting("mxint8", algorithm="auto"),
                    CommSetting("mxint8", algorithm="auto", calibrated=False)]
        estimates = SettingEstimates(settings)
        with estimates.active(1):
            assert get_cost_model().alpha == calibrated.alpha
        with estimates.active(2):
            assert get_cost_model().alpha == CostModel().alpha  # as if calibrate() was never called
            set_cost_model(CostModel(alpha=7e-3))  # what this setting learns stays with it
        with estimates.active(1):
            assert get_cost_model().alpha == calibrated.alpha
        with estimates.active(2):
            assert get_cost_model().alpha == 7e-3
        assert get_cost_model().alpha == calibrated.alpha  # the group's own estimate is untouched
    finally:
        swap_estimates(outside)


def test_compiled_ttft_settings_need_a_warmup(tmp_path):
    from mxcomm.bench.smollm2 import Assets
    from mxcomm.bench.ttft import run_ttft

    with pytest.raises(EvalSetupError, match="warmup"):
        run_ttft(Assets(tmp_path, tmp_path, tmp_path, 0), [CommSetting(None, algorithm="none", compiled=True)],
                 ["loopback"], warmup=0)


def test_windows_from_an_offset():
    tokens = torch.arange(100)
    assert windows(tokens, 2, 10, start=50)[0, 0] == 50
    with pytest.raises(EvalSetupError):
        windows(tokens, 2, 30, start=50)


def test_paired_delta_matches_the_perplexity_ratio():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(4000, generator=g, dtype=torch.float64) * 5
    worse = base + 0.02 + 0.05 * torch.randn(4000, generator=g, dtype=torch.float64)
    d = paired_delta(worse.tolist(), base.tolist())
    ratio = math.exp(worse.mean()) / math.exp(base.mean())
    assert d["delta_pct"] == pytest.approx(100 * (ratio - 1), rel=1e-9)
    assert d["ci95_low_pct"] < d["delta_pct"] < d["ci95_high_pct"]
    assert d["ci95_low_pct"] > 0 and d["tokens"] == 4000  # 0.02 nats with 0.05 noise: clearly worse
    same = paired_delta(base.tolist(), base.tolist())
    assert same["delta_pct"] == same["ci95_low_pct"] == same["ci95_high_pct"] == 0
    with pytest.raises(EvalSetupError):
        paired_delta([1.0], [1.0])
