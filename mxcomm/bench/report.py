"""Turn a compression sweep's pytest-benchmark JSON into a markdown report and PNG plots.

Input: the file written by ``pytest benchmarks/test_sweep.py --benchmark-json FILE`` or by
``mxcomm sweep --json FILE`` (same layout). Entries without the sweep's ``extra_info``
(other benchmarks in the same run) are counted and named in the report, not used.

Output, in the chosen directory:

* ``report.md``: per input source and dtype, a quality table at the largest tensor
  size (bits/element, compression ratio, SQNR, relative errors, codec throughput,
  Pareto-optimal formats marked), a throughput table over all sizes, and the plots.
* ``quality.png``: bits/element against SQNR, one marker per format, the Pareto front
  (no other format has fewer bits *and* a higher SQNR) highlighted.
* ``throughput.png``: encode and decode throughput of every format at the largest size.
* ``points.csv``: every measured point, for your own analysis.

Throughput is the uncompressed tensor's bytes (numel x input element size) divided by
the median time of one call, in GB/s (1e9 bytes per second), for encode and decode alike.
The plots need matplotlib (``pip install 'mxcomm[report]'``); without it the report
raises ``ReportError`` instead of leaving the plots out.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mxcomm.errors import MxcommError

REQUIRED_INFO = (
    "mxcomm_sweep",
    "op",
    "source",
    "dtype",
    "shape",
    "format",
    "block_size",
    "bits_per_element",
    "compression_ratio",
    "sqnr_db",
    "max_rel_error",
    "mean_rel_error",
    "input_nbytes",
)
SPEC_KINDS = {"nvfp4": "nvfp4"}
_KIND_MARKERS = {
    "OCP MX": "*",
    "nvfp4": "D",
    "custom float": "o",
    "custom int": "s",
    "int + fp16 scale": "^",
}


class ReportError(MxcommError, ValueError):
    """The benchmark JSON cannot be read as a sweep, or the report cannot be drawn."""


# -- reading ----------------------------------------------------------------------------------


@dataclass
class SweepRecord:
    """One sweep point: a format on one input, with its encode and decode timings."""

    info: dict[str, Any]
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # op -> pytest-benchmark stats

    @property
    def key(self) -> tuple[str, str, tuple[int, ...], str]:
        return (self.source, self.dtype, self.shape, self.format)

    @property
    def source(self) -> str:
        return str(self.info["source"])

    @property
    def dtype(self) -> str:
        return str(self.info["dtype"])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.info["shape"])

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def format(self) -> str:
        return str(self.info["format"])

    @property
    def bits(self) -> float:
        return float(self.info["bits_per_element"])

    @property
    def sqnr(self) -> float:
        return float(self.info["sqnr_db"])

    @property
    def kind(self) -> str:
        name = self.format
        if name.startswith("mx"):
            return "OCP MX"
        if name in SPEC_KINDS:
            return SPEC_KINDS[name]
        element = str(self.info.get("element", ""))
        if element.startswith("INT"):
            return "custom int" if str(self.info.get("scale", "e8m0")).startswith("e8m0") else "int + fp16 scale"
        return "custom float"

    def seconds(self, op: str) -> float | None:
        s = self.stats.get(op)
        return None if s is None else float(s["median"])

    def throughput_gbs(self, op: str) -> float | None:
        """Uncompressed bytes per second of one ``op`` call (median time), in GB/s."""
        t = self.seconds(op)
        if t is None or t <= 0:
            return None
        return float(self.info["input_nbytes"]) / t / 1e9


@dataclass
class SweepResults:
    records: list[SweepRecord]
    ignored: list[str]
    datetime: str
    machine: str
    path: str

    def groups(self) -> dict[tuple[str, str, tuple[int, ...]], list[SweepRecord]]:
        """Records by (source, dtype, shape), in the order the sweep produced them."""
        out: dict[tuple[str, str, tuple[int, ...]], list[SweepRecord]] = {}
        for r in self.records:
            out.setdefault((r.source, r.dtype, r.shape), []).append(r)
        return out

    def headline_groups(self) -> dict[tuple[str, str], list[SweepRecord]]:
        """For every (source, dtype): the records of its largest tensor shape."""
        best: dict[tuple[str, str], tuple[int, ...]] = {}
        for source, dtype, shape in self.groups():
            current = best.get((source, dtype))
            if current is None or math.prod(shape) > math.prod(current):
                best[(source, dtype)] = shape
        groups = self.groups()
        return {(s, d): groups[(s, d, shape)] for (s, d), shape in best.items()}

    def backends(self) -> list[str]:
        return sorted({str(r.info.get("backend", "?")) for r in self.records})


def _machine_summary(machine_info: Any) -> str:
    if not isinstance(machine_info, dict):
        return "unknown machine"
    cpu = machine_info.get("cpu") or {}
    brand = cpu.get("brand_raw") or machine_info.get("processor") or machine_info.get("machine") or "?"
    count = cpu.get("count")
    parts = [str(brand)]
    if count:
        parts.append(f"{count} CPUs")
    if machine_info.get("python_version"):
        parts.append(f"Python {machine_info['python_version']}")
    return ", ".join(parts)


def parse_benchmarks(data: Any, path: str = "<data>") -> SweepResults:
    """Sweep records from a decoded pytest-benchmark JSON document."""
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ReportError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    by_key: dict[tuple[str, str, tuple[int, ...], str], SweepRecord] = {}
    ignored: list[str] = []
    for i, bench in enumerate(data["benchmarks"]):
        name = str(bench.get("name", f"#{i}")) if isinstance(bench, dict) else f"#{i}"
        info = bench.get("extra_info") if isinstance(bench, dict) else None
        if not isinstance(info, dict) or "mxcomm_sweep" not in info:
            ignored.append(name)
            continue
        missing = [k for k in REQUIRED_INFO if k not in info]
        if missing:
            raise ReportError(f"{path}: benchmark {name} lacks extra_info {missing} (from an older mxcomm?)")
        stats = bench.get("stats")
        if not isinstance(stats, dict) or "median" not in stats:
            raise ReportError(f"{path}: benchmark {name} has no timing stats")
        op = str(info["op"])
        point_info = {k: v for k, v in info.items() if k != "op"}
        record = SweepRecord(point_info)
        existing = by_key.setdefault(record.key, record)
        if op in existing.stats:
            raise ReportError(f"{path}: {op} of {'/'.join(map(str, record.key))} appears twice")
        existing.stats[op] = stats
    if not by_key:
        raise ReportError(
            f"{path}: no compression-sweep results in it ({len(ignored)} other benchmarks); "
            "produce one with `pytest benchmarks/test_sweep.py --benchmark-json FILE` or `mxcomm sweep --json FILE`"
        )
    return SweepResults(
        records=list(by_key.values()),
        ignored=ignored,
        datetime=str(data.get("datetime", "?")),
        machine=_machine_summary(data.get("machine_info")),
        path=path,
    )


def load_benchmarks(path: str | Path) -> SweepResults:
    """Read ``path`` (pytest-benchmark JSON) into sweep records."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot read {p}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{p} is not valid JSON: {exc}") from exc
    return parse_benchmarks(data, str(p))


