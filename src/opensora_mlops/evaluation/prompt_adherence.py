"""Prompt adherence on the synthetic corpus, measured with classical computer vision.

A synthetic caption ("a red circle moving left quickly on a gray background") says exactly what a clip
must show. :func:`analyse_clip` recovers background, colour, shape and motion direction from the frames
alone, frame by frame, and :func:`adherence_scores` compares them with
:func:`opensora_mlops.curation.synthetic.parse_caption`. The checks are built so that noise, a flat
clip or a flickering one cannot pass by luck:

* **background** — per frame, the median colour; the frame *has* a background when at least
  ``1 - max_area`` of its pixels lie within ``fg_threshold`` (RGB distance) of it (uniform noise: ~5 %),
  and that background is the nearest vocabulary background when it lies within
  ``background_tolerance`` of one (else "off-palette", e.g. the orange or pink a diverging model
  paints). The clip's background is the most common frame background; it is **stable** when it is the
  background of at least ``min_background_fraction`` of the frames and the per-frame background colours
  spread (mean over RGB of the standard deviation over frames) by at most ``max_background_spread``.
  The background attribute is right only when it is the caption's *and* stable;
* **subject** — pixels farther than ``fg_threshold`` from the frame's background colour. A frame holds a
  single subject when they cover ``min_area``..``max_area`` of the frame and their two largest blobs
  (a shape wrapping around an edge is two blobs) hold at least ``min_blob_share`` of them (speckle does
  not). Colour, shape and direction count as right only when a subject is found in at least
  ``min_subject_fraction`` of the frames;
* **colour** — per frame the mean RGB of the eroded subject, classified to the nearest vocabulary
  colour; right when the caption's colour is found in at least ``min_subject_fraction`` of all frames;
* **shape** — the largest blob, on frames where it does not touch the border: extent (area / bounding
  box) and circularity 4πA/P² matched to each shape's prototype, the ``cv2.approxPolyDP`` vertex count
  deciding close calls; right when the caption's shape wins the vote with at least half of the votes
  (frames cut by the border vote only when there are no others);
* **direction** — the subject centroid trajectory: per-frame steps, dropping jumps larger than a third
  of the frame (the corpus wraps shapes around the edges), summed; the vocabulary direction with the
  largest projection, or "still" under ``min_motion`` of the frame size. A motion counts only when the
  track is coherent: at least ``min_track_consistency`` of the steps move that way (a blob jumping
  about at random sums to *some* direction, but not step after step).

``adherence`` is the mean of the four attribute checks, ``overall`` is 1 only when all four are right.
:data:`CHANCE` gives what guessing scores: 1/|vocabulary| per attribute (directions count "still"), the
mean of those for ``adherence`` and their product for ``overall``.

Seen and held-out prompts: :func:`combination_of` reduces a caption to its (colour, shape, background,
direction) combination; :func:`split_of` tags a caption "seen" when that combination occurs among the
training captions, "held_out" otherwise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import pandas as pd

from opensora_mlops.curation.synthetic import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, parse_caption
from opensora_mlops.evaluation.metrics import check_frames
from opensora_mlops.evaluation.statistics import cluster_bootstrap

STILL = "still"
SEEN = "seen"
HELD_OUT = "held_out"

#: The four attributes a caption names, each checked by :func:`adherence_scores` (column ``<name>_ok``).
ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "direction", "background")
#: What :func:`summarise` reports per group (column of the score table for each).
SUMMARY_COLUMNS: dict[str, str] = {
    "colour": "colour_ok",
    "shape": "shape_ok",
    "direction": "direction_ok",
    "background": "background_ok",
    "background_stable": "background_stable",
    "adherence": "adherence",
    "overall": "overall",
}

#: The answers each attribute check chooses from (directions: the four motions or still).
VOCABULARY_SIZES: dict[str, int] = {
    "colour": len(COLOURS),
    "shape": len(SHAPES),
    "direction": len(DIRECTIONS) + 1,
    "background": len(BACKGROUNDS),
}
#: Score of a uniform guess: 1/|vocabulary| per attribute, their mean for ``adherence`` (the mean of
#: the four checks) and their product for ``overall`` (all four right). Background stability is not a
#: choice among answers and has no chance level.
CHANCE: dict[str, float] = {name: 1.0 / size for name, size in VOCABULARY_SIZES.items()} | {
    "adherence": float(np.mean([1.0 / s for s in VOCABULARY_SIZES.values()])),
    "overall": float(np.prod([1.0 / s for s in VOCABULARY_SIZES.values()])),
}


@dataclass(frozen=True)
class ClipAnalysis:
    """What the frames show. ``None`` where nothing could be recovered."""

    colour: str | None  # the most common per-frame subject colour
    shape: str | None  # the shape vote's winner
    direction: str | None  # a DIRECTIONS key, "still", or None (fewer than 2 subject frames)
    subject_frames: int  # frames with a usable single subject
    mean_rgb: tuple[float, float, float] | None  # median over frames of the subject's mean RGB
    circularity: float | None
    displacement: tuple[float, float]  # net (dx, dy) in pixels
    num_frames: int = 0
    frame_colours: tuple[str | None, ...] = ()  # per frame; None: no subject
    shape_votes: tuple[tuple[str, int], ...] = ()  # (shape, frames) for each shape that got votes
    background: str | None = None  # the most common per-frame vocabulary background
    frame_backgrounds: tuple[str | None, ...] = ()  # per frame; None: no dominant or off-palette colour
    background_rgb: tuple[float, float, float] | None = None  # median over frames of the background colour
    background_spread: float = float("nan")  # mean over RGB of the per-frame background colour std
    track_consistency: float | None = None  # share of steps along ``direction`` (None: still or no track)

    @property
    def subject_fraction(self) -> float:
        return self.subject_frames / self.num_frames if self.num_frames else 0.0

    @property
    def background_fraction(self) -> float:
        """Fraction of frames whose background is the clip's background."""
        if not self.num_frames or self.background is None:
            return 0.0
        return sum(b == self.background for b in self.frame_backgrounds) / self.num_frames


