"""The bundled synthetic corpus: videos of simple shapes with known captions, cuts and sizes.

Two kinds of good video. *Single-shot clips* (``num_single_shot``, the bulk of the corpus, the data the
embedded model learns from) show one shape for 2–3 s at the 144p training sizes; their attributes are
drawn stratified, so every colour, shape, background, direction and speed is about equally common and
every (colour, shape, background) combination occurs (see :func:`_balanced_cycle`). *Multi-shot videos*
(``num_videos``) join 2–6 shots by hard cuts, so scene detection and cutting have work.

A shot shows one coloured shape moving in one direction at one speed over a flat background with a
faint grid (the grid gives sharp edges, so blur and sharpness measures have something to see). Its
caption is derived from its parameters with a fixed vocabulary, so later stages can check themselves
against the truth: scene detection against the cut frames, captioning against the shot captions, and
evaluation (prompt adherence by classical CV on generated frames) against :func:`parse_caption`.

Consecutive shots always differ in background *and* shape colour, so the frame difference at a cut is
large (PySceneDetect's AdaptiveDetector finds every one), and every shot is at least
``min_shot_seconds`` long (longer than the detector's minimum scene length).

On purpose the corpus also holds material every check and filter must catch: a static clip, a clip with
rendered text, a dark and a blurred clip, still images, a zero-byte file, a truncated MP4 and a text
file named ``.mp4``. The ground truth (``ground_truth.json`` beside the files) names each file's kind.

Everything is deterministic in the seed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from opensora_mlops.config import ConfigError, strict_dataclass
from opensora_mlops.data.video_io import write_video

# --------------------------------------------------------------------------------------------------
# Vocabulary (fixed: the evaluation measures prompt adherence against these exact values)
# --------------------------------------------------------------------------------------------------

#: Shape colours: saturated and far apart in hue, all bright (V ≥ 200) so they stand out from every
#: background. RGB.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (40, 210, 60),
    "blue": (40, 90, 255),
    "yellow": (240, 220, 30),
    "magenta": (225, 40, 225),
    "cyan": (30, 220, 230),
    "white": (245, 245, 245),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

#: Direction name → unit motion (dx, dy) in image coordinates (y grows downwards).
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}

#: Speed name → pixels per frame as a fraction of the frame size along the motion (width for
#: left/right, height for up/down). Sized for what training sees: the embedded stage-1 sample is 8
#: frames spread over 16 source frames (frame_interval 2), whose first and last frames are 15 apart,
#: so "slowly" moves the shape 16.5 % of the frame across one sample and "quickly" 39 % (5.6 % per
#: sampled frame, well under the shape's own size, so the motion never aliases). The 1.1 values were
#: 0.004 / 0.016: 3 % / 13 % over such a sample, too little to learn a direction from.
SPEEDS: dict[str, float] = {
    "slowly": 0.011,
    "quickly": 0.026,
}

#: Background colours: dark or neutral (V ≤ 110, low saturation or deep hue), distinct from every
#: shape colour. RGB.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "gray": (105, 105, 105),
    "navy": (18, 24, 92),
    "maroon": (92, 20, 24),
}

#: Shape size (side / diameter) as a fraction of the shorter frame side. At least 0.28 so that a
#: shape spans ≥ 5 latent pixels of an 8× downsampling VAE at 144p (40 px of 144): smaller ones come
#: back from the VAE as blobs of the wrong colour.
SHAPE_SIZE_RANGE = (0.28, 0.38)

#: Joins the shot captions of a multi-shot video into the video-level caption of the raw table.
VIDEO_CAPTION_SEPARATOR = "; then "

KINDS: tuple[str, ...] = (
    "good",
    "static",
    "text",
    "dark",
    "blurred",
    "image",
    "zero_bytes",
    "truncated",
    "not_video",
)
#: Kinds that are deliberately broken files (no decodable frames).
BROKEN_KINDS = frozenset({"zero_bytes", "truncated", "not_video"})
#: Kinds with decodable frames that later quality filters should reject.
DEFECT_KINDS = frozenset({"static", "text", "dark", "blurred"})

GROUND_TRUTH_FILE = "ground_truth.json"


@dataclass(frozen=True)
class ShotSpec:
    """What a shot shows, exactly what its caption says.

    ``direction`` and ``speed`` are both None for a still shot (static clips, still images).
    """

    colour: str
    shape: str
    background: str
    direction: str | None = None
    speed: str | None = None

    def __post_init__(self) -> None:
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; known: {sorted(COLOURS)}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; known: {list(SHAPES)}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; known: {sorted(BACKGROUNDS)}")
        if (self.direction is None) != (self.speed is None):
            raise ValueError("direction and speed must both be given (moving) or both be None (still)")
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {self.direction!r}; known: {list(DIRECTIONS)}")
        if self.speed is not None and self.speed not in SPEEDS:
            raise ValueError(f"unknown speed {self.speed!r}; known: {list(SPEEDS)}")

    @property
    def moving(self) -> bool:
        return self.direction is not None


def caption_for(shot: ShotSpec) -> str:
    """The caption of a shot, e.g. "a red circle moving left quickly on a gray background"."""
    if shot.moving:
        return f"a {shot.colour} {shot.shape} moving {shot.direction} {shot.speed} on a {shot.background} background"
    return f"a {shot.colour} {shot.shape} on a {shot.background} background"


def _alternation(names) -> str:
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


_CAPTION_RE = re.compile(
    rf"^\s*an?\s+(?P<colour>{_alternation(COLOURS)})\s+(?P<shape>{_alternation(SHAPES)})"
    rf"(?:\s+moving\s+(?P<direction>{_alternation(DIRECTIONS)})\s+(?P<speed>{_alternation(SPEEDS)}))?"
    rf"\s+on\s+an?\s+(?P<background>{_alternation(BACKGROUNDS)})\s+background\s*\.?\s*$",
    re.IGNORECASE,
)


def parse_caption(text: str) -> ShotSpec | None:
    """Inverse of :func:`caption_for` (case and a trailing full stop tolerated); None if it doesn't fit."""
    if not isinstance(text, str):
        return None
    match = _CAPTION_RE.match(text)
    if match is None:
        return None
    groups = {k: (v.lower() if v is not None else None) for k, v in match.groupdict().items()}
    return ShotSpec(**groups)


