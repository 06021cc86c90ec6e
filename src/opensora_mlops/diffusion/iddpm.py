"""IDDPM as Open-Sora 1.1 trains and samples ST-DiT-2: ε-prediction with learned-range variance
(``prediction="v"``: the same chain with v-prediction, the embedded default's choice).

Training (:meth:`IDDPM.training_losses`): noise frames at a random level ``t``; conditioned frames
(``x_mask`` False) are diffused to level 0 only (nearly clean, the same noise draw); the hybrid
MSE + VB loss averages over the noised frames only.

Sampling (:meth:`IDDPM.sample`): ancestral sampling over the respaced steps with classifier-free
guidance on a doubled batch ``[conditional; null caption]``. Guidance is applied to the first
``cfg_channel`` ε channels; the remaining ε channels and the variance channels come from the
conditional half.

Frame-mask convention in sampling (``x_mask`` argument of :meth:`IDDPM.sample`), per frame, with
``S`` the number of sampling steps and the steps indexed ``S-1`` (noisiest) down to ``0``:

* ``1`` (or bool True): generate the frame from the initial noise (every step).
* ``0`` (or bool False): a conditioned frame: it equals ``x_cond`` at every step and in the result,
  and the model sees it with ``x_mask`` False (t=0 modulation).
* ``r`` in (0, 1), the *edit ratio*: SDEdit-style regeneration of the reference. With
  ``k = floor(r * S)`` the frame holds ``x_cond`` while the step index is above ``k``; at step ``k``
  it is replaced by ``q_sample(x_cond, k)`` (the reference diffused to that level) and from then on
  it is denoised like a generated frame. Larger ``r`` = more of the trajectory regenerated = larger
  edits; ``r -> 1`` approaches free generation.

This is Open-Sora 1.1's semantics (its ``mask`` value is the edit ratio, not ``1 - ratio``) with two
deliberate differences: a frame with ratio exactly 0 is never touched (1.1 let the model re-denoise
it in the final step), and at the step where an edited frame is re-noised the model is told it is a
noised frame (1.1 still flagged it as conditioned for that one step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from opensora_mlops.config import ConfigError, check_keys
from opensora_mlops.diffusion.gaussian_diffusion import (
    BETA_SCHEDULES,
    PREDICTIONS,
    GaussianDiffusion,
    foreground_weights,
    randn_like,
)
from opensora_mlops.diffusion.respace import respaced_betas, space_timesteps

ModelFn = Callable[..., torch.Tensor]

_RESERVED_KWARGS = ("y", "mask", "x_mask")


def check_foreground_weight(value: Any) -> float:
    """A scheduler's ``foreground_weight``: a finite number >= 0 (ConfigError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"foreground_weight must be a finite number >= 0, got {value!r}")
    return float(value)


