"""The per-video curation steps as partition work functions, and the curation configuration.

``scene_partition`` → ``clip_partition`` → ``caption_partition`` (VLM only) → ``score_partition``; each
takes a plain dict payload (picklable, for process pools) and returns ``(kept rows, dropped rows)``.
Dropped rows share :data:`DROPPED_COLUMNS` so every step's quarantine concatenates into one table.

Cache keys (:mod:`opensora_mlops.curation.partitions`) are content-addressed and chained:

* scenes: the source's SHA-256, scene parameters, the source limits of ``curation.clips``, the probed
  fps / frame-rate mode / size, and the scene code;
* clips: the scene key, ``curation.clips`` and the cutting code;
* captions (VLM): the clip key, the clips' own bytes, the prompt/frames/token settings, the model
  directory's content and the caption code; captions from the table are not cached: they are read afresh every run, so an
  edited captions CSV reaches ``clip_metadata`` on the next ingestion + curation;
* scores: the clip key, the clips' own bytes, ``curation.scoring``, the scorer weights' content, the
  scorer code, and the captions when the text-video match is computed.

Partitions hold no absolute paths and no source-table columns: paths, captions and the raw table's
other columns are attached from the current run's tables after loading.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from opensora_mlops.config import ConfigError, check_keys, strict_dataclass
from opensora_mlops.curation.captions import (
    CaptionConfig,
    CaptionSourceError,
    VLMCaptioner,
    caption_strategy_problem,
    caption_table,
    vlm_raw_captions,
)
from opensora_mlops.curation.cutting import ClipConfig, check_source, cut_clips, plan_clips, source_label
from opensora_mlops.curation.errors import CurationInputError
from opensora_mlops.curation.filters import StageFilter, apply_stage_filter
from opensora_mlops.curation.frames import rate_fraction
from opensora_mlops.curation.partitions import (
    PartitionStore,
    PartitionTask,
    check_executor,
    code_version,
    file_fingerprint,
    files_fingerprint,
    params_hash,
    partition_key,
    run_partitioned,
)
from opensora_mlops.curation.ray_executor import RayConfig
from opensora_mlops.curation.scenes import Scene, SceneDetectionConfig, detect_scenes
from opensora_mlops.curation.scorers import ClipScorer, ScoringConfig, bundled_text_detector, sample_clip

DROPPED_COLUMNS = ["path", "source_path", "step", "stage", "scene_index", "frame_start", "frame_end", "reason",
                   "decided_by"]
SCENE_COLUMNS = [
    "source_path", "scene_index", "num_scenes", "frame_start", "frame_end", "scene_start", "scene_end", "fps",
]


@dataclass(frozen=True)
class PartitionConfig:
    """``curation.partitions``: where partitions and clips go, worker processes, progress bars."""

    root: str = "data/02_intermediate/curation_partitions"
    clips_dir: str = "data/03_primary/clips"
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
    executor: str = "local"
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        check_executor(self.executor)

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> CurationConfig:
        allowed = ["scenes", "clips", "scoring", "captions", "partitions", "stages", "ground_truth", "contracts_dir",
                   "executor", "ray"]
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
            executor=str(params.get("executor") or "local"),
            ray=strict_dataclass(RayConfig, dict(params.get("ray") or {}), "curation.ray"),
        )

    def run_partitioned(self, tasks, fn, step: str, desc: str, gpu: bool = False, is_valid=None):
        """:func:`run_partitioned` of one step with this configuration's store, executor and workers."""
        return run_partitioned(tasks, fn, PartitionStore(self.partitions.root, step), self.partitions.workers, desc,
                               is_valid=is_valid, progress=self.partitions.progress, executor=self.executor,
                               ray=self.ray, gpu=gpu)


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
    for column in ("path", "source_path", "step", "stage", "reason", "decided_by"):
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


class EmptyCurationError(ValueError):
    """A curation step has nothing left to work on; the message says why and what to change."""