# -- analysis ---------------------------------------------------------------------------------


def pareto_front(records: Iterable[SweepRecord]) -> list[SweepRecord]:
    """Records that no other record dominates, sorted by bits/element.

    r dominates q when r.bits <= q.bits and r.sqnr >= q.sqnr with one of them strict
    (fewer bits on the wire, lower error). Records with identical (bits, SQNR) do not
    dominate each other: all of them are on the front (e.g. fp3_e1m1 and int3, whose
    value grids are the same up to a power of two).
    """
    ordered = sorted(records, key=lambda r: (r.bits, -r.sqnr))
    front: list[SweepRecord] = []
    best = -math.inf
    for r in ordered:
        if r.sqnr > best:
            front.append(r)
            best = r.sqnr
        elif front and r.sqnr == front[-1].sqnr and r.bits == front[-1].bits:
            front.append(r)
    return front


# -- markdown ---------------------------------------------------------------------------------


def _num(value: float | None, spec: str) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if math.isnan(value):
        return "nan"
    return format(value, spec)


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def quality_table(records: Sequence[SweepRecord]) -> list[str]:
    front = {r.key for r in pareto_front(records)}
    lines = [
        "| format | element | block | scale | bits/elem | ratio | SQNR dB | max rel err | mean rel err "
        "| zeroed | encode GB/s | decode GB/s | Pareto |",
        "|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|:-:|",
    ]
    for r in sorted(records, key=lambda r: (r.bits, -r.sqnr)):
        i = r.info
        lines.append(
            f"| {r.format} | {i.get('element', '?')} | {i['block_size']} | {i.get('scale', '?')} "
            f"| {_num(r.bits, '.3f')} | {_num(float(i['compression_ratio']), '.2f')}x | {_num(r.sqnr, '.2f')} "
            f"| {_num(float(i['max_rel_error']), '.3g')} | {_num(float(i['mean_rel_error']), '.3g')} "
            f"| {_num(100 * float(i.get('zeroed_fraction', 0.0)), '.1f')}% "
            f"| {_num(r.throughput_gbs('encode'), '.3g')} | {_num(r.throughput_gbs('decode'), '.3g')} "
            f"| {'**yes**' if r.key in front else ''} |"
        )
    return lines


