"""Camera-like test footage made from real photographs (no real video is available offline).

The photographs are the real ones that ship with installed packages: scikit-learn's ``china.jpg`` (a
pagoda above a lake, trees) and ``flower.jpg`` (a dahlia in sharp focus over a blurred garden: a
genuine shallow-focus shot), matplotlib's ``grace_hopper.jpg`` (a portrait in front of a flag).
:func:`camera_clip` films one with a virtual camera (pan, zoom or hand-held shake, sub-pixel moves,
sensor noise), the way a real clip of a still scene looks. On top of those: grass and a picket fence
(dense thin structures that fool heuristic text detectors), a street sign with real lettering,
subtitles burnt into the picture, variable-frame-rate files with explicit timestamps, and heavily
compressed encodes.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

PHOTOS = ("china", "flower", "hopper")


def photo(name: str) -> np.ndarray:
    """One of the bundled real photographs as RGB uint8."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return np.ascontiguousarray(load_sample_image(f"{name}.jpg"))
    if name == "hopper":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
            return np.asarray(Image.open(handle).convert("RGB"))
    raise ValueError(f"unknown photo {name!r}; known: {PHOTOS}")


def camera_clip(image: np.ndarray, num_frames: int, size: tuple[int, int] = (216, 384), motion: str = "pan",
                amount: float = 0.08, noise: float = 2.0, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) frames of a virtual camera over ``image``: "pan" (left to right by ``amount`` of the
    width), "zoom" (in by ``amount``), "shake" (hand-held jitter of about ``amount`` x 10 px) or
    "static"; sensor noise of ``noise`` grey levels."""
    rng = np.random.default_rng(seed)
    out_h, out_w = size
    img_h, img_w = image.shape[:2]
    # the largest window of the output's aspect ratio, with room to move
    base = min(img_h / out_h, img_w / out_w) * (1.0 - amount - 0.02)
    frames = []
    for i in range(num_frames):
        u = i / max(1, num_frames - 1)
        scale = base * ((1.0 - amount * u) if motion == "zoom" else 1.0)
        cx, cy = img_w / 2, img_h / 2
        if motion == "pan":
            cx += (u - 0.5) * amount * img_w
        elif motion == "shake":
            cx += rng.normal(0, amount * 10)
            cy += rng.normal(0, amount * 10)
        # output pixel (x, y) samples image point centre + (x - out_w / 2) * scale
        matrix = np.array([[1 / scale, 0, out_w / 2 - cx / scale], [0, 1 / scale, out_h / 2 - cy / scale]])
        smooth = cv2.GaussianBlur(image, (0, 0), max(0.01, 0.5 * (scale - 1))) if scale > 1.2 else image
        frame = cv2.warpAffine(smooth, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if noise:
            frame = np.clip(frame + rng.normal(0, noise, frame.shape), 0, 255)
        frames.append(frame.astype(np.uint8))
    return np.stack(frames)


def grass(size: tuple[int, int] = (432, 768), seed: int = 0) -> np.ndarray:
    """A lawn seen from above at an angle: thousands of thin, slightly bent green blades."""
    rng = np.random.default_rng(seed)
    h, w = size
    canvas = np.zeros((h, w, 3), np.uint8)
    canvas[:] = (38, 62, 24)
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for _ in range(int(h * w / 18)):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        length = rng.uniform(8, 28) * (0.5 + y / h)  # nearer blades look longer
        angle = rng.normal(-np.pi / 2, 0.25)
        green = rng.uniform(70, 190)
        colour = (int(green * rng.uniform(0.35, 0.7)), int(green), int(green * rng.uniform(0.1, 0.35)))
        draw.line([(x, y), (x + length * np.cos(angle), y + length * np.sin(angle))], fill=colour,
                  width=int(rng.integers(1, 3)))
    return np.asarray(image)


def fence(background: np.ndarray, size: tuple[int, int] = (432, 768), slat: int = 14, gap: int = 9) -> np.ndarray:
    """A white picket fence (pointed slats on two rails) in front of ``background``."""
    h, w = size
    image = Image.fromarray(cv2.resize(background, (w, h), interpolation=cv2.INTER_AREA))
    draw = ImageDraw.Draw(image)
    top, bottom = int(0.35 * h), int(0.95 * h)
    for rail in (0.5, 0.82):
        y = int(rail * h)
        draw.rectangle((0, y, w, y + slat // 2), fill=(205, 200, 190))
    for x in range(0, w, slat + gap):
        shade = 215 + (x * 7) % 25
        draw.polygon([(x, top + slat), (x + slat / 2, top), (x + slat, top + slat), (x + slat, bottom), (x, bottom)],
                     fill=(shade, shade - 5, shade - 15), outline=(120, 115, 105))
    return np.asarray(image)


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def street_sign(background: np.ndarray, text: str = "MAIN ST", scale: float = 1.0) -> np.ndarray:
    """A green street-name sign with white lettering on a pole, seen at a slight angle, in ``background``."""
    h, w = background.shape[:2]
    font = _font(int(0.085 * h * scale))
    left, top, right, bottom = font.getbbox(text)
    pad = int(0.02 * h * scale)
    sign = Image.new("RGB", (right - left + 4 * pad, bottom - top + 2 * pad), (0, 104, 55))
    draw = ImageDraw.Draw(sign)
    draw.rectangle((3, 3, sign.width - 4, sign.height - 4), outline=(240, 240, 240), width=max(2, pad // 3))
    draw.text((2 * pad - left, pad - top), text, font=font, fill=(245, 245, 245))
    plate = np.asarray(sign)
    sh, sw = plate.shape[:2]
    x0, y0 = int(0.55 * w), int(0.3 * h)
    # a slight perspective: the far edge a little shorter
    src = np.float32([[0, 0], [sw, 0], [sw, sh], [0, sh]])
    dst = np.float32([[x0, y0], [x0 + sw, y0 + 0.06 * sh], [x0 + sw, y0 + 0.94 * sh], [x0, y0 + sh]])
    warp = cv2.getPerspectiveTransform(src, dst)
    out = background.copy()
    cv2.line(out, (x0 + sw // 2, y0 + sh), (x0 + sw // 2, h), (90, 90, 95), max(3, sw // 30))
    layer = cv2.warpPerspective(plate, warp, (w, h))
    mask = cv2.warpPerspective(np.full((sh, sw), 255, np.uint8), warp, (w, h)) > 127
    out[mask] = layer[mask]
    return out


def subtitles(frame: np.ndarray, text: str = "I never said that to anyone, not even to you") -> np.ndarray:
    """White subtitles with a dark outline burnt into the bottom of ``frame``."""
    h, w = frame.shape[:2]
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    font = _font(max(10, int(0.06 * h)))
    width = draw.textlength(text, font=font)
    draw.text(((w - width) / 2, 0.84 * h), text, font=font, fill=(255, 255, 255), stroke_width=2,
              stroke_fill=(0, 0, 0))
    return np.asarray(image)


def shallow_focus(image: np.ndarray, subject: tuple[float, float, float] = (0.5, 0.45, 0.22),
                  sigma: float = 7.0) -> np.ndarray:
    """``image`` with everything outside an elliptical subject region (centre x, centre y, radius as
    fractions) blurred like an out-of-focus background; the subject stays sharp."""
    h, w = image.shape[:2]
    cx, cy, r = subject
    ys, xs = np.mgrid[0:h, 0:w]
    dist = np.hypot((xs - cx * w) / (r * w), (ys - cy * h) / (1.3 * r * h))
    alpha = np.clip(1.5 - dist, 0, 1)[..., None]  # feathered edge
    blurred = cv2.GaussianBlur(image, (0, 0), sigma)
    return (alpha * image + (1 - alpha) * blurred).astype(np.uint8)


def write_clip(path: str | Path, frames: np.ndarray, fps: float = 25.0, codec: str = "libx264",
               crf: int | None = 18, options: dict[str, str] | None = None) -> Path:
    """Encode ``frames`` (T, H, W, 3 RGB) like a camera or an upload site would: ``crf`` for x264/x265/VP9."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opts = dict(options or {})
    if crf is not None and codec in ("libx264", "libx265"):
        opts.setdefault("crf", str(crf))
    if crf is not None and codec.startswith("libvpx"):
        opts.setdefault("crf", str(crf))
        opts.setdefault("b:v", "0")
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, options=opts)
        even = codec in ("libx264", "libx265")  # VP9 stores odd sizes as they are
        stream.height = frames.shape[1] - frames.shape[1] % 2 * even
        stream.width = frames.shape[2] - frames.shape[2] % 2 * even
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            image = np.ascontiguousarray(frame[: stream.height, : stream.width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_timed(path: str | Path, frames: np.ndarray, times: np.ndarray, codec: str = "libx264",
                time_base: Fraction = Fraction(1, 90000)) -> Path:
    """Encode ``frames`` with explicit presentation times ``times`` (seconds): variable frame rate."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=30, options={"crf": "16"})
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        for frame, seconds in zip(frames, times, strict=True):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = int(round(seconds / time_base))
            video_frame.time_base = time_base
            for packet in stream.encode(video_frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def jittered_times(num_frames: int, fps: float = 30.0, jitter_ms: float = 3.0, seed: int = 0) -> np.ndarray:
    """A phone's timestamps: nominal ``fps`` with Gaussian jitter, kept increasing."""
    rng = np.random.default_rng(seed)
    times = np.arange(num_frames) / fps + rng.normal(0, jitter_ms / 1000, num_frames)
    times[0] = 0.0
    return np.maximum.accumulate(np.maximum(times, 0)) + np.arange(num_frames) * 1e-6


def variable_times(intervals_ms: list[tuple[int, float]]) -> np.ndarray:
    """Timestamps of runs of frames at different rates: ``[(frames, interval ms), ...]``."""
    gaps = np.concatenate([np.full(n, ms / 1000) for n, ms in intervals_ms])
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])])


