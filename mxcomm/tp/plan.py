"""Per-module communication plans: which format, algorithm, wire dtype and outlier channels each all-reduce uses.

A :class:`CommPlan` is an ordered list of :class:`PlanEntry` objects, each
naming one module or a glob over module names (``fnmatch``: ``*`` also
matches dots) and the settings it overrides. The settings of a module start
from the arguments of :func:`mxcomm.tp.compress` / :func:`mxcomm.tp.parallelize`
(``fmt``, ``algorithm``, ``comm_dtype``, ``outliers``); every entry that
matches the module then overrides the fields it sets, in order (later entries
win, as in a cascade). A field left ``None`` inherits.

A plan records the model it was made for (:class:`ModelIdentity`: architecture
and the config sizes that decide the module names and widths); using it on
another model raises :class:`~mxcomm.tp.TPPlanError`. So do entries that match
no module whose all-reduce mxcomm runs, unknown formats and channels outside a
module's output width -- each error names the offending entry.

:func:`save_plan` / :func:`load_plan` write and read the plan as versioned JSON.
Formats are stored by registered name (a registered format, or one with
``rounding`` / ``scale_mode`` / ``rotation_seed`` changed from one); register
custom formats before loading a plan that names them.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
import torch.nn as nn

from mxcomm.collectives.algorithms import REQUESTABLE
from mxcomm.errors import FormatError
from mxcomm.formats import BlockFormat, get_format
from mxcomm.formats.block import plain_name
from mxcomm.tp.outliers import OutlierCalibration
from mxcomm.tp.style import _COMM_DTYPES, FormatLike, RowwiseComm, TPPlanError, resolve_format

#: ``"format"`` field of a saved plan document, and its version.
PLAN_DOCUMENT = "mxcomm-tp-plan"
#: The newest plan version (2 added ``gather_format``); a plan is saved as the oldest version that
#: holds all it sets, so plans without the newer fields stay readable by older mxcomm.
PLAN_VERSION = 2
READABLE_VERSIONS: tuple[int, ...] = (1, 2)

#: Config fields a :class:`ModelIdentity` compares (those present in the model's text config).
IDENTITY_FIELDS: tuple[str, ...] = (
    "model_type", "num_hidden_layers", "hidden_size", "intermediate_size",
    "num_attention_heads", "num_key_value_heads", "vocab_size",
)
#: ``comm_dtype`` spelling for "the compute dtype" (no cast), distinct from ``None`` ("inherit").
COMPUTE_DTYPE = "compute"
_DTYPE_NAMES: dict[str, torch.dtype] = {str(d).removeprefix("torch."): d for d in _COMM_DTYPES}
# format options a saved plan may change relative to a registered format
_FORMAT_OPTIONS: tuple[str, ...] = ("rounding", "scale_mode", "rotation_seed")

CommDtypeLike = Union[torch.dtype, str, None]


@dataclass(frozen=True)
class ModelIdentity:
    """What a plan was made for: the model class and the config sizes module names and widths depend on.

    Attributes:
        architecture: Class name of the model (``LlamaForCausalLM``).
        config: Field -> value for the :data:`IDENTITY_FIELDS` the model's (text) config has.
        name: ``config._name_or_path`` when known; informative only, never compared (the same
            model loads from a hub name or a local folder).
    """

    architecture: str
    config: Mapping[str, Any]
    name: str = ""

    @classmethod
    def of(cls, model: nn.Module) -> ModelIdentity:
        """The identity of a transformers model (sharded or not)."""
        config = getattr(model, "config", None)
        if config is None:
            raise TPPlanError(f"{type(model).__name__} has no transformers config; a plan needs a transformers model")
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        values = {}
        for key in IDENTITY_FIELDS:
            value = getattr(text, key, None)
            if isinstance(value, (int, str)) and not isinstance(value, bool):
                values[key] = value
        return cls(type(model).__name__, values, str(getattr(config, "_name_or_path", "") or ""))

    def describe(self) -> str:
        return f"{self.architecture}({', '.join(f'{k}={v}' for k, v in self.config.items())})"

    def check(self, model: nn.Module) -> None:
        """Raise :class:`TPPlanError` unless ``model`` has this identity."""
        other = ModelIdentity.of(model)
        diffs = [f"architecture {self.architecture} != {other.architecture}"] if other.architecture != self.architecture else []
        diffs += [f"{k}={v!r} != {other.config.get(k)!r}" for k, v in self.config.items() if other.config.get(k) != v]
        if diffs:
            raise TPPlanError(f"plan made for {self.describe()} does not fit this model: {'; '.join(diffs)}")

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "name": self.name, "config": dict(self.config)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ModelIdentity:
        if not isinstance(doc, Mapping) or not isinstance(doc.get("architecture"), str) \
                or not isinstance(doc.get("config", {}), Mapping):
            raise TPPlanError(f"plan 'model' must hold an architecture and a config mapping, got {doc!r}")
        return cls(doc["architecture"], dict(doc.get("config", {})), str(doc.get("name", "")))


def _entry_error(module: str, what: str) -> TPPlanError:
    return TPPlanError(f"plan entry {module!r}: {what}")


@dataclass(frozen=True)
class PlanEntry:
    """Settings for the modules matching ``module`` (an exact name or a glob); ``None`` fields inherit.

    Attributes:
        module: Module name as in ``model.named_modules()`` (``model.layers.3.mlp.down_proj``) or a
            glob (``model.layers.*.mlp.down_proj``, ``*``).
        fmt: A registered format name, a :class:`~mxcomm.formats.BlockFormat` (rotated formats
            included), or ``"none"`` for mxcomm's uncompressed path.
        algorithm: ``"auto"``, ``"allgather"``, ``"two_shot"`` or ``"none"``.
        comm_dtype: The wire dtype: ``torch.float32`` / ``bfloat16`` / ``float16`` (or their names),
            or ``"compute"`` for the compute dtype.
        outlier_channels: Output channels sent uncompressed beside the compressed rest; ``()`` for none.
        gather_format: Two-shot's all-gather format (``all_reduce(..., gather_fmt=...)``), like
            ``fmt``; ``"none"`` removes one set by an earlier entry (the gather phase then uses
            the format itself). Plan version 2.

    Raises:
        TPPlanError: an unknown format, algorithm or wire dtype, or bad channels (naming ``module``).
    """

    module: str
    fmt: BlockFormat | str | None = None
    algorithm: str | None = None
    comm_dtype: CommDtypeLike = None
    outlier_channels: tuple[int, ...] | None = None
    gather_format: BlockFormat | str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.module, str) or not self.module:
            raise TPPlanError(f"plan entry module must be a non-empty string, got {self.module!r}")
        if self.fmt is not None:
            try:
                resolved = resolve_format(self.fmt)
            except FormatError as exc:
                raise _entry_error(self.module, str(exc)) from None
            object.__setattr__(self, "fmt", "none" if resolved is None else resolved)
        if self.gather_format is not None:
            try:
                resolved = resolve_format(self.gather_format)
            except FormatError as exc:
                raise _entry_error(self.module, f"gather_format: {exc}") from None
            object.__setattr__(self, "gather_format", "none" if resolved is None else resolved)
        if self.algorithm is not None and self.algorithm not in REQUESTABLE:
            raise _entry_error(self.module, f"algorithm must be one of {tuple(a.value for a in REQUESTABLE)}, "
                                            f"got {self.algorithm!r}")
        if self.algorithm is not None:
            object.__setattr__(self, "algorithm", str(getattr(self.algorithm, "value", self.algorithm)))
        if self.comm_dtype is not None:
            object.__setattr__(self, "comm_dtype", _parse_dtype(self.comm_dtype, self.module))
        if self.outlier_channels is not None:
            chans = self.outlier_channels
            if isinstance(chans, torch.Tensor):
                chans = chans.reshape(-1).tolist()
            if isinstance(chans, (str, bytes)) or not isinstance(chans, Iterable) or any(
                not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in chans
            ):
                raise _entry_error(self.module, f"outlier_channels must be non-negative ints, got {self.outlier_channels!r}")
            object.__setattr__(self, "outlier_channels", tuple(sorted(set(chans))))

    @property
    def block_format(self) -> BlockFormat | None:
        """The format this entry sets (``None`` when it sets none or sets ``"none"``)."""
        return self.fmt if isinstance(self.fmt, BlockFormat) else None

    @property
    def version(self) -> int:
        """The oldest plan version that holds this entry."""
        return 2 if self.gather_format is not None else 1

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"module": self.module}
        if self.fmt is not None:
            doc["format"] = "none" if self.fmt == "none" else _format_to_json(self.fmt, self.module)  # type: ignore[arg-type]
        if self.algorithm is not None:
            doc["algorithm"] = self.algorithm
        if self.comm_dtype is not None:
            doc["comm_dtype"] = self.comm_dtype if isinstance(self.comm_dtype, str) else \
                str(self.comm_dtype).removeprefix("torch.")
        if self.outlier_channels is not None:
            doc["outlier_channels"] = list(self.outlier_channels)
        if self.gather_format is not None:
            doc["gather_format"] = "none" if self.gather_format == "none" else \
                _format_to_json(self.gather_format, self.module)  # type: ignore[arg-type]
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> PlanEntry:
        """An entry from its JSON form (``format``: a name, ``"none"``, or ``{"name": ..., options}``)."""
        if not isinstance(doc, Mapping) or not isinstance(doc.get("module"), str):
            raise TPPlanError(f"a plan entry must be an object with a 'module' string, got {doc!r}")
        module = doc["module"]
        unknown = sorted(set(doc) - {"module", "format", "algorithm", "comm_dtype", "outlier_channels",
                                     "gather_format"})
        if unknown:
            raise _entry_error(module, f"unknown fields {unknown}")
        formats = []
        for key in ("format", "gather_format"):
            fmt = doc.get(key)
            if isinstance(fmt, Mapping):
                fmt = _format_from_json(fmt, module)
            elif fmt is not None and not isinstance(fmt, (str, BlockFormat)):
                raise _entry_error(module, f"{key} must be a name, 'none' or {{'name': ..., options}}, got {fmt!r}")
            formats.append(fmt)
        return cls(module, formats[0], doc.get("algorithm"), doc.get("comm_dtype"), doc.get("outlier_channels"),
                   formats[1])


def _parse_dtype(value: CommDtypeLike, module: str) -> torch.dtype | str:
    if value == COMPUTE_DTYPE:
        return COMPUTE_DTYPE
    if isinstance(value, str) and value in _DTYPE_NAMES:
        return _DTYPE_NAMES[value]
    if isinstance(value, torch.dtype) and value in _COMM_DTYPES:
        return value
    raise _entry_error(module, f"comm_dtype must be one of {sorted(_DTYPE_NAMES)} or {COMPUTE_DTYPE!r}, got {value!r}")


def _format_to_json(fmt: BlockFormat, module: str) -> str | dict[str, Any]:
    try:
        if get_format(fmt.name) == fmt:
            return fmt.name
    except FormatError:
        pass
    try:
        base = get_format(plain_name(fmt.name))
    except FormatError:
        base = None
    if base is not None:
        changes = {k: getattr(fmt, k) for k in _FORMAT_OPTIONS if getattr(fmt, k) != getattr(base, k)}
        if base.with_options(**changes) == fmt:
            return {"name": base.name, **{k: str(v) if k != "rotation_seed" else v for k, v in changes.items()}}
    raise _entry_error(module, f"format {fmt.name!r} is not a registered format (or one with only "
                               f"{'/'.join(_FORMAT_OPTIONS)} changed): register it to save the plan")


def _format_from_json(doc: Mapping[str, Any], module: str) -> BlockFormat:
    try:
        if isinstance(doc, Mapping) and isinstance(doc.get("name"), str) and set(doc) <= {"name", *_FORMAT_OPTIONS}:
            return get_format(doc["name"]).with_options(**{k: v for k, v in doc.items() if k != "name"})
    except FormatError as exc:
        raise _entry_error(module, str(exc)) from None
    raise _entry_error(module, f"format must be a name or {{'name': ..., {', '.join(_FORMAT_OPTIONS)}}}, got {doc!r}")


@dataclass(frozen=True, init=False)
class CommPlan:
    """Per-module communication settings for one model (see the module docstring).

    Args:
        model: The model the plan is for (a transformers model, sharded or not) or its
            :class:`ModelIdentity`.
        entries: :class:`PlanEntry` objects, or mappings ``{"module": ..., "fmt"/"format": ...,
            "algorithm": ..., "comm_dtype": ..., "outlier_channels": ...}``; applied in order.
        description: Free text saved with the plan (what it was tuned on, ...).

    Raises:
        TPPlanError: a malformed entry.
    """

    model: ModelIdentity
    entries: tuple[PlanEntry, ...] = ()
    description: str = ""

    def __init__(self, model: ModelIdentity | nn.Module, entries: Iterable[PlanEntry | Mapping[str, Any]] = (),
                 description: str = "") -> None:
        identity = model if isinstance(model, ModelIdentity) else ModelIdentity.of(model)
        parsed = []
        for e in entries:
            if isinstance(e, PlanEntry):
                parsed.append(e)
            elif isinstance(e, Mapping):
                doc = dict(e)
                if "fmt" in doc:
                    doc["format"] = doc.pop("fmt")
                parsed.append(PlanEntry.from_dict(doc))
            else:
                raise TPPlanError(f"plan entries must be PlanEntry objects or mappings, got {type(e).__name__}")
        object.__setattr__(self, "model", identity)
        object.__setattr__(self, "entries", tuple(parsed))
        object.__setattr__(self, "description", str(description))

    @classmethod
    def from_outliers(cls, model: ModelIdentity | nn.Module, outliers: OutlierCalibration, k: int | None = None,
                      description: str = "") -> CommPlan:
        """One entry per calibrated module, setting its ``k`` most outlying channels (``None``: all)."""
        channels = outliers.top(outliers.max_k if k is None else k)
        return cls(model, [PlanEntry(name, outlier_channels=tuple(ch)) for name, ch in channels.items()],
                   description or outliers.source)

    def to_dict(self) -> dict[str, Any]:
        version = max((e.version for e in self.entries), default=1)
        return {"format": PLAN_DOCUMENT, "version": version, "model": self.model.to_dict(),
                "description": self.description, "entries": [e.to_dict() for e in self.entries]}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> CommPlan:
        if not isinstance(doc, Mapping) or doc.get("format") != PLAN_DOCUMENT:
            raise TPPlanError("not an mxcomm TP plan (no 'format': 'mxcomm-tp-plan')")
        version = doc.get("version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise TPPlanError(f"TP plan version {version!r}, this mxcomm reads versions {list(READABLE_VERSIONS)}")
        entries = doc.get("entries", [])
        if not isinstance(entries, list):
            raise TPPlanError(f"plan 'entries' must be a list, got {type(entries).__name__}")
        parsed = [PlanEntry.from_dict(e) for e in entries]
        newer = [e.module for e in parsed if e.version > version]
        if newer:
            raise TPPlanError(f"plan version {version} cannot hold the fields of entries {newer[:4]} "
                              f"(gather_format needs version 2)")
        return cls(ModelIdentity.from_dict(doc.get("model")), parsed, str(doc.get("description", "")))


def save_plan(plan: CommPlan, path: str | Path) -> None:
    """Write ``plan`` as JSON (versioned, with the model identity).

    Args:
        plan: The plan.
        path: The file to write.

    Raises:
        TPPlanError: a format that cannot be named (not registered, nor a registered one with options).
    """
    if not isinstance(plan, CommPlan):
        raise TPPlanError(f"save_plan takes a CommPlan, got {type(plan).__name__}")
    Path(path).write_text(json.dumps(plan.to_dict(), indent=1) + "\n")


def load_plan(path: str | Path) -> CommPlan:
    """Read a plan written by :func:`save_plan`.

    Args:
        path: The JSON file.

    Returns:
        The plan (check it against a model with :meth:`ModelIdentity.check`, as the entry points do).

    Raises:
        TPPlanError: an unreadable or malformed file, another version, an unknown format.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TPPlanError(f"cannot read TP plan {path}: {exc}") from None
    return CommPlan.from_dict(doc)


