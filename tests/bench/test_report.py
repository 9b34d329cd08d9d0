"""mxcomm.bench.report and the sweep CLI, on JSON produced by really running the sweep at a tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mxcomm
from mxcomm.bench.metrics import sqnr_db
from mxcomm.bench.report import (
    ReportError,
    SweepRecord,
    load_benchmarks,
    pareto_front,
    parse_benchmarks,
    render_markdown,
    write_report,
)
from mxcomm.bench.sweep import make_input, sweep_formats
from mxcomm.cli.main import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
QUICK_FORMATS = "mx*,nvfp4,int4,int4_b128,fp5_e2m2_b16"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory) -> Path:
    """pytest-benchmark JSON of the real sweep benchmark, run in a subprocess at a tiny size."""
    out = tmp_path_factory.mktemp("sweep") / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MXCOMM_SWEEP_")}
    env.update(MXCOMM_SWEEP_QUICK="1", MXCOMM_SWEEP_FORMATS=QUICK_FORMATS)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(ROOT / "benchmarks" / "test_sweep.py"),
            "-q",
            "-p",
            "no:cacheprovider",
            f"--benchmark-json={out}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _expected_formats() -> list[str]:
    return [f.name for f in sweep_formats(patterns=QUICK_FORMATS.split(","))]


def test_benchmark_json_round_trips_into_records(bench_json):
    results = load_benchmarks(bench_json)
    formats = _expected_formats()
    shapes = {(1, 256), (32, 256)}
    assert {r.key for r in results.records} == {("synthetic", "bf16", s, f) for s in shapes for f in formats}
    assert results.ignored == []
    by_name = {f.name: f.fmt for f in sweep_formats(patterns=QUICK_FORMATS.split(","))}
    for r in results.records:
        assert set(r.stats) == {"encode", "decode"}
        assert r.seconds("encode") > 0 and r.seconds("decode") > 0
        fmt = by_name[r.format]
        assert r.info["block_size"] == fmt.block_size
        # bits/element comes from the real packed size, recomputed here from the format
        assert r.bits == pytest.approx(8 * fmt.packed_nbytes(r.shape) / r.numel)
    # the recorded SQNR is the codec's: recompute one point from scratch
    r = next(r for r in results.records if r.format == "mxfp4_e2m1" and r.shape == (32, 256))
    x = make_input("synthetic", 32, 256, "bf16")
    assert r.sqnr == pytest.approx(sqnr_db(x, mxcomm.quantize(x, "mxfp4_e2m1")), rel=1e-12)


def test_report_files_hold_the_table_and_the_plots(bench_json, tmp_path):
    paths = write_report(bench_json, tmp_path / "rep")
    names = {p.name for p in paths}
    assert names == {"report.md", "quality.png", "throughput.png", "points.csv"}
    for png in ("quality.png", "throughput.png"):
        data = (tmp_path / "rep" / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    md = (tmp_path / "rep" / "report.md").read_text()
    results = load_benchmarks(bench_json)
    headline = [r for r in results.records if r.shape == (32, 256)]
    assert "## synthetic input, bf16, 32x256" in md
    for r in headline:
        row = next(line for line in md.splitlines() if line.startswith(f"| {r.format} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[4]) == pytest.approx(r.bits, abs=5e-4)
        assert float(cells[6]) == pytest.approx(r.sqnr, abs=5e-3)
        assert (cells[-1] == "**yes**") == _non_dominated(r, headline)
    assert "![quality](quality.png)" in md
    csv_lines = (tmp_path / "rep" / "points.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(results.records)


def _non_dominated(r: SweepRecord, records: list[SweepRecord]) -> bool:
    return not any(q.bits <= r.bits and q.sqnr >= r.sqnr and (q.bits < r.bits or q.sqnr > r.sqnr) for q in records)


def _record(name: str, bits: float, sqnr: float) -> SweepRecord:
    return SweepRecord({"source": "s", "dtype": "bf16", "shape": [1, 32], "format": name,
                        "bits_per_element": bits, "sqnr_db": sqnr})  # fmt: skip


def test_pareto_front_known_answer():
    recs = [
        _record("a", 4.25, 18.0),
        _record("b", 4.25, 17.0),  # same bits, worse: dominated by a
        _record("c", 4.5, 25.0),
        _record("d", 5.0, 24.0),  # more bits, worse: dominated by c
        _record("e", 3.25, 12.0),
        _record("f", 3.25, 12.0),  # identical to e: neither dominates
        _record("g", 8.25, 38.0),
    ]
    assert [r.format for r in pareto_front(recs)] == ["e", "f", "a", "c", "g"]
    assert {r.format for r in pareto_front(recs)} == {r.format for r in recs if _non_dominated(r, recs)}


def test_cli_report_writes_the_files(bench_json, tmp_path, capsys):
    assert cli_main(["report", str(bench_json), "--out", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out.split()
    assert str(tmp_path / "cli" / "report.md") in printed
    assert (tmp_path / "cli" / "quality.png").stat().st_size > 0


def test_cli_sweep_prints_the_table_and_its_json_feeds_the_report(tmp_path, capsys):
    out = tmp_path / "cli.json"
    rc = cli_main(["sweep", "--quick", "--sizes", "4", "--formats", "mxfp4_e2m1,int8_fp16", "--json", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    assert "synthetic input, bf16, 4x256" in captured.out
    lines = [line.split() for line in captured.out.splitlines() if line.startswith(("mxfp4_e2m1 ", "int8_fp16 "))]
    assert [line[0] for line in lines] == ["mxfp4_e2m1", "int8_fp16"]
    assert float(lines[0][2]) == pytest.approx(4.25)  # bits/element: 4 + 8/32
    x = make_input("synthetic", 4, 256, "bf16")
    assert float(lines[0][4]) == pytest.approx(sqnr_db(x, mxcomm.quantize(x, "mxfp4_e2m1")), abs=0.006)
    results = load_benchmarks(out)
    assert {r.format for r in results.records} == {"mxfp4_e2m1", "int8_fp16"}
    assert all(set(r.stats) == {"encode", "decode"} for r in results.records)
    write_report(out, tmp_path / "rep")
    assert "mxfp4_e2m1" in (tmp_path / "rep" / "report.md").read_text()


def test_cli_sweep_rejects_bad_options(capsys):
    assert cli_main(["sweep", "--quick", "--formats", "nosuchformat"]) == 2
    assert "match no sweep format" in capsys.readouterr().err
    assert cli_main(["sweep", "--quick", "--sizes", "a,b"]) == 2


def test_missing_matplotlib_is_a_clear_error(bench_json, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ReportError, match=r"mxcomm\[report\]"):
        write_report(bench_json, tmp_path / "nompl")
    assert not (tmp_path / "nompl").exists()


def test_bad_inputs_raise_report_error(tmp_path):
    with pytest.raises(ReportError, match="cannot read"):
        load_benchmarks(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ReportError, match="not valid JSON"):
        load_benchmarks(bad)
    with pytest.raises(ReportError, match="benchmarks"):
        parse_benchmarks({"foo": 1})
    other = {"benchmarks": [{"name": "test_other", "extra_info": {}, "stats": {"median": 1.0}}]}
    with pytest.raises(ReportError, match="no compression-sweep results"):
        parse_benchmarks(other)
    partial = {"benchmarks": [{"name": "t", "extra_info": {"mxcomm_sweep": 1, "op": "encode"}, "stats": {}}]}
    with pytest.raises(ReportError, match="lacks extra_info"):
        parse_benchmarks(partial)


def test_foreign_benchmarks_are_counted_not_used(bench_json):
    data = json.loads(bench_json.read_text())
    data["benchmarks"].append({"name": "test_something_else", "extra_info": {}, "stats": {"median": 1.0}})
    results = parse_benchmarks(data)
    assert results.ignored == ["test_something_else"]
    assert len(results.records) == len(load_benchmarks(bench_json).records)
    assert "ignored: 1 benchmark(s) (test_something_else)" in render_markdown(results)
