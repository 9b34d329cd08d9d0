"""``calibrate``: measure alpha, beta and the codec costs on the live group, and seed ``auto`` with them.

Optional since ``auto`` learns the same constants from its own calls
(mxcomm/collectives/estimator.py); a calibrated model is the estimate's seed,
so the very first calls are already planned with measured numbers.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from mxcomm.collectives.estimator import set_cost_model
from mxcomm.collectives.planner import CodecCost, CostModel
from mxcomm.collectives.transport import Transport, group_device
from mxcomm.formats import BlockFormat, get_format
from mxcomm.kernels import Packed, decode_sum, encode

log = logging.getLogger("mxcomm.collectives")


def _timed(fn, reps: int) -> float:
    # the median, like the link probes: the planner should price typical, not best-case, costs
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


#: The phases of calibrate's exchanges, as a CollectiveAbortedError names them.
_PROBE, _SYNC, _AGREE = "link probe", "synchronisation", "agreement on the measured constants"


def _agree_max(values: Sequence[float], transport: Transport, device: torch.device) -> list[float]:
    # Every rank must install the same model (the planner runs on every rank), and the
    # slowest rank is what a collective waits for: take the maximum over ranks.
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    transport.all_reduce(t, _AGREE, op=dist.ReduceOp.MAX).wait()
    return t.tolist()


def _sync(transport: Transport, device: torch.device) -> None:
    """A barrier whose wait is bounded by the group timeout (a one-byte all-gather)."""
    out = torch.empty(transport.n, dtype=torch.uint8, device=device)
    transport.all_gather(out, torch.zeros(1, dtype=torch.uint8, device=device), _SYNC).wait()


def measure_codec(
    fmt: BlockFormat | str,
    *,
    dtype: torch.dtype = torch.bfloat16,
    numel: int = 1 << 20,
    device: torch.device | str = "cpu",
    backend: str = "auto",
    reps: int = 5,
) -> CodecCost:
    """Time encode / decode_sum of this process's codec for ``fmt`` (median of ``reps``).

    Args:
        fmt: The format.
        dtype: Dtype of the timed tensor.
        numel: Elements of the timed tensor.
        device: Where the tensor lives.
        backend: Codec backend.
        reps: Repetitions per timing.

    Returns:
        The measured :class:`CodecCost`.
    """
    f = get_format(fmt)
    gen = torch.Generator(device="cpu").manual_seed(0)
    big = torch.randn(numel, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
    small = big[: f.block_size * 8].clone()
    p_big = encode(big, f, backend=backend)
    p_small = encode(small, f, backend=backend)
    payload = p_big.payload()
    as_wire = Packed.from_payload(payload, f, (numel,), dtype, backend=p_big.backend)
    t_enc_small = _timed(lambda: encode(small, f, backend=backend), reps)
    t_dec_small = _timed(lambda: decode_sum([p_small, p_small], backend=backend), reps)
    t_enc = _timed(lambda: encode(big, f, backend=backend), reps)
    t_dec = _timed(lambda: decode_sum([as_wire, as_wire], backend=backend), reps)
    call_s = max(0.0, min(t_enc_small, t_dec_small / 2))
    return CodecCost(
        encode_s_per_elem=max(t_enc - call_s, 0.0) / numel,
        decode_s_per_elem=max(t_dec - call_s, 0.0) / (2 * numel),
        call_s=call_s,
    )


def calibrate(
    group: ProcessGroup | None = None,
    *,
    formats: Sequence[BlockFormat | str] = ("mxfp4_e2m1",),
    dtype: torch.dtype = torch.bfloat16,
    backend: str = "auto",
    min_gain: float = 0.1,
    install: bool = True,
    max_probe_bytes: int = 8 << 20,
    codec_probe_elems: int = 1 << 20,
) -> CostModel:
    """Measure alpha, beta and the codec costs on the live group; every rank gets the same model.

    Collective: every rank of ``group`` must call it. alpha and beta come from
    timing uint8 all-gathers of a tiny and a large buffer (the large one grows
    until it takes ~50 ms or reaches ``max_probe_bytes`` per rank; each time is
    a median). Codec costs, on ``codec_probe_elems`` elements, are timed on all
    ranks at once, since they share the CPU the way a collective does. Each
    constant is the maximum over ranks.

    Args:
        group: The process group (None: the default group).
        formats: Formats whose codec costs are measured.
        dtype: Dtype of the codec probe.
        backend: Codec backend timed.
        min_gain: ``min_gain`` of the returned model.
        install: Seed ``group``'s estimate with the model (:func:`set_cost_model`): ``auto`` starts
            from it and keeps learning from its calls.
        max_probe_bytes: Largest all-gather probe per rank.
        codec_probe_elems: Elements of the codec probe.

    Returns:
        The calibrated :class:`CostModel` (``source="calibrated"``), the same on every rank.

    Raises:
        FormatError: an entry of ``formats`` is not a format.
        CollectiveAbortedError: a peer died, stalled (``CollectiveTimeoutError`` after the group's
            timeout) or did not call ``calibrate``; the group is unusable afterwards.
    """
    n = dist.get_world_size(group)
    device = group_device(group)
    fmts = [get_format(f) for f in formats]
    # every exchange through the transport: waits bounded by the group timeout, errors translated
    transport = Transport(group, n, "calibrate")

    def gather_time(nbytes: int, reps: int) -> float:
        # median of individually timed all-gathers: robust to the odd scheduling hiccup
        inp = torch.zeros(nbytes, dtype=torch.uint8, device=device)
        out = torch.empty(n * nbytes, dtype=torch.uint8, device=device)
        transport.all_gather(out, inp, _PROBE).wait()  # warm up connections and buffers
        _sync(transport, device)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            transport.all_gather(out, inp, _PROBE).wait()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    small_b = 64
    t_small = gather_time(small_b, 9)
    big_b = 256 << 10
    t_big = gather_time(big_b, 3)
    # Every rank must grow the probe the same way (a rank that stopped early would leave the others
    # waiting in an all-gather): the decision uses the slowest rank's time.
    while _agree_max([t_big], transport, device)[0] < 0.05 and big_b < max_probe_bytes:
        big_b = min(big_b * 4, max_probe_bytes)
        t_big = gather_time(big_b, 3)
    # t(B) = alpha + (n-1) B beta for an all-gather of B bytes per rank
    sent = max(n - 1, 1)
    beta = max((t_big - t_small) / (sent * (big_b - small_b)), 1e-13)
    alpha = max(t_small - sent * small_b * beta, 0.0)

    local: list[float] = [alpha, beta]
    for f in fmts:
        _sync(transport, device)
        c = measure_codec(f, dtype=dtype, numel=codec_probe_elems, device=device, backend=backend)
        local += [c.encode_s_per_elem, c.decode_s_per_elem, c.call_s]
    agreed = _agree_max(local, transport, device)
    codec = {}
    for i, f in enumerate(fmts):
        e, d, c = agreed[2 + 3 * i : 5 + 3 * i]
        codec[f.name] = CodecCost(e, d, c)
    default_codec = max(codec.values(), key=lambda c: c.encode_s_per_elem) if codec else CostModel().default_codec
    model = CostModel(
        alpha=agreed[0], beta=agreed[1], default_codec=default_codec, codec=codec,
        min_gain=min_gain, source="calibrated",
    )
    log.info(
        "calibrated n=%d: alpha %.1f us, beta %.3g s/B (%.3g Gbit/s per rank), codec %s",
        n, model.alpha * 1e6, model.beta, 8e-9 / model.beta, codec,
    )
    if install:
        set_cost_model(model, group)
    return model
