"""Gaussian diffusion maths for a learned-range-variance model (IDDPM), predicting ε or v.

The network's mean channels are ε (Open-Sora 1.1, its released weights) or v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x_0
(Salimans & Ho's v-prediction). Both give the same reverse process once converted to x̂_0; what differs is
what the MSE sees. With ε, an error δ in ε̂ becomes an x̂_0 error of δ·sqrt(1-ᾱ)/sqrt(ᾱ): ×12 at t=700,
×156 at t=999 of the linear schedule, where the loss barely weighs it, so a small model never learns the
layout that is decided there (measured, BENCHMARKS.md "Prediction targets"). With v the x̂_0 error is at
most the v error at every t.

The tables are kept in float64 (the cumulative product of 1000 alphas loses precision in float32)
and gathered per sample into float32 coefficients shaped to broadcast against a latent batch
``[B, C, T, H, W]``.

Timestep convention (as in improved diffusion): index ``t`` in ``[0, N)`` is the noise level after
``t + 1`` forward steps, so ``t = 0`` is the *least* noisy level, and one reverse step from ``t``
produces level ``t - 1`` (from ``t = 0`` it produces the clean sample).

Frame masks: ``frame_mask`` is a bool ``[B, T]`` tensor, True for the frames the loss covers (noised
frames to learn), False for conditioned frames, which are excluded from every loss average.
"""

from __future__ import annotations

import math

import torch

LOG2 = math.log(2.0)


def linear_beta_schedule(num_timesteps: int) -> torch.Tensor:
    """Ho et al.'s linear betas 1e-4 -> 0.02, stretched as improved diffusion does for other step counts.

    The end points are multiplied by ``1000 / num_timesteps`` so the total amount of noise added stays
    comparable whatever the number of steps (for 1000 steps the scale is exactly 1).
    """
    if not isinstance(num_timesteps, int) or isinstance(num_timesteps, bool) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}")
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)