# ------------------------------------------------------------------------------------------ sources
#: A cached partition stores reasons with this in place of the source's path (filled in on loading).
SOURCE_TOKEN = "{source}"

#: The code each step's results depend on: its modules' source and the libraries doing the work.
STEP_CODE = {
    "scenes": (("opensora_mlops.curation.scenes", "opensora_mlops.curation.frames", "opensora_mlops.curation.cutting"),
               ("scenedetect-headless", "av", "numpy", "opencv-python-headless")),
    "clips": (("opensora_mlops.curation.cutting", "opensora_mlops.curation.frames", "opensora_mlops.data.video_io"),
              ("av", "opencv-python-headless")),
    "captions": (("opensora_mlops.curation.captions", "opensora_mlops.curation.scorers"), ("transformers", "torch")),
    "scores": (("opensora_mlops.curation.scorers",),
               ("opencv-python-headless", "numpy", "onnxruntime", "rapidocr-onnxruntime", "open-clip-torch", "torch")),
}
# the probed columns a step's result depends on (besides the file itself)
_SOURCE_FIELDS = ("fps", "vfr", "height", "width")


def _code(step: str) -> str:
    modules, dists = STEP_CODE[step]
    return code_version(modules, dists)


def _limits(clips: ClipConfig) -> dict[str, Any]:
    """The ``curation.clips`` fields scene detection reads (its source checks)."""
    return {k: getattr(clips, k) for k in ("min_side", "max_side", "min_fps", "max_fps", "max_aspect")}


@dataclass(frozen=True)
class SourceTask:
    """One source video of the run: its row, content fingerprint, scene key and names."""

    row: dict[str, Any]
    content: str
    key: str  # scene key

    @property
    def path(self) -> str:
        return str(self.row["path"])

    @property
    def name(self) -> str:
        """Partition name: readable stem and container, then the content-addressed key."""
        return f"{source_label(self.path)}-{self.key}"

    @property
    def label(self) -> str:
        """Clip name prefix: stem, container, content hash (unique across containers and folders)."""
        digest = self.content.split(":", 1)[-1][:8] if self.content != "missing" else self.key[:8]
        return f"{source_label(self.path)}-{digest}"

    @property
    def retime_fps(self) -> Fraction | None:
        return rate_fraction(float(self.row["fps"])) if self.row.get("vfr") else None


def scene_key(row: Mapping[str, Any], content: str, config: CurationConfig) -> str:
    fields = {k: row.get(k) for k in _SOURCE_FIELDS}
    fields["vfr"] = bool(fields["vfr"]) if fields["vfr"] is not None else False
    # a missing file has no content to address; its result (quarantine) is keyed by its name
    identity = content if content != "missing" else f"missing:{row.get('path')}"
    return partition_key(identity, asdict(config.scenes), _limits(config.clips), fields, _code("scenes"))


def source_tasks(raw: pd.DataFrame, config: CurationConfig) -> tuple[list[SourceTask], pd.DataFrame]:
    """One task per distinct source; a repeated path or a file with the same bytes as an earlier one is
    dropped (training the same video twice would skew the data) with the reason."""
    tasks, dropped = [], []
    seen_paths: set[str] = set()
    seen_content: dict[str, str] = {}
    for row in (_jsonable(r) for r in raw.to_dict(orient="records")):
        path = str(row["path"])
        reason = None
        if path in seen_paths:
            reason = "duplicate path in the input table (its first row is curated)"
        content = file_fingerprint(path)
        if reason is None and content != "missing" and content in seen_content:
            reason = f"same content as {seen_content[content]}"
        if reason is not None:
            dropped.append({"path": path, "source_path": path, "step": "scenes", "reason": reason})
            continue
        seen_paths.add(path)
        if content != "missing":
            seen_content[content] = path
        tasks.append(SourceTask(row, content, scene_key(row, content, config)))
    return tasks, dropped_frame(dropped)


