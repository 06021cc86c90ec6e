"""Video autoencoder: a 2D ``diffusers.AutoencoderKL`` applied frame by frame to videos.

Open-Sora 1.1 compresses each frame independently with Stability's ``sd-vae-ft-ema`` (8× spatial
downsampling, 4 latent channels, latents scaled by 0.18215); time is not compressed.  This module
wraps any local ``AutoencoderKL`` the same way:

* ``encode(video [B, 3, T, H, W] in [-1, 1]) -> latents [B, C, T, ceil(H/f), ceil(W/f)]``: the
  posterior *mean* times ``scale_factor`` (a sample from the posterior with ``sample=True``).
* ``decode(latents, size=None) -> video in [-1, 1]``.

Frames go through the 2D model in micro-batches of ``micro_batch_size`` frames so that long videos fit
in memory; the result does not depend on the micro-batch size.

Sizes that are not multiples of the downsample factor ``f``: ``encode`` pads the bottom and right edges
by replicating the last row/column up to the next multiple of ``f`` (the conv stack would otherwise
silently floor the size, losing up to ``f - 1`` pixels), so the latent grid is ``ceil(H/f)`` ×
``ceil(W/f)``.  ``decode`` returns ``f``× the latent size, or crops the bottom/right back to
``size=(H, W)`` when given.  ``get_latent_size`` follows the same rule.

For the embedded default the platform trains its own small autoencoder: :meth:`VideoAutoencoder.tiny`
builds one with SD's geometry (8×, 4 channels) at a fraction of the width, and :func:`fit_autoencoder`
trains it on video frames (L1 reconstruction + a small KL term) and calibrates ``scale_factor`` so the
scaled latents have unit standard deviation, as Stability did to obtain 0.18215.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VideoAutoencoder", "fit_autoencoder", "TINY_AUTOENCODER_CONFIG"]

# Four resolution levels -> three 2× downsamples -> factor 8 and 4 latent channels, as in SD's VAE, so
# the embedded default and production share latent geometry; widths are cut for CPU speed.
TINY_AUTOENCODER_CONFIG: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [32, 64, 64, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 64,
    # Uncalibrated: fit_autoencoder() replaces it with 1 / std(latent).
    "scaling_factor": 1.0,
}


class VideoAutoencoder(nn.Module):
    """Per-frame ``AutoencoderKL`` for videos ``[B, 3, T, H, W]`` (see the module docstring)."""

    def __init__(self, autoencoder, micro_batch_size: int | None = None,
                 scale_factor: float | None = None) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        if not isinstance(autoencoder, AutoencoderKL):
            raise TypeError(f"expected a diffusers AutoencoderKL, got {type(autoencoder).__name__}")
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 or None, got {micro_batch_size}")
        self.module = autoencoder
        self.micro_batch_size = micro_batch_size
        if scale_factor is not None:
            self.scale_factor = scale_factor

    # ---- geometry ------------------------------------------------------------------------------
    @property
    def scale_factor(self) -> float:
        """Latent multiplier; stored in the AutoencoderKL config (``scaling_factor``) so it is saved."""
        return float(self.module.config.scaling_factor)

    @scale_factor.setter
    def scale_factor(self, value: float) -> None:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"scale_factor must be a positive finite number, got {value}")
        self.module.register_to_config(scaling_factor=float(value))

    @property
    def shift_factor(self) -> float:
        shift = getattr(self.module.config, "shift_factor", None)
        return float(shift) if shift is not None else 0.0

    @property
    def latent_channels(self) -> int:
        return int(self.module.config.latent_channels)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.module.config.block_out_channels) - 1)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """Compression per axis (T, H, W): time is not compressed."""
        f = self.downsample_factor
        return (1, f, f)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def get_latent_size(self, input_size: tuple[int | None, int | None, int | None]) -> tuple:
        """Latent (T, h, w) for a video of size (T, H, W); ``None`` entries stay ``None``."""
        if len(input_size) != 3:
            raise ValueError(f"input_size must be (T, H, W), got {input_size!r}")
        out = []
        for value, factor in zip(input_size, self.patch_size, strict=True):
            if value is None:
                out.append(None)
                continue
            if value < 1:
                raise ValueError(f"sizes must be positive, got {input_size!r}")
            out.append(math.ceil(value / factor))
        return tuple(out)

    # ---- per-frame core (differentiable; used by fit_autoencoder) ------------------------------
    def _pad(self, frames: torch.Tensor) -> torch.Tensor:
        f = self.downsample_factor
        h, w = frames.shape[-2:]
        pad_h, pad_w = (-h) % f, (-w) % f
        if pad_h or pad_w:
            frames = F.pad(frames, (0, pad_w, 0, pad_h), mode="replicate")
        return frames

    def posterior(self, frames: torch.Tensor):
        """The diagonal Gaussian posterior of frames ``[N, 3, H, W]`` (padded to a multiple of f)."""
        return self.module.encode(self._pad(frames)).latent_dist

    @staticmethod
    def _check_video(video: torch.Tensor, channels: int, what: str) -> None:
        if video.ndim != 5:
            raise ValueError(f"{what} must be [B, C, T, H, W], got shape {tuple(video.shape)}")
        if video.shape[1] != channels:
            raise ValueError(f"{what} must have {channels} channels, got shape {tuple(video.shape)}")

    def _chunks(self, n: int) -> Iterator[slice]:
        step = self.micro_batch_size or n
        for start in range(0, n, step):
            yield slice(start, min(n, start + step))

    # ---- public API ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, video: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Video ``[B, 3, T, H, W]`` in [-1, 1] -> scaled latents ``[B, C, T, ceil(H/f), ceil(W/f)]``.

        Returns the posterior mean unless ``sample=True`` (then one draw, reproducible with
        ``generator``).  Output is float32.
        """
        self._check_video(video, 3, "video")
        b, c, t, h, w = video.shape
        frames = video.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w).to(self.device, self.dtype)
        latents = []
        for part in self._chunks(b * t):
            dist = self.posterior(frames[part])
            z = dist.sample(generator=generator) if sample else dist.mean
            latents.append(z.float())
        z = (torch.cat(latents) - self.shift_factor) * self.scale_factor
        _, lc, lh, lw = z.shape
        return z.reshape(b, t, lc, lh, lw).permute(0, 2, 1, 3, 4).contiguous()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Scaled latents ``[B, C, T, h, w]`` -> video ``[B, 3, T, H, W]`` in [-1, 1] (float32).

        ``size=(H, W)`` crops the bottom/right padding that :meth:`encode` added for sizes that are
        not multiples of the downsample factor; without it the output is ``f·h`` × ``f·w``.
        """
        self._check_video(latents, self.latent_channels, "latents")
        b, c, t, h, w = latents.shape
        f = self.downsample_factor
        if size is not None:
            out_h, out_w = size
            if not (0 < out_h <= h * f and 0 < out_w <= w * f and out_h > (h - 1) * f
                    and out_w > (w - 1) * f):
                raise ValueError(f"size {tuple(size)} does not match latents of {h}×{w} (factor {f})")
        z = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        z = (z / self.scale_factor + self.shift_factor).to(self.device, self.dtype)
        frames = torch.cat([self.module.decode(z[part]).sample.float() for part in self._chunks(b * t)])
        if size is not None:
            frames = frames[..., : size[0], : size[1]]
        frames = frames.clamp(-1.0, 1.0)
        _, oc, oh, ow = frames.shape
        return frames.reshape(b, t, oc, oh, ow).permute(0, 2, 1, 3, 4).contiguous()

    # ---- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the AutoencoderKL (safetensors + config.json, scale factor included)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.module.save_pretrained(str(directory), safe_serialization=True)
        return directory

    @classmethod
    def from_pretrained(cls, path: str | Path, micro_batch_size: int | None = None,
                        scale_factor: float | None = None, subfolder: str | None = None,
                        device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> VideoAutoencoder:
        """Load any local ``AutoencoderKL`` directory (e.g. sd-vae-ft-ema); nothing is downloaded.

        ``scale_factor`` overrides the one in the directory's config; ``subfolder`` selects e.g. the
        ``vae`` folder of a full diffusers pipeline.
        """
        from diffusers import AutoencoderKL

        path = Path(path)
        root = path / subfolder if subfolder else path
        if not root.is_dir():
            raise FileNotFoundError(f"VAE directory not found: {root}")
        if not (root / "config.json").is_file():
            raise FileNotFoundError(
                f"{root} is not an AutoencoderKL directory: it has no config.json "
                "(expected the output of AutoencoderKL.save_pretrained)"
            )
        module = AutoencoderKL.from_pretrained(str(root), local_files_only=True, torch_dtype=dtype)
        module.to(device).eval().requires_grad_(False)
        return cls(module, micro_batch_size=micro_batch_size, scale_factor=scale_factor)

    @classmethod
    def tiny(cls, micro_batch_size: int | None = None, seed: int = 0, **overrides) -> VideoAutoencoder:
        """An untrained small AutoencoderKL with SD's geometry (8×, 4 channels) for the embedded default.

        Keyword ``overrides`` replace entries of :data:`TINY_AUTOENCODER_CONFIG`.
        """
        from diffusers import AutoencoderKL

        from opensora_mlops.config import check_keys

        check_keys(overrides, TINY_AUTOENCODER_CONFIG, "tiny autoencoder overrides")
        config = {**TINY_AUTOENCODER_CONFIG, **overrides}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = AutoencoderKL(**config)
        module.eval().requires_grad_(False)
        return cls(module, micro_batch_size=micro_batch_size)


def _frames_of(batch: torch.Tensor) -> torch.Tensor:
    """Accept frames ``[N, 3, H, W]`` or videos ``[B, 3, T, H, W]``; return frames ``[N, 3, H, W]``."""
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"training data must be torch tensors, got {type(batch).__name__}")
    if batch.ndim == 5:
        b, c, t, h, w = batch.shape
        batch = batch.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"training data must be [N, 3, H, W] frames or [B, 3, T, H, W] videos, "
                         f"got shape {tuple(batch.shape)}")
    return batch


def _batches(data: torch.Tensor | Iterable[torch.Tensor], batch_size: int,
             generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless stream of frame batches: random draws from a tensor, or passes over an iterable."""
    if isinstance(data, torch.Tensor):
        pool = _frames_of(data)
        if pool.shape[0] == 0:
            raise ValueError("no frames to train on")
        while True:
            idx = torch.randint(pool.shape[0], (min(batch_size, pool.shape[0]),), generator=generator)
            yield pool[idx]
    reiterable = iter(data) is not data
    while True:
        produced = False
        for item in data:
            frames = _frames_of(item)
            for start in range(0, frames.shape[0], batch_size):
                produced = True
                yield frames[start : start + batch_size]
        if not produced:
            raise ValueError("the training data iterable yielded no frames")
        if not reiterable:
            return