def video_caption(shots: list[ShotSpec]) -> str:
    """Video-level caption: the shot captions in order, joined by :data:`VIDEO_CAPTION_SEPARATOR`."""
    return VIDEO_CAPTION_SEPARATOR.join(caption_for(s) for s in shots)


def parse_video_caption(text: str) -> list[ShotSpec] | None:
    """Inverse of :func:`video_caption`; None if any part does not parse."""
    if not isinstance(text, str):
        return None
    specs = [parse_caption(part.strip()) for part in re.split(r";\s*then\s+", text)]
    return None if any(s is None for s in specs) else specs  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticConfig:
    """Corpus recipe (``parameters_ingestion.yml`` → ``ingestion.synthetic``).

    ``num_single_shot`` single-shot clips (``clip_NNN.mp4``) cycle through ``single_shot_sizes`` (list a
    size several times to make it more common) and ``fps_choices``, last ``single_shot_duration_seconds``
    [min, max] and have stratified attributes. The default here is 0 so that library callers get a
    small corpus; the project's default (``parameters_ingestion.yml``) is 200.

    ``num_videos`` good multi-shot videos (``video_NNN.mp4``) are drawn from ``sizes`` (H, W),
    ``fps_choices`` and ``duration_seconds`` [min, max]; the last ``num_large`` of them use
    ``large_sizes`` and ``large_duration_seconds`` instead (a 720p-class one, kept short so the embedded
    default stays fast). ``defects`` counts the deliberately bad files per kind; ``num_images`` still
    images alternate between JPEG and PNG.

    The single-shot clips draw from their own random stream, so adding or removing them leaves the
    multi-shot videos, defects and images of a seed as they were.
    """

    seed: int = 0
    num_single_shot: int = 0
    single_shot_sizes: tuple[tuple[int, int], ...] = ((144, 256), (144, 256), (256, 144), (160, 212), (212, 160))
    single_shot_duration_seconds: tuple[float, float] = (2.0, 3.0)
    num_videos: int = 8
    sizes: tuple[tuple[int, int], ...] = (
        (144, 256),
        (256, 144),
        (144, 192),
        (192, 144),
        (160, 160),
        (240, 426),
        (426, 240),
        (240, 320),
    )
    fps_choices: tuple[float, ...] = (24.0, 25.0, 30.0)
    duration_seconds: tuple[float, float] = (2.0, 8.0)
    shots_per_video: tuple[int, int] = (2, 6)
    min_shot_seconds: float = 1.0
    num_large: int = 1
    large_sizes: tuple[tuple[int, int], ...] = ((720, 1280),)
    large_duration_seconds: tuple[float, float] = (2.0, 2.0)
    defect_duration_seconds: tuple[float, float] = (2.0, 3.0)
    defects: Mapping[str, int] = field(
        default_factory=lambda: {
            "static": 1,
            "text": 1,
            "dark": 1,
            "blurred": 1,
            "zero_bytes": 1,
            "truncated": 1,
            "not_video": 1,
        }
    )
    num_images: int = 2
    crf: int = 18

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(tuple(int(v) for v in s) for s in self.sizes))
        object.__setattr__(self, "large_sizes", tuple(tuple(int(v) for v in s) for s in self.large_sizes))
        object.__setattr__(self, "single_shot_sizes",
                           tuple(tuple(int(v) for v in s) for s in self.single_shot_sizes))
        object.__setattr__(self, "fps_choices", tuple(float(f) for f in self.fps_choices))
        for name in ("duration_seconds", "large_duration_seconds", "defect_duration_seconds",
                     "single_shot_duration_seconds"):
            lo, hi = (float(v) for v in getattr(self, name))
            if not 0 < lo <= hi:
                raise ConfigError(f"ingestion.synthetic.{name} must be [min, max] with 0 < min <= max, got {[lo, hi]}")
            object.__setattr__(self, name, (lo, hi))
        lo, hi = (int(v) for v in self.shots_per_video)
        if not 1 <= lo <= hi:
            raise ConfigError(f"ingestion.synthetic.shots_per_video must be [min, max] with 1 <= min <= max, got {[lo, hi]}")
        object.__setattr__(self, "shots_per_video", (lo, hi))
        if any(len(s) != 2 for s in (*self.sizes, *self.large_sizes, *self.single_shot_sizes)):
            raise ConfigError("ingestion.synthetic sizes must be [H, W] pairs")
        for h, w in (*self.sizes, *self.large_sizes, *self.single_shot_sizes):
            if not (16 <= h <= 4096 and 16 <= w <= 4096):
                raise ConfigError(f"ingestion.synthetic size {h}x{w} outside 16..4096 px")
        if not self.sizes or (self.num_large and not self.large_sizes):
            raise ConfigError("ingestion.synthetic.sizes / large_sizes must not be empty")
        if self.num_single_shot and not self.single_shot_sizes:
            raise ConfigError("ingestion.synthetic.single_shot_sizes must not be empty when num_single_shot > 0")

        for fps in self.fps_choices:
            if not 0 < fps <= 240:
                raise ConfigError(f"ingestion.synthetic.fps_choices: {fps} outside (0, 240]")
        if min(self.num_videos, self.num_large, self.num_images, self.num_single_shot) < 0:
            raise ConfigError("ingestion.synthetic counts must be >= 0")
        if self.num_large > self.num_videos:
            raise ConfigError(f"ingestion.synthetic.num_large ({self.num_large}) > num_videos ({self.num_videos})")
        if self.min_shot_seconds <= 0:
            raise ConfigError(f"ingestion.synthetic.min_shot_seconds must be > 0, got {self.min_shot_seconds}")
        allowed_defects = set(KINDS) - {"good", "image"}
        unknown = sorted(set(self.defects) - allowed_defects)
        if unknown:
            raise ConfigError(
                f"unknown defect kind(s) in ingestion.synthetic.defects: {unknown}; allowed: {sorted(allowed_defects)}"
            )
        if any(int(n) < 0 for n in self.defects.values()):
            raise ConfigError("ingestion.synthetic.defects counts must be >= 0")
        object.__setattr__(self, "defects", {k: int(v) for k, v in self.defects.items()})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> SyntheticConfig:
        return strict_dataclass(cls, dict(values or {}), "ingestion.synthetic")