def throughput_table(results: SweepResults, source: str, dtype: str) -> list[str]:
    shapes = sorted({r.shape for r in results.records if r.source == source and r.dtype == dtype}, key=math.prod)
    cells: dict[str, dict[tuple[int, ...], SweepRecord]] = {}
    for r in results.records:
        if r.source == source and r.dtype == dtype:
            cells.setdefault(r.format, {})[r.shape] = r
    lines = [
        "| format | " + " | ".join(_shape(s) for s in shapes) + " |",
        "|---|" + "--:|" * len(shapes),
    ]
    for name, by_shape in cells.items():
        row = []
        for s in shapes:
            r = by_shape.get(s)
            row.append(
                "-"
                if r is None
                else f"{_num(r.throughput_gbs('encode'), '.3g')} / {_num(r.throughput_gbs('decode'), '.3g')}"
            )
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return lines


def render_markdown(results: SweepResults, plot_names: Sequence[str] = ()) -> str:
    out = [
        "# mxcomm compression sweep",
        "",
        f"From `{results.path}` ({results.datetime}); machine: {results.machine}; "
        f"codec backend(s): {', '.join(results.backends())}; {len(results.records)} points.",
        "",
        "Columns: bits/elem = 8 x packed bytes / elements (block scales and padding included); "
        "ratio = input bytes / packed bytes; SQNR = 10 log10(sum x^2 / sum (y-x)^2); relative error "
        "|y-x|/|x| over the elements with x != 0 (max and mean); zeroed = share of non-zero inputs decoded "
        "as 0 (each has relative error 1); throughput = input bytes / median call time (GB/s). "
        "Pareto = no other format has fewer bits/element and a higher SQNR on the same input.",
        "",
    ]
    if results.ignored:
        out += [
            f"Not sweep results, ignored: {len(results.ignored)} benchmark(s) "
            f"({', '.join(results.ignored[:5])}{', ...' if len(results.ignored) > 5 else ''}).",
            "",
        ]
    for name in plot_names:
        out += [f"![{Path(name).stem}]({name})", ""]
    for (source, dtype), records in results.headline_groups().items():
        shape = records[0].shape
        front = pareto_front(records)
        out += [
            f"## {source} input, {dtype}, {_shape(shape)}",
            "",
            "Pareto-optimal formats (fewest bits first): "
            + ", ".join(f"`{r.format}` ({r.bits:.2f} b, {_num(r.sqnr, '.1f')} dB)" for r in front)
            + ".",
            "",
            *quality_table(records),
            "",
            f"### Codec throughput, encode / decode GB/s ({source}, {dtype})",
            "",
            *throughput_table(results, source, dtype),
            "",
        ]
    return "\n".join(out)


def write_points_csv(results: SweepResults, path: Path) -> None:
    keys: list[str] = []
    for r in results.records:
        keys.extend(k for k in r.info if k not in keys)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*keys, "encode_median_s", "decode_median_s", "encode_gbs", "decode_gbs"])
        for r in results.records:
            writer.writerow(
                [
                    *(
                        json.dumps(r.info.get(k)) if isinstance(r.info.get(k), list) else r.info.get(k, "")
                        for k in keys
                    ),
                    r.seconds("encode") or "",
                    r.seconds("decode") or "",
                    r.throughput_gbs("encode") or "",
                    r.throughput_gbs("decode") or "",
                ]
            )


# -- plots ------------------------------------------------------------------------------------


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ReportError(
            "mxcomm report draws its plots with matplotlib, which is not installed: pip install 'mxcomm[report]'"
        ) from exc
    return plt


