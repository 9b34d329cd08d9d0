"""Fault injection for the collectives: a rank dies, stalls or leaves at one phase of one call.

``run_fault_scenarios`` starts one host interpreter (``python -m
tests.collectives._faults``) that imports torch and mxcomm once and then, for
every scenario, forks three ranks that form a fresh gloo group of their own
(a ``FileStore`` per scenario, short group timeout). The victim rank installs
``mxcomm.collectives.transport.before_post`` to exit (``os._exit``), stall
(sleep past the timeout) or leave (raise out of the call, destroy its group
and exit) just before it would post the exchange of the scenario's phase. The
survivors record what they raised, after how long, and how long
``destroy_process_group`` took. Forking a pre-imported host keeps ~40
scenarios within seconds of CPU (a spawned rank costs ~2 s of imports); the
host has started no thread when it forks (the ranks start gloo's).

Nothing can hang the test: the host SIGKILLs a scenario's ranks past a
deadline (reported as ``"hung"``) and the parent bounds the host with a
subprocess timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Group timeout of every scenario (seconds).
GROUP_TIMEOUT_S = 3.0
#: A scenario's ranks still running this long after they were forked are killed and reported hung.
SCENARIO_DEADLINE_S = 4 * GROUP_TIMEOUT_S + 10.0
#: How many scenarios run at once (3 ranks each, mostly waiting).
CONCURRENCY = 6
WORLD = 3
FMT = "mxfp8_e4m3"
NUMEL = 4096

DESCRIPTOR, PAYLOAD, SECOND, OUTLIERS = "descriptor exchange", "payload", "two-shot second phase", "outlier channels"

#: The phases each collective goes through, in order.
PHASES: dict[str, tuple[str, ...]] = {
    "none": (DESCRIPTOR, PAYLOAD),
    "allgather": (DESCRIPTOR, PAYLOAD),
    "two_shot": (DESCRIPTOR, PAYLOAD, SECOND),
    "all_gather_into_tensor": (DESCRIPTOR, PAYLOAD),
    "reduce_scatter_tensor": (DESCRIPTOR, PAYLOAD),
    "with_outliers": (DESCRIPTOR, OUTLIERS, PAYLOAD),
}
#: Async calls: the survivors' failure surfaces in ``CollectiveHandle.wait()``.
ASYNC = {"allgather": (PAYLOAD,), "two_shot": (PAYLOAD, SECOND), "reduce_scatter_tensor": (PAYLOAD,)}


def scenarios() -> list[dict]:
    """Every (collective, phase, mode) checked; the victim rank rotates so rank 0 dies too."""
    out = []
    for mode in ("stall", "exit"):  # the stalls take a timeout each: start them first
        for kind, phases in PHASES.items():
            for phase in phases:
                out.append(dict(kind=kind, phase=phase, mode=mode, async_op=False))
        for kind, phases in ASYNC.items():
            for phase in phases:
                out.append(dict(kind=kind, phase=phase, mode=mode, async_op=True))
    for kind, phase in (("two_shot", SECOND), ("allgather", PAYLOAD), ("with_outliers", OUTLIERS)):
        out.append(dict(kind=kind, phase=phase, mode="leave", async_op=False))
    for i, s in enumerate(out):
        s["victim"] = (2, 0, 1)[i % 3]
        s["name"] = f"{s['mode']}:{s['kind']}{':async' if s['async_op'] else ''}:{s['phase']}"
    return out


def run_fault_scenarios(timeout_s: float = 240.0) -> dict[str, dict]:
    """Run every scenario in a host interpreter; ``{name: {"scenario": ..., "ranks": {rank: result}}}``."""
    with tempfile.TemporaryDirectory(prefix="mxcomm-faults-") as d:
        out = Path(d) / "results.json"
        root = Path(__file__).resolve().parents[2]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run([sys.executable, "-m", "tests.collectives._faults", str(out), d], cwd=root, env=env,
                              capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"fault host failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


# -- inside the host ------------------------------------------------------------------------------


def _describe(e: BaseException) -> dict:
    return dict(
        type=type(e).__name__,
        bases=[c.__name__ for c in type(e).__mro__],
        message=str(e),
        collective=getattr(e, "collective", None),
        algorithm=getattr(e, "algorithm", None),
        phase=getattr(e, "phase", None),
        timeout_s=getattr(e, "timeout_s", None),
        async_wait=getattr(e, "async_wait", None),
        cause=type(e.__cause__).__name__ if e.__cause__ is not None else None,
    )


def _call(kind: str, rank: int, async_op: bool):
    import torch

    import mxcomm
    from mxcomm.collectives import all_reduce_with_outliers

    x = torch.randn(NUMEL, generator=torch.Generator().manual_seed(rank))
    if kind in ("none", "allgather", "two_shot"):
        # two pipeline segments: the failure may hit a call with exchanges of both in flight
        return mxcomm.all_reduce(x, None if kind == "none" else FMT, algorithm=kind, async_op=async_op,
                                 segment_elems=NUMEL // 2)
    if kind == "all_gather_into_tensor":
        return mxcomm.all_gather_into_tensor(torch.empty(WORLD * NUMEL), x, FMT, async_op=async_op)
    if kind == "reduce_scatter_tensor":
        return mxcomm.reduce_scatter_tensor(torch.empty(NUMEL // WORLD), x[: NUMEL // WORLD * WORLD], FMT,
                                            async_op=async_op)
    assert kind == "with_outliers" and not async_op
    return all_reduce_with_outliers(x.view(32, -1), FMT, [3, 50], algorithm="allgather")


def _rank(s: dict, rank: int, store_path: str, result_path: Path) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    from mxcomm.collectives import transport

    store = dist.FileStore(store_path, WORLD)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=GROUP_TIMEOUT_S))
    # every rank has finished connecting before the victim may die (else a survivor's init fails)
    store.add("initialised", 1)
    while store.add("initialised", 0) < WORLD:
        time.sleep(0.005)
    if rank == s["victim"]:
        fired = []

        def hook(collective: str, phase: str, send) -> None:
            if phase != s["phase"] or fired:
                return
            fired.append(phase)
            if s["mode"] == "exit":
                # Let the exchanges already posted drain first (gloo runs them on its own threads),
                # so that the survivors fail in this phase rather than in an earlier one in flight.
                time.sleep(0.2)
                os._exit(17)
            if s["mode"] == "stall":
                time.sleep(SCENARIO_DEADLINE_S + 5)  # killed by the host once the survivors are done
                os._exit(18)
            raise KeyboardInterrupt("rank leaves the call")  # "leave": out of the call, then a clean exit

        transport.before_post = hook
    result: dict = {"error": None}
    t0 = time.perf_counter()
    try:
        handle = _call(s["kind"], rank, s["async_op"])
        if s["async_op"]:
            result["returned_s"] = time.perf_counter() - t0
            time.sleep(0.2)  # the handle is waited later
            handle.wait()
    except BaseException as e:  # noqa: BLE001 -- the victim's KeyboardInterrupt too
        result["error"] = _describe(e)
    result["elapsed_s"] = time.perf_counter() - t0
    result_path.write_text(json.dumps(result))
    t1 = time.perf_counter()
    dist.destroy_process_group()
    result["destroy_s"] = time.perf_counter() - t1
    result_path.write_text(json.dumps(result))


def _fork_rank(s: dict, rank: int, store_path: str, result_path: Path) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _rank(s, rank, store_path, result_path)
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


def _host(results_file: str, workdir: str) -> None:
    import torch

    import mxcomm  # noqa: F401 -- imported once here, inherited by every forked rank
    import mxcomm.collectives  # noqa: F401

    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    todo = scenarios()
    running: list[dict] = []
    results: dict[str, dict] = {}
    while todo or running:
        while todo and len(running) < CONCURRENCY:
            s = todo.pop(0)
            d = Path(workdir) / f"s{len(results) + len(running)}-{os.getpid()}-{time.monotonic_ns()}"
            d.mkdir()
            pids = {_fork_rank(s, r, str(d / "store"), d / f"rank{r}.json"): r for r in range(WORLD)}
            running.append(dict(s=s, dir=d, pids=pids, codes={}, t0=time.monotonic()))
        time.sleep(0.05)
        for job in list(running):
            for pid, r in job["pids"].items():
                if r in job["codes"]:
                    continue
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    job["codes"][r] = os.waitstatus_to_exitcode(status)
            survivors_done = all(r in job["codes"] for r in range(WORLD) if r != job["s"]["victim"])
            survivors_done = survivors_done and job["s"]["mode"] == "stall"  # only a stalled victim is killed
            overdue = time.monotonic() - job["t0"] > SCENARIO_DEADLINE_S
            if len(job["codes"]) < WORLD and not survivors_done and not overdue:
                continue
            ranks = {}
            for pid, r in job["pids"].items():
                if r not in job["codes"]:
                    os.kill(pid, signal.SIGKILL)  # a stalled victim once the survivors are done; else hung
                    os.waitpid(pid, 0)
                    job["codes"][r] = "killed" if survivors_done and r == job["s"]["victim"] else "hung"
                path = job["dir"] / f"rank{r}.json"
                res = json.loads(path.read_text()) if path.exists() else {}
                res["exit_code"] = job["codes"][r]
                ranks[str(r)] = res
            results[job["s"]["name"]] = {"scenario": job["s"], "ranks": ranks}
            running.remove(job)
    Path(results_file).write_text(json.dumps(results))


if __name__ == "__main__":
    _host(sys.argv[1], sys.argv[2])
