"""Cut source videos into clips at scene boundaries, frame accurately.

Each scene becomes one or more clips: scenes shorter than ``min_seconds`` are dropped (with the reason
recorded), longer than ``max_seconds`` are split into near-equal parts (or truncated, 1.1's behaviour).
The source is decoded once with PyAV, frames numbered in presentation order exactly as scene
detection numbers them (:func:`opensora_mlops.curation.frames.iter_frames`; a variable-frame-rate source
is re-timed to its constant rate first), optionally resized so the shorter side is ``shorter_side``,
and every clip re-encoded as H.264 with :func:`opensora_mlops.data.video_io.write_video`. A clip file
is written under a hidden temporary name and renamed when complete, so a killed run never leaves a
half-written clip under a real name. A decode failure part way through keeps the clips finished before
it and reports the others with the reason.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from PIL import Image

from opensora_mlops.config import ConfigError, strict_dataclass
from opensora_mlops.curation.errors import CurationInputError
from opensora_mlops.curation.frames import iter_frames
from opensora_mlops.curation.scenes import IMAGE_SUFFIXES, Scene
from opensora_mlops.data.video_io import write_video


@dataclass(frozen=True)
class ClipConfig:
    """``curation.clips`` parameters.

    ``min_seconds``/``max_seconds`` bound a clip's length; ``long_scenes`` is "split" (near-equal parts,
    each <= max_seconds) or "truncate" (keep the first max_seconds, as 1.1 did). ``shorter_side``
    resizes clips (never upscales; null keeps the source size). ``crf`` is the H.264 quality.
    The ``*_side``/``*_fps``/``max_aspect`` limits reject absurd sources before any decoding.
    """

    min_seconds: float = 1.0
    max_seconds: float = 10.0
    long_scenes: str = "split"
    shorter_side: int | None = 240
    crf: int = 20
    keep_images: bool = True
    min_side: int = 16
    max_side: int = 8192
    min_fps: float = 1.0
    max_fps: float = 240.0
    max_aspect: float = 8.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_seconds < self.max_seconds:
            raise ConfigError(
                f"curation.clips needs 0 <= min_seconds < max_seconds, got {self.min_seconds}, {self.max_seconds}"
            )
        if self.long_scenes not in {"split", "truncate"}:
            raise ConfigError(f"curation.clips.long_scenes must be 'split' or 'truncate', got {self.long_scenes!r}")
        if self.shorter_side is not None and self.shorter_side < 2:
            raise ConfigError(f"curation.clips.shorter_side must be >= 2 or null, got {self.shorter_side}")
        if not 0 <= self.crf <= 51:
            raise ConfigError(f"curation.clips.crf must be in [0, 51], got {self.crf}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> ClipConfig:
        return strict_dataclass(cls, dict(values or {}), "curation.clips")


@dataclass(frozen=True)
class ClipPlan:
    """A planned clip: source frames ``[frame_start, frame_end)`` of scene ``scene_index``."""

    scene_index: int
    part_index: int
    frame_start: int
    frame_end: int
    fps: float

    @property
    def num_frames(self) -> int:
        return self.frame_end - self.frame_start


def check_source(row: Mapping[str, Any], config: ClipConfig) -> None:
    """Reject a source whose probed size, fps or aspect ratio is absurd (raises CurationInputError)."""
    path = row.get("path")
    height, width = int(row.get("height", 0) or 0), int(row.get("width", 0) or 0)
    for name, value in (("height", height), ("width", width)):
        if not config.min_side <= value <= config.max_side:
            raise CurationInputError(
                f"{path}: {name} {value} outside [{config.min_side}, {config.max_side}] pixels"
            )
    aspect = max(height, width) / max(1, min(height, width))
    if aspect > config.max_aspect:
        raise CurationInputError(f"{path}: aspect ratio {height}x{width} beyond 1:{config.max_aspect:g}")
    if Path(str(path)).suffix.lower() in IMAGE_SUFFIXES:
        return
    fps = float(row.get("fps", 0) or 0)
    if not (math.isfinite(fps) and config.min_fps <= fps <= config.max_fps):
        raise CurationInputError(f"{path}: fps {fps} outside [{config.min_fps}, {config.max_fps}]")


def plan_clips(scenes: Sequence[Scene], config: ClipConfig) -> tuple[list[ClipPlan], list[dict[str, Any]]]:
    """Turn scenes into clip plans; returns (plans, dropped) where each dropped item names its reason."""
    plans: list[ClipPlan] = []
    dropped: list[dict[str, Any]] = []
    for scene in scenes:
        if scene.fps <= 0:  # a still image: one "clip" of one frame
            if config.keep_images:
                plans.append(ClipPlan(scene.index, 0, scene.frame_start, scene.frame_end, scene.fps))
            else:
                dropped.append(_drop(scene, "still image and curation.clips.keep_images is false"))
            continue
        min_frames = math.ceil(config.min_seconds * scene.fps - 1e-6)
        max_frames = max(1, math.floor(config.max_seconds * scene.fps + 1e-6))
        n = scene.num_frames
        if n < max(1, min_frames):
            dropped.append(
                _drop(scene, f"scene of {n} frames ({n / scene.fps:.3f} s) shorter than min_seconds {config.min_seconds:g}")
            )
            continue
        if n <= max_frames:
            bounds = [(scene.frame_start, scene.frame_end)]
        elif config.long_scenes == "truncate":
            bounds = [(scene.frame_start, scene.frame_start + max_frames)]
        else:
            parts = math.ceil(n / max_frames)
            edges = [scene.frame_start + round(i * n / parts) for i in range(parts + 1)]
            bounds = list(zip(edges[:-1], edges[1:], strict=True))
        for part, (start, end) in enumerate(bounds):
            if end - start < min_frames:
                dropped.append(
                    _drop(scene, f"part {part} of {end - start} frames shorter than min_seconds {config.min_seconds:g}")
                )
                continue
            plans.append(ClipPlan(scene.index, part, start, end, scene.fps))
    return plans, dropped


def _drop(scene: Scene, reason: str) -> dict[str, Any]:
    return {
        "scene_index": scene.index,
        "frame_start": scene.frame_start,
        "frame_end": scene.frame_end,
        "reason": reason,
    }


def target_size(height: int, width: int, shorter_side: int | None) -> tuple[int, int]:
    """(H, W) with the shorter side scaled to ``shorter_side`` (never up), both even for yuv420p."""
    if shorter_side is None or min(height, width) <= shorter_side:
        return height - height % 2, width - width % 2
    scale = shorter_side / min(height, width)
    new_h, new_w = max(2, round(height * scale)), max(2, round(width * scale))
    return new_h - new_h % 2, new_w - new_w % 2


def _resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if frame.shape[:2] == (h, w):
        return frame
    if frame.shape[0] >= h and frame.shape[1] >= w:
        return cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
    return cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)


PARTIAL_MARK = ".partial-"


def source_label(source: str | Path) -> str:
    """``<stem>-<container>``: clip names of ``clip.mkv`` and ``clip.mov`` differ."""
    path = Path(source)
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in path.stem)[:40] or "video"
    return f"{stem}-{path.suffix.lstrip('.').lower() or 'none'}"


def clip_name(source: str | Path, plan: ClipPlan, label: str | None = None) -> str:
    """``<label>-s<scene>-p<part>``; ``label`` defaults to :func:`source_label` (curation adds a
    content hash to it, so same-named files in different folders differ too)."""
    return f"{label or source_label(source)}-s{plan.scene_index:03d}-p{plan.part_index:02d}"


def _finish(tmp: Path, final: Path) -> Path:
    os.replace(tmp, final)  # atomic on one file system: the clip appears complete or not at all
    return final


def _partial(out_dir: Path, name: str, suffix: str) -> Path:
    return out_dir / f".{name}{PARTIAL_MARK}{os.getpid()}{suffix}"


def remove_partials(out_dir: Path) -> None:
    """Delete temporary clip files a killed run left behind."""
    for stale in out_dir.glob(f".*{PARTIAL_MARK}*"):
        stale.unlink(missing_ok=True)


def cut_clips(
    source: str | Path, plans: Sequence[ClipPlan], out_dir: str | Path, config: ClipConfig, *,
    retime_fps: Fraction | None = None, label: str | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write one file per plan under ``out_dir``; returns (clip rows, failed plans with reasons).

    ``retime_fps``: the source is variable-frame-rate; plans number its frames re-timed to this
    constant rate (as :func:`opensora_mlops.curation.scenes.detect_scenes` did with ``vfr=True``).
    Clip rows hold ``path, clip_id, scene_index, part_index, frame_start, frame_end, scene_start,
    scene_end, num_frames, height, width, aspect_ratio, fps, resolution, duration``.
    """
    source = Path(source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_partials(out_dir)
    if source.suffix.lower() in IMAGE_SUFFIXES:
        return _cut_image(source, plans, out_dir, config, label)
    pending = sorted(plans, key=lambda p: p.frame_start)
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    buffer: list[np.ndarray] = []
    current = 0  # index into pending
    frame_index = -1
    size: tuple[int, int] | None = None
    error: str | None = None
    try:
        for frame_index, image in iter_frames(source, "rgb24", retime_fps):
            while current < len(pending) and frame_index >= pending[current].frame_end:
                current += 1  # only reachable for overlapping plans, which plan_clips never makes
            if current >= len(pending):
                break
            plan = pending[current]
            if frame_index < plan.frame_start:
                continue
            if size is None:
                size = target_size(image.shape[0], image.shape[1], config.shorter_side)
            buffer.append(_resize(image, size))
            if frame_index == plan.frame_end - 1:
                rows.append(_write_clip(source, plan, np.stack(buffer), out_dir, config, label))
                buffer = []
                current += 1
                if current >= len(pending):
                    break
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        error = f"decode failed after frame {frame_index}: {type(exc).__name__}: {exc}"
    for plan in pending[current:]:
        reason = error or f"stream ended at frame {frame_index + 1}, before the clip's end frame {plan.frame_end}"
        failed.append(
            {"scene_index": plan.scene_index, "frame_start": plan.frame_start, "frame_end": plan.frame_end,
             "reason": f"{source}: {reason}"}
        )
    return rows, failed


def _write_clip(
    source: Path, plan: ClipPlan, frames: np.ndarray, out_dir: Path, config: ClipConfig, label: str | None
) -> dict[str, Any]:
    name = clip_name(source, plan, label)
    # one encoder thread: a clip is the same bytes on every machine and executor (libx264's automatic
    # thread count follows the CPUs a process sees); curation runs videos in parallel instead
    tmp = write_video(_partial(out_dir, name, ".mp4"), frames, plan.fps, crf=config.crf, threads=1)
    path = _finish(Path(tmp), out_dir / f"{name}.mp4")
    t, h, w, _ = frames.shape
    return _clip_row(path, name, plan, t, h, w)


def _clip_row(path: Path, name: str, plan: ClipPlan, t: int, h: int, w: int) -> dict[str, Any]:
    fps = plan.fps
    return {
        "path": str(path),
        "clip_id": name,
        "scene_index": plan.scene_index,
        "part_index": plan.part_index,
        "frame_start": plan.frame_start,
        "frame_end": plan.frame_end,
        "scene_start": plan.frame_start / fps if fps > 0 else 0.0,
        "scene_end": plan.frame_end / fps if fps > 0 else 0.0,
        "num_frames": int(t),
        "height": int(h),
        "width": int(w),
        "aspect_ratio": h / w,
        "fps": float(fps) if fps > 0 else float("nan"),  # a still image has no frame rate
        "resolution": int(h * w),
        "duration": t / fps if fps > 0 else 0.0,
    }


def _cut_image(
    source: Path, plans: Sequence[ClipPlan], out_dir: Path, config: ClipConfig, label: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows, failed = [], []
    for plan in plans:
        try:
            with Image.open(source) as image:
                array = np.asarray(image.convert("RGB"))
        except OSError as exc:
            failed.append({"scene_index": plan.scene_index, "frame_start": 0, "frame_end": 1,
                           "reason": f"{source}: image decode failed: {exc}"})
            continue
        size = target_size(array.shape[0], array.shape[1], config.shorter_side)
        array = _resize(array, size)
        name = clip_name(source, plan, label)
        tmp = _partial(out_dir, name, ".png")
        Image.fromarray(array).save(tmp)
        path = _finish(tmp, out_dir / f"{name}.png")
        rows.append(_clip_row(path, name, plan, 1, array.shape[0], array.shape[1]))
    return rows, failed
