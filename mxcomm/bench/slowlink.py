"""Compressed collectives between real processes over a bandwidth-limited link.

``run_sweep`` creates a network namespace per link rate (root only), shapes
its loopback with a token-bucket filter (``tc qdisc add dev lo root tbf rate
<RATE> burst 512kb latency 100ms``), starts the ranks inside it with
``ip netns exec`` on 127.0.0.1 and deletes the namespace afterwards, whatever
happens. All ranks share the one shaped ``lo``, so the rate is the aggregate
of all ranks' traffic (a shared link, like a PCIe switch or one NIC).

Per (rate, world size) one process group runs every point: it calibrates the
planner on the shaped link (unless ``calibrate=False``), then times
``dist.all_reduce`` (raw baseline), ``mxcomm.all_reduce`` with ``none``,
``allgather``, ``two_shot`` and ``auto`` on synthetic LLM activations.
``auto`` runs on a process group of its own, so its estimate learns from its
own calls only (seeded with the calibrated model, or, uncalibrated, starting
from the defaults); the estimate carries over from point to point, as it
would in an application. An iteration's latency is the slowest rank's;
a point reports the median over repetitions. It also reads the bytes the
qdisc saw, to check the accounting against what really crossed the link.

Used by ``mxcomm bench-collective`` and benchmarks/test_collectives_slowlink.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mxcomm.errors import MxcommError

RATES = {"100mbit": 100e6, "1gbit": 1e9, "10gbit": 10e9}
OCP_FORMATS = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8"]
SIZES_MIB = [0.25, 1, 4, 16, 64]
# what is timed per point: raw dist.all_reduce, then mxcomm.all_reduce with each algorithm
VARIANTS = ["dist", "none", "allgather", "two_shot", "auto"]
#: The compressed algorithms run as one pipeline segment: what the pipelining gains (stage table).
UNPIPELINED = ["allgather:unpipelined", "two_shot:unpipelined"]
STORE_PORT = 29500  # inside a fresh namespace every port is free


class SlowLinkUnavailable(MxcommError, RuntimeError):
    """Root, ``ip`` or ``tc`` is missing, or the kernel refuses network namespaces: no shaped link here."""


def check_environment() -> None:
    if os.geteuid() != 0:
        raise SlowLinkUnavailable("the slow-link benchmark needs root (network namespaces and tc)")
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise SlowLinkUnavailable(f"missing {', '.join(missing)}: install iproute2 (apt-get install iproute2)")


@dataclass
class SweepConfig:
    rates: list[str] = field(default_factory=lambda: list(RATES))
    world_sizes: list[int] = field(default_factory=lambda: [2, 4])
    sizes_mib: list[float] = field(default_factory=lambda: list(SIZES_MIB))
    formats: list[str] = field(default_factory=lambda: list(OCP_FORMATS))
    algorithms: list[str] = field(default_factory=lambda: list(VARIANTS))
    reps: int = 5
    # skip points whose uncompressed all-reduce alone would take longer than this per iteration
    max_seconds_per_iteration: float = 1.5
    hidden: int = 4096
    # False: no calibrate() call; auto starts from the default model and learns from its own calls
    calibrate: bool = True


def parse_rate(rate: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(k|m|g)?bit", rate.lower())
    if not m:
        raise ValueError(f"rate must look like 100mbit / 1gbit / 10gbit, got {rate!r}")
    return float(m.group(1)) * {"k": 1e3, "m": 1e6, "g": 1e9, None: 1.0}[m.group(2)]


def points_for(cfg: SweepConfig, rate: str, world_size: int) -> list[dict]:
    """The (size, format) points one rank job runs; sizes too slow at this rate are left out."""
    bits_per_s = parse_rate(rate)
    points = []
    for mib in cfg.sizes_mib:
        nbytes = int(mib * 2**20)
        # ring all-reduce: every rank sends 2(n-1)/n S, all through the one shaped lo
        ring_s = 2 * (world_size - 1) * nbytes * 8 / bits_per_s
        if ring_s > cfg.max_seconds_per_iteration:
            continue
        for fmt in cfg.formats:
            points.append({"nbytes": nbytes, "format": fmt})
    return points


# -- namespace ---------------------------------------------------------------------------------------


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


class ShapedNamespace:
    """A network namespace whose loopback is rate-limited; removed on exit."""

    def __init__(self, rate: str) -> None:
        self.rate = rate
        self.name = f"mxcomm-{os.getpid()}-{rate}"

    def __enter__(self) -> ShapedNamespace:
        check_environment()
        try:
            _sh("ip", "netns", "add", self.name)
        except subprocess.CalledProcessError as exc:
            # e.g. a container without CAP_SYS_ADMIN / CAP_NET_ADMIN: root, yet no namespaces
            raise SlowLinkUnavailable(f"cannot create a network namespace: {(exc.stderr or '').strip()}") from None
        try:
            _sh("ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up")
            _sh("ip", "netns", "exec", self.name, "tc", "qdisc", "add", "dev", "lo", "root", "tbf",
                "rate", self.rate, "burst", "512kb", "latency", "100ms")
        except subprocess.CalledProcessError as exc:
            self._delete()
            raise SlowLinkUnavailable(f"cannot shape the namespace's loopback to {self.rate}: "
                                      f"{(exc.stderr or '').strip()}") from None
        except BaseException:
            self._delete()
            raise
        return self

    def _delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def __exit__(self, *exc: object) -> None:
        self._delete()

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


def qdisc_sent_bytes() -> int:
    """Bytes the root qdisc of lo has sent (run inside the namespace)."""
    out = subprocess.run(["tc", "-s", "qdisc", "show", "dev", "lo"], capture_output=True, text=True).stdout
    m = re.search(r"Sent (\d+) bytes", out)
    return int(m.group(1)) if m else -1


# -- the rank side ---------------------------------------------------------------------------------


def _rank_main(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    import mxcomm
    from mxcomm.bench.synthetic import llm_activation
    from mxcomm.collectives import all_reduce, calibrate, cost_model, set_cost_model, track_comm

    torch.set_num_threads(1)
    spec = json.loads(Path(args.spec).read_text())
    rank, n = args.rank, args.world
    store = dist.TCPStore("127.0.0.1", STORE_PORT, n, is_master=rank == 0,
                          timeout=datetime.timedelta(seconds=300))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=n,
                            timeout=datetime.timedelta(seconds=600))
    # auto learns on a group of its own: the explicit algorithms' calls must not teach it
    auto_group = dist.new_group(list(range(n)))
    t_cal = time.perf_counter()
    if spec["calibrate"]:
        model = calibrate(formats=sorted({p["format"] for p in spec["points"]}), max_probe_bytes=4 << 20)
        set_cost_model(model, auto_group)
    t_cal = time.perf_counter() - t_cal
    rows = []
    backend = mxcomm.resolve_backend("auto").name
    for point in spec["points"]:
        numel = point["nbytes"] // 2
        hidden = min(spec["hidden"], numel)
        x = llm_activation(numel // hidden, hidden, seed=1000 + rank, dtype=torch.bfloat16)
        algs = spec["algorithms"]

        def op(t, variant, fmt=point["format"]):
            alg, _, how = variant.partition(":")
            if alg == "dist":
                dist.all_reduce(t)
            else:
                # "unpipelined": the whole message is one segment, so nothing overlaps its transfer
                segment = t.numel() if how == "unpipelined" else None
                all_reduce(t, fmt, algorithm=alg, group=auto_group if alg == "auto" else None,
                           segment_elems=segment)

        for alg in algs:
            op(x.clone(), alg)  # warm-up: buffers, connections, codec caches
        times: dict[str, list[float]] = {a: [] for a in algs}
        wire = {a: 0 for a in algs}
        records: dict[str, list] = {a: [] for a in algs}
        outputs = {}
        # Algorithms take turns within each repetition, so a burst of load from other
        # processes on the machine hits all of them alike instead of one.
        for _ in range(spec["reps"]):
            for alg in algs:
                t = x.clone()
                # rank 0 reads the link's byte counter before anyone starts and after everyone
                # finished (the barriers' own few hundred bytes are counted too)
                before = qdisc_sent_bytes() if rank == 0 else 0
                dist.barrier()
                with track_comm() as stats:
                    t0 = time.perf_counter()
                    op(t, alg)
                    times[alg].append(time.perf_counter() - t0)
                dist.barrier()
                wire[alg] += qdisc_sent_bytes() - before if rank == 0 else 0
                records[alg].extend(stats.records)
                outputs[alg] = t
        for alg in algs:
            # latency of an iteration = the slowest rank's
            tt = torch.tensor(times[alg], dtype=torch.float64)
            dist.all_reduce(tt, op=dist.ReduceOp.MAX)
            # every rank must hold the same bytes
            t = outputs[alg]
            digest = torch.tensor([float(t.view(torch.int16).to(torch.int64).sum() % 1000003)], dtype=torch.float64)
            digests = [torch.zeros(1, dtype=torch.float64) for _ in range(n)]
            dist.all_gather(digests, digest)
            rec = records[alg][-1] if records[alg] else None
            rows.append({
                "rate": spec["rate"], "world_size": n, "nbytes": point["nbytes"], "format": point["format"],
                "algorithm": alg, "ran": rec.algorithm if rec else "dist",
                "median_s": statistics.median(tt.tolist()), "times_s": tt.tolist(),
                "bytes_sent": rec.bytes_sent if rec else None,
                "logical_bytes": rec.logical_bytes if rec else None,
                "segments": rec.segments if rec else None,
                "qdisc_bytes_per_iter": wire[alg] / spec["reps"] if rank == 0 else None,
                "identical_on_ranks": len({float(d) for d in digests}) == 1,
                "reason": rec.reason if rec else "",
                # where this rank's time went (medians over the repetitions): codec calls, blocked on transfers
                "stages_s": {k: statistics.median(getattr(r, k) for r in records[alg])
                             for k in ("encode_s", "decode_s", "wait_s", "seconds")} if records[alg] else None,
                # every timed repetition's algorithm (auto may explore on some)
                "ran_each": [r.algorithm for r in records[alg]] if records[alg] else None,
            })
    if rank == 0:
        learned = cost_model(auto_group)
        model = learned.model  # what auto planned with at the end (the calibrated seed + what it learned)
        Path(args.out).write_text(json.dumps({
            "rows": rows, "calibration_s": t_cal, "codec_backend": backend, "calibrated": spec["calibrate"],
            "model": {"alpha": model.alpha, "beta": model.beta, "source": model.source,
                      "codec": {k: asdict(v) for k, v in model.codec.items()}},
            "estimate": learned.describe(),
        }))
    dist.barrier()
    dist.destroy_process_group()
    return 0


# -- the driver ------------------------------------------------------------------------------------


def run_job(ns: ShapedNamespace, world_size: int, points: list[dict], cfg: SweepConfig, timeout: float) -> dict:
    """Run one process group of ``world_size`` ranks inside ``ns`` over ``points``."""
    repo_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([repo_root, env.get("PYTHONPATH", "")])
    env["GLOO_SOCKET_IFNAME"] = "lo"
    env["OMP_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory(prefix="mxcomm-slowlink-") as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"points": points, "algorithms": cfg.algorithms, "reps": cfg.reps,
                                    "rate": ns.rate, "hidden": cfg.hidden, "calibrate": cfg.calibrate}))
        out = Path(tmp) / "result.json"
        procs = []
        for rank in range(world_size):
            cmd = [*ns.prefix(), sys.executable, "-m", "mxcomm.bench.slowlink", "_rank",
                   "--rank", str(rank), "--world", str(world_size), "--spec", str(spec), "--out", str(out)]
            log = open(Path(tmp) / f"rank{rank}.log", "w+")
            procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        deadline = time.monotonic() + timeout
        failed = []
        try:
            for rank, (p, log) in enumerate(procs):
                try:
                    rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    rc = "timeout"
                if rc != 0:
                    log.seek(0)
                    failed.append(f"rank {rank} exit {rc}:\n{log.read()[-3000:]}")
        finally:
            for p, log in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                log.close()
        if failed:
            raise RuntimeError("slow-link ranks failed:\n" + "\n".join(failed))
        return json.loads(out.read_text())


def run_sweep(cfg: SweepConfig, *, timeout_per_job: float = 900.0, progress=print) -> list[dict]:
    check_environment()
    rows: list[dict] = []
    for rate in cfg.rates:
        with ShapedNamespace(rate) as ns:
            for n in cfg.world_sizes:
                points = points_for(cfg, rate, n)
                if not points:
                    continue
                t0 = time.perf_counter()
                result = run_job(ns, n, points, cfg, timeout_per_job)
                how = f"calibration {result['calibration_s']:.1f} s" if result["calibrated"] else "uncalibrated"
                progress(
                    f"# {rate} n={n}: {len(points)} points in {time.perf_counter() - t0:.0f} s, "
                    f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
                    f"({how}, codec backend {result['codec_backend']}; auto's final estimate: "
                    f"alpha {result['model']['alpha'] * 1e6:.0f} us, "
                    f"beta {8e-9 / result['model']['beta']:.3g} Gbit/s per rank)"
                )
                progress("\n".join("#   " + line for line in result["estimate"].splitlines()))
                for row in result["rows"]:
                    row["model"] = result["model"]
                    row["load_average"] = os.getloadavg()[0]
                rows.extend(result["rows"])
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """One line per (rate, n, size, format): latencies, speedups over dist.all_reduce, ideal speedups.

    Latencies are medians over the repetitions (``ms``) and the fastest repetition
    (``min_ms``); speedups use the medians; ``speedup_min`` the fastest ones.
    """
    table: dict[tuple, dict] = {}
    for r in rows:
        key = (r["rate"], r["world_size"], r["nbytes"], r["format"])
        line = table.setdefault(key, {"rate": r["rate"], "world_size": r["world_size"], "nbytes": r["nbytes"],
                                      "format": r["format"], "ms": {}, "min_ms": {}, "bytes": {}, "ran": {},
                                      "wire": {}, "identical": True})
        line["ms"][r["algorithm"]] = r["median_s"] * 1e3
        line["min_ms"][r["algorithm"]] = min(r["times_s"]) * 1e3
        line["bytes"][r["algorithm"]] = r["bytes_sent"]
        line["ran"][r["algorithm"]] = _ran_label(r)
        line["wire"][r["algorithm"]] = r["qdisc_bytes_per_iter"]
        line["identical"] &= r["identical_on_ranks"]
    out = []
    for line in table.values():
        ms, mn, nbytes = line["ms"], line["min_ms"], line["bytes"]
        base = ms.get("dist") or ms.get("none")
        base_min = mn.get("dist") or mn.get("none")
        line["speedup"] = {a: base / t for a, t in ms.items() if base and t}
        line["speedup_min"] = {a: base_min / t for a, t in mn.items() if base_min and t}
        none_bytes = nbytes.get("none")
        line["ideal"] = {a: none_bytes / b for a, b in nbytes.items() if none_bytes and b}
        compressed = [a for a in ("allgather", "two_shot") if a in ms]
        if compressed:
            best = min(compressed, key=lambda a: ms[a])
            line["best"] = best
            line["efficiency"] = line["speedup"][best] / line["ideal"][best] if line["ideal"].get(best) else None
        out.append(line)
    return out


def _ran_label(row: dict) -> str:
    """What a variant ran: one algorithm, or each one with its count when the repetitions differed (auto)."""
    each = row.get("ran_each") or [row["ran"]]
    if len(set(each)) == 1:
        return each[0]
    return ", ".join(f"{a} x{each.count(a)}" for a in dict.fromkeys(each))


def format_table(summary: list[dict]) -> str:
    """Markdown: median / fastest ms per algorithm, the best compressed algorithm's speedup and its ideal."""
    head = ("| link | n | size | format | dist.all_reduce ms | none ms | allgather ms | two_shot ms | auto ms (ran) "
            "| best speedup | ideal | % of ideal | auto speedup |")
    lines = [head, "|" + "---|" * 13]
    for s in summary:
        ms, mn = s["ms"], s["min_ms"]

        def cell(a: str, ms: dict = ms, mn: dict = mn) -> str:
            return f"{ms[a]:.1f} / {mn[a]:.0f}" if a in ms else "-"

        best = s.get("best")
        auto_cell = f"{cell('auto')} ({s['ran'].get('auto', '-')})" if "auto" in ms else "-"
        prefix = (f"| {s['rate']} | {s['world_size']} | {s['nbytes'] / 2**20:g} MiB | {s['format']} "
                  f"| {cell('dist')} | {cell('none')} | {cell('allgather')} | {cell('two_shot')} | {auto_cell} ")
        auto_speed = (f"{s['speedup']['auto']:.2f}x / {s['speedup_min']['auto']:.2f}x"
                      if "auto" in s["speedup"] else "-")
        if best:
            lines.append(
                prefix + f"| {s['speedup'][best]:.2f}x / {s['speedup_min'][best]:.2f}x ({best}) "
                f"| {s['ideal'][best]:.2f}x | {100 * s['efficiency']:.0f}% | {auto_speed} |"
            )
        else:
            lines.append(prefix + f"| - | - | - | {auto_speed} |")
    return "\n".join(lines)


