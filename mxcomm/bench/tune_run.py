"""One ``mxcomm tune`` run: load the model and text, tune per module, write plans and a report, evaluate held out.

Writes into ``out_dir``: ``plan.json`` (the first budget's plan), ``plans/<budget>.json``
(every budget's), ``sensitivity.json`` (every module's candidates: wire bits, proxy,
measured KL and NLL increase -- ``--sensitivity`` reuses it), ``outliers.json`` (the
outlier calibration used), ``report.json`` and ``report.md`` (per-module choices,
predicted vs measured loss, bits; the held-out front when evaluated).

The text is split explicitly: calibration windows (outlier calibration, sensitivity,
end-to-end correction) and held-out windows that neither calibration nor tuning saw;
overlapping ranges are refused.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mxcomm.bench.eval_run import run_environment
from mxcomm.bench.rank_setup import log_stderr
from mxcomm.bench.smollm2 import DEFAULT_TEXT, EvalSetupError, windows
from mxcomm.bench.tuning import (
    DEFAULT_FORMATS,
    DEFAULT_OUTLIER_KS,
    DEFAULT_ROTATION_SEED,
    DEFAULT_TWO_SHOT,
    DEFAULT_TWO_SHOT_KS,
    Candidate,
    Outcome,
    Sensitivity,
    TuneConfig,
    Tuner,
    candidate_grid,
    evaluate,
    uniform,
)
from mxcomm.tp.outliers import OutlierCalibration, calibrate_outliers
from mxcomm.tp.plan import save_plan

Log = Callable[[str], None]
SMOLLM2 = "smollm2-135m"
#: The issue's goal: >= 3.5x fewer wire bits than bf16 at <= 2 % perplexity.
TARGET_BITS = 16 / 3.5
TARGET_PPL_PCT = 2.0
DEFAULT_UNIFORM: tuple[str, ...] = (
    "mxfp4_e2m1", "mxfp4_e2m1:k8", "mxfp4_e2m1:rot:k8", "mxfp4_e2m1:rot:k16", "mxfp4_e2m1:rot:k32",
    "int4:rot:k8", "fp4_e2m1_b64:rot:k8", "nvfp4", "int3:rot:k8", "fp5_e2m2:rot", "fp5_e2m2:rot:k8",
    "fp5_e2m2:rot:k16", "mxfp6_e2m3", "mxfp6_e2m3:k8", "mxfp4_e2m1:2s:rot:k8", "mxfp4_e2m1>fp5_e2m2:rot:k8",
    "mxfp4_e2m1>mxfp6_e2m3:rot:k8", "int3>mxfp6_e2m3:rot:k8",
)


@dataclass(frozen=True)
class Budget:
    """``bits``: at most this many wire bits per element; ``ppl``: at most this perplexity increase (%)."""

    kind: str
    value: float

    @property
    def name(self) -> str:
        return f"{self.kind}{self.value:g}"

    @classmethod
    def parse(cls, text: str) -> Budget:
        kind, _, value = text.strip().partition("=")
        try:
            v = float(value)
        except ValueError:
            v = math.nan
        if kind not in ("bits", "ppl") or not (v > 0 and math.isfinite(v)):
            raise EvalSetupError(f"a budget is bits=B (wire bits per element) or ppl=P (perplexity increase, %), "
                                 f"got {text!r}")
        return cls(kind, v)


@dataclass(frozen=True)
class TuneRun:
    """What ``mxcomm tune`` does (its options; see ``mxcomm tune --help``)."""

    model: str = SMOLLM2
    text: Path = DEFAULT_TEXT
    world_size: int = 3
    window_tokens: int = 512
    calibration_start: int = 0
    calibration_windows: int = 6
    sensitivity_windows: int = 2
    budgets: tuple[Budget, ...] = (Budget("bits", TARGET_BITS),)
    formats: tuple[str, ...] = DEFAULT_FORMATS
    outlier_ks: tuple[int, ...] = DEFAULT_OUTLIER_KS
    two_shot: tuple[tuple[str, str], ...] = DEFAULT_TWO_SHOT
    two_shot_ks: tuple[int, ...] = DEFAULT_TWO_SHOT_KS
    rotation_seed: int = DEFAULT_ROTATION_SEED
    max_measured: int = 8
    rounds: int = 4
    outliers: Path | None = None
    sensitivity: Path | None = None
    heldout_start: int = 3072
    heldout_windows: int = 0
    uniform: tuple[str, ...] = DEFAULT_UNIFORM
    threads: int = 0
    cache_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self, num_tokens: int) -> None:
        if self.world_size < 2:
            raise EvalSetupError(f"tensor parallelism needs at least 2 ranks, got {self.world_size}")
        if not self.budgets:
            raise EvalSetupError("give at least one budget")
        cal = (self.calibration_start, self.calibration_start + self.calibration_windows * self.window_tokens)
        windows(torch.zeros(num_tokens, dtype=torch.long), self.calibration_windows, self.window_tokens,
                self.calibration_start)
        if self.heldout_windows:
            held = (self.heldout_start, self.heldout_start + self.heldout_windows * self.window_tokens)
            windows(torch.zeros(num_tokens, dtype=torch.long), self.heldout_windows, self.window_tokens,
                    self.heldout_start)
            if held[0] < cal[1] and cal[0] < held[1]:
                raise EvalSetupError(f"held-out tokens {held[0]}..{held[1] - 1} overlap the calibration tokens "
                                     f"{cal[0]}..{cal[1] - 1}: the evaluation must use text the tuning never saw")


def load(run: TuneRun, log: Log) -> tuple[torch.nn.Module, torch.Tensor, str]:
    """The unsharded model, the text's token ids, and a description of both."""
    if run.model == SMOLLM2:
        from mxcomm.bench.smollm2 import load_model, load_tokens, prepare_assets

        assets = prepare_assets(run.cache_dir, text=run.text, log=log)
        return load_model(assets), load_tokens(assets), f"SmolLM2-135M-Instruct ({assets.gguf.name})"
    path = Path(run.model)
    if not path.is_dir():
        raise EvalSetupError(f"--model is {SMOLLM2!r} or a local transformers model folder, got {run.model!r}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    ids = tokenizer(run.text.read_text(encoding="utf-8"), return_tensors="pt").input_ids[0].to(torch.long)
    return model, ids, f"{type(model).__name__} from {path}"


def _plan_description(run: TuneRun, budget: Budget, out: Outcome, model_desc: str) -> str:
    end = run.calibration_start + run.calibration_windows * run.window_tokens - 1
    return (f"mxcomm tune, {model_desc}, TP={run.world_size}, bf16 wire; budget {budget.name}; calibrated on "
            f"{run.text.name} tokens {run.calibration_start}..{end} ({run.calibration_windows} x {run.window_tokens}, "
            f"sensitivity on the first {run.sensitivity_windows}); {out.bits:.3f} wire bits per element "
            f"({16 / out.bits:.2f}x vs bf16), measured on the calibration windows: KL {out.measured_kl:.4f}, "
            f"perplexity {out.measured_ppl_pct:+.2f}%")


def run_tune(run: TuneRun, out_dir: Path, *, command: str, log: Log = log_stderr) -> dict[str, Any]:
    """Tune, write the plans and the report into ``out_dir``, evaluate held out; returns the report document."""
    t_start = time.perf_counter()
    if run.threads:
        torch.set_num_threads(run.threads)
    model, tokens, model_desc = load(run, log)
    run.check(tokens.numel())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "plans").mkdir(exist_ok=True)
    data = windows(tokens, run.calibration_windows, run.window_tokens, run.calibration_start)
    cal_range = f"{run.calibration_start}..{run.calibration_start + data.numel() - 1}"
    if run.outliers is not None:
        outliers = OutlierCalibration.load(run.outliers)
    else:
        log(f"[tune] calibrating outlier channels on tokens {cal_range}")
        outliers = calibrate_outliers(model, list(data), max_channels=max(max(run.outlier_ks, default=0), 32),
                                      forward=lambda m, w: m.model(input_ids=w[None], use_cache=False),
                                      source=f"{run.text.name} tokens {cal_range}, unsharded model")
    outliers.save(out_dir / "outliers.json")
    config = TuneConfig(world_size=run.world_size, sensitivity_windows=run.sensitivity_windows,
                        max_measured=run.max_measured, rounds=run.rounds)
    tuner = Tuner(model, data, outliers, config, log)
    candidates = candidate_grid(run.formats, run.outlier_ks, run.two_shot, run.two_shot_ks, run.rotation_seed,
                                outliers.max_k)
    doc: dict[str, Any] = {"command": command, "environment": run_environment(), "model": model_desc,
                           "text": str(run.text), "text_tokens": int(tokens.numel()),
                           "split": {"calibration": cal_range, "calibration_windows": run.calibration_windows,
                                     "window_tokens": run.window_tokens,
                                     "sensitivity_windows": run.sensitivity_windows},
                           "world_size": run.world_size, "candidates": [c.label for c in candidates],
                           "outliers": {"source": outliers.source, "tokens": outliers.tokens,
                                        "max_k": outliers.max_k}}
    with tuner.session():
        t0 = time.perf_counter()
        if run.sensitivity is not None:
            sens = Sensitivity.from_dict(json.loads(run.sensitivity.read_text()), run.rotation_seed)
            missing = [n for n in tuner.names if n not in sens.modules]
            if missing:
                raise EvalSetupError(f"{run.sensitivity} has no measurements of {missing[:4]}")
            log(f"[tune] sensitivity from {run.sensitivity}")
            tuner.windows()
        else:
            sens = tuner.sensitivity(candidates)
            (out_dir / "sensitivity.json").write_text(json.dumps(sens.to_dict(), indent=1) + "\n")
        doc["sensitivity_seconds"] = time.perf_counter() - t0
        doc["proxy_vs_measured"] = proxy_agreement(sens)
        outcomes = []
        for i, budget in enumerate(run.budgets):
            if budget.kind == "bits":
                out = tuner.allocate(sens, max_bits=budget.value, label=budget.name)
            else:
                out = tuner.allocate(sens, max_ppl_pct=budget.value, label=budget.name)
            plan = tuner.plan(out, _plan_description(run, budget, out, model_desc))
            save_plan(plan, out_dir / "plans" / f"{budget.name}.json")
            if i == 0:
                save_plan(plan, out_dir / "plan.json")
            outcomes.append((budget, out))
    doc["plans"] = [{**out.to_dict(), "file": f"plans/{b.name}.json",
                     "modules": module_rows(sens, out)} for b, out in outcomes]
    if run.heldout_windows:
        held = windows(tokens, run.heldout_windows, run.window_tokens, run.heldout_start)
        settings: dict[str, dict[str, Candidate]] = {"none (bf16 wire)": {}}
        for b, out in outcomes:
            settings[f"tuned {b.name}"] = out.assignment
        for text in run.uniform:
            c = Candidate.parse(text, run.rotation_seed)
            settings[f"uniform {c.label}"] = uniform(tuner.names, c)
        rows = evaluate(model, held, settings, outliers=outliers, world_size=run.world_size, log=log)
        mark_front(rows)
        doc["heldout"] = {"tokens": f"{run.heldout_start}..{run.heldout_start + held.numel() - 1}",
                          "windows": run.heldout_windows, "rows": rows}
    doc["wall_seconds"] = time.perf_counter() - t_start
    (out_dir / "report.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out_dir / "report.md").write_text(render(doc))
    log(f"[tune] plans, sensitivity and report written to {out_dir}")
    return doc


def module_rows(sens: Sensitivity, out: Outcome) -> list[dict[str, Any]]:
    rows = []
    for name, cand in out.assignment.items():
        m = next(r for r in sens.modules[name] if r.candidate == cand)
        rows.append({"module": name, **m.to_dict()})
    return rows


def proxy_agreement(sens: Sensitivity) -> dict[str, float]:
    """How well the Fisher proxy ranked what was measured: Spearman correlation of proxy and KL."""
    pairs = [(r.proxy, r.kl) for rows in sens.modules.values() for r in rows if r.kl is not None and r.kl > 0]
    if len(pairs) < 3:
        return {"pairs": len(pairs)}
    proxy = torch.tensor([p for p, _ in pairs]).argsort().argsort().double()
    kl = torch.tensor([k for _, k in pairs]).argsort().argsort().double()
    rho = float(torch.corrcoef(torch.stack([proxy, kl]))[0, 1])
    ratio = torch.tensor([k / p for p, k in pairs if p > 0]).double()
    return {"pairs": len(pairs), "spearman": rho, "median_kl_over_proxy": float(ratio.median()) if ratio.numel()
            else math.nan}


def mark_front(rows: Sequence[dict[str, Any]]) -> None:
    """``front``: no other row has fewer (or equal) bits and a smaller Δ; ``meets``: the issue's target."""
    for r in rows:
        d = r["paired"]["delta_pct"]
        r["front"] = r["bits"] < 15 and not any(
            o is not r and o["bits"] <= r["bits"] and o["paired"]["delta_pct"] < d for o in rows)
        r["meets_target"] = r["bits"] <= TARGET_BITS and d <= TARGET_PPL_PCT


def render(doc: dict[str, Any]) -> str:
    """The report as markdown."""
    lines = [f"# mxcomm tune: {doc['model']}, TP={doc['world_size']}", "",
             f"Command: `{doc['command']}`  ",
             f"Run: {doc['environment']['date']}, {doc['wall_seconds'] / 60:.1f} min "
             f"(sensitivity {doc['sensitivity_seconds'] / 60:.1f} min), codec backend "
             f"`{doc['environment']['codec_backend']}`.  ",
             f"Text: {doc['text']} ({doc['text_tokens']} tokens). Calibration (outlier channels, sensitivity, "
             f"end-to-end correction): tokens {doc['split']['calibration']} ({doc['split']['calibration_windows']} x "
             f"{doc['split']['window_tokens']}; per-module sensitivity on the first "
             f"{doc['split']['sensitivity_windows']})."
             + (f" Held-out evaluation: tokens {doc['heldout']['tokens']} ({doc['heldout']['windows']} x "
                f"{doc['split']['window_tokens']}), never seen by calibration or tuning." if "heldout" in doc else ""),
             "", f"Candidates per module: {len(doc['candidates'])}; proxy vs measured KL: "
             f"{json.dumps(doc['proxy_vs_measured'])}.", "",
             "## Plans (calibration windows)", "",
             "| budget | wire bits / elem | compression vs bf16 | predicted KL | measured KL | predicted Δ NLL "
             "| measured Δ NLL | measured Δ ppl | file |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for p in doc["plans"]:
        lines.append(f"| {p['budget']} | {p['bits']:.3f} | {p['compression_vs_bf16']:.2f}x | {p['predicted_kl']:.4f} "
                     f"| {p['measured_kl']:.4f} | {p['predicted_dnll']:+.4f} | {p['measured_dnll']:+.4f} "
                     f"| {p['measured_ppl_pct']:+.2f}% | {p['file']} |")
    if "heldout" in doc:
        lines += ["", "## Held-out windows (emulated TP, paired against the uncompressed bf16 wire)", "",
                  "| setting | wire bits / elem | compression vs bf16 | ppl | Δ ppl | Δ 95% interval | on the front "
                  "| meets target |", "|---|---:|---:|---:|---:|---:|---|---|"]
        for r in sorted(doc["heldout"]["rows"], key=lambda r: -r["bits"]):
            d = r["paired"]
            lines.append(f"| {r['label']} | {r['bits']:.3f} | {r['compression_vs_bf16']:.2f}x | {r['ppl']:.4f} "
                         f"| {d['delta_pct']:+.2f}% | [{d['ci95_low_pct']:+.2f}, {d['ci95_high_pct']:+.2f}] "
                         f"| {'yes' if r['front'] else ''} | {'**yes**' if r['meets_target'] else ''} |")
    for p in doc["plans"]:
        lines += ["", f"## Per-module choices: {p['budget']}", "",
                  "| module | setting | wire bits / elem | proxy KL | measured KL | measured Δ NLL |",
                  "|---|---|---:|---:|---:|---:|"]
        for m in p["modules"]:
            kl = "–" if m["kl"] is None else f"{m['kl']:.2e}"
            dnll = "–" if m["dnll"] is None else f"{m['dnll']:+.2e}"
            lines.append(f"| {m['module']} | {m['candidate']} | {m['bits']:.3f} | {m['proxy']:.2e} | {kl} | {dnll} |")
        if p["rounds"]:
            lines += ["", "Rounds: " + "; ".join(
                f"KL budget {r['budget_kl']:.4f} -> {r['bits']:.3f} bits, measured Δ NLL {r['measured_dnll']:+.4f}"
                for r in p["rounds"])]
    return "\n".join(lines) + "\n"
