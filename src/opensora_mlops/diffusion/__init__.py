"""IDDPM diffusion for ST-DiT-2: training loss, timestep respacing, ancestral sampling with CFG."""

from opensora_mlops.diffusion.gaussian_diffusion import (
    GaussianDiffusion,
    discretized_gaussian_log_likelihood,
    linear_beta_schedule,
    masked_mean,
    normal_kl,
)
from opensora_mlops.diffusion.iddpm import IDDPM
from opensora_mlops.diffusion.respace import respaced_betas, space_timesteps

__all__ = [
    "IDDPM",
    "GaussianDiffusion",
    "discretized_gaussian_log_likelihood",
    "linear_beta_schedule",
    "masked_mean",
    "normal_kl",
    "respaced_betas",
    "space_timesteps",
]
