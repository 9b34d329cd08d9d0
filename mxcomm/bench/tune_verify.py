"""A tuned plan on real ranks: its distributed perplexity and wire bits against the emulation it was tuned in.

``mxcomm tune --verify-plan PLAN``: ``world_size`` gloo ranks load the model, shard it with
:func:`mxcomm.tp.parallelize` and the plan (bf16 wire as the plan says), and run the held-out
windows, uncompressed (bf16 wire) and with the plan, under :func:`mxcomm.track_comm`; the same
windows run in the single-process emulation (:func:`mxcomm.bench.tuning.evaluate`). The plan's
per-token NLL must be bitwise the emulated one (the uncompressed baseline differs: a process
group's ring sums in an order of its own). The wire bits are those of the row-parallel
reductions the plan tunes (bf16 records and their outlier channels); a vocabulary-parallel
embedding's all-reduce (exact, compute dtype) is reported beside them.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mxcomm.bench.perplexity import paired_delta
from mxcomm.bench.rank_setup import log_stderr
from mxcomm.bench.smollm2 import EvalSetupError, windows
from mxcomm.bench.wire_accounting import comm_accounting


class _Records:
    """A subset of a ``track_comm`` block's records, with the same ``summary`` (for ``comm_accounting``)."""

    def __init__(self, records: list[Any]) -> None:
        from mxcomm.collectives.accounting import CommStats

        self._stats = CommStats(list(records))
        self.records = self._stats.records

    def summary(self) -> dict[str, Any]:
        return self._stats.summary()


