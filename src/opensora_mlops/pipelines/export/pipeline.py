"""Export pipeline wiring (nodes in :mod:`.nodes`): stage 3's weights -> export directory -> registry.

The nodes live in the Kedro namespace ``export`` (``export.manifest``, ``export.registration``); the
datasets they read keep their names (``stage3.model``, ``stage3.filtered_clips``,
``evaluation_metrics``). ``register_pyfunc_model`` opens the namespace's nested MLflow run itself
(tag ``mlflow_own_run``, see ``hooks.py``).
"""

from __future__ import annotations

from kedro.pipeline import Pipeline, node, pipeline

from opensora_mlops.pipelines.export import nodes

NAMESPACE = "export"
OWN_RUN_TAG = "mlflow_own_run"  # opensora_mlops.hooks.OWN_RUN_TAG


def create_template() -> Pipeline:
    return Pipeline(
        [
            node(
                nodes.export_stage_model,
                ["stage3_model", "evaluation_metrics", "stage3_filtered_clips", "params:export"],
                "manifest",
                name="export_model_directory",
            ),
            node(
                nodes.register_model,
                ["manifest", "params:export"],
                "registration",
                name="register_pyfunc_model",
                tags=[OWN_RUN_TAG],
            ),
        ],
        tags=["export"],
    )


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        create_template(),
        namespace=NAMESPACE,
        inputs={"stage3_model": "stage3.model", "stage3_filtered_clips": "stage3.filtered_clips",
                "evaluation_metrics": "evaluation_metrics"},
        parameters={"params:export": "params:export"},
    )
