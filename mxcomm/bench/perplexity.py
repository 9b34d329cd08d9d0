"""Perplexity of the sharded model per communication setting, and the paired statistics of the Δ.

One spawned gloo group of ``world_size`` ranks loads the model, shards it once
(:func:`mxcomm.bench.rank_setup.shard_model`) and evaluates every setting in
turn by switching the format in place. Rank 0 also evaluates the unsharded
model first. Per setting: perplexity over fixed windows of the text and the
accounting of :func:`mxcomm.collectives.track_comm`
(:mod:`mxcomm.bench.wire_accounting`). Settings with outlier channels use a
calibration that is given, or measured by rank 0 on text windows after the
evaluation windows and saved.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from mxcomm.bench.rank_setup import apply_setting, job_calibration, log_stderr, shard_model
from mxcomm.bench.settings import CommSetting, is_bf16_none
from mxcomm.bench.smollm2 import Assets, EvalSetupError, load_model, load_tokens, windows
from mxcomm.bench.wire_accounting import comm_accounting


def token_nll(model: torch.nn.Module, data: torch.Tensor, with_logits: bool = True) -> torch.Tensor:
    """Next-token NLL of every predicted token of the windows, float64 (empty unless ``with_logits``).

    Ranks other than 0 run the body only (``with_logits=False``): the LM head is replicated
    and its output is not needed there.
    """
    out = []
    with torch.no_grad():
        for window in data:
            hidden = model.model(input_ids=window[None]).last_hidden_state
            if with_logits:
                logits = model.lm_head(hidden)[0, :-1].float()
                out.append(torch.nn.functional.cross_entropy(logits, window[1:], reduction="none").double())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def perplexity(token_nlls: torch.Tensor) -> float:
    return math.exp(float(token_nlls.sum()) / token_nlls.numel())


def paired_delta(token_nll: Sequence[float], base_nll: Sequence[float]) -> dict[str, float]:
    """Δ perplexity vs the baseline with a 95% interval from the paired per-token NLL differences.

    ``exp(mean(d)) - 1`` is exactly ``ppl / ppl_base - 1``; the interval treats the per-token
    differences as independent (they are not quite: tokens of a window share context), so it is
    a guide to the noise of a 2k-token evaluation, not a rigorous bound.
    """
    d = torch.as_tensor(token_nll, dtype=torch.float64) - torch.as_tensor(base_nll, dtype=torch.float64)
    if d.numel() < 2:
        raise EvalSetupError("paired_delta needs at least 2 tokens")
    mean, se = float(d.mean()), float(d.std() / math.sqrt(d.numel()))
    return {"delta_pct": 100 * math.expm1(mean), "ci95_low_pct": 100 * math.expm1(mean - 1.96 * se),
            "ci95_high_pct": 100 * math.expm1(mean + 1.96 * se), "tokens": d.numel()}


def baseline_row(rows: Sequence[dict]) -> dict | None:
    """The row every Δ is against: uncompressed with a bf16 wire (None if absent)."""
    return next((r for r in rows if is_bf16_none(r.get("setting"))), None)


def ppl_rank(rank: int, world: int, job: dict) -> None:
    """Rank body of the perplexity phase (called through :func:`mxcomm.bench.launch.run_ranks`)."""
    from mxcomm.collectives import track_comm

    assets = Assets.from_dict(job["assets"])
    model = load_model(assets)
    data = windows(load_tokens(assets), job["windows"], job["window_tokens"], job.get("start", 0))
    settings = [CommSetting(**s) for s in job["settings"]]
    lead = rank == 0
    rows: list[dict] = []
    if lead and job["unsharded"]:
        t0 = time.perf_counter()
        nll = token_nll(model, data)
        rows.append({"label": "unsharded (1 process)", "setting": None, "nll": float(nll.sum()),
                     "tokens": nll.numel(), "ppl": perplexity(nll), "seconds": time.perf_counter() - t0})
        log_stderr(f"[ppl] unsharded: ppl {rows[-1]['ppl']:.4f} ({rows[-1]['seconds']:.1f} s)")
    calibration = job_calibration(model, assets, job, lead)
    if lead and calibration is not None and job.get("calibration_out"):
        calibration.save(job["calibration_out"])
    torch.distributed.barrier()
    shard_model(model, world)
    started = time.perf_counter()
    for i, setting in enumerate(settings):
        apply_setting(model, setting, calibration)
        t0 = time.perf_counter()
        with track_comm() as stats:
            nll = token_nll(model, data, lead)
        seconds = time.perf_counter() - t0
        if not lead:
            continue
        fmt = setting.block_format()
        row = {
            "label": setting.label,
            "setting": asdict(setting),
            "variant": setting.variant,
            "bits_per_element": fmt.bits_per_element if fmt else 8.0 * setting.wire_dtype.itemsize,
            "nll": float(nll.sum()),
            "tokens": nll.numel(),
            "ppl": perplexity(nll),
            "seconds": seconds,
            **comm_accounting(stats, data.shape[0]),
        }
        if job.get("token_nll"):
            row["token_nll"] = nll.tolist()
        rows.append(row)
        elapsed = time.perf_counter() - started
        eta = elapsed / (i + 1) * (len(settings) - i - 1)
        log_stderr(
            f"[ppl {i + 1}/{len(settings)}] {setting.label:<32} ppl {row['ppl']:8.4f}  ratio {row['ratio']:5.2f}  "
            f"{row['compressed_calls_per_forward']:.0f} compressed all-reduces/forward  {seconds:5.1f} s  "
            f"(eta {eta / 60:.1f} min)"
        )
    if lead:
        Path(job["out"]).write_text(json.dumps(rows, indent=1))


def run_perplexity(
    assets: Assets,
    settings: Sequence[CommSetting],
    *,
    world_size: int = 3,
    num_windows: int = 4,
    window_tokens: int = 512,
    unsharded: bool = True,
    threads: int = 1,
    calibration: dict | None = None,
    calibrate: dict | None = None,
    calibration_out: Path | None = None,
    start: int = 0,
    paired: bool = False,
) -> list[dict]:
    """Perplexity rows of ``settings`` (see :func:`ppl_rank`).

    Settings with outlier channels need ``calibration`` (an
    :meth:`OutlierCalibration.to_dict`) or ``calibrate`` (``windows``,
    ``window_tokens``, ``start``, ``max_channels``: measure it on the
    unsharded model); a measured one is written to ``calibration_out``.
    The windows start at token ``start``. ``paired``: every row gets
    :func:`paired_delta` against the bf16 ``none`` row (which must be among
    the settings) under ``"paired"``.
    """
    from mxcomm.bench.launch import run_ranks

    windows(torch.zeros(assets.num_tokens, dtype=torch.long), num_windows, window_tokens, start)  # validate early
    if calibrate:
        windows(torch.zeros(assets.num_tokens, dtype=torch.long), calibrate["windows"], calibrate["window_tokens"],
                calibrate["start"])
    if any(s.outliers for s in settings) and not (calibration or calibrate):
        raise EvalSetupError("settings with outlier channels need a calibration (or calibrate=...)")
    with tempfile.TemporaryDirectory(prefix="mxcomm-eval-") as tmp:
        out = Path(tmp) / "ppl.json"
        job = {"assets": assets.to_dict(), "windows": num_windows, "window_tokens": window_tokens,
               "settings": [asdict(s) for s in settings], "unsharded": unsharded, "out": str(out),
               "calibration": calibration, "calibrate": calibrate, "start": start, "token_nll": paired,
               "calibration_out": str(calibration_out) if calibration_out else None}
        run_ranks(ppl_rank, world_size, (job,), threads=threads, timeout_s=900)
        rows = json.loads(out.read_text())
    if paired:
        base = baseline_row(rows)
        if base is None:
            raise EvalSetupError("paired deltas need the bf16 'none' setting")
        for r in rows:
            if "token_nll" in r:
                r["paired"] = paired_delta(r["token_nll"], base["token_nll"])
        for r in rows:
            r.pop("token_nll", None)
    return rows
