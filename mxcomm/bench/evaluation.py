"""End-to-end evaluation on SmolLM2-135M: perplexity and time-to-first-token under compressed TP.

``mxcomm eval`` (mxcomm/cli/evaluate.py) drives two phases:

* **Perplexity.** One spawned gloo group of ``world_size`` ranks loads the
  model, shards it with :func:`mxcomm.tp.parallelize_llama` once, and then
  evaluates every communication setting in turn by switching the format in
  place (:func:`mxcomm.tp.set_comm_format`). Rank 0 also evaluates the
  unsharded model first. Per setting: perplexity over fixed windows of the
  text, and the accounting of :func:`mxcomm.collectives.track_comm` (calls,
  bytes, measured ratio).
* **Pareto** (outlier-robust compression). The same perplexity run for a
  few low-bit formats, each plain, with a random Hadamard rotation, with
  ``k`` calibrated outlier channels per row-parallel module sent in bf16, and
  with both. The outlier channels are calibrated on text windows that follow
  the evaluation windows (:func:`mxcomm.tp.calibrate_outliers` on the
  unsharded model, rank 0, broadcast) and saved as JSON with the results.
* **TTFT.** For each link rate a fresh network namespace is created, its
  loopback shaped with ``tc ... tbf`` (the namespace utility of
  :mod:`mxcomm.bench.slowlink`), and the
  ranks run inside it: prefill of a fixed prompt to the first token, median
  over repetitions, with the share of the time spent inside mxcomm
  collectives.

The model computes in float32; the row-parallel partial sums travel in
bfloat16 (``comm_dtype``), the setting the paper compares against, so ``none``
is a bf16 all-reduce and every ratio is against bf16.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mxcomm.bench.smollm2 import Assets, EvalSetupError, load_model, load_tokens, windows
from mxcomm.formats import BlockFormat, get_format
from mxcomm.formats.builtins import CUSTOM_FORMATS, NVFP4, OCP_FORMATS

Log = Callable[[str], None]

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
DEFAULT_PPL_FORMATS: tuple[str, ...] = tuple(f.name for f in (*OCP_FORMATS, NVFP4, *CUSTOM_FORMATS))
DEFAULT_TWO_SHOT_FORMATS: tuple[str, ...] = ("mxint8", "mxfp8_e4m3", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4_e2m1")
DEFAULT_PARETO_FORMATS: tuple[str, ...] = (
    "int3", "int4_b64", "mxfp4_e2m1", "int4", "nvfp4", "fp5_e2m2", "mxfp6_e2m3",
)
# formats whose rotated + outlier-channel variant is also run two-shot (what the TTFT run uses)
DEFAULT_PARETO_TWO_SHOT: tuple[str, ...] = ("mxfp4_e2m1", "int4")
DEFAULT_ROTATION_SEED = 20241115
DEFAULT_TTFT_SETTINGS: tuple[str, ...] = (
    "mxint8:two_shot", "mxfp8_e4m3:two_shot", "mxfp6_e2m3:two_shot", "mxfp4_e2m1:two_shot",
    "mxfp4_e2m1:allgather", "mxint8:auto",
)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class CommSetting:
    """One way of running the row-parallel all-reduces: format (None: uncompressed), rounding, algorithm."""

    fmt: str | None
    rounding: str = "rne"
    algorithm: str = "allgather"
    comm_dtype: str = "bfloat16"
    scale_mode: str | None = None  # None: the format's own (OCP "floor" for E8M0 scales)
    rotation_seed: int | None = None  # random Hadamard rotation of every block (None: none)
    outliers: int = 0  # calibrated outlier channels per module sent uncompressed

    @property
    def label(self) -> str:
        if self.fmt is None:
            return f"none ({self.comm_dtype} wire)"
        mode = f" scale={self.scale_mode}" if self.scale_mode else ""
        rot = " +rot" if self.rotation_seed is not None else ""
        outl = f" +{self.outliers}ch" if self.outliers else ""
        return f"{self.fmt} {self.rounding} {self.algorithm}{mode}{rot}{outl}"

    @property
    def variant(self) -> str:
        """plain / rotation / outliers / rotation+outliers."""
        parts = (["rotation"] if self.rotation_seed is not None else []) + (["outliers"] if self.outliers else [])
        variant = "+".join(parts) or "plain"
        return f"{variant} (two-shot)" if self.algorithm == "two_shot" else variant

    def block_format(self) -> BlockFormat | None:
        if self.fmt is None:
            return None
        fmt = get_format(self.fmt).with_options(rounding=self.rounding)
        if self.scale_mode:
            fmt = fmt.with_options(scale_mode=self.scale_mode)
        return fmt.with_options(rotation_seed=self.rotation_seed) if self.rotation_seed is not None else fmt


def ppl_settings(
    formats: Sequence[str],
    roundings: Sequence[str],
    algorithm: str = "allgather",
    two_shot_formats: Sequence[str] = (),
) -> list[CommSetting]:
    """The perplexity table's rows: none (bf16 and fp32 wire), then formats x roundings, then two-shot rows."""
    rows = [CommSetting(None, algorithm="none"), CommSetting(None, algorithm="none", comm_dtype="float32")]
    for name in formats:
        for rounding in roundings:
            rows.append(CommSetting(get_format(name).name, rounding, algorithm))
    for name in two_shot_formats:
        if algorithm != "two_shot":
            rows.append(CommSetting(get_format(name).name, "rne", "two_shot"))
    return rows


