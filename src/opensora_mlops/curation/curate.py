"""The per-video curation steps as partition work functions, and the curation configuration.

``scene_partition`` → ``clip_partition`` → (captions, table-wide) → ``score_partition``; each takes a
plain dict payload (picklable, for process pools) and returns ``(kept rows, dropped rows)``. Dropped
rows share :data:`DROPPED_COLUMNS` so every step's quarantine concatenates into one table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from opensora_mlops.config import ConfigError, check_keys, strict_dataclass
from opensora_mlops.curation.captions import CaptionConfig, caption_table
from opensora_mlops.curation.cutting import ClipConfig, check_source, cut_clips, plan_clips
from opensora_mlops.curation.errors import CurationInputError
from opensora_mlops.curation.filters import StageFilter, apply_stage_filter
from opensora_mlops.curation.partitions import (
    PartitionStore,
    PartitionTask,
    file_fingerprint,
    params_hash,
    partition_key,
    run_partitioned,
)
from opensora_mlops.curation.scenes import Scene, SceneDetectionConfig, detect_scenes
from opensora_mlops.curation.scorers import ClipScorer, ScoringConfig, sample_clip

DROPPED_COLUMNS = ["path", "source_path", "step", "stage", "scene_index", "frame_start", "frame_end", "reason"]
SCENE_COLUMNS = [
    "source_path", "scene_index", "num_scenes", "frame_start", "frame_end", "scene_start", "scene_end", "fps",
]


@dataclass(frozen=True)
class PartitionConfig:
    """``curation.partitions``: where partitions and clips go, how sources are fingerprinted, workers."""

    root: str = "data/02_intermediate/curation_partitions"
    clips_dir: str = "data/03_primary/clips"
    fingerprint: str = "stat"
    workers: int = 1
    progress: bool = True


@dataclass(frozen=True)
class CurationConfig:
    scenes: SceneDetectionConfig
    clips: ClipConfig
    scoring: ScoringConfig
    captions: CaptionConfig
    partitions: PartitionConfig
    stages: dict[str, StageFilter]
    ground_truth: str | None = None
    contracts_dir: str | None = "data/08_reporting/contracts"

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> CurationConfig:
        allowed = ["scenes", "clips", "scoring", "captions", "partitions", "stages", "ground_truth", "contracts_dir"]
        check_keys(params, allowed, "curation")
        stages = {
            str(name): StageFilter.from_dict(values, f"curation.stages.{name}")
            for name, values in (params.get("stages") or {}).items()
        }
        return cls(
            scenes=SceneDetectionConfig.from_dict(params.get("scenes")),
            clips=ClipConfig.from_dict(params.get("clips")),
            scoring=ScoringConfig.from_dict(params.get("scoring")),
            captions=CaptionConfig.from_dict(params.get("captions")),
            partitions=strict_dataclass(PartitionConfig, dict(params.get("partitions") or {}), "curation.partitions"),
            stages=stages,
            ground_truth=params.get("ground_truth"),
            contracts_dir=params.get("contracts_dir", "data/08_reporting/contracts"),
        )


FLOAT_COLUMNS = ("aspect_ratio", "fps", "duration", "scene_start", "scene_end", "aes", "flow", "ocr", "match")
INT_COLUMNS = ("num_frames", "height", "width", "resolution", "frame_start", "frame_end", "scene_index",
               "part_index", "num_scenes")


def normalise_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    """Known numeric columns as float64/int64 (partitions concatenated from rows may come back as
    object columns, e.g. an image's missing fps), so the data contracts see one type per column."""
    out = df.copy()
    for column in FLOAT_COLUMNS:
        if column in out.columns:
            out[column] = pd.to_numeric(out[column], errors="coerce").astype("float64")
    for column in INT_COLUMNS:
        if column in out.columns and out[column].notna().all():
            out[column] = pd.to_numeric(out[column]).astype("int64")
    return out


def empty_dropped() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if c in {"scene_index", "frame_start", "frame_end"} else "object")
                         for c in DROPPED_COLUMNS})


