"""Every ``mxcomm`` subcommand on tiny inputs: it produces what it says, and writes only where it is told.

Each test runs with a fresh temporary folder as the current directory and checks that the
project's ``git status --porcelain`` is the same afterwards (skipped outside a git checkout).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mxcomm
from mxcomm.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?(%|x| MiB| KiB)?$")


def _git_status() -> str | None:
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


@pytest.fixture(autouse=True)
def writes_only_where_told(tmp_path, monkeypatch):
    """Run in an empty current directory; the project's working tree must not change."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = _git_status()
    yield
    assert sorted(p.name for p in cwd.iterdir()) == [], "the command wrote into the current directory"
    if before is not None:
        assert _git_status() == before, "the command changed the project's working tree"


def markdown_tables(text: str) -> list[list[list[str]]]:
    """The markdown tables of ``text``: lists of rows of cells (header first, separator dropped).

    Checks that each is well formed: a separator row after the header, the same number of cells in
    every row, and every numeric-looking cell finite.
    """
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if block:
            assert len(block) >= 2 and all(re.fullmatch(r":?-+:?", c) for c in block[1]), block[:2]
            assert {len(r) for r in block} == {len(block[0])}, f"ragged table: {block[0]}"
            tables.append([block[0], *block[2:]])
            block = []
    for table in tables:
        for row in table[1:]:
            for cell in row:
                assert cell.lower() not in ("nan", "inf", "-inf", "nan%"), row
                if _NUMBER.match(cell):
                    assert math.isfinite(float(re.sub(r"(%|x| MiB| KiB)$", "", cell))), row
    return tables


