"""Source frames in presentation order with exact timestamps, and re-timing to a constant frame rate.

Every curation step that numbers frames (the probe's count, scene detection, cutting) decodes through
:func:`decode_timed`, so a frame number always means "the n-th frame the decoder shows", never
"timestamp × nominal rate" — on variable-frame-rate (VFR) footage the two disagree (a phone's jittery
30 fps puts timestamps a frame early or late; a strongly variable stream has far fewer frames than
duration × rate).

Variable frame rate. :func:`frame_jitter` measures how uneven the frame intervals are: the spread
between the 5th and 95th percentile interval, relative to the median. Mild jitter (phones, capture
cards: well under 0.5) keeps the decoded frames as they are. A strongly variable stream is either
quarantined or *re-timed* (:func:`retime`): output frame ``k`` at time ``t0 + k / fps`` shows the source
frame on screen at that instant, so a held frame is repeated and frames shown shorter than one output
interval are skipped — the clip then plays at a constant rate with the source's timing. The rate is
chosen by :func:`constant_rate`: the rate of the stream's fastest sustained passage, snapped to a
standard rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

import av
import numpy as np

T = TypeVar("T")

#: Rates a re-timed video snaps to when its measured rate is within 3 % of one.
STANDARD_RATES = tuple(Fraction(r) for r in (
    Fraction(24000, 1001), 24, 25, Fraction(30000, 1001), 30, 48, 50, Fraction(60000, 1001), 60, 90, 100,
    Fraction(120000, 1001), 120, 240,
))
#: Image demuxers FFmpeg picks for a still image whatever its file name says.
IMAGE_FORMATS = frozenset({"image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "webp_pipe", "tiff_pipe", "gif_pipe",
                           "jpegxl_pipe", "qoi_pipe", "ppm_pipe", "pgm_pipe", "dpx_pipe", "exr_pipe"})


def rate_fraction(fps: float) -> Fraction:
    """The exact rate behind a float fps (rates here have denominators <= 1001: 30000/1001 included)."""
    return Fraction(float(fps)).limit_denominator(1001)


def frame_time(frame: av.VideoFrame, index: int, nominal: Fraction | None) -> Fraction | None:
    """Presentation time of a decoded frame in seconds, exact; from the index when it has no pts."""
    if frame.pts is not None and frame.time_base is not None:
        return Fraction(int(frame.pts)) * Fraction(frame.time_base)
    return Fraction(index) / nominal if nominal else None


def decode_timed(container: av.container.InputContainer) -> Iterator[tuple[int, av.VideoFrame, Fraction | None]]:
    """``(index, frame, seconds)`` for every frame of the first video stream, in presentation order
    (the decoder's output order; B-frames are reordered by it)."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    nominal = Fraction(rate) if rate else None
    for index, frame in enumerate(container.decode(stream)):
        yield index, frame, frame_time(frame, index, nominal)


def intervals(times: Sequence[Fraction | None]) -> np.ndarray:
    """Positive gaps between consecutive presentation times, in seconds."""
    values = np.array([float(t) for t in times if t is not None], dtype=np.float64)
    gaps = np.diff(np.maximum.accumulate(values)) if values.size > 1 else np.zeros(0)
    return gaps[gaps > 0]


def frame_jitter(times: Sequence[Fraction | None]) -> float:
    """(95th - 5th percentile frame interval) / median interval; 0 for constant rate or < 3 frames."""
    gaps = intervals(times)
    if gaps.size < 2:
        return 0.0
    low, median, high = np.percentile(gaps, [5, 50, 95])
    return float((high - low) / median) if median > 0 else 0.0


def constant_rate(times: Sequence[Fraction | None], max_fps: float) -> Fraction:
    """The rate a variable-rate stream is re-timed to: that of its fastest sustained passage, so fast
    passages keep their frames and slow ones repeat theirs. The intervals are averaged over runs of 15
    frames (timestamp jitter and millisecond-rounded container time bases cancel out), the 10th
    percentile of those averages is the passage's interval, and the rate snaps to the nearest standard
    rate within 3 % (the standard rates are at least 4 % apart, NTSC pairs aside), at most ``max_fps``."""
    gaps = intervals(times)
    if gaps.size == 0:
        raise ValueError("a variable-rate stream needs at least two timed frames")
    width = min(15, gaps.size)
    sums = np.concatenate([[0.0], np.cumsum(gaps)])
    averages = (sums[width:] - sums[:-width]) / width
    measured = min(1.0 / float(np.percentile(averages, 10)), float(max_fps))
    closest = min(STANDARD_RATES, key=lambda r: abs(float(r) - measured))
    if abs(float(closest) - measured) <= 0.03 * measured:
        return closest
    return Fraction(measured).limit_denominator(1001)


def retime(items: Iterable[tuple[T, Fraction | None]], fps: Fraction) -> Iterator[tuple[int, T]]:
    """Constant-rate frames ``(k, item)`` from timestamped ones ``(item, seconds)`` in presentation order.

    Output frame ``k`` (time ``t0 + k / fps``, ``t0`` the first frame's time) is the source frame on
    screen at that time; the last source frame lasts as long as the interval before it. A constant-rate
    stream at ``fps`` comes back unchanged, one output frame per source frame. Timestamps that go
    backwards are treated as equal to the previous one (the earlier frame is then never shown).
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    step = 1 / Fraction(fps)
    k = 0
    t0 = prev_t = None
    prev: T | None = None
    last_gap: Fraction | None = None
    for item, t in items:
        if t is None:
            raise ValueError("re-timing needs a timestamp on every frame")
        if t0 is None:
            t0, prev_t, prev = t, t, item
            continue
        t = max(t, prev_t)
        while t0 + k * step < t:
            yield k, prev
            k += 1
        if t > prev_t:
            last_gap = t - prev_t
        prev, prev_t = item, t
    if t0 is None:
        return
    end = prev_t + (last_gap if last_gap is not None else step)
    while t0 + k * step < end:
        yield k, prev
        k += 1


def retime_map(times: Sequence[Fraction | None], fps: Fraction) -> np.ndarray:
    """Source frame index shown at each output frame of :func:`retime` (non-decreasing)."""
    return np.array([i for _, i in retime(((i, t) for i, t in enumerate(times)), fps)], dtype=np.int64)


def map_cut(source_frame: int, shown: np.ndarray) -> int:
    """Output frame where a cut before ``source_frame`` lands: the first one showing it or a later frame."""
    return int(np.searchsorted(shown, source_frame, side="left"))


def iter_frames(path: str | Path, fmt: str = "rgb24", retime_fps: Fraction | None = None
                ) -> Iterator[tuple[int, np.ndarray]]:
    """``(frame number, image)`` of a source video as curation numbers its frames: decoded frames in
    presentation order, or the re-timed constant-rate sequence when ``retime_fps`` is given (a repeated
    frame is converted once)."""
    with av.open(str(path)) as container:
        timed = decode_timed(container)
        if retime_fps is None:
            for index, frame, _ in timed:
                yield index, frame.to_ndarray(format=fmt)
            return
        cache: tuple[int, np.ndarray] | None = None
        for k, (index, frame) in retime((((i, f), t) for i, f, t in timed), retime_fps):
            if cache is None or cache[0] != index:
                cache = (index, frame.to_ndarray(format=fmt))
            yield k, cache[1]


def describe_intervals(times: Sequence[Fraction | None]) -> str:
    """"intervals 16.7-100.0 ms (median 33.3 ms)" for quarantine details."""
    gaps = intervals(times) * 1000.0
    if gaps.size == 0:
        return "no frame intervals"
    return f"intervals {gaps.min():.1f}-{gaps.max():.1f} ms (median {float(np.median(gaps)):.1f} ms)"
