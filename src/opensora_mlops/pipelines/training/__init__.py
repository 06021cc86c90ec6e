"""Training pipeline: ONE template instantiated per stage through Kedro namespaces (stage1, stage2, stage3)."""

from opensora_mlops.pipelines.training.pipeline import create_pipeline

__all__ = ["create_pipeline"]
