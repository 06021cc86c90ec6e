"""Autoencoder pipeline: fit the embedded default's small VAE, or point at a pretrained one."""

from opensora_mlops.pipelines.autoencoder.pipeline import create_pipeline

__all__ = ["create_pipeline"]
