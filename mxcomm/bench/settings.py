"""Communication settings of the evaluation: one way of running the row-parallel all-reduces, and the lists.

A :class:`CommSetting` names a format (or none), rounding, algorithm, wire dtype,
rotation and outlier channels; it travels to the ranks as a dict
(``dataclasses.asdict``) and back. The lists are the rows of the perplexity and
Pareto tables; :func:`parse_ttft_setting` reads the ``FORMAT:ALGORITHM[:rot][:kN]``
syntax of ``mxcomm eval --ttft-settings`` (``:compiled``: the same setting with
the model under ``torch.compile``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mxcomm.bench.smollm2 import EvalSetupError
from mxcomm.formats import BlockFormat, get_format
from mxcomm.formats.builtins import CUSTOM_FORMATS, NVFP4, OCP_FORMATS

#: Wire dtypes of the row-parallel partial sums, by the name a setting carries.
COMM_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float32": torch.float32,
                                       "float16": torch.float16}
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


#: What a compiled setting's label ends with.
COMPILED_SUFFIX = " compiled"
#: What the label of a setting without descriptor exchanges (``verify=False``) ends with, before ``COMPILED_SUFFIX``.
UNVERIFIED_SUFFIX = " unverified"


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
    compiled: bool = False  # the model runs under torch.compile (TTFT; the collectives as custom ops)
    # auto only: plan from a calibrate() call on the link (False: start from the default cost model and
    # learn from the setting's own calls, as a user who never calls calibrate() gets)
    calibrated: bool = True
    # exchange the call descriptor on every all-reduce (False: ``verify=False``, the caller vouches that the ranks agree)
    verify: bool = True

    @property
    def label(self) -> str:
        return self.eager_label + ("" if self.verify else UNVERIFIED_SUFFIX) + (COMPILED_SUFFIX if self.compiled else "")

    @property
    def eager_label(self) -> str:
        """The label of the same numerics run eagerly with descriptors (what the perplexity tables list)."""
        if self.fmt is None:
            return f"none ({self.comm_dtype} wire)"
        mode = f" scale={self.scale_mode}" if self.scale_mode else ""
        rot = " +rot" if self.rotation_seed is not None else ""
        outl = f" +{self.outliers}ch" if self.outliers else ""
        uncal = " uncalibrated" if self.algorithm == "auto" and not self.calibrated else ""
        return f"{self.fmt} {self.rounding} {self.algorithm}{uncal}{mode}{rot}{outl}"

    @property
    def variant(self) -> str:
        """plain / rotation / outliers / rotation+outliers."""
        parts = (["rotation"] if self.rotation_seed is not None else []) + (["outliers"] if self.outliers else [])
        variant = "+".join(parts) or "plain"
        return f"{variant} (two-shot)" if self.algorithm == "two_shot" else variant

    @property
    def wire_dtype(self) -> torch.dtype:
        return COMM_DTYPES[self.comm_dtype]

    def block_format(self) -> BlockFormat | None:
        if self.fmt is None:
            return None
        fmt = get_format(self.fmt).with_options(rounding=self.rounding)
        if self.scale_mode:
            fmt = fmt.with_options(scale_mode=self.scale_mode)
        return fmt.with_options(rotation_seed=self.rotation_seed) if self.rotation_seed is not None else fmt


def is_bf16_none(setting: dict | None) -> bool:
    """Whether a result row's ``setting`` (a dict) is the baseline every Δ is against: uncompressed, bf16 wire."""
    return bool(setting) and setting["fmt"] is None and setting["comm_dtype"] == "bfloat16"


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


def parse_ttft_setting(text: str, rotation_seed: int) -> CommSetting:
    """``FORMAT:ALGORITHM[:rot][:kN][:compiled][:uncalibrated][:unverified]`` -> CommSetting (rne);
    ``none:none[:compiled][:unverified]`` is the uncompressed baseline; ``:uncalibrated`` (auto only) skips
    ``calibrate()``; ``:unverified`` runs every all-reduce with ``verify=False`` (no descriptor exchange)."""
    name, _, rest = text.partition(":")
    algo, *mods = rest.split(":")
    compressed = ("allgather", "two_shot", "auto")
    if (name == "none") != (algo == "none") or algo not in (*compressed, "none"):
        raise EvalSetupError(f"--ttft-settings wants FORMAT:ALGORITHM[:rot][:kN][:compiled] with ALGORITHM "
                             f"allgather, two_shot or auto (or none:none[:compiled]), got {text!r}")
    seed, k, compiled, calibrated, verify = None, 0, False, True, True
    for m in mods:
        if m == "rot" and name != "none":
            seed = rotation_seed
        elif m.startswith("k") and m[1:].isdigit() and int(m[1:]) > 0 and name != "none":
            k = int(m[1:])
        elif m == "compiled":
            compiled = True
        elif m == "uncalibrated" and algo == "auto":
            calibrated = False
        elif m == "unverified":
            verify = False
        else:
            raise EvalSetupError(f"--ttft-settings: unknown modifier {m!r} in {text!r} "
                                 "(rot, kN, compiled, unverified, or uncalibrated with auto)")
    if k and not verify:
        raise EvalSetupError(f"--ttft-settings: {text!r}: outlier channels always exchange descriptors (no :unverified)")
    if name == "none":
        return CommSetting(None, algorithm="none", compiled=compiled, verify=verify)
    return CommSetting(get_format(name).name, "rne", algo, rotation_seed=seed, outliers=k, compiled=compiled,
                       calibrated=calibrated, verify=verify)