def format_stage_table(rows: list[dict]) -> str:
    """Markdown: where the time of each compressed call went, and how much of it the pipelining overlapped.

    ``link`` is the time the shaped link needs for the bytes the call put on it
    (all ranks share the one loopback: the qdisc's byte count over the rate);
    ``codec`` is rank 0's encode + decode time. Without overlap the call takes at
    least ``link + codec``; ``hidden`` is the share of the smaller of the two that
    the call's wall time does not show: ``(link + codec - wall) / min(link, codec)``,
    clipped to [0, 1].
    """
    head = ("| link | n | size | format | variant | segments | wall ms | encode ms | decode ms | blocked ms "
            "| link ms | hidden |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        st, wire = r.get("stages_s"), r.get("qdisc_bytes_per_iter")
        if not st or r["ran"] == "none" or not wire:
            continue
        link = wire * 8 / parse_rate(r["rate"])
        codec = st["encode_s"] + st["decode_s"]
        wall = r["median_s"]
        hidden = (link + codec - wall) / min(link, codec) if min(link, codec) > 0 else 0.0
        lines.append(
            f"| {r['rate']} | {r['world_size']} | {r['nbytes'] / 2**20:g} MiB | {r['format']} | {r['algorithm']} "
            f"| {r['segments']} | {wall * 1e3:.1f} | {st['encode_s'] * 1e3:.1f} | {st['decode_s'] * 1e3:.1f} "
            f"| {st['wait_s'] * 1e3:.1f} | {link * 1e3:.1f} | {100 * min(1.0, max(0.0, hidden)):.0f}% |"
        )
    return "\n".join(lines)


def _main() -> int:
    ap = argparse.ArgumentParser(prog="python -m mxcomm.bench.slowlink")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("_rank")
    r.add_argument("--rank", type=int, required=True)
    r.add_argument("--world", type=int, required=True)
    r.add_argument("--spec", required=True)
    r.add_argument("--out", required=True)
    args = ap.parse_args()
    return _rank_main(args)


if __name__ == "__main__":
    sys.exit(_main())
