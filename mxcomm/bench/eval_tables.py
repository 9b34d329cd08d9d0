"""Markdown tables of the evaluation's result rows: perplexity, the outlier-robust Pareto front, TTFT.

Rows are the dicts of :mod:`mxcomm.bench.perplexity` and :mod:`mxcomm.bench.ttft`;
every Δ is against the uncompressed bf16-wire row (:func:`~mxcomm.bench.perplexity.baseline_row`).
"""

from __future__ import annotations

from mxcomm.bench.perplexity import baseline_row
from mxcomm.bench.settings import CommSetting


def _pct(value: float) -> str:
    return f"{value:+.2f}%"


def base_ppl(rows: list[dict]) -> float | None:
    base = baseline_row(rows)
    return base["ppl"] if base else None


def ppl_markdown(rows: list[dict]) -> str:
    base = baseline_row(rows)
    emulated = any("emulated_ppl" in r for r in rows)
    emu_base = base.get("emulated_ppl") if base else None
    head = "| setting | bits/elem | ratio (measured) | ppl | Δ vs none | compressed all-reduces / fwd | sent / fwd / rank |"
    lines = [head + (" emulation ppl (Δ) |" if emulated else ""), "|---|" + "---:|" * (7 if emulated else 6)]
    for r in rows:
        if r["setting"] is None:
            cells = [r["label"], "–", "–", f"{r['ppl']:.4f}",
                     _pct(100 * (r["ppl"] / base["ppl"] - 1)) if base else "–", "–", "–"]
        else:
            cells = [r["label"], f"{r['bits_per_element']:.3g}", f"{r['ratio']:.2f}", f"{r['ppl']:.4f}",
                     _pct(100 * (r["ppl"] / base["ppl"] - 1)) if base else "–",
                     f"{r['compressed_calls_per_forward']:.0f}", f"{r['bytes_sent_per_forward'] / 2**20:.2f} MiB"]
        if emulated:
            e = r.get("emulated_ppl")
            cells.append("–" if e is None else
                         f"{e:.4f} ({_pct(100 * (e / emu_base - 1))})" if emu_base else f"{e:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pareto_front(rows: list[dict]) -> list[dict]:
    """The compressed rows no other row beats on both wire bits/element and perplexity, fewest bits first."""
    pts = [r for r in rows if r.get("setting") and r["setting"]["fmt"] is not None and r.get("wire_bits_per_element")]
    front = [r for r in pts if not any(
        o["wire_bits_per_element"] <= r["wire_bits_per_element"] and o["ppl"] <= r["ppl"]
        and (o["wire_bits_per_element"] < r["wire_bits_per_element"] or o["ppl"] < r["ppl"]) for o in pts)]
    return sorted(front, key=lambda r: r["wire_bits_per_element"])


def pareto_markdown(rows: list[dict], target_ratio: float = 3.5, target_delta_pct: float = 2.0) -> str:
    """Per format: plain / rotation / outliers / both, wire bits from the accounting, Δ ppl, front marks."""
    base = base_ppl(rows)
    on_front = {r["label"] for r in pareto_front(rows)}
    paired = any("paired" in r for r in rows)
    lines = [
        "| format | variant | wire bits / elem | compression vs bf16 | outlier bytes / fwd / rank | ppl | Δ vs none "
        + ("| Δ 95% interval " if paired else "") + "| on the front | meets target |",
        "|---|---|---:|---:|---:|---:|---:|" + ("---:|" if paired else "") + "---|---|",
    ]
    for r in rows:
        st = r.get("setting")
        if not st:
            continue
        delta = 100 * (r["ppl"] / base - 1) if base else None
        comp = r.get("compression_vs_bf16")
        meets = comp is not None and delta is not None and comp >= target_ratio and delta <= target_delta_pct
        fmt = st["fmt"] or f"none ({st['comm_dtype']} wire)"
        cells = [fmt, r.get("variant", "–") if st["fmt"] else "–", f"{r['wire_bits_per_element']:.3f}",
                 f"{comp:.2f}x", f"{r.get('outlier_bytes_per_forward', 0) / 2**10:.0f} KiB", f"{r['ppl']:.4f}",
                 _pct(delta) if delta is not None else "–"]
        if paired:
            pd = r.get("paired")
            cells.append(f"[{pd['ci95_low_pct']:+.2f}, {pd['ci95_high_pct']:+.2f}]" if pd and st["fmt"] else "–")
        cells += ["yes" if r["label"] in on_front else "", "**yes**" if meets else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _baseline_for(row: dict, nones: list[dict]) -> dict | None:
    """The uncompressed row a TTFT row is compared with: the one run the same way (compiled, with or
    without descriptors) if the run has it, else the first."""
    def how(r: dict) -> tuple[bool, bool]:
        return bool(r["setting"].get("compiled", False)), bool(r["setting"].get("verify", True))

    return next((r for r in nones if how(r) == how(row)), nones[0] if nones else None)


def ttft_markdown(results: list[dict], ppl_rows: list[dict] | None = None) -> str:
    ppl_by_label = {r["label"]: r for r in ppl_rows or [] if r.get("setting")}
    base = base_ppl(ppl_rows or [])
    lines = [
        "| link | setting | algorithm run | sent / prefill / rank | on the link / prefill | TTFT (s) | "
        "speedup vs none | comm share (codec / blocked / rest s) | Δ ppl | 1st token = none's |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for res in results:
        if res.get("error"):
            lines.append(f"| {res['rate']} | failed: {res['error']} |" + " |" * 8)
            continue
        rows = res["rows"]
        nones = [r for r in rows if r["setting"]["fmt"] is None]
        for r in rows:
            none = _baseline_for(r, nones)
            speedup = f"{none['ttft_s'] / r['ttft_s']:.2f}x" if none else "–"
            label = r["label"]
            # the perplexity of the same numerics (compilation and descriptors do not change them)
            ppl_key = CommSetting(**r["setting"]).eager_label if r["setting"]["algorithm"] != "auto" else None
            if r["setting"]["algorithm"] == "auto" and r["algorithms"]:
                chosen = max(r["algorithms"], key=r["algorithms"].get)
                ppl_key = f"{r['setting']['fmt']} {r['setting']['rounding']} {chosen}" if chosen != "none" else None
            delta = "–"
            if r["setting"]["fmt"] is None:
                delta = "0 (baseline)"
            elif ppl_key in ppl_by_label and base:
                delta = _pct(100 * (ppl_by_label[ppl_key]["ppl"] / base - 1))
            algos = ", ".join(f"{a}×{n}" for a, n in sorted(r["algorithms"].items()))
            link = f"{r['qdisc_bytes'] / 2**20:.1f} MiB" if r.get("qdisc_bytes") else "–"
            share = f"{r['comm_share']:.0%}"
            if r.get("stages_s"):
                st = r["stages_s"]
                share += f" ({st['codec']:.2f} / {st['blocked']:.2f} / {st['rest']:.2f})"
            lines.append(
                f"| {res['rate']} | {label} | {algos} | {r['bytes_sent_per_forward'] / 2**20:.2f} MiB | {link} | "
                f"{r['ttft_s']:.3f} | {speedup} | {share} | {delta} | "
                f"{'yes' if none and r['first_token'] == none['first_token'] else 'no'} |"
            )
    return "\n".join(lines)
