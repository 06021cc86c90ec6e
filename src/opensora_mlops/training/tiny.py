"""A tiny, real training setup for tests and benchmarks: synthetic clips -> bucket table -> latent cache.

Videos are written with :mod:`opensora_mlops.data.video_io`, bucketed with the bucketing library and
encoded with the real (untrained, seeded) tiny VAE and MiniLM, so everything downstream runs the
same code as the pipelines, only smaller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# smaller than STDiT2-tiny so a CPU step takes well under a second (hidden % 12 == 0, even head dim)
TINY_MODEL: dict[str, Any] = {"name": "STDiT2-tiny", "depth": 1, "hidden_size": 48, "num_heads": 2}
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}


def write_clips(directory: str | Path, count: int = 8, frames: int = 6, height: int = 144, width: int = 256,
                fps: float = 8.0, seed: int = 0) -> pd.DataFrame:
    """``count`` clips of a coloured square moving across a dark background, with matching captions."""
    from opensora_mlops.data.video_io import write_video

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    rows = []
    for i in range(count):
        name = names[i % len(names)]
        direction = 1 if (i // len(names)) % 2 == 0 else -1
        video = np.full((frames, height, width, 3), 16, np.uint8)
        size = height // 3
        top = int(rng.integers(0, height - size))
        for t in range(frames):
            x0 = (width - size) // 2 + direction * (t - frames // 2) * (width // (2 * frames))
            video[t, top : top + size, max(0, x0) : max(0, x0) + size] = COLOURS[name]
        path = directory / f"clip_{i:03d}.mp4"
        write_video(path, video, fps)
        rows.append({"path": str(path), "text": f"a {name} square moving {'right' if direction > 0 else 'left'}",
                     "num_frames": frames, "height": height, "width": width, "aspect_ratio": height / width,
                     "fps": float(fps), "resolution": height * width, "duration": frames / fps})
    return pd.DataFrame(rows)


def bucket_table(clips: pd.DataFrame, num_frames: int = 2, batch_size: int = 2, seed: int = 0) -> pd.DataFrame:
    from opensora_mlops.data.buckets import BucketConfig, assign_buckets

    config = BucketConfig({"144p": {num_frames: [1.0, batch_size]}})
    return assign_buckets(clips, config, frame_interval=1, seed=seed)


def build_cache(table: pd.DataFrame, out_dir: str | Path, holdout_fraction: float = 0.25, seed: int = 0,
                reuse_key: dict[str, Any] | None = None) -> dict[str, Any]:
    """Latent caches (train/val) for ``table`` with the seeded tiny VAE and MiniLM (32 tokens)."""
    from opensora_mlops.models.text_encoder import build_text_encoder
    from opensora_mlops.training.components import build_vae
    from opensora_mlops.training.latents import build_stage_caches

    return build_stage_caches(table, out_dir, build_vae({"type": "tiny"}), build_text_encoder(
        {"type": "minilm", "max_length": 32}), holdout_fraction=holdout_fraction, seed=seed, reuse_key=reuse_key)


def train_config(run_dir: str | Path, cache_dir: str | Path, **overrides: Any) -> dict[str, Any]:
    """A stage config (TrainConfig fields) for the tiny model on a cache."""
    values: dict[str, Any] = {
        "stage": "stage1", "run_dir": str(run_dir), "model": dict(TINY_MODEL),
        "data": {"source": "cache", "cache_dir": str(cache_dir)}, "max_steps": 6, "lr": 1e-3,
        "ema_decay": 0.9, "ckpt_every": 2, "seed": 0, "warmup_steps": 0,
    }
    values.update(overrides)
    return values