def as_plan(plan: CommPlan | str | Path | None) -> CommPlan | None:
    """``plan=`` of the entry points: a :class:`CommPlan`, a path to a saved one, or ``None``."""
    if plan is None or isinstance(plan, CommPlan):
        return plan
    if isinstance(plan, (str, Path)):
        return load_plan(plan)
    raise TPPlanError(f"plan must be a CommPlan, a path to a saved plan or None, got {type(plan).__name__}")


def _outlier_mapping(outliers: OutlierCalibration | Mapping[str, Sequence[int]] | None,
                     k: int | None) -> Mapping[str, Sequence[int]]:
    if isinstance(outliers, OutlierCalibration):
        return outliers.top(outliers.max_k if k is None else k)
    if k is not None:
        raise TPPlanError("outlier_k needs an OutlierCalibration")
    if outliers is None:
        return {}
    if not isinstance(outliers, Mapping):
        raise TPPlanError(f"outliers must be an OutlierCalibration, a mapping module -> channels or None, "
                          f"got {type(outliers).__name__}")
    return outliers


@dataclass
class _Settings:
    fmt: BlockFormat | None
    algorithm: str
    comm_dtype: torch.dtype | None
    channels: Sequence[int] | None = field(default=None)
    gather: BlockFormat | None = None


