"""Learning diagnostics: does the denoiser predict the clip, use its caption, and keep frames consistent?

The diffusion loss alone cannot say: an ε-MSE of 0.002 at t = 999 looks excellent while the x̂_0 it
implies is worse than predicting zero. These instruments look at what sampling actually consumes,
on training (or held-out) latents with their own captions, each at fixed timesteps and fixed noise:

* :func:`x0_error_by_timestep` — one-step x̂_0 MSE per timestep, beside the MSE of predicting zero
  (the data's own power): above that line the model knows less than a constant.
* :func:`caption_effect` — how much x̂_0 moves when the caption is replaced by the null caption,
  against the x̂_0 error, and how often a clip's own caption predicts it better than another clip's
  caption (0.5 = the caption is ignored).
* :func:`frame_spread` — the spread of per-frame mean latents of x̂_0 from pure noise (t = T - 1)
  against the data's: flicker shows up here as per-frame means that follow each frame's noise.
* :func:`oracle_sampling_error` — the sampler run with a perfect denoiser of one clip must return
  that clip; if it does, whatever a trained model generates is the network's doing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

CONDITION_KEYS = ("fps", "height", "width", "ar", "num_frames")


def _fixed_noise(shape: Sequence[int], seed: int) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(seed)))


def _timesteps(scheduler: Any, value: int, batch: int) -> torch.Tensor:
    return torch.full((batch,), int(value), dtype=torch.long)


@torch.no_grad()
def predict_x0(model: torch.nn.Module, scheduler: Any, batch: Mapping[str, torch.Tensor], t_value: int,
               noise: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂_0, x_t) for clean latents ``batch["x"]`` noised to ``t_value`` with ``noise``; ``y`` replaces
    the captions (e.g. the null caption)."""
    x0 = batch["x"]
    t = _timesteps(scheduler, t_value, x0.shape[0])
    x_t = scheduler.q_sample(x0, t, noise=noise)
    kwargs = {k: batch[k] for k in CONDITION_KEYS if k in batch}
    out = model(x_t, scheduler.model_timesteps(t), y=batch["y"] if y is None else y, mask=batch.get("mask"), **kwargs)
    return scheduler.predict_xstart(out, x_t, t), x_t


def _per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)


@torch.no_grad()
def x0_error_by_timestep(model: torch.nn.Module, scheduler: Any, batch: Mapping[str, torch.Tensor],
                         timesteps: Sequence[int] = (100, 300, 500, 700, 900, 999), seed: int = 0
                         ) -> list[dict[str, float]]:
    """Per timestep: ``x0_mse`` (one-step x̂_0 error) and ``zero_mse`` (error of predicting zeros)."""
    model.eval()
    x0 = batch["x"]
    zero = float(x0.float().pow(2).mean())
    rows = []
    for t_value in timesteps:
        pred, _ = predict_x0(model, scheduler, batch, t_value, _fixed_noise(x0.shape, seed + int(t_value)))
        rows.append({"timestep": int(t_value), "x0_mse": float(_per_sample_mse(pred, x0).mean()), "zero_mse": zero})
    return rows


@torch.no_grad()
def caption_effect(model: torch.nn.Module, scheduler: Any, batch: Mapping[str, torch.Tensor],
                   timesteps: Sequence[int] = (500, 900), seed: int = 0) -> dict[str, float]:
    """How much the caption steers x̂_0 (needs a batch of >= 2 clips with different captions).

    ``null_shift``: mean squared change of x̂_0 when the caption becomes the null caption;
    ``x0_mse``: the x̂_0 error with the own caption (the scale to compare the shift with);
    ``own_caption_wins``: fraction of (clip, timestep) where the clip's own caption predicts it better
    than the next clip's caption (0.5 = captions ignored, 1.0 = always the right one).
    """
    model.eval()
    x0 = batch["x"]
    if x0.shape[0] < 2:
        raise ValueError("caption_effect needs a batch of at least 2 clips")
    null = model.null_text(x0.shape[0]).to(batch["y"])
    null = null.reshape(batch["y"].shape) if null.numel() == batch["y"].numel() else null
    rolled = torch.roll(batch["y"], shifts=1, dims=0)
    shifts, errors, wins = [], [], []
    for t_value in timesteps:
        noise = _fixed_noise(x0.shape, seed + int(t_value))
        own, _ = predict_x0(model, scheduler, batch, t_value, noise)
        without, _ = predict_x0(model, scheduler, {**batch, "mask": None}, t_value, noise, y=null)
        other, _ = predict_x0(model, scheduler, {**batch, "mask": torch.roll(batch["mask"], 1, 0)
                                                 if batch.get("mask") is not None else None}, t_value, noise, y=rolled)
        shifts.append(_per_sample_mse(own, without))
        own_error = _per_sample_mse(own, x0)
        errors.append(own_error)
        wins.append((own_error < _per_sample_mse(other, x0)).float())
    return {"null_shift": float(torch.cat(shifts).mean()), "x0_mse": float(torch.cat(errors).mean()),
            "own_caption_wins": float(torch.cat(wins).mean())}