@dataclass(frozen=True)
class AdherenceScore:
    caption: str
    colour_ok: float
    shape_ok: float
    direction_ok: float
    background_ok: float  # the caption's background, and stable
    background_stable: float
    adherence: float  # mean of the four attribute checks
    overall: float  # 1 when all four are right
    found_colour: str | None
    found_shape: str | None
    found_direction: str | None
    found_background: str | None
    subject_fraction: float
    background_fraction: float
    background_spread: float


#: Prototype (extent, circularity) of each vocabulary shape as the corpus draws it: an axis-aligned
#: square fills its bounding box (extent 1, circularity π/4), a disc fills π/4 of it (circularity 1),
#: an upward triangle half of it (circularity of an isosceles triangle with base = height ≈ 0.6).
SHAPE_PROTOTYPES: dict[str, tuple[float, float]] = {
    "square": (1.0, float(np.pi / 4)),
    "circle": (float(np.pi / 4), 1.0),
    "triangle": (0.5, 0.6),
}


def _classify_shape(
    mask: np.ndarray, min_side: int = 256, allow_border: bool = False
) -> tuple[str | None, float | None, int | None]:
    """Shape of the largest blob in ``mask``: (shape, circularity, polygon vertex count), or Nones if the
    blob is degenerate or, unless ``allow_border``, touches the frame border (its outline is then
    partly the frame's).

    The blob's extent (area / bounding-box area) and circularity 4πA/P² (on a contour of the mask
    upsampled to ``min_side`` so that small frames give usable outlines) are matched to the nearest
    :data:`SHAPE_PROTOTYPES`; a ``cv2.approxPolyDP`` vertex count of 3 or 4 on the convex hull confirms
    triangle or square when the two features are ambiguous.
    """
    h, w = mask.shape
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count < 2:
        return None, None, None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, bw, bh, area = (int(v) for v in stats[largest])
    if area < 9:
        return None, None, None
    if not allow_border and (x == 0 or y == 0 or x + bw >= w or y + bh >= h):
        return None, None, None
    blob = labels == largest
    extent = area / float(bw * bh)
    scale = max(1.0, min_side / min(h, w))
    if scale > 1.0:
        # a smooth upsampling of the blob, re-thresholded, gives an outline with usable corners
        up = cv2.resize(
            blob.astype(np.float32),
            (int(round(w * scale)), int(round(h * scale))),
            interpolation=cv2.INTER_LINEAR,
        )
        binary = (up > 0.5).astype(np.uint8)
    else:
        binary = blob.astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    perimeter = cv2.arcLength(contour, True)
    if perimeter <= 0:
        return None, None, None
    circularity = float(min(1.0, 4.0 * np.pi * cv2.contourArea(contour) / perimeter**2))
    vertices = len(cv2.approxPolyDP(cv2.convexHull(contour), 0.04 * perimeter, True))
    distances = {
        name: 2.0 * abs(extent - e) + abs(circularity - c) for name, (e, c) in SHAPE_PROTOTYPES.items()
    }
    ranked = sorted(distances, key=distances.get)
    shape = ranked[0]
    # a close call between the top two: the polygon's vertex count decides
    if distances[ranked[1]] - distances[ranked[0]] < 0.1:
        by_vertices = {3: "triangle", 4: "square"}.get(vertices)
        if by_vertices in ranked[:2]:
            shape = by_vertices
    return shape, circularity, vertices


