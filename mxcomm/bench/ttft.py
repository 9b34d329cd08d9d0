"""Time to first token of the sharded model over a shaped link.

For each link rate a fresh network namespace is created, its loopback shaped
with ``tc ... tbf`` (:class:`mxcomm.bench.slowlink.ShapedNamespace`), and the
ranks run inside it (``python -m mxcomm.bench.ttft JOB.json``): prefill of a
fixed prompt to the first token, median over repetitions, with the share of
the time spent inside mxcomm collectives. Settings are interleaved
round-robin over the repetitions. A setting with ``compiled=True`` runs the
same sharded model under ``torch.compile`` (inductor), compiled during its
warmup repetitions (``warmup`` must be at least 1 for those).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mxcomm.bench.rank_setup import apply_setting, calibrate_planner, job_calibration, log_stderr, shard_model
from mxcomm.bench.settings import CommSetting
from mxcomm.bench.smollm2 import Assets, EvalSetupError, load_model, load_tokens, windows
from mxcomm.bench.wire_accounting import comm_accounting

Log = Callable[[str], None]


def ttft_rank(rank: int, world: int, job: dict) -> None:
    """Rank body of one TTFT run (one link rate)."""
    from mxcomm.bench.slowlink import qdisc_sent_bytes
    from mxcomm.collectives import track_comm

    assets = Assets.from_dict(job["assets"])
    model = load_model(assets)
    prompt = windows(load_tokens(assets), 1, job["prompt_tokens"])
    lead = rank == 0
    shaped = job["rate"] != "loopback"
    result: dict[str, Any] = {"rate": job["rate"], "rows": []}

    def prefill(forward: Callable[..., Any] = model) -> int:
        with torch.no_grad():
            out = forward(prompt, use_cache=True, logits_to_keep=1)
            return int(out.logits[0, -1].argmax())

    if lead and job["unsharded"]:
        times = []
        for rep in range(job["warmup"] + job["reps"]):
            t0 = time.perf_counter()
            token = prefill()
            if rep >= job["warmup"]:
                times.append(time.perf_counter() - t0)
        result["unsharded"] = {"ttft_s": statistics.median(times), "first_token": token, "times": times}
        log_stderr(f"[ttft {job['rate']}] unsharded, 1 process: {result['unsharded']['ttft_s']:.3f} s")
    calibration = job_calibration(model, assets, job, lead)
    dist.barrier()
    shard_model(model, world)
    planner = calibrate_planner(job["settings"], f"ttft {job['rate']}", lead)
    if planner is not None:
        result["calibration"] = planner
    settings = [CommSetting(**s) for s in job["settings"]]
    compiled_model = compiled_forward(model, sum(s.compiled for s in settings))
    runs: list[dict[str, Any]] = [{"times": [], "comm": [], "wire": [], "token": -1, "acct": {}} for _ in settings]
    # Settings are interleaved (round-robin over repetitions), so a burst of load from elsewhere on the
    # machine hits all settings alike instead of one setting's consecutive repetitions.
    for rep in range(job["warmup"] + job["reps"]):
        for setting, run in zip(settings, runs):
            apply_setting(model, setting, calibration)
            dist.barrier()
            qdisc_before = qdisc_sent_bytes() if lead and shaped else 0
            dist.barrier()
            t0 = time.perf_counter()
            with track_comm() as stats:
                token = prefill(compiled_model if setting.compiled else model)
            elapsed = time.perf_counter() - t0
            dist.barrier()
            if rep < job["warmup"]:
                if lead and setting.compiled:
                    log_stderr(f"[ttft {job['rate']} warmup] {setting.label:<32} {elapsed:7.3f} s (compiling)")
                continue
            run["times"].append(elapsed)
            run["comm"].append(stats.summary()["seconds"])
            run["acct"], run["token"] = comm_accounting(stats, 1), token
            if lead and shaped:
                # everything that crossed the shaped lo (all ranks, packet headers, barriers included)
                run["wire"].append(qdisc_sent_bytes() - qdisc_before)
            if lead:
                log_stderr(f"[ttft {job['rate']} rep {rep + 1 - job['warmup']}/{job['reps']}] {setting.label:<32} "
                           f"{elapsed:7.3f} s  comm {run['comm'][-1] / elapsed:5.1%}  "
                           f"algos {stats.summary()['algorithms']}")
    if lead:
        for setting, run in zip(settings, runs):
            ttft, comm = statistics.median(run["times"]), statistics.median(run["comm"])
            result["rows"].append({
                "label": setting.label, "setting": asdict(setting), "ttft_s": ttft, "times": run["times"],
                "comm_s": comm, "comm_share": comm / ttft, "first_token": run["token"],
                "qdisc_bytes": statistics.median(run["wire"]) if run["wire"] else None, **run["acct"],
            })
        Path(job["out"]).write_text(json.dumps(result, indent=1))


def compiled_forward(model: torch.nn.Module, settings: int) -> torch.nn.Module | None:
    """``torch.compile(model)`` for ``settings`` compiled settings (None for none), compiled on its first
    call per setting (the warmup runs): each setting is one set of Dynamo guards on the modules'
    communication settings, so Dynamo must keep that many graphs of the same forward."""
    if not settings:
        return None
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    setattr(config, name, max(getattr(config, name), 2 * settings))
    return torch.compile(model)


def _job_main(job_path: str) -> int:
    """``python -m mxcomm.bench.ttft JOB.json``: run one TTFT job (inside a namespace)."""
    from mxcomm.bench.launch import run_ranks

    job = json.loads(Path(job_path).read_text())
    run_ranks(ttft_rank, job["world_size"], (job,), threads=job["threads"], timeout_s=600)
    return 0


def run_ttft(
    assets: Assets,
    settings: Sequence[CommSetting],
    rates: Sequence[str],
    *,
    world_size: int = 3,
    prompt_tokens: int = 512,
    reps: int = 3,
    warmup: int = 1,
    threads: int = 1,
    timeout_s: float = 1800.0,
    log: Log = log_stderr,
    calibration: dict | None = None,
) -> list[dict]:
    """TTFT at each rate (``"loopback"``: unshaped, otherwise a ``tc`` rate such as ``100mbit``).

    A rate whose ranks fail or exceed ``timeout_s`` gets an ``error`` entry instead of rows.

    Raises:
        EvalSetupError: compiled settings with ``warmup < 1``.
    """
    if warmup < 1 and any(s.compiled for s in settings):
        raise EvalSetupError("compiled TTFT settings need at least one warmup repetition (it compiles the model)")
    jobs = [{"assets": assets.to_dict(), "prompt_tokens": prompt_tokens, "reps": reps, "warmup": warmup,
             "settings": [asdict(s) for s in settings], "unsharded": i == 0, "rate": rate,
             "world_size": world_size, "threads": threads, "calibration": calibration}
            for i, rate in enumerate(rates)]
    return run_per_rate("mxcomm.bench.ttft", jobs, timeout_s=timeout_s, log=log)


def run_per_rate(module: str, jobs: Sequence[dict], *, timeout_s: float, log: Log = log_stderr) -> list[dict]:
    """Run ``python -m MODULE JOB.json`` once per job, on the job's ``rate``, and collect each job's JSON result.

    ``"loopback"`` runs unshaped; any other rate (``100mbit``, ...) runs the command in a fresh network
    namespace whose loopback ``tc`` shapes to that rate (:class:`mxcomm.bench.slowlink.ShapedNamespace`).
    The command writes its result to ``job["out"]`` (set here). A rate whose ranks fail or exceed
    ``timeout_s`` gets ``{"rate": ..., "rows": [], "error": ...}`` instead.
    """
    from mxcomm.bench.slowlink import ShapedNamespace, SlowLinkUnavailable

    results = []
    with tempfile.TemporaryDirectory(prefix="mxcomm-eval-") as tmp:
        for i, job in enumerate(jobs):
            rate = job["rate"]
            out = Path(tmp) / f"result-{i}.json"
            job_path = Path(tmp) / f"job-{i}.json"
            job_path.write_text(json.dumps({**job, "out": str(out)}))
            cmd = [sys.executable, "-m", module, str(job_path)]
            env = dict(os.environ)
            package_root = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
            tag = module.rsplit(".", 1)[-1]
            try:
                if rate == "loopback":
                    log(f"[{tag}] unshaped loopback, {job['world_size']} ranks")
                    subprocess.run(cmd, env=env, check=True, timeout=timeout_s)
                else:
                    with ShapedNamespace(rate) as ns:
                        log(f"[{tag}] {rate}: ranks in network namespace {ns.name}, lo shaped by tc tbf rate {rate}")
                        subprocess.run([*ns.prefix(), *cmd], env=env, check=True, timeout=timeout_s)
                results.append(json.loads(out.read_text()))
            except (subprocess.SubprocessError, OSError, SlowLinkUnavailable) as exc:
                # Keep the other links' results; the failure is reported in the table and the JSON.
                log(f"[{tag}] {rate}: FAILED: {exc}")
                results.append({"rate": rate, "rows": [], "error": f"{type(exc).__name__}: {exc}"})
    return results


if __name__ == "__main__":
    if len(sys.argv) == 2:
        sys.exit(_job_main(sys.argv[1]))
    raise SystemExit("usage: python -m mxcomm.bench.ttft JOB.json (internal; use `mxcomm eval`)")