def _random_crops(frames: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random ``size``×``size`` window per frame (the whole frame where it is smaller)."""
    h, w = frames.shape[-2:]
    ch, cw = min(size, h), min(size, w)
    tops = torch.randint(h - ch + 1, (frames.shape[0],), generator=generator).tolist()
    lefts = torch.randint(w - cw + 1, (frames.shape[0],), generator=generator).tolist()
    return torch.stack([f[:, top : top + ch, left : left + cw] for f, top, left in zip(frames, tops, lefts)])


def fit_autoencoder(
    vae: VideoAutoencoder,
    data: torch.Tensor | Iterable[torch.Tensor],
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 16,
    kl_weight: float = 1e-6,
    mse_weight: float = 1.0,
    seed: int = 0,
    calibrate_scale: bool = True,
    progress: bool = True,
    crop: int | None = None,
) -> list[float]:
    """Train ``vae``'s AutoencoderKL on video frames; returns the per-step loss history.

    ``data``: frames ``[N, 3, H, W]`` or videos ``[B, 3, T, H, W]`` in [-1, 1] (minibatches drawn at
    random), or an iterable of such tensors (consumed in order, restarted when exhausted if it is
    re-iterable, e.g. a list or a DataLoader).  Loss per step: ``L1 + mse_weight·MSE`` between frames
    and reconstructions of a posterior sample, plus ``kl_weight`` × the KL to N(0, I) per latent
    element (small, as in SD's VAE, so latents stay informative yet bounded).  AdamW, constant ``lr``.

    ``crop``: train on a fresh random ``crop``×``crop`` window of every frame at every step (the network
    is convolutional, so small windows train the same filters several times cheaper; drawing them anew
    each step lets every part of every frame, the small moving subjects included, be seen).

    With ``calibrate_scale`` the scale factor becomes 1 / std of the posterior means over up to 256
    training frames, so the diffusion model sees unit-variance latents.  The module is left in eval
    mode with gradients off.
    """
    from tqdm.auto import tqdm

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    module = vae.module
    module.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)
    history: list[float] = []
    calibration: list[torch.Tensor] = []
    stream = _batches(data, batch_size, generator)
    bar = tqdm(range(steps), desc="fit autoencoder", disable=not progress)
    try:
        for _ in bar:
            try:
                frames = next(stream)
            except StopIteration:
                raise ValueError(f"training data ran out after {len(history)} of {steps} steps "
                                 "(pass a re-iterable such as a list or DataLoader)") from None
            frames = frames.to(vae.device, vae.dtype)
            if sum(x.shape[0] for x in calibration) < 256:
                calibration.append(frames.detach()[:64])
            if crop:
                frames = _random_crops(frames, crop, generator)
            dist = vae.posterior(frames)
            z = dist.sample(generator=None)
            recon = module.decode(z).sample[..., : frames.shape[-2], : frames.shape[-1]]
            l1 = (recon - frames).abs().mean()
            mse = (recon - frames).pow(2).mean()
            kl = dist.kl().mean() / z[0].numel()
            loss = l1 + mse_weight * mse + kl_weight * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.append(float(loss.detach()))
            bar.set_postfix(loss=f"{history[-1]:.4f}")
    finally:
        module.eval().requires_grad_(False)
    if calibrate_scale:
        with torch.no_grad():
            means = torch.cat([vae.posterior(f).mean.float() for f in calibration])
        std = float((means - vae.shift_factor).std())
        if std > 0 and math.isfinite(std):
            vae.scale_factor = 1.0 / std
    return history