def pareto_settings(
    formats: Sequence[str],
    outlier_ks: Sequence[int],
    rotation_seed: int = DEFAULT_ROTATION_SEED,
    two_shot_formats: Sequence[str] = (),
) -> list[CommSetting]:
    """none (bf16), then per format: plain, rotated, k outlier channels, rotated + k (one-shot, rne);
    then rotated (+ the largest k) two-shot rows for ``two_shot_formats``."""
    rows = [CommSetting(None, algorithm="none")]
    for name in formats:
        fmt = get_format(name).name
        rows.append(CommSetting(fmt))
        rows.append(CommSetting(fmt, rotation_seed=rotation_seed))
        for k in outlier_ks:
            rows.append(CommSetting(fmt, outliers=k))
            rows.append(CommSetting(fmt, rotation_seed=rotation_seed, outliers=k))
    for name in two_shot_formats:
        rows.append(CommSetting(get_format(name).name, algorithm="two_shot", rotation_seed=rotation_seed,
                                outliers=max(outlier_ks, default=0)))
    return rows


# -- rank side -------------------------------------------------------------------------------------


def _shard(model: torch.nn.Module, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    from mxcomm.tp.llama import parallelize_llama

    mesh = init_device_mesh("cpu", (world,))
    # Every rank loaded identical weights: slice locally instead of broadcasting them over the link.
    parallelize_llama(model, mesh, None, algorithm="none", comm_dtype=torch.bfloat16, src_data_rank=None)


def _apply_setting(model: torch.nn.Module, setting: CommSetting, calibration: Any = None) -> None:
    from mxcomm.tp.outliers import set_outlier_channels
    from mxcomm.tp.style import set_comm_format

    set_comm_format(model, setting.block_format(), algorithm=setting.algorithm,
                    comm_dtype=DTYPES[setting.comm_dtype])
    if setting.outliers and calibration is None:
        raise EvalSetupError(f"{setting.label} needs an outlier calibration")
    set_outlier_channels(model, calibration.top(setting.outliers) if setting.outliers else None)


def _calibration(model: torch.nn.Module, assets: Assets, job: dict, lead: bool) -> Any:
    """The job's outlier calibration: given (JSON), or measured by rank 0 and broadcast; None if not needed."""
    from mxcomm.tp.outliers import OutlierCalibration, calibrate_outliers

    if job.get("calibration") is not None:
        return OutlierCalibration.from_dict(job["calibration"])
    spec = job.get("calibrate")
    if not spec:
        return None
    box: list[Any] = [None]
    if lead:
        t0 = time.perf_counter()
        data = windows(load_tokens(assets), spec["windows"], spec["window_tokens"], spec["start"])
        cal = calibrate_outliers(
            model, list(data), max_channels=spec["max_channels"], forward=lambda m, w: m.model(input_ids=w[None]),
            source=f"{assets.text.name} tokens {spec['start']}..{spec['start'] + data.numel() - 1} "
                   f"({spec['windows']} x {spec['window_tokens']}, after the evaluation windows), unsharded model",
        )
        box[0] = cal.to_dict()
        _stderr(f"[calibration] {len(cal.channels)} modules, {cal.tokens} tokens, top {cal.max_k} channels each "
                f"({time.perf_counter() - t0:.1f} s)")
    dist.broadcast_object_list(box, src=0)
    return OutlierCalibration.from_dict(box[0])


def _token_nll(model: torch.nn.Module, data: torch.Tensor, with_logits: bool) -> torch.Tensor:
    """Next-token NLL of every predicted token of the windows, float64 (empty unless ``with_logits``)."""
    out = []
    with torch.no_grad():
        for window in data:
            hidden = model.model(input_ids=window[None]).last_hidden_state
            if with_logits:
                logits = model.lm_head(hidden)[0, :-1].float()
                out.append(torch.nn.functional.cross_entropy(logits, window[1:], reduction="none").double())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _window_nll(model: torch.nn.Module, data: torch.Tensor, with_logits: bool) -> tuple[float, int]:
    """Summed next-token NLL over the windows (only where ``with_logits``: rank 0 or unsharded)."""
    nll = _token_nll(model, data, with_logits)
    return float(nll.sum()), nll.numel()


def paired_delta(token_nll: Sequence[float], base_nll: Sequence[float]) -> dict[str, float]:
    """Δ perplexity vs the baseline with a 95% interval from the paired per-token NLL differences.

    ``exp(mean(d)) - 1`` is exactly ``ppl / ppl_base - 1``; the interval treats the per-token
    differences as independent (they are not quite: tokens of a window share context), so it is
    a guide to the noise of a 2k-token evaluation, not a rigorous bound.
    """
    d = torch.as_tensor(token_nll, dtype=torch.float64) - torch.as_tensor(base_nll, dtype=torch.float64)
    if d.numel() < 2:
        raise EvalSetupError("paired_delta needs at least 2 tokens")
    mean, se = float(d.mean()), float(d.std() / math.sqrt(d.numel()))
    return {"delta_pct": 100 * math.expm1(mean), "ci95_low_pct": 100 * math.expm1(mean - 1.96 * se),
            "ci95_high_pct": 100 * math.expm1(mean + 1.96 * se), "tokens": d.numel()}


# How many times a rank sends each element of its tensor: one-shot to every peer; ring and two-shot
# 2(n-1)/n. Wire bits per element = 8 * bytes sent / (numel * this), the same for every algorithm.
def _sends_per_element(algorithm: str, n: int) -> float:
    return float(n - 1) if algorithm == "allgather" else 2 * (n - 1) / n


def _accounting(stats: Any, forwards: int) -> dict[str, Any]:
    summary = stats.summary()
    reduces = [r for r in stats.records if r.op == "all_reduce"]
    compressed = [r for r in reduces if r.algorithm != "none"]
    outliers = [r for r in stats.records if r.op == "outlier_channels"]
    element_sends = sum(r.numel * _sends_per_element(r.algorithm, r.world_size) for r in reduces)
    wire_bits = 8 * summary["bytes_sent"] / element_sends if element_sends else None
    return {
        "calls_per_forward": len(reduces) / forwards,
        "compressed_calls_per_forward": len(compressed) / forwards,
        "outlier_bytes_per_forward": sum(r.bytes_sent for r in outliers) / forwards,
        # everything this rank sent (descriptors, outlier channels) per element the algorithm moves
        "wire_bits_per_element": wire_bits,
        "compression_vs_bf16": 16 / wire_bits if wire_bits else None,
        "algorithms": summary["algorithms"],
        "bytes_sent_per_forward": summary["bytes_sent"] / forwards,
        "bytes_received_per_forward": summary["bytes_received"] / forwards,
        "logical_bytes_per_forward": summary["logical_bytes"] / forwards,
        "ratio": summary["ratio"],
        "comm_seconds": summary["seconds"],
        "message": {"numel": stats.records[0].numel, "dtype": stats.records[0].dtype} if stats.records else None,
    }


def ppl_rank(rank: int, world: int, job: dict) -> None:
    """Rank body of the perplexity phase (called through :func:`mxcomm.bench.launch.run_ranks`)."""
    from mxcomm.collectives import track_comm

    assets = Assets(**{k: Path(v) if k != "num_tokens" else v for k, v in job["assets"].items()})
    model = load_model(assets)
    data = windows(load_tokens(assets), job["windows"], job["window_tokens"], job.get("start", 0))
    settings = [CommSetting(**s) for s in job["settings"]]
    lead = rank == 0
    rows: list[dict] = []
    if lead and job["unsharded"]:
        t0 = time.perf_counter()
        nll, count = _window_nll(model, data, True)
        rows.append({"label": "unsharded (1 process)", "setting": None, "nll": nll, "tokens": count,
                     "ppl": math.exp(nll / count), "seconds": time.perf_counter() - t0})
        _stderr(f"[ppl] unsharded: ppl {rows[-1]['ppl']:.4f} ({rows[-1]['seconds']:.1f} s)")
    calibration = _calibration(model, assets, job, lead)
    if lead and calibration is not None and job.get("calibration_out"):
        calibration.save(job["calibration_out"])
    dist.barrier()
    _shard(model, world)
    started = time.perf_counter()
    for i, setting in enumerate(settings):
        _apply_setting(model, setting, calibration)
        t0 = time.perf_counter()
        with track_comm() as stats:
            token_nll = _token_nll(model, data, lead)
        nll, count = float(token_nll.sum()), token_nll.numel()
        seconds = time.perf_counter() - t0
        if not lead:
            continue
        fmt = setting.block_format()
        row = {
            "label": setting.label,
            "setting": asdict(setting),
            "variant": setting.variant,
            "bits_per_element": fmt.bits_per_element if fmt else 8.0 * DTYPES[setting.comm_dtype].itemsize,
            "nll": nll,
            "tokens": count,
            "ppl": math.exp(nll / count),
            "seconds": seconds,
            **_accounting(stats, data.shape[0]),
        }
        if job.get("token_nll"):
            row["token_nll"] = token_nll.tolist()
        rows.append(row)
        elapsed = time.perf_counter() - started
        eta = elapsed / (i + 1) * (len(settings) - i - 1)
        _stderr(
            f"[ppl {i + 1}/{len(settings)}] {setting.label:<32} ppl {row['ppl']:8.4f}  ratio {row['ratio']:5.2f}  "
            f"{row['compressed_calls_per_forward']:.0f} compressed all-reduces/forward  {seconds:5.1f} s  "
            f"(eta {eta / 60:.1f} min)"
        )
    if lead:
        Path(job["out"]).write_text(json.dumps(rows, indent=1))


def ttft_rank(rank: int, world: int, job: dict) -> None:
    """Rank body of one TTFT run (one link rate)."""
    from mxcomm.bench.slowlink import qdisc_sent_bytes
    from mxcomm.collectives import calibrate, track_comm

    assets = Assets(**{k: Path(v) if k != "num_tokens" else v for k, v in job["assets"].items()})
    model = load_model(assets)
    prompt = windows(load_tokens(assets), 1, job["prompt_tokens"])
    lead = rank == 0
    shaped = job["rate"] != "loopback"
    result: dict[str, Any] = {"rate": job["rate"], "rows": []}

    def prefill() -> int:
        with torch.no_grad():
            out = model(prompt, use_cache=True, logits_to_keep=1)
            return int(out.logits[0, -1].argmax())

    if lead and job["unsharded"]:
        times = []
        for rep in range(job["warmup"] + job["reps"]):
            t0 = time.perf_counter()
            token = prefill()
            if rep >= job["warmup"]:
                times.append(time.perf_counter() - t0)
        result["unsharded"] = {"ttft_s": statistics.median(times), "first_token": token, "times": times}
        _stderr(f"[ttft {job['rate']}] unsharded, 1 process: {result['unsharded']['ttft_s']:.3f} s")
    calibration = _calibration(model, assets, job, lead)
    dist.barrier()
    _shard(model, world)
    cal_formats = sorted({s["fmt"] for s in job["settings"] if s["fmt"] and s["algorithm"] == "auto"})
    if cal_formats:
        t0 = time.perf_counter()
        # max_probe_bytes = the first probe size: calibrate() grows its probe while the rank-local time is
        # short, and ranks that disagree on that would issue different collectives and hang.
        cost = calibrate(formats=cal_formats, dtype=torch.bfloat16, max_probe_bytes=256 << 10)
        result["calibration"] = {"alpha_s": cost.alpha, "beta_s_per_byte": cost.beta,
                                 "gbit_per_s_per_rank": 8e-9 / cost.beta, "seconds": time.perf_counter() - t0}
        if lead:
            _stderr(f"[ttft {job['rate']}] calibrated: alpha {cost.alpha * 1e6:.0f} us, "
                    f"{8e-9 / cost.beta:.3f} Gbit/s per rank")
    settings = [CommSetting(**s) for s in job["settings"]]
    runs: list[dict[str, Any]] = [{"times": [], "comm": [], "wire": [], "token": -1, "acct": {}} for _ in settings]
    # Settings are interleaved (round-robin over repetitions), so a burst of load from elsewhere on the
    # machine hits all settings alike instead of one setting's consecutive repetitions.
    for rep in range(job["warmup"] + job["reps"]):
        for setting, run in zip(settings, runs):
            _apply_setting(model, setting, calibration)
            dist.barrier()
            qdisc_before = qdisc_sent_bytes() if lead and shaped else 0
            dist.barrier()
            t0 = time.perf_counter()
            with track_comm() as stats:
                token = prefill()
            elapsed = time.perf_counter() - t0
            dist.barrier()
            if rep < job["warmup"]:
                continue
            run["times"].append(elapsed)
            run["comm"].append(stats.summary()["seconds"])
            run["acct"], run["token"] = _accounting(stats, 1), token
            if lead and shaped:
                # everything that crossed the shaped lo (all ranks, packet headers, barriers included)
                run["wire"].append(qdisc_sent_bytes() - qdisc_before)
            if lead:
                _stderr(f"[ttft {job['rate']} rep {rep + 1 - job['warmup']}/{job['reps']}] {setting.label:<32} "
                        f"{elapsed:7.3f} s  comm {run['comm'][-1] / elapsed:5.1%}  algos {stats.summary()['algorithms']}")
    if lead:
        for setting, run in zip(settings, runs):
            ttft, comm = statistics.median(run["times"]), statistics.median(run["comm"])
            result["rows"].append({
                "label": setting.label, "setting": asdict(setting), "ttft_s": ttft, "times": run["times"],
                "comm_s": comm, "comm_share": comm / ttft, "first_token": run["token"],
                "qdisc_bytes": statistics.median(run["wire"]) if run["wire"] else None, **run["acct"],
            })
    if lead:
        Path(job["out"]).write_text(json.dumps(result, indent=1))


# -- single-process emulation (the reference numbers) ---------------------------------------


class _EmulatedRowParallel(torch.nn.Module):
    """Stands in for a row-parallel Linear in one process: what the TP ranks compute, without a group.

    The input features are cut into ``world`` contiguous slices (rank r's
    shard), each partial product is cast to the wire dtype, encoded and
    decoded one-shot style, and the decoded partials are summed in fp32 in
    rank order and cast to the wire dtype once -- the arithmetic of
    ``mxcomm.all_reduce(algorithm="allgather")`` -- then back to fp32.
    """

    def __init__(self, linear: torch.nn.Linear, world: int, fmt: BlockFormat | None, wire: torch.dtype) -> None:
        super().__init__()
        self.linear, self.world, self.fmt, self.wire = linear, world, fmt, wire

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from mxcomm.kernels import decode, encode

        k = x.shape[-1] // self.world
        w = self.linear.weight
        total = None
        for r in range(self.world):
            part = torch.nn.functional.linear(x[..., r * k : (r + 1) * k], w[:, r * k : (r + 1) * k])
            part = part.to(self.wire)
            if self.fmt is not None:
                part = decode(encode(part.reshape(-1), self.fmt), dtype=torch.float32).view(part.shape)
            part = part.float()
            total = part if total is None else total + part
        assert total is not None
        return total.to(self.wire).to(x.dtype)


def emulate_perplexity(
    assets: Assets,
    settings: Sequence[CommSetting],
    *,
    world_size: int = 3,
    num_windows: int = 4,
    window_tokens: int = 512,
    log: Log = _stderr,
) -> dict[str, float]:
    """Perplexity per setting label from the one-process emulation (one-shot settings only)."""
    from mxcomm.tp.llama import ROWWISE_PROJECTIONS, find_layers

    model = load_model(assets)
    data = windows(load_tokens(assets), num_windows, window_tokens)
    _, layers = find_layers(model)
    out: dict[str, float] = {}
    for i, setting in enumerate(settings):
        if setting.algorithm not in ("allgather", "none"):
            continue
        fmt = setting.block_format() if setting.algorithm != "none" else None
        wire = DTYPES[setting.comm_dtype]
        for layer in layers:
            for proj in ROWWISE_PROJECTIONS:
                parent, name = proj.split(".")
                mod = getattr(layer, parent)
                linear = getattr(mod, name)
                linear = linear.linear if isinstance(linear, _EmulatedRowParallel) else linear
                setattr(mod, name, _EmulatedRowParallel(linear, world_size, fmt, wire))
        t0 = time.perf_counter()
        nll, count = _window_nll(model, data, True)
        out[setting.label] = math.exp(nll / count)
        log(f"[emulation {i + 1}/{len(settings)}] {setting.label:<32} ppl {out[setting.label]:8.4f}  "
            f"{time.perf_counter() - t0:5.1f} s")
    return out


# -- orchestration (parent side) -------------------------------------------------------------------


def _assets_json(assets: Assets) -> dict:
    return {"directory": str(assets.directory), "gguf": str(assets.gguf), "text": str(assets.text),
            "num_tokens": assets.num_tokens}


def run_perplexity(
    assets: Assets,
    settings: Sequence[CommSetting],
    *,
    world_size: int = 3,
    num_windows: int = 4,
    window_tokens: int = 512,
    unsharded: bool = True,
    threads: int = 1,
    calibration: dict | None = None,
    calibrate: dict | None = None,
    calibration_out: Path | None = None,
    start: int = 0,
    paired: bool = False,
) -> list[dict]:
    """Perplexity rows of ``settings`` (see :func:`ppl_rank`).

    Settings with outlier channels need ``calibration`` (an
    :meth:`OutlierCalibration.to_dict`) or ``calibrate`` (``windows``,
    ``window_tokens``, ``start``, ``max_channels``: measure it on the
    unsharded model); a measured one is written to ``calibration_out``.
    The windows start at token ``start``. ``paired``: every row gets
    :func:`paired_delta` against the bf16 ``none`` row (which must be among
    the settings) under ``"paired"``.
    """
    from mxcomm.bench.launch import run_ranks

    windows(torch.zeros(assets.num_tokens, dtype=torch.long), num_windows, window_tokens, start)  # validate early
    if calibrate:
        windows(torch.zeros(assets.num_tokens, dtype=torch.long), calibrate["windows"], calibrate["window_tokens"],
                calibrate["start"])
    if any(s.outliers for s in settings) and not (calibration or calibrate):
        raise EvalSetupError("settings with outlier channels need a calibration (or calibrate=...)")
    with tempfile.TemporaryDirectory(prefix="mxcomm-eval-") as tmp:
        out = Path(tmp) / "ppl.json"
        job = {"assets": _assets_json(assets), "windows": num_windows, "window_tokens": window_tokens,
               "settings": [asdict(s) for s in settings], "unsharded": unsharded, "out": str(out),
               "calibration": calibration, "calibrate": calibrate, "start": start, "token_nll": paired,
               "calibration_out": str(calibration_out) if calibration_out else None}
        run_ranks(ppl_rank, world_size, (job,), threads=threads, timeout_s=900)
        rows = json.loads(out.read_text())
    if paired:
        base = next((r for r in rows if r.get("setting") and r["setting"]["fmt"] is None
                     and r["setting"]["comm_dtype"] == "bfloat16"), None)
        if base is None:
            raise EvalSetupError("paired deltas need the bf16 'none' setting")
        for r in rows:
            if "token_nll" in r:
                r["paired"] = paired_delta(r["token_nll"], base["token_nll"])
        for r in rows:
            r.pop("token_nll", None)
    return rows


def _ttft_job_main(job_path: str) -> int:
    """``python -m mxcomm.bench.evaluation ttft JOB.json``: run one TTFT job (inside a namespace)."""
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
    log: Log = _stderr,
    calibration: dict | None = None,
) -> list[dict]:
    """TTFT at each rate (``"loopback"``: unshaped, otherwise a ``tc`` rate such as ``100mbit``).

    A rate whose ranks fail or exceed ``timeout_s`` gets an ``error`` entry instead of rows.
    """
    from mxcomm.bench.slowlink import ShapedNamespace

    results = []
    with tempfile.TemporaryDirectory(prefix="mxcomm-eval-") as tmp:
        for i, rate in enumerate(rates):
            out = Path(tmp) / f"ttft-{i}.json"
            job = {"assets": _assets_json(assets), "prompt_tokens": prompt_tokens, "reps": reps, "warmup": warmup,
                   "settings": [asdict(s) for s in settings], "unsharded": i == 0, "rate": rate,
                   "world_size": world_size, "threads": threads, "out": str(out), "calibration": calibration}
            job_path = Path(tmp) / f"job-{i}.json"
            job_path.write_text(json.dumps(job))
            cmd = [sys.executable, "-m", "mxcomm.bench.evaluation", "ttft", str(job_path)]
            env = dict(os.environ)
            package_root = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
            try:
                if rate == "loopback":
                    log(f"[ttft] unshaped loopback, {world_size} ranks")
                    subprocess.run(cmd, env=env, check=True, timeout=timeout_s)
                else:
                    with ShapedNamespace(rate) as ns:
                        log(f"[ttft] {rate}: ranks in network namespace {ns.name}, lo shaped by tc tbf rate {rate}")
                        subprocess.run([*ns.prefix(), *cmd], env=env, check=True, timeout=timeout_s)
                results.append(json.loads(out.read_text()))
            except (subprocess.SubprocessError, OSError) as exc:
                # Keep the other links' results; the failure is reported in the table and the JSON.
                log(f"[ttft] {rate}: FAILED: {exc}")
                results.append({"rate": rate, "rows": [], "error": f"{type(exc).__name__}: {exc}"})
    return results


