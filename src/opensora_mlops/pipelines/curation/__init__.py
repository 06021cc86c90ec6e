"""Curation pipeline: raw_metadata → scenes → clips → captions → scores → clip_metadata → stage filters."""

from opensora_mlops.pipelines.curation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
