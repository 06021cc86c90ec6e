"""Probing raw files with PyAV: frames, size, fps; everything unusable goes to quarantine with a reason.

For each candidate file the probe records the Open-Sora metadata columns ``path, num_frames, height,
width, aspect_ratio (H/W), fps, resolution (H·W), duration`` plus ``source`` and ``text``. Nothing is
dropped silently: a file that cannot be used (missing, empty, not a video, truncated, no frames, absurd
size or frame rate) becomes a quarantine row ``path, reason, detail, stage`` where ``reason`` is one of
the fixed strings below (so reports can count them) and ``detail`` the specific message.

Frame counts: container headers lie (0 for many MKV/WebM files, stale after a bad remux), so the
default ``count_frames="decode"`` decodes every frame — which also catches truncated files whose
header promises more frames than the data holds. ``"header"`` trusts a positive header count (fast,
for very large corpora) and still decodes the first frame.

Frame timing: frames are counted in presentation order and their timestamps kept
(:mod:`opensora_mlops.curation.frames`). ``frame_jitter`` is the spread of the frame intervals
(5th-95th percentile over the median); above ``vfr_jitter`` the video is variable-frame-rate
(``vfr`` true) and is either re-timed (``vfr: retime``: ``fps`` becomes the constant rate curation
re-times it to and ``num_frames`` the re-timed count) or quarantined (``vfr: quarantine``). In
``"header"`` mode the timestamps come from the demuxed packets instead of decoded frames.

A still image under a video name (a PNG called ``clip.mp4``) is quarantined: FFmpeg would read it as a
one-frame 25 fps "video".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from opensora_mlops.config import ConfigError, strict_dataclass
from opensora_mlops.curation.frames import (
    IMAGE_FORMATS,
    constant_rate,
    decode_timed,
    describe_intervals,
    frame_jitter,
    rate_fraction,
    retime_map,
)

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

# Quarantine reasons (fixed strings: summaries count them, tests and dashboards match them).
REASON_NOT_FOUND = "file not found"
REASON_EMPTY = "empty file (0 bytes)"
REASON_UNSUPPORTED = "unsupported file type"
REASON_UNREADABLE = "not a readable video"
REASON_NO_VIDEO_STREAM = "no video stream"
REASON_TRUNCATED = "truncated or corrupt video"
REASON_NO_FRAMES = "no decodable frames"
REASON_BAD_IMAGE = "not a readable image"
REASON_BAD_DIMENSIONS = "absurd dimensions"
REASON_BAD_FPS = "absurd fps"
REASON_IMAGE_AS_VIDEO = "image file with a video suffix"
REASON_VFR = "variable frame rate"

METADATA_COLUMNS = [
    "path", "text", "num_frames", "height", "width", "aspect_ratio", "fps", "resolution", "duration", "source",
    "vfr", "frame_jitter",
]
QUARANTINE_COLUMNS = ["path", "reason", "detail", "stage"]
PROBE_STAGE = "ingestion.probe"


@dataclass(frozen=True)
class ProbeConfig:
    """``parameters_ingestion.yml`` → ``ingestion.probe``.

    ``count_frames``: "decode" (count every frame; detects truncation) or "header" (trust a positive
    container count). Files whose shorter/longer side is outside [``min_side``, ``max_side``] px, or
    whose fps is not in (0, ``max_fps``], are quarantined. A decoded count below the header's by more
    than ``truncation_tolerance`` (fraction, at least 2 frames) marks a truncated file. A video whose
    frame jitter exceeds ``vfr_jitter`` is variable-frame-rate: ``vfr`` "retime" (re-timed to a constant
    rate by curation, counted here as it will be) or "quarantine".
    """

    count_frames: str = "decode"
    min_side: int = 16
    max_side: int = 8192
    max_fps: float = 240.0
    truncation_tolerance: float = 0.02
    num_workers: int = 1
    vfr: str = "retime"
    vfr_jitter: float = 1.0

    def __post_init__(self) -> None:
        if self.count_frames not in {"decode", "header"}:
            raise ConfigError(f"ingestion.probe.count_frames must be 'decode' or 'header', got {self.count_frames!r}")
        if not 1 <= self.min_side <= self.max_side:
            raise ConfigError(f"ingestion.probe: need 1 <= min_side <= max_side, got {self.min_side}, {self.max_side}")
        if self.max_fps <= 0:
            raise ConfigError(f"ingestion.probe.max_fps must be > 0, got {self.max_fps}")
        if not 0 <= self.truncation_tolerance < 1:
            raise ConfigError(f"ingestion.probe.truncation_tolerance must be in [0, 1), got {self.truncation_tolerance}")
        if self.num_workers < 1:
            raise ConfigError(f"ingestion.probe.num_workers must be >= 1, got {self.num_workers}")
        if self.vfr not in {"retime", "quarantine"}:
            raise ConfigError(f"ingestion.probe.vfr must be 'retime' or 'quarantine', got {self.vfr!r}")
        if not self.vfr_jitter > 0:
            raise ConfigError(f"ingestion.probe.vfr_jitter must be > 0, got {self.vfr_jitter}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> ProbeConfig:
        return strict_dataclass(cls, dict(values or {}), "ingestion.probe")


class ProbeFailure(Exception):
    """A file is unusable; ``reason`` is one of the REASON_* strings, ``detail`` the specifics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class MediaInfo:
    num_frames: int
    height: int
    width: int
    fps: float  # NaN for still images
    vfr: bool = False  # variable frame rate, re-timed to ``fps`` by curation
    frame_jitter: float = 0.0

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps == self.fps and self.fps > 0 else float("nan")


