"""Generation under compressed tensor parallelism: time to first token and time per output token over a shaped link.

SmolLM2-135M is sharded with its own transformers TP plan (:func:`mxcomm.tp.parallelize`:
vocabulary-parallel embedding, column-parallel q/k/v and gate/up, row-parallel o_proj
and down_proj, LM head gathered) over ``world_size`` gloo ranks, and
``model.generate()`` runs greedy decoding of ``new_tokens`` tokens after a
``prompt_tokens``-token prompt, with the KV cache as usual. A streamer stamps
every token: TTFT = call to first token (the prefill), TPOT = mean time per
later token (the decode steps, whose all-reduces carry one token). The
:func:`mxcomm.track_comm` records are split at the first token, so each row says
which algorithm ran in each phase -- ``auto`` may compress the prefill's large
all-reduces and leave the decode's small ones uncompressed.

As for TTFT (:mod:`mxcomm.bench.ttft`), each link rate runs in a fresh network
namespace with a ``tc``-shaped loopback (``python -m mxcomm.bench.generate JOB.json``
inside it); settings are interleaved round-robin over the repetitions; the
planner is calibrated on the link when a setting runs ``auto``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mxcomm.bench.rank_setup import SettingEstimates, apply_setting, calibrate_planner, job_calibration, log_stderr
from mxcomm.bench.settings import CommSetting
from mxcomm.bench.smollm2 import Assets, load_model, load_tokens, windows
from mxcomm.bench.ttft import Log, run_per_rate

DEFAULT_GENERATE_RATES: tuple[str, ...] = ("loopback", "1gbit", "100mbit", "25mbit")
#: transformers' own all-reduce, mxcomm's uncompressed one (bf16 wire), the best <= 2 % perplexity setting
#: (docs/results.md), and the planner choosing per message
DEFAULT_GENERATE_SETTINGS: tuple[str, ...] = ("transformers", "none", "mxfp6_e2m3:two_shot", "mxfp6_e2m3:auto")
#: the row timed with transformers' own forwards (its ``dist.all_reduce`` in the compute dtype, no mxcomm)
TRANSFORMERS_LABEL = "transformers' own all-reduce"
GENERATE_JSON, GENERATE_MD = "generate.json", "generate.md"


class TokenClock:
    """A ``generate()`` streamer that stamps each token and notes how many mxcomm calls preceded it."""

    def __init__(self, stats: Any) -> None:
        self.stats, self.times, self.calls = stats, [], []

    def put(self, value: torch.Tensor) -> None:  # the prompt first, then one call per new token
        self.times.append(time.perf_counter())
        self.calls.append(len(self.stats.records))

    def end(self) -> None:
        pass


def phase_summary(records: Sequence[Any], steps: int) -> dict[str, Any]:
    """What the all-reduces of one phase (``steps`` forwards) did: algorithms and formats run, bytes, time."""
    from mxcomm.collectives.accounting import CommStats

    summary = CommStats(list(records)).summary()
    formats: dict[str, int] = {}
    for r in records:
        if r.op == "all_reduce":
            formats[r.format or "none"] = formats.get(r.format or "none", 0) + 1
    return {"forwards": steps, "calls": summary["calls"], "algorithms": summary["algorithms"], "formats": formats,
            "bytes_sent_per_forward": summary["bytes_sent"] / max(steps, 1),
            "logical_bytes_per_forward": summary["logical_bytes"] / max(steps, 1),
            "comm_s_per_forward": summary["seconds"] / max(steps, 1),
            "message_numel": sorted({r.numel for r in records if r.op == "all_reduce"})}


def shard_with_hf_plan(model: torch.nn.Module, world: int) -> None:
    """Shard with the model's own transformers TP plan, through mxcomm, uncompressed until a setting is applied."""
    from torch.distributed.device_mesh import init_device_mesh

    from mxcomm.tp import parallelize

    # every rank loaded identical weights: sliced locally, nothing broadcast over the link
    parallelize(model, init_device_mesh("cpu", (world,)), None, algorithm="none", comm_dtype=torch.bfloat16,
                src_data_rank=None)


def _label(setting: CommSetting | None) -> str:
    return TRANSFORMERS_LABEL if setting is None else setting.label


def _apply(model: torch.nn.Module, setting: CommSetting | None, calibration: Any) -> None:
    """``None``: transformers' own forwards (no mxcomm); else mxcomm's forwards with ``setting``."""
    from mxcomm.tp import compress, compressed_modules, uncompress

    if setting is None:
        uncompress(model)
        return
    if not compressed_modules(model):
        compress(model, None)
    apply_setting(model, setting, calibration)


