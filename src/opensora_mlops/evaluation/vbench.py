"""VBench prompt suites and the dimensions this platform scores.

A suite is VBench's JSON format: a list of ``{"prompt_en": str, "dimension": [str, ...]}`` (VBench's
full-info file may add ``"auxiliary_info"``, accepted and ignored). Every video generated for a prompt is
scored on that prompt's dimensions that are implemented here; the others are listed as not implemented.

Implemented: the seven quality dimensions of :mod:`opensora_mlops.evaluation.metrics`, plus ``color``
and ``object_class`` for prompts in the synthetic corpus vocabulary (the colour and shape checks of
:func:`opensora_mlops.evaluation.prompt_adherence.adherence_scores`, which ask for the subject in most
frames; VBench uses GRiT detections).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from opensora_mlops.config import ConfigError, check_keys
from opensora_mlops.curation.synthetic import parse_caption
from opensora_mlops.evaluation import metrics
from opensora_mlops.evaluation.features import (
    ClipIqaScorer,
    EvaluationModels,
    LaionAestheticScorer,
    TransformersImageFeatures,
)
from opensora_mlops.evaluation.prompt_adherence import adherence_scores

#: VBench's 16 dimensions, in its order.
ALL_DIMENSIONS: tuple[str, ...] = (
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "motion_smoothness",
    "dynamic_degree",
    "aesthetic_quality",
    "imaging_quality",
    "object_class",
    "multiple_objects",
    "human_action",
    "color",
    "spatial_relationship",
    "scene",
    "temporal_style",
    "appearance_style",
    "overall_consistency",
)

QUALITY_DIMENSIONS: tuple[str, ...] = ALL_DIMENSIONS[:7]
SYNTHETIC_DIMENSIONS: tuple[str, ...] = ("object_class", "color")
IMPLEMENTED_DIMENSIONS: tuple[str, ...] = QUALITY_DIMENSIONS + SYNTHETIC_DIMENSIONS

SYNTHETIC_METHODS = {
    "object_class": "a single subject in >= 60% of the frames, and the caption's shape wins the per-frame "
    "vote (blob extent + circularity + approxPolyDP vertices) with >= half of the votes (synthetic "
    "vocabulary prompts only; VBench uses GRiT)",
    "color": "the caption's colour is the nearest vocabulary colour to the segmented subject's mean RGB in "
    ">= 60% of the frames (synthetic vocabulary prompts only; VBench uses GRiT)",
}

#: The bundled suite: prompts in the synthetic vocabulary, tagged with VBench dimensions.
BUNDLED_SUITE = "vbench_synthetic_prompts.json"


@dataclass(frozen=True)
class SuiteEntry:
    prompt: str
    dimensions: tuple[str, ...]


def bundled_suite_path() -> Path:
    """Path of the prompt suite shipped in ``opensora_mlops/resources``."""
    return Path(str(resources.files("opensora_mlops.resources").joinpath(BUNDLED_SUITE)))


def load_prompt_suite(path: str | Path | None = None) -> list[SuiteEntry]:
    """Read a VBench-format suite (the bundled one when ``path`` is None); strict about its shape."""
    path = bundled_suite_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt suite not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"prompt suite {path} is not valid JSON: {err}") from err
    if not isinstance(data, list) or not data:
        raise ConfigError(f"prompt suite {path} must be a non-empty JSON list of prompt entries")
    entries = []
    for index, item in enumerate(data):
        where = f"prompt suite {path.name} entry {index}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} must be an object, got {type(item).__name__}")
        check_keys(item, ("prompt_en", "dimension", "auxiliary_info"), where)
        prompt, dims = item.get("prompt_en"), item.get("dimension")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"{where}: 'prompt_en' must be a non-empty string, got {prompt!r}")
        if not isinstance(dims, list) or not dims or not all(isinstance(d, str) for d in dims):
            raise ConfigError(f"{where}: 'dimension' must be a non-empty list of names, got {dims!r}")
        unknown = [d for d in dims if d not in ALL_DIMENSIONS]
        if unknown:
            raise ConfigError(
                f"{where}: unknown VBench dimension(s) {unknown}; known: {list(ALL_DIMENSIONS)}"
            )
        entries.append(SuiteEntry(prompt.strip(), tuple(dims)))
    return entries


@dataclass
class Scorers:
    """The per-video scoring callables for one evaluation, with the method text for the report."""

    subject_features: Callable[[np.ndarray], np.ndarray] | None = None
    background_features: Callable[[np.ndarray], np.ndarray] | None = None
    aesthetic: Callable[[np.ndarray], np.ndarray] | None = None
    imaging: Callable[[np.ndarray], np.ndarray] | None = None

    @classmethod
    def from_models(cls, models: EvaluationModels | None) -> Scorers:
        models = models or EvaluationModels()
        return cls(
            subject_features=TransformersImageFeatures(models.subject_features, models.device)
            if models.subject_features
            else None,
            background_features=TransformersImageFeatures(models.background_features, models.device)
            if models.background_features
            else None,
            aesthetic=LaionAestheticScorer(models.aesthetic_clip, models.aesthetic_head, models.device)
            if models.aesthetic_clip
            else None,
            imaging=ClipIqaScorer(models.imaging_clip, models.device) if models.imaging_clip else None,
        )

    def methods(self) -> dict[str, str]:
        out = dict(metrics.METHODS) | SYNTHETIC_METHODS
        if self.subject_features is not None:
            out["subject_consistency"] = (
                f"VBench formula on {getattr(self.subject_features, 'name', 'pretrained')} image features"
            )
        if self.background_features is not None:
            out["background_consistency"] = (
                f"VBench formula on {getattr(self.background_features, 'name', 'pretrained')} image features"
            )
        if self.aesthetic is not None:
            out["aesthetic_quality"] = (
                getattr(self.aesthetic, "name", "pretrained aesthetic predictor") + " / 10"
            )
        if self.imaging is not None:
            out["imaging_quality"] = (
                getattr(self.imaging, "name", "CLIP-IQA")
                + ": P('Good photo.') against 'Bad photo.' (VBench: MUSIQ)"
            )
        return out

    def score(self, dimension: str, frames: np.ndarray, prompt: str) -> float | None:
        """One video's value for ``dimension`` (None: not applicable to this prompt)."""
        if dimension == "subject_consistency":
            return metrics.subject_consistency(frames, self.subject_features)
        if dimension == "background_consistency":
            return metrics.background_consistency(frames, self.background_features)
        if dimension == "temporal_flickering":
            return metrics.temporal_flickering(frames)
        if dimension == "motion_smoothness":
            return metrics.motion_smoothness(frames)
        if dimension == "dynamic_degree":
            return float(metrics.is_dynamic(frames)) if len(frames) >= 2 else None
        if dimension == "aesthetic_quality":
            return metrics.aesthetic_quality(frames, self.aesthetic)
        if dimension == "imaging_quality":
            return metrics.imaging_quality(frames, self.imaging)
        if dimension in SYNTHETIC_DIMENSIONS:
            if parse_caption(prompt) is None:
                return None
            found = adherence_scores(frames, prompt)
            return found.colour_ok if dimension == "color" else found.shape_ok
        raise ValueError(
            f"dimension {dimension!r} is not implemented; implemented: {list(IMPLEMENTED_DIMENSIONS)}"
        )


