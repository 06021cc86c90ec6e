"""Diffusion for ST-DiT-2: IDDPM (ε or v), rectified flow, one scheduler interface chosen by config."""

from opensora_mlops.diffusion.gaussian_diffusion import (
    BETA_SCHEDULES,
    GaussianDiffusion,
    cosine_beta_schedule,
    discretized_gaussian_log_likelihood,
    linear_beta_schedule,
    masked_mean,
    normal_kl,
)
from opensora_mlops.diffusion.iddpm import IDDPM
from opensora_mlops.diffusion.rectified_flow import RectifiedFlow
from opensora_mlops.diffusion.respace import respaced_betas, space_timesteps
from opensora_mlops.diffusion.schedulers import (
    SCHEDULER_FILE,
    SCHEDULER_TYPES,
    build_scheduler,
    load_scheduler_config,
    save_scheduler,
)

__all__ = [
    "BETA_SCHEDULES",
    "IDDPM",
    "SCHEDULER_FILE",
    "SCHEDULER_TYPES",
    "GaussianDiffusion",
    "RectifiedFlow",
    "build_scheduler",
    "cosine_beta_schedule",
    "load_scheduler_config",
    "save_scheduler",
    "discretized_gaussian_log_likelihood",
    "linear_beta_schedule",
    "masked_mean",
    "normal_kl",
    "respaced_betas",
    "space_timesteps",
]