def test_formats_lists_every_registered_format(capsys):
    assert main(["formats"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["name", "element"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(mxcomm.list_formats())
    for name, line in rows.items():
        bits = mxcomm.get_format(name).bits_per_element
        assert f"{bits:9.3f}" in line and f"{16 / bits:6.2f}x" in line, line


def test_roundtrip_reports_size_and_error_per_format(capsys):
    assert main(["roundtrip", "--tokens", "4", "--hidden", "256", "--formats", "mxfp8_e4m3", "mxfp4_e2m1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("input: synthetic LLM activation (4, 256) bf16")
    rows = {line.split()[0]: [float(v.rstrip("x")) for v in line.split()[1:]] for line in lines[2:]}
    assert set(rows) == {"mxfp8_e4m3", "mxfp4_e2m1"}
    for name, (bits, ratio, sqnr, max_err, enc_ms, dec_ms) in rows.items():
        assert bits == pytest.approx(mxcomm.get_format(name).bits_per_element, abs=1e-3)
        assert ratio == pytest.approx(16 / bits, abs=0.01)
        assert all(math.isfinite(v) for v in (sqnr, max_err, enc_ms, dec_ms)) and max_err > 0
    assert rows["mxfp8_e4m3"][2] > rows["mxfp4_e2m1"][2] + 6  # 4 more element bits: clearly better SQNR


def test_sweep_json_and_report(tmp_path, capsys):
    sweep_json = tmp_path / "sweep.json"
    assert main(["sweep", "--quick", "--formats", "mxfp8_e4m3,mxfp4_e2m1", "--max-rounds", "1", "--target-s", "0.001",
                 "--json", str(sweep_json), "--no-progress"]) == 0
    doc = json.loads(sweep_json.read_text())
    entries = doc["benchmarks"]
    points = {(e["extra_info"]["format"], tuple(e["extra_info"]["shape"])) for e in entries}
    assert {fmt for fmt, _ in points} == {"mxfp8_e4m3", "mxfp4_e2m1"} and len(points) == 4  # 2 formats x 2 sizes
    assert {e["extra_info"]["op"] for e in entries} == {"encode", "decode"}
    for e in entries:
        info = e["extra_info"]
        assert math.isfinite(info["sqnr_db"]) and info["sqnr_db"] > 0 and e["stats"]["median"] > 0
    assert "mxfp8_e4m3" in capsys.readouterr().out

    report = tmp_path / "report"
    assert main(["report", str(sweep_json), "--out", str(report)]) == 0
    assert sorted(p.name for p in report.iterdir()) == ["points.csv", "quality.png", "report.md", "throughput.png"]
    for png in ("quality.png", "throughput.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tables = markdown_tables((report / "report.md").read_text())
    assert tables and any(t[0][0] == "format" and {r[0] for r in t[1:]} == {"mxfp8_e4m3", "mxfp4_e2m1"}
                          for t in tables)
    with (report / "points.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and all(math.isfinite(float(r["sqnr_db"])) for r in rows)


def _namespaces_unavailable() -> str | None:
    from mxcomm.bench.slowlink import ShapedNamespace, SlowLinkUnavailable

    try:
        with ShapedNamespace("1gbit"):
            pass
    except SlowLinkUnavailable as exc:
        return str(exc)
    return None


@pytest.mark.multiprocess
def test_bench_collective_tiny(tmp_path, capsys):
    reason = _namespaces_unavailable()
    if reason:
        pytest.skip(f"no shaped link here: {reason}")
    out = tmp_path / "collective.json"
    assert main(["bench-collective", "--rates", "1gbit", "--world-sizes", "2", "--sizes-mib", "0.25", "--formats",
                 "mxfp4_e2m1", "--reps", "2", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    rows = {r["algorithm"]: r for r in doc["rows"]}
    assert set(rows) == {"dist", "none", "allgather", "two_shot", "auto"}
    for r in rows.values():
        assert r["rate"] == "1gbit" and r["world_size"] == 2 and r["nbytes"] == 2**18
        assert len(r["times_s"]) == 2 and all(math.isfinite(t) and t > 0 for t in r["times_s"])
        assert r["identical_on_ranks"]
    # mxfp4 on the wire: ~16/4.25 fewer bytes than mxcomm's uncompressed path (descriptors included)
    assert 3.5 < rows["none"]["bytes_sent"] / rows["allgather"]["bytes_sent"] < 3.8
    assert rows["auto"]["ran"] in ("none", "allgather", "two_shot")
    (line,) = doc["summary"]
    assert line["format"] == "mxfp4_e2m1" and math.isfinite(line["speedup"]["allgather"])
    table = markdown_tables(capsys.readouterr().out)
    assert len(table) == 1 and table[0][1][:4] == ["1gbit", "2", "0.25 MiB", "mxfp4_e2m1"]


def test_eval_run_folders_are_new(tmp_path):
    from mxcomm.bench.eval_run import new_run_dir

    first, second = new_run_dir(tmp_path / "runs"), new_run_dir(tmp_path / "runs")
    assert first != second and first.is_dir() and second.is_dir() and first.parent == tmp_path / "runs"


@pytest.mark.slow
@pytest.mark.multiprocess
def test_eval_quick_writes_only_into_out(tmp_path):
    """``python -m mxcomm.cli.main eval --quick --skip-ttft --out DIR``: all results in DIR, nothing in the project."""
    from mxcomm.bench.sweep import source_unavailable

    reason = source_unavailable("smollm2")
    if reason:
        pytest.skip(reason)
    out = tmp_path / "eval"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    before = _git_status()
    proc = subprocess.run([sys.executable, "-m", "mxcomm.cli.main", "eval", "--quick", "--skip-ttft", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if before is not None:
        assert _git_status() == before  # run from the project root, yet nothing written into it
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["img/pareto.png", "results.json", "results.md", "smollm2-outliers.json"]
    assert (out / "img/pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    doc = json.loads((out / "results.json").read_text())
    assert set(doc) == {"perplexity", "pareto"}
    ppl = {r["label"]: r for r in doc["perplexity"]["rows"]}
    assert list(ppl) == ["unsharded (1 process)", "none (bfloat16 wire)", "none (float32 wire)",
                         "mxint8 rne allgather", "mxfp8_e4m3 rne allgather", "mxfp4_e2m1 rne allgather"]
    assert all(math.isfinite(r["ppl"]) and r["ppl"] > 1 and r["tokens"] == 127 for r in ppl.values())
    # TP=3 with an fp32 wire is the unsharded model up to the ring's summation order
    assert ppl["none (float32 wire)"]["ppl"] == pytest.approx(ppl["unsharded (1 process)"]["ppl"], rel=1e-4)
    fp8 = ppl["mxfp8_e4m3 rne allgather"]
    # 30 layers x (o_proj + down_proj) per forward, each a 128 x 576 bf16 partial sum
    assert fp8["compressed_calls_per_forward"] == 60 and fp8["algorithms"] == {"allgather": 60}
    assert fp8["message"] == {"numel": 128 * 576, "dtype": "bfloat16"}
    assert ppl["none (bfloat16 wire)"]["compressed_calls_per_forward"] == 0
    pareto = doc["pareto"]["rows"]
    assert [r["variant"] for r in pareto[1:]] == ["plain", "rotation", "outliers", "rotation+outliers"]
    assert all(math.isfinite(r["paired"]["delta_pct"]) for r in pareto)
    assert doc["pareto"]["plot"] == "img/pareto.png"

    from mxcomm.tp import OutlierCalibration

    calibration = OutlierCalibration.load(out / "smollm2-outliers.json")
    assert len(calibration.channels) == 60 and calibration.tokens == 128

    md = (out / "results.md").read_text()
    tables = markdown_tables(md)
    assert [len(t) - 1 for t in tables] == [len(ppl), len(pareto)]
    assert "![Pareto front](img/pareto.png)" in md


@pytest.mark.slow
@pytest.mark.multiprocess
def test_bench_generate_loopback_writes_only_into_out(tmp_path):
    """``bench-generate`` on the unshaped loopback: TTFT/TPOT rows and the algorithm of each phase, into --out."""
    from mxcomm.bench.sweep import source_unavailable

    reason = source_unavailable("smollm2")
    if reason:
        pytest.skip(reason)
    out = tmp_path / "generate"
    assert main(["bench-generate", "--rates", "loopback", "--settings", "none,mxfp8_e4m3:allgather",
                 "--prompt-tokens", "24", "--new-tokens", "3", "--reps", "1", "--warmup", "0", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["generate.json", "generate.md"]
    doc = json.loads((out / "generate.json").read_text())
    (res,) = doc["results"]
    rows = {r["label"]: r for r in res["rows"]}
    none, fp8 = rows["none (bfloat16 wire)"], rows["mxfp8_e4m3 rne allgather"]
    for row, algorithm in ((none, "none"), (fp8, "allgather")):
        assert row["ranks_agree"] and len(row["tokens"]) == 3
        assert row["ttft_s"] > 0 and row["tpot_s"] > 0
        # SmolLM2 through its transformers plan: the embedding and 30 x (o_proj, down_proj)
        assert row["prefill"]["algorithms"] == {algorithm: 61} and row["prefill"]["message_numel"] == [24 * 576]
        assert row["decode"]["algorithms"] == {algorithm: 2 * 61} and row["decode"]["message_numel"] == [576]
    assert fp8["decode"]["bytes_sent_per_forward"] < none["decode"]["bytes_sent_per_forward"]
    (table,) = markdown_tables((out / "generate.md").read_text())
    assert [row[1] for row in table[1:]] == ["none (bfloat16 wire)", "mxfp8_e4m3 rne allgather"]


def _tiny_model_folder(folder: Path) -> Path:
    """A tiny random Llama and a word-level tokenizer saved as a local transformers folder (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tests.bench.test_tuning import tiny_llama

    words = [f"w{i}" for i in range(90)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *words])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(folder)
    tiny_llama().save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.multiprocess
def test_tune_writes_plans_and_report_and_verifies_on_ranks(tmp_path, capsys):
    """``mxcomm tune`` on a tiny local model: plans within budget, report, held-out front; then --verify-plan."""
    import random

    model_dir = _tiny_model_folder(tmp_path / "model")
    text = tmp_path / "text.txt"
    rng = random.Random(0)
    text.write_text(" ".join(f"w{rng.randrange(90)}" for _ in range(400)))
    out = tmp_path / "tune"
    common = ["--model", str(model_dir), "--text", str(text), "--world-size", "2", "--window-tokens", "32"]
    assert main(["tune", *common, "--out", str(out), "--calibration-windows", "2", "--sensitivity-windows", "1",
                 "--formats", "int3,mxfp4_e2m1,fp5_e2m2,mxfp6_e2m3", "--outlier-ks", "0,4",
                 "--two-shot", "mxfp4_e2m1>mxfp6_e2m3", "--two-shot-ks", "0", "--max-measured", "4",
                 "--budget", "bits=4.6,ppl=5", "--rounds", "2", "--heldout-start", "256", "--heldout-windows", "2",
                 "--uniform", "mxfp4_e2m1:rot,mxfp4_e2m1>mxfp6_e2m3:rot"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "outliers.json", "plan.json", "plans/bits4.6.json", "plans/ppl5.json", "report.json", "report.md",
        "sensitivity.json"]
    doc = json.loads((out / "report.json").read_text())
    assert doc["plans"][0]["bits"] <= 4.6 and doc["plans"][0]["file"] == "plans/bits4.6.json"
    assert [r["label"] for r in doc["heldout"]["rows"]] == [
        "none (bf16 wire)", "tuned bits4.6", "tuned ppl5", "uniform mxfp4_e2m1:rot", "uniform mxfp4_e2m1>mxfp6_e2m3:rot"]
    tables = markdown_tables((out / "report.md").read_text())
    assert len(tables) == 2 + len(doc["plans"]) and len(tables[0]) == 1 + len(doc["plans"])
    plan = mxcomm.tp.load_plan(out / "plan.json")
    # the 4 row-parallel modules, plus the vocabulary-parallel embedding, explicitly uncompressed
    assert [e.module for e in plan.entries if e.fmt == "none"][:1] == ["model.embed_tokens"]
    assert len(plan.entries) == 5 and "budget bits4.6" in plan.description

    # the held-out range must not touch the calibration tokens
    assert main(["tune", *common, "--out", str(tmp_path / "bad"), "--heldout-start", "32",
                 "--heldout-windows", "1"]) == 2
    assert "overlap the calibration tokens" in capsys.readouterr().err

    verify = tmp_path / "verify"
    assert main(["tune", *common, "--out", str(verify), "--heldout-start", "256", "--heldout-windows", "2",
                 "--calibration-windows", "2", "--outliers", str(out / "outliers.json"),
                 "--verify-plan", str(out / "plan.json")]) == 0
    result = json.loads((verify / "verify.json").read_text())
    assert result["plan_token_nll_bitwise_equal"]
    rowwise = result["distributed"]["plan"]["rowwise"]
    assert rowwise["wire_bits_per_element"] == pytest.approx(result["emulated"]["plan_bits"], rel=1e-12)
    assert result["distributed"]["plan"]["rowwise_reductions_per_forward"] == 4
