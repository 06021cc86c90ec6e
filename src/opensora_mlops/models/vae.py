"""Video autoencoder: a 2D diffusers autoencoder applied frame by frame to videos.

Open-Sora 1.1 compresses each frame independently with Stability's ``sd-vae-ft-ema`` (8× spatial
downsampling, 4 latent channels, latents scaled by 0.18215); time is not compressed.  This module
wraps any local ``AutoencoderKL`` (or the deterministic ``AutoencoderTiny``) the same way:

* ``encode(video [B, 3, T, H, W] in [-1, 1]) -> latents [B, C, T, ceil(H/f), ceil(W/f)]``: the
  posterior *mean*, minus ``shift_factor``, times ``scale_factor`` (a sample from the posterior with
  ``sample=True``); an autoencoder the platform fitted instead normalises each channel by its own
  calibrated mean and std (``latent_stats.json`` beside its config).
* ``decode(latents, size=None) -> video in [-1, 1]``.

Frames go through the 2D model in micro-batches of ``micro_batch_size`` frames so that long videos fit
in memory; the result does not depend on the micro-batch size.

Sizes that are not multiples of the downsample factor ``f``: ``encode`` pads the bottom and right edges
by replicating the last row/column up to the next multiple of ``f`` (the conv stack would otherwise
silently floor the size, losing up to ``f - 1`` pixels), so the latent grid is ``ceil(H/f)`` ×
``ceil(W/f)``.  ``decode`` returns ``f``× the latent size, or crops the bottom/right back to
``size=(H, W)`` when given.  ``get_latent_size`` follows the same rule.

For the embedded default the platform trains its own small autoencoder: :meth:`VideoAutoencoder.tiny`
builds one with SD's geometry (8×, 4 channels) at a fraction of the width (by default the norm-free
TAESD layout, see :data:`TINY_AUTOENCODER_CONFIGS`), and :func:`fit_autoencoder` trains it on video
frames and calibrates the latent normalisation so every channel is zero-mean with unit standard
deviation (Stability calibrated one global scale, 0.18215).  The loss is L1 + MSE reconstruction, plus a
small KL term for AutoencoderKL; optionally subject pixels are weighted up (:func:`subject_weight_map`)
and image gradients compared (:func:`reconstruction_loss`).  The frames can include renders of the
synthetic corpus's whole vocabulary (:func:`vocabulary_frames`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VideoAutoencoder", "fit_autoencoder", "reconstruction_loss", "subject_weight_map", "vocabulary_frames",
           "bf16_is_fast", "TINY_AUTOENCODER_CONFIGS", "LATENT_STATS_FILE", "SUBJECT_THRESHOLD"]

#: Per-channel latent mean/std written beside config.json by save_pretrained when calibrated.
LATENT_STATS_FILE = "latent_stats.json"

# Two small autoencoders with SD's latent geometry (four resolution levels -> three 2x downsamples ->
# factor 8, 4 latent channels), so the embedded default and production share latent shapes; widths are
# cut for CPU speed.
#
# "taesd" (the default): diffusers' AutoencoderTiny, the TAESD architecture - plain conv + ReLU blocks,
# no normalisation layers, a deterministic latent.  "kl": a narrow AutoencoderKL like sd-vae-ft-ema.
# Measured on the bundled corpus (BENCHMARKS.md, "Embedded VAE"): the KL model's GroupNorm normalises every
# feature map over space, so a flat background or a flat-coloured shape gives nearly the same features
# whatever its colour; in a CPU-sized fit it learns brightness but not hue (reconstructed blue squares come
# back tan, navy backgrounds maroon), which caps what the diffusion model can learn about colour.  The
# norm-free TAESD layout keeps hue within the same few minutes.
TINY_AUTOENCODER_CONFIGS: dict[str, dict] = {
    "taesd": {
        "in_channels": 3,
        "out_channels": 3,
        "encoder_block_out_channels": [64, 64, 64, 64],
        "decoder_block_out_channels": [64, 64, 64, 64],
        # no residual block at full resolution (one conv in, one conv out there): 4-5x cheaper per
        # pixel, which buys more fitting steps in the same minutes
        "num_encoder_blocks": [0, 1, 1, 1],
        "num_decoder_blocks": [1, 1, 1, 0],
        "latent_channels": 4,
        "act_fn": "relu",
        "upsample_fn": "nearest",
        "upsampling_scaling_factor": 2,
        # Uncalibrated: fit_autoencoder() replaces them with the latents' mean and 1 / std.
        "scaling_factor": 1.0,
        "shift_factor": 0.0,
    },
    "kl": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [32, 64, 64, 64],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 64,
        "scaling_factor": 1.0,
        "shift_factor": 0.0,
    },
}


class _PointPosterior:
    """The posterior of a deterministic autoencoder (AutoencoderTiny): all mass on one latent."""

    def __init__(self, latents: torch.Tensor) -> None:
        self.mean = latents

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        return self.mean.new_zeros(self.mean.shape[0])


def _autoencoder_classes() -> dict[str, type]:
    from diffusers import AutoencoderKL, AutoencoderTiny

    return {"AutoencoderKL": AutoencoderKL, "AutoencoderTiny": AutoencoderTiny}


class VideoAutoencoder(nn.Module):
    """Per-frame ``AutoencoderKL`` / ``AutoencoderTiny`` for videos ``[B, 3, T, H, W]`` (module docstring)."""

    def __init__(self, autoencoder, micro_batch_size: int | None = None,
                 scale_factor: float | None = None) -> None:
        super().__init__()
        classes = tuple(_autoencoder_classes().values())
        if not isinstance(autoencoder, classes):
            raise TypeError(f"expected a diffusers AutoencoderKL or AutoencoderTiny, got {type(autoencoder).__name__}")
        if getattr(autoencoder.config, "upsampling_scaling_factor", 2) != 2:
            raise ValueError("AutoencoderTiny must upsample by 2 per level (upsampling_scaling_factor=2), or "
                             "decoding would not invert encoding's 2x per-level downsampling")
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 or None, got {micro_batch_size}")
        self.module = autoencoder
        self.micro_batch_size = micro_batch_size
        # per-channel latent statistics (calibrated by fit_autoencoder, saved as LATENT_STATS_FILE); when
        # set they replace the scalar shift/scale: z = (raw - mean_c) / std_c
        self.latent_mean: torch.Tensor | None = None
        self.latent_std: torch.Tensor | None = None
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
        self.latent_mean = self.latent_std = None  # an explicit scalar scale wins over per-channel stats

    def set_latent_stats(self, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor) -> None:
        """Normalise each latent channel by its own mean and std (see the module docstring)."""
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.numel() != self.latent_channels or std.numel() != self.latent_channels:
            raise ValueError(f"latent stats need {self.latent_channels} values each, got {mean.numel()} and "
                             f"{std.numel()}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError("latent stats must be finite with positive stds")
        self.latent_mean, self.latent_std = mean, std

    def _normalise(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw latents ``[N, C, h, w]`` -> the latents the diffusion model sees."""
        if self.latent_mean is None:
            return (raw - self.shift_factor) * self.scale_factor
        mean, std = (t.to(raw.device).view(1, -1, 1, 1) for t in (self.latent_mean, self.latent_std))
        return (raw - mean) / std

    def _denormalise(self, z: torch.Tensor) -> torch.Tensor:
        if self.latent_mean is None:
            return z / self.scale_factor + self.shift_factor
        mean, std = (t.to(z.device).view(1, -1, 1, 1) for t in (self.latent_mean, self.latent_std))
        return z * std + mean

    @property
    def shift_factor(self) -> float:
        """Latent offset removed before scaling (``(z - shift) * scale``), stored in the config too."""
        shift = getattr(self.module.config, "shift_factor", None)
        return float(shift) if shift is not None else 0.0

    @shift_factor.setter
    def shift_factor(self, value: float) -> None:
        if not math.isfinite(value):
            raise ValueError(f"shift_factor must be finite, got {value}")
        self.module.register_to_config(shift_factor=float(value))

    @property
    def deterministic(self) -> bool:
        """True for AutoencoderTiny (one latent per frame, no posterior variance, no KL term)."""
        return isinstance(self.module, _autoencoder_classes()["AutoencoderTiny"])

    @property
    def latent_channels(self) -> int:
        return int(self.module.config.latent_channels)

    @property
    def downsample_factor(self) -> int:
        config = self.module.config
        levels = config.encoder_block_out_channels if self.deterministic else config.block_out_channels
        return 2 ** (len(levels) - 1)

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
        """The posterior of frames ``[N, 3, H, W]`` (padded to a multiple of f): diagonal Gaussian for
        AutoencoderKL, a point mass for AutoencoderTiny.  Either has ``mean``, ``sample()`` and ``kl()``."""
        encoded = self.module.encode(self._pad(frames))
        return _PointPosterior(encoded.latents) if self.deterministic else encoded.latent_dist

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
        z = self._normalise(torch.cat(latents))
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
        z = self._denormalise(z).to(self.device, self.dtype)
        frames = torch.cat([self.module.decode(z[part]).sample.float() for part in self._chunks(b * t)])
        if size is not None:
            frames = frames[..., : size[0], : size[1]]
        frames = frames.clamp(-1.0, 1.0)
        _, oc, oh, ow = frames.shape
        return frames.reshape(b, t, oc, oh, ow).permute(0, 2, 1, 3, 4).contiguous()

    # ---- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the diffusers autoencoder (safetensors + config.json, scale and shift included) and, when
        calibrated, the per-channel latent statistics (``latent_stats.json``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.module.save_pretrained(str(directory), safe_serialization=True)
        stats = directory / LATENT_STATS_FILE
        if self.latent_mean is not None:
            stats.write_text(json.dumps({"mean": self.latent_mean.tolist(), "std": self.latent_std.tolist()},
                                        indent=2))
        elif stats.exists():
            stats.unlink()
        return directory

    @classmethod
    def from_pretrained(cls, path: str | Path, micro_batch_size: int | None = None,
                        scale_factor: float | None = None, subfolder: str | None = None,
                        device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> VideoAutoencoder:
        """Load a local ``AutoencoderKL`` (e.g. sd-vae-ft-ema) or ``AutoencoderTiny`` directory; nothing
        is downloaded.  The class comes from ``_class_name`` in its config.json.

        ``scale_factor`` overrides the one in the directory's config (and its per-channel
        ``latent_stats.json``, if any); ``subfolder`` selects e.g. the ``vae`` folder of a full diffusers
        pipeline.
        """
        path = Path(path)
        root = path / subfolder if subfolder else path
        if not root.is_dir():
            raise FileNotFoundError(f"VAE directory not found: {root}")
        config_path = root / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{root} is not an autoencoder directory: it has no config.json "
                "(expected the output of AutoencoderKL.save_pretrained or AutoencoderTiny.save_pretrained)"
            )
        try:
            class_name = json.loads(config_path.read_text()).get("_class_name", "AutoencoderKL")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise ValueError(f"{config_path} is not a JSON object: {exc}") from exc
        classes = _autoencoder_classes()
        if class_name not in classes:
            raise ValueError(f"{config_path} describes a {class_name}; supported: {', '.join(classes)}")
        module = classes[class_name].from_pretrained(str(root), local_files_only=True, torch_dtype=dtype)
        module.to(device).eval().requires_grad_(False)
        vae = cls(module, micro_batch_size=micro_batch_size)
        stats_path = root / LATENT_STATS_FILE
        if scale_factor is not None:
            vae.scale_factor = scale_factor
        elif stats_path.is_file():
            try:
                stats = json.loads(stats_path.read_text())
                vae.set_latent_stats(stats["mean"], stats["std"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{stats_path} is not valid latent statistics: {exc}") from exc
        return vae

    @classmethod
    def tiny(cls, micro_batch_size: int | None = None, seed: int = 0, arch: str = "taesd",
             **overrides) -> VideoAutoencoder:
        """An untrained small autoencoder with SD's geometry (8×, 4 channels) for the embedded default.

        ``arch``: "taesd" (AutoencoderTiny, the default) or "kl" (AutoencoderKL); see
        :data:`TINY_AUTOENCODER_CONFIGS` for why.  Keyword ``overrides`` replace entries of its config.
        """
        from opensora_mlops.config import ConfigError, check_keys

        if arch not in TINY_AUTOENCODER_CONFIGS:
            raise ConfigError(f"tiny autoencoder arch must be one of {sorted(TINY_AUTOENCODER_CONFIGS)}, got {arch!r}")
        base = TINY_AUTOENCODER_CONFIGS[arch]
        check_keys(overrides, base, "tiny autoencoder overrides")
        config = {**base, **overrides}
        module_class = _autoencoder_classes()["AutoencoderTiny" if arch == "taesd" else "AutoencoderKL"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = module_class(**config)
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


#: RGB distance (in [-1, 1] units: 60 of 255 levels, the prompt-adherence detector's threshold) beyond
#: which a pixel counts as subject rather than background in :func:`subject_weight_map`.
SUBJECT_THRESHOLD = 60.0 / 127.5


def _distance_from_background(frames: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]``: each pixel's RGB distance from its frame's median colour (the flat background).

    The median is taken over every 4th pixel of every 4th row: where the background covers most of the
    frame that is the same colour, at a sixteenth of the cost (it runs on every frame at every step)."""
    frames = frames.float()
    background = frames[..., ::4, ::4].flatten(2).median(dim=2).values[..., None, None]
    return (frames - background).pow(2).sum(1).sqrt()


def subject_weight_map(frames: torch.Tensor, subject_weight: float, margin: int = 2,
                       distance: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel loss weights ``[N, 1, H, W]`` for frames ``[N, 3, H, W]``: 1 on background,
    ``1 + subject_weight`` on the subject.

    The subject is what the prompt-adherence detector segments: pixels farther than
    :data:`SUBJECT_THRESHOLD` from the frame's median colour, grown by ``margin`` pixels so the band
    just outside the outline (where corners are won or lost) is weighted as well.  A flat frame is all
    background (weights 1).  ``distance``: :func:`_distance_from_background` of ``frames``, if already computed.
    """
    if not (math.isfinite(subject_weight) and subject_weight >= 0):
        raise ValueError(f"subject_weight must be a finite number >= 0, got {subject_weight}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    distance = _distance_from_background(frames) if distance is None else distance
    mask = (distance > SUBJECT_THRESHOLD).float()[:, None]
    if margin:
        mask = F.max_pool2d(mask, 2 * margin + 1, stride=1, padding=margin)
    return 1.0 + subject_weight * mask


def _window_origins(frames: torch.Tensor, ch: int, cw: int, generator: torch.Generator, content_bias: float,
                    distance: torch.Tensor | None = None) -> tuple[list[int], list[int]]:
    n, _, h, w = frames.shape
    tops = torch.randint(h - ch + 1, (n,), generator=generator)
    lefts = torch.randint(w - cw + 1, (n,), generator=generator)
    if content_bias > 0 and (ch < h or cw < w):
        biased = torch.rand(n, generator=generator) < content_bias
        if biased.any():
            chosen = _distance_from_background(frames[biased]) if distance is None else distance[biased]
            weight = chosen.flatten(1) + 1e-6  # flat frames: uniform
            centre = torch.multinomial(weight, 1, generator=generator)[:, 0]
            cy, cx = centre // w, centre % w
            tops[biased] = (cy - ch // 2).clamp(0, h - ch)
            lefts[biased] = (cx - cw // 2).clamp(0, w - cw)
    return tops.tolist(), lefts.tolist()


def _random_crops(frames: torch.Tensor, size: int, generator: torch.Generator, content_bias: float = 0.0,
                  *aligned: torch.Tensor, distance: torch.Tensor | None = None
                  ) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """One random ``size``×``size`` window per frame (the whole frame where it is smaller).

    With probability ``content_bias`` a window is centred (as far as the frame allows) on a pixel drawn
    in proportion to its distance from the frame's median colour, i.e. on content rather than on flat
    background; otherwise its position is uniform.  Tensors in ``aligned`` (``[N, *, H, W]``, e.g. loss
    weight maps) are cut at the same windows; then a tuple (frames' windows first) is returned.
    ``distance``: :func:`_distance_from_background` of ``frames``, if already computed.
    """
    n, _, h, w = frames.shape
    ch, cw = min(size, h), min(size, w)
    tops, lefts = _window_origins(frames, ch, cw, generator, content_bias, distance)

    def cut(tensor: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, top : top + ch, left : left + cw] for x, top, left in zip(tensor, tops, lefts)])

    if not aligned:
        return cut(frames)
    return (cut(frames), *(cut(t) for t in aligned))


def _image_gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal and vertical finite differences of ``[N, C, H, W]`` images."""
    return images[..., :, 1:] - images[..., :, :-1], images[..., 1:, :] - images[..., :-1, :]


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                        mse_weight: float = 1.0, edge_weight: float = 0.0) -> torch.Tensor:
    """``L1 + mse_weight·MSE (+ edge_weight·L1 of the image gradients)`` between ``[N, 3, H, W]`` images.

    With ``weights`` (``[N, 1, H, W]``, see :func:`subject_weight_map`) every term is a weighted mean over
    pixels; the gradient term weights each difference by the larger weight of its two pixels, so an
    outline counts as subject.  The gradient term compares edges, not colours: a blurred corner
    costs little in L1 (a few pixels of the wrong colour) but the whole step height in the gradient.
    """
    error = recon - target
    if weights is None:
        weights = torch.ones_like(error[:, :1])
    total = weights.sum() * error.shape[1]
    loss = (weights * error.abs()).sum() / total + mse_weight * (weights * error.pow(2)).sum() / total
    if edge_weight:
        for (grad_r, grad_t), w in zip(zip(_image_gradients(recon), _image_gradients(target), strict=True),
                                       _pair_max(weights), strict=True):
            loss = loss + edge_weight * (w * (grad_r - grad_t).abs()).sum() / (w.sum() * error.shape[1])
    return loss


def _pair_max(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights of horizontally / vertically adjacent pixel pairs (the larger of the two)."""
    return (torch.maximum(weights[..., :, 1:], weights[..., :, :-1]),
            torch.maximum(weights[..., 1:, :], weights[..., :-1, :]))


def vocabulary_frames(count: int, height: int, width: int, seed: int = 0,
                      size_range: tuple[float, float] | None = None) -> torch.Tensor:
    """``count`` still frames ``[N, 3, H, W]`` in [-1, 1] rendered like the synthetic corpus, cycling through
    every colour × shape × background of its vocabulary (so any ``count`` >= 84 shows each at least once).

    Each frame draws its subject's size as a fraction of the shorter side from ``size_range`` (by default
    the corpus's ``SHAPE_SIZE_RANGE``) and its centre anywhere in the frame, so some subjects are cut by
    the border as the corpus's wrapping ones are.  Curated clips cover only the combinations that some
    shot happened to draw; fitting on these too lets the autoencoder see every colour on every background
    (an unseen pair, e.g. cyan on gray, is what a short fit gets wrong).  Deterministic in ``seed``.
    """
    import itertools

    import numpy as np

    from opensora_mlops.curation import synthetic

    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if height < 8 or width < 8:
        raise ValueError(f"frames must be at least 8x8, got {height}x{width}")
    lo, hi = synthetic.SHAPE_SIZE_RANGE if size_range is None else size_range
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"size_range must be (min, max) fractions with 0 < min <= max <= 1, got {size_range}")
    combos = list(itertools.product(synthetic.COLOURS, synthetic.SHAPES, synthetic.BACKGROUNDS))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(combos))
    frames = np.empty((count, height, width, 3), dtype=np.uint8)
    for i in range(count):
        colour, shape, background = combos[order[i % len(combos)]]
        size = float(rng.uniform(lo, hi) * min(height, width))
        centre = (float(rng.uniform(0, width)), float(rng.uniform(0, height)))
        spec = synthetic.ShotSpec(colour, shape, background)
        frames[i] = synthetic.render_shot(spec, height, width, 1, size, centre)[0]
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


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
    crop_content_bias: float = 0.0,
    cosine_decay: bool = False,
    subject_weight: float = 0.0,
    edge_weight: float = 0.0,
    warmup_steps: int = 0,
    bf16: bool = False,
) -> list[float]:
    """Train ``vae``'s autoencoder on video frames; returns the per-step loss history.

    ``data``: frames ``[N, 3, H, W]`` or videos ``[B, 3, T, H, W]`` in [-1, 1] (minibatches drawn at
    random), or an iterable of such tensors (consumed in order, restarted when exhausted if it is
    re-iterable, e.g. a list or a DataLoader).  Loss per step (:func:`reconstruction_loss`):
    ``L1 + mse_weight·MSE + edge_weight·L1(image gradients)`` between frames and reconstructions of a
    posterior sample, each a mean over pixels weighted by :func:`subject_weight_map` (pixels of the
    subject count ``1 + subject_weight`` times), plus ``kl_weight`` × the KL to N(0, I) per latent
    element (small, as in SD's VAE, so latents stay informative yet bounded; zero for the deterministic
    AutoencoderTiny).  AdamW at constant ``lr``, or annealed to 0 over ``steps`` with ``cosine_decay``;
    ``warmup_steps`` ramp it up linearly from ``lr / warmup_steps`` first.  ``bf16``: run the forward
    and backward passes under bfloat16 autocast (weights, optimiser and loss stay float32); about 1.8x
    faster per step on CPUs with native bfloat16 (AVX512-BF16 or AMX, see :func:`bf16_is_fast`), much
    slower where it is emulated.

    ``crop``: train on a fresh random ``crop``×``crop`` window of every frame at every step (the network
    is convolutional, so small windows train the same filters several times cheaper; drawing them anew
    each step lets every part of every frame, the small moving subjects included, be seen).
    ``crop_content_bias``: the fraction of windows centred on content (pixels far from the frame's
    median colour) instead of placed uniformly; where subjects are small and backgrounds flat, uniform
    windows spend most of the fit on background.  The subject weights are computed on whole frames
    (their median colour is the background) and cut with the same windows.

    With ``calibrate_scale`` the latents are normalised per channel by the mean and std of the posterior
    means over up to 256 training frames, so the diffusion model sees zero-mean, unit-variance
    channels (a deterministic autoencoder has no prior pulling its latents to zero, and its channels
    settle at very different offsets and spreads); the scalar shift/scale factors get the global
    values.  The module is left in eval mode with gradients off.
    """
    from tqdm.auto import tqdm

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 <= crop_content_bias <= 1.0:
        raise ValueError(f"crop_content_bias must be in [0, 1], got {crop_content_bias}")
    if not (math.isfinite(subject_weight) and subject_weight >= 0):
        raise ValueError(f"subject_weight must be a finite number >= 0, got {subject_weight}")
    if not (math.isfinite(edge_weight) and edge_weight >= 0):
        raise ValueError(f"edge_weight must be a finite number >= 0, got {edge_weight}")
    if not 0 <= warmup_steps < steps:
        raise ValueError(f"warmup_steps must be in [0, steps), got {warmup_steps} for {steps} steps")
    generator = torch.Generator().manual_seed(seed)
    module = vae.module
    module.train().requires_grad_(True)
    # channels-last convolutions are ~1.4x faster on CPU (oneDNN); the results are the same numbers
    module.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(steps, warmup_steps, cosine_decay))
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
            # one background estimate per frame serves both the loss weights and the window placement
            distance = _distance_from_background(frames) if subject_weight or (crop and crop_content_bias) else None
            weights = subject_weight_map(frames, subject_weight, distance=distance) if subject_weight else None
            if crop:
                if weights is None:
                    frames = _random_crops(frames, crop, generator, crop_content_bias, distance=distance)
                else:
                    frames, weights = _random_crops(frames, crop, generator, crop_content_bias, weights,
                                                    distance=distance)
            frames = frames.contiguous(memory_format=torch.channels_last)
            with torch.autocast(vae.device.type, dtype=torch.bfloat16, enabled=bf16):
                dist = vae.posterior(frames)
                z = dist.sample(generator=None)
                recon = module.decode(z).sample[..., : frames.shape[-2], : frames.shape[-1]]
                kl = dist.kl().mean() / z[0].numel()
            recon, kl = recon.float(), kl.float()
            loss = (reconstruction_loss(recon, frames, weights, mse_weight=mse_weight, edge_weight=edge_weight)
                    + kl_weight * kl)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            history.append(float(loss.detach()))
            bar.set_postfix(loss=f"{history[-1]:.4f}")
    finally:
        module.eval().requires_grad_(False)
        module.to(memory_format=torch.contiguous_format)
    if calibrate_scale:
        with torch.no_grad():
            means = torch.cat([vae.posterior(f).mean.float() for f in calibration])
        shift, std = float(means.mean()), float(means.std())
        if std > 0 and math.isfinite(std) and math.isfinite(shift):
            vae.shift_factor = shift
            vae.scale_factor = 1.0 / std
        per_channel = means.transpose(0, 1).flatten(1)
        channel_mean, channel_std = per_channel.mean(1), per_channel.std(1)
        if torch.isfinite(channel_mean).all() and (channel_std > 0).all():
            vae.set_latent_stats(channel_mean, channel_std)
    return history


def bf16_is_fast() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles), so ``fit_autoencoder(bf16=True)``
    is a speed-up rather than a slow-down."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def _lr_factor(steps: int, warmup_steps: int, cosine_decay: bool):
    """The multiplier of the base lr at each step: linear warm-up, then constant or cosine to 0."""
    from opensora_mlops.training.lr_schedule import lr_at

    schedule = "cosine" if cosine_decay else "constant"
    return lambda step: lr_at(step, 1.0, warmup_steps, steps, schedule)