def _check_dimensions(height: int, width: int, cfg: ProbeConfig) -> None:
    short, long = sorted((int(height), int(width)))
    if short < cfg.min_side or long > cfg.max_side:
        raise ProbeFailure(REASON_BAD_DIMENSIONS, f"{height}x{width} px (H x W); "
                           f"allowed sides {cfg.min_side}..{cfg.max_side} px")


def _probe_image(path: Path, cfg: ProbeConfig) -> MediaInfo:
    try:
        with Image.open(path) as image:
            width, height = image.size
            _check_dimensions(height, width, cfg)  # before decoding: a 100k x 100k PNG is a memory bomb
            image.load()  # decode the pixels: a truncated file fails here, not at open
    except Image.DecompressionBombError as exc:
        raise ProbeFailure(REASON_BAD_DIMENSIONS, str(exc)) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ProbeFailure(REASON_BAD_IMAGE, f"{type(exc).__name__}: {exc}") from exc
    return MediaInfo(1, int(height), int(width), float("nan"))


def _iso_bmff_truncation(path: Path) -> str | None:
    """For an MP4/MOV that FFmpeg cannot open: why it looks cut short, or None if it isn't an MP4.

    Walks the top-level boxes (4-byte size, 4-byte type). A file that starts like an MP4 (``ftyp``) but
    whose last box runs past the end of the file, or that has no ``moov`` (the index, which muxers
    write last), was truncated.
    """
    size = path.stat().st_size
    boxes, offset = [], 0
    with path.open("rb") as fh:
        while offset + 8 <= size:
            fh.seek(offset)
            header = fh.read(16)
            box_size, box_type = int.from_bytes(header[:4], "big"), header[4:8]
            if box_size == 1 and len(header) >= 16:  # 64-bit size follows the type
                box_size = int.from_bytes(header[8:16], "big")
            elif box_size == 0:  # box extends to the end of the file
                box_size = size - offset
            if box_size < 8 or not box_type.isalnum() and box_type not in (b"free", b"skip"):
                break
            boxes.append(box_type)
            if offset + box_size > size:
                return f"{box_type.decode('latin-1')} box needs {offset + box_size} bytes, file has {size}"
            offset += box_size
    if not boxes or boxes[0] != b"ftyp":
        return None
    if b"moov" not in boxes:
        return f"no index (moov box); boxes found: {[b.decode('latin-1') for b in boxes]}"
    return None