# --------------------------------------------------------------------------------------------------
# Ground truth records
# --------------------------------------------------------------------------------------------------


@dataclass
class ShotTruth:
    frame_start: int  # inclusive
    frame_end: int  # exclusive
    caption: str
    spec: ShotSpec
    shape_size: float  # side/diameter in pixels
    start_xy: tuple[float, float]  # shape centre at the first frame of the shot


@dataclass
class VideoTruth:
    path: str  # file name relative to the corpus folder
    kind: str
    fps: float | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int = 0
    shots: list[ShotTruth] = field(default_factory=list)

    @property
    def cut_frames(self) -> list[int]:
        """Frame index where each new shot starts (the first frame after a cut)."""
        return [s.frame_start for s in self.shots[1:]]

    @property
    def duration(self) -> float | None:
        return self.num_frames / self.fps if self.fps else None

    @property
    def caption(self) -> str | None:
        return video_caption([s.spec for s in self.shots]) if self.shots else None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "fps": self.fps,
            "height": self.height,
            "width": self.width,
            "num_frames": self.num_frames,
            "duration": self.duration,
            "cut_frames": self.cut_frames,
            "caption": self.caption,
            "shots": [
                {
                    "frame_start": s.frame_start,
                    "frame_end": s.frame_end,
                    "caption": s.caption,
                    "spec": asdict(s.spec),
                    "shape_size": s.shape_size,
                    "start_xy": list(s.start_xy),
                }
                for s in self.shots
            ],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> VideoTruth:
        shots = [
            ShotTruth(
                frame_start=int(s["frame_start"]),
                frame_end=int(s["frame_end"]),
                caption=s["caption"],
                spec=ShotSpec(**s["spec"]),
                shape_size=float(s["shape_size"]),
                start_xy=tuple(s["start_xy"]),
            )
            for s in d["shots"]
        ]
        return cls(
            path=d["path"],
            kind=d["kind"],
            fps=d["fps"],
            height=d["height"],
            width=d["width"],
            num_frames=int(d["num_frames"]),
            shots=shots,
        )


