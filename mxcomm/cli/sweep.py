"""``mxcomm sweep`` (the compression sweep from the command line) and ``mxcomm report``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import mxcomm
from mxcomm.bench.sweep import (
    DTYPES,
    SOURCES,
    SweepConfig,
    SweepError,
    measure_point,
    source_unavailable,
    sweep_points,
)
from mxcomm.cli import csv_list, int_list
from mxcomm.errors import MxcommError

T = TypeVar("T")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="encode/decode every format on LLM-like activations; print bits/element, error and codec throughput",
        description="Runs the points of benchmarks/test_sweep.py (same environment variables, see mxcomm/bench/sweep.py); "
        "options override the environment.",
    )
    p.add_argument("--quick", action="store_true", help="tiny sweep (as MXCOMM_SWEEP_QUICK=1)")
    p.add_argument("--sizes", help="comma-separated token counts (rows), e.g. 1,128,8192")
    p.add_argument("--hidden", type=int, help="hidden size of the synthetic input (default 4096)")
    p.add_argument("--dtypes", help=f"comma-separated input dtypes from {sorted(DTYPES)}")
    p.add_argument("--sources", help=f"comma-separated input sources from {list(SOURCES)}")
    p.add_argument("--formats", help="comma-separated format names or shell patterns (mx*,nvfp4,int4*)")
    p.add_argument("--block-sizes", help="block sizes of the free families (default 16,32,64,128)")
    p.add_argument("--target-s", type=float, help="timing budget per point and operation, seconds")
    p.add_argument("--max-rounds", type=int, help="most timed rounds per point and operation")
    p.add_argument(
        "--json", type=Path, help="also write the results as pytest-benchmark-style JSON (for mxcomm report)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "report",
        help="turn sweep JSON (pytest-benchmark or mxcomm sweep --json) into report.md and PNG plots",
    )
    p.add_argument("json_file", type=Path, metavar="BENCH.json")
    p.add_argument("--out", type=Path, help="output directory (default: BENCH-report next to the JSON file)")
    p.set_defaults(func=cmd_report)


def _config(args: argparse.Namespace) -> SweepConfig:
    env = {k: v for k, v in os.environ.items() if k.startswith("MXCOMM_SWEEP_")}
    if args.quick:
        env["MXCOMM_SWEEP_QUICK"] = "1"
    config = SweepConfig.from_env(env)
    changes: dict[str, object] = {}
    if args.sizes:
        changes["tokens"] = int_list(args.sizes, "--sizes", SweepError)
    if args.hidden is not None:
        changes["hidden"] = args.hidden
    if args.dtypes:
        changes["dtypes"] = csv_list(args.dtypes)
    if args.sources:
        changes["sources"] = csv_list(args.sources)
    if args.formats:
        changes["formats"] = csv_list(args.formats)
    if args.block_sizes:
        changes["block_sizes"] = int_list(args.block_sizes, "--block-sizes", SweepError)
    if args.target_s is not None:
        changes["target_s"] = args.target_s
    if args.max_rounds is not None:
        changes["max_rounds"] = args.max_rounds
    return replace(config, **changes) if changes else config


def _progress(items: list[T], enabled: bool) -> Iterator[T]:
    """Items with a progress bar on stderr: tqdm when installed, else a plain counter line."""
    if not enabled:
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(items, file=sys.stderr, unit="pt", dynamic_ncols=True)
        return
    total = len(items)
    tty = sys.stderr.isatty()
    step = max(1, total // 20)
    for i, item in enumerate(items):
        if tty or i % step == 0:
            end = "\r" if tty else "\n"
            sys.stderr.write(f"[{i:>{len(str(total))}}/{total}] {100 * i // max(1, total):3d}%{end}")
            sys.stderr.flush()
        yield item
    sys.stderr.write(f"[{total}/{total}] 100%\n")


def _num(value: Any, spec: str) -> str:
    v = float(value)
    if v != v:
        return "nan"
    if v in (float("inf"), float("-inf")):
        return "inf" if v > 0 else "-inf"
    return format(v, spec)


def print_table(entries: Iterable[dict[str, Any]], out: Any = None) -> None:
    out = out or sys.stdout
    rows: dict[str, dict[str, Any]] = {}
    for e in entries:
        info = e["extra_info"]
        key = f"{info['source']}|{info['dtype']}|{'x'.join(map(str, info['shape']))}|{info['format']}"
        rows.setdefault(key, {"info": info})[info["op"]] = e["stats"]
    header = (
        f"{'format':16s} {'block':>5s} {'bits/el':>7s} {'ratio':>6s} {'SQNR dB':>8s} {'max rel':>8s} "
        f"{'mean rel':>8s} {'enc GB/s':>9s} {'dec GB/s':>9s}"
    )
    group = None
    for key, row in rows.items():
        info = row["info"]
        this_group = key.rsplit("|", 1)[0]
        if this_group != group:
            group = this_group
            source, dtype, shape = this_group.split("|")
            print(f"\n{source} input, {dtype}, {shape} (backend {info['backend']})", file=out)
            print(header, file=out)
        gbs = {
            op: info["input_nbytes"] / row[op]["median"] / 1e9 if row.get(op) and row[op]["median"] > 0 else None
            for op in ("encode", "decode")
        }
        print(
            f"{info['format']:16s} {info['block_size']:5d} {info['bits_per_element']:7.3f} "
            f"{info['compression_ratio']:5.2f}x {_num(info['sqnr_db'], '8.2f')} {_num(info['max_rel_error'], '8.3g')} "
            f"{_num(info['mean_rel_error'], '8.3g')} "
            f"{'-' if gbs['encode'] is None else _num(gbs['encode'], '9.4f')} "
            f"{'-' if gbs['decode'] is None else _num(gbs['decode'], '9.4f')}",
            file=out,
        )


def _machine_info() -> dict[str, Any]:
    return {
        "node": platform.node(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python_version": platform.python_version(),
        "cpu": {"count": os.cpu_count(), "brand_raw": platform.processor() or platform.machine()},
    }


def cmd_sweep(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
        sources = []
        for source in config.sources:
            reason = source_unavailable(source)
            if reason is None:
                sources.append(source)
            else:
                print(f"mxcomm sweep: skipping source {source!r}: {reason}", file=sys.stderr)
        if not sources:
            print("mxcomm sweep: error: no input source is available", file=sys.stderr)
            return 2
        points = sweep_points(config, sources=sources)
        print(
            f"mxcomm sweep: {len(points)} points ({len({p.format.name for p in points})} formats; tokens "
            f"{','.join(map(str, config.tokens))}; dtypes {','.join(config.dtypes)}; sources {','.join(sources)}); "
            f"mxcomm.encode/decode with backend 'auto'",
            file=sys.stderr,
        )
        entries: list[dict[str, Any]] = []
        for point in _progress(points, not args.no_progress):
            entries.extend(measure_point(point, config))
    except MxcommError as exc:
        print(f"mxcomm sweep: error: {exc}", file=sys.stderr)
        return 2
    print_table(entries)
    if args.json is not None:
        doc = {
            "machine_info": _machine_info(),
            "commit_info": {},
            "benchmarks": entries,
            "datetime": dt.datetime.now(dt.timezone.utc).isoformat(),
            "version": f"mxcomm sweep {mxcomm.__version__}",
        }
        args.json.write_text(json.dumps(doc, indent=1), encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mxcomm.bench.report import write_report

    out = args.out if args.out is not None else args.json_file.with_name(args.json_file.stem + "-report")
    try:
        paths = write_report(args.json_file, out)
    except MxcommError as exc:
        print(f"mxcomm report: error: {exc}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0
