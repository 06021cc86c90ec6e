"""Prompt adherence on the synthetic corpus, measured with classical computer vision.

A synthetic caption ("a red circle moving left quickly on a gray background") says exactly what a clip
must show. :func:`analyse_clip` recovers colour, shape and motion direction from the frames alone:

* **segmentation** — the background is the per-frame median colour (the shape covers a minority of the
  frame); pixels farther than ``fg_threshold`` (RGB distance) from it are the subject. A frame whose
  "subject" is smaller than ``min_area`` or larger than ``max_area`` of the frame has no single subject
  (noise, an empty frame) and is not used;
* **colour** — the mean RGB of the eroded subject pixels, classified to the nearest vocabulary colour;
* **shape** — the largest blob of the subject mask, on frames where it does not touch the border: its
  extent (area / bounding box) and circularity 4πA/P² matched to each shape's prototype, with the
  ``cv2.approxPolyDP`` vertex count deciding close calls; majority vote over frames (frames where it
  is cut by the border count only when there are no others);
* **direction** — the subject centroid trajectory: per-frame steps, dropping jumps larger than a third
  of the frame (the corpus wraps shapes around the edges), summed; the direction is the vocabulary
  direction with the largest projection; a net motion under ``min_motion`` of the frame size is "still".

:func:`adherence_scores` compares that with :func:`opensora_mlops.curation.synthetic.parse_caption`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import pandas as pd

from opensora_mlops.curation.synthetic import COLOURS, DIRECTIONS, SHAPES, parse_caption
from opensora_mlops.evaluation.metrics import check_frames

STILL = "still"


@dataclass(frozen=True)
class ClipAnalysis:
    """What the frames show. ``None`` where nothing could be recovered (no subject found)."""

    colour: str | None
    shape: str | None
    direction: str | None  # a DIRECTIONS key, "still", or None
    subject_frames: int  # frames with a usable single subject
    mean_rgb: tuple[float, float, float] | None
    circularity: float | None
    displacement: tuple[float, float]  # net (dx, dy) in pixels


@dataclass(frozen=True)
class AdherenceScore:
    caption: str
    colour_ok: float
    shape_ok: float
    direction_ok: float
    adherence: float
    found_colour: str | None
    found_shape: str | None
    found_direction: str | None


def _subject_mask(frame: np.ndarray, fg_threshold: float) -> np.ndarray:
    pixels = frame.reshape(-1, 3).astype(np.float32)
    background = np.median(pixels, axis=0)
    distance = np.linalg.norm(frame.astype(np.float32) - background, axis=-1)
    return distance > fg_threshold


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


def _nearest_colour(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(np.linalg.norm(palette - rgb[None], axis=1)))]


def analyse_clip(
    frames: np.ndarray,
    fg_threshold: float = 60.0,
    min_area: float = 0.002,
    max_area: float = 0.4,
    min_motion: float = 0.02,
) -> ClipAnalysis:
    """Recover the subject's colour, shape and motion direction from ``frames`` (T×H×W×3 uint8)."""
    frames = check_frames(frames)
    t, h, w, _ = frames.shape
    colours: list[np.ndarray] = []
    shapes: list[str] = []
    circularities: list[float] = []
    centroids: list[np.ndarray | None] = []
    border_shapes: list[tuple[str, float]] = []
    kernel = np.ones((3, 3), np.uint8)
    for frame in frames:
        mask = _subject_mask(frame, fg_threshold)
        fraction = float(mask.mean())
        if not min_area <= fraction <= max_area:
            centroids.append(None)
            continue
        core = cv2.erode(mask.astype(np.uint8), kernel).astype(bool)
        colours.append(frame[core if core.any() else mask].astype(np.float32).mean(axis=0))
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
    subject_frames = sum(c is not None for c in centroids)
    if subject_frames == 0:
        return ClipAnalysis(None, None, None, 0, None, None, (0.0, 0.0))

    if not shapes and border_shapes:
        # the subject touches the border in every frame: its clipped outline is the best evidence left
        shapes = [s for s, _ in border_shapes]
        circularities = [c for _, c in border_shapes]
    mean_rgb = np.median(np.stack(colours), axis=0)
    colour = _nearest_colour(mean_rgb)
    shape = Counter(shapes).most_common(1)[0][0] if shapes else None
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
    if subject_frames < 2:
        direction = None
    elif abs(net[0]) < min_motion * w and abs(net[1]) < min_motion * h:
        direction = STILL
    else:
        # normalise by the frame size so "quickly left" and "quickly up" compare alike
        normalised = net / np.array([w, h], dtype=np.float64)
        direction = max(DIRECTIONS, key=lambda d: float(np.dot(normalised, DIRECTIONS[d])))
    return ClipAnalysis(
        colour=colour,
        shape=shape,
        direction=direction,
        subject_frames=subject_frames,
        mean_rgb=tuple(float(v) for v in mean_rgb),
        circularity=circularity,
        displacement=(float(net[0]), float(net[1])),
    )


def adherence_scores(frames: np.ndarray, caption: str, **analysis_kwargs) -> AdherenceScore:
    """Score one clip against its synthetic caption: 1/0 per attribute and their mean.

    A caption without motion expects "still". Raises ValueError if ``caption`` is not in the synthetic
    vocabulary (see :func:`parse_caption`).
    """
    spec = parse_caption(caption)
    if spec is None:
        raise ValueError(f"caption is not in the synthetic vocabulary, cannot score adherence: {caption!r}")
    found = analyse_clip(frames, **analysis_kwargs)
    expected_direction = spec.direction if spec.moving else STILL
    colour_ok = float(found.colour == spec.colour)
    shape_ok = float(found.shape == spec.shape)
    direction_ok = float(found.direction == expected_direction)
    return AdherenceScore(
        caption=caption,
        colour_ok=colour_ok,
        shape_ok=shape_ok,
        direction_ok=direction_ok,
        adherence=(colour_ok + shape_ok + direction_ok) / 3.0,
        found_colour=found.colour,
        found_shape=found.shape,
        found_direction=found.direction,
    )


def score_clips(clips: Iterable[tuple[str, np.ndarray]], group: str, **analysis_kwargs) -> pd.DataFrame:
    """One row per (caption, frames) clip with the attribute matches; ``group`` names the source
    (e.g. "trained", "untrained", "real")."""
    rows = []
    for caption, frames in clips:
        rows.append({"group": group} | asdict(adherence_scores(frames, caption, **analysis_kwargs)))
    columns = ["group", *AdherenceScore.__dataclass_fields__]
    return pd.DataFrame(rows, columns=columns)


def summarise(table: pd.DataFrame, groups: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Mean colour/shape/direction/adherence per group: ``{group: {metric: value, "n": count}}``."""
    out: dict[str, dict[str, float]] = {}
    for group, rows in table.groupby("group", sort=False):
        if groups is not None and group not in groups:
            continue
        out[str(group)] = {
            "colour": float(rows["colour_ok"].mean()),
            "shape": float(rows["shape_ok"].mean()),
            "direction": float(rows["direction_ok"].mean()),
            "adherence": float(rows["adherence"].mean()),
            "n": float(len(rows)),
        }
    return out


__all__ = [
    "SHAPES",
    "STILL",
    "AdherenceScore",
    "ClipAnalysis",
    "adherence_scores",
    "analyse_clip",
    "score_clips",
    "summarise",
]
