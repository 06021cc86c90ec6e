"""Evaluation pipeline wiring (nodes in :mod:`.nodes`): stage 3's model against an untrained one and the
curated clips; the stages' latent caches say which caption combinations it was trained on."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node

from opensora_mlops.pipelines.evaluation import nodes


def create_pipeline(**kwargs) -> Pipeline:
    params = "params:evaluation"
    return Pipeline(
        [
            node(
                nodes.training_combinations,
                ["stage1.latent_cache", "stage2.latent_cache", "stage3.latent_cache"],
                "evaluation.training_combinations",
                name="training_combinations",
            ),
            node(
                nodes.generate_samples,
                ["stage3.model", "evaluation.training_combinations", params],
                "evaluation.samples",
                name="generate_samples",
            ),
            node(
                nodes.score_samples,
                ["evaluation.samples", "stage3.filtered_clips", params],
                ["evaluation.scores", "evaluation.adherence_table"],
                name="score_samples",
            ),
            node(
                nodes.validation_loss,
                ["stage3.model", "stage3.latent_cache", params],
                "evaluation.val_loss_table",
                name="validation_loss_by_timestep",
            ),
            node(
                nodes.build_report,
                [
                    "evaluation.samples",
                    "evaluation.scores",
                    "evaluation.adherence_table",
                    "evaluation.val_loss_table",
                    params,
                    "params:export",  # the registered model whose champion the verdict compares with
                ],
                ["evaluation_metrics", "evaluation.report"],
                name="build_evaluation_report",
            ),
            node(
                nodes.log_to_mlflow,
                ["evaluation_metrics", "evaluation.report"],
                None,
                name="log_evaluation_to_mlflow",
            ),
        ],
        tags=["evaluation"],
    )
