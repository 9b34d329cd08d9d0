"""One ``mxcomm eval`` run: its options, its phases, and the folder it writes into.

Phases, each optional: the perplexity table (:mod:`mxcomm.bench.perplexity`,
plus the one-process emulation column of :mod:`mxcomm.bench.emulation`), the
outlier-robust Pareto table (perplexity of plain / rotated / outlier-channel
variants; calibrates the outlier channels first unless given a calibration),
and TTFT over shaped links (:mod:`mxcomm.bench.ttft`). After every phase the
results document and the tables are written to the output folder
(:mod:`mxcomm.bench.eval_report`); nothing is written anywhere else except the
converted model, cached under ``~/.cache/mxcomm/eval`` (``MXCOMM_CACHE``; see
:mod:`mxcomm.bench.smollm2`), and the jobs handed to the ranks (deleted temporary folders).

The model computes in float32; the row-parallel partial sums travel in
bfloat16, so ``none`` is a bf16 all-reduce and every ratio is against bf16.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mxcomm.bench.eval_report import CALIBRATION_FILE, load_results, pareto_plot, plot_path, write_results
from mxcomm.bench.rank_setup import log_stderr
from mxcomm.bench.settings import (
    DEFAULT_PARETO_FORMATS,
    DEFAULT_PARETO_TWO_SHOT,
    DEFAULT_PPL_FORMATS,
    DEFAULT_ROTATION_SEED,
    DEFAULT_TTFT_SETTINGS,
    DEFAULT_TWO_SHOT_FORMATS,
    CommSetting,
    pareto_settings,
    parse_ttft_setting,
    ppl_settings,
)
from mxcomm.bench.smollm2 import EvalSetupError
from mxcomm.errors import MxcommError
from mxcomm.formats import get_format

Log = Callable[[str], None]
DEFAULT_RUNS_DIR = Path("mxcomm-eval")
DEFAULT_TTFT_RATES: tuple[str, ...] = ("loopback", "25mbit", "100mbit", "1gbit")


@dataclass(frozen=True)
class EvalConfig:
    """What ``mxcomm eval`` measures (the command line's options; see ``mxcomm eval --help``)."""

    world_size: int = 3
    windows: int = 4
    window_tokens: int = 512
    formats: tuple[str, ...] = DEFAULT_PPL_FORMATS
    roundings: tuple[str, ...] = ("rne", "away")
    algorithm: str = "allgather"
    two_shot_formats: tuple[str, ...] = DEFAULT_TWO_SHOT_FORMATS
    emulate_formats: tuple[str, ...] = ()  # one-process emulation column for these formats (rne, one-shot)
    emulate_table: bool = False  # ... or for every one-shot row of the table
    pareto_formats: tuple[str, ...] = DEFAULT_PARETO_FORMATS
    pareto_two_shot: tuple[str, ...] = DEFAULT_PARETO_TWO_SHOT
    outlier_k: tuple[int, ...] = (8,)
    rotation_seed: int = DEFAULT_ROTATION_SEED
    outliers: Path | None = None  # a saved calibration to use instead of calibrating
    calibration_windows: int = 2
    ttft_rates: tuple[str, ...] = DEFAULT_TTFT_RATES
    ttft_settings: tuple[str, ...] = DEFAULT_TTFT_SETTINGS
    prompt_tokens: int = 512
    reps: int = 3
    warmup: int = 1
    threads: int = 1
    skip_ppl: bool = False
    skip_pareto: bool = False
    skip_ttft: bool = False
    pareto_section: str = "pareto"
    pareto_title: str = ""
    pareto_start: int = 0
    ttft_section: str = "ttft"
    ttft_title: str = ""
    cache_dir: Path | None = None

    def quick(self) -> EvalConfig:
        """The smoke run: one 128-token window, three formats (rne), one Pareto format, TTFT one rep."""
        return replace(self, windows=1, window_tokens=128, formats=("mxint8", "mxfp8_e4m3", "mxfp4_e2m1"),
                       roundings=("rne",), two_shot_formats=(), pareto_formats=("mxfp4_e2m1",), pareto_two_shot=(),
                       calibration_windows=1, ttft_settings=("mxfp8_e4m3:two_shot",), prompt_tokens=128, reps=1,
                       warmup=0)

    def check(self) -> None:
        for section, prefix in ((self.pareto_section, "pareto"), (self.ttft_section, "ttft")):
            if section != prefix and not (section.startswith(prefix + "_") and section[len(prefix) + 1:].isidentifier()
                                          and section != "ttft_skipped"):
                raise EvalSetupError(f"a section must be '{prefix}' or '{prefix}_NAME', got {section!r}")


def new_run_dir(parent: Path = DEFAULT_RUNS_DIR) -> Path:
    """A new, empty folder ``parent/<UTC timestamp>`` (``-2``, ``-3``... if that exists)."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    for i in range(1, 1000):
        path = parent / (stamp if i == 1 else f"{stamp}-{i}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise EvalSetupError(f"cannot create a new run folder under {parent}")


def run_environment() -> dict[str, Any]:
    """Where and with what a phase ran (recorded with its results)."""
    import torch

    from mxcomm.kernels import resolve_backend

    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:  # pragma: no cover
        tf_version = None
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": tf_version,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "codec_backend": resolve_backend("auto").name,
    }


def run_eval(config: EvalConfig, out_dir: Path, *, command: str, log: Log = log_stderr) -> dict[str, Any]:
    """Run the phases ``config`` selects; write every result into ``out_dir``; return the results document.

    Sections already in ``out_dir``/results.json that this run does not redo are kept.
    ``command`` is recorded with each section (how to reproduce it).
    """
    from mxcomm.bench.emulation import emulate_perplexity
    from mxcomm.bench.perplexity import run_perplexity
    from mxcomm.bench.slowlink import SlowLinkUnavailable, check_environment
    from mxcomm.bench.smollm2 import prepare_assets
    from mxcomm.bench.ttft import run_ttft
    from mxcomm.tp.outliers import OutlierCalibration

    config.check()
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = load_results(out_dir)
    calibration_out = out_dir / CALIBRATION_FILE
    calibration: dict | None = None
    if config.outliers is not None:
        calibration = OutlierCalibration.load(config.outliers).to_dict()
    assets = prepare_assets(config.cache_dir, log=log)
    log(f"model {assets.gguf.name}; text {assets.text} ({assets.num_tokens} tokens); cache {assets.directory}; "
        f"results into {out_dir}")
    if not config.skip_ppl:
        settings = ppl_settings(config.formats, config.roundings, config.algorithm, config.two_shot_formats)
        log(f"perplexity: {len(settings)} settings + unsharded, {config.windows} x {config.window_tokens} tokens, "
            f"TP={config.world_size}")
        t0 = time.perf_counter()
        rows = run_perplexity(assets, settings, world_size=config.world_size, num_windows=config.windows,
                              window_tokens=config.window_tokens, threads=config.threads)
        if config.emulate_table or config.emulate_formats:
            wanted = None if config.emulate_table else {get_format(f).name for f in config.emulate_formats}
            emu_settings = [s for s in settings if s.fmt is None and s.comm_dtype == "bfloat16"
                            or (s.algorithm == "allgather" and (wanted is None or (s.fmt in wanted
                                                                                    and s.rounding == "rne")))]
            log(f"emulation (one process): {len(emu_settings)} settings")
            emulated = emulate_perplexity(assets, emu_settings, world_size=config.world_size,
                                          num_windows=config.windows, window_tokens=config.window_tokens, log=log)
            for row in rows:
                if row["label"] in emulated:
                    row["emulated_ppl"] = emulated[row["label"]]
        doc["perplexity"] = {
            "command": command, "environment": run_environment(), "wall_seconds": time.perf_counter() - t0,
            "setup": {"world_size": config.world_size, "windows": config.windows,
                      "window_tokens": config.window_tokens, "text": str(assets.text),
                      "text_tokens": assets.num_tokens, "model": assets.gguf.name, "algorithm": config.algorithm},
            "rows": rows,
        }
        write_results(doc, out_dir)
        log(f"perplexity table written to {out_dir}")
    if not config.skip_pareto:
        ks = list(config.outlier_k)
        settings = pareto_settings(config.pareto_formats, ks, config.rotation_seed, config.pareto_two_shot)
        calibrate = None
        if calibration is None and ks:
            # right after the perplexity table's windows (and before any held-out Pareto windows)
            calibrate = {"windows": config.calibration_windows, "window_tokens": config.window_tokens,
                         "start": config.windows * config.window_tokens, "max_channels": max(32, *ks)}
        log(f"Pareto: {len(settings)} settings (plain / rotation / outliers k={ks} / both), "
            f"{config.windows} x {config.window_tokens} tokens, TP={config.world_size}")
        t0 = time.perf_counter()
        rows = run_perplexity(assets, settings, world_size=config.world_size, num_windows=config.windows,
                              window_tokens=config.window_tokens, unsharded=False, threads=config.threads,
                              calibration=calibration, calibrate=calibrate,
                              calibration_out=calibration_out if calibrate else None,
                              start=config.pareto_start, paired=True)
        if calibrate:
            calibration = OutlierCalibration.load(calibration_out).to_dict()
            log(f"outlier calibration saved to {calibration_out}")
        plot = plot_path(out_dir, config.pareto_section)
        try:
            pareto_plot(rows, plot)
            plot_ref: str | None = os.path.relpath(plot, out_dir)
        except MxcommError as exc:  # matplotlib missing: the table still gets written
            log(f"Pareto plot skipped: {exc}")
            plot_ref = None
        doc[config.pareto_section] = {
            "title": config.pareto_title,
            "command": command, "environment": run_environment(), "wall_seconds": time.perf_counter() - t0,
            "setup": {"world_size": config.world_size, "windows": config.windows,
                      "window_tokens": config.window_tokens, "start": config.pareto_start, "outlier_k": ks,
                      "rotation_seed": config.rotation_seed,
                      # relative to the folder above the output folder (the repository root for --out docs)
                      "calibration_file": os.path.relpath(config.outliers or calibration_out,
                                                          out_dir.resolve().parent),
                      "calibration": {k: v for k, v in (calibration or {}).items() if k != "modules"}},
            "rows": rows, "plot": plot_ref,
        }
        write_results(doc, out_dir)
        log(f"Pareto table written to {out_dir}")
    if not config.skip_ttft:
        rates = list(config.ttft_rates)
        reason = None
        if any(r != "loopback" for r in rates):
            try:
                check_environment()
            except SlowLinkUnavailable as exc:
                reason = str(exc)
        if reason:
            log(f"TTFT skipped: cannot shape the link ({reason})")
            doc.pop("ttft", None)
            doc["ttft_skipped"] = reason
        else:
            settings = [CommSetting(None, algorithm="none")]
            settings += [parse_ttft_setting(t, config.rotation_seed) for t in config.ttft_settings]
            if any(st.outliers for st in settings) and calibration is None:
                if not calibration_out.exists():
                    raise EvalSetupError(f"TTFT settings with outlier channels need a calibration: run the "
                                         f"Pareto phase first or pass --outliers (no {calibration_out})")
                calibration = OutlierCalibration.load(calibration_out).to_dict()
            log(f"TTFT: {len(settings)} settings x {len(rates)} links, {config.warmup}+{config.reps} runs each")
            t0 = time.perf_counter()
            results = run_ttft(assets, settings, rates, world_size=config.world_size,
                               prompt_tokens=config.prompt_tokens, reps=config.reps, warmup=config.warmup,
                               threads=config.threads, log=log, calibration=calibration)
            doc.pop("ttft_skipped", None)
            doc[config.ttft_section] = {
                "title": config.ttft_title,
                "command": command, "environment": run_environment(), "wall_seconds": time.perf_counter() - t0,
                "setup": {"world_size": config.world_size, "prompt_tokens": config.prompt_tokens,
                          "reps": config.reps, "warmup": config.warmup, "threads": config.threads, "rates": rates},
                "results": results,
            }
        write_results(doc, out_dir)
        log(f"TTFT table written to {out_dir}")
    return doc