GROUND_TRUTH_COLUMNS = [
    "path",
    "kind",
    "fps",
    "height",
    "width",
    "num_frames",
    "duration",
    "shot_index",
    "frame_start",
    "frame_end",
    "caption",
    "colour",
    "shape",
    "background",
    "direction",
    "speed",
]


def ground_truth_table(videos: list[VideoTruth], root: str | Path) -> pd.DataFrame:
    """One row per shot (files without frames: one row, ``shot_index`` -1); ``path`` absolute.

    ``frame_start`` inclusive, ``frame_end`` exclusive; a video's cut frames are the ``frame_start`` of
    its shots with ``shot_index`` ≥ 1.
    """
    root = Path(root).resolve()
    rows = []
    for v in videos:
        base = {
            "path": str(root / v.path),
            "kind": v.kind,
            "fps": float(v.fps) if v.fps else np.nan,
            "height": v.height if v.height is not None else -1,
            "width": v.width if v.width is not None else -1,
            "num_frames": v.num_frames,
            "duration": v.duration if v.duration is not None else np.nan,
        }
        if not v.shots:
            rows.append(base | {"shot_index": -1, "frame_start": -1, "frame_end": -1, "caption": None}
                        | {k: None for k in ("colour", "shape", "background", "direction", "speed")})
        for i, s in enumerate(v.shots):
            rows.append(
                base
                | {"shot_index": i, "frame_start": s.frame_start, "frame_end": s.frame_end, "caption": s.caption}
                | asdict(s.spec)
            )
    table = pd.DataFrame(rows, columns=GROUND_TRUTH_COLUMNS)
    for col in ("height", "width", "num_frames", "shot_index", "frame_start", "frame_end"):
        table[col] = table[col].astype("int64")
    return table


def load_ground_truth(root: str | Path) -> list[VideoTruth]:
    """Read ``ground_truth.json`` written by :func:`generate_corpus` in ``root``."""
    path = Path(root) / GROUND_TRUTH_FILE
    with path.open(encoding="utf-8") as fh:
        data = json.load(fh)
    return [VideoTruth.from_json(v) for v in data["videos"]]


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------

_SUBPIXEL_BITS = 4  # cv2 drawing with fractional coordinates (antialiased edges)
_SUBPIXEL = 1 << _SUBPIXEL_BITS


