"""Evaluation pipeline wiring (nodes in :mod:`.nodes`): stage 3's model against an untrained one and the
curated clips; the stages' latent caches say which caption combinations it was trained on.

The nodes live in the Kedro namespace ``evaluation``: the template's own datasets (``samples``,
``scores`` …) become ``evaluation.samples`` …; the stages' datasets it reads keep their names
(``stage3.model`` …), and so does ``evaluation_metrics`` (export's input). ``log_evaluation_to_mlflow``
opens the namespace's nested MLflow run itself (tag ``mlflow_own_run``, see ``hooks.py``).
"""

from __future__ import annotations

from kedro.pipeline import Pipeline, node, pipeline

from opensora_mlops.pipelines.evaluation import nodes

NAMESPACE = "evaluation"
OWN_RUN_TAG = "mlflow_own_run"  # opensora_mlops.hooks.OWN_RUN_TAG
STAGE_INPUTS = {
    "stage1_latent_cache": "stage1.latent_cache",
    "stage2_latent_cache": "stage2.latent_cache",
    "stage3_latent_cache": "stage3.latent_cache",
    "stage3_model": "stage3.model",
    "stage3_filtered_clips": "stage3.filtered_clips",
}


def create_template() -> Pipeline:
    params = "params:evaluation"
    return Pipeline(
        [
            node(
                nodes.training_combinations,
                ["stage1_latent_cache", "stage2_latent_cache", "stage3_latent_cache"],
                "training_combinations",
                name="training_combinations",
            ),
            node(
                nodes.generate_samples,
                ["stage3_model", "training_combinations", params],
                "samples",
                name="generate_samples",
            ),
            node(
                nodes.score_samples,
                ["samples", "stage3_filtered_clips", params],
                ["scores", "adherence_table"],
                name="score_samples",
            ),
            node(
                nodes.validation_loss,
                ["stage3_model", "stage3_latent_cache", params],
                "val_loss_table",
                name="validation_loss_by_timestep",
            ),
            node(
                nodes.build_report,
                [
                    "samples", "scores", "adherence_table", "val_loss_table", params,
                    "params:export",  # the registered model whose champion the verdict compares with
                ],
                ["evaluation_metrics", "report"],
                name="build_evaluation_report",
            ),
            node(
                nodes.log_to_mlflow,
                ["evaluation_metrics", "report"],
                None,
                name="log_evaluation_to_mlflow",
                tags=[OWN_RUN_TAG],
            ),
        ],
        tags=["evaluation"],
    )


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        create_template(),
        namespace=NAMESPACE,
        inputs=STAGE_INPUTS,
        outputs={"evaluation_metrics": "evaluation_metrics"},
        parameters={"params:evaluation": "params:evaluation", "params:export": "params:export"},
    )