def generate_rank(rank: int, world: int, job: dict) -> None:
    """Rank body of one generation run (one link rate)."""
    from mxcomm.collectives import track_comm

    assets = Assets.from_dict(job["assets"])
    model = load_model(assets)
    prompt = windows(load_tokens(assets), 1, job["prompt_tokens"])
    new_tokens, lead = job["new_tokens"], rank == 0
    calibration = job_calibration(model, assets, job, lead)
    shard_with_hf_plan(model, world)
    result: dict[str, Any] = {"rate": job["rate"], "rows": [], "world_size": world,
                              "prompt_tokens": job["prompt_tokens"], "new_tokens": new_tokens}
    planner = calibrate_planner(job["settings"], f"generate {job['rate']}", lead)
    if planner is not None:
        result["calibration"] = planner
    settings: list[CommSetting | None] = [None] if job.get("transformers_baseline") else []
    settings += [CommSetting(**s) for s in job["settings"]]
    estimates = SettingEstimates(settings)
    runs: list[dict[str, Any]] = [{"ttft": [], "tpot": [], "tokens": None, "agree": True, "prefill": None,
                                   "decode": None} for _ in settings]
    for rep in range(job["warmup"] + job["reps"]):
        for index, (setting, run) in enumerate(zip(settings, runs)):  # interleaved: load bursts hit all alike
            _apply(model, setting, calibration)
            dist.barrier()
            with torch.no_grad(), track_comm() as stats, estimates.active(index):
                clock = TokenClock(stats)
                t0 = time.perf_counter()
                out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, do_sample=False, streamer=clock,
                                     pad_token_id=model.config.eos_token_id)
            tokens = out[0, prompt.shape[1]:].tolist()
            everyone: list[Any] = [None] * world
            dist.all_gather_object(everyone, tokens)
            if rep < job["warmup"]:
                continue
            first, last = clock.times[1], clock.times[-1]
            run["ttft"].append(first - t0)
            run["tpot"].append((last - first) / (new_tokens - 1))
            run["tokens"], run["agree"] = tokens, run["agree"] and all(t == tokens for t in everyone)
            run["prefill"] = phase_summary(stats.records[: clock.calls[1]], 1)
            run["decode"] = phase_summary(stats.records[clock.calls[1]:], new_tokens - 1)
            if lead:
                log_stderr(f"[generate {job['rate']} rep {rep + 1 - job['warmup']}/{job['reps']}] {_label(setting):<28} "
                           f"TTFT {run['ttft'][-1]:6.3f} s  TPOT {run['tpot'][-1] * 1e3:7.1f} ms  "
                           f"prefill {run['prefill']['algorithms']}  decode {run['decode']['algorithms']}")
    if lead:
        for setting, run in zip(settings, runs):
            result["rows"].append({
                "label": _label(setting),
                "setting": asdict(setting) if setting else {"fmt": None, "algorithm": "transformers"},
                "ttft_s": statistics.median(run["ttft"]), "tpot_s": statistics.median(run["tpot"]),
                "ttft_times": run["ttft"], "tpot_times": run["tpot"], "tokens": run["tokens"],
                "ranks_agree": run["agree"], "prefill": run["prefill"], "decode": run["decode"],
            })
        Path(job["out"]).write_text(json.dumps(result, indent=1))


def _job_main(job_path: str) -> int:
    """``python -m mxcomm.bench.generate JOB.json``: run one generation job (inside a namespace)."""
    from mxcomm.bench.launch import run_ranks

    job = json.loads(Path(job_path).read_text())
    run_ranks(generate_rank, job["world_size"], (job,), threads=job["threads"], timeout_s=3600)
    return 0


def run_generate(
    assets: Assets,
    settings: Sequence[CommSetting],
    rates: Sequence[str],
    *,
    world_size: int = 3,
    prompt_tokens: int = 512,
    new_tokens: int = 64,
    reps: int = 3,
    warmup: int = 1,
    threads: int = 1,
    timeout_s: float = 3600.0,
    calibration: dict | None = None,
    transformers_baseline: bool = False,
    log: Log = log_stderr,
) -> list[dict]:
    """TTFT and TPOT of greedy generation at each rate (``"loopback"``: unshaped; else a ``tc`` rate).

    ``calibration``: an outlier calibration (``OutlierCalibration.to_dict()``), needed by settings
    with outlier channels. ``transformers_baseline``: also time transformers' own forwards (first row).
    A rate whose ranks fail or time out gets an ``error`` entry instead of rows.
    """
    jobs = [{"assets": assets.to_dict(), "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "reps": reps,
             "warmup": warmup, "settings": [asdict(s) for s in settings], "rate": rate, "world_size": world_size,
             "threads": threads, "calibration": calibration, "transformers_baseline": transformers_baseline}
            for rate in rates]
    return run_per_rate("mxcomm.bench.generate", jobs, timeout_s=timeout_s, log=log)


