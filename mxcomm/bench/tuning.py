"""Per-module tuning of the compressed row-parallel all-reduces: sensitivity, allocation, plan (``mxcomm tune``).

The row-parallel modules of a model differ widely in how much quantization
error they tolerate. This module measures that, module by module, and chooses
one setting per module (a :class:`Candidate`: format, rotation, outlier
channels, algorithm and two-shot gather format) to minimise the wire bits per
element under a budget on the predicted loss increase, or the reverse. Every
number comes from the single-process emulation of tensor parallelism
(:mod:`mxcomm.bench.emulation`), which computes bit for bit what the ranks
compute, so no process group is spawned. Steps:

1. **Baseline** (uncompressed, wire dtype) on the calibration windows: the
   next-token log-probabilities and per-token NLL; on the *sensitivity* windows
   (the first few of them) also the input of every decoder layer, every
   row-parallel module's rank partials, and a diagonal Fisher weight of its
   output (the squared gradient of the log-likelihood of labels sampled from the
   model itself).
2. **Proxy** per module and candidate: the candidate's reduction of the cached
   partials minus the uncompressed one, ``1/2 sum w delta^2`` per token -- a
   second-order estimate of the KL divergence, cheap (codec only). Per module,
   the candidates on the (wire bits, proxy) Pareto front are kept, at most
   ``max_measured`` of them (the lower convex hull first).
3. **Sensitivity**: each kept candidate compresses only its module; the layers
   from that module's layer on run from the cached layer input, and the KL
   divergence of the next-token distributions against the baseline and the
   increase of the NLL are measured on the sensitivity windows.
4. **Allocation** (:mod:`mxcomm.bench.allocation`) on the measured KL, then the
   chosen plan is measured end to end on all calibration windows -- modules
   interact -- and, for a loss budget, the budget is scaled by target / measured
   and the allocation solved again, a few rounds; the best plan that meets the
   target on the calibration windows is kept.
5. **Plan**: a :class:`mxcomm.tp.CommPlan` (formats, algorithms, explicit outlier
   channels, gather formats, bf16 wire) for :func:`mxcomm.tp.parallelize`.

Wire bits are computed with the collectives' own byte formulas
(:func:`mxcomm.bench.wire_accounting.reduction_wire`), i.e. what
``track_comm()`` records on a rank for windows of the calibration length.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from mxcomm.bench.allocation import Option, min_bits, min_loss, total_loss, wire_bits
from mxcomm.bench.emulation import EmulatedReduction, emulated_tensor_parallel, row_parallel_names
from mxcomm.bench.perplexity import paired_delta
from mxcomm.bench.rank_setup import log_stderr
from mxcomm.bench.smollm2 import EvalSetupError
from mxcomm.bench.wire_accounting import reduction_wire
from mxcomm.collectives.planner import gather_format
from mxcomm.errors import FormatError
from mxcomm.formats import BlockFormat, get_format
from mxcomm.formats.block import plain_name
from mxcomm.tp.llama import find_layers
from mxcomm.tp.outliers import OutlierCalibration
from mxcomm.tp.plan import COMPUTE_DTYPE, CommPlan, PlanEntry

Log = Callable[[str], None]

DEFAULT_ROTATION_SEED = 20241115
#: One-shot formats of the default candidate grid (registered formats, so plans can name them).
DEFAULT_FORMATS: tuple[str, ...] = (
    "int3", "fp4_e2m1_b64", "int4_b64", "mxfp4_e2m1", "int4", "fp4_e2m1_b16", "int4_b16", "nvfp4", "int4_fp16",
    "fp5_e2m2", "int5", "fp5_e2m2_b16", "mxfp6_e2m3", "int6", "int6_fp16", "fp7_e3m3", "mxint8",
)
DEFAULT_OUTLIER_KS: tuple[int, ...] = (0, 4, 8, 16, 32)
#: Two-shot (reduce-scatter format, gather format) pairs of the default grid, rotated.
DEFAULT_TWO_SHOT: tuple[tuple[str, str], ...] = (
    ("int3", "fp5_e2m2"), ("int3", "mxfp6_e2m3"), ("mxfp4_e2m1", "fp5_e2m2"), ("mxfp4_e2m1", "mxfp6_e2m3"),
    ("mxfp4_e2m1", "mxint8"), ("fp5_e2m2", "mxfp6_e2m3"),
)
DEFAULT_TWO_SHOT_KS: tuple[int, ...] = (0, 8, 16)


# -- candidates ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One way to run one module's reduction.

    ``fmt`` None: uncompressed. ``gather``: two-shot's all-gather format (two-shot only;
    None: ``fmt``). Text form (``parse`` / ``label``): ``none``, or
    ``FMT[>GATHER][:2s][:rot][:kN]`` -- ``>GATHER`` or ``:2s`` make it two-shot.
    """

    fmt: str | None
    rotation_seed: int | None = None
    outliers: int = 0
    algorithm: str = "allgather"
    gather: str | None = None

    def __post_init__(self) -> None:
        if self.fmt is None:
            if (self.rotation_seed, self.outliers, self.gather) != (None, 0, None):
                raise EvalSetupError("an uncompressed candidate takes no rotation, outliers or gather format")
            object.__setattr__(self, "algorithm", "none")
            return
        if self.algorithm not in ("allgather", "two_shot"):
            raise EvalSetupError(f"a compressed candidate runs allgather or two_shot, got {self.algorithm!r}")
        if self.gather is not None and self.algorithm != "two_shot":
            raise EvalSetupError("a gather format needs two_shot")
        if not isinstance(self.outliers, int) or self.outliers < 0:
            raise EvalSetupError(f"outliers must be a non-negative int, got {self.outliers!r}")
        fmt, gather = self.block_format(), self.gather_format()  # unknown formats fail here
        assert fmt is not None
        try:
            gather_format(fmt, gather)  # and pairs the collective refuses
        except FormatError as exc:
            raise EvalSetupError(f"candidate {self.label}: {exc}") from None

    @property
    def compressed(self) -> bool:
        return self.fmt is not None

    @property
    def label(self) -> str:
        if self.fmt is None:
            return "none"
        parts = [self.fmt + (f">{self.gather}" if self.gather else "")]
        if self.algorithm == "two_shot" and not self.gather:
            parts.append("2s")
        if self.rotation_seed is not None:
            parts.append("rot" if self.rotation_seed == DEFAULT_ROTATION_SEED else f"rot{self.rotation_seed}")
        if self.outliers:
            parts.append(f"k{self.outliers}")
        return ":".join(parts)

    @classmethod
    def parse(cls, text: str, rotation_seed: int = DEFAULT_ROTATION_SEED) -> Candidate:
        """A candidate from its text form (see the class docstring)."""
        text = text.strip()
        if text == "none":
            return cls(None)
        head, *mods = text.split(":")
        fmt, _, gather = head.partition(">")
        seed, k, two_shot = None, 0, bool(gather)
        for m in mods:
            if m == "rot":
                seed = rotation_seed
            elif m.startswith("rot") and m[3:].isdigit():
                seed = int(m[3:])
            elif m.startswith("k") and m[1:].isdigit():
                k = int(m[1:])
            elif m == "2s":
                two_shot = True
            else:
                raise EvalSetupError(f"candidate {text!r}: unknown modifier {m!r} (rot, rotN, kN, 2s)")
        return cls(get_format(fmt).name, seed, k, "two_shot" if two_shot else "allgather",
                   get_format(gather).name if gather else None)

    def block_format(self) -> BlockFormat | None:
        if self.fmt is None:
            return None
        fmt = get_format(self.fmt)
        return fmt.with_options(rotation_seed=self.rotation_seed) if self.rotation_seed is not None else fmt

    def gather_format(self) -> BlockFormat | None:
        return get_format(self.gather) if self.gather is not None else None

    def reduction(self, comm_dtype: torch.dtype | None) -> EmulatedReduction:
        return EmulatedReduction(self.block_format(), self.algorithm, comm_dtype, gather_fmt=self.gather_format())

    def wire(self, shape: tuple[int, ...], elem_size: int, world_size: int) -> tuple[int, float]:
        """(bytes sent, element sends) per reduction of a ``shape`` tensor (see ``reduction_wire``)."""
        return reduction_wire(self.block_format(), self.algorithm, shape, elem_size, world_size, self.outliers,
                              self.gather_format())


