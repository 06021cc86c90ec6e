"""Dataset loading speed: partial decoding (seek + needed frames only) vs decoding the whole clip.

    python benchmarks/bench_dataset.py --quick      # < 1 min
    python benchmarks/bench_dataset.py              # longer clips, more items

A synthetic H.264 clip (moving gradient + shapes, keyframe every 2 s like typical web video) is loaded
as training samples for several buckets at frame_interval 3:

* ``dataset``: :class:`VideoBucketDataset` — temporal random crop, PyAV seek to the keyframe before the
  first needed frame, decode forward to the last needed frame, convert only the needed frames (scaled
  by swscale), centre crop;
* ``whole clip``: the 1.1 way — decode every frame at full size, then the same temporal crop and a
  resize-crop of the selected frames.

Reported: samples/s and delivered frames/s of each, and the speed-up.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import torch

from opensora_mlops.data.dataset import (
    VideoBucketDataset,
    decode_all_frames,
    resize_crop,
    temporal_crop_indices,
    to_model_range,
)
from opensora_mlops.data.sampler import SampleKey


def write_clip(path: Path, frames: int, height: int, width: int, fps: int = 24, gop_seconds: float = 2.0) -> None:
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        gop = int(fps * gop_seconds)
        stream.options = {"crf": "20", "preset": "veryfast", "x264-params": f"keyint={gop}:min-keyint={gop}"}
        for t in range(frames):
            frame = np.empty((height, width, 3), np.uint8)
            frame[..., 0] = (xx + 3 * t) % 256
            frame[..., 1] = (yy + 2 * t) % 256
            frame[..., 2] = ((xx // 32 + yy // 32 + t // 8) % 2) * 200
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def whole_clip_item(path: Path, total: int, key: SampleKey, interval: int, rng: np.random.Generator) -> torch.Tensor:
    frames, _ = decode_all_frames(path)
    indices = temporal_crop_indices(min(total, len(frames)), key.num_frames, interval, rng)
    return to_model_range(resize_crop(frames[indices], key.height, key.width))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--items", type=int, default=None, help="samples per bucket and method")
    args = parser.parse_args()
    torch.set_num_threads(2)
    seconds = 8 if args.quick else 20
    items = args.items or (4 if args.quick else 10)
    fps, interval = 24, 3
    height, width = 360, 640
    total = seconds * fps
    buckets = [SampleKey(0, 16, 144, 256, "144p/16/0.56"), SampleKey(0, 16, 240, 426, "240p/16/0.56"),
               SampleKey(0, 32, 240, 426, "240p/32/0.56"), SampleKey(0, 1, 240, 426, "240p/1/0.56")]  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        write_clip(path, total, height, width, fps)
        table = pd.DataFrame({"path": [str(path)], "text": ["bench"], "num_frames": [total], "height": [height],
                              "width": [width], "fps": [float(fps)]})  # fmt: skip
        ds = VideoBucketDataset(table, frame_interval=interval, seed=0)
        print(f"clip {height}x{width}, {total} frames at {fps} fps (keyframe every 2 s), frame_interval {interval}, "
              f"{items} samples per bucket, {os.cpu_count()} CPUs")
        print(f"{'bucket (T/H/W)':18s} {'dataset smp/s':>14s} {'whole smp/s':>12s} {'dataset fr/s':>13s} "
              f"{'whole fr/s':>11s} {'speed-up':>9s}")
        total_fast = total_slow = 0.0
        frames_delivered = 0
        for key in buckets:
            ds[key]  # warm up (file cache, codec init)
            start = time.perf_counter()
            for _ in range(items):
                out = ds[key]
            t_fast = time.perf_counter() - start
            rng = np.random.default_rng(0)
            start = time.perf_counter()
            for _ in range(items):
                ref = whole_clip_item(path, total, key, interval, rng)
            t_slow = time.perf_counter() - start
            assert out["video"].shape == ref.shape, (out["video"].shape, ref.shape)
            n_frames = items * key.num_frames
            total_fast += t_fast
            total_slow += t_slow
            frames_delivered += n_frames
            label = f"{key.num_frames}/{key.height}/{key.width}"
            print(f"{label:18s} {items / t_fast:14.2f} {items / t_slow:12.2f} {n_frames / t_fast:13.1f} "
                  f"{n_frames / t_slow:11.1f} {t_slow / t_fast:8.1f}x")
        print(
            f"SUMMARY: dataset delivers {frames_delivered / total_fast:.0f} frames/s vs "
            f"{frames_delivered / total_slow:.0f} frames/s decoding whole clips "
            f"({total_slow / total_fast:.1f}x) on a {seconds} s {height}p clip"
        )


if __name__ == "__main__":
    main()
