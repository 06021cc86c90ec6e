"""Rectified flow as Open-Sora 1.2 trains ST-DiT models: straight paths, logit-normal times, Euler sampling.

The path from data to noise is a straight line, ``x_σ = (1 - σ) x_0 + σ ε`` with ``σ = t / T`` in
[0, 1]; the network regresses the constant velocity ``u = ε - x_0`` along it and is conditioned on
``t = σ T`` (the same 0..1000 scale as IDDPM, so one timestep embedder serves both). Training draws σ
from a logit-normal distribution (``sigmoid(N(0, 1))``), which puts most of the weight on the middle of
the path where the prediction is hardest; ``timestep_shift`` > 1 moves the draws and the sampling grid
towards noise, as 1.2 does for large resolutions. Sampling integrates ``dx/dσ = u`` with Euler steps
from σ = 1 to 0 on a uniform grid.

x̂_0 = x_σ - σ û, so an error in û costs at most the same error in x̂_0 at every σ (ε-prediction
multiplies it by up to 156 at the end of the chain).

Frame masks follow :mod:`opensora_mlops.diffusion.iddpm`: in training, conditioned frames (``x_mask``
False) enter clean (σ = 0) and are excluded from the loss; in sampling a mask value of 1 generates the
frame, 0 keeps ``x_cond``, and an edit ratio r in (0, 1) holds ``x_cond`` until step floor(r S), where
the reference is moved to that point of its path with fresh noise and then integrated like the rest.

The network's output has ``2 C`` channels (ST-DiT-2's learned-variance layout); the flow uses the first
``C`` and ignores the rest, so the released model code trains unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from tqdm.auto import tqdm

from opensora_mlops.config import ConfigError, check_keys
from opensora_mlops.diffusion.gaussian_diffusion import (
    check_values,
    foreground_weights,
    masked_mean,
    randn_like,
)
from opensora_mlops.diffusion.iddpm import (
    ModelFn,
    _check_bool_frame_mask,
    check_foreground_weight,
    conditioning_start_steps,
    guided_output,
)


class RectifiedFlow:
    """Rectified-flow training loss and Euler sampler with classifier-free guidance.

    Args:
        num_timesteps: the model's timestep scale T (the network sees ``σ T``); 1000 as IDDPM.
        num_sampling_steps: Euler steps from noise to data.
        cfg_scale: classifier-free guidance scale (1.0 = the conditional model alone).
        cfg_channel: guidance acts on velocity channels ``[0, cfg_channel)``; None = all of them.
        timestep_shift: s >= 1 maps σ -> s σ / (1 + (s - 1) σ) for training draws and the sampling
            grid (1 = no shift).
        logit_mean, logit_std: the normal distribution whose sigmoid gives the training σ.
        foreground_weight: training only: weight of the subject positions in the velocity MSE, as
            :class:`opensora_mlops.diffusion.IDDPM`'s (0 = the plain mean).
    """

    type_name = "rflow"
    prediction = "velocity"
    config_keys = ("num_timesteps", "num_sampling_steps", "cfg_scale", "cfg_channel", "timestep_shift",
                   "logit_mean", "logit_std", "foreground_weight")

    def __init__(
        self,
        num_timesteps: int = 1000,
        num_sampling_steps: int = 30,
        cfg_scale: float = 7.0,
        cfg_channel: int | None = None,
        timestep_shift: float = 1.0,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        foreground_weight: float = 0.0,
    ):
        for name, value, low in (("num_timesteps", num_timesteps, 2), ("num_sampling_steps", num_sampling_steps, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
        for name, value in (("cfg_scale", cfg_scale), ("timestep_shift", timestep_shift), ("logit_mean", logit_mean),
                            ("logit_std", logit_std)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if timestep_shift < 1.0:
            raise ConfigError(f"timestep_shift must be >= 1, got {timestep_shift}")
        if logit_std <= 0:
            raise ConfigError(f"logit_std must be > 0, got {logit_std}")
        if cfg_channel is not None and (
            not isinstance(cfg_channel, int) or isinstance(cfg_channel, bool) or cfg_channel < 1
        ):
            raise ConfigError(f"cfg_channel must be a positive int or None, got {cfg_channel!r}")
        self.foreground_weight = check_foreground_weight(foreground_weight)
        self.num_timesteps = num_timesteps
        self.num_sampling_steps = num_sampling_steps
        self.cfg_scale = float(cfg_scale)
        self.cfg_channel = cfg_channel
        self.timestep_shift = float(timestep_shift)
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> RectifiedFlow:
        values = dict(config or {})
        kind = values.pop("type", cls.type_name)
        if kind != cls.type_name:
            raise ConfigError(f"scheduler type must be {cls.type_name!r}, got {kind!r}")
        check_keys(values, cls.config_keys, "scheduler config")
        return cls(**values)

    def to_config(self) -> dict[str, Any]:
        return {"type": self.type_name, **{k: getattr(self, k) for k in self.config_keys}}

    def with_sampling(self, steps: int | None = None, cfg_scale: float | None = None) -> RectifiedFlow:
        config = self.to_config()
        config.pop("type")
        if steps is not None:
            config["num_sampling_steps"] = int(steps)
        if cfg_scale is not None:
            config["cfg_scale"] = float(cfg_scale)
        return RectifiedFlow(**config)

    def __repr__(self) -> str:
        return (f"RectifiedFlow(num_timesteps={self.num_timesteps}, steps={self.num_sampling_steps}, "
                f"cfg_scale={self.cfg_scale}, cfg_channel={self.cfg_channel}, shift={self.timestep_shift})")

    # ------------------------------------------------------------------ the path
    def shift(self, sigma: torch.Tensor) -> torch.Tensor:
        s = self.timestep_shift
        return sigma if s == 1.0 else s * sigma / (1.0 + (s - 1.0) * sigma)

    def sigma_of(self, t: torch.Tensor) -> torch.Tensor:
        """σ in [0, 1] of model timesteps ``t`` in [0, T] (ints from validation, floats from training)."""
        sigma = t.double() / self.num_timesteps
        if check_values() and bool(((sigma < 0) | (sigma > 1)).any()):
            raise ValueError(f"timesteps must lie in [0, {self.num_timesteps}], got {t.min().item()}..{t.max().item()}")
        return sigma

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """What the network is conditioned on: the float timestep itself (σ T)."""
        return t.float()

    def sample_timesteps(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Logit-normal training timesteps (shifted), float [batch] in (0, T)."""
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        gen_device = generator.device if generator is not None else "cpu"
        z = torch.randn(batch, generator=generator, device=gen_device, dtype=torch.float64)
        sigma = self.shift(torch.sigmoid(self.logit_mean + self.logit_std * z))
        t = (sigma * self.num_timesteps).float()
        return t.to(device) if device is not None else t

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """The point of the straight path at timestep ``t``: (1 - σ) x_0 + σ ε."""
        if noise is None:
            noise = randn_like(x_start, generator)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x_start {tuple(x_start.shape)}")
        sigma = self.sigma_of(t).to(device=x_start.device, dtype=torch.float32).view(-1, *([1] * (x_start.dim() - 1)))
        return ((1.0 - sigma) * x_start.float() + sigma * noise.float()).to(x_start.dtype)

    def predict_xstart(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x̂_0 = x_σ - σ û."""
        channels = x_t.shape[1]
        sigma = self.sigma_of(t).to(device=x_t.device, dtype=torch.float32).view(-1, *([1] * (x_t.dim() - 1)))
        return x_t.float() - sigma * model_output[:, :channels].float()

    # ------------------------------------------------------------------ training
    def training_losses(
        self,
        model: ModelFn,
        x_start: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: Mapping[str, Any] | None = None,
        x_mask: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Velocity MSE per sample over the noised frames: ``{"loss", "mse", "x0_mse"}``, each [B]."""
        kwargs = dict(model_kwargs or {})
        if "x_mask" in kwargs:
            raise ValueError("pass the frame mask as training_losses(x_mask=...), not inside model_kwargs")
        if x_start.dim() < 3:
            raise ValueError(f"x_start must be a batch of latents [B, C, ...], got shape {tuple(x_start.shape)}")
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        if x_mask is not None:
            x_mask = _check_bool_frame_mask(x_mask, x_start)
            x_t = torch.where(x_mask[:, None, :, None, None], x_t, x_start)  # conditioned frames: clean
            kwargs["x_mask"] = x_mask
        out = model(x_t, self.model_timesteps(t), **kwargs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model must return a tensor, got {type(out).__name__}")
        channels = x_start.shape[1]
        if out.dim() != x_start.dim() or out.shape[0] != x_start.shape[0] or out.shape[1] < channels \
                or out.shape[2:] != x_start.shape[2:]:
            raise ValueError(f"the model must output at least {channels} velocity channels shaped like the "
                             f"latents {tuple(x_start.shape)}, got {tuple(out.shape)}")
        velocity = out[:, :channels].float()
        target = noise.float() - x_start.float()
        weights = foreground_weights(x_start, self.foreground_weight) if self.foreground_weight else None
        mse = masked_mean((velocity - target).pow(2), x_mask, weights)
        with torch.no_grad():
            x0_mse = masked_mean((self.predict_xstart(velocity.detach(), x_t, t) - x_start.float()).pow(2), x_mask)
        return {"loss": mse, "mse": mse, "x0_mse": x0_mse}

    # ------------------------------------------------------------------ sampling
    def guided_output(self, model: ModelFn, x: torch.Tensor, t_model: torch.Tensor, y: torch.Tensor,
                      y_mask: torch.Tensor | None, y_null: torch.Tensor,
                      model_kwargs: Mapping[str, Any] | None = None,
                      x_mask: torch.Tensor | None = None) -> torch.Tensor:
        return guided_output(model, x, t_model, y, y_mask, y_null, self.cfg_scale, self.cfg_channel,
                             model_kwargs, x_mask)

    def sigma_grid(self) -> torch.Tensor:
        """σ at the start of each Euler step, float64 [S + 1], from 1 down to 0 (shifted)."""
        return self.shift(torch.linspace(1.0, 0.0, self.num_sampling_steps + 1, dtype=torch.float64))

    @torch.no_grad()
    def sample(
        self,
        model: ModelFn,
        noise: torch.Tensor,
        y: torch.Tensor,
        y_mask: torch.Tensor | None,
        y_null: torch.Tensor,
        model_kwargs: Mapping[str, Any] | None = None,
        x_cond: torch.Tensor | None = None,
        x_mask: torch.Tensor | None = None,
        progress: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Euler integration from noise (σ = 1) to data (σ = 0) with CFG; returns x_0 latents [B, C, T, H, W].

        ``x_mask`` / ``x_cond`` as in :meth:`opensora_mlops.diffusion.IDDPM.sample`.
        """
        if noise.dim() != 5:
            raise ValueError(f"noise must be [B, C, T, H, W], got shape {tuple(noise.shape)}")
        batch, channels, frames = noise.shape[:3]
        steps = self.num_sampling_steps
        start, x_cond = conditioning_start_steps(noise, x_cond, x_mask, steps)
        grid = self.sigma_grid()
        x = noise.clone().float()
        frames_view = (batch, 1, frames, 1, 1)
        # step index i runs S-1 .. 0; step i goes from σ = grid[S-1-i] to grid[S-i]
        for i in tqdm(range(steps - 1, -1, -1), desc="sampling", disable=not progress, leave=False):
            sigma_now, sigma_next = float(grid[steps - 1 - i]), float(grid[steps - i])
            t = torch.full((batch,), sigma_now * self.num_timesteps, dtype=torch.float32, device=noise.device)
            model_x_mask = None
            if start is not None:
                entering = (start == i).view(frames_view)
                if bool(entering.any()):
                    renoised = self.q_sample(x_cond.float(), t, noise=randn_like(x_cond.float(), generator))
                    x = torch.where(entering, renoised, x)
                active = start >= i
                x = torch.where(active.view(frames_view), x, x_cond.float())
                model_x_mask = active
            out = self.guided_output(model, x.to(noise.dtype), self.model_timesteps(t), y, y_mask, y_null,
                                     model_kwargs, model_x_mask)
            x_next = x + (sigma_next - sigma_now) * out[:, :channels].float()
            x = x_next if start is None else torch.where(model_x_mask.view(frames_view), x_next, x_cond.float())
        return x.to(noise.dtype)