def _packet_times(path: Path) -> list[Fraction]:
    """Presentation times of every video packet, sorted (header mode: timing without decoding)."""
    with av.open(str(path), metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        base = Fraction(stream.time_base) if stream.time_base else None
        if base is None:
            return []
        pts = [int(p.pts) for p in container.demux(stream) if p.pts is not None and p.size]
    return [Fraction(v) * base for v in sorted(pts)]


def _probe_video(path: Path, cfg: ProbeConfig) -> MediaInfo:
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as exc:
        truncation = _iso_bmff_truncation(path)
        if truncation is not None:
            raise ProbeFailure(REASON_TRUNCATED, f"{truncation} ({exc})") from exc
        raise ProbeFailure(REASON_UNREADABLE, str(exc)) from exc
    with container:
        if not container.streams.video:
            raise ProbeFailure(REASON_NO_VIDEO_STREAM, f"streams: {[s.type for s in container.streams]}")
        stream = container.streams.video[0]
        if container.format.name in IMAGE_FORMATS:
            kind = stream.codec_context.name.upper()
            raise ProbeFailure(REASON_IMAGE_AS_VIDEO, f"a {kind} still image (FFmpeg format "
                               f"{container.format.name!r}) named {path.suffix}; rename it with its image suffix "
                               "to use it as a still image")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        header_frames = int(stream.frames or 0)
        height, width = int(stream.codec_context.height), int(stream.codec_context.width)
        if height and width:  # refuse absurd sizes before decoding a single frame
            _check_dimensions(height, width, cfg)
        decoded = 0
        rotation = 0
        times: list[Fraction | None] = []
        try:
            for _, frame, seconds in decode_timed(container):
                if decoded == 0:
                    rotation = int(getattr(frame, "rotation", 0) or 0)
                    height, width = frame.height, frame.width
                decoded += 1
                times.append(seconds)
                if cfg.count_frames == "header" and header_frames > 0:
                    break
        except av.FFmpegError as exc:
            if decoded == 0:
                raise ProbeFailure(REASON_NO_FRAMES, str(exc)) from exc
            raise ProbeFailure(REASON_TRUNCATED, f"decoding stopped after {decoded} frames: {exc}") from exc
    if decoded == 0:
        raise ProbeFailure(REASON_NO_FRAMES, f"header says {header_frames} frames, none decoded")
    if cfg.count_frames == "header" and header_frames > 0:
        num_frames = header_frames
        try:
            times = _packet_times(path)
        except av.FFmpegError:
            times = []
    else:
        num_frames = decoded
        slack = max(2, int(cfg.truncation_tolerance * header_frames))
        if header_frames > 0 and decoded < header_frames - slack:
            raise ProbeFailure(REASON_TRUNCATED, f"header says {header_frames} frames, only {decoded} decode")
    if abs(rotation) % 180 == 90:  # phone footage: stored landscape, displayed portrait
        height, width = width, height
    jitter = frame_jitter(times)
    vfr = jitter > cfg.vfr_jitter and None not in times
    if vfr:
        if cfg.vfr == "quarantine":
            raise ProbeFailure(REASON_VFR, f"{describe_intervals(times)}, frame jitter {jitter:.2f} > "
                               f"vfr_jitter {cfg.vfr_jitter:g}; set ingestion.probe.vfr: retime to re-time "
                               "it to a constant frame rate")
        # the count curation will cut from: the re-timed constant-rate sequence
        target = rate_fraction(float(constant_rate(times, cfg.max_fps)))
        num_frames, fps = len(retime_map(times, target)), float(target)
    return MediaInfo(num_frames, height, width, fps, bool(vfr), float(jitter))


def probe_media(path: str | Path, cfg: ProbeConfig | None = None) -> MediaInfo:
    """Probe one file; raises :class:`ProbeFailure` with the quarantine reason when it is unusable."""
    cfg = cfg or ProbeConfig()
    path = Path(path)
    if not path.is_file():
        raise ProbeFailure(REASON_NOT_FOUND, str(path))
    if path.stat().st_size == 0:
        raise ProbeFailure(REASON_EMPTY, str(path))
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        info = _probe_image(path, cfg)
    elif suffix in VIDEO_SUFFIXES:
        info = _probe_video(path, cfg)
    else:
        raise ProbeFailure(REASON_UNSUPPORTED, f"suffix {suffix!r}; supported: "
                           f"{sorted(VIDEO_SUFFIXES | IMAGE_SUFFIXES)}")
    _check_dimensions(info.height, info.width, cfg)
    if suffix in VIDEO_SUFFIXES and not 0 < info.fps <= cfg.max_fps:
        raise ProbeFailure(REASON_BAD_FPS, f"{info.fps:g} fps; allowed (0, {cfg.max_fps:g}]")
    return info


def empty_metadata() -> pd.DataFrame:
    return metadata_frame([])


def empty_quarantine() -> pd.DataFrame:
    return quarantine_frame([])


def metadata_frame(rows: list[Mapping[str, Any]]) -> pd.DataFrame:
    """The metadata table with the Open-Sora column order and dtypes (ints as int64, text as str)."""
    df = pd.DataFrame(list(rows), columns=METADATA_COLUMNS)
    for col in ("num_frames", "height", "width", "resolution"):
        df[col] = df[col].astype("int64")
    for col in ("aspect_ratio", "fps", "duration", "frame_jitter"):
        df[col] = df[col].astype("float64")
    df["vfr"] = df["vfr"].fillna(False).astype("bool")
    for col in ("path", "text", "source"):
        df[col] = df[col].astype("str")
    return df


def quarantine_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows), columns=QUARANTINE_COLUMNS)
    for col in QUARANTINE_COLUMNS:
        df[col] = df[col].astype("str")
    return df


