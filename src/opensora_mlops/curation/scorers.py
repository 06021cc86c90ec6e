"""Clip scorers: aesthetic, optical flow, OCR, text-video match, camera motion.

Every clip is decoded ONCE (:func:`sample_clip`: every ``stride``-th frame, at most ``max_frames``) and
the same frames go to every scorer; the Farneback flow fields are computed once and shared by the flow
score and the camera-motion classifier. (Open-Sora 1.1 ran one script per score, each reading every
video again.) Each score comes with a ``<score>_method`` column saying how it was measured.

Embedded default (no weights) — the classical measures, documented here:

* ``aes`` (method ``classical-sharpest-region-exposure-colour``), 0–10, on the first, middle and last
  sampled frames, each first shrunk to a 224-pixel shorter side (never enlarged: the scale CLIP's
  aesthetic model sees, so the score does not depend on the clip's resolution):
  ``10 * S * B * (0.5 + 0.25 * E + 0.25 * C)``: sharpness S and brightness B gate the score (a
  defocused or underexposed frame is poor whatever its colours), tonal range E and colour C grade it.
  S is the sharpness of the frame's sharpest region, so a shallow-focus shot (sharp subject, blurred
  background) is sharp: the frame is cut into 32-px tiles, tiles with edges (mean squared Sobel
  gradient > 100 on 0–255 grey) get R = mean(Laplacian²) / mean(|Sobel gradient|²) (about 1/s² for an
  edge blurred to width s, whatever its contrast), with the sensor noise's share removed (noise σ
  estimated from the median absolute response of Immerkær's mask; white noise adds 20σ² and 24σ² to the
  two means); R90 is the 90th percentile over the tiles and S = clip(log2(R90 / 0.03), 0, 1) (R90 of
  0.03 or less: S = 0; 0.06 or more: S = 1). Heavy compression smears texture everywhere, so it lowers
  R90 as blur does.
  B = min(1, p99 / 0.3) with p99 the 99th luma percentile on 0–1: underexposure is the absence of any
  bright tone (a dark background under a lit subject, or a blue shape on navy, is not underexposed);
  E = min(1, (p99 - p1) / 0.6) * (1 - blown fraction) (tonal range; blown = pixels above 0.98),
  C = min(1, M / 109) with Hasler–Süsstrunk colourfulness M = sqrt(sd(rg)² + sd(yb)²) +
  0.3 * sqrt(mean(rg)² + mean(yb)²), rg = R - G, yb = (R + G) / 2 - B (109: their "extremely
  colourful"). Calibration (README, tests/test_real_footage.py): camera footage of real photographs
  (pans, zooms, hand-held, shallow focus, grass, a fence, a portrait, signs) scores 6.1–9.6 at 160 px
  and 432 px; defocused, underexposed and crf-45/51 footage seen at its own size 0–3.0.
  With ``aesthetic_clip_path`` and ``aesthetic_mlp_path`` set: CLIP ViT-L/14 image embeddings (open-clip)
  through the LAION improved-aesthetic-predictor MLP, 1.1's scorer (method ``clip-mlp``).
* ``flow`` (method ``farneback``): OpenCV Farneback dense flow between consecutive sampled frames
  (grey, shorter side ``flow_short_side``); the mean per-pixel magnitude is divided by the frame gap
  and expressed per 10 source frames in pixels of a 320×576 frame (diagonal 659.7 px) — the geometry
  and frame spacing of 1.1's UniMatch score (frames 0, 10, 20, 30 at 320×576), so thresholds are on a
  comparable scale.
* ``ocr`` (method ``ppocrv4-det-area``): the fraction of the frame covered by text, mean over the first,
  middle and last sampled frames, from PaddleOCR's PP-OCRv4 DB text detector (the ONNX model inside
  the ``rapidocr-onnxruntime`` wheel; only the detector runs, nothing is downloaded): the frame is
  resized to ``ocr_short_side`` but never enlarged more than 2x (sides multiples of 32; enlarged
  further, flat shapes read as glyphs), the probability map thresholded at 0.3,
  each region kept when its mean probability is >= 0.5, it is at least twice as long as thick (a word's
  shrunk kernel is; a lone blob taken for a glyph is not) and no thicker than a quarter of the frame,
  grown back to the text's extent by DB's unclip ratio 1.6, and the union of the boxes' area divided
  by the frame's (single characters are not counted). ``ocr_detector:
  opencv-db`` with ``ocr_detector_path`` (a DBNet ONNX for OpenCV's ``TextDetectionModel_DB``) counts
  text boxes instead, 1.1's measure (method ``dbnet``); ``ocr_detector: classical`` is the old
  morphological text-area heuristic (method ``text-area``; it takes grass, fences and foliage for text).
* ``match`` (method ``unavailable``): NaN unless ``match_clip_path`` is set; then the cosine similarity
  of CLIP embeddings of the middle frame and the caption (method ``clip``), as 1.1.
* ``camera_motion`` (method ``flow-global-motion``): per frame pair, the median flow (global
  translation) and the median radial scale about the centre (zoom), both per source frame in
  320×576 pixels; ``static`` when both are below ``camera_static_threshold``, zoom when the zoom
  displacement at mean radius exceeds the translation, otherwise the pan/tilt the translation implies
  (content moving right = the camera panning left; content moving down = tilting up). The clip's label
  is the pair labels' majority (more than ``camera_agreement`` of pairs), else ``unknown``.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from PIL import Image

from opensora_mlops.config import ConfigError, strict_dataclass
from opensora_mlops.curation.errors import CurationInputError
from opensora_mlops.curation.scenes import IMAGE_SUFFIXES

REFERENCE_DIAGONAL = math.hypot(320, 576)  # 1.1's UniMatch input geometry
REFERENCE_GAP = 10  # 1.1 scored flow between frames 0, 10, 20, 30
CAMERA_LABELS = ("static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "unknown")
SCORE_COLUMNS = ("aes", "flow", "ocr", "match", "camera_motion")
OCR_DETECTORS = ("ppocrv4-det", "opencv-db", "classical")
AES_METHOD_CLASSICAL = "classical-sharpest-region-exposure-colour"


@dataclass(frozen=True)
class ScoringConfig:
    """``curation.scoring`` parameters (see the module docstring for what each measure is)."""

    stride: int = 4
    max_frames: int = 16
    flow_short_side: int = 128
    aesthetic_clip_path: str | None = None
    aesthetic_mlp_path: str | None = None
    match_clip_path: str | None = None
    clip_model_name: str = "ViT-L-14"
    ocr_detector: str = "ppocrv4-det"
    ocr_detector_path: str | None = None
    ocr_detector_size: tuple[int, int] = (736, 736)
    ocr_short_side: int = 320
    ocr_threads: int = 1
    camera_static_threshold: float = 0.5
    camera_agreement: float = 0.5
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ConfigError(f"curation.scoring.stride must be >= 1, got {self.stride}")
        if self.max_frames < 2:
            raise ConfigError(f"curation.scoring.max_frames must be >= 2, got {self.max_frames}")
        if self.flow_short_side < 16:
            raise ConfigError(f"curation.scoring.flow_short_side must be >= 16, got {self.flow_short_side}")
        if (self.aesthetic_clip_path is None) != (self.aesthetic_mlp_path is None):
            raise ConfigError(
                "curation.scoring: set both aesthetic_clip_path and aesthetic_mlp_path (CLIP aesthetic) or neither"
            )
        if not 0 < self.camera_agreement < 1:
            raise ConfigError(f"curation.scoring.camera_agreement must be in (0, 1), got {self.camera_agreement}")
        object.__setattr__(self, "ocr_detector_size", tuple(int(v) for v in self.ocr_detector_size))
        if self.ocr_detector not in OCR_DETECTORS:
            raise ConfigError(f"curation.scoring.ocr_detector must be one of {list(OCR_DETECTORS)}, "
                              f"got {self.ocr_detector!r}")
        if self.ocr_detector == "opencv-db" and not self.ocr_detector_path:
            raise ConfigError("curation.scoring.ocr_detector 'opencv-db' needs ocr_detector_path (a DBNet ONNX file)")
        if self.ocr_short_side < 32:
            raise ConfigError(f"curation.scoring.ocr_short_side must be >= 32, got {self.ocr_short_side}")
        if self.ocr_threads < 1:
            raise ConfigError(f"curation.scoring.ocr_threads must be >= 1, got {self.ocr_threads}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> ScoringConfig:
        return strict_dataclass(cls, dict(values or {}), "curation.scoring")


@dataclass
class SampledClip:
    """Frames decoded once for all scorers: ``frames`` (N, H, W, 3) uint8 at source frame ``indices``."""

    path: str
    frames: np.ndarray
    indices: list[int]
    fps: float
    num_frames: int

    @property
    def gaps(self) -> np.ndarray:
        return np.diff(np.asarray(self.indices, dtype=np.float64))


def sample_indices(num_frames: int, stride: int, max_frames: int) -> list[int]:
    """Every ``stride``-th frame, thinned evenly to at most ``max_frames`` (first and last kept)."""
    indices = list(range(0, max(1, num_frames), stride))
    if len(indices) > max_frames:
        picks = np.linspace(0, len(indices) - 1, max_frames).round().astype(int)
        indices = [indices[i] for i in sorted(set(picks.tolist()))]
    return indices


def sample_clip(path: str | Path, stride: int = 4, max_frames: int = 16, num_frames: int | None = None) -> SampledClip:
    """Decode a clip once, keeping the frames the scorers need. Raises CurationInputError if unreadable."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        try:
            with Image.open(path) as image:
                frame = np.asarray(image.convert("RGB"))
        except OSError as exc:
            raise CurationInputError(f"{path}: cannot read image: {exc}") from exc
        return SampledClip(str(path), frame[None], [0], 0.0, 1)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            total = num_frames if num_frames is not None else int(stream.frames or 0)
            if total <= 0:  # container does not say: decode everything at the stride, thin afterwards
                frames, indices = [], []
                for i, frame in enumerate(container.decode(stream)):
                    if i % stride == 0:
                        frames.append(frame.to_ndarray(format="rgb24"))
                        indices.append(i)
                total = (indices[-1] + 1) if indices else 0
                keep = set(sample_indices(total, stride, max_frames))
                pairs = [(i, f) for i, f in zip(indices, frames, strict=True) if i in keep]
            else:
                wanted = sample_indices(total, stride, max_frames)
                wanted_set, last = set(wanted), wanted[-1]
                pairs = []
                for i, frame in enumerate(container.decode(stream)):
                    if i in wanted_set:
                        pairs.append((i, frame.to_ndarray(format="rgb24")))
                    if i >= last:
                        break
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise CurationInputError(f"{path}: decode failed: {type(exc).__name__}: {exc}") from exc
    if not pairs:
        raise CurationInputError(f"{path}: no decodable frames")
    indices = [i for i, _ in pairs]
    return SampledClip(str(path), np.stack([f for _, f in pairs]), indices, fps, max(total, indices[-1] + 1))