def plot_quality(results: SweepResults, path: Path) -> Path:
    """bits/element vs SQNR per (source, dtype) at the largest size; Pareto front highlighted."""
    plt = _pyplot()
    panels = list(results.headline_groups().items())
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(7.5 * ncols + 1.5, 5.5 * nrows + 0.8), squeeze=False, layout="constrained"
    )
    cmap = plt.get_cmap("viridis")
    bits_all = [int(r.info.get("element_bits", round(r.bits))) for r in results.records]
    lo, hi = min(bits_all), max(bits_all)
    for ax, ((source, dtype), records) in zip(axes.flat, panels):
        finite = [r for r in records if math.isfinite(r.sqnr)]
        for r in finite:
            eb = int(r.info.get("element_bits", round(r.bits)))
            ax.scatter(
                r.bits,
                r.sqnr,
                marker=_KIND_MARKERS.get(r.kind, "o"),
                s=70 if r.kind in ("OCP MX", "nvfp4") else 36,
                color=cmap((eb - lo) / max(1, hi - lo)),
                edgecolors="black",
                linewidths=0.4,
                zorder=3,
            )
        front = pareto_front(finite)
        xs = [r.bits for r in front]
        ys = [r.sqnr for r in front]
        ax.step(xs, ys, where="post", color="crimson", linewidth=1.5, zorder=2, label="Pareto front")
        ax.scatter(xs, ys, s=170, facecolors="none", edgecolors="crimson", linewidths=1.5, zorder=4)
        labels: dict[tuple[float, float], list[str]] = {}
        for r in front:
            labels.setdefault((r.bits, r.sqnr), []).append(r.format)
        for i, ((x, y), names) in enumerate(labels.items()):
            # alternate label sides: neighbouring front points are often close together
            offset, align = ((7, -11), "left") if i % 2 == 0 else ((-7, 5), "right")
            ax.annotate(" = ".join(names), (x, y), textcoords="offset points", xytext=offset, ha=align, fontsize=7.5)
        hidden = len(records) - len(finite)
        title = f"{source} input, {dtype}, {_shape(records[0].shape)}"
        if hidden:
            title += f" ({hidden} exact, not drawn)"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("bits per element on the wire (scales included)")
        ax.set_ylabel("SQNR (dB)")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles = [
        plt.Line2D([], [], marker=m, linestyle="", color="grey", markeredgecolor="black", label=k)
        for k, m in _KIND_MARKERS.items()
        if any(r.kind == k for r in results.records)
    ]
    handles.append(plt.Line2D([], [], color="crimson", label="Pareto front"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9, frameon=False)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi))
    fig.colorbar(sm, ax=axes, label="element bits", shrink=0.8)
    fig.suptitle("mxcomm: bits on the wire vs quantization error (one marker per format)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput(results: SweepResults, path: Path) -> Path:
    """Encode and decode GB/s of every format, on the largest input of the first (source, dtype)."""
    plt = _pyplot()
    groups = results.headline_groups()
    (source, dtype), records = max(groups.items(), key=lambda kv: (kv[0][0] == "synthetic", kv[1][0].numel))
    records = sorted(records, key=lambda r: (r.bits, r.format))
    front = {r.key for r in pareto_front(records)}
    names = [r.format for r in records]
    height = max(3.0, 0.22 * len(records) + 1.5)
    fig, axes = plt.subplots(1, 2, figsize=(12, height), sharey=True)
    for ax, op in zip(axes, ("encode", "decode")):
        values = [r.throughput_gbs(op) or 0.0 for r in records]
        colors = ["crimson" if r.key in front else "steelblue" for r in records]
        ax.barh(range(len(records)), values, color=colors)
        ax.set_title(f"{op}")
        ax.set_xlabel("GB/s of uncompressed input (median)")
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(records)))
    axes[0].set_yticklabels(names, fontsize=7)
    axes[0].set_ylim(len(records) - 0.5, -0.5)  # first format on top, no empty margin
    fig.suptitle(
        f"mxcomm codec throughput: {source} input, {dtype}, {_shape(records[0].shape)}; "
        f"backend {', '.join(sorted({str(r.info.get('backend')) for r in records}))} (red: Pareto-optimal)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(json_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Read the benchmark JSON and write report.md, quality.png, throughput.png, points.csv."""
    results = load_benchmarks(json_path)
    _pyplot()  # fail before writing anything when matplotlib is missing
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create {out}: {exc.strerror or exc}") from exc
    quality = plot_quality(results, out / "quality.png")
    throughput = plot_throughput(results, out / "throughput.png")
    csv_path = out / "points.csv"
    write_points_csv(results, csv_path)
    md = out / "report.md"
    md.write_text(render_markdown(results, [quality.name, throughput.name]), encoding="utf-8")
    return [md, quality, throughput, csv_path]
