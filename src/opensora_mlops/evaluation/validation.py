"""Validation loss by timestep range.

The diffusion loss averaged over random timesteps hides where a model is weak: low-noise steps (fine
detail) and high-noise steps (layout, motion) behave very differently. Here the IDDPM hybrid loss is
(or the configured objective's loss, beside the x̂_0 error) evaluated at fixed timesteps inside each range (e.g. [0, 250), [250, 500), …) with one fixed noise
draw, so two checkpoints (or the trained and the untrained model) are compared on exactly the same
inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from opensora_mlops.config import ConfigError


def timestep_ranges(num_timesteps: int = 1000, num_ranges: int = 4) -> list[tuple[int, int]]:
    """``num_ranges`` equal half-open ranges covering [0, num_timesteps)."""
    if num_ranges < 1 or num_ranges > num_timesteps:
        raise ConfigError(f"num_ranges must be in [1, {num_timesteps}], got {num_ranges}")
    edges = [round(i * num_timesteps / num_ranges) for i in range(num_ranges + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _check_ranges(ranges: Sequence[Sequence[int]], num_timesteps: int) -> list[tuple[int, int]]:
    checked = []
    for item in ranges:
        if len(item) != 2:
            raise ConfigError(f"a timestep range must be [start, end), got {list(item)}")
        start, end = int(item[0]), int(item[1])
        if not 0 <= start < end <= num_timesteps:
            raise ConfigError(f"timestep range [{start}, {end}) is not inside [0, {num_timesteps})")
        checked.append((start, end))
    return checked


@torch.no_grad()
def loss_by_timestep(
    model: torch.nn.Module,
    diffusion: Any,
    x_start: torch.Tensor,
    model_kwargs: Mapping[str, Any],
    ranges: Sequence[Sequence[int]] | None = None,
    timesteps_per_range: int = 2,
    seed: int = 0,
) -> pd.DataFrame:
    """IDDPM ``training_losses`` at fixed timesteps and fixed noise, one row per timestep.

    Args:
        model: the denoiser (put in eval mode for the call, restored afterwards).
        diffusion: an :class:`opensora_mlops.diffusion.IDDPM` (``training_losses``, ``num_timesteps``).
        x_start: clean latents [B, C, T, H, W].
        model_kwargs: ``y``, ``mask`` and micro-conditions for the batch.
        ranges: half-open [start, end) ranges; default 4 equal ranges over the chain.
        timesteps_per_range: timesteps evaluated per range, evenly spaced at the centres of equal
            sub-intervals.
        seed: seeds the single noise draw shared by every timestep.

    Returns columns ``range_start, range_end, timestep, loss, mse, vb, x0_mse`` (batch means; ``vb`` is 0
    for objectives without a variational-bound term, e.g. rectified flow).
    """
    num_timesteps = int(diffusion.num_timesteps)
    ranges = timestep_ranges(num_timesteps) if ranges is None else _check_ranges(ranges, num_timesteps)
    if timesteps_per_range < 1:
        raise ConfigError(f"timesteps_per_range must be >= 1, got {timesteps_per_range}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(x_start.shape, generator=generator, dtype=torch.float32).to(x_start)
    was_training = model.training
    model.eval()
    rows = []
    try:
        for start, end in ranges:
            width = (end - start) / timesteps_per_range
            steps = sorted({min(end - 1, int(start + (k + 0.5) * width)) for k in range(timesteps_per_range)})
            for step in steps:
                t = torch.full((x_start.shape[0],), step, dtype=torch.long, device=x_start.device)
                terms = diffusion.training_losses(model, x_start, t, dict(model_kwargs), noise=noise)
                rows.append(
                    {
                        "range_start": start,
                        "range_end": end,
                        "timestep": step,
                        "loss": float(terms["loss"].mean()),
                        "mse": float(terms["mse"].mean()),
                        "vb": float(terms["vb"].mean()) if "vb" in terms else 0.0,
                        "x0_mse": float(terms["x0_mse"].mean()),
                    }
                )
    finally:
        model.train(was_training)
    return pd.DataFrame(rows, columns=["range_start", "range_end", "timestep", "loss", "mse", "vb", "x0_mse"])


def summarise_by_range(table: pd.DataFrame) -> dict[str, float]:
    """Mean loss (and x̂_0 MSE when measured) per range: ``{"val_loss_t000_250": …, "val_x0_mse_t000_250": …,
    …, "val_loss": overall mean, "val_x0_mse": overall mean}``."""
    out: dict[str, float] = {}
    has_x0 = "x0_mse" in table.columns
    for (start, end), rows in table.groupby(["range_start", "range_end"], sort=True):
        out[f"val_loss_t{int(start):03d}_{int(end):03d}"] = float(rows["loss"].mean())
        if has_x0:
            out[f"val_x0_mse_t{int(start):03d}_{int(end):03d}"] = float(rows["x0_mse"].mean())
    if len(table):
        out["val_loss"] = float(table["loss"].mean())
        if has_x0:
            out["val_x0_mse"] = float(table["x0_mse"].mean())
    return out