# ----------------------------------------------------------------------------------------------- aesthetic
AES_REFERENCE_SIDE = 224  # frames are scored at CLIP's input scale, so clips of any size compare
AES_TILE = 32
AES_EDGE_ENERGY = 100.0  # mean squared Sobel gradient a tile needs to count (0-255 grey)
R_BLURRED, R_SHARP = 0.03, 0.06  # R90 at or below: S = 0; at or above: S = 1
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)


def reference_scale(frame: np.ndarray, short_side: int = AES_REFERENCE_SIDE) -> np.ndarray:
    """``frame`` shrunk (area interpolation) to ``short_side`` px on its shorter side; never enlarged."""
    h, w = frame.shape[:2]
    scale = short_side / min(h, w)
    if scale >= 1:
        return frame
    return cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def noise_sigma(gray: np.ndarray) -> float:
    """Sensor-noise standard deviation (grey levels): Immerkær's mask, robust median form."""
    if min(gray.shape) < 3:
        return 0.0
    response = cv2.filter2D(gray.astype(np.float64), -1, _IMMERKAER)[1:-1, 1:-1]
    return float(np.median(np.abs(response)) / (0.6745 * 6.0))  # the mask's response to noise has sd 6σ


def sharpness(gray: np.ndarray) -> float:
    """R90: the 90th percentile over 32-px tiles with edges of the noise-corrected ratio
    mean(Laplacian²) / mean(|Sobel gradient|²) on 0–255 grey (module docstring); 0 without edges.

    About 1/s² for edges blurred to width s, whatever their contrast or number.
    """
    g = gray.astype(np.float64)
    noise = noise_sigma(g) ** 2
    laplacian = cv2.Laplacian(g, cv2.CV_64F) ** 2
    gradient = cv2.Sobel(g, cv2.CV_64F, 1, 0) ** 2 + cv2.Sobel(g, cv2.CV_64F, 0, 1) ** 2
    h, w = g.shape
    tile = min(AES_TILE, h, w)
    rows, cols = h // tile, w // tile

    def tile_means(a: np.ndarray) -> np.ndarray:
        return a[: rows * tile, : cols * tile].reshape(rows, tile, cols, tile).mean(axis=(1, 3))

    lap, grad = tile_means(laplacian) - 20.0 * noise, tile_means(gradient) - 24.0 * noise
    edges = grad > AES_EDGE_ENERGY
    if not edges.any():
        return 0.0
    return float(np.percentile(np.maximum(lap[edges], 0.0) / grad[edges], 90))


