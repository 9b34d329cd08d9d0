"""What every evaluation rank does around its measurements: shard the model, switch settings, calibrate.

Runs inside ranks started by :func:`mxcomm.bench.launch.run_ranks` (the
perplexity and TTFT phases of ``mxcomm eval``, and the TP tests).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from mxcomm.bench.settings import CommSetting
from mxcomm.bench.smollm2 import Assets, EvalSetupError, load_tokens, windows


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def shard_model(model: torch.nn.Module, world: int) -> None:
    """Shard a Llama-family model over all ranks (1-D CPU mesh), uncompressed until a setting is applied."""
    from torch.distributed.device_mesh import init_device_mesh

    from mxcomm.tp.llama import parallelize_llama

    mesh = init_device_mesh("cpu", (world,))
    # Every rank loaded identical weights: slice locally instead of broadcasting them over the link.
    parallelize_llama(model, mesh, None, algorithm="none", comm_dtype=torch.bfloat16, src_data_rank=None)


def apply_setting(model: torch.nn.Module, setting: CommSetting, calibration: Any = None) -> None:
    """Switch a sharded model's row-parallel all-reduces to ``setting`` (outlier channels from ``calibration``)."""
    from mxcomm.tp.outliers import set_outlier_channels
    from mxcomm.tp.style import set_comm_format

    set_comm_format(model, setting.block_format(), algorithm=setting.algorithm, comm_dtype=setting.wire_dtype,
                    verify=setting.verify)
    if setting.outliers and calibration is None:
        raise EvalSetupError(f"{setting.label} needs an outlier calibration")
    set_outlier_channels(model, calibration.top(setting.outliers) if setting.outliers else None)


def calibrate_planner(settings: list[dict], tag: str, lead: bool) -> dict | None:
    """Measure the ``auto`` planner's link costs on this group if a calibrated setting runs ``auto`` (collective).

    ``settings``: the job's settings as dicts (``CommSetting`` fields). Returns what was measured
    (alpha, beta, the rate it means, seconds), or None when no setting runs calibrated ``auto``.
    """
    from mxcomm.collectives import calibrate

    formats = sorted({s["fmt"] for s in settings
                      if s["fmt"] and s["algorithm"] == "auto" and s.get("calibrated", True)})
    if not formats:
        return None
    t0 = time.perf_counter()
    # max_probe_bytes = the first probe size: calibrate() grows its probe while the rank-local time is
    # short, and ranks that disagree on that would issue different collectives and hang.
    cost = calibrate(formats=formats, dtype=torch.bfloat16, max_probe_bytes=256 << 10)
    if lead:
        log_stderr(f"[{tag}] calibrated: alpha {cost.alpha * 1e6:.0f} us, {8e-9 / cost.beta:.3f} Gbit/s per rank")
    return {"alpha_s": cost.alpha, "beta_s_per_byte": cost.beta, "gbit_per_s_per_rank": 8e-9 / cost.beta,
            "seconds": time.perf_counter() - t0}


def job_calibration(model: torch.nn.Module, assets: Assets, job: dict, lead: bool) -> Any:
    """The job's outlier calibration: given (JSON), or measured by rank 0 and broadcast; None if not needed.

    ``job["calibrate"]``: ``windows``, ``window_tokens``, ``start``, ``max_channels`` of the text
    windows to measure on (the unsharded model, before :func:`shard_model`).
    """
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
        log_stderr(f"[calibration] {len(cal.channels)} modules, {cal.tokens} tokens, top {cal.max_k} channels each "
                   f"({time.perf_counter() - t0:.1f} s)")
    dist.broadcast_object_list(box, src=0)
    return OutlierCalibration.from_dict(box[0])


class SettingEstimates:
    """Each setting plans ``auto`` with a cost estimate of its own, as if it ran alone on the group.

    Settings are interleaved on one process group, so without this the explicit
    settings' calls would teach ``auto`` and one ``auto`` setting would learn for
    another. A calibrated ``auto`` setting starts from the model the job's
    :func:`calibrate_planner` installed; an uncalibrated one from the default
    :class:`~mxcomm.collectives.CostModel`, learning from its own calls only (what
    a user who never calls ``calibrate()`` gets). Created on every rank alike,
    right after :func:`calibrate_planner`.
    """

    def __init__(self, settings: Sequence[CommSetting | None]) -> None:
        from mxcomm.collectives.estimator import get_cost_model, set_cost_model, swap_estimates

        calibrated = get_cost_model()  # what calibrate_planner installed (or the default model)
        self._estimates: list[dict[object, Any]] = []
        for setting in settings:
            estimates: dict[object, Any] = {}
            if setting is not None and setting.algorithm == "auto" and setting.calibrated:
                before = swap_estimates(estimates)
                set_cost_model(calibrated)
                swap_estimates(before)
            self._estimates.append(estimates)

    @contextmanager
    def active(self, index: int) -> Iterator[None]:
        """Run the block with setting ``index``'s estimate (every rank at the same point)."""
        from mxcomm.collectives.estimator import swap_estimates

        before = swap_estimates(self._estimates[index])
        try:
            yield
        finally:
            self._estimates[index] = swap_estimates(before)