def candidate_grid(
    formats: Sequence[str] = DEFAULT_FORMATS,
    outlier_ks: Sequence[int] = DEFAULT_OUTLIER_KS,
    two_shot: Sequence[tuple[str, str]] = DEFAULT_TWO_SHOT,
    two_shot_ks: Sequence[int] = DEFAULT_TWO_SHOT_KS,
    rotation_seed: int = DEFAULT_ROTATION_SEED,
    max_k: int | None = None,
) -> list[Candidate]:
    """``none``; every one-shot format plain and rotated with every k; rotated two-shot pairs with their ks."""
    out = [Candidate(None)]
    ks = [k for k in outlier_ks if max_k is None or k <= max_k]
    for name in formats:
        for seed in (None, rotation_seed):
            out.extend(Candidate(get_format(name).name, seed, k) for k in ks)
    for fmt, gather in two_shot:
        out.extend(Candidate(get_format(fmt).name, rotation_seed, k, "two_shot", get_format(gather).name)
                   for k in two_shot_ks if max_k is None or k <= max_k)
    return out


# -- the emulated model with switchable per-module reductions ---------------------------------------------


class _Switchable:
    """Inside ``with``: the model under emulated TP, every row-parallel reduction settable per module."""

    def __init__(self, model: nn.Module, world: int, comm_dtype: torch.dtype | None,
                 channels: Callable[[str, int], Sequence[int]]) -> None:
        self.model, self.world, self.comm_dtype, self.channels = model, world, comm_dtype, channels
        self.names = row_parallel_names(model)
        self.none = EmulatedReduction(None, "none", comm_dtype)
        self._ctx: Any = None

    def __enter__(self) -> _Switchable:
        self._ctx = emulated_tensor_parallel(self.model, self.world, dict.fromkeys(self.names, self.none))
        self._ctx.__enter__()
        self.modules = {n: self.model.get_submodule(n) for n in self.names}
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)

    def set(self, name: str, candidate: Candidate) -> None:
        mod = self.modules[name]
        mod.reduction = candidate.reduction(self.comm_dtype) if candidate.compressed else self.none
        k = candidate.outliers if candidate.compressed else 0
        mod.outlier_channels = torch.as_tensor(list(self.channels(name, k)), dtype=torch.int64) if k else None

    def set_all(self, assignment: Mapping[str, Candidate]) -> None:
        for name in self.names:
            self.set(name, assignment.get(name, Candidate(None)))


