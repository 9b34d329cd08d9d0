"""Run a suite of collective scenarios on real gloo ranks (one process per rank).

The parent process owns the TCPStore (bound to port 0 on 127.0.0.1, so there
is no port race), starts ``world_size`` worker processes with
``python -m tests.collectives._harness worker ...`` and collects each rank's
results from a ``torch.save`` file. One spawn serves a whole test module:
the scenarios run back to back inside the ranks, and the tests only inspect
the returned results.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[2]


class RankFailure(RuntimeError):
    pass


def _spawned_rank(rank: int, body: Callable[[int], dict], world_size: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        torch.save(body(rank), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn_ranks(body: Callable[[int], dict], world_size: int) -> list[dict]:
    """Run ``body(rank) -> dict`` on ``world_size`` spawned gloo ranks (group initialised, threads 1);
    returns each rank's dict. For small test modules whose scenarios live next to their tests."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="mxcomm-ranks-") as tmp:
        mp.spawn(_spawned_rank, args=(body, world_size, port, tmp), nprocs=world_size, join=True)
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def run_world(world_size: int, suite: str, timeout: float = 600.0) -> list[dict]:
    """Run ``suite`` (a name in ``_scenarios.SUITES``) on ``world_size`` ranks; returns each rank's dict."""
    store = dist.TCPStore("127.0.0.1", 0, world_size + 1, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=timeout))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env["OMP_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory(prefix="mxcomm-ranks-") as tmp:
        procs = []
        logs = []
        for rank in range(world_size):
            log = open(Path(tmp) / f"rank{rank}.log", "w+")
            logs.append(log)
            cmd = [sys.executable, "-m", "tests.collectives._harness", "worker", "--rank", str(rank),
                   "--world", str(world_size), "--port", str(store.port), "--out", tmp, "--suite", suite]
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
        failed = []
        try:
            for rank, p in enumerate(procs):
                try:
                    rc = p.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    rc = "timeout"
                if rc != 0:
                    failed.append((rank, rc))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        if failed:
            tails = []
            for rank, rc in failed:
                logs[rank].seek(0)
                tails.append(f"--- rank {rank} (exit {rc}) ---\n{logs[rank].read()[-4000:]}")
            raise RankFailure("ranks failed:\n" + "\n".join(tails))
        for log in logs:
            log.close()
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _worker(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", args.port, is_master=False, timeout=datetime.timedelta(seconds=120))
    dist.init_process_group(
        "gloo", store=store, rank=args.rank, world_size=args.world, timeout=datetime.timedelta(seconds=120)
    )
    from tests.collectives import _scenarios

    try:
        results = _scenarios.SUITES[args.suite](args.rank, args.world)
    except Exception:
        traceback.print_exc()
        return 1
    torch.save(results, Path(args.out) / f"rank{args.rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--rank", type=int, required=True)
    w.add_argument("--world", type=int, required=True)
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--suite", required=True)
    args = ap.parse_args()
    return _worker(args)


if __name__ == "__main__":
    sys.exit(main())