@dataclass
class SuiteResult:
    """Scores of one model on a suite: ``scores`` {dimension: mean}, ``per_video`` one row per
    (video, dimension), ``methods`` {dimension: method}, ``not_implemented`` the suite's other dimensions,
    ``not_applicable`` {dimension: prompts that could not be scored (outside the synthetic vocabulary)}."""

    scores: dict[str, float]
    per_video: pd.DataFrame
    methods: dict[str, str]
    not_implemented: list[str]
    not_applicable: dict[str, list[str]]


def score_suite(
    samples: Sequence[tuple[SuiteEntry, np.ndarray]],
    scorers: Scorers | None = None,
    progress: bool = True,
) -> SuiteResult:
    """Score generated videos, each paired with the suite entry it was generated for."""
    scorers = scorers or Scorers()
    rows = []
    suite_dims: set[str] = set()
    not_applicable: dict[str, list[str]] = {}
    for index, (entry, frames) in enumerate(
        tqdm(samples, desc="VBench dimensions", unit="video", disable=not progress)
    ):
        frames = metrics.check_frames(frames, where=f"video {index} ({entry.prompt!r})")
        suite_dims.update(entry.dimensions)
        for dimension in entry.dimensions:
            if dimension not in IMPLEMENTED_DIMENSIONS:
                continue
            value = scorers.score(dimension, frames, entry.prompt)
            if value is None:
                not_applicable.setdefault(dimension, [])
                if entry.prompt not in not_applicable[dimension]:
                    not_applicable[dimension].append(entry.prompt)
                continue
            rows.append(
                {"video": index, "prompt": entry.prompt, "dimension": dimension, "value": float(value)}
            )
    per_video = pd.DataFrame(rows, columns=["video", "prompt", "dimension", "value"])
    scores = {
        dim: float(per_video.loc[per_video["dimension"] == dim, "value"].mean())
        for dim in IMPLEMENTED_DIMENSIONS
        if (per_video["dimension"] == dim).any()
    }
    methods = {dim: text for dim, text in scorers.methods().items() if dim in scores}
    not_implemented = [d for d in ALL_DIMENSIONS if d in suite_dims and d not in IMPLEMENTED_DIMENSIONS]
    return SuiteResult(scores, per_video, methods, not_implemented, not_applicable)