def _background(name: str, height: int, width: int) -> np.ndarray:
    """Flat background colour with a faint grid (a few percent brighter) every ~1/6 of the short side."""
    base = np.array(BACKGROUNDS[name], dtype=np.int16)
    frame = np.empty((height, width, 3), dtype=np.int16)
    frame[:] = base
    step = max(8, min(height, width) // 6)
    line = np.clip(base + 22, 0, 255)
    frame[::step, :, :] = line
    frame[:, ::step, :] = line
    return frame.astype(np.uint8)


def _draw_shape(frame: np.ndarray, shape: str, colour: tuple[int, int, int], cx: float, cy: float, size: float) -> None:
    half = size / 2.0
    if shape == "circle":
        centre = (int(round(cx * _SUBPIXEL)), int(round(cy * _SUBPIXEL)))
        cv2.circle(frame, centre, int(round(half * _SUBPIXEL)), colour, -1, cv2.LINE_AA, _SUBPIXEL_BITS)
        return
    if shape == "square":
        pts = np.array([[cx - half, cy - half], [cx + half, cy - half], [cx + half, cy + half], [cx - half, cy + half]])
    elif shape == "triangle":  # equilateral-ish, pointing up, inscribed in the size×size box
        pts = np.array([[cx, cy - half], [cx + half, cy + half], [cx - half, cy + half]])
    else:
        raise ValueError(f"unknown shape {shape!r}")
    cv2.fillPoly(frame, [np.round(pts * _SUBPIXEL).astype(np.int32)], colour, cv2.LINE_AA, _SUBPIXEL_BITS)


def render_shot(
    spec: ShotSpec, height: int, width: int, num_frames: int, shape_size: float, start_xy: tuple[float, float]
) -> np.ndarray:
    """Frames (T, H, W, 3 uint8) of one shot.

    The shape moves ``SPEEDS[speed]`` × frame size per frame; when it leaves the frame it re-enters on the
    opposite side (wrap-around), so the direction in the caption holds for the whole shot.
    """
    background = _background(spec.background, height, width)
    colour = COLOURS[spec.colour]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    x0, y0 = start_xy
    dx, dy = DIRECTIONS[spec.direction] if spec.moving else (0, 0)
    speed = SPEEDS[spec.speed] if spec.moving else 0.0
    # wrap period: the frame plus one shape size, so the shape is fully out before it comes back
    period_x, period_y = width + shape_size, height + shape_size
    for t in range(num_frames):
        frame = background.copy()
        x = (x0 + dx * speed * width * t + shape_size / 2) % period_x - shape_size / 2
        y = (y0 + dy * speed * height * t + shape_size / 2) % period_y - shape_size / 2
        # the shape and, near an edge, its copy entering from the opposite side (cv2 clips off-frame parts)
        for ox in (-period_x, 0.0, period_x) if dx else (0.0,):
            for oy in (-period_y, 0.0, period_y) if dy else (0.0,):
                _draw_shape(frame, spec.shape, colour, x + ox, y + oy, shape_size)
        frames[t] = frame
    return frames


def _apply_text(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Burn large caption-like text into every frame (what OCR filters must catch)."""
    words = ["BREAKING NEWS", "SALE 50% OFF", "SUBSCRIBE NOW", "LIVE 24/7"]
    text = words[int(rng.integers(len(words)))]
    _, h, w, _ = frames.shape
    out = frames.copy()
    scale = max(0.4, w / 420)
    thickness = max(1, int(round(scale * 2)))
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    org = (max(2, (w - tw) // 2), int(h * 0.85))
    org2 = (max(2, (w - tw) // 2), int(h * 0.15) + th)
    for frame in out:
        for o in (org, org2):
            cv2.putText(frame, text, o, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
            cv2.putText(frame, text, o, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def _apply_dark(frames: np.ndarray) -> np.ndarray:
    """Underexposed: every pixel at 7% of its value (mean luma well under 10/255)."""
    return (frames.astype(np.float32) * 0.07).round().astype(np.uint8)


def _apply_blur(frames: np.ndarray) -> np.ndarray:
    """Heavily defocused: Gaussian blur with sigma 4% of the short side (at least 3 px)."""
    _, h, w, _ = frames.shape
    sigma = max(3.0, 0.04 * min(h, w))
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames])


# --------------------------------------------------------------------------------------------------
# Corpus generation
# --------------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _shot_specs(rng: np.random.Generator, n: int, moving: bool = True) -> list[ShotSpec]:
    """``n`` shots; consecutive ones differ in background and in shape colour (strong cuts)."""
    specs: list[ShotSpec] = []
    colours, backgrounds = list(COLOURS), list(BACKGROUNDS)
    for _ in range(n):
        prev = specs[-1] if specs else None
        colour = _pick(rng, [c for c in colours if prev is None or c != prev.colour])
        background = _pick(rng, [b for b in backgrounds if prev is None or b != prev.background])
        shape = _pick(rng, list(SHAPES))
        if moving:
            specs.append(ShotSpec(colour, shape, background, _pick(rng, list(DIRECTIONS)), _pick(rng, list(SPEEDS))))
        else:
            specs.append(ShotSpec(colour, shape, background))
    return specs


def _balanced_cycle(rng: np.random.Generator, options: list, n: int) -> list:
    """``n`` draws from ``options``: back-to-back random permutations of the whole list, cut at ``n``.

    Stratified rather than independent draws: every option occurs ``n // len(options)`` or one more
    times, so a corpus of a few hundred clips has no value (or combination) that chance left out.
    """
    if not options:
        raise ValueError("no options to draw from")
    out: list = []
    while len(out) < n:
        out.extend(options[int(i)] for i in rng.permutation(len(options)))
    return out[:n]


def single_shot_specs(rng: np.random.Generator, n: int) -> list[ShotSpec]:
    """``n`` moving shots with stratified attributes.

    The appearance (colour, shape, background: 84 combinations) and the motion (direction, speed: 8)
    are each drawn as a :func:`_balanced_cycle` of all their combinations, independently, so every
    appearance combination occurs ⌊n/84⌋ or ⌈n/84⌉ times, every motion ⌊n/8⌋ or ⌈n/8⌉ times, and every
    single attribute value about equally often.
    """
    looks = [(c, sh, bg) for c in COLOURS for sh in SHAPES for bg in BACKGROUNDS]
    motions = [(d, sp) for d in DIRECTIONS for sp in SPEEDS]
    return [ShotSpec(c, sh, bg, d, sp)
            for (c, sh, bg), (d, sp) in zip(_balanced_cycle(rng, looks, n), _balanced_cycle(rng, motions, n))]


def _split_frames(rng: np.random.Generator, total: int, n: int, min_len: int) -> list[tuple[int, int]]:
    """Random partition of ``total`` frames into ``n`` shots of at least ``min_len`` frames each."""
    extra = total - n * min_len
    weights = rng.dirichlet(np.ones(n))
    lengths = [min_len + int(np.floor(w * extra)) for w in weights]
    lengths[-1] += total - sum(lengths)
    bounds, start = [], 0
    for length in lengths:
        bounds.append((start, start + length))
        start += length
    return bounds


def _layout(rng: np.random.Generator, spec: ShotSpec, height: int, width: int) -> tuple[float, tuple[float, float]]:
    size = float(rng.uniform(*SHAPE_SIZE_RANGE) * min(height, width))
    margin = size / 2 + 1
    x = float(rng.uniform(margin, width - margin))
    y = float(rng.uniform(margin, height - margin))
    # start on the side the shape moves away from, so it crosses the frame before wrapping
    if spec.direction == "left":
        x = float(rng.uniform(0.6, 0.8) * width)
    elif spec.direction == "right":
        x = float(rng.uniform(0.2, 0.4) * width)
    elif spec.direction == "up":
        y = float(rng.uniform(0.6, 0.8) * height)
    elif spec.direction == "down":
        y = float(rng.uniform(0.2, 0.4) * height)
    return size, (x, y)


def _render_video(
    rng: np.random.Generator, height: int, width: int, fps: float, duration: float, n_shots: int,
    min_shot_frames: int, moving: bool = True,
) -> tuple[np.ndarray, list[ShotTruth]]:
    total = max(1, int(round(duration * fps)))
    n_shots = max(1, min(n_shots, total // max(1, min_shot_frames)))
    specs = _shot_specs(rng, n_shots, moving=moving)
    bounds = _split_frames(rng, total, n_shots, min(min_shot_frames, total // n_shots))
    parts, shots = [], []
    for spec, (start, end) in zip(specs, bounds):
        size, start_xy = _layout(rng, spec, height, width)
        parts.append(render_shot(spec, height, width, end - start, size, start_xy))
        shots.append(ShotTruth(start, end, caption_for(spec), spec, size, start_xy))
    return np.concatenate(parts), shots


def _truncate(path: Path, keep_fraction: float = 0.4) -> None:
    """Cut an MP4 short: PyAV writes the index (moov atom) last, so the rest is unreadable."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep_fraction))])


def _existing_corpus(out_dir: Path, cfg: SyntheticConfig) -> tuple[list[VideoTruth] | None, set[str]]:
    """(the corpus already in ``out_dir`` if it was made from ``cfg`` and is complete, else None; its files)."""
    path = out_dir / GROUND_TRUTH_FILE
    if not path.exists():
        return None, set()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        videos = [VideoTruth.from_json(v) for v in data["videos"]]
    except (ValueError, KeyError, TypeError):  # an unreadable old ground truth: nothing to reuse or clean
        return None, set()
    names = {v.path for v in videos}
    complete = data.get("config") == _config_json(cfg) and all((out_dir / n).is_file() for n in names)
    return (videos if complete else None), names


def generate_corpus(out_dir: str | Path, config: SyntheticConfig | Mapping[str, Any] | None = None,
                    progress: bool = True, reuse: bool = True) -> list[VideoTruth]:
    """Write the synthetic corpus into ``out_dir`` and its ground truth to ``out_dir/ground_truth.json``.

    With ``reuse`` an existing corpus made from the same config (all its files present) is kept as is:
    H.264 encoding is not bit-reproducible across runs, and rewriting identical content would make DVC
    see new data and re-run everything downstream. Files a previous generation left in ``out_dir``
    (named in its ground truth) and no longer produced are removed, so a listing of the folder always
    matches the ground truth.
    """
    cfg = config if isinstance(config, SyntheticConfig) else SyntheticConfig.from_dict(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    existing, previous = _existing_corpus(out_dir, cfg)
    if reuse and existing is not None:
        return existing

    rng = np.random.default_rng(cfg.seed)

    def min_shot_frames_for(fps: float) -> int:
        return max(1, int(np.ceil(cfg.min_shot_seconds * fps)))

    # the plan first (cheap, deterministic), then the rendering with a progress bar
    plan: list[tuple[str, dict[str, Any]]] = []
    for i in range(cfg.num_videos):
        large = i >= cfg.num_videos - cfg.num_large
        height, width = _pick(rng, cfg.large_sizes if large else cfg.sizes)
        lo, hi = cfg.large_duration_seconds if large else cfg.duration_seconds
        plan.append(("good", {"height": height, "width": width, "fps": _pick(rng, cfg.fps_choices),
                              "duration": float(rng.uniform(lo, hi)),
                              "n_shots": int(rng.integers(cfg.shots_per_video[0], cfg.shots_per_video[1] + 1))}))
    for kind in ("static", "text", "dark", "blurred", "truncated"):
        for _ in range(cfg.defects.get(kind, 0)):
            height, width = _pick(rng, cfg.sizes)
            plan.append((kind, {"height": height, "width": width, "fps": _pick(rng, cfg.fps_choices),
                                "duration": float(rng.uniform(*cfg.defect_duration_seconds)),
                                "n_shots": 2 if kind == "text" else 1}))
    for kind in ("zero_bytes", "not_video"):
        plan.extend((kind, {}) for _ in range(cfg.defects.get(kind, 0)))
    for _ in range(cfg.num_images):
        height, width = _pick(rng, cfg.sizes)
        plan.append(("image", {"height": height, "width": width}))

    # single-shot clips: their own stream (seed, 1), so they leave the files above unchanged
    single_rng = np.random.default_rng([cfg.seed, 1])
    n_single = cfg.num_single_shot
    for spec, (height, width), fps in zip(single_shot_specs(single_rng, n_single),
                                          _balanced_cycle(single_rng, list(cfg.single_shot_sizes), n_single),
                                          _balanced_cycle(single_rng, list(cfg.fps_choices), n_single)):
        plan.append(("single", {"height": height, "width": width, "fps": fps, "spec": spec,
                                "duration": float(single_rng.uniform(*cfg.single_shot_duration_seconds))}))

    videos: list[VideoTruth] = []
    n_video, n_image, n_clip = 0, 0, 0
    for kind, p in tqdm(plan, desc="synthetic corpus", unit="file", disable=not progress):
        if kind == "single":
            name = f"clip_{n_clip:03d}.mp4"
            n_clip += 1
            total = max(1, int(round(p["duration"] * p["fps"])))
            size, xy = _layout(single_rng, p["spec"], p["height"], p["width"])
            frames = render_shot(p["spec"], p["height"], p["width"], total, size, xy)
            write_video(out_dir / name, frames, p["fps"], crf=cfg.crf)
            videos.append(VideoTruth(name, "good", p["fps"], p["height"], p["width"], total,
                                     [ShotTruth(0, total, caption_for(p["spec"]), p["spec"], size, xy)]))
            continue
        if kind == "image":
            ext = ".jpg" if n_image % 2 == 0 else ".png"
            name = f"image_{n_image:03d}{ext}"
            n_image += 1
            spec = _shot_specs(rng, 1, moving=False)[0]
            size, xy = _layout(rng, spec, p["height"], p["width"])
            frame = render_shot(spec, p["height"], p["width"], 1, size, xy)[0]
            Image.fromarray(frame).save(out_dir / name, **({"quality": 95} if ext == ".jpg" else {}))
            videos.append(VideoTruth(name, kind, None, p["height"], p["width"], 1,
                                     [ShotTruth(0, 1, caption_for(spec), spec, size, xy)]))
            continue
        name = f"video_{n_video:03d}.mp4"
        n_video += 1
        path = out_dir / name
        if kind == "zero_bytes":
            path.write_bytes(b"")
            videos.append(VideoTruth(name, kind))
            continue
        if kind == "not_video":
            path.write_text("This is a text file with a video extension, not a video.\n", encoding="utf-8")
            videos.append(VideoTruth(name, kind))
            continue
        fps = p["fps"]
        frames, shots = _render_video(rng, p["height"], p["width"], fps, p["duration"], p["n_shots"],
                                      min_shot_frames_for(fps), moving=kind != "static")
        if kind == "text":
            frames = _apply_text(frames, rng)
        elif kind == "dark":
            frames = _apply_dark(frames)
        elif kind == "blurred":
            frames = _apply_blur(frames)
        write_video(path, frames, fps, crf=cfg.crf)
        if kind == "truncated":
            _truncate(path)
            videos.append(VideoTruth(name, kind, fps, p["height"], p["width"], 0))
            continue
        videos.append(VideoTruth(name, kind, fps, p["height"], p["width"], len(frames), shots))

    produced = {v.path for v in videos}
    for stale in sorted(previous - produced):
        (out_dir / stale).unlink(missing_ok=True)
    truth = {
        "format": "opensora-mlops synthetic corpus ground truth v1",
        "config": _config_json(cfg),
        "vocabulary": {
            "colours": {k: list(v) for k, v in COLOURS.items()},
            "shapes": list(SHAPES),
            "directions": list(DIRECTIONS),
            "speeds": SPEEDS,
            "backgrounds": {k: list(v) for k, v in BACKGROUNDS.items()},
        },
        "videos": [v.to_json() for v in videos],
    }
    with (out_dir / GROUND_TRUTH_FILE).open("w", encoding="utf-8") as fh:
        json.dump(truth, fh, indent=1)
    return videos


#: Bumped whenever the rendering changes for the same config (speeds, shape sizes, layout), so that an
#: existing corpus made by the old renderer is not reused as if it were current.
RENDER_VERSION = 2


def _config_json(cfg: SyntheticConfig) -> dict[str, Any]:
    """The recipe as stored in the ground truth: the config plus what the renderer draws with."""
    out = asdict(cfg)
    out["defects"] = dict(cfg.defects)
    out["render"] = {"version": RENDER_VERSION, "speeds": SPEEDS, "shape_size_range": list(SHAPE_SIZE_RANGE)}
    return json.loads(json.dumps(out))
