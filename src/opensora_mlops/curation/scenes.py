"""Scene (shot) detection with PySceneDetect, frame precise.

Open-Sora 1.1 stored scene boundaries as timecode strings and its cutter worked on whole seconds, so a
cut between frames was moved by up to half a second (defect #6). Here every scene keeps its frame
numbers (``frame_start`` inclusive, ``frame_end`` exclusive) and its times are exactly
``frame / fps`` seconds.

Also here: :func:`cut_detection_scores`, precision/recall of detected cuts against ground truth with a
frame tolerance, used to check the detector on the synthetic corpus.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from opensora_mlops.config import ConfigError, strict_dataclass
from opensora_mlops.curation.errors import CurationInputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


@dataclass(frozen=True)
class SceneDetectionConfig:
    """PySceneDetect settings (``parameters_curation.yml`` → ``curation.scenes``).

    ``detector`` "adaptive" is 1.1's choice (AdaptiveDetector, threshold 3.0); "content" is the plain
    ContentDetector with ``content_threshold``. ``min_scene_len`` is in frames. ``downscale`` is the
    integer factor frames are shrunk by before detection (0 = PySceneDetect's automatic choice).
    """

    detector: str = "adaptive"
    adaptive_threshold: float = 3.0
    min_scene_len: int = 15
    window_width: int = 2
    min_content_val: float = 15.0
    content_threshold: float = 27.0
    luma_only: bool = False
    downscale: int = 0
    backend: str = "pyav"

    def __post_init__(self) -> None:
        if self.detector not in {"adaptive", "content"}:
            raise ConfigError(f"curation.scenes.detector must be 'adaptive' or 'content', got {self.detector!r}")
        if self.min_scene_len < 1:
            raise ConfigError(f"curation.scenes.min_scene_len must be >= 1 frame, got {self.min_scene_len}")
        if self.adaptive_threshold <= 0 or self.content_threshold <= 0:
            raise ConfigError("curation.scenes thresholds must be positive")
        if self.window_width < 1:
            raise ConfigError(f"curation.scenes.window_width must be >= 1, got {self.window_width}")
        if self.downscale < 0:
            raise ConfigError(f"curation.scenes.downscale must be >= 0, got {self.downscale}")
        if self.backend != "pyav":
            # cutting decodes with PyAV; detecting with another decoder could number frames differently
            raise ConfigError(f"curation.scenes.backend must be 'pyav' (the decoder cutting uses), got {self.backend!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> SceneDetectionConfig:
        return strict_dataclass(cls, dict(values or {}), "curation.scenes")


@dataclass(frozen=True)
class Scene:
    """One shot of a source video: frames ``[frame_start, frame_end)``; seconds are ``frame / fps``."""

    index: int
    frame_start: int
    frame_end: int
    fps: float

    @property
    def num_frames(self) -> int:
        return self.frame_end - self.frame_start

    @property
    def start_s(self) -> float:
        return self.frame_start / self.fps if self.fps > 0 else 0.0

    @property
    def end_s(self) -> float:
        return self.frame_end / self.fps if self.fps > 0 else 0.0

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(scene_start=self.start_s, scene_end=self.end_s)
        return row


def _detector(config: SceneDetectionConfig):
    from scenedetect import AdaptiveDetector, ContentDetector

    if config.detector == "adaptive":
        return AdaptiveDetector(
            adaptive_threshold=config.adaptive_threshold,
            min_scene_len=config.min_scene_len,
            window_width=config.window_width,
            min_content_val=config.min_content_val,
            luma_only=config.luma_only,
        )
    return ContentDetector(
        threshold=config.content_threshold, min_scene_len=config.min_scene_len, luma_only=config.luma_only
    )


def _downscale_factor(height: int, width: int, config: SceneDetectionConfig) -> float:
    """PySceneDetect's automatic factor (frames shrunk to about 256 px on the longer side) or the set one."""
    if config.downscale:
        return float(config.downscale)
    longest = max(height, width)
    return longest / 256.0 if longest >= 256 else 1.0


def detect_scenes(path: str | Path, config: SceneDetectionConfig | None = None, *, fps: float | None = None,
                  vfr: bool = False) -> list[Scene]:
    """Detect the shots of a video file; a still image is one scene of one frame.

    Frames are numbered in presentation order as decoded (never timestamp x rate), the numbering
    cutting uses. ``fps`` is the rate the scenes' seconds use (default: the stream's average rate).
    ``vfr``: the source is variable-frame-rate and is re-timed to ``fps`` (required then): cuts are
    found on the decoded frames and moved to the first re-timed frame showing the new shot.

    Raises :class:`CurationInputError` naming the file when it cannot be opened or decoded.
    """
    import av
    import cv2
    from scenedetect import FrameTimecode

    from opensora_mlops.curation.frames import decode_timed, map_cut, rate_fraction, retime_map

    config = config or SceneDetectionConfig()
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return [Scene(index=0, frame_start=0, frame_end=1, fps=0.0)]
    if vfr and not (fps and fps > 0):
        raise CurationInputError(f"{path}: a variable-frame-rate source needs the fps to re-time it to")
    detector = _detector(config)
    cuts: list[int] = []
    times = []
    total = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = fps if fps and fps > 0 else float(stream.average_rate or stream.guessed_rate or 0)
            if not rate > 0:
                raise CurationInputError(f"{path}: scene detection found no frame rate (fps={rate})")
            factor = None
            for index, frame, seconds in decode_timed(container):
                image = frame.to_ndarray(format="bgr24")  # PySceneDetect's detectors expect BGR
                if factor is None:
                    factor = _downscale_factor(image.shape[0], image.shape[1], config)
                if factor > 1.0:
                    size = (max(1, round(image.shape[1] / factor)), max(1, round(image.shape[0] / factor)))
                    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
                cuts += [int(c.frame_num) for c in detector.process_frame(FrameTimecode(index, rate), image)]
                times.append(seconds)
                total = index + 1
            if total:
                cuts += [int(c.frame_num) for c in detector.post_process(FrameTimecode(total - 1, rate))]
    except CurationInputError:
        raise
    except Exception as exc:  # PyAV and the detectors raise many types; the reason goes to quarantine
        raise CurationInputError(f"{path}: scene detection failed: {type(exc).__name__}: {exc}") from exc
    if total <= 0:
        raise CurationInputError(f"{path}: no decodable frames")
    bounds = sorted({c for c in cuts if 0 < c < total})
    if vfr:
        try:
            shown = retime_map(times, rate_fraction(rate))
        except ValueError as exc:
            raise CurationInputError(f"{path}: cannot re-time: {exc}") from exc
        bounds = sorted({map_cut(c, shown) for c in bounds})
        total = len(shown)
        bounds = [b for b in bounds if 0 < b < total]
    edges = [0, *bounds, total]
    scenes = [Scene(index=i, frame_start=a, frame_end=b, fps=float(rate))
              for i, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True))]
    return [s for s in scenes if s.num_frames > 0]


