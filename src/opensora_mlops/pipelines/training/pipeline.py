"""The training template and its three stages.

One template (cache latents -> train -> validate) is instantiated through Kedro namespaces as
``stage1``, ``stage2`` and ``stage3``: dataset and parameter names inside get the stage prefix
(``stage2.bucket_table``, ``params:stage2.training``), ``training_shared`` and ``vae_model`` are
shared, and stage N+1's ``init_model`` is stage N's ``model``.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline, node, pipeline

from opensora_mlops.pipelines.training import nodes

STAGES = ("stage1", "stage2", "stage3")


def create_template(chained: bool) -> Pipeline:
    """The stage template; ``chained`` stages start from the previous stage's ``model``."""
    params = ["params:training", "params:training_shared"]
    train_inputs = ["latent_cache", "vae_model", *params] + (["init_model"] if chained else [])
    validate_inputs = ["model", "latent_cache", *params] + (["reference_cache"] if chained else [])
    return Pipeline(
        [
            node(nodes.cache_stage_latents, ["bucket_table", "vae_model", *params, "params:bucketing"], "latent_cache",
                 name="cache_latents"),
            node(nodes.train_stage, train_inputs, ["model", "training_metrics"], name="train"),
            node(nodes.validate_stage, validate_inputs, "validation_metrics", name="validate"),
        ],
        tags=["training"],
    )


def create_stage_pipeline(stage: str, previous: str | None = None) -> Pipeline:
    inputs = {"vae_model": "vae_model"}
    if previous is not None:
        inputs.update(init_model=f"{previous}.model", reference_cache=f"{STAGES[0]}.latent_cache")
    return pipeline(
        create_template(chained=previous is not None),
        namespace=stage,
        inputs=inputs,
        parameters={"params:training_shared": "params:training_shared", "params:bucketing": "params:bucketing"},
    )


def create_stage_pipelines() -> dict[str, Pipeline]:
    return {stage: create_stage_pipeline(stage, STAGES[i - 1] if i else None) for i, stage in enumerate(STAGES)}


def create_pipeline(**kwargs) -> Pipeline:
    """All three stages in order (registered as ``training``; each stage also on its own)."""
    return sum(create_stage_pipelines().values(), Pipeline([]))
