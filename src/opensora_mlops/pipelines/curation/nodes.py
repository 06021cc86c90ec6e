"""Curation nodes: thin wrappers over :mod:`opensora_mlops.curation` (the library does the work)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from opensora_mlops.curation.curate import (
    CurationConfig,
    EmptyCurationError,
    check_input_table,
    dropped_frame,
    run_captions,
    run_clips,
    run_scenes,
    run_scores,
    run_stage_filter,
)
from opensora_mlops.curation.scenes import cut_detection_scores
from opensora_mlops.curation.suites import CLIP_SUITE, FILTERED_SUITE, validate_clips

log = logging.getLogger(__name__)


def _config(params: dict[str, Any]) -> CurationConfig:
    return CurationConfig.from_dict(params)


def detect_scenes(raw_metadata: pd.DataFrame, params: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per detected scene of every readable source; bad sources quarantined. The input table
    passes the ``raw_metadata`` contract first (ContractError with a report otherwise)."""
    config = _config(params)
    check_input_table(raw_metadata, config.contracts_dir)
    scenes, dropped, step = run_scenes(raw_metadata, config)
    log.info("scene detection: %d scenes in %d videos (%d computed, %d reused), %d quarantined",
             len(scenes), raw_metadata.shape[0], step.computed, step.reused, len(dropped))
    return scenes, dropped