def _algorithms(phase: dict | None, per: int = 1) -> str:
    """``algorithm calls`` of a phase (per ``per`` forwards); ``-`` when mxcomm ran none."""
    if not phase or not phase["algorithms"]:
        return "-"
    return ", ".join(f"{alg} {n / per:g}" for alg, n in sorted(phase["algorithms"].items()))


def generate_table(results: Sequence[dict]) -> str:
    """The markdown table of :func:`run_generate`'s results (speedups against each link's ``none`` row)."""
    lines = ["| link | setting | TTFT (s) | TTFT speedup vs none | TPOT (ms) | TPOT vs none | prefill: algorithm "
             "calls | decode: algorithm calls / token | sent / decode token / rank | tokens = none's | ranks agree |",
             "|---|---|---:|---:|---:|---:|---|---|---:|---|---|"]
    for res in results:
        if res.get("error"):
            lines.append(f"| {res['rate']} | FAILED: {res['error']} | | | | | | | | | |")
            continue
        none = next((r for r in res["rows"] if r["setting"]["fmt"] is None and r["setting"]["algorithm"] == "none"),
                    None)
        for row in res["rows"]:
            decode = _algorithms(row["decode"], row["decode"]["forwards"] if row["decode"] else 1)
            speedup = f"{none['ttft_s'] / row['ttft_s']:.2f}x" if none else "-"
            tpot_ratio = f"{none['tpot_s'] / row['tpot_s']:.3f}x" if none else "-"
            same = "-" if none is None else ("yes" if row["tokens"] == none["tokens"] else "no")
            sent = row["decode"]["bytes_sent_per_forward"] if row["decode"] else 0
            lines.append(f"| {res['rate']} | {row['label']} | {row['ttft_s']:.3f} | {speedup} | "
                         f"{row['tpot_s'] * 1e3:.1f} | {tpot_ratio} | {_algorithms(row['prefill'])} | {decode} | "
                         f"{sent / 1024:.1f} KiB | {same} | {'yes' if row['ranks_agree'] else 'NO'} |")
    return "\n".join(lines)


def write_generate_report(results: Sequence[dict], out_dir: Path, command: str, meta: dict[str, Any]) -> None:
    """``generate.json`` (everything measured) and ``generate.md`` (the table) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / GENERATE_JSON).write_text(json.dumps({"command": command, **meta, "results": list(results)},
                                                    indent=1) + "\n")
    first = next((r for r in results if not r.get("error")), {})
    text = [
        "# Generation under compressed tensor parallelism", "",
        f"Command: `{command}`  ",
        f"SmolLM2-135M, TP={first.get('world_size', meta.get('world_size'))} (transformers' own TP plan through "
        f"`mxcomm.tp.parallelize`), greedy `generate()`: {meta.get('prompt_tokens')}-token prompt, "
        f"{meta.get('new_tokens')} new tokens, KV cache; median of {meta.get('reps')} repetitions "
        f"(after {meta.get('warmup')} warm-up), settings interleaved.", "",
        "TTFT = `generate()` call to the first token (the prefill). TPOT = mean time per later token (the decode "
        "steps, one token per all-reduce). `none` = mxcomm's uncompressed all-reduce (bf16 wire), the reference "
        "of the ratios; `TPOT vs none` = none's TPOT / this TPOT (above 1: faster). "
        f"`{TRANSFORMERS_LABEL}` = transformers' forwards untouched (a plain `dist.all_reduce` in fp32, no "
        "descriptor exchange, not in `track_comm`). The algorithm columns count the mxcomm all-reduces per phase "
        "(`track_comm`), so `auto` shows what the planner chose for the prefill's and the decode's messages.", "",
        generate_table(results), "",
    ]
    (out_dir / GENERATE_MD).write_text("\n".join(text))


if __name__ == "__main__":
    if len(sys.argv) == 2:
        sys.exit(_job_main(sys.argv[1]))
    raise SystemExit("usage: python -m mxcomm.bench.generate JOB.json (internal; use `mxcomm bench-generate`)")