def dropped_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows → the common dropped schema (missing fields: "" or -1)."""
    if not rows:
        return empty_dropped()
    out = pd.DataFrame(rows)
    for column in DROPPED_COLUMNS:
        if column not in out.columns:
            out[column] = -1 if column in {"scene_index", "frame_start", "frame_end"} else ""
    out = out[DROPPED_COLUMNS].copy()
    for column in ("scene_index", "frame_start", "frame_end"):
        out[column] = out[column].fillna(-1).astype("int64")
    for column in ("path", "source_path", "step", "stage", "reason"):
        out[column] = out[column].fillna("").astype(str)
    return out


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and math.isnan(v):
            v = None
        out[str(k)] = v
    return out


# ------------------------------------------------------------------------------------------- scenes
def scene_key(row: Mapping[str, Any], config: CurationConfig) -> str:
    fingerprint = file_fingerprint(row["path"], config.partitions.fingerprint)
    # clips_dir too: a cached cut partition names files under it
    return partition_key(fingerprint, asdict(config.scenes), asdict(config.clips), config.partitions.clips_dir)


def partition_name(path: str, key: str) -> str:
    return f"{Path(str(path)).stem[:40]}-{key}"


def scene_partition(payload: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """payload: ``row`` (a raw_metadata row), ``scenes`` and ``clips`` config dicts."""
    row = payload["row"]
    source = str(row["path"])
    try:
        check_source(row, ClipConfig(**payload["clips"]))
        scenes = detect_scenes(source, SceneDetectionConfig(**payload["scenes"]))
    except CurationInputError as exc:
        return pd.DataFrame(columns=SCENE_COLUMNS), dropped_frame(
            [{"path": source, "source_path": source, "step": "scenes", "reason": str(exc)}]
        )
    rows = [
        {"source_path": source, "scene_index": s.index, "num_scenes": len(scenes), "frame_start": s.frame_start,
         "frame_end": s.frame_end, "scene_start": s.start_s, "scene_end": s.end_s, "fps": s.fps}
        for s in scenes
    ]
    return pd.DataFrame(rows, columns=SCENE_COLUMNS), empty_dropped()


# -------------------------------------------------------------------------------------------- clips
def clip_partition(payload: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """payload: ``row`` (raw row), ``scenes`` (scene rows of that video), ``clips`` config, ``out_dir``."""
    row = payload["row"]
    source = str(row["path"])
    config = ClipConfig(**payload["clips"])
    scenes = [Scene(int(s["scene_index"]), int(s["frame_start"]), int(s["frame_end"]), float(s["fps"]))
              for s in payload["scenes"]]
    num_scenes = len(scenes)
    plans, too_short = plan_clips(scenes, config)
    try:
        made, failed = cut_clips(source, plans, payload["out_dir"], config)
    except CurationInputError as exc:
        made, failed = [], [{"reason": str(exc)} | {"scene_index": p.scene_index, "frame_start": p.frame_start,
                                                    "frame_end": p.frame_end} for p in plans]
    carried = {k: v for k, v in row.items() if k != "path"}
    clips = []
    for clip in made:
        clips.append(carried | clip | {"source_path": source, "num_scenes": num_scenes})
    dropped = [d | {"path": source, "source_path": source, "step": "clips"} for d in too_short + failed]
    return pd.DataFrame(clips), dropped_frame(dropped)


def clip_out_dir(row: Mapping[str, Any], key: str, config: CurationConfig) -> str:
    return str(Path(config.partitions.clips_dir) / partition_name(row["path"], key[:12]))


def clips_exist(kept: pd.DataFrame) -> bool:
    return "path" not in kept.columns or all(Path(p).exists() for p in kept["path"])


# ------------------------------------------------------------------------------------------- scores
_SCORERS: dict[str, ClipScorer] = {}


def scorer_for(config: Mapping[str, Any]) -> ClipScorer:
    """One ClipScorer (models loaded once) per process and configuration."""
    key = params_hash(config)
    if key not in _SCORERS:
        _SCORERS[key] = ClipScorer(ScoringConfig(**config))
    return _SCORERS[key]


def score_partition(payload: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """payload: ``clips`` (clip rows of one source video, captioned) and ``scoring`` config dict.

    Each clip is decoded once; every score is computed from those frames.
    """
    config = ScoringConfig(**payload["scoring"])
    scorer = scorer_for(payload["scoring"])
    kept, dropped = [], []
    for clip in payload["clips"]:
        try:
            frames = sample_clip(clip["path"], config.stride, config.max_frames, int(clip["num_frames"]))
            scores = scorer.score(frames, clip.get("text"))
        except CurationInputError as exc:
            dropped.append({"path": clip["path"], "source_path": clip.get("source_path", ""), "step": "scores",
                            "scene_index": clip.get("scene_index", -1), "frame_start": clip.get("frame_start", -1),
                            "frame_end": clip.get("frame_end", -1), "reason": str(exc)})
            continue
        kept.append(dict(clip) | scores)
    return pd.DataFrame(kept), dropped_frame(dropped)


# ------------------------------------------------------------------------------- table-level steps
@dataclass
class StepReport:
    """What one step did: partitions computed vs reused from an earlier run."""

    step: str
    computed: int
    reused: int


def _scene_tasks(raw: pd.DataFrame, config: CurationConfig) -> list[tuple[dict[str, Any], str]]:
    rows = [_jsonable(r) for r in raw.to_dict(orient="records")]
    return [(row, partition_name(row["path"], scene_key(row, config))) for row in rows]


def run_scenes(raw: pd.DataFrame, config: CurationConfig) -> tuple[pd.DataFrame, pd.DataFrame, StepReport]:
    """Scene detection for every source video (one cached partition per video)."""
    named_rows = _scene_tasks(raw, config)  # fingerprints once (a content hash reads every file)
    tasks = [
        PartitionTask(name, {"row": row, "scenes": asdict(config.scenes), "clips": asdict(config.clips)})
        for row, name in named_rows
    ]
    store = PartitionStore(config.partitions.root, "scenes")
    run = run_partitioned(tasks, scene_partition, store, config.partitions.workers, "scene detection",
                          progress=config.partitions.progress)
    scenes = run.kept if len(run.kept.columns) else pd.DataFrame(columns=SCENE_COLUMNS)
    names = {row["path"]: name for row, name in named_rows}
    scenes = scenes.assign(partition=scenes["source_path"].map(names)) if len(scenes) else scenes.assign(partition="")
    return normalise_dtypes(scenes.reset_index(drop=True)), run.dropped, StepReport("scenes", len(run.computed), len(run.reused))


def run_clips(
    raw: pd.DataFrame, scenes: pd.DataFrame, config: CurationConfig
) -> tuple[pd.DataFrame, pd.DataFrame, StepReport]:
    """Cut every video with scenes into clip files (one cached partition per video)."""
    by_source = {p: g for p, g in scenes.groupby("source_path", sort=False)} if len(scenes) else {}
    tasks = []
    for row, name in _scene_tasks(raw, config):
        if row["path"] not in by_source:
            continue  # quarantined by scene detection
        key = name.rsplit("-", 1)[-1]
        scene_rows = [_jsonable(r) for r in by_source[row["path"]].to_dict(orient="records")]
        tasks.append(PartitionTask(name, {"row": row, "scenes": scene_rows, "clips": asdict(config.clips),
                                          "out_dir": clip_out_dir(row, key, config)}))
    store = PartitionStore(config.partitions.root, "clips")
    run = run_partitioned(tasks, clip_partition, store, config.partitions.workers, "cutting clips",
                          is_valid=clips_exist, progress=config.partitions.progress)
    clips = run.kept
    if len(clips):
        names = {t.payload["row"]["path"]: t.name for t in tasks}
        clips = clips.assign(partition=clips["source_path"].map(names))
    return normalise_dtypes(clips.reset_index(drop=True)), run.dropped, StepReport("clips", len(run.computed), len(run.reused))


def run_captions(clips: pd.DataFrame, config: CurationConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Caption every clip (all columns kept); clips left without a caption go to the dropped table."""
    captioned, missing = caption_table(clips, config.captions)
    dropped = dropped_frame([
        {"path": r["path"], "source_path": r.get("source_path", ""), "step": "captions",
         "scene_index": r.get("scene_index", -1), "frame_start": r.get("frame_start", -1),
         "frame_end": r.get("frame_end", -1), "reason": r["reason"]}
        for r in missing.to_dict(orient="records")
    ])
    return captioned, dropped


