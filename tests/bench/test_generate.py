"""The generation benchmark's bookkeeping: phase split of the records, settings syntax, the report."""

from __future__ import annotations

import json

import pytest

from mxcomm.bench.generate import GENERATE_JSON, GENERATE_MD, TokenClock, phase_summary, write_generate_report
from mxcomm.bench.settings import CommSetting
from mxcomm.bench.smollm2 import EvalSetupError
from mxcomm.cli.generate import parse_setting
from mxcomm.collectives.accounting import CommRecord, CommStats
from tests.cli.test_commands import markdown_tables


def record(algorithm: str, numel: int, sent: int, fmt: str = "") -> CommRecord:
    return CommRecord("all_reduce", algorithm, "auto", fmt, 3, numel, "bfloat16", 2 * numel, sent, sent, 1e-3)


def test_clock_splits_prefill_from_decode():
    stats = CommStats()
    clock = TokenClock(stats)
    clock.put(None)  # the prompt
    stats.records += [record("two_shot", 512 * 8, 900, "mxfp6_e2m3")] * 2  # prefill: 2 modules
    clock.put(None)  # first token
    for _ in range(3):  # three decode steps
        stats.records += [record("none", 8, 40)] * 2
        clock.put(None)
    assert clock.calls == [0, 2, 4, 6, 8] and len(clock.times) == 5
    prefill = phase_summary(stats.records[: clock.calls[1]], 1)
    decode = phase_summary(stats.records[clock.calls[1]:], 3)
    assert prefill["algorithms"] == {"two_shot": 2} and prefill["formats"] == {"mxfp6_e2m3": 2}
    assert prefill["message_numel"] == [4096] and prefill["bytes_sent_per_forward"] == 1800
    assert decode["algorithms"] == {"none": 6} and decode["formats"] == {"none": 6}
    assert decode["bytes_sent_per_forward"] == 80 and decode["message_numel"] == [8]


def test_settings_syntax():
    assert parse_setting("none", 1) == CommSetting(None, algorithm="none")
    assert parse_setting("mxfp6_e2m3:auto", 1) == CommSetting("mxfp6_e2m3", "rne", "auto")
    assert parse_setting("mxfp4:two_shot:rot:k8", 5) == CommSetting("mxfp4_e2m1", "rne", "two_shot", rotation_seed=5,
                                                                    outliers=8)
    with pytest.raises(EvalSetupError):
        parse_setting("mxfp6_e2m3:ring", 1)


def _row(label: str, fmt: str | None, algorithm: str, ttft: float, tpot: float, tokens: list[int]) -> dict:
    phase = {"forwards": 15, "algorithms": {algorithm: 61 * 15}, "bytes_sent_per_forward": 2048.0}
    return {"label": label, "setting": {"fmt": fmt, "algorithm": algorithm}, "ttft_s": ttft, "tpot_s": tpot,
            "tokens": tokens, "ranks_agree": True, "prefill": {**phase, "forwards": 1, "algorithms": {algorithm: 61}},
            "decode": phase}


def test_report_compares_every_row_with_none(tmp_path):
    transformers = {**_row("transformers' own all-reduce", None, "transformers", 1.5, 0.04, [1, 2]),
                    "prefill": phase_summary([], 1), "decode": phase_summary([], 15)}
    results = [
        {"rate": "loopback", "world_size": 3, "rows": [transformers, _row("none", None, "none", 2.0, 0.05, [1, 2]),
                                                      _row("mxfp6 two_shot", "mxfp6_e2m3", "two_shot", 4.0, 0.1, [1, 3])]},
        {"rate": "25mbit", "rows": [], "error": "CalledProcessError: boom"},
    ]
    write_generate_report(results, tmp_path, "mxcomm bench-generate --quick", {"prompt_tokens": 512, "new_tokens": 16,
                                                                               "reps": 1, "warmup": 1})
    assert json.loads((tmp_path / GENERATE_JSON).read_text())["results"] == results
    [table] = markdown_tables((tmp_path / GENERATE_MD).read_text())
    header, transformers, none, two_shot, failed = table
    cell = dict(zip(header, transformers))
    assert cell["TPOT vs none"] == "1.250x" and cell["decode: algorithm calls / token"] == "-"
    cell = dict(zip(header, two_shot))
    assert cell["TTFT speedup vs none"] == "0.50x" and cell["TPOT vs none"] == "0.500x"
    assert cell["decode: algorithm calls / token"] == "two_shot 61" and cell["tokens = none's"] == "no"
    assert dict(zip(header, none))["tokens = none's"] == "yes"
    assert failed[1] == "FAILED: CalledProcessError: boom"
