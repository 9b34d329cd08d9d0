"""Markdown tables from a ``benchmarks/test_cpu_codec.py --benchmark-json`` file.

    python benchmarks/cpu_codec_report.py cpu.json

One row per (dtype, size, format): wall-clock GB/s of the uncompressed tensor
for encode / decode / decode_sum, each with its ratio to ``copy_`` measured in
the same test, the per-core (CPU-time) throughput, and at 1 MiB the speed-up
over the eager torch reference.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

OPS = ("encode", "decode", "decode_sum")


def load(path: str) -> dict[tuple[str, int, str], dict[str, dict]]:
    with open(path) as fh:
        data = json.load(fh)
    rows: dict[tuple[str, int, str], dict[str, dict]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if "op" in info:
            rows[(info["dtype"], info["mib"], info["format"])][info["op"]] = info
    return rows


def table(rows: dict[tuple[str, int, str], dict[str, dict]]) -> str:
    head = (
        "| dtype | MiB | format | encode GB/s (x copy_) | decode GB/s (x copy_) | decode_sum GB/s (x copy_) "
        "| per-core enc / dec GB/s | vs reference enc / dec / sum |"
    )
    lines = [head, "|" + "---|" * 8]
    for (dtype, mib, fmt), ops in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        cells = []
        for op in OPS:
            info = ops.get(op)
            cells.append(f"{info['gbps']:.2f} ({info['ratio_to_copy']:.2f})" if info else "-")
        per_core = " / ".join(f"{ops[op]['cpu_gbps']:.2f}" if op in ops else "-" for op in ("encode", "decode"))
        ref = " / ".join(
            f"{ops[op]['speedup_vs_reference']:.0f}x" if op in ops and "speedup_vs_reference" in ops[op] else "-"
            for op in OPS
        )
        lines.append(f"| {dtype} | {mib} | {fmt} | {' | '.join(cells)} | {per_core} | {ref} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    rows = load(argv[1])
    print(table(rows))
    any_info = next((i for ops in rows.values() for i in ops.values()), None)
    if any_info:
        print(
            f"\nthreads: {any_info['threads']}; fresh build of the native library: "
            f"{any_info['build_seconds']:.1f} s, loading the cached build: {any_info['load_seconds'] * 1e3:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
