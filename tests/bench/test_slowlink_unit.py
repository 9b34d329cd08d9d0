"""The slow-link benchmark's pure parts: environment check, point selection, summary (no namespaces)."""

from __future__ import annotations

import pytest

from mxcomm.bench import slowlink
from mxcomm.bench.slowlink import SlowLinkUnavailable, SweepConfig, parse_rate, points_for, summarize


def test_environment_check_explains_what_is_missing(monkeypatch):
    monkeypatch.setattr(slowlink.os, "geteuid", lambda: 1000)
    with pytest.raises(SlowLinkUnavailable, match="root"):
        slowlink.check_environment()
    monkeypatch.setattr(slowlink.os, "geteuid", lambda: 0)
    monkeypatch.setattr(slowlink.shutil, "which", lambda tool: None if tool == "tc" else "/usr/sbin/ip")
    with pytest.raises(SlowLinkUnavailable, match="tc.*iproute2"):
        slowlink.check_environment()


def test_parse_rate():
    assert parse_rate("100mbit") == 100e6 and parse_rate("1gbit") == 1e9 and parse_rate("2.5Gbit") == 2.5e9
    with pytest.raises(ValueError):
        parse_rate("fast")


def test_points_skip_sizes_too_slow_for_the_link():
    cfg = SweepConfig(sizes_mib=[1, 16], formats=["mxfp4_e2m1", "mxint8"], max_seconds_per_iteration=1.5)
    # ring at 100 Mbit/s, 2 ranks: 16 MiB -> 2.7 s per iteration (skipped), 1 MiB -> 0.17 s
    assert [p["nbytes"] for p in points_for(cfg, "100mbit", 2)] == [1 << 20, 1 << 20]
    assert len(points_for(cfg, "1gbit", 2)) == 4


def _row(alg, ms, sent, ran=None):
    return {"rate": "1gbit", "world_size": 2, "nbytes": 1 << 24, "format": "mxfp4_e2m1", "algorithm": alg,
            "ran": ran or alg, "median_s": ms / 1e3, "times_s": [ms / 1e3, ms / 2e3], "bytes_sent": sent,
            "qdisc_bytes_per_iter": None, "identical_on_ranks": True}


def test_summary_speedups_against_dist_and_byte_ratio():
    rows = [_row("dist", 270, None, "dist"), _row("none", 275, 1000), _row("allgather", 100, 250),
            _row("two_shot", 90, 250), _row("auto", 95, 250, "two_shot")]
    (s,) = summarize(rows)
    assert s["best"] == "two_shot"
    assert s["speedup"]["two_shot"] == pytest.approx(3.0)
    assert s["ideal"]["two_shot"] == pytest.approx(4.0)
    assert s["efficiency"] == pytest.approx(0.75)
    assert s["speedup_min"]["two_shot"] == pytest.approx(3.0)
    assert "two_shot" in slowlink.format_table([s])


def test_stage_table_shows_how_much_of_the_smaller_stage_was_hidden():
    # 1 Gbit/s: 12.5 MB on the link = 100 ms; codec 40 ms; wall 110 ms -> 30 of 40 ms hidden
    row = {**_row("two_shot", 110, 1000), "segments": 8, "qdisc_bytes_per_iter": 12_500_000,
           "stages_s": {"encode_s": 0.025, "decode_s": 0.015, "wait_s": 0.07, "seconds": 0.11}}
    serial = {**row, "algorithm": "two_shot:unpipelined", "segments": 1, "median_s": 0.15}
    table = slowlink.format_stage_table([row, serial, {**_row("none", 300, 1000), "stages_s": None}]).splitlines()
    assert len(table) == 4  # the uncompressed row has no stages to show
    assert table[2].endswith("| 8 | 110.0 | 25.0 | 15.0 | 70.0 | 100.0 | 75% |")
    assert table[3].endswith("| 1 | 150.0 | 25.0 | 15.0 | 70.0 | 100.0 | 0% |")