SHOT_BACKGROUNDS = ("navy", "gray", "maroon", "black")


def shot_sequence(lengths: list[int], size: tuple[int, int] = (72, 96), fps: float = 30.0) -> np.ndarray:
    """Shots (at most four) of the synthetic corpus's moving shapes, each on its own background
    (:data:`SHOT_BACKGROUNDS` in order): :func:`shot_of` tells which shot a decoded frame shows."""
    from opensora_mlops.curation.synthetic import ShotSpec, render_shot

    shapes = ("circle", "square", "triangle", "circle")
    parts = [render_shot(ShotSpec("yellow" if i % 2 else "cyan", shapes[i], SHOT_BACKGROUNDS[i], "right", "slowly"),
                         *size, n, fps, (size[0] / 3, size[1] / 2)) for i, n in enumerate(lengths)]
    return np.concatenate(parts)


def shot_of(frame: np.ndarray) -> int:
    """Index of the shot of :func:`shot_sequence` a frame shows: its background, the median colour."""
    from opensora_mlops.curation.synthetic import BACKGROUNDS

    median = np.median(frame.reshape(-1, 3), axis=0)
    return int(np.argmin([np.abs(median - np.asarray(BACKGROUNDS[name])).sum() for name in SHOT_BACKGROUNDS]))