# -- report ----------------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{value:+.2f}%"


def ppl_markdown(rows: list[dict]) -> str:
    base = next((r for r in rows if r["setting"] and r["setting"]["fmt"] is None
                 and r["setting"]["comm_dtype"] == "bfloat16"), None)
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


def _base_ppl(rows: list[dict]) -> float | None:
    return next((r["ppl"] for r in rows if r.get("setting") and r["setting"]["fmt"] is None
                 and r["setting"]["comm_dtype"] == "bfloat16"), None)


def pareto_front(rows: list[dict]) -> list[dict]:
    """The compressed rows no other row beats on both wire bits/element and perplexity, fewest bits first."""
    pts = [r for r in rows if r.get("setting") and r["setting"]["fmt"] is not None and r.get("wire_bits_per_element")]
    front = [r for r in pts if not any(
        o["wire_bits_per_element"] <= r["wire_bits_per_element"] and o["ppl"] <= r["ppl"]
        and (o["wire_bits_per_element"] < r["wire_bits_per_element"] or o["ppl"] < r["ppl"]) for o in pts)]
    return sorted(front, key=lambda r: r["wire_bits_per_element"])


def pareto_markdown(rows: list[dict], target_ratio: float = 3.5, target_delta_pct: float = 2.0) -> str:
    """Per format: plain / rotation / outliers / both, wire bits from the accounting, Δ ppl, front marks."""
    base = _base_ppl(rows)
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