def _record(path: str, info: MediaInfo, source: str, text: Any) -> dict[str, Any]:
    return {
        "path": path,
        "text": text if isinstance(text, str) and text.strip() else None,
        "num_frames": info.num_frames,
        "height": info.height,
        "width": info.width,
        "aspect_ratio": info.height / info.width,
        "fps": info.fps,
        "resolution": info.height * info.width,
        "duration": info.duration,
        "source": source,
        "vfr": bool(info.vfr),
        "frame_jitter": float(info.frame_jitter),
    }


def probe_table(candidates: pd.DataFrame, cfg: ProbeConfig | Mapping[str, Any] | None = None,
                progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Probe every row of ``candidates`` (columns ``path``, ``source``, optional ``text``).

    Returns ``(metadata, quarantine)``; every candidate ends up in exactly one of them.
    """
    if not isinstance(cfg, ProbeConfig):
        cfg = ProbeConfig.from_dict(cfg)
    missing = {"path", "source"} - set(candidates.columns)
    if missing:
        raise ValueError(f"probe candidates need columns path and source; missing {sorted(missing)}")
    rows = candidates.to_dict("records")

    def one(row: Mapping[str, Any]) -> tuple[str, Any]:
        try:
            return "ok", _record(str(row["path"]), probe_media(row["path"], cfg), str(row["source"]), row.get("text"))
        except ProbeFailure as failure:
            return "quarantine", {"path": str(row["path"]), "reason": failure.reason, "detail": failure.detail,
                                  "stage": PROBE_STAGE}

    bar = tqdm(total=len(rows), desc="probe", unit="file", disable=not progress)
    results = []
    with ThreadPoolExecutor(max_workers=cfg.num_workers) as pool:
        for result in pool.map(one, rows):  # map keeps the input order
            results.append(result)
            bar.update(1)
    bar.close()
    good = [r for status, r in results if status == "ok"]
    bad = [r for status, r in results if status == "quarantine"]
    return metadata_frame(good), quarantine_frame(bad)


def summarize(metadata: pd.DataFrame, quarantine: pd.DataFrame, candidates: int | None = None) -> dict[str, Any]:
    """Counts for the run report: accepted, quarantined by reason and stage, frames and hours."""
    is_image = metadata["path"].map(lambda p: Path(p).suffix.lower() in IMAGE_SUFFIXES)
    videos = metadata[~is_image]
    return {
        "candidates": int(candidates if candidates is not None else len(metadata) + len(quarantine)),
        "accepted": len(metadata),
        "accepted_videos": int((~is_image).sum()),
        "accepted_images": int(is_image.sum()),
        "quarantined": len(quarantine),
        "quarantined_by_reason": dict(sorted(Counter(quarantine["reason"]).items())),
        "quarantined_by_stage": dict(sorted(Counter(quarantine["stage"]).items())),
        "total_video_frames": int(videos["num_frames"].sum()),
        "total_video_seconds": float(np.nansum(videos["duration"].to_numpy(dtype=float))),
        "captioned": int(metadata["text"].notna().sum()),
        "variable_frame_rate_retimed": int(metadata["vfr"].sum()) if "vfr" in metadata.columns else 0,
        "by_source": dict(sorted(Counter(metadata["source"]).items())),
    }
