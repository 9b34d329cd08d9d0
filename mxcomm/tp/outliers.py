"""Calibrated outlier channels for the compressed row-parallel all-reduces.

LLM row-parallel outputs carry a few *consistent* outlier features (arXiv
2411.07942): the same hidden channels are large for almost every token. In a
block format one such value sets its block's shared scale and flushes the
block's other values. :func:`calibrate_outliers` finds those channels per
row-parallel module from a few batches of real activations;
:class:`OutlierCalibration` holds them, is saved and loaded as JSON next to a
TP plan, and is handed to :func:`mxcomm.tp.parallelize_llama` (or
:class:`mxcomm.tp.CompressedRowwiseParallel` / :func:`set_outlier_channels`),
whose all-reduce then sends those channels uncompressed beside the quantized
rest (:func:`mxcomm.collectives.all_reduce_with_outliers`).

Score of a channel: the mean over calibration tokens of ``|y[token, channel]|``
of the module's *full* output (the sum of the partials), measured on the
unsharded model (or the reduced outputs of a sharded one). A consistent outlier feature has a large mean magnitude; a
channel that is large for one token only does not, and is left to the block
format. Channels are stored most-outlying first, so a calibration of 32
channels also serves every smaller ``k``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mxcomm.tp.style import TPPlanError, compressed_modules

# The Llama row-parallel projections (mxcomm.tp.llama imports this module, so the names live here too).
ROWWISE_PROJECTIONS: tuple[str, ...] = ("self_attn.o_proj", "mlp.down_proj")

#: Version of the JSON document written by :meth:`OutlierCalibration.save`.
CALIBRATION_VERSION = 1


@dataclass(frozen=True)
class OutlierCalibration:
    """Per-module outlier channels, most outlying first.

    Attributes:
        channels: module name (as in ``model.named_modules()``) -> channel
            indices into the output's last dimension, by descending score.
        scores: the matching scores (mean ``|y|`` over the calibration tokens).
        hidden: size of the channel (last) dimension.
        tokens: number of calibration tokens the scores were measured on.
        source: free text saying what the calibration data was.
        metric: how the scores were computed (``"mean_abs"``).

    Raises:
        TPPlanError: inconsistent fields (on construction, ``from_dict`` and ``load``).
    """

    channels: Mapping[str, tuple[int, ...]]
    scores: Mapping[str, tuple[float, ...]]
    hidden: int
    tokens: int
    source: str = ""
    metric: str = field(default="mean_abs")

    def __post_init__(self) -> None:
        if not isinstance(self.hidden, int) or self.hidden < 1:
            raise TPPlanError(f"hidden must be a positive int, got {self.hidden!r}")
        for name, chans in self.channels.items():
            if not isinstance(name, str):
                raise TPPlanError(f"module names must be strings, got {name!r}")
            if len(set(chans)) != len(chans) or any(
                not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < self.hidden for c in chans
            ):
                raise TPPlanError(f"{name}: channels must be distinct ints in [0, {self.hidden}), got {list(chans)}")
            if len(self.scores.get(name, ())) != len(chans):
                raise TPPlanError(f"{name}: {len(chans)} channels but {len(self.scores.get(name, ()))} scores")

    @property
    def max_k(self) -> int:
        """The largest ``k`` every module can serve."""
        return min((len(c) for c in self.channels.values()), default=0)

    def top(self, k: int) -> dict[str, list[int]]:
        """Module name -> its ``k`` most outlying channels (``k=0``: no channels)."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise TPPlanError(f"k must be a non-negative int, got {k!r}")
        if k > self.max_k:
            raise TPPlanError(f"this calibration holds only {self.max_k} channels per module, asked for {k}")
        return {name: list(chans[:k]) for name, chans in self.channels.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": CALIBRATION_VERSION,
            "metric": self.metric,
            "hidden": self.hidden,
            "tokens": self.tokens,
            "source": self.source,
            "modules": {name: {"channels": list(self.channels[name]), "scores": list(self.scores[name])}
                        for name in self.channels},
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> OutlierCalibration:
        try:
            if doc["version"] != CALIBRATION_VERSION:
                raise TPPlanError(f"outlier calibration version {doc['version']!r}, expected {CALIBRATION_VERSION}")
            modules = doc["modules"]
            return cls(
                channels={name: tuple(m["channels"]) for name, m in modules.items()},
                scores={name: tuple(float(s) for s in m["scores"]) for name, m in modules.items()},
                hidden=doc["hidden"],
                tokens=int(doc["tokens"]),
                source=str(doc.get("source", "")),
                metric=str(doc.get("metric", "mean_abs")),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            if isinstance(exc, TPPlanError):
                raise
            raise TPPlanError(f"not an mxcomm outlier calibration: {type(exc).__name__}: {exc}") from None

    def save(self, path: str | Path) -> None:
        """Write the calibration as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> OutlierCalibration:
        """Read a calibration written by :meth:`save`; malformed files raise :class:`TPPlanError`."""
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TPPlanError(f"cannot read outlier calibration {path}: {exc}") from None
        if not isinstance(doc, dict):
            raise TPPlanError(f"not an mxcomm outlier calibration: {path}")
        return cls.from_dict(doc)


def _default_modules(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name.endswith(ROWWISE_PROJECTIONS)]


def calibrate_outliers(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    max_channels: int = 32,
    modules: Sequence[str] | None = None,
    forward: Any = None,
    source: str = "",
) -> OutlierCalibration:
    """Measure each row-parallel module's most outlying output channels on ``batches``.

    Args:
        model: the unsharded model, or a sharded one whose row-parallel
            modules return their replicated (reduced) output as a plain
            tensor (the hook then sees the full sum; every rank must run the
            calibration, as it communicates). A ``DTensor`` output raises.
        batches: inputs; each is passed to ``forward(model, batch)``
            (default: ``model(batch)``, e.g. token-id tensors for a causal LM).
        max_channels: how many channels to keep per module (serves every ``k``
            up to it).
        modules: names of the modules to calibrate (default: every Llama
            ``self_attn.o_proj`` and ``mlp.down_proj``).
        forward: ``forward(model, batch)`` runs one batch (default: ``model(batch)``).
        source: description of the calibration data, stored with the result.

    Returns:
        The :class:`OutlierCalibration` (save it with :meth:`OutlierCalibration.save`).

    Raises:
        TPPlanError: no modules to calibrate, an unknown module, a module that never ran or
            returned a ``DTensor``, or ``max_channels`` out of range.
    """
    names = list(modules) if modules is not None else _default_modules(model)
    if not names:
        raise TPPlanError(f"no row-parallel modules to calibrate in {type(model).__name__}")
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def make_hook(name: str) -> Any:
        def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
            if type(out) is not torch.Tensor:  # a DTensor: the model is already sharded
                raise TPPlanError(f"{name} returned {type(out).__name__}, not a plain tensor of the full output")
            flat = out.detach().reshape(-1, out.shape[-1]).abs().to(torch.float64)
            sums[name] = sums.get(name, 0) + flat.sum(0)
            counts[name] = counts.get(name, 0) + flat.shape[0]

        return hook

    try:
        for name in names:
            hooks.append(model.get_submodule(name).register_forward_hook(make_hook(name)))
    except AttributeError as exc:
        for h in hooks:
            h.remove()
        raise TPPlanError(f"cannot calibrate: {exc}") from None
    try:
        with torch.no_grad():
            for batch in batches:
                (forward or (lambda m, b: m(b)))(model, batch)
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n in names if n not in sums]
    if missing:
        raise TPPlanError(f"modules never ran during calibration: {missing[:4]}{'...' if len(missing) > 4 else ''}")
    hidden = int(next(iter(sums.values())).numel())
    if not 0 < max_channels <= hidden:
        raise TPPlanError(f"max_channels must lie in [1, {hidden}], got {max_channels}")
    channels, scores = {}, {}
    for name in names:
        score = sums[name] / counts[name]
        # stable order: by descending score, ties by channel index
        order = sorted(range(hidden), key=lambda c: (-float(score[c]), c))[:max_channels]
        channels[name] = tuple(order)
        scores[name] = tuple(float(score[c]) for c in order)
    tokens = counts[names[0]]
    return OutlierCalibration(channels, scores, hidden, tokens, source)


def set_outlier_channels(
    model: nn.Module,
    outliers: OutlierCalibration | Mapping[str, Sequence[int]] | None,
    k: int | None = None,
) -> int:
    """Give the compressed row-parallel modules of ``model`` their outlier channels (no re-sharding).

    Args:
        model: A model parallelized with :class:`~mxcomm.tp.CompressedRowwiseParallel` modules.
        outliers: A calibration, a mapping module name -> channels, or ``None`` to remove
            them everywhere. Modules the mapping does not name get none.
        k: How many of a calibration's channels per module (``None``: all it holds).

    Returns:
        The number of modules that now send outlier channels.

    Raises:
        TPPlanError: the mapping names a module that is not compressed row-parallel, or a bad ``k``.
    """
    targets = compressed_modules(model)
    if outliers is None:
        mapping: Mapping[str, Sequence[int]] = {}
    elif isinstance(outliers, OutlierCalibration):
        mapping = outliers.top(outliers.max_k if k is None else k)
    else:
        mapping = outliers
    unknown = [n for n in mapping if n not in targets]
    if unknown:
        raise TPPlanError(f"outlier channels for modules that are not CompressedRowwiseParallel: {unknown[:4]}")
    for name, comm in targets.items():
        comm.set_outlier_channels(mapping.get(name))
    return sum(1 for comm in targets.values() if comm.outlier_channels is not None)
