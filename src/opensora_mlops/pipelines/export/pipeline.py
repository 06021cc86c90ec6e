"""Export pipeline wiring (nodes in :mod:`.nodes`): stage 3's weights -> export directory -> registry."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from opensora_mlops.pipelines.export import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                nodes.export_stage_model,
                ["stage3.model", "evaluation_metrics", "stage3.filtered_clips", "params:export"],
                "export.manifest",
                name="export_model_directory",
            ),
            node(
                nodes.register_model,
                ["export.manifest", "params:export"],
                "export.registration",
                name="register_pyfunc_model",
            ),
        ],
        tags=["export"],
    )
