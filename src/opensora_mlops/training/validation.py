"""Held-out validation loss and training-time sample videos.

Validation loss uses fixed timesteps and fixed noise per held-out clip, so two models (or the same
model before and after a stage) are compared on exactly the same draws: a falling number is
learning, not luck. Beside the objective's own loss it reports the x̂_0 error: an ε loss can look
healthy while the clean clip the model implies is worse than predicting zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from opensora_mlops.training.latents import LatentCache

DEFAULT_VAL_TIMESTEPS = (50, 250, 500, 750, 950)


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    cache: LatentCache,
    timesteps: Sequence[int] = DEFAULT_VAL_TIMESTEPS,
    seed: int = 0,
    scheduler: Mapping[str, Any] | None = None,
    batch_size: int = 8,
) -> dict[str, float]:
    """Mean loss, mean-channel MSE and x̂_0 MSE over every held-out clip × every fixed timestep.

    ``scheduler`` is the training scheduler's config (default: 1.1's ε IDDPM); timesteps are on the
    model's 0..T scale for every scheduler type.
    """
    from opensora_mlops.diffusion import build_scheduler

    if len(cache) == 0:
        raise ValueError(f"validation cache {cache.directory} is empty")
    diffusion = build_scheduler(scheduler)
    num_timesteps = diffusion.num_timesteps
    bad = [t for t in timesteps if not 0 <= int(t) < num_timesteps]
    if bad:
        raise ValueError(f"validation timesteps must be in [0, {num_timesteps}), got {bad}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals = {"loss": 0.0, "mse": 0.0, "x0_mse": 0.0}
    count = 0
    try:
        for _bucket, rows in cache.index.groupby("bucket_id", sort=True).indices.items():
            for start in range(0, len(rows), batch_size):
                chunk = [int(r) for r in rows[start : start + batch_size]]
                batch = cache.get(chunk)
                x = batch["x"].to(device)
                kwargs = {k: v.to(device) for k, v in batch.items() if k != "x"}
                for t_value in timesteps:
                    # the noise of (clip, timestep) depends only on the seed, the row and t
                    noise = torch.stack([
                        torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(
                            int(seed) * 1_000_003 + r * 1009 + int(t_value)))
                        for r in chunk
                    ]).to(device)  # fmt: skip
                    t = torch.full((x.shape[0],), int(t_value), dtype=torch.long, device=device)
                    out = diffusion.training_losses(model, x, t, kwargs, noise=noise)
                    totals["loss"] += float(out["loss"].sum())
                    totals["mse"] += float(out["mse"].sum())
                    totals["x0_mse"] += float(out["x0_mse"].sum())
                    count += x.shape[0]
    finally:
        model.train(was_training)
    return {"val_loss": totals["loss"] / count, "val_mse": totals["mse"] / count,
            "val_x0_mse": totals["x0_mse"] / count, "val_count": float(count)}


def latents_to_frames(video: torch.Tensor) -> np.ndarray:
    """Decoded video [3, T, H, W] in [-1, 1] -> frames (T, H, W, 3) uint8."""
    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).cpu().numpy()


@torch.no_grad()
def sample_video(
    model: torch.nn.Module,
    vae: Any,
    text_encoder: Any,
    prompt: str,
    num_frames: int,
    height: int,
    width: int,
    fps: float = 24.0,
    steps: int = 10,
    cfg_scale: float = 7.0,
    seed: int = 0,
    scheduler: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Generate one short clip with the training scheduler's sampler + VAE decode: frames (T, H, W, 3) uint8."""
    from opensora_mlops.diffusion import build_scheduler

    diffusion = build_scheduler(scheduler, steps=int(steps), cfg_scale=float(cfg_scale))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        f = int(vae.downsample_factor)
        shape = (1, int(vae.latent_channels), int(num_frames), math.ceil(height / f), math.ceil(width / f))
        generator = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(shape, generator=generator).to(device)
        y, y_mask = text_encoder.encode([prompt])
        y_null = model.null_text(1)
        kwargs = {
            "fps": torch.tensor([float(fps)]),
            "height": torch.tensor([float(height)]),
            "width": torch.tensor([float(width)]),
            "ar": torch.tensor([float(height) / float(width)]),
            "num_frames": torch.tensor([float(num_frames)]),
        }
        latents = diffusion.sample(model, noise, y.to(device), y_mask.to(device), y_null, kwargs, progress=False,
                                   generator=generator)
        video = vae.decode(latents.float().cpu(), size=(int(height), int(width)))
    finally:
        model.train(was_training)
    return latents_to_frames(video[0])


class GifSampler:
    """Callable ``(model, step) -> path``: writes ``<out_dir>/step_<n>.gif`` for the trainer.

    The VAE and the text encoder load on the first call only (they are unused when sampling is off).
    """

    def __init__(self, out_dir: str | Path, vae_cfg: dict[str, Any], text_encoder_cfg: dict[str, Any],
                 sample_cfg: dict[str, Any], scheduler: Mapping[str, Any] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.scheduler = dict(scheduler) if scheduler is not None else None
        self.vae_cfg = dict(vae_cfg)
        self.text_encoder_cfg = dict(text_encoder_cfg)
        self.sample_cfg = dict(sample_cfg)
        self._vae = None
        self._text_encoder = None

    def _load(self) -> None:
        from opensora_mlops.models.text_encoder import build_text_encoder
        from opensora_mlops.training.components import build_vae

        if self._vae is None:
            self._vae = build_vae(self.vae_cfg)
        if self._text_encoder is None:
            self._text_encoder = build_text_encoder(self.text_encoder_cfg)

    def __call__(self, model: torch.nn.Module, step: int) -> Path:
        from opensora_mlops.data.video_io import write_gif

        self._load()
        s = self.sample_cfg
        frames = sample_video(
            model, self._vae, self._text_encoder, s.get("prompt", "a red square moving to the right"),
            int(s.get("num_frames", 4)), int(s.get("height", 144)), int(s.get("width", 256)),
            fps=float(s.get("fps", 24.0)), steps=int(s.get("steps", 10)), cfg_scale=float(s.get("cfg_scale", 7.0)),
            seed=int(s.get("seed", 0)), scheduler=self.scheduler,
        )  # fmt: skip
        return write_gif(self.out_dir / f"step_{step:08d}.gif", frames, float(s.get("fps", 8.0)))