def frame_means_spread(latents: torch.Tensor) -> float:
    """Mean over samples and channels of the std across frames of each frame's spatial mean."""
    if latents.dim() != 5 or latents.shape[2] < 2:
        raise ValueError(f"need latents [B, C, T>=2, H, W], got shape {tuple(latents.shape)}")
    return float(latents.float().mean(dim=(3, 4)).std(dim=2).mean())


@torch.no_grad()
def frame_spread(model: torch.nn.Module, scheduler: Any, batch: Mapping[str, torch.Tensor], seed: int = 0
                 ) -> dict[str, float]:
    """Per-frame mean spread of x̂_0 predicted from (nearly) pure noise, beside the data's."""
    model.eval()
    x0 = batch["x"]
    t_last = scheduler.num_timesteps - 1
    pred, _ = predict_x0(model, scheduler, batch, t_last, _fixed_noise(x0.shape, seed))
    return {"x0_frame_spread": frame_means_spread(pred), "data_frame_spread": frame_means_spread(x0)}


def oracle_denoiser(scheduler: Any, x0: torch.Tensor):
    """A network stand-in that outputs exactly the target of ``scheduler``'s objective for clean ``x0``.

    For a doubled (CFG) batch the clip is repeated. The second half of the channels (learned variance)
    is zero, i.e. the middle of IDDPM's learned range.
    """
    from opensora_mlops.diffusion import RectifiedFlow

    def model(x, t_model, **_kwargs):
        clean = x0.repeat(x.shape[0] // x0.shape[0], 1, 1, 1, 1).to(x)
        if isinstance(scheduler, RectifiedFlow):
            sigma = (t_model.double() / scheduler.num_timesteps).float().view(-1, 1, 1, 1, 1).clamp(min=1e-8)
            target = (x.float() - clean) / sigma
        else:
            ac = scheduler.base.alphas_cumprod.float()[t_model.long().cpu()].view(-1, 1, 1, 1, 1).to(x)
            eps = (x.float() - ac.sqrt() * clean) / (1 - ac).sqrt()
            target = eps if scheduler.prediction == "epsilon" else ac.sqrt() * eps - (1 - ac).sqrt() * clean
        return torch.cat([target, torch.zeros_like(target)], dim=1)

    return model


@torch.no_grad()
def oracle_sampling_error(scheduler: Any, batch: Mapping[str, torch.Tensor], steps: int = 25, seed: int = 0) -> float:
    """Max |x - x_0| after sampling with the oracle denoiser of the batch's first clip (should be ~0)."""
    x0 = batch["x"][:1].float()
    sampler = scheduler.with_sampling(steps=steps, cfg_scale=1.0)
    y = batch["y"][:1]
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(x0.shape, generator=generator)
    out = sampler.sample(oracle_denoiser(sampler, x0), noise, y, None, torch.zeros_like(y), progress=False,
                         generator=generator)
    return float((out - x0).abs().max())


def diagnostic_batch(cache: Any, size: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Up to ``size`` clips of a latent cache's most populated multi-frame bucket, chosen reproducibly
    (one bucket, so they stack; several clips, so captions can be swapped between them)."""
    index = cache.index
    videos = index[index["bucket_num_frames"] > 1]
    pool = videos if len(videos) >= 2 else index
    bucket = pool["bucket_id"].value_counts().idxmax()
    rows = np.flatnonzero((index["bucket_id"] == bucket).to_numpy())
    chosen = sorted(np.random.default_rng(seed).choice(rows, size=min(size, rows.size), replace=False).tolist())
    return cache.get(chosen)


def learning_report(model: torch.nn.Module, scheduler: Any, batch: Mapping[str, torch.Tensor], seed: int = 0
                    ) -> dict[str, Any]:
    """All four instruments on one batch; flat numbers under ``summary`` (for MLflow), rows per t."""
    by_t = x0_error_by_timestep(model, scheduler, batch, seed=seed)
    caption = caption_effect(model, scheduler, batch, seed=seed)
    spread = frame_spread(model, scheduler, batch, seed=seed)
    oracle = oracle_sampling_error(scheduler, batch, seed=seed)
    summary = {f"x0_mse_t{r['timestep']:03d}": r["x0_mse"] for r in by_t}
    summary.update(zero_mse=by_t[0]["zero_mse"], caption_null_shift=caption["null_shift"],
                   caption_own_wins=caption["own_caption_wins"], **spread, oracle_max_error=oracle)
    return {"summary": summary, "x0_by_timestep": by_t, "caption": caption}