def cosine_beta_schedule(num_timesteps: int, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: ᾱ(t) = cos²((t/N + s)/(1 + s) · π/2), betas capped at 0.999.

    Why it exists here: the linear schedule was made for large images. On small latents (the embedded
    default's 18×32×4) it reaches SNR 0.03 by t = 600, so the last 40% of the chain is nearly pure noise
    and only about a third of the training steps land where a subject's place and shape are decided
    (SNR 0.03–1). The cosine ᾱ falls slowly at both ends and spreads those noise levels over most of the chain.
    """
    if not isinstance(num_timesteps, int) or isinstance(num_timesteps, bool) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}")
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = torch.cos((steps + offset) / (1.0 + offset) * math.pi / 2).pow(2)
    return (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


#: The beta schedules an IDDPM config may name (``beta_schedule``).
BETA_SCHEDULES = {"linear": linear_beta_schedule, "cosine": cosine_beta_schedule}


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor):
    """KL( N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)) ), elementwise, in nats."""
    return 0.5 * (
        logvar2 - logvar1 - 1.0 + torch.exp(logvar1 - logvar2) + (mean1 - mean2).pow(2) * torch.exp(-logvar2)
    )


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    # The tanh approximation of Φ used by improved diffusion's decoder likelihood (kept for parity).
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, bin_half_width: float = 1.0 / 255.0
) -> torch.Tensor:
    """Log-probability (nats) of ``x`` under a Gaussian discretised into bins of width 2/255 on [-1, 1].

    The outermost bins extend to ±infinity. This is the decoder term of the variational bound at t=0.
    """
    if not (x.shape == means.shape == log_scales.shape):
        raise ValueError(
            f"shapes differ: x {tuple(x.shape)}, means {tuple(means.shape)}, log_scales {tuple(log_scales.shape)}"
        )
    inv_std = torch.exp(-log_scales)
    centred = x - means
    cdf_upper = _approx_std_normal_cdf(inv_std * (centred + bin_half_width))
    cdf_lower = _approx_std_normal_cdf(inv_std * (centred - bin_half_width))
    tiny = 1e-12
    log_cdf_upper = torch.log(cdf_upper.clamp(min=tiny))
    log_one_minus_cdf_lower = torch.log((1.0 - cdf_lower).clamp(min=tiny))
    log_bin = torch.log((cdf_upper - cdf_lower).clamp(min=tiny))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_one_minus_cdf_lower, log_bin))


def check_values() -> bool:
    """Whether to run the input checks that read tensor values on the host (timestep ranges, empty frame
    masks): yes in eager mode, no while ``torch.compile`` traces, where such a read is a device sync and
    a graph break. Shape and dtype checks run in both."""
    return not torch.compiler.is_compiling()


def masked_mean(values: torch.Tensor, frame_mask: torch.Tensor | None = None,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over every non-batch dimension; with ``frame_mask`` [B, T], only over the True frames.

    ``values`` is [B, C, T, H, W] when a mask or weights are given. Masked-out entries are removed with
    ``torch.where`` (not multiplied by zero), so they contribute exactly zero gradient even when they
    hold inf/NaN. ``weights`` (broadcastable to ``values``, > 0; e.g. :func:`foreground_weights`) make it a
    weighted mean: sum(w v) / sum(w) over the kept entries, so the loss keeps its scale.
    """
    if frame_mask is None and weights is None:
        return values.mean(dim=tuple(range(1, values.dim())))
    if values.dim() != 5:
        raise ValueError(f"a frame mask or weights need [B, C, T, H, W] values, got shape {tuple(values.shape)}")
    batch, channels, frames, height, width = values.shape
    if frame_mask is None:
        keep = torch.ones(batch, frames, dtype=torch.bool, device=values.device)
    else:
        if frame_mask.shape != (batch, frames):
            raise ValueError(f"frame mask shape {tuple(frame_mask.shape)} does not match [B, T] = {(batch, frames)}")
        keep = frame_mask.to(device=values.device, dtype=torch.bool)
    kept_frames = keep.sum(dim=1)
    if check_values() and bool((kept_frames == 0).any()):
        empty = torch.nonzero(kept_frames == 0).flatten().tolist()
        raise ValueError(f"samples {empty} have no noised frame (x_mask all False): nothing to learn")
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    kept = keep[:, None, :, None, None]
    if weights is None:
        total = torch.where(kept, values, zero).sum(dim=(1, 2, 3, 4))
        return total / (kept_frames.to(values.dtype) * channels * height * width)
    weights = weights.to(dtype=values.dtype).expand_as(values)
    total = torch.where(kept, values * weights, zero).sum(dim=(1, 2, 3, 4))
    return total / torch.where(kept, weights, zero).sum(dim=(1, 2, 3, 4))


#: Below this distance from the frame's background (latent units, per position) nothing counts as a
#: subject: a flat or near-flat clip gets uniform weights instead of amplified noise.
FOREGROUND_MIN_SCALE = 0.1