def verify_rank(rank: int, world: int, job: dict[str, Any]) -> dict[str, Any] | None:
    """Rank body: shard with the plan (then without: the bf16 baseline), run the windows, keep NLL and records."""
    from torch.distributed.device_mesh import init_device_mesh

    from mxcomm.bench.tune_run import TuneRun, load
    from mxcomm.collectives import track_comm
    from mxcomm.tp import compress, load_plan, parallelize

    run = TuneRun(model=job["model"], text=Path(job["text"]),
                  cache_dir=Path(job["cache_dir"]) if job["cache_dir"] else None)
    model, tokens, _ = load(run, lambda _msg: None)
    data = windows(tokens, job["windows"], job["window_tokens"], job["start"])
    parallelize(model, init_device_mesh("cpu", (world,)), plan=load_plan(job["plan"]), src_data_rank=None)
    out: dict[str, Any] = {}
    for label, setting in (("plan", None), ("none", "none")):
        if setting == "none":  # every tuned module uncompressed on a bf16 wire; the others as in the plan
            compress(model, None, plan=job["baseline_plan"])
        nll, t0 = [], time.perf_counter()
        with torch.no_grad(), track_comm() as stats:
            for ids in data:
                logits = model(input_ids=ids[None], use_cache=False).logits[0, :-1].float()
                nll.append(torch.nn.functional.cross_entropy(logits, ids[1:], reduction="none").double())
        row = {"token_nll": torch.cat(nll), "seconds": time.perf_counter() - t0}
        tuned = [r for r in stats.records if r.dtype == "bfloat16" or r.op == "outlier_channels"]
        other = [r for r in stats.records if not (r.dtype == "bfloat16" or r.op == "outlier_channels")]
        row["rowwise"] = comm_accounting(_Records(tuned), data.shape[0])
        row["rowwise_reductions_per_forward"] = sum(r.op == "all_reduce" for r in tuned) / data.shape[0]
        row["other"] = [{"op": r.op, "algorithm": r.algorithm, "dtype": r.dtype, "numel": r.numel,
                         "bytes_sent": r.bytes_sent} for r in other[: len(other) // data.shape[0]]]
        out[label] = row
    return out if rank == 0 else None


def verify_plan(run: Any, plan_path: Path, out_dir: Path, *, command: str, log: Any = log_stderr) -> dict[str, Any]:
    """Run ``plan_path`` on ``run.world_size`` gloo ranks and in the emulation on the held-out windows; compare."""
    from mxcomm.bench.emulation import row_parallel_names
    from mxcomm.bench.launch import run_ranks
    from mxcomm.bench.tune_run import load
    from mxcomm.bench.tuning import assignment_of_plan, evaluate
    from mxcomm.tp import CommPlan, PlanEntry, load_plan, save_plan
    from mxcomm.tp.outliers import OutlierCalibration

    if not run.heldout_windows:
        raise EvalSetupError("--verify-plan needs --heldout-windows")
    model, tokens, model_desc = load(run, log)
    run.check(tokens.numel())
    data = windows(tokens, run.heldout_windows, run.window_tokens, run.heldout_start)
    plan = load_plan(plan_path)
    names = row_parallel_names(model)
    if run.outliers is None:
        raise EvalSetupError("--verify-plan needs --outliers (the calibration the plan's channels come from)")
    outliers = OutlierCalibration.load(run.outliers)
    assignment = assignment_of_plan(plan, names, outliers)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    emulated = {r["label"]: r for r in evaluate(model, data, {"none": {}, "plan": assignment}, outliers=outliers,
                                                  world_size=run.world_size, log=log, keep_token_nll=True)}
    log(f"[verify] emulation done ({time.perf_counter() - t0:.0f} s); {run.world_size} gloo ranks next")
    # the baseline: the plan's modules uncompressed on a bf16 wire, the others as the plan says
    baseline = CommPlan(model, [e if e.module not in names else PlanEntry(e.module, "none", "none", "bfloat16", ())
                                for e in plan.entries], "bf16 baseline of " + plan_path.name)
    with tempfile.TemporaryDirectory(prefix="mxcomm-verify-") as tmp:
        base_path = Path(tmp) / "baseline.json"
        save_plan(baseline, base_path)
        job = {"model": run.model, "text": str(run.text), "cache_dir": str(run.cache_dir) if run.cache_dir else None,
               "windows": run.heldout_windows, "window_tokens": run.window_tokens, "start": run.heldout_start,
               "plan": str(plan_path), "baseline_plan": str(base_path)}
        t1 = time.perf_counter()
        dist = run_ranks(verify_rank, run.world_size, (job,), threads=1, timeout_s=3600)[0]
    log(f"[verify] ranks done ({time.perf_counter() - t1:.0f} s)")
    plan_nll, base_nll = dist["plan"].pop("token_nll"), dist["none"].pop("token_nll")
    emu_plan, emu_base = emulated["plan"]["token_nll"], emulated["none"]["token_nll"]
    doc = {
        "command": command, "model": model_desc, "plan": str(plan_path), "world_size": run.world_size,
        "heldout": f"{run.heldout_start}..{run.heldout_start + data.numel() - 1}", "windows": run.heldout_windows,
        "distributed": {"plan_ppl": math.exp(float(plan_nll.mean())), "none_ppl": math.exp(float(base_nll.mean())),
                        "paired": paired_delta(plan_nll.tolist(), base_nll.tolist()),
                        "plan": dist["plan"], "none": dist["none"]},
        "emulated": {"plan_ppl": emulated["plan"]["ppl"], "none_ppl": emulated["none"]["ppl"],
                     "paired": emulated["plan"]["paired"], "plan_bits": emulated["plan"]["bits"]},
        "plan_token_nll_bitwise_equal": bool(torch.equal(plan_nll, emu_plan)),
        "plan_max_abs_token_nll_difference": float((plan_nll - emu_plan).abs().max()),
        "none_max_abs_token_nll_difference": float((base_nll - emu_base).abs().max()),
        "paired_vs_emulated_none": paired_delta(plan_nll.tolist(), emu_base.tolist()),
        "candidates": {n: c.label for n, c in assignment.items()},
    }
    (out_dir / "verify.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    log(f"[verify] plan: distributed ppl {doc['distributed']['plan_ppl']:.6f}, emulated {doc['emulated']['plan_ppl']:.6f}"
        f", bitwise equal per token: {doc['plan_token_nll_bitwise_equal']}; wire bits "
        f"{dist['plan']['rowwise']['wire_bits_per_element']:.4f} (emulated accounting "
        f"{doc['emulated']['plan_bits']:.4f})")
    return doc
