"""``mxcomm bench-collective``: compressed all-reduce between real processes over a shaped link."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

from mxcomm.bench.slowlink import (
    OCP_FORMATS,
    RATES,
    SIZES_MIB,
    UNPIPELINED,
    VARIANTS,
    SlowLinkUnavailable,
    SweepConfig,
    format_stage_table,
    format_table,
    run_sweep,
    summarize,
)

QUICK = SweepConfig(rates=["1gbit"], world_sizes=[2, 4], sizes_mib=[16], formats=["mxfp4_e2m1"], reps=5)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-collective",
        help="time none / allgather / two_shot / auto all-reduce between ranks on a tc-shaped loopback (root)",
        description=(
            "Creates a network namespace per rate, shapes its loopback with tc tbf, runs the ranks inside it "
            "and deletes it afterwards. Needs root and iproute2 (ip, tc)."
        ),
    )
    p.add_argument("--quick", action="store_true",
                   help="1gbit, 2 and 4 ranks, 16 MiB, mxfp4 only (overrides the selection options)")
    p.add_argument("--rates", nargs="+", default=list(RATES), help="tc rates, e.g. 100mbit 1gbit 10gbit")
    p.add_argument("--world-sizes", nargs="+", type=int, default=[2, 4])
    p.add_argument("--sizes-mib", nargs="+", type=float, default=list(SIZES_MIB), help="bf16 message sizes")
    p.add_argument("--formats", nargs="+", default=list(OCP_FORMATS))
    p.add_argument("--algorithms", nargs="+", default=list(VARIANTS), choices=VARIANTS + UNPIPELINED,
                   help="variants to time; ALG:unpipelined runs ALG as one pipeline segment")
    p.add_argument("--stages", action="store_true",
                   help="also print where each compressed call's time went and how much of it overlapped")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--max-seconds", type=float, default=1.5,
                   help="skip sizes whose uncompressed ring all-reduce would exceed this per iteration")
    p.add_argument("--uncalibrated", action="store_true",
                   help="do not call calibrate(): auto starts from the default model and learns from its own calls")
    p.add_argument("--json", default=None, help="also write every measurement to this file")
    p.set_defaults(func=cmd_bench_collective)


def cmd_bench_collective(args: argparse.Namespace) -> int:
    if args.quick:
        cfg = replace(QUICK, calibrate=not args.uncalibrated)
    else:
        cfg = SweepConfig(rates=args.rates, world_sizes=args.world_sizes, sizes_mib=args.sizes_mib,
                          formats=args.formats, algorithms=args.algorithms, reps=args.reps,
                          max_seconds_per_iteration=args.max_seconds, calibrate=not args.uncalibrated)
    t0 = time.perf_counter()
    try:
        rows = run_sweep(cfg, progress=lambda line: print(line, flush=True))
    except SlowLinkUnavailable as e:
        print(f"bench-collective skipped: {e}", file=sys.stderr)
        return 2
    summary = summarize(rows)
    print(format_table(summary))
    print(f"# {len(rows)} measurements in {time.perf_counter() - t0:.0f} s; speedups are over dist.all_reduce; "
          "ideal = bytes of mxcomm none / bytes of the algorithm")
    if args.stages:
        print(format_stage_table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"config": vars(cfg), "rows": rows, "summary": summary}, fh, indent=1)
    return 0
