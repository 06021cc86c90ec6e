"""Nodes of the autoencoder pipeline (thin: the model math is in :mod:`opensora_mlops.models.vae`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from opensora_mlops.config import ConfigError, check_keys

logger = logging.getLogger(__name__)

AUTOENCODER_KEYS = ("pretrained", "out_dir", "steps", "lr", "batch_size", "frames_per_clip", "height", "width",
                    "crop", "crop_content_bias", "cosine_decay", "warmup_steps", "subject_weight", "edge_weight",
                    "vocabulary_frames", "vocabulary_size_range", "bf16", "arch", "max_clips", "seed", "kl_weight", "micro_batch_size", "video_root")


def frames_for_fitting(clips: pd.DataFrame, params: dict[str, Any]) -> torch.Tensor:
    from opensora_mlops.data.dataset import decode_all_frames, resize_crop, to_model_range

    rng = np.random.default_rng(int(params.get("seed", 0)))
    rows = clips.sample(n=min(len(clips), int(params.get("max_clips", 32))), random_state=int(params.get("seed", 0)))
    root = Path(params["video_root"]) if params.get("video_root") else None
    frames = []
    for path in rows["path"].astype(str):
        p = Path(path)
        p = root / p if root is not None and not p.is_absolute() else p
        video, _ = decode_all_frames(p)
        pick = rng.choice(len(video), size=min(len(video), int(params.get("frames_per_clip", 4))), replace=False)
        chosen = resize_crop(video[np.sort(pick)], int(params.get("height", 144)), int(params.get("width", 256)))
        frames.append(to_model_range(chosen).permute(1, 0, 2, 3))  # [T, 3, H, W]
    if not frames:
        raise ConfigError("the autoencoder pipeline found no clips to fit on")
    return torch.cat(frames)


def training_frames(clips: pd.DataFrame | None, params: dict[str, Any]) -> torch.Tensor:
    """The frames the autoencoder is fitted on: ``frames_per_clip`` frames of up to ``max_clips`` curated
    clips, plus ``vocabulary_frames`` renders of the synthetic vocabulary (every colour x shape x
    background, subjects sized ``vocabulary_size_range`` of the shorter side, by default the corpus's; see
    :func:`opensora_mlops.models.vae.vocabulary_frames`); ``clips=None``: renders only."""
    from opensora_mlops.models.vae import vocabulary_frames

    parts = [frames_for_fitting(clips, params)] if clips is not None and len(clips) else []
    rendered = int(params.get("vocabulary_frames", 0))
    if rendered < 0:
        raise ConfigError(f"autoencoder.vocabulary_frames must be >= 0, got {rendered}")
    if rendered:
        size_range = params.get("vocabulary_size_range")
        if size_range is not None:
            if not isinstance(size_range, (list, tuple)) or len(size_range) != 2:
                raise ConfigError(f"autoencoder.vocabulary_size_range must be [min, max], got {size_range!r}")
            size_range = (float(size_range[0]), float(size_range[1]))
        parts.append(vocabulary_frames(rendered, int(params.get("height", 144)), int(params.get("width", 256)),
                                       seed=int(params.get("seed", 0)), size_range=size_range))
    if not parts:
        raise ConfigError("the autoencoder pipeline found no clips to fit on (and autoencoder.vocabulary_frames is 0)")
    return torch.cat(parts)


def fit_options(params: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`~opensora_mlops.models.vae.fit_autoencoder` the parameters ask for
    (the defaults here are the library's, not the embedded demo's: those are in parameters_autoencoder.yml).
    ``warmup_steps`` is capped at a tenth of ``steps``."""
    check_keys(params, AUTOENCODER_KEYS, "autoencoder parameters")
    steps = int(params.get("steps", 200))
    warmup = int(params.get("warmup_steps", 0))
    if warmup > steps // 10:
        # a warm-up is a small part of a fit; capping it keeps short runs (tests, smoke runs) valid
        logger.info("autoencoder: warmup_steps %d capped at a tenth of the %d steps", warmup, steps)
        warmup = steps // 10
    return {
        "steps": steps,
        "lr": float(params.get("lr", 1e-3)),
        "batch_size": int(params.get("batch_size", 8)),
        "kl_weight": float(params.get("kl_weight", 1e-6)),
        "seed": int(params.get("seed", 0)),
        "crop": int(params["crop"]) if params.get("crop") else None,
        "crop_content_bias": float(params.get("crop_content_bias", 0.0)),
        "cosine_decay": bool(params.get("cosine_decay", False)),
        "warmup_steps": warmup,
        "subject_weight": float(params.get("subject_weight", 0.0)),
        "edge_weight": float(params.get("edge_weight", 0.0)),
        "bf16": _bf16(params.get("bf16", False)),
    }


def _bf16(value: Any) -> bool:
    """``autoencoder.bf16``: true, false, or "auto" (bfloat16 where this CPU computes it natively)."""
    from opensora_mlops.models.vae import bf16_is_fast

    if value == "auto":
        return bf16_is_fast()
    if isinstance(value, bool):
        return value
    raise ConfigError(f"autoencoder.bf16 must be true, false or auto, got {value!r}")


def fit_vae(clips: pd.DataFrame, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """Fit the tiny VAE on frames of the curated clips (or reference a pretrained VAE directory).

    Returns the VAE manifest (``{"type": "pretrained", "from_pretrained": dir, ...}`` — the vae config
    every later pipeline uses) and fitting metrics.
    """
    from opensora_mlops.models.vae import VideoAutoencoder, fit_autoencoder

    check_keys(params, AUTOENCODER_KEYS, "autoencoder parameters")
    if params.get("pretrained"):
        path = Path(params["pretrained"])
        VideoAutoencoder.from_pretrained(path)  # fail here, not in stage 3, if the directory is wrong
        logger.info("autoencoder: using the pretrained VAE at %s (no fitting)", path)
        manifest = {"type": "pretrained", "from_pretrained": str(path)}
        if params.get("micro_batch_size"):
            manifest["micro_batch_size"] = int(params["micro_batch_size"])
        return manifest, {"fitted": 0.0}
    torch.manual_seed(int(params.get("seed", 0)))
    frames = training_frames(clips, params)
    vae = VideoAutoencoder.tiny(seed=int(params.get("seed", 0)), arch=str(params.get("arch", "taesd")))
    history = fit_autoencoder(vae, frames, **fit_options(params))
    with torch.no_grad():
        sample = frames[: min(16, len(frames))].permute(1, 0, 2, 3)[None]  # [1, 3, T, H, W]
        recon = vae.decode(vae.encode(sample), size=tuple(sample.shape[-2:]))
        psnr = float(10 * torch.log10(4.0 / (recon - sample).pow(2).mean().clamp_min(1e-10)))
    out_dir = Path(params.get("out_dir", "data/06_models/vae"))
    vae.save_pretrained(out_dir)
    metrics = {"fitted": 1.0, "final_loss": float(history[-1]), "first_loss": float(history[0]),
               "recon_psnr_db": psnr, "scale_factor": float(vae.scale_factor), "num_frames": float(len(frames))}
    (out_dir / "fit_metrics.json").write_text(json.dumps(metrics, indent=2))
    manifest = {"type": "pretrained", "from_pretrained": str(out_dir)}
    if params.get("micro_batch_size"):
        manifest["micro_batch_size"] = int(params["micro_batch_size"])
    return manifest, metrics