def _nearest(palette: dict[str, tuple[int, int, int]], rgb: np.ndarray) -> tuple[str, float]:
    names = list(palette)
    colours = np.array([palette[n] for n in names], dtype=np.float32)
    distances = np.linalg.norm(colours - np.asarray(rgb, np.float32)[None], axis=1)
    best = int(np.argmin(distances))
    return names[best], float(distances[best])


def _nearest_colour(rgb: np.ndarray) -> str:
    return _nearest(COLOURS, rgb)[0]


def _single_subject(mask: np.ndarray, min_blob_share: float) -> bool:
    """Whether the mask is one subject (its two largest blobs hold ``min_blob_share`` of its pixels)."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count < 2:
        return False
    areas = np.sort(stats[1:, cv2.CC_STAT_AREA])[::-1]
    return float(areas[:2].sum()) >= min_blob_share * float(areas.sum())


def analyse_clip(
    frames: np.ndarray,
    fg_threshold: float = 60.0,
    min_area: float = 0.002,
    max_area: float = 0.4,
    min_motion: float = 0.02,
    min_blob_share: float = 0.7,
    background_tolerance: float = 40.0,
) -> ClipAnalysis:
    """Recover background, subject colour, shape and motion direction from ``frames`` (T×H×W×3 uint8)."""
    frames = check_frames(frames)
    t, h, w, _ = frames.shape
    frame_colours: list[str | None] = []
    colours_rgb: list[np.ndarray] = []
    shapes: list[str] = []
    circularities: list[float] = []
    centroids: list[np.ndarray | None] = []
    border_shapes: list[tuple[str, float]] = []
    frame_backgrounds: list[str | None] = []
    background_rgbs: list[np.ndarray] = []
    kernel = np.ones((3, 3), np.uint8)
    for frame in frames:
        data = frame.astype(np.float32)
        background_rgb = np.median(data.reshape(-1, 3), axis=0)
        mask = np.linalg.norm(data - background_rgb, axis=-1) > fg_threshold
        fraction = float(mask.mean())
        if fraction <= max_area:  # a dominant flat colour: this frame has a background
            background_rgbs.append(background_rgb)
            name, distance = _nearest(BACKGROUNDS, background_rgb)
            frame_backgrounds.append(name if distance <= background_tolerance else None)
        else:
            frame_backgrounds.append(None)
        if not (min_area <= fraction <= max_area and _single_subject(mask, min_blob_share)):
            centroids.append(None)
            frame_colours.append(None)
            continue
        core = cv2.erode(mask.astype(np.uint8), kernel).astype(bool)
        rgb = data[core if core.any() else mask].mean(axis=0)
        colours_rgb.append(rgb)
        frame_colours.append(_nearest_colour(rgb))
        ys, xs = np.nonzero(mask)
        centroids.append(np.array([xs.mean(), ys.mean()]))
        shape, circ, _ = _classify_shape(mask)
        if shape is not None:
            shapes.append(shape)
            circularities.append(circ)
        elif not shapes:
            clipped_shape, clipped_circ, _ = _classify_shape(mask, allow_border=True)
            if clipped_shape is not None:
                border_shapes.append((clipped_shape, clipped_circ))

    named = [b for b in frame_backgrounds if b is not None]
    background = Counter(named).most_common(1)[0][0] if named else None
    background_rgb = tuple(float(v) for v in np.median(np.stack(background_rgbs), axis=0)) if background_rgbs else None
    spread = float(np.stack(background_rgbs).std(axis=0).mean()) if background_rgbs else float("nan")
    background_fields = {
        "num_frames": t,
        "frame_colours": tuple(frame_colours),
        "background": background,
        "frame_backgrounds": tuple(frame_backgrounds),
        "background_rgb": background_rgb,
        "background_spread": spread,
    }
    subject_frames = sum(c is not None for c in centroids)
    if subject_frames == 0:
        return ClipAnalysis(None, None, None, 0, None, None, (0.0, 0.0), **background_fields)

    if not shapes and border_shapes:
        # the subject touches the border in every frame: its clipped outline is the best evidence left
        shapes = [s for s, _ in border_shapes]
        circularities = [c for _, c in border_shapes]
    mean_rgb = np.median(np.stack(colours_rgb), axis=0)
    colour = Counter(c for c in frame_colours if c is not None).most_common(1)[0][0]
    votes = Counter(shapes).most_common()
    shape = votes[0][0] if votes else None
    circularity = float(np.median(circularities)) if circularities else None

    # net displacement from consecutive steps, ignoring wrap-around jumps and frames with no subject
    steps = []
    for prev, nxt in zip(centroids[:-1], centroids[1:]):
        if prev is None or nxt is None:
            continue
        step = nxt - prev
        if abs(step[0]) < w / 3 and abs(step[1]) < h / 3:
            steps.append(step)
    net = np.sum(steps, axis=0) if steps else np.zeros(2)
    direction: str | None
    consistency: float | None = None
    if subject_frames < 2:
        direction = None
    elif abs(net[0]) < min_motion * w and abs(net[1]) < min_motion * h:
        direction = STILL
    else:
        # normalise by the frame size so "quickly left" and "quickly up" compare alike
        normalised = net / np.array([w, h], dtype=np.float64)
        direction = max(DIRECTIONS, key=lambda d: float(np.dot(normalised, DIRECTIONS[d])))
        along = [float(np.dot(step, DIRECTIONS[direction])) > 0 for step in steps]
        consistency = float(np.mean(along)) if along else None
    return ClipAnalysis(
        colour=colour,
        shape=shape,
        direction=direction,
        subject_frames=subject_frames,
        mean_rgb=tuple(float(v) for v in mean_rgb),
        circularity=circularity,
        displacement=(float(net[0]), float(net[1])),
        shape_votes=tuple(votes),
        track_consistency=consistency,
        **background_fields,
    )


def adherence_scores(
    frames: np.ndarray,
    caption: str,
    min_subject_fraction: float = 0.6,
    min_background_fraction: float = 0.8,
    max_background_spread: float = 8.0,
    min_track_consistency: float = 0.8,
    **analysis_kwargs,
) -> AdherenceScore:
    """Score one clip against its synthetic caption: 1/0 per attribute, their mean and all-right.

    A caption without motion expects "still". ``analysis_kwargs`` go to :func:`analyse_clip`. Raises
    ValueError if ``caption`` is not in the synthetic vocabulary (see :func:`parse_caption`).
    """
    spec = parse_caption(caption)
    if spec is None:
        raise ValueError(f"caption is not in the synthetic vocabulary, cannot score adherence: {caption!r}")
    found = analyse_clip(frames, **analysis_kwargs)
    expected_direction = spec.direction if spec.moving else STILL
    subject_found = found.subject_fraction >= min_subject_fraction
    colour_frames = sum(c == spec.colour for c in found.frame_colours)
    colour_ok = float(found.num_frames > 0 and colour_frames / found.num_frames >= min_subject_fraction)
    votes = dict(found.shape_votes)
    total_votes = sum(votes.values())
    shape_ok = float(
        subject_found
        and found.shape == spec.shape
        and total_votes > 0
        and votes[spec.shape] / total_votes >= 0.5
    )
    coherent = found.direction == STILL or (found.track_consistency or 0.0) >= min_track_consistency
    direction_ok = float(subject_found and coherent and found.direction == expected_direction)
    stable = float(
        found.background is not None
        and found.background_fraction >= min_background_fraction
        and bool(found.background_spread <= max_background_spread)
    )
    background_ok = float(bool(stable) and found.background == spec.background)
    checks = (colour_ok, shape_ok, direction_ok, background_ok)
    return AdherenceScore(
        caption=caption,
        colour_ok=colour_ok,
        shape_ok=shape_ok,
        direction_ok=direction_ok,
        background_ok=background_ok,
        background_stable=stable,
        adherence=float(np.mean(checks)),
        overall=float(all(checks)),
        found_colour=found.colour,
        found_shape=found.shape,
        found_direction=found.direction,
        found_background=found.background,
        subject_fraction=float(found.subject_fraction),
        background_fraction=float(found.background_fraction),
        background_spread=float(found.background_spread),
    )


def score_clips(clips: Iterable[tuple[str, np.ndarray]], group: str, **score_kwargs) -> pd.DataFrame:
    """One row per (caption, frames) clip with the attribute matches; ``group`` names the source
    (e.g. "trained", "untrained", "real"). ``score_kwargs`` go to :func:`adherence_scores`."""
    rows = []
    for caption, frames in clips:
        rows.append({"group": group} | asdict(adherence_scores(frames, caption, **score_kwargs)))
    columns = ["group", *AdherenceScore.__dataclass_fields__]
    return pd.DataFrame(rows, columns=columns)


def summarise(table: pd.DataFrame, groups: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Mean of each :data:`SUMMARY_COLUMNS` metric per group: ``{group: {metric: value, "n": count}}``."""
    out: dict[str, dict[str, float]] = {}
    for group, rows in table.groupby("group", sort=False):
        if groups is not None and group not in groups:
            continue
        out[str(group)] = {name: float(rows[column].mean()) for name, column in SUMMARY_COLUMNS.items()}
        out[str(group)]["n"] = float(len(rows))
    return out