def ttft_markdown(results: list[dict], ppl_rows: list[dict] | None = None) -> str:
    ppl_by_label = {r["label"]: r for r in ppl_rows or [] if r.get("setting")}
    base_ppl = next((r["ppl"] for r in ppl_rows or [] if r.get("setting") and r["setting"]["fmt"] is None
                     and r["setting"]["comm_dtype"] == "bfloat16"), None)
    lines = [
        "| link | setting | algorithm run | sent / prefill / rank | on the link / prefill | TTFT (s) | "
        "speedup vs none | comm share | Δ ppl | 1st token = none's |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for res in results:
        if res.get("error"):
            lines.append(f"| {res['rate']} | failed: {res['error']} |" + " |" * 8)
            continue
        rows = res["rows"]
        none = next((r for r in rows if r["setting"]["fmt"] is None), None)
        for r in rows:
            speedup = f"{none['ttft_s'] / r['ttft_s']:.2f}x" if none else "–"
            label = r["label"]
            ppl_key = label if r["setting"]["algorithm"] != "auto" else None
            if r["setting"]["algorithm"] == "auto" and r["algorithms"]:
                chosen = max(r["algorithms"], key=r["algorithms"].get)
                ppl_key = f"{r['setting']['fmt']} {r['setting']['rounding']} {chosen}" if chosen != "none" else None
            delta = "–"
            if r["setting"]["fmt"] is None:
                delta = "0 (baseline)"
            elif ppl_key in ppl_by_label and base_ppl:
                delta = _pct(100 * (ppl_by_label[ppl_key]["ppl"] / base_ppl - 1))
            algos = ", ".join(f"{a}×{n}" for a, n in sorted(r["algorithms"].items()))
            link = f"{r['qdisc_bytes'] / 2**20:.1f} MiB" if r.get("qdisc_bytes") else "–"
            lines.append(
                f"| {res['rate']} | {label} | {algos} | {r['bytes_sent_per_forward'] / 2**20:.2f} MiB | {link} | "
                f"{r['ttft_s']:.3f} | {speedup} | {r['comm_share']:.0%} | {delta} | "
                f"{'yes' if none and r['first_token'] == none['first_token'] else 'no'} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "ttft":
        sys.exit(_ttft_job_main(sys.argv[2]))
    raise SystemExit("usage: python -m mxcomm.bench.evaluation ttft JOB.json (internal; use `mxcomm eval`)")


__all__ = [
    "DEFAULT_PARETO_FORMATS",
    "DEFAULT_PARETO_TWO_SHOT",
    "DEFAULT_PPL_FORMATS",
    "DEFAULT_ROTATION_SEED",
    "DEFAULT_TTFT_SETTINGS",
    "DEFAULT_TWO_SHOT_FORMATS",
    "CommSetting",
    "EvalSetupError",
    "paired_delta",
    "pareto_front",
    "pareto_markdown",
    "pareto_settings",
    "ppl_markdown",
    "ppl_settings",
    "ppl_rank",
    "run_perplexity",
    "run_ttft",
    "ttft_markdown",
    "ttft_rank",
]