def sharpness_score(gray: np.ndarray) -> float:
    """S in [0, 1]: log10 of :func:`sharpness` between R_BLURRED (0) and R_SHARP (1)."""
    ratio = sharpness(gray)
    if ratio <= 0:
        return 0.0
    return float(np.clip(math.log10(ratio / R_BLURRED) / math.log10(R_SHARP / R_BLURRED), 0.0, 1.0))


def colourfulness(frame: np.ndarray) -> float:
    """Hasler & Süsstrunk (2003) colourfulness M of an RGB uint8 image (0 = grey, ~109 = extreme)."""
    rgb = frame.astype(np.float64)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()))


def exposure(gray: np.ndarray) -> float:
    """Tonal range: (1st to 99th luma percentile span) / 0.6, capped at 1, times the share of pixels
    not blown out (> 98 %). An underexposed frame has no bright tones; a dark background under a lit
    subject is fine."""
    luma = gray.astype(np.float64) / 255.0
    low, high = np.percentile(luma, [1, 99])
    blown = float(np.mean(luma > 0.98))
    return float(min(1.0, (high - low) / 0.6) * (1.0 - blown))


def brightness(gray: np.ndarray) -> float:
    """B: the 99th luma percentile (0–1) over 0.3, capped at 1 — low only when nothing in the frame is
    bright (underexposure)."""
    return float(min(1.0, np.percentile(gray.astype(np.float64) / 255.0, 99) / 0.3))


