"""Markdown tables from a ``benchmarks/test_cpu_codec.py --benchmark-json`` file.

    python benchmarks/cpu_codec_report.py cpu.json

One row per (dtype, size, format): wall-clock GB/s of the uncompressed tensor
for encode / decode / decode_sum, each with its ratio to ``copy_`` measured in
the same test, the per-core (CPU-time) throughput, and at 1 MiB the speed-up
over the eager torch reference.

Where the file has ``test_cpu_codec_goal`` results (``-k goal``), a table per thread count: per
format, encode / decode / decode_sum (of 3 shards, per input byte) as ratios to ``copy_``
(wall-clock, and per CPU-second in parentheses) and GB/s of uncompressed bytes.

Where the file has ``test_cpu_rotation_cost`` results (``-k rot``), a second table: per
(size, format, op) the GB/s of the bf16 tensor without and with a random Hadamard rotation,
their ratio (wall-clock and per CPU-second), each against ``copy_``, and the rotation transform
alone; then the speed-up of ``rotate`` over the plainly spelled-out transform.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

OPS = ("encode", "decode", "decode_sum")


def _infos(path: str) -> list[dict]:
    with open(path) as fh:
        data = json.load(fh)
    return [bench.get("extra_info", {}) for bench in data["benchmarks"]]


def load(path: str) -> dict[tuple[str, int, str], dict[str, dict]]:
    rows: dict[tuple[str, int, str], dict[str, dict]] = defaultdict(dict)
    for info in _infos(path):
        if "op" in info and not info.get("goal"):
            rows[(info["dtype"], info["mib"], info["format"])][info["op"]] = info
    return rows


def goal_tables(infos: list[dict]) -> str | None:
    """The ``test_cpu_codec_goal`` results: one table per thread count."""
    goal = [i for i in infos if i.get("goal")]
    if not goal:
        return None
    out = []
    for threads in sorted({i["threads"] for i in goal}):
        cells: dict[str, dict[str, dict]] = defaultdict(dict)
        for i in goal:
            if i["threads"] == threads:
                cells[i["format"]][i["op"]] = i
        copy = sorted(i["copy_gbps"] for i in goal if i["threads"] == threads)
        lines = [
            f"{threads} thread{'s' if threads > 1 else ''}, {goal[0]['mib']} MiB bf16 (copy_ median {copy[len(copy) // 2]:.2f} GB/s): "
            "ratio to copy_ wall-clock (per CPU-second), GB/s",
            "",
            "| format | encode | decode | decode_sum of 3 (per input byte) |",
            "|---|---|---|---|",
        ]
        for fmt in sorted(cells):
            row = []
            for op in OPS:
                i = cells[fmt].get(op)
                row.append(f"{i['ratio_to_copy']:.2f} ({i['cpu_ratio_to_copy']:.2f}), {i['gbps']:.2f}" if i else "-")
            lines.append(f"| {fmt} | {' | '.join(row)} |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def rotation_table(infos: list[dict]) -> str | None:
    rot = [i for i in infos if "rotation_op" in i]
    if not rot:
        return None
    lines = [
        "| MiB | format | op | plain GB/s (x copy_) | rotated GB/s (x copy_) | rotated / plain "
        "| per-core rotated / plain | rotation alone GB/s (share of the extra time) | copy_ GB/s |",
        "|" + "---|" * 9,
    ]
    order = {"encode": 0, "decode": 1}
    for i in sorted(rot, key=lambda i: (i["dtype"], i["mib"], i["format"], order.get(i["rotation_op"], 2))):
        # seconds per byte: how much of what rotation adds is the transform itself (the rest is
        # the front-end's padding, float32 codec pass and saturating cast, or the fused kernel's work)
        extra = 1 / i["rotated_gbps"] - 1 / i["plain_gbps"]
        # (a fused rotation does not run the front-end transform: no share then)
        fused = i.get("rotation_fused", False)
        share = f"{(1 / i['transform_gbps']) / extra:.0%}" if extra > 0 and not fused else "-"
        lines.append(
            f"| {i['mib']} | {i['format']} | {i['rotation_op']} "
            f"| {i['plain_gbps']:.3f} ({i['plain_to_copy']:.2f}) | {i['rotated_gbps']:.3f} ({i['rotated_to_copy']:.3f}) "
            f"| {i['rotated_over_plain']:.3f} | {i['cpu_rotated_over_plain']:.3f} "
            f"| {i['transform_gbps']:.3f} ({share}) | {i['copy_gbps']:.2f} |"
        )
    return "\n".join(lines)


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
    if rows:
        print(table(rows))
    any_info = next((i for ops in rows.values() for i in ops.values()), None)
    if any_info:
        print(
            f"\nthreads: {any_info['threads']}; native build: {any_info.get('native_isa', '?')}, "
            f"loading it: {any_info['load_seconds'] * 1e3:.1f} ms"
        )
    infos = _infos(argv[1])
    goal = goal_tables(infos)
    if goal:
        print(("\n" if rows else "") + goal)
    rotation = rotation_table(infos)
    if rotation:
        fused = sorted(
            {
                "fused in the backend" if i.get("rotation_fused") else "in the API front-end"
                for i in infos
                if "rotation_op" in i
            }
        )
        print(("\n" if rows else "") + f"Rotation cost (bf16 activations; rotation {', '.join(fused)}):\n\n" + rotation)
    for i in infos:
        if "transform_speedup" in i:
            print(
                f"\n{i['variant']}: {i['transform_gbps']:.3f} GB/s, the plain transform {i['plain_transform_gbps']:.3f} "
                f"GB/s: {i['transform_speedup']:.1f}x wall-clock, {i['transform_cpu_speedup']:.1f}x per CPU-second "
                f"(copy_ {i['copy_gbps']:.2f} GB/s)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