def _tokenise(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Dropped rows as stored in a partition: no path columns, the source's path in reasons tokenised."""
    out = df.copy()
    out["reason"] = out["reason"].astype(str).str.replace(source, SOURCE_TOKEN, regex=False)
    out["path"] = ""
    out["source_path"] = ""
    return out


def _attach(dropped: pd.DataFrame, source: str, paths: pd.Series | None = None) -> pd.DataFrame:
    """Stored dropped rows with this run's paths."""
    out = dropped.copy()
    if not len(out):
        return out
    out["reason"] = out["reason"].astype(str).str.replace(SOURCE_TOKEN, source, regex=False)
    out["source_path"] = source
    out["path"] = paths.to_numpy() if paths is not None else source
    return out


# ------------------------------------------------------------------------------------------- scenes
def partition_name(path: str, key: str) -> str:
    return f"{source_label(path)}-{key}"


def scene_partition(payload: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """payload: ``row`` (a raw_metadata row), ``scenes`` and ``clips`` config dicts."""
    row = payload["row"]
    source = str(row["path"])
    try:
        check_source(row, ClipConfig(**payload["clips"]))
        scenes = detect_scenes(source, SceneDetectionConfig(**payload["scenes"]), fps=row.get("fps"),
                               vfr=bool(row.get("vfr")))
    except CurationInputError as exc:
        dropped = dropped_frame([{"step": "scenes", "reason": str(exc)}])
        return pd.DataFrame(columns=SCENE_COLUMNS[1:]), _tokenise(dropped, source)
    rows = [
        {"scene_index": s.index, "num_scenes": len(scenes), "frame_start": s.frame_start,
         "frame_end": s.frame_end, "scene_start": s.start_s, "scene_end": s.end_s, "fps": s.fps}
        for s in scenes
    ]
    return pd.DataFrame(rows, columns=SCENE_COLUMNS[1:]), empty_dropped()


# -------------------------------------------------------------------------------------------- clips
CLIP_FIELDS = ["file", "clip_id", "scene_index", "part_index", "frame_start", "frame_end", "scene_start",
               "scene_end", "num_frames", "height", "width", "aspect_ratio", "fps", "resolution", "duration",
               "num_scenes"]


def clip_partition(payload: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """payload: ``row`` (raw row), ``scenes`` (scene rows of that video), ``clips`` config, ``out_dir``,
    ``label`` (clip name prefix), ``retime_fps`` (a variable-rate source's constant rate, or None)."""
    row = payload["row"]
    source = str(row["path"])
    config = ClipConfig(**payload["clips"])
    scenes = [Scene(int(s["scene_index"]), int(s["frame_start"]), int(s["frame_end"]), float(s["fps"]))
              for s in payload["scenes"]]
    plans, too_short = plan_clips(scenes, config)
    retime = payload.get("retime_fps")
    try:
        made, failed = cut_clips(source, plans, payload["out_dir"], config, label=payload.get("label"),
                                 retime_fps=rate_fraction(retime) if retime else None)
    except CurationInputError as exc:
        made, failed = [], [{"reason": str(exc)} | {"scene_index": p.scene_index, "frame_start": p.frame_start,
                                                    "frame_end": p.frame_end} for p in plans]
    clips = [clip | {"file": Path(clip["path"]).name, "num_scenes": len(scenes)} for clip in made]
    kept = pd.DataFrame(clips, columns=["path", *CLIP_FIELDS])[CLIP_FIELDS] if clips else pd.DataFrame(columns=CLIP_FIELDS)
    dropped = dropped_frame([d | {"step": "clips"} for d in too_short + failed])
    return kept, _tokenise(dropped, source)


def clip_out_dir(task: SourceTask, key: str, config: CurationConfig) -> str:
    return str(Path(config.partitions.clips_dir) / f"{task.label}-{key[:12]}")


def clips_exist(task: PartitionTask, kept: pd.DataFrame) -> bool:
    if "file" not in kept.columns:
        return True
    folder = Path(task.payload["out_dir"])
    return all((folder / f).is_file() for f in kept["file"])


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

    Each clip is decoded once; every score is computed from those frames. Stores ``clip_id`` and the
    score columns only.
    """
    config = ScoringConfig(**payload["scoring"])
    scorer = scorer_for(payload["scoring"])
    kept, dropped = [], []
    for clip in payload["clips"]:
        try:
            frames = sample_clip(clip["path"], config.stride, config.max_frames, int(clip["num_frames"]))
            scores = scorer.score(frames, clip.get("text"))
        except CurationInputError as exc:
            dropped.append({"path": clip["clip_id"], "step": "scores", "scene_index": clip.get("scene_index", -1),
                            "frame_start": clip.get("frame_start", -1), "frame_end": clip.get("frame_end", -1),
                            "reason": str(exc).replace(str(clip["path"]), SOURCE_TOKEN)})
            continue
        kept.append({"clip_id": clip["clip_id"]} | scores)
    return pd.DataFrame(kept), dropped_frame(dropped)


def scoring_identity(config: ScoringConfig) -> dict[str, Any]:
    """The scoring settings plus the content of every model file they name (paths alone would let a
    replaced weights file reuse old scores)."""
    ocr_model = config.ocr_detector_path
    if ocr_model is None and config.ocr_detector == "ppocrv4-det":
        ocr_model = str(bundled_text_detector())
    weights = {name: files_fingerprint(getattr(config, name)) for name in
               ("aesthetic_clip_path", "aesthetic_mlp_path", "match_clip_path")}
    weights["ocr_model"] = files_fingerprint(ocr_model)
    settings = {k: v for k, v in asdict(config).items() if not k.endswith("_path")}
    return {"settings": settings, "weights": weights}


# ------------------------------------------------------------------------------- table-level steps
@dataclass
class StepReport:
    """What one step did: partitions computed vs reused from an earlier run."""

    step: str
    computed: int
    reused: int


def check_input_table(raw: pd.DataFrame, contracts_dir: str | None, name: str = "curation.raw_metadata_input"):
    """Curation's input passes the ``raw_metadata`` contract again (a hand-edited or stale table with a
    negative fps or a repeated path stops here with a report, not inside a step)."""
    from opensora_mlops.data.contracts import validate_table

    return validate_table(raw, "raw_metadata", contracts_dir, name=name)


def run_scenes(raw: pd.DataFrame, config: CurationConfig) -> tuple[pd.DataFrame, pd.DataFrame, StepReport]:
    """Scene detection for every source video (one cached partition per distinct source)."""
    tasks, duplicates = source_tasks(raw, config)
    work = [PartitionTask(t.name, {"row": t.row, "scenes": asdict(config.scenes), "clips": asdict(config.clips)})
            for t in tasks]
    run = config.run_partitioned(work, scene_partition, "scenes", "scene detection")
    kept, dropped = [], [duplicates]
    for task in tasks:
        scenes, bad = run.parts[task.name]
        if len(scenes):
            kept.append(scenes.assign(source_path=task.path, partition=task.name))
        dropped.append(_attach(bad, task.path))
    scenes = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=[*SCENE_COLUMNS, "partition"])
    scenes = scenes[[*SCENE_COLUMNS, "partition"]]
    return (normalise_dtypes(scenes.reset_index(drop=True)), _concat_dropped(dropped),
            StepReport("scenes", len(run.computed), len(run.reused)))


def _concat_dropped(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [dropped_frame(p.to_dict(orient="records")) for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else empty_dropped()


def run_clips(
    raw: pd.DataFrame, scenes: pd.DataFrame, config: CurationConfig
) -> tuple[pd.DataFrame, pd.DataFrame, StepReport]:
    """Cut every video with scenes into clip files (one cached partition per video)."""
    by_source = {p: g for p, g in scenes.groupby("source_path", sort=False)} if len(scenes) else {}
    tasks, _ = source_tasks(raw, config)
    work, info = [], {}
    for task in tasks:
        if task.path not in by_source:
            continue  # quarantined by scene detection
        key = partition_key(task.key, asdict(config.clips), _code("clips"))
        scene_rows = [_jsonable(r) for r in by_source[task.path][SCENE_COLUMNS].to_dict(orient="records")]
        name = f"{source_label(task.path)}-{key}"
        retime = task.retime_fps
        work.append(PartitionTask(name, {"row": task.row, "scenes": scene_rows, "clips": asdict(config.clips),
                                         "out_dir": clip_out_dir(task, key, config), "label": task.label,
                                         "retime_fps": float(retime) if retime else None}))
        info[name] = task
    run = config.run_partitioned(work, clip_partition, "clips", "cutting clips", is_valid=clips_exist)
    kept, dropped = [], []
    for item in work:
        task = info[item.name]
        clips, bad = run.parts[item.name]
        dropped.append(_attach(bad, task.path))
        if not len(clips):
            continue
        clips = clips.copy()
        clips.insert(0, "path", [str(Path(item.payload["out_dir"]) / f) for f in clips["file"]])
        # the source table's other columns (caption, source, probe extras) come from THIS run's table
        carried = {k: v for k, v in task.row.items() if k not in clips.columns}
        for column, value in carried.items():
            clips[column] = [value] * len(clips)
        clips["source_path"] = task.path
        clips["partition"] = item.name
        kept.append(clips.drop(columns=["file"]))
    table = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame()
    return (normalise_dtypes(table.reset_index(drop=True)), _concat_dropped(dropped),
            StepReport("clips", len(run.computed), len(run.reused)))


_CAPTIONERS: dict[tuple[Any, ...], VLMCaptioner] = {}


def captioner_for(config: CaptionConfig) -> VLMCaptioner:
    """One VLM (loaded once) per process and model/prompt/device: a worker or GPU actor captions many
    videos with it (a changed model directory, same path, loads again: its fingerprint is memoised by
    file size and mtime, so this is a stat per file)."""
    key = (config.vlm_path, files_fingerprint(config.vlm_path), config.vlm_prompt, config.vlm_max_new_tokens, config.vlm_device)
    if key not in _CAPTIONERS:
        _CAPTIONERS[key] = VLMCaptioner(config.vlm_path, config.vlm_prompt, config.vlm_max_new_tokens,
                                        config.vlm_device)
    return _CAPTIONERS[key]


def caption_partition(payload: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """payload: ``clips`` (path, num_frames, clip_id rows of one video) and ``captions`` config: the VLM's
    raw captions by ``clip_id``."""
    config = CaptionConfig(**payload["captions"])
    clips = pd.DataFrame(payload["clips"])
    raw = vlm_raw_captions(clips, config, captioner_for(config))
    return pd.DataFrame({"clip_id": clips["clip_id"], "text_raw": raw}), empty_dropped()


def run_captions(clips: pd.DataFrame, config: CurationConfig, captioner=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Caption every clip (all columns kept); clips left without a caption go to the dropped table.

    VLM captions are cached per source video (key: clip partition, VLM settings and model content);
    ``captioner`` (tests, notebooks) replaces the model and bypasses the cache. Refuses with
    :class:`CaptionSourceError` when no clip can get a caption.
    """
    if len(clips) and "text" in clips.columns:
        sources = clips["source_path"].nunique() if "source_path" in clips.columns else len(clips)
        problem = caption_strategy_problem(clips["text"].tolist(), config.captions,
                                           f"none of the {len(clips)} clips of {sources} source video(s) has a caption")
        if problem:
            raise CaptionSourceError(problem)
    raw_captions = None
    if config.captions.source == "vlm" and len(clips) and captioner is None:
        settings = {k: v for k, v in asdict(config.captions).items()
                    if k in ("vlm_prompt", "vlm_max_new_tokens", "vlm_frames")}
        model = files_fingerprint(config.captions.vlm_path)
        tasks = []
        for name, group in clips.groupby("partition", sort=False):
            clip_bytes = [file_fingerprint(p) for p in group["path"]]
            key = partition_key(str(name), clip_bytes, settings, model, _code("captions"))
            rows = group[["path", "num_frames", "clip_id"]].to_dict(orient="records")
            tasks.append(PartitionTask(f"{str(name)[:60]}-{key}", {"clips": [_jsonable(r) for r in rows],
                                                                    "captions": asdict(config.captions)}))
        # the VLM needs a GPU on a cluster: its videos go to GPU actors that keep the model loaded
        run = config.run_partitioned(tasks, caption_partition, "captions", "captioning clips",
                                     gpu=str(config.captions.vlm_device).startswith("cuda"))
        by_id = dict(zip(run.kept["clip_id"], run.kept["text_raw"], strict=True))
        raw_captions = [by_id[c] for c in clips["clip_id"]]
    captioned, missing = caption_table(clips, config.captions, captioner=captioner, raw_captions=raw_captions)
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
        identity = scoring_identity(config.scoring)
        uses_text = config.scoring.match_clip_path is not None
        for name, group in captioned.groupby("partition", sort=False):
            clip_bytes = [file_fingerprint(p) for p in group["path"]]
            texts = group["text"].astype(str).tolist() if uses_text else None
            key = partition_key(str(name), identity, clip_bytes, texts, _code("scores"))
            tasks.append(PartitionTask(f"{str(name)[:60]}-{key}",
                                       {"clips": [_jsonable(r) for r in group.to_dict(orient="records")],
                                        "scoring": asdict(config.scoring)}))
    # CUDA scorers (CLIP aesthetic / match) run in GPU actors; CPU scorers as plain tasks
    run = config.run_partitioned(tasks, score_partition, "scores", "scoring clips",
                                 gpu=str(config.scoring.device).startswith("cuda"))
    scores = run.kept
    if len(captioned) and len(scores):
        scored = captioned.merge(scores, on="clip_id", how="inner", validate="one_to_one")
    else:
        scored = captioned.iloc[0:0]
    dropped = run.dropped
    if len(dropped):
        by_id = captioned.set_index("clip_id")
        ids = dropped["path"]
        dropped = dropped.assign(
            path=ids.map(by_id["path"]).fillna(ids), source_path=ids.map(by_id["source_path"]).fillna(""),
            reason=[r.replace(SOURCE_TOKEN, p) for r, p in zip(dropped["reason"], ids.map(by_id["path"]).fillna(ids),
                                                               strict=True)],
        )
    return normalise_dtypes(scored.reset_index(drop=True)), dropped, StepReport("scores", len(run.computed), len(run.reused))


def run_stage_filter(clips: pd.DataFrame, config: CurationConfig, stage: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(clips passing ``stage``'s thresholds with every column, dropped rows in the common schema; their
    ``decided_by`` names the measure and method of every failed bound, e.g. "aes:clip-mlp")."""
    if stage not in config.stages:
        raise ConfigError(f"curation.stages has no {stage!r}; known: {sorted(config.stages)}")
    kept, dropped = apply_stage_filter(clips, config.stages[stage], stage)
    rows = [{"path": r["path"], "source_path": r.get("source_path", ""), "step": "filter", "stage": stage,
             "scene_index": r.get("scene_index", -1), "frame_start": r.get("frame_start", -1),
             "frame_end": r.get("frame_end", -1), "reason": r["reason"], "decided_by": r.get("decided_by", "")}
            for r in dropped.to_dict(orient="records")]
    return kept, dropped_frame(rows)