def summarise_with_intervals(
    table: pd.DataFrame,
    cluster: str = "caption",
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per group: each :data:`SUMMARY_COLUMNS` metric's mean with a bootstrap ``confidence`` interval
    (``<metric>_low``/``<metric>_high``), ``n`` (clips) and ``prompts`` (distinct ``cluster`` values).

    Clips are resampled by ``cluster`` (the caption: several seeds of one prompt are not independent),
    see :func:`opensora_mlops.evaluation.statistics.cluster_bootstrap`.
    """
    out: dict[str, dict[str, float]] = {}
    for group, rows in table.groupby("group", sort=False):
        stats: dict[str, float] = {}
        clusters = rows[cluster].astype(str).to_numpy()
        for name, column in SUMMARY_COLUMNS.items():
            interval = cluster_bootstrap(
                rows[column].to_numpy(dtype=np.float64), clusters, confidence, num_resamples, seed
            )
            stats[name] = interval.mean
            stats[f"{name}_low"] = interval.low
            stats[f"{name}_high"] = interval.high
        stats["n"] = float(len(rows))
        stats["prompts"] = float(len(set(clusters)))
        out[str(group)] = stats
    return out


# ------------------------------------------------------------------------------ seen / held-out
def combination_of(caption: str) -> tuple[str, str, str, str] | None:
    """(colour, shape, background, direction or "still") of a synthetic caption; None outside the
    vocabulary. The speed is left out: "seen" asks whether the model was shown this scene."""
    spec = parse_caption(caption)
    if spec is None:
        return None
    return (spec.colour, spec.shape, spec.background, spec.direction if spec.moving else STILL)


def training_combinations(captions: Iterable[str]) -> set[tuple[str, str, str, str]]:
    """The combinations among ``captions`` (training clip captions; those outside the vocabulary skipped)."""
    return {c for c in (combination_of(t) for t in captions) if c is not None}


def split_of(caption: str, seen: set[tuple[str, str, str, str]]) -> str:
    """:data:`SEEN` if the caption's combination is in ``seen``, else :data:`HELD_OUT`."""
    return SEEN if combination_of(caption) in seen else HELD_OUT


__all__ = [
    "ATTRIBUTES",
    "CHANCE",
    "HELD_OUT",
    "SEEN",
    "SHAPES",
    "STILL",
    "SUMMARY_COLUMNS",
    "AdherenceScore",
    "ClipAnalysis",
    "adherence_scores",
    "analyse_clip",
    "combination_of",
    "score_clips",
    "split_of",
    "summarise",
    "summarise_with_intervals",
    "training_combinations",
]
