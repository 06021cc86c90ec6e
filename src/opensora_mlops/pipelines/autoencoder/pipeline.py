"""Autoencoder pipeline wiring: curated clips -> ``vae_model`` (the VAE config later pipelines load)."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from opensora_mlops.pipelines.autoencoder import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(nodes.fit_vae, ["stage1.filtered_clips", "params:autoencoder"], ["vae_model", "autoencoder_metrics"],
                 name="fit_vae", tags=["autoencoder"]),
        ]
    )