class IDDPM:
    """Linear-beta IDDPM with learned-range variance, respacing and classifier-free guidance.

    Args:
        num_timesteps: length of the training chain (1000 in Open-Sora).
        timestep_respacing: None or "" (all steps), an int or "N", "a,b,c" sections, or "ddimN".
            Training and sampling both run on the respaced chain; the model always receives the
            original timestep index.
        cfg_scale: classifier-free guidance scale (1.0 = the conditional model alone).
        cfg_channel: guidance acts on ε channels ``[0, cfg_channel)``; None = all ε channels.
        prediction: what the network's mean channels predict: ``"epsilon"`` (Open-Sora 1.1) or ``"v"``.
        foreground_weight: training only: the MSE term weights each latent position by
            1 + w x its distance from the frame's background
            (:func:`opensora_mlops.diffusion.gaussian_diffusion.foreground_weights`); 0 = the plain
            mean (Open-Sora 1.1).
        beta_schedule: ``"linear"`` (Open-Sora 1.1: 1e-4 -> 0.02) or ``"cosine"`` (improved diffusion's,
            for small latents; see :func:`opensora_mlops.diffusion.gaussian_diffusion.cosine_beta_schedule`).
    """

    type_name = "iddpm"
    config_keys = ("num_timesteps", "timestep_respacing", "cfg_scale", "cfg_channel", "prediction",
                   "foreground_weight", "beta_schedule")

    def __init__(
        self,
        num_timesteps: int = 1000,
        timestep_respacing: str | int | Sequence[int] | None = None,
        cfg_scale: float = 7.0,
        cfg_channel: int | None = 3,
        prediction: str = "epsilon",
        foreground_weight: float = 0.0,
        beta_schedule: str = "linear",
    ):
        if prediction not in PREDICTIONS:
            raise ConfigError(f"scheduler prediction must be one of {list(PREDICTIONS)}, got {prediction!r}")
        if not isinstance(num_timesteps, int) or isinstance(num_timesteps, bool) or num_timesteps < 2:
            raise ConfigError(f"num_timesteps must be an int >= 2, got {num_timesteps!r}")
        if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, int | float) or not math.isfinite(cfg_scale):
            raise ConfigError(f"cfg_scale must be a finite number, got {cfg_scale!r}")
        if cfg_channel is not None and (
            not isinstance(cfg_channel, int) or isinstance(cfg_channel, bool) or cfg_channel < 1
        ):
            raise ConfigError(f"cfg_channel must be a positive int or None, got {cfg_channel!r}")
        if beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(f"beta_schedule must be one of {list(BETA_SCHEDULES)}, got {beta_schedule!r}")
        self.foreground_weight = check_foreground_weight(foreground_weight)
        self.beta_schedule = beta_schedule
        self.num_timesteps = num_timesteps
        self.timestep_respacing = timestep_respacing
        self.cfg_scale = float(cfg_scale)
        self.cfg_channel = cfg_channel
        self.prediction = prediction

        self.base = GaussianDiffusion(BETA_SCHEDULES[beta_schedule](num_timesteps), prediction=prediction)
        self.timestep_map = torch.tensor(space_timesteps(num_timesteps, timestep_respacing), dtype=torch.long)
        if self.timestep_map.numel() < 2:
            raise ConfigError(
                f"timestep_respacing {timestep_respacing!r} keeps {self.timestep_map.numel()} step; need at least 2"
            )
        self.diffusion = GaussianDiffusion(respaced_betas(self.base.alphas_cumprod, self.timestep_map.tolist()),
                                           prediction=prediction)
        self._timestep_maps: dict[str, torch.Tensor] = {"cpu": self.timestep_map}

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> IDDPM:
        """Build from a config dict; unknown keys are a ConfigError (a ``type`` key must say iddpm)."""
        values = dict(config or {})
        kind = values.pop("type", "iddpm")
        if kind != cls.type_name:
            raise ConfigError(f"scheduler type must be {cls.type_name!r}, got {kind!r}")
        check_keys(values, cls.config_keys, "scheduler config")
        return cls(**values)

    def to_config(self) -> dict[str, Any]:
        """The JSON-able config that :func:`opensora_mlops.diffusion.build_scheduler` rebuilds this from."""
        respacing = self.timestep_respacing
        if respacing is not None and not isinstance(respacing, str | int):
            respacing = list(respacing)
        return {"type": self.type_name, "num_timesteps": self.num_timesteps, "timestep_respacing": respacing,
                "cfg_scale": self.cfg_scale, "cfg_channel": self.cfg_channel, "prediction": self.prediction,
                "foreground_weight": self.foreground_weight, "beta_schedule": self.beta_schedule}

    def with_sampling(self, steps: int | None = None, cfg_scale: float | None = None) -> IDDPM:
        """The same model parameterisation sampled with ``steps`` respaced steps and/or another guidance."""
        config = self.to_config()
        config.pop("type")
        if steps is not None:
            config["timestep_respacing"] = str(int(steps))
        if cfg_scale is not None:
            config["cfg_scale"] = float(cfg_scale)
        return IDDPM(**config)

    def predict_xstart(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x̂_0 implied by a network output at respaced index ``t`` (diagnostics, oracle checks)."""
        mean_output, _ = self.diffusion.split_model_output(model_output.float(), x_t)
        return self.diffusion.predict_xstart(mean_output, x_t.float(), t)

    def __repr__(self) -> str:
        return (
            f"IDDPM(num_timesteps={self.num_timesteps}, steps={self.num_sampling_steps}, "
            f"cfg_scale={self.cfg_scale}, cfg_channel={self.cfg_channel}, prediction={self.prediction!r})"
        )

    # ------------------------------------------------------------------ schedule access
    @property
    def num_sampling_steps(self) -> int:
        """Length of the (respaced) chain this object trains and samples on."""
        return self.diffusion.num_timesteps

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ of the respaced chain (float64); equals the original ᾱ at ``timestep_map``."""
        return self.diffusion.alphas_cumprod

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Original-chain timesteps for respaced indices ``t`` (what the network is conditioned on)."""
        key = str(t.device)
        if key not in self._timestep_maps:
            self._timestep_maps[key] = self.timestep_map.to(t.device)
        return self._timestep_maps[key][t.long()]

    def sample_timesteps(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Uniform training timesteps: a long tensor [batch] of indices into the respaced chain."""
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        gen_device = generator.device if generator is not None else "cpu"
        t = torch.randint(0, self.num_sampling_steps, (batch,), generator=generator, device=gen_device)
        return t.to(device) if device is not None else t

    def q_sample(
        self,
        x_start: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Diffuse ``x_start`` to respaced level ``t``: sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε."""
        return self.diffusion.q_sample(x_start, t, noise=noise, generator=generator).to(x_start.dtype)

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
        """Hybrid IDDPM loss per sample: ``{"loss", "mse", "vb"}``, each [B].

        ``model_kwargs`` carries ``y``, ``mask`` and micro-conditions; ``x_mask`` (bool [B, T], True =
        noised frame to learn) is passed to the model as ``x_mask`` and restricts the loss to those frames.
        """
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
            # Conditioned frames enter at level 0: nearly clean, with the same noise draw.
            x_level0 = self.q_sample(x_start, torch.zeros_like(t), noise=noise)
            x_t = torch.where(x_mask[:, None, :, None, None], x_t, x_level0)
            kwargs["x_mask"] = x_mask
        model_output = model(x_t, self.model_timesteps(t), **kwargs)
        if not isinstance(model_output, torch.Tensor):
            raise TypeError(f"the model must return a tensor, got {type(model_output).__name__}")
        weights = foreground_weights(x_start, self.foreground_weight) if self.foreground_weight else None
        return self.diffusion.loss_terms(model_output, x_start, x_t, t, noise, x_mask, weights)

    # ------------------------------------------------------------------ guidance
    def guided_output(
        self,
        model: ModelFn,
        x: torch.Tensor,
        t_model: torch.Tensor,
        y: torch.Tensor,
        y_mask: torch.Tensor | None,
        y_null: torch.Tensor,
        model_kwargs: Mapping[str, Any] | None = None,
        x_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One classifier-free-guided network evaluation, [B, 2C, ...] (see :func:`guided_output`)."""
        return guided_output(model, x, t_model, y, y_mask, y_null, self.cfg_scale, self.cfg_channel,
                             model_kwargs, x_mask)

    # ------------------------------------------------------------------ sampling
    def frame_start_steps(self, frame_mask: torch.Tensor) -> torch.Tensor:
        """Per frame, the highest step index at which the frame is denoised (see module docstring)."""
        return frame_start_steps(frame_mask, self.num_sampling_steps)

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
        """Ancestral sampling with CFG; returns x_0 latents shaped like ``noise`` [B, C, T, H, W].

        ``x_mask`` is the inference frame mask [B, T]: bool (True = generate, False = keep ``x_cond``)
        or float in [0, 1] (1 = generate, 0 = keep, fractional = edit ratio); see the module
        docstring. ``x_cond`` [B, C, T, H, W] holds the reference latents for frames below 1.
        """
        if noise.dim() != 5:
            raise ValueError(f"noise must be [B, C, T, H, W], got shape {tuple(noise.shape)}")
        batch, _, frames = noise.shape[:3]
        start, x_cond = conditioning_start_steps(noise, x_cond, x_mask, self.num_sampling_steps)

        x = noise.clone()
        frames_view = (batch, 1, frames, 1, 1)
        steps = range(self.num_sampling_steps - 1, -1, -1)
        for step in tqdm(steps, desc="sampling", disable=not progress, leave=False):
            t = torch.full((batch,), step, dtype=torch.long, device=noise.device)
            model_x_mask = None
            if start is not None:
                entering = (start == step).view(frames_view)
                if bool(entering.any()):
                    renoised = self.q_sample(x_cond, t, noise=randn_like(x_cond, generator))
                    x = torch.where(entering, renoised, x)
                active = start >= step
                x = torch.where(active.view(frames_view), x, x_cond)
                model_x_mask = active
            out = self.guided_output(
                model, x, self.model_timesteps(t), y, y_mask, y_null, model_kwargs, model_x_mask
            )
            step_out = self.diffusion.p_mean_variance(out, x, t)
            x_prev = step_out["mean"]
            if step > 0:
                x_prev = x_prev + torch.exp(0.5 * step_out["log_variance"]) * randn_like(x_prev, generator)
            x_prev = x_prev.to(noise.dtype)
            x = x_prev if start is None else torch.where(model_x_mask.view(frames_view), x_prev, x_cond)
        return x


def guided_output(
    model: ModelFn,
    x: torch.Tensor,
    t_model: torch.Tensor,
    y: torch.Tensor,
    y_mask: torch.Tensor | None,
    y_null: torch.Tensor,
    cfg_scale: float,
    cfg_channel: int | None,
    model_kwargs: Mapping[str, Any] | None = None,
    x_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One classifier-free-guided network evaluation, [B, 2C, ...].

    The network sees the doubled batch ``[x; x]`` with captions ``[y; y_null]`` (the caption mask
    is repeated for the null half, as in 1.1). Mean channels below ``cfg_channel`` become
    ``uncond + cfg_scale * (cond - uncond)``; all other channels are the conditional half's. Guidance
    is linear in the output, so it means the same for ε, v and flow-velocity outputs.
    """
    batch = x.shape[0]
    if y.shape[0] != batch:
        raise ValueError(f"y has batch {y.shape[0]} but x has batch {batch}")
    if y_null.shape[0] != batch:
        raise ValueError(f"y_null has batch {y_null.shape[0]} but x has batch {batch}")
    if y_null.shape != y.shape:
        if y_null.numel() != y.numel():
            raise ValueError(f"y_null shape {tuple(y_null.shape)} does not match y {tuple(y.shape)}")
        y_null = y_null.reshape(y.shape)
    kwargs = {}
    for key, value in (model_kwargs or {}).items():
        if key in _RESERVED_KWARGS:
            raise ValueError(f"model_kwargs must not contain {key!r}: it is an explicit argument of sample()")
        # Per-sample tensors (micro-conditions) are doubled along with the batch.
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch:
            value = torch.cat([value, value], dim=0)
        kwargs[key] = value
    doubled_mask = None if y_mask is None else torch.cat([y_mask, y_mask], dim=0)
    doubled_x_mask = None if x_mask is None else torch.cat([x_mask, x_mask], dim=0)
    out = model(
        torch.cat([x, x], dim=0),
        torch.cat([t_model, t_model], dim=0),
        y=torch.cat([y, y_null.to(y.dtype)], dim=0),
        mask=doubled_mask,
        x_mask=doubled_x_mask,
        **kwargs,
    )
    if not isinstance(out, torch.Tensor) or out.shape[0] != 2 * batch:
        raise ValueError(f"the model returned {getattr(out, 'shape', type(out))} for a doubled batch of {batch}")
    cond, uncond = out[:batch], out[batch:]
    channels = out.shape[1] // 2
    guided = channels if cfg_channel is None else cfg_channel
    if guided > channels:
        raise ConfigError(f"cfg_channel={cfg_channel} exceeds the model's {channels} mean channels")
    mean_guided = uncond[:, :guided] + cfg_scale * (cond[:, :guided] - uncond[:, :guided])
    return torch.cat([mean_guided, cond[:, guided:]], dim=1)


def conditioning_start_steps(noise: torch.Tensor, x_cond: torch.Tensor | None, x_mask: torch.Tensor | None,
                             steps: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Checks a sampler's frame mask and reference; returns (per-frame start steps or None when every
    frame is generated from noise, ``x_cond`` on the noise's device and dtype)."""
    batch, _, frames = noise.shape[:3]
    if x_cond is not None and x_mask is None:
        raise ValueError("x_cond was given without x_mask: say which frames it conditions")
    if x_mask is None:
        return None, x_cond
    start = frame_start_steps(_check_float_frame_mask(x_mask, batch, frames).to(noise.device), steps)
    if not bool((start < steps).any()):
        return None, x_cond  # every frame is generated: same as no mask
    if x_cond is None:
        raise ValueError("x_mask marks conditioned/edited frames but x_cond was not given")
    if x_cond.shape != noise.shape:
        raise ValueError(f"x_cond shape {tuple(x_cond.shape)} differs from noise {tuple(noise.shape)}")
    return start, x_cond.to(device=noise.device, dtype=noise.dtype)


def frame_start_steps(frame_mask: torch.Tensor, steps: int) -> torch.Tensor:
    """Per frame, the highest step index (of ``steps``, counted down to 0) at which it is denoised.

    1 -> ``steps`` (all steps, from the initial noise), 0 -> -1 (never), r -> floor(r * steps).
    """
    # The epsilon guards float error such as 0.29 * 100 = 28.999999999999996.
    start = torch.floor(frame_mask.double() * steps + 1e-6).long()
    start = torch.where(frame_mask >= 1.0, torch.full_like(start, steps), start)
    return torch.where(frame_mask <= 0.0, torch.full_like(start, -1), start)


def _check_bool_frame_mask(x_mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if x_mask.dtype != torch.bool:
        raise ValueError(f"training x_mask must be a bool tensor (True = noised frame), got dtype {x_mask.dtype}")
    expected = (x.shape[0], x.shape[2])
    if tuple(x_mask.shape) != expected:
        raise ValueError(f"x_mask shape {tuple(x_mask.shape)} does not match [B, T] = {expected}")
    return x_mask.to(x.device)


def _check_float_frame_mask(x_mask: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    if tuple(x_mask.shape) != (batch, frames):
        raise ValueError(f"x_mask shape {tuple(x_mask.shape)} does not match [B, T] = {(batch, frames)}")
    if x_mask.dtype == torch.bool:
        return x_mask.float()
    mask = x_mask.float()
    if not bool(torch.isfinite(mask).all()) or bool(((mask < 0) | (mask > 1)).any()):
        raise ValueError(f"x_mask values must lie in [0, 1], got {mask.min().item()}..{mask.max().item()}")
    return mask