def foreground_weights(x_start: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-position loss weights [B, 1, T, H, W] = 1 + strength x (how far the position is from its frame's
    background, scaled to [0, 1] per clip).

    The background of a frame is its per-channel spatial median; the distance is the channel-L2 norm of the
    latent minus it. Why: in the embedded corpus a subject covers ~6-14% of the frame, so a plain MSE is
    dominated by the flat background the model learns first, and the colour, shape and motion of the
    subject (what the caption says) get a small share of every gradient. ``strength`` 0 gives ones
    (the plain loss). The weights depend only on the clean latents, never on the network.
    """
    if x_start.dim() != 5:
        raise ValueError(f"foreground weights need [B, C, T, H, W] latents, got shape {tuple(x_start.shape)}")
    if strength < 0:
        raise ValueError(f"foreground weight strength must be >= 0, got {strength}")
    x = x_start.detach().float()
    batch, _, frames, height, width = x.shape
    if strength == 0:
        return torch.ones(batch, 1, frames, height, width, dtype=x.dtype, device=x.device)
    background = x.flatten(3).median(dim=3).values[..., None, None]  # [B, C, T, 1, 1]
    distance = (x - background).pow(2).sum(dim=1, keepdim=True).sqrt()  # [B, 1, T, H, W]
    scale = distance.amax(dim=(2, 3, 4), keepdim=True).clamp_min(FOREGROUND_MIN_SCALE)
    return 1.0 + strength * distance / scale


PREDICTIONS = ("epsilon", "v")


class GaussianDiffusion:
    """Forward process, posterior and learned-range reverse process for one beta schedule.

    ``prediction`` names what the network's mean channels hold: ``"epsilon"`` or ``"v"``.
    """

    def __init__(self, betas: torch.Tensor, prediction: str = "epsilon"):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.prediction = prediction
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.dim() != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError(f"betas must lie in (0, 1], got min {betas.min().item()} max {betas.max().item()}")
        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.log_one_minus_alphas_cumprod = torch.log1p(-self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()

        # Posterior q(x_{t-1} | x_t, x_0) = N(coef1 * x_0 + coef2 * x_t, posterior_variance).
        one_minus_ac = 1.0 - self.alphas_cumprod
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / one_minus_ac
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / one_minus_ac
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / one_minus_ac
        # The posterior variance is exactly 0 at t=0; its log is clipped to the t=1 value there, as in
        # improved diffusion (only the lower end of the learned range uses it, and no noise is added at t=0).
        first = self.posterior_variance[1:2] if betas.numel() > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first, self.posterior_variance[1:]]))
        self.log_betas = torch.log(betas)
        self._device_tables: dict[tuple[int, str], torch.Tensor] = {}

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.numel())

    # ------------------------------------------------------------------ helpers
    def _check_t(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.numel() != batch:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"t must be a 1-D tensor of {batch} timestep indices, got {shape}")
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(f"t must hold integer timestep indices, got dtype {t.dtype}")
        if check_values() and bool(((t < 0) | (t >= self.num_timesteps)).any()):
            raise ValueError(
                f"timestep indices must lie in [0, {self.num_timesteps}), got {t.min().item()}..{t.max().item()}"
            )
        return t

    def gather(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``table[t]`` as float32 on ``like``'s device, shaped [B, 1, 1, ...] to broadcast against ``like``."""
        self._check_t(t, like.shape[0])
        values = self._on_device(table, like.device)[t.to(like.device).long()]
        return values.reshape(-1, *([1] * (like.dim() - 1)))

    def _on_device(self, table: torch.Tensor, device: torch.device) -> torch.Tensor:
        # Tables are gathered several times per step: keep one float32 copy per device instead of
        # copying host tables to an accelerator at every call.
        if device.type == "cpu":
            return table.to(torch.float32)
        key = (id(table), str(device))
        cached = self._device_tables.get(key)
        if cached is None:
            cached = self._device_tables[key] = table.to(device=device, dtype=torch.float32)
        return cached

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of q(x_t | x_0)."""
        mean = self.gather(self.sqrt_alphas_cumprod, t, x_start) * x_start
        variance = self.gather(1.0 - self.alphas_cumprod, t, x_start).expand_as(x_start)
        log_variance = self.gather(self.log_one_minus_alphas_cumprod, t, x_start).expand_as(x_start)
        return mean, variance, log_variance

    def q_sample(
        self,
        x_start: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I)."""
        if noise is None:
            noise = randn_like(x_start, generator)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x_start {tuple(x_start.shape)}")
        return (
            self.gather(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + self.gather(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of the posterior q(x_{t-1} | x_t, x_0)."""
        if x_start.shape != x_t.shape:
            raise ValueError(f"x_start {tuple(x_start.shape)} and x_t {tuple(x_t.shape)} differ in shape")
        mean = self.gather(self.posterior_mean_coef1, t, x_t) * x_start + self.gather(
            self.posterior_mean_coef2, t, x_t
        ) * x_t
        variance = self.gather(self.posterior_variance, t, x_t).expand_as(x_t)
        log_variance = self.gather(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t)."""
        return (
            self.gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self.gather(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, x_start: torch.Tensor) -> torch.Tensor:
        return (self.gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x_start) / self.gather(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def predict_xstart_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x_0 = sqrt(ᾱ_t) x_t - sqrt(1 - ᾱ_t) v."""
        return (self.gather(self.sqrt_alphas_cumprod, t, x_t) * x_t
                - self.gather(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v)

    def v_target(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0, the regression target of v-prediction."""
        return (self.gather(self.sqrt_alphas_cumprod, t, x_start) * noise
                - self.gather(self.sqrt_one_minus_alphas_cumprod, t, x_start) * x_start)

    def predict_xstart(self, mean_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x̂_0 from the network's mean channels (ε or v, per ``prediction``)."""
        if self.prediction == "v":
            return self.predict_xstart_from_v(x_t, t, mean_output)
        return self.predict_xstart_from_eps(x_t, t, mean_output)

    def mean_target(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the mean channels regress onto: ε itself, or v."""
        return self.v_target(x_start, t, noise) if self.prediction == "v" else noise

    # ------------------------------------------------------------------ reverse process
    def split_model_output(self, model_output: torch.Tensor, x_t: torch.Tensor):
        """Split a learned-sigma output [B, 2C, ...] into (ε [B, C, ...], v [B, C, ...])."""
        channels = x_t.shape[1]
        expected = (x_t.shape[0], 2 * channels, *x_t.shape[2:])
        if tuple(model_output.shape) != expected:
            raise ValueError(
                f"the model must output ε and the variance interpolation v, shape {expected}, "
                f"got {tuple(model_output.shape)}"
            )
        return model_output[:, :channels], model_output[:, channels:]

    def p_mean_variance(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> dict:
        """The reverse step p(x_{t-1} | x_t) implied by a learned-range output (ε or v mean channels).

        The variance channels (in [-1, 1]) interpolate the log-variance between the posterior variance
        (-1) and β_t (+1).
        """
        mean_output, var_values = self.split_model_output(model_output.float(), x_t)
        x_t = x_t.float()
        min_log = self.gather(self.posterior_log_variance_clipped, t, x_t)
        max_log = self.gather(self.log_betas, t, x_t)
        frac = (var_values + 1.0) / 2.0
        log_variance = frac * max_log + (1.0 - frac) * min_log
        pred_xstart = self.predict_xstart(mean_output, x_t, t)
        eps = mean_output if self.prediction == "epsilon" else self.predict_eps_from_xstart(x_t, t, pred_xstart)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {
            "mean": mean,
            "variance": torch.exp(log_variance),
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "eps": eps,
        }

    # ------------------------------------------------------------------ losses
    def vb_terms_bits(
        self,
        model_output: torch.Tensor,
        x_start: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One term of the variational bound per sample, in bits per dimension.

        KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0, the decoder NLL of x_0 for t = 0.
        """
        x_start = x_start.float()
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t.float(), t)
        out = self.p_mean_variance(model_output, x_t, t)
        kl = masked_mean(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"]), frame_mask)
        decoder_nll = -discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        decoder_nll = masked_mean(decoder_nll, frame_mask)
        return torch.where(t.to(kl.device) == 0, decoder_nll, kl) / LOG2

    def loss_terms(
        self,
        model_output: torch.Tensor,
        x_start: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """IDDPM hybrid loss: MSE of the mean channels (ε or v) + VB, the VB term seeing the mean
        through a stop-gradient. ``x0_mse`` (no gradient) is the error of the implied x̂_0, the number
        that says whether the model could produce the clip (an ε loss can look healthy while it does not).

        The VB term is scaled by ``num_timesteps / 1000`` (improved diffusion's rescaling, 1 for 1000
        steps) so that it does not swamp the MSE term. ``weights`` (e.g. :func:`foreground_weights`) weight
        the MSE term only; the VB term and ``x0_mse`` stay plain means, comparable across weightings.
        """
        mean_output, var_values = self.split_model_output(model_output, x_t)
        # Learn the variance through the bound without letting the bound move the mean prediction.
        frozen = torch.cat([mean_output.detach(), var_values], dim=1)
        vb = self.vb_terms_bits(frozen, x_start, x_t, t, frame_mask) * (self.num_timesteps / 1000.0)
        target = self.mean_target(x_start.float(), t, noise.float())
        mse = masked_mean((target - mean_output.float()).pow(2), frame_mask, weights)
        with torch.no_grad():
            x0 = self.predict_xstart(mean_output.detach().float(), x_t.float(), t)
            x0_mse = masked_mean((x0 - x_start.float()).pow(2), frame_mask)
        return {"loss": mse + vb, "mse": mse, "vb": vb, "x0_mse": x0_mse}


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn from ``generator`` (on its device) when given."""
    if generator is None:
        return torch.randn_like(x)
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return noise.to(device=x.device, dtype=x.dtype)
