"""Ingestion pipeline: synthetic corpus or user folder → probe → quarantine → data contract → raw_metadata."""

from opensora_mlops.pipelines.ingestion.pipeline import create_pipeline

__all__ = ["create_pipeline"]