def aesthetic_parts(frame: np.ndarray) -> dict[str, float]:
    """S, B, E, C and the 0–10 score of one RGB frame at the reference scale (module docstring)."""
    small = reference_scale(frame)
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    s, b, e = sharpness_score(gray), brightness(gray), exposure(gray)
    c = min(1.0, colourfulness(small) / 109.0)
    return {"sharpness": s, "brightness": b, "exposure": e, "colour": c,
            "aes": 10.0 * s * b * (0.5 + 0.25 * e + 0.25 * c)}


def classical_aesthetic(frames: np.ndarray) -> float:
    """The 0–10 classical aesthetic score (module docstring) over first/middle/last frames."""
    picks = sorted({0, len(frames) // 2, len(frames) - 1})
    return float(np.mean([aesthetic_parts(frames[i])["aes"] for i in picks]))


# ------------------------------------------------------------------------------------------------- flow
def _gray_small(frame: np.ndarray, short_side: int) -> np.ndarray:
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    if min(h, w) > short_side:
        scale = short_side / min(h, w)
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return gray


def flow_fields(frames: np.ndarray, short_side: int = 128) -> list[np.ndarray]:
    """Farneback flow (H', W', 2) between consecutive frames, at shorter side ``short_side``."""
    grays = [_gray_small(f, short_side) for f in frames]
    return [
        cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        for a, b in zip(grays[:-1], grays[1:], strict=True)
    ]


def _to_reference(field_: np.ndarray) -> float:
    """Factor turning pixels of this flow field into pixels of a 320×576 frame."""
    h, w = field_.shape[:2]
    return REFERENCE_DIAGONAL / math.hypot(h, w)


def flow_score(fields: list[np.ndarray], gaps: np.ndarray) -> float:
    """Mean flow magnitude per 10 source frames in 320×576 pixels (module docstring); 0 for < 2 frames."""
    if not fields:
        return 0.0
    per_frame = [
        float(np.linalg.norm(f, axis=-1).mean()) * _to_reference(f) / max(g, 1.0)
        for f, g in zip(fields, gaps, strict=True)
    ]
    return float(np.mean(per_frame) * REFERENCE_GAP)


def global_motion(field_: np.ndarray) -> tuple[float, float, float]:
    """(dx, dy, zoom) of one flow field, in this field's pixels: the median translation, and the median
    per-pixel radial scale (flow along the radius / radius, about the centre) times the mean radius
    (positive = content expanding = zooming in). Medians, so objects moving over a still background
    leave the camera "static"."""
    h, w = field_.shape[:2]
    dx, dy = float(np.median(field_[..., 0])), float(np.median(field_[..., 1]))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    rx, ry = xs - (w - 1) / 2.0, ys - (h - 1) / 2.0
    r2 = rx**2 + ry**2
    far = r2 > (0.1 * min(h, w)) ** 2  # the radial scale is ill-defined near the centre
    radial = ((field_[..., 0] - dx) * rx + (field_[..., 1] - dy) * ry)[far] / r2[far]
    scale = float(np.median(radial)) if radial.size else 0.0
    return dx, dy, scale * float(np.sqrt(r2).mean())


def classify_motion(dx: float, dy: float, zoom: float, static_threshold: float) -> str:
    """One label from per-frame global motion in 320×576 pixels."""
    translation = math.hypot(dx, dy)
    if max(translation, abs(zoom)) < static_threshold:
        return "static"
    if abs(zoom) > translation:
        return "zoom_in" if zoom > 0 else "zoom_out"
    if abs(dx) >= abs(dy):
        return "pan_left" if dx > 0 else "pan_right"
    return "tilt_up" if dy > 0 else "tilt_down"


def camera_motion(fields: list[np.ndarray], gaps: np.ndarray, static_threshold: float = 0.5,
                  agreement: float = 0.5) -> str:
    """The clip's camera motion label (module docstring); "static" for a single frame."""
    if not fields:
        return "static"
    labels = []
    for f, g in zip(fields, gaps, strict=True):
        k = _to_reference(f) / max(g, 1.0)
        dx, dy, zoom = global_motion(f)
        labels.append(classify_motion(dx * k, dy * k, zoom * k, static_threshold))
    values, counts = np.unique(labels, return_counts=True)
    best = int(np.argmax(counts))
    return str(values[best]) if counts[best] > agreement * len(labels) else "unknown"


# -------------------------------------------------------------------------------------------------- OCR
def text_area_fraction(frame: np.ndarray) -> float:
    """Fraction of the frame covered by text-like regions (module docstring)."""
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
    h, w = gray.shape
    gradient = cv2.morphologyEx(gray, cv2.MORPH_GRADIENT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    otsu, _ = cv2.threshold(gradient, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    # a flat frame's Otsu threshold sits in the noise; text strokes are strong edges
    _, edges = cv2.threshold(gradient, max(float(otsu), 40.0), 255, cv2.THRESH_BINARY)
    kernel_w = max(3, w // 40)
    closed = cv2.morphologyEx(edges, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (kernel_w, 1)))
    count, _, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=8)
    text_area = 0
    for x, y, bw, bh, area in stats[1:count]:
        if bh < 6 or bh > h / 4 or bw < 1.5 * bh or area < 0.4 * bw * bh:
            continue
        rows = edges[y + bh // 4 : y + bh - bh // 4 + 1, x : x + bw] > 0
        transitions = np.count_nonzero(rows[:, 1:] & ~rows[:, :-1], axis=1).mean() if rows.size else 0.0
        if transitions >= max(3.0, 0.5 * bw / bh):
            text_area += bw * bh
    return min(1.0, text_area / float(h * w))


def bundled_text_detector() -> Path:
    """PP-OCRv4's DB text detector inside the installed ``rapidocr-onnxruntime`` wheel (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("curation.scoring.ocr_detector 'ppocrv4-det' needs the rapidocr-onnxruntime package "
                          "(pip install rapidocr-onnxruntime), or set ocr_detector: classical")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "ch_PP-OCRv4_det_infer.onnx"
    if not path.is_file():
        raise ConfigError(f"rapidocr-onnxruntime is installed but its detector model is missing: {path}")
    return path


class DBTextDetector:
    """A DB (differentiable binarisation) text detector in ONNX, run with onnxruntime on the CPU.

    :meth:`text_area` is the fraction of a frame covered by detected text boxes; pre- and post-
    processing follow PaddleOCR's DB settings (module docstring).
    """

    THRESHOLD, BOX_THRESHOLD, UNCLIP_RATIO, MIN_SIDE, MAX_LINE, MIN_ASPECT = 0.3, 0.5, 1.6, 3, 0.25, 2.0

    def __init__(self, model_path: str | Path, short_side: int = 320, threads: int = 1) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise ConfigError(f"curation.scoring: cannot load the text detector {model_path}: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.short_side = int(short_side)

    def probability(self, frame: np.ndarray) -> np.ndarray:
        """The detector's text probability map (at the network's input size) for an RGB frame."""
        h, w = frame.shape[:2]
        # enlarged more than 2x, flat shapes start to look like glyphs to the network (a disc reads as "O")
        scale = min(self.short_side, 2 * min(h, w)) / min(h, w)
        size = (max(32, round(w * scale / 32) * 32), max(32, round(h * scale / 32) * 32))
        bgr = cv2.resize(np.ascontiguousarray(frame[..., ::-1]), size, interpolation=cv2.INTER_LINEAR)
        x = ((bgr.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]
        return self.session.run(None, {self.input_name: x})[0][0, 0]

    def text_area(self, frame: np.ndarray) -> float:
        prob = self.probability(frame)
        mask = cv2.dilate((prob > self.THRESHOLD).astype(np.uint8), np.ones((2, 2), np.uint8))
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        covered = np.zeros(prob.shape, np.uint8)
        for contour in contours[:1000]:
            (cx, cy), (bw, bh), angle = cv2.minAreaRect(contour)
            # a text line is thin: a region thicker than a quarter of the frame is texture the network
            # misread when enlarged (dense petals, foliage), not lettering; and DB's shrunk kernel of a
            # word is long (two letters: ~7:1), while a lone blob the network took for a glyph (a flat
            # disc reads as "O") is about as wide as tall
            if (min(bw, bh) < self.MIN_SIDE or min(bw, bh) > self.MAX_LINE * min(prob.shape)
                    or max(bw, bh) < self.MIN_ASPECT * min(bw, bh)):
                continue
            box = cv2.boxPoints(((cx, cy), (bw, bh), angle))
            x0, y0 = np.floor(box.min(axis=0)).astype(int).clip(0)
            x1 = min(int(np.ceil(box[:, 0].max())), prob.shape[1] - 1)
            y1 = min(int(np.ceil(box[:, 1].max())), prob.shape[0] - 1)
            inside = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
            cv2.fillPoly(inside, [np.round(box - [x0, y0]).astype(np.int32)], 1)
            if not inside.any() or prob[y0: y1 + 1, x0: x1 + 1][inside > 0].mean() < self.BOX_THRESHOLD:
                continue
            # DB predicts shrunk text kernels; grow each box back by area * ratio / perimeter
            grow = bw * bh * self.UNCLIP_RATIO / (2.0 * (bw + bh))
            if min(bw, bh) + 2 * grow < self.MIN_SIDE + 2:
                continue
            grown = cv2.boxPoints(((cx, cy), (bw + 2 * grow, bh + 2 * grow), angle))
            cv2.fillPoly(covered, [np.round(grown).astype(np.int32)], 1)
        return float(covered.mean())


# ------------------------------------------------------------------------------------ configured models
class _OpenClip:
    """CLIP from a local open-clip weights file (lazy import; clear errors when unavailable)."""

    def __init__(self, model_name: str, weights_path: str, device: str) -> None:
        if not Path(weights_path).exists():
            raise ConfigError(f"curation.scoring: CLIP weights not found at {weights_path!r}")
        try:
            import open_clip
        except ImportError as exc:
            raise ConfigError(
                "curation.scoring: a CLIP weights path is configured but open-clip is not installed "
                "(pip install open-clip-torch), or unset the path to use the classical measures"
            ) from exc
        import torch

        self.torch = torch
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=str(weights_path), device=device
            )
        except (RuntimeError, OSError, ValueError, KeyError, AssertionError, pickle.UnpicklingError) as exc:
            # an unknown architecture name, weights of another architecture (open-clip asserts on some
            # shape mismatches), or a file that is no checkpoint
            raise ConfigError(f"curation.scoring: cannot load open-clip {model_name!r} with the weights "
                              f"{weights_path!r} (clip_model_name must name their architecture): {exc}") from exc
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device = device

    def image_embeddings(self, frames: np.ndarray):
        batch = self.torch.stack([self.preprocess(Image.fromarray(f)) for f in frames]).to(self.device)
        with self.torch.no_grad():
            emb = self.model.encode_image(batch).float()
        return emb / emb.norm(dim=-1, keepdim=True)

    def text_embeddings(self, texts: list[str]):
        with self.torch.no_grad():
            emb = self.model.encode_text(self.tokenizer(texts).to(self.device)).float()
        return emb / emb.norm(dim=-1, keepdim=True)


def _aesthetic_mlp(path: str, dim: int):
    """The LAION improved-aesthetic-predictor head (keys ``layers.{0,2,4,6,7}``)."""
    import torch
    from torch import nn

    class AestheticHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
            )

        def forward(self, x):
            return self.layers(x)

    if not Path(path).exists():
        raise ConfigError(f"curation.scoring.aesthetic_mlp_path not found: {path!r}")
    head = AestheticHead()
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    head.load_state_dict(state, strict=True)
    return head.eval()


# ------------------------------------------------------------------------------------------------ scorer
@dataclass
class ClipScorer:
    """All scorers with their models loaded once (per process); ``score`` works on decoded frames."""

    config: ScoringConfig = field(default_factory=ScoringConfig)

    def __post_init__(self) -> None:
        c = self.config
        self._clip_aes = self._clip_match = self._mlp = self._db = None
        if c.aesthetic_clip_path:
            self._clip_aes = _OpenClip(c.clip_model_name, c.aesthetic_clip_path, c.device)
            dim = int(self._clip_aes.model.visual.output_dim)
            self._mlp = _aesthetic_mlp(c.aesthetic_mlp_path, dim)
        if c.match_clip_path:
            same = self._clip_aes is not None and c.match_clip_path == c.aesthetic_clip_path
            self._clip_match = self._clip_aes if same else _OpenClip(c.clip_model_name, c.match_clip_path, c.device)
        self._text = None
        if c.ocr_detector_path and not Path(c.ocr_detector_path).exists():
            raise ConfigError(f"curation.scoring.ocr_detector_path not found: {c.ocr_detector_path!r}")
        if c.ocr_detector == "opencv-db":
            self._db = cv2.dnn.TextDetectionModel_DB(c.ocr_detector_path)
            self._db.setBinaryThreshold(0.3).setPolygonThreshold(0.5)
            self._db.setInputParams(1.0 / 255.0, c.ocr_detector_size, (122.68, 116.67, 104.01), True)
        elif c.ocr_detector == "ppocrv4-det":
            self._text = DBTextDetector(c.ocr_detector_path or bundled_text_detector(), c.ocr_short_side,
                                        c.ocr_threads)

    @property
    def methods(self) -> dict[str, str]:
        return {
            "aes_method": "clip-mlp" if self._mlp is not None else AES_METHOD_CLASSICAL,
            "flow_method": "farneback",
            "ocr_method": {"ppocrv4-det": "ppocrv4-det-area", "opencv-db": "dbnet",
                           "classical": "text-area"}[self.config.ocr_detector],
            "match_method": "clip" if self._clip_match is not None else "unavailable",
            "camera_motion_method": "flow-global-motion",
        }

    # each measure on its own (the benchmark's per-scorer baseline calls these one by one)
    def aesthetic(self, clip: SampledClip) -> float:
        if self._mlp is None:
            return classical_aesthetic(clip.frames)
        picks = clip.frames[sorted({0, len(clip.frames) // 2, len(clip.frames) - 1})]
        emb = self._clip_aes.image_embeddings(picks)
        with self._clip_aes.torch.no_grad():
            return float(self._mlp(emb).mean())

    def flow(self, clip: SampledClip, fields: list[np.ndarray] | None = None) -> float:
        fields = flow_fields(clip.frames, self.config.flow_short_side) if fields is None else fields
        return flow_score(fields, clip.gaps)

    def camera(self, clip: SampledClip, fields: list[np.ndarray] | None = None) -> str:
        fields = flow_fields(clip.frames, self.config.flow_short_side) if fields is None else fields
        return camera_motion(fields, clip.gaps, self.config.camera_static_threshold, self.config.camera_agreement)

    def ocr(self, clip: SampledClip) -> float:
        if self._text is not None:  # the detector is the costly part: first, middle and last frames
            picks = sorted({0, len(clip.frames) // 2, len(clip.frames) - 1})
            return float(np.mean([self._text.text_area(clip.frames[i]) for i in picks]))
        if self._db is None:
            return float(np.mean([text_area_fraction(f) for f in clip.frames]))
        counts = [len(self._db.detect(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[0]) for f in clip.frames]
        return float(np.mean(counts))

    def match(self, clip: SampledClip, text: str | None) -> float:
        if self._clip_match is None or not text:
            return float("nan")
        image = self._clip_match.image_embeddings(clip.frames[len(clip.frames) // 2][None])
        words = self._clip_match.text_embeddings([text])
        return float((image * words).sum())

    def score(self, clip: SampledClip, text: str | None = None) -> dict[str, Any]:
        """Every score from one set of decoded frames (flow fields computed once for flow and camera)."""
        fields = flow_fields(clip.frames, self.config.flow_short_side) if len(clip.frames) > 1 else []
        row: dict[str, Any] = {
            "aes": self.aesthetic(clip),
            "flow": self.flow(clip, fields),
            "ocr": self.ocr(clip),
            "match": self.match(clip, text),
            "camera_motion": self.camera(clip, fields),
        }
        row.update(self.methods)
        return row

    def score_path(self, path: str | Path, text: str | None = None, num_frames: int | None = None) -> dict[str, Any]:
        clip = sample_clip(path, self.config.stride, self.config.max_frames, num_frames)
        return self.score(clip, text)