def run_scores(captioned: pd.DataFrame, config: CurationConfig) -> tuple[pd.DataFrame, pd.DataFrame, StepReport]:
    """Score every clip, decoding each clip once (one cached partition per source video)."""
    tasks = []
    if len(captioned):
        for name, group in captioned.groupby("partition", sort=False):
            key = partition_key(str(name), asdict(config.scoring), asdict(config.captions),
                                sorted(group["text"].astype(str)))
            tasks.append(PartitionTask(partition_name(str(name), key)[: 120],
                                       {"clips": [_jsonable(r) for r in group.to_dict(orient="records")],
                                        "scoring": asdict(config.scoring)}))
    store = PartitionStore(config.partitions.root, "scores")
    run = run_partitioned(tasks, score_partition, store, config.partitions.workers, "scoring clips",
                          progress=config.partitions.progress)
    return normalise_dtypes(run.kept.reset_index(drop=True)), run.dropped, StepReport("scores", len(run.computed), len(run.reused))


def run_stage_filter(clips: pd.DataFrame, config: CurationConfig, stage: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(clips passing ``stage``'s thresholds with every column, dropped rows in the common schema)."""
    if stage not in config.stages:
        raise ConfigError(f"curation.stages has no {stage!r}; known: {sorted(config.stages)}")
    kept, dropped = apply_stage_filter(clips, config.stages[stage], stage)
    rows = [{"path": r["path"], "source_path": r.get("source_path", ""), "step": "filter", "stage": stage,
             "scene_index": r.get("scene_index", -1), "frame_start": r.get("frame_start", -1),
             "frame_end": r.get("frame_end", -1), "reason": r["reason"]} for r in dropped.to_dict(orient="records")]
    return kept, dropped_frame(rows)
