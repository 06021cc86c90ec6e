"""Builders for the frozen components a stage uses: the VAE (and, through models, the text encoder)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opensora_mlops.config import ConfigError, check_keys

VAE_KEYS = ("type", "from_pretrained", "micro_batch_size", "scale_factor", "subfolder", "seed")


def build_vae(cfg: Mapping[str, Any]) -> Any:
    """``{"type": "pretrained", "from_pretrained": dir}`` (any local AutoencoderKL/AutoencoderTiny, e.g. sd-vae-ft-ema or the
    one the autoencoder pipeline fitted) or ``{"type": "tiny"}`` (untrained, tests only)."""
    from opensora_mlops.models.vae import VideoAutoencoder

    if not isinstance(cfg, Mapping):
        raise ConfigError(f"vae config must be a mapping, got {type(cfg).__name__}")
    check_keys(cfg, VAE_KEYS, "vae config")
    kind = cfg.get("type", "pretrained")
    if kind == "tiny":
        return VideoAutoencoder.tiny(micro_batch_size=cfg.get("micro_batch_size"), seed=int(cfg.get("seed", 0)))
    if kind != "pretrained":
        raise ConfigError(f"vae type must be 'pretrained' or 'tiny', got {kind!r}")
    if not cfg.get("from_pretrained"):
        raise ConfigError("vae config (type 'pretrained') needs 'from_pretrained': a local AutoencoderKL directory")
    return VideoAutoencoder.from_pretrained(
        cfg["from_pretrained"], micro_batch_size=cfg.get("micro_batch_size"), scale_factor=cfg.get("scale_factor"),
        subfolder=cfg.get("subfolder"),
    )  # fmt: skip