def cut_clips(
    raw_metadata: pd.DataFrame, scene_table: pd.DataFrame, params: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cut scenes into H.264 clips under the clips folder; short scenes and decode failures dropped."""
    clips, dropped, step = run_clips(raw_metadata, scene_table, _config(params))
    log.info("cutting: %d clips (%d videos computed, %d reused), %d scenes/clips dropped",
             len(clips), step.computed, step.reused, len(dropped))
    return clips, dropped


def _reasons(*dropped: pd.DataFrame, top: int = 5) -> str:
    parts = [d for d in dropped if len(d)]
    if not parts:
        return "no reasons recorded"
    counts = pd.concat(parts, ignore_index=True)["reason"].map(lambda r: str(r).split(": ", 1)[-1][:90])
    return "; ".join(f"{n} x {reason}" for reason, n in counts.value_counts().head(top).items())


def caption_clips(clip_table: pd.DataFrame, params: dict[str, Any], scene_dropped: pd.DataFrame | None = None,
                  cut_dropped: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Captions from the source table (per shot) or a local VLM, cleaned; every column kept. Stops with
    one message when no clip was cut at all, or when no clip can get a caption."""
    if clip_table.empty:
        raise EmptyCurationError(f"curation cut no clip from the input videos ({_reasons(scene_dropped, cut_dropped)}); "
                                 "check curation.clips (min_seconds, limits) and the sources in raw_metadata")
    captioned, dropped = run_captions(clip_table, _config(params))
    methods = captioned["text_method"].value_counts().to_dict() if len(captioned) else {}
    log.info("captions: %d clips captioned (%s), %d without a caption dropped", len(captioned), methods, len(dropped))
    return captioned, dropped


def score_clips(captioned_clips: pd.DataFrame, params: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All scores from one decode per clip → ``clip_metadata`` (validated by its data contract)."""
    config = _config(params)
    scored, dropped, step = run_scores(captioned_clips, config)
    log.info("scoring: %d clips (%d partitions computed, %d reused), %d dropped",
             len(scored), step.computed, step.reused, len(dropped))
    if scored.empty:
        raise EmptyCurationError(f"scoring could read none of the {len(captioned_clips)} clips ({_reasons(dropped)})")
    validate_clips(scored, config.contracts_dir, CLIP_SUITE, name="clip_metadata")
    return scored, dropped


def filter_stage(clip_metadata: pd.DataFrame, params: dict[str, Any], stage: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The clips passing ``stage``'s thresholds (all columns), validated; and the dropped ones."""
    config = _config(params)
    kept, dropped = run_stage_filter(clip_metadata, config, stage)
    log.info("%s filters: kept %d of %d clips", stage, len(kept), len(clip_metadata))
    validate_clips(kept, config.contracts_dir, FILTERED_SUITE, name=f"{stage}.filtered_clips")
    return kept, dropped


def collect_quarantine(*dropped: pd.DataFrame) -> pd.DataFrame:
    """Every dropped scene/clip of every step (and stage), one table with ``step``, ``stage``, ``reason``."""
    parts = [d for d in dropped if len(d)]
    return pd.concat(parts, ignore_index=True) if parts else dropped_frame([])


def curation_report(
    raw_metadata: pd.DataFrame,
    scene_table: pd.DataFrame,
    clip_metadata: pd.DataFrame,
    curation_quarantine: pd.DataFrame,
    stage1: pd.DataFrame,
    stage2: pd.DataFrame,
    stage3: pd.DataFrame,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Counts per step/reason, per-stage sizes, and cut-detection precision/recall against the ground
    truth when one is configured (the synthetic corpus writes ``ground_truth.json``)."""
    config = _config(params)
    quarantine = curation_quarantine
    report: dict[str, Any] = {
        "source_videos": int(len(raw_metadata)),
        "scenes": int(len(scene_table)),
        "clips": int(len(clip_metadata)),
        "clip_seconds": float(clip_metadata["duration"].sum()) if len(clip_metadata) else 0.0,
        "stages": {"stage1": int(len(stage1)), "stage2": int(len(stage2)), "stage3": int(len(stage3))},
        "dropped_by_step": {str(k): int(v) for k, v in quarantine.groupby("step").size().items()}
        if len(quarantine) else {},
        "quarantined_sources": sorted(quarantine.loc[quarantine["step"] == "scenes", "path"].astype(str))
        if len(quarantine) else [],
        "methods": {c: sorted(clip_metadata[c].astype(str).unique())
                    for c in clip_metadata.columns if c.endswith("_method")},
        # which measure (and method) made each stage drop clips: "aes:classical-…" -> count
        "dropped_by_scorer": _deciders(quarantine),
        "caption_sources": {str(k): int(v) for k, v in clip_metadata["text_method"].value_counts().items()}
        if "text_method" in clip_metadata.columns else {},
        "variable_frame_rate_sources": int(raw_metadata["vfr"].sum()) if "vfr" in raw_metadata.columns else 0,
    }
    if config.ground_truth and Path(config.ground_truth).exists():
        report["cut_detection"] = cut_detection_against_truth(scene_table, config.ground_truth)
    return report


def _deciders(quarantine: pd.DataFrame) -> dict[str, dict[str, int]]:
    if not len(quarantine) or "decided_by" not in quarantine.columns:
        return {}
    out: dict[str, dict[str, int]] = {}
    for stage, decided in zip(quarantine["stage"], quarantine["decided_by"], strict=True):
        for item in filter(None, str(decided).split("; ")):
            out.setdefault(str(stage), {}).setdefault(item, 0)
            out[str(stage)][item] += 1
    return {stage: dict(sorted(v.items())) for stage, v in sorted(out.items())}


def cut_detection_against_truth(scene_table: pd.DataFrame, ground_truth: str, tolerance: int = 1) -> dict[str, Any]:
    """Precision/recall of the detected cuts over every video named in the ground truth file."""
    truth = json.loads(Path(ground_truth).read_text(encoding="utf-8"))
    root = Path(ground_truth).resolve().parent
    detected, expected = [], []
    offset = 0  # cut frames of all videos on one axis, videos far apart so cuts never cross-match
    per_video = {}
    for video in truth.get("videos", []):
        if not video.get("num_frames") or int(video["num_frames"]) <= 1:
            continue
        source = str((root / video["path"]).resolve())
        rows = scene_table[scene_table["source_path"].map(lambda p: str(Path(p).resolve())) == source]
        if rows.empty:
            continue  # not curated (e.g. quarantined): counted by the quarantine, not here
        cuts = sorted(int(f) for f in rows["frame_start"] if int(f) > 0)
        truth_cuts = [int(f) for f in video.get("cut_frames", [])]
        per_video[video["path"]] = {"detected": cuts, "truth": truth_cuts}
        detected += [offset + c for c in cuts]
        expected += [offset + c for c in truth_cuts]
        offset += int(video["num_frames"]) + 10 * tolerance + 10
    scores = cut_detection_scores(detected, expected, tolerance)
    return {**scores, "videos": len(per_video), "per_video": per_video}
