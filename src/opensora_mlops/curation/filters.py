"""Per-stage clip filters: score and size thresholds from ``parameters_curation.yml``.

Each training stage (1: low resolution / many clips, 2 and 3: higher quality) gets its own filtered
table from the same scored clip table; a clip dropped by a stage is listed with every reason and with
``decided_by``, the measure and method behind each failed bound ("aes:classical-…;
ocr:ppocrv4-det-area"). A score whose method is "unavailable" (e.g.
``match`` without CLIP weights) is NaN and does not filter — the stage table says so in its
``*_method`` columns. Filtered tables keep every column.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from opensora_mlops.config import ConfigError, strict_dataclass


@dataclass(frozen=True)
class StageFilter:
    """Thresholds of one stage; null disables a bound. ``resolution_min`` is H*W pixels.

    Still images are one-frame clips: ``duration_min``, ``num_frames_min`` and the flow bounds apply to
    videos only; ``keep_images`` false drops every image from the stage.
    """

    aes_min: float | None = None
    flow_min: float | None = None
    flow_max: float | None = None
    ocr_max: float | None = None
    match_min: float | None = None
    duration_min: float | None = None
    num_frames_min: int | None = None
    resolution_min: int | None = None
    camera_motion_exclude: tuple[str, ...] = ()
    keep_images: bool = True

    def __post_init__(self) -> None:
        if self.flow_min is not None and self.flow_max is not None and self.flow_min > self.flow_max:
            raise ConfigError(f"flow_min {self.flow_min} > flow_max {self.flow_max}")
        object.__setattr__(self, "camera_motion_exclude", tuple(self.camera_motion_exclude))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, where: str) -> StageFilter:
        return strict_dataclass(cls, dict(values or {}), where)


# (config field, column, comparison) — "min" keeps value >= bound, "max" keeps value <= bound
_BOUNDS = (
    ("aes_min", "aes", "min"),
    ("flow_min", "flow", "min"),
    ("flow_max", "flow", "max"),
    ("ocr_max", "ocr", "max"),
    ("match_min", "match", "min"),
    ("duration_min", "duration", "min"),
    ("num_frames_min", "num_frames", "min"),
    ("resolution_min", "resolution", "min"),
)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


_VIDEO_ONLY = frozenset({"duration", "num_frames", "flow"})


def filter_reasons(clips: pd.DataFrame, stage: StageFilter, deciders: list[list[str]] | None = None) -> pd.Series:
    """Per row, "" when the clip passes, else the failed bounds joined by "; ". ``deciders`` (when given)
    gets, per row, "<score>:<method>" for each failed bound on a measured score."""
    reasons: list[list[str]] = [[] for _ in range(len(clips))]
    deciders = deciders if deciders is not None else [[] for _ in range(len(clips))]
    is_image = (clips["num_frames"].to_numpy() <= 1) if "num_frames" in clips.columns else np.zeros(len(clips), bool)
    if not stage.keep_images:
        for i in np.flatnonzero(is_image):
            reasons[i].append("still image and keep_images is false")
    for name, column, kind in _BOUNDS:
        bound = getattr(stage, name)
        if bound is None:
            continue
        if column not in clips.columns:
            raise ConfigError(f"filter {name} needs column {column!r}, which the clip table lacks")
        values = clips[column].to_numpy(dtype=np.float64)
        methods = clips[f"{column}_method"] if f"{column}_method" in clips.columns else None
        for i, value in enumerate(values):
            if column in _VIDEO_ONLY and is_image[i]:
                continue
            failed = None
            if math.isnan(value):
                if methods is not None and methods.iloc[i] == "unavailable":
                    continue
                failed = f"{column} is NaN"
            elif kind == "min" and value < bound:
                failed = f"{column} {_fmt(value)} < {name} {_fmt(bound)}"
            elif kind == "max" and value > bound:
                failed = f"{column} {_fmt(value)} > {name} {_fmt(bound)}"
            if failed:
                reasons[i].append(failed)
                deciders[i].append(f"{column}:{methods.iloc[i]}" if methods is not None else column)
    if stage.camera_motion_exclude:
        for i, motion in enumerate(clips["camera_motion"]):
            if motion in stage.camera_motion_exclude:
                reasons[i].append(f"camera_motion {motion} excluded")
    return pd.Series(["; ".join(r) for r in reasons], index=clips.index, dtype="object")


def apply_stage_filter(clips: pd.DataFrame, stage: StageFilter, stage_name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept clips with every column, dropped clips with ``stage``, ``reason`` and ``decided_by``)."""
    deciders: list[list[str]] = [[] for _ in range(len(clips))]
    reasons = filter_reasons(clips, stage, deciders)
    keep = reasons == ""
    decided = pd.Series(["; ".join(d) for d in deciders], index=clips.index, dtype="object")
    dropped = clips[~keep].assign(stage=stage_name, reason=reasons[~keep], decided_by=decided[~keep])
    return clips[keep].reset_index(drop=True), dropped.reset_index(drop=True)