def _log_probs(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """float32 next-token log-probabilities of the positions that predict a token (all but the last)."""
    return torch.log_softmax(model.lm_head(hidden)[0, :-1].float(), dim=-1)


@dataclass
class _Window:
    ids: torch.Tensor
    base_logp: torch.Tensor  # [T-1, V]
    base_nll: torch.Tensor  # [T-1], float64
    layer_inputs: list[torch.Tensor] = field(default_factory=list)  # sensitivity windows only
    layer_kwargs: dict[str, Any] = field(default_factory=dict)
    partials: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    fisher: dict[str, torch.Tensor] = field(default_factory=dict)


def _nll(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return -logp.gather(1, ids[1:, None])[:, 0].double()


def _kl(base_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(base || other) in nats, float64."""
    return (base_logp.exp() * (base_logp - logp)).sum(-1).double()


class _Recorder:
    """Stands in for a module's reduction: keeps the rank partials (in the wire dtype), then reduces uncompressed."""

    def __init__(self, inner: EmulatedReduction, sink: list[list[torch.Tensor]]) -> None:
        self.inner, self.sink = inner, sink

    def __call__(self, partials: Sequence[torch.Tensor], outlier_channels: torch.Tensor | None = None) -> torch.Tensor:
        self.sink.append([p.detach().to(self.inner.comm_dtype or p.dtype) for p in partials])
        return self.inner(partials, outlier_channels)


def _baseline(emu: _Switchable, ids: torch.Tensor, detail: bool, seed: int) -> _Window:
    """One window's baseline; ``detail``: also layer inputs, partials and Fisher weights (one backward pass)."""
    model = emu.model
    if not detail:
        with torch.no_grad():
            logp = _log_probs(model, model.model(input_ids=ids[None], use_cache=False).last_hidden_state)
        return _Window(ids, logp, _nll(logp, ids))
    _, layers = find_layers(model)
    win = _Window(ids, torch.empty(0), torch.empty(0))
    sinks: dict[str, list[list[torch.Tensor]]] = {n: [] for n in emu.names}
    outputs: dict[str, torch.Tensor] = {}
    hooks = []

    def pre_hook(index: int) -> Any:
        def hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            win.layer_inputs.append(args[0].detach().clone())
            if index == 0:
                win.layer_kwargs.update({k: v for k, v in kwargs.items()})
        return hook

    def out_hook(name: str) -> Any:
        def hook(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            out.retain_grad()
            outputs[name] = out
        return hook

    def embed_hook(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> torch.Tensor:
        return out.detach().requires_grad_()  # the parameters need no gradients; the module outputs do

    try:
        for i, layer in enumerate(layers):
            hooks.append(layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
        for name in emu.names:
            mod = emu.modules[name]
            mod.reduction = _Recorder(emu.none, sinks[name])
            hooks.append(mod.register_forward_hook(out_hook(name)))
        hooks.append(model.get_input_embeddings().register_forward_hook(embed_hook))
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            with torch.enable_grad():
                hidden = model.model(input_ids=ids[None], use_cache=False).last_hidden_state
                logits = model.lm_head(hidden)[0, :-1].float()
                logp = torch.log_softmax(logits, dim=-1)
                gen = torch.Generator().manual_seed(seed)
                sampled = torch.multinomial(logp.detach().exp(), 1, generator=gen)[:, 0]
                logp.gather(1, sampled[:, None]).sum().backward()
        finally:
            for p in params:
                p.requires_grad_(True)
    finally:
        for h in hooks:
            h.remove()
        for name in emu.names:
            emu.modules[name].reduction = emu.none
    win.base_logp = logp.detach()
    win.base_nll = _nll(win.base_logp, ids)
    for name in emu.names:
        win.partials[name] = sinks[name][0]
        grad = outputs[name].grad
        assert grad is not None
        win.fisher[name] = grad[0].float().square()
    win.layer_kwargs = {k: (v.detach() if isinstance(v, torch.Tensor) else
                            tuple(t.detach() for t in v) if isinstance(v, tuple) else v)
                        for k, v in win.layer_kwargs.items()}
    return win


def _run_from(emu: _Switchable, win: _Window, layer: int) -> torch.Tensor:
    """Log-probabilities of the model run from decoder layer ``layer`` on, from the cached input."""
    model = emu.model
    _, layers = find_layers(model)
    with torch.no_grad():
        h = win.layer_inputs[layer]
        for decoder in layers[layer:]:
            out = decoder(h, **win.layer_kwargs)
            h = out[0] if isinstance(out, tuple) else out
        return _log_probs(model, model.model.norm(h))


def _layer_of(name: str) -> int:
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    raise EvalSetupError(f"no layer index in module name {name!r}")


# -- results ---------------------------------------------------------------------------------------------


@dataclass
class Measured:
    """One candidate of one module: wire cost, proxy, and (if measured) KL and NLL increase per token."""

    candidate: Candidate
    bytes: int
    sends: float
    proxy: float
    kl: float | None = None
    dnll: float | None = None

    @property
    def bits(self) -> float:
        return 8 * self.bytes / self.sends

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate.label, "bits": self.bits, "bytes": self.bytes, "sends": self.sends,
                "proxy": self.proxy, "kl": self.kl, "dnll": self.dnll}


@dataclass
class Sensitivity:
    """Per module, every candidate's wire cost and proxy, and the measured KL / NLL increase of the kept ones."""

    modules: dict[str, list[Measured]]
    meta: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "modules": {n: [m.to_dict() for m in ms] for n, ms in self.modules.items()}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], rotation_seed: int = DEFAULT_ROTATION_SEED) -> Sensitivity:
        try:
            modules = {n: [Measured(Candidate.parse(m["candidate"], rotation_seed), int(m["bytes"]), float(m["sends"]),
                                    float(m["proxy"]), m.get("kl"), m.get("dnll")) for m in ms]
                       for n, ms in doc["modules"].items()}
            return cls(modules, dict(doc.get("meta", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise EvalSetupError(f"not a sensitivity document: {type(exc).__name__}: {exc}") from None


def _front(rows: Sequence[Measured], limit: int) -> list[Measured]:
    """The (bits, proxy) Pareto front, at most ``limit`` rows: lower convex hull first, then the other front rows."""
    ordered = sorted((r for r in rows if r.candidate.compressed), key=lambda r: (r.bits, r.proxy))
    front: list[Measured] = []
    for r in ordered:
        if not front or r.proxy < front[-1].proxy:
            if front and front[-1].bits == r.bits:
                front.pop()
            front.append(r)
    hull: list[Measured] = []
    for r in front:  # lower convex hull of the front (monotone chain)
        while len(hull) >= 2:
            (a, b) = hull[-2], hull[-1]
            cross = (b.bits - a.bits) * (r.proxy - a.proxy) - (b.proxy - a.proxy) * (r.bits - a.bits)
            if cross <= 0:
                hull.pop()
            else:
                break
        hull.append(r)
    rest = [r for r in front if r not in hull]
    # the rest by how far below the hull's chord they would sit, i.e. the hull's neighbours first
    picked = hull[:limit] + rest[: max(0, limit - len(hull))]
    return sorted(picked, key=lambda r: r.bits)


def _allocation_rows(rows: Sequence[Measured]) -> list[Measured]:
    """A module's options for the allocation: its measured candidates; if none was measured
    (``max_measured=0``), every candidate, with the proxy standing in for the KL."""
    measured = [r for r in rows if r.kl is not None]
    if any(r.candidate.compressed for r in measured):
        return measured
    return list(rows)


# -- the tuner -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneConfig:
    """What :func:`tune` measures and how it allocates (``mxcomm tune``'s options)."""

    world_size: int = 3
    comm_dtype: torch.dtype = torch.bfloat16
    sensitivity_windows: int = 2
    max_measured: int = 8
    max_bits_measured: float = 9.0
    rounds: int = 4
    resolution: float = 1 / 256
    seed: int = 0


@dataclass
class Outcome:
    """One allocation and its end-to-end measurement on the calibration windows."""

    budget: str
    assignment: dict[str, Candidate]
    bits: float
    predicted_kl: float
    predicted_dnll: float
    measured_kl: float
    measured_dnll: float
    rounds: list[dict[str, float]]

    @property
    def measured_ppl_pct(self) -> float:
        return 100 * math.expm1(self.measured_dnll)

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "bits": self.bits, "compression_vs_bf16": 16 / self.bits,
                "predicted_kl": self.predicted_kl, "predicted_dnll": self.predicted_dnll,
                "measured_kl": self.measured_kl, "measured_dnll": self.measured_dnll,
                "measured_ppl_pct": self.measured_ppl_pct, "rounds": self.rounds,
                "assignment": {n: c.label for n, c in self.assignment.items()}}


class Tuner:
    """Sensitivity measurement and allocation for one model on fixed calibration windows (module docstring).

    Args:
        model: An unsharded Llama-family transformers model (float32, eval mode).
        calibration: Token windows, shape ``[windows, tokens]``; the first
            ``config.sensitivity_windows`` are the sensitivity windows.
        outliers: The outlier channels per module (most outlying first) for candidates with k > 0.
        config: See :class:`TuneConfig`.
        log: Progress lines.
    """

    def __init__(self, model: nn.Module, calibration: torch.Tensor, outliers: OutlierCalibration | None,
                 config: TuneConfig = TuneConfig(), log: Log = log_stderr) -> None:
        if calibration.dim() != 2 or calibration.shape[1] < 2:
            raise EvalSetupError(f"calibration windows must be [windows, tokens >= 2], got {tuple(calibration.shape)}")
        if not 1 <= config.sensitivity_windows <= calibration.shape[0]:
            raise EvalSetupError(f"sensitivity_windows must lie in [1, {calibration.shape[0]}], "
                                 f"got {config.sensitivity_windows}")
        self.model, self.data, self.outliers, self.config, self.log = model, calibration, outliers, config, log
        self.emu = _Switchable(model, config.world_size, config.comm_dtype, self._channels)
        self.names = self.emu.names
        hidden = model.config.hidden_size
        self.shape = (calibration.shape[1], hidden)
        self.elem_size = torch.empty(0, dtype=config.comm_dtype).element_size()
        self._windows: list[_Window] | None = None

    def _channels(self, name: str, k: int) -> Sequence[int]:
        if self.outliers is None:
            raise EvalSetupError("candidates with outlier channels need an outlier calibration")
        if k > len(self.outliers.channels.get(name, ())):
            raise EvalSetupError(f"{name}: the calibration holds {len(self.outliers.channels.get(name, ()))} "
                                 f"channels, a candidate asks for {k}")
        return self.outliers.channels[name][:k]

    @contextmanager
    def session(self) -> Iterator[Tuner]:
        """Within the block the model is emulated (the tuner's measurements need it)."""
        with self.emu:
            yield self

    def windows(self) -> list[_Window]:
        if self._windows is None:
            t0 = time.perf_counter()
            self._windows = []
            for i, ids in enumerate(self.data):
                detail = i < self.config.sensitivity_windows
                self._windows.append(_baseline(self.emu, ids, detail, self.config.seed + i))
                self.log(f"[tune] baseline window {i + 1}/{self.data.shape[0]}{' (+ partials, Fisher)' if detail else ''}"
                         f"  {time.perf_counter() - t0:.0f} s")
        return self._windows

    def _option_cost(self, c: Candidate) -> tuple[int, float]:
        return c.wire(self.shape, self.elem_size, self.config.world_size)

    # -- proxy and sensitivity ----------------------------------------------------------------------

    def proxy(self, candidates: Sequence[Candidate]) -> dict[str, list[Measured]]:
        """Every candidate of every module: wire cost and the Fisher-weighted error (KL estimate per token)."""
        wins = [w for w in self.windows() if w.partials]
        tokens = sum(w.ids.numel() - 1 for w in wins)
        out: dict[str, list[Measured]] = {}
        t0 = time.perf_counter()
        for i, name in enumerate(self.names):
            rows = []
            for c in candidates:
                nbytes, sends = self._option_cost(c)
                if not c.compressed:
                    rows.append(Measured(c, nbytes, sends, 0.0, 0.0, 0.0))
                    continue
                red = c.reduction(self.config.comm_dtype)
                chans = torch.as_tensor(list(self._channels(name, c.outliers))) if c.outliers else None
                err = 0.0
                for w in wins:
                    parts = w.partials[name]
                    delta = red(parts, chans).float() - self.emu.none(parts).float()
                    err += 0.5 * float((w.fisher[name] * delta.square()).sum())
                rows.append(Measured(c, nbytes, sends, err / tokens))
            out[name] = rows
            self._progress("proxy", i + 1, len(self.names), t0)
        return out

    def sensitivity(self, candidates: Sequence[Candidate]) -> Sensitivity:
        """Proxy for every candidate, then KL and NLL increase measured for each module's kept ones."""
        cfg = self.config
        proxies = self.proxy(candidates)
        wins = [w for w in self.windows() if w.partials]
        kept = {n: _front([r for r in rows if r.bits <= cfg.max_bits_measured], cfg.max_measured)
                for n, rows in proxies.items()}
        total = sum(len(v) for v in kept.values())
        if total:
            self.log(f"[tune] measuring {total} (module, candidate) pairs on {len(wins)} window(s)")
        else:
            self.log("[tune] max_measured=0: the allocation uses the proxy as each module's KL (nothing measured)")
        done, t0 = 0, time.perf_counter()
        for name in self.names:
            layer = _layer_of(name)
            for row in kept[name]:
                self.emu.set(name, row.candidate)
                kl = dnll = 0.0
                count = 0
                try:
                    for w in wins:
                        logp = _run_from(self.emu, w, layer)
                        kl += float(_kl(w.base_logp, logp).sum())
                        dnll += float((_nll(logp, w.ids) - w.base_nll).sum())
                        count += w.ids.numel() - 1
                finally:
                    self.emu.set(name, Candidate(None))
                row.kl, row.dnll = kl / count, dnll / count
                done += 1
                self._progress("sensitivity", done, total, t0, f"{name} {row.candidate.label}: KL {row.kl:.2e}")
        meta = {"world_size": cfg.world_size, "comm_dtype": str(cfg.comm_dtype).removeprefix("torch."),
                "window_tokens": int(self.data.shape[1]), "sensitivity_windows": len(wins),
                "tokens": sum(w.ids.numel() - 1 for w in wins), "candidates": len(candidates)}
        return Sensitivity(proxies, meta)

    def _progress(self, what: str, done: int, total: int, t0: float, extra: str = "") -> None:
        elapsed = time.perf_counter() - t0
        eta = elapsed / done * (total - done)
        self.log(f"[tune {what} {done}/{total}] {elapsed / 60:.1f} min, eta {eta / 60:.1f} min  {extra}".rstrip())

    # -- end to end ---------------------------------------------------------------------------------

    def measure(self, assignment: Mapping[str, Candidate]) -> tuple[float, float]:
        """(KL, NLL increase) per token of ``assignment`` on all calibration windows."""
        self.emu.set_all(assignment)
        kl = dnll = 0.0
        count = 0
        try:
            with torch.no_grad():
                for w in self.windows():
                    logp = _log_probs(self.model, self.model.model(input_ids=w.ids[None], use_cache=False)
                                      .last_hidden_state)
                    kl += float(_kl(w.base_logp, logp).sum())
                    dnll += float((_nll(logp, w.ids) - w.base_nll).sum())
                    count += w.ids.numel() - 1
        finally:
            self.emu.set_all({})
        return kl / count, dnll / count

    def allocate(self, sens: Sensitivity, *, max_bits: float | None = None, max_ppl_pct: float | None = None,
                 label: str = "") -> Outcome:
        """One plan: least predicted loss under ``max_bits``, or fewest bits under ``max_ppl_pct`` (corrected).

        The loss predicted for a choice is the sum of its modules' measured KL (the allocation's
        objective); the measured end-to-end NLL increase on the calibration windows corrects a
        ``max_ppl_pct`` budget: the KL budget is scaled by target / measured, for ``config.rounds``
        rounds, and the plan with the fewest bits among those meeting the target is returned (the
        one of least measured loss if none does).
        """
        if (max_bits is None) == (max_ppl_pct is None):
            raise EvalSetupError("give exactly one budget: max_bits or max_ppl_pct")
        names = self.names
        rows = {n: _allocation_rows(sens.modules[n]) for n in names}
        options = [[Option(r.bytes, r.sends, float(r.kl if r.kl is not None else r.proxy)) for r in rows[n]]
                   for n in names]

        def outcome_of(choice: list[int], history: list[dict[str, float]]) -> Outcome:
            assignment = {n: rows[n][i].candidate for n, i in zip(names, choice)}
            kl, dnll = self.measure(assignment)
            pred_dnll = sum(float(rows[n][i].dnll or 0.0) for n, i in zip(names, choice))  # 0 where not measured
            return Outcome(label, assignment, wire_bits(options, choice), total_loss(options, choice), pred_dnll,
                           kl, dnll, history)

        if max_bits is not None:
            choice = min_loss(options, max_bits, self.config.resolution)
            if choice is None:
                raise EvalSetupError(f"no candidate set fits {max_bits} wire bits per element")
            out = outcome_of(choice, [])
            self.log(f"[tune] {label}: {out.bits:.3f} bits, predicted KL {out.predicted_kl:.4f}, "
                     f"measured KL {out.measured_kl:.4f}, dNLL {out.measured_dnll:+.4f} ({out.measured_ppl_pct:+.2f}%)")
            return out
        assert max_ppl_pct is not None
        target = math.log1p(max_ppl_pct / 100)
        budget, history, tried = target, [], []
        for r in range(self.config.rounds):
            choice = min_bits(options, budget, self.config.resolution)
            if choice is None:
                raise EvalSetupError(f"no candidate set has a predicted KL below {budget:.3g}")
            out = outcome_of(choice, history)
            history.append({"budget_kl": budget, "bits": out.bits, "predicted_kl": out.predicted_kl,
                            "measured_kl": out.measured_kl, "measured_dnll": out.measured_dnll})
            tried.append(out)
            self.log(f"[tune] {label} round {r + 1}: KL budget {budget:.4f} -> {out.bits:.3f} bits, predicted KL "
                     f"{out.predicted_kl:.4f}, measured KL {out.measured_kl:.4f}, dNLL {out.measured_dnll:+.4f} "
                     f"({out.measured_ppl_pct:+.2f}%, target {max_ppl_pct:+.2f}%)")
            # the NLL increase is the target; it moves with the KL, which is far less noisy: correct by both
            measured = max(out.measured_dnll, 1e-9)
            budget *= min(max(target / measured, 0.5), 2.0)
        meeting = [o for o in tried if o.measured_dnll <= target]
        best = min(meeting, key=lambda o: o.bits) if meeting else min(tried, key=lambda o: o.measured_dnll)
        best.rounds = history
        return best

    # -- plans --------------------------------------------------------------------------------------

    def plan(self, outcome: Outcome, description: str) -> CommPlan:
        """The :class:`CommPlan` of an outcome: one complete entry per tuned module (wire dtype included).

        Other modules whose all-reduce :func:`mxcomm.tp.parallelize` would run (a vocabulary-parallel
        embedding: one non-zero partial per token, an exact sum) get an explicit uncompressed entry in
        the compute dtype, so the plan means the same whatever defaults it is applied with.
        """
        from mxcomm.tp.hf import row_parallel_modules

        dtype = str(self.config.comm_dtype).removeprefix("torch.")
        entries = [PlanEntry(name, "none", "none", COMPUTE_DTYPE, ())
                   for name in row_parallel_modules(self.model, self.config.world_size) if name not in self.names]
        for name in self.names:
            c = outcome.assignment[name]
            if not c.compressed:
                entries.append(PlanEntry(name, "none", "none", dtype, ()))
                continue
            entries.append(PlanEntry(name, c.block_format(), c.algorithm, dtype,
                                     tuple(self._channels(name, c.outliers)) if c.outliers else (),
                                     gather_format=c.gather_format()))
        return CommPlan(self.model, entries, description)


def assignment_of_plan(plan: CommPlan, names: Sequence[str], outliers: OutlierCalibration | None) -> dict[str, Candidate]:
    """The per-module candidates of a plan :meth:`Tuner.plan` wrote (one exact entry per module).

    Raises:
        EvalSetupError: a module without an entry, or outlier channels that are not the
            calibration's most outlying ones (a candidate names only how many).
    """
    out: dict[str, Candidate] = {}
    for e in plan.entries:
        if e.module not in names:
            continue
        fmt = e.block_format
        if fmt is None:
            out[e.module] = Candidate(None)
            continue
        chans = list(e.outlier_channels or ())
        if chans and (outliers is None or sorted(outliers.channels[e.module][: len(chans)]) != chans):
            raise EvalSetupError(f"{e.module}: the plan's outlier channels are not the calibration's top {len(chans)}")
        gather = e.gather_format if isinstance(e.gather_format, BlockFormat) else None
        out[e.module] = Candidate(plain_name(fmt.name), fmt.rotation_seed, len(chans), e.algorithm or "allgather",
                                  gather.name if gather is not None else None)
    missing = [n for n in names if n not in out]
    if missing:
        raise EvalSetupError(f"the plan sets no entry for {missing[:4]}")
    return out


# -- evaluation on held-out windows ---------------------------------------------------------------------------


def evaluate(
    model: nn.Module,
    data: torch.Tensor,
    settings: Mapping[str, Mapping[str, Candidate]],
    *,
    outliers: OutlierCalibration | None,
    world_size: int = 3,
    comm_dtype: torch.dtype = torch.bfloat16,
    log: Log = log_stderr,
    keep_token_nll: bool = False,
) -> list[dict[str, Any]]:
    """Emulated per-token NLL of each setting (label -> module -> candidate; ``{}`` = uncompressed) on ``data``.

    Returns one row per setting: label, perplexity, wire bits per element (exact, for windows of
    ``data``'s length), the paired Δ against the ``{}`` setting (which must be present), the
    per-module candidate labels, and with ``keep_token_nll`` the per-token NLL (float64 tensor).
    """
    if not any(not s for s in settings.values()):
        raise EvalSetupError("the evaluation needs the uncompressed setting ({}) as the baseline")
    tuner = Tuner(model, data, outliers, TuneConfig(world_size=world_size, comm_dtype=comm_dtype,
                                                    sensitivity_windows=1), log)
    rows, nlls = [], {}
    t0 = time.perf_counter()
    with tuner.emu:
        for i, (label, assignment) in enumerate(settings.items()):
            tuner.emu.set_all(assignment)
            out = []
            with torch.no_grad():
                for ids in data:
                    logp = _log_probs(model, model.model(input_ids=ids[None], use_cache=False).last_hidden_state)
                    out.append(_nll(logp, ids))
            tuner.emu.set_all({})
            nll = torch.cat(out)
            nlls[label] = nll
            costs = [tuner._option_cost(assignment.get(n, Candidate(None))) for n in tuner.names]
            bits = 8 * sum(b for b, _ in costs) / sum(s for _, s in costs)
            rows.append({"label": label, "ppl": math.exp(float(nll.mean())), "bits": bits,
                         "compression_vs_bf16": 16 / bits, "tokens": nll.numel(),
                         "assignment": {n: c.label for n, c in assignment.items()}})
            elapsed = time.perf_counter() - t0
            log(f"[tune eval {i + 1}/{len(settings)}] {label:<40} ppl {rows[-1]['ppl']:8.4f}  bits {bits:6.3f}  "
                f"(eta {elapsed / (i + 1) * (len(settings) - i - 1) / 60:.1f} min)")
    base = next(label for label, s in settings.items() if not s)
    for r in rows:
        r["paired"] = paired_delta(nlls[r["label"]].tolist(), nlls[base].tolist())
        if keep_token_nll:
            r["token_nll"] = nlls[r["label"]]
    return rows


def uniform(names: Sequence[str], candidate: Candidate) -> dict[str, Candidate]:
    """Every module with the same candidate ({} for ``none``)."""
    return {} if not candidate.compressed else dict.fromkeys(names, candidate)


__all__ = ["Candidate", "Measured", "Outcome", "Sensitivity", "TuneConfig", "Tuner", "assignment_of_plan",
           "candidate_grid", "evaluate", "uniform"]