def cut_frames(scenes: Iterable[Scene]) -> list[int]:
    """The cut positions of a scene list: the first frame of every scene but the first."""
    return sorted(s.frame_start for s in scenes if s.frame_start > 0)


def cut_detection_scores(
    detected: Iterable[int], ground_truth: Iterable[int], tolerance: int = 1
) -> dict[str, float]:
    """Precision, recall and F1 of detected cut frames against ground-truth cut frames.

    A detected cut is a true positive when it lies within ``tolerance`` frames of a ground-truth cut
    that no other detection has claimed (one-to-one matching, closest pairs first). With no ground-
    truth cuts recall is 1; with no detections precision is 1 (nothing claimed wrongly).
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 frames, got {tolerance}")
    det = sorted(int(d) for d in detected)
    gt = sorted(int(g) for g in ground_truth)
    pairs = sorted((abs(d - g), i, j) for i, d in enumerate(det) for j, g in enumerate(gt) if abs(d - g) <= tolerance)
    used_d: set[int] = set()
    used_g: set[int] = set()
    for _, i, j in pairs:
        if i not in used_d and j not in used_g:
            used_d.add(i)
            used_g.add(j)
    tp = len(used_d)
    fp = len(det) - tp
    fn = len(gt) - tp
    precision = tp / len(det) if det else 1.0
    recall = tp / len(gt) if gt else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true_positives": float(tp),
        "false_positives": float(fp),
        "false_negatives": float(fn),
        "tolerance": float(tolerance),
    }
