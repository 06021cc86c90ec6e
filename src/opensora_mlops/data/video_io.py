"""Writing and reading whole videos with PyAV (H.264 MP4) and animated GIFs.

Frame-accurate partial decoding for training lives in :mod:`opensora_mlops.data.dataset`; this module
is for whole clips: the synthetic corpus, cut clips, generated samples.
"""

from __future__ import annotations

from fractions import Fraction
from functools import cache
from pathlib import Path

import av
import numpy as np
from PIL import Image


def _as_uint8_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, H, W, 3), got {frames.shape}")
    if frames.shape[0] < 1:
        raise ValueError("a video needs at least one frame")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    return frames


def _yuv420p(rgb: np.ndarray) -> av.VideoFrame:
    """An RGB frame converted to yuv420p with every plane's row padding (line size beyond the width)
    set to the row's last pixel: the converter leaves it uninitialised, and libx264 reads it when the
    width is not a multiple of 16, so the same frames would otherwise encode to different bytes."""
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    for plane in frame.planes:
        if plane.line_size > plane.width:
            rows = np.frombuffer(plane, np.uint8)[: plane.height * plane.line_size].reshape(plane.height, plane.line_size)
            rows[:, plane.width:] = rows[:, plane.width - 1 : plane.width]
    return frame


# x264's AVX-512 routines read past the end of the input planes, so on an AVX-512 CPU the same frames
# encode to different bytes depending on whatever the heap holds there (measured: 10 different files in
# 40 encodes of one 96x64 clip, against 1 with AVX-512 left out). Every CPU with AVX-512 also has this
# AVX2-level set, so naming it keeps x264's SIMD everywhere else at the same speed.
_X264_AVX2_LEVEL = "MMX2,SSE,SSE2,SSE3,SSSE3,SSE4.1,SSE4.2,AVX,LZCNT,BMI1,BMI2,FMA3,AVX2"


@cache
def _x264_asm_for_reproducible_bytes() -> str | None:
    """x264's ``asm`` flags for a byte-reproducible encode: the AVX2 level on an AVX-512 CPU, else None
    (x264's own detection, which then never picks AVX-512)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # pragma: no cover - numpy's layout changed: fall back to the kernel's list
        try:
            flags = Path("/proc/cpuinfo").read_text().split()
        except OSError:
            return None
        features = {"AVX512F": "avx512f" in flags, "X86_V3": {"avx2", "bmi2", "fma", "abm"} <= set(flags)}
    return _X264_AVX2_LEVEL if features.get("AVX512F") and features.get("X86_V3") else None


def write_video(path: str | Path, frames: np.ndarray, fps: float, crf: int = 18, threads: int | None = None) -> Path:
    """Encode ``frames`` (T, H, W, 3 uint8 RGB) as H.264 MP4 at ``fps``; returns the path.

    Odd sizes are padded by one edge pixel because yuv420p needs even dimensions. ``threads``: libx264's
    encoder and lookahead threads (None: automatic, from the CPUs this process sees, so the bytes can
    differ between machines); ``threads=1`` encodes the same frames to the same bytes on a machine and
    on any other with the same CPU features (on AVX-512 CPUs it also leaves x264's AVX-512 code out).
    """
    frames = _as_uint8_frames(frames)
    if not 0 < fps <= 240:
        raise ValueError(f"fps must be in (0, 240], got {fps}")
    t, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = w + pad_w, h + pad_h
        stream.pix_fmt = "yuv420p"
        pinned = {}
        if threads:
            asm = _x264_asm_for_reproducible_bytes() if threads == 1 else None
            params = f"lookahead-threads={threads}" + (f":asm={asm}" if asm else "")
            pinned = {"threads": str(threads), "x264-params": params}
        stream.options = {"crf": str(crf), "preset": "veryfast", **pinned}
        for frame in frames:
            for packet in stream.encode(_yuv420p(frame)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode every frame of a video or image file: (frames T×H×W×3 uint8, fps).

    Still images (jpg, png, …) come back as one frame with fps 0.
    """
    path = Path(path)
    if path.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp", ".webp"}:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))[None], 0.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path}: no decodable video frames")
    return np.stack(frames), fps


def write_gif(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """Save frames (T, H, W, 3 uint8) as a looping animated GIF (for reports and MLflow)."""
    frames = _as_uint8_frames(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    duration_ms = max(20, int(round(1000 / max(fps, 1e-3))))
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return path