def resolve_comms(
    model: nn.Module,
    reduce_modules: Mapping[str, int | None],
    styled_modules: Mapping[str, str],
    fmt: FormatLike | None,
    *,
    algorithm: str = "auto",
    comm_dtype: torch.dtype | None = None,
    plan: CommPlan | str | Path | None = None,
    outliers: OutlierCalibration | Mapping[str, Sequence[int]] | None = None,
    outlier_k: int | None = None,
) -> dict[str, RowwiseComm]:
    """The :class:`RowwiseComm` of every module whose all-reduce mxcomm runs (no communication).

    Args:
        model: The transformers model (for the plan's identity check).
        reduce_modules: Name -> output width (channels; None: unknown) of each module whose TP
            style ends in an all-reduce of partial sums.
        styled_modules: Name -> TP style name of every module with a TP style (for error messages).
        fmt, algorithm, comm_dtype: The defaults of every module.
        plan: Per-module overrides (:class:`CommPlan` or a path to a saved one).
        outliers, outlier_k: Outlier channels per module (a calibration and how many of its
            channels, or a mapping name -> channels); plan entries setting channels win.

    Raises:
        TPPlanError: a plan for another model, an entry or outlier module matching no all-reduce
            module, channels outside a module's width, bad defaults.
        FormatError: an unknown default format.
    """
    plan = as_plan(plan)
    base_fmt = resolve_format(fmt)
    RowwiseComm(base_fmt, algorithm, comm_dtype)  # validates the defaults
    mapping = _outlier_mapping(outliers, outlier_k)
    stray = [n for n in mapping if n not in reduce_modules]
    if stray:
        raise TPPlanError(f"outlier channels for modules whose all-reduce mxcomm does not run: {stray[:4]}"
                          f"{_styled_hint(stray[0], styled_modules)}")
    settings = {name: _Settings(base_fmt, algorithm, comm_dtype, mapping.get(name)) for name in reduce_modules}
    if plan is not None:
        plan.model.check(model)
        for entry in plan.entries:
            matched = [n for n in reduce_modules if fnmatch.fnmatchcase(n, entry.module)]
            if not matched:
                raise _entry_error(entry.module, "matches no module whose all-reduce mxcomm runs"
                                                 f"{_styled_hint(entry.module, styled_modules)}")
            for name in matched:
                s = settings[name]
                if entry.fmt is not None:
                    s.fmt = entry.block_format
                if entry.algorithm is not None:
                    s.algorithm = entry.algorithm
                if entry.comm_dtype is not None:
                    s.comm_dtype = None if entry.comm_dtype == COMPUTE_DTYPE else entry.comm_dtype  # type: ignore[assignment]
                if entry.outlier_channels is not None:
                    s.channels = entry.outlier_channels or None
                if entry.gather_format is not None:
                    s.gather = entry.gather_format if isinstance(entry.gather_format, BlockFormat) else None
    comms = {}
    for name, s in settings.items():
        width = reduce_modules[name]
        if width is not None and s.channels is not None and len(s.channels) and max(s.channels) >= width:
            raise TPPlanError(f"{name}: outlier channels {sorted(c for c in s.channels if c >= width)[:4]} outside "
                              f"its {width} output channels")
        try:
            comms[name] = RowwiseComm(s.fmt, s.algorithm, s.comm_dtype, s.channels, s.gather)
        except FormatError as exc:
            raise TPPlanError(f"{name}: {exc}") from None
    return comms


def _styled_hint(pattern: str, styled_modules: Mapping[str, str]) -> str:
    hits = [n for n in styled_modules if fnmatch.fnmatchcase(n, pattern)]
    if hits:
        return f" ({hits[0]} has TP style {styled_modules[hits[0]]!r}, which ends in no all-reduce of partial sums)"
    return " (no module of that name has a TP style)"

